"""Python handler functions: scaffold, build from the template, run on the faas runtime."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .conftest import Stack, cli, fn_name

pytestmark = pytest.mark.integration

HANDLER = """
import time

from faas_runtime import Response


def handle(request):
    if request.path == "/boom":
        raise RuntimeError("secret detail")
    if request.path == "/slow":
        time.sleep(3)
    if request.path == "/json":
        return {"got": request.json(), "query": request.query}
    return Response("made", status=201, headers={"X-Made": "yes"})
"""


@pytest.fixture
def function(stack: Stack, engine: docker.DockerClient, tmp_path: Path) -> Iterator[Path]:
    """A scaffolded function folder; its function and images are removed after."""
    name = fn_name("tpl")
    folder = tmp_path / name
    code, _, err = cli(stack, "new", name, "--dir", str(folder))
    assert code == 0, err
    assert {p.name for p in folder.iterdir()} == {"handler.py", "requirements.txt", "faas.toml"}
    yield folder
    stack.api("DELETE", f"/functions/{name}")
    for image in engine.images.list(name=f"faas/{name}"):
        engine.images.remove(str(image.id), force=True)


def test_template_starter_deploys_and_answers(stack: Stack, function: Path) -> None:
    code, _, err = cli(stack, "deploy", "-f", str(function / "faas.toml"))
    assert code == 0, err
    got = stack.invoke(function.name, "/hi?name=faas")
    assert got.status_code == 200
    assert got.json() == {"hello": "faas", "method": "GET", "path": "/hi"}
    shown = stack.api("GET", f"/functions/{function.name}").json()
    assert shown["health_path"] == "/_/ready"
    assert shown["resources"]["memory"] == "128m"  # from the manifest


def test_template_contract_and_limits(stack: Stack, function: Path) -> None:
    (function / "handler.py").write_text(HANDLER)
    toml = function / "faas.toml"
    toml.write_text(
        toml.read_text().replace("[env]\n", '[env]\nFAAS_TIMEOUT = "1"\nFAAS_MAX_BODY = "1000"\n')
    )
    # Flags win over the manifest.
    code, _, err = cli(stack, "deploy", "-f", str(toml), "--memory", "96m", "-e", "FAAS_DEBUG=0")
    assert code == 0, err
    name = function.name
    assert stack.api("GET", f"/functions/{name}").json()["resources"]["memory"] == "96m"

    made = stack.invoke(name, "/")
    assert (made.status_code, made.text, made.headers["X-Made"]) == (201, "made", "yes")
    echoed = stack.invoke(name, "/json?a=1", method="POST", json={"x": [1, 2]})
    assert echoed.json() == {"got": {"x": [1, 2]}, "query": {"a": ["1"]}}
    boom = stack.invoke(name, "/boom")
    assert boom.status_code == 500
    assert "secret detail" not in boom.text  # not leaked without FAAS_DEBUG
    started = time.monotonic()
    assert stack.invoke(name, "/slow").status_code == 504
    assert time.monotonic() - started < 2.5
    assert stack.invoke(name, "/json", method="POST", data=b"x" * 5000).status_code == 413


def test_manifest_errors_name_the_field(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "faas.toml"
    bad.write_text('name = "x"\nimage = "faas/echo:latest"\ncolour = "blue"\n')
    code, _, err = cli(stack, "deploy", "-f", str(bad))
    assert code == 1
    assert "colour" in err
    bad.write_text('name = "x"\nimage = "faas/echo:latest"\n[scaling]\nmax = 3\n')
    code, _, err = cli(stack, "deploy", "-f", str(bad))
    assert (code, "scaling.max" in err) == (1, True)
    bad.write_text("name = \n")
    code, _, err = cli(stack, "deploy", "-f", str(bad))
    assert (code, "not valid TOML" in err) == (1, True)
