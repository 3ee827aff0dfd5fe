"""Python handler functions: scaffold, build from the template, run on the faas runtime."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from faas.template import OFFLINE_BASE

from .conftest import Stack, cli, fn_name, running_stack

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


@contextlib.contextmanager
def scaffolded(stack: Stack, engine: docker.DockerClient, tmp_path: Path) -> Iterator[Path]:
    """A function folder from `faas new`; its function and images are removed after."""
    name = fn_name("tpl")
    folder = tmp_path / name
    code, _, err = cli(stack, "new", name, "--dir", str(folder))
    assert code == 0, err
    assert {p.name for p in folder.iterdir()} == {"handler.py", "requirements.txt", "faas.toml"}
    try:
        yield folder
    finally:
        stack.api("DELETE", f"/functions/{name}")
        for image in engine.images.list(name=f"faas/{name}"):
            engine.images.remove(str(image.id), force=True)


@pytest.fixture
def function(stack: Stack, engine: docker.DockerClient, tmp_path: Path) -> Iterator[Path]:
    with scaffolded(stack, engine, tmp_path) as folder:
        yield folder


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


# -- the base image when FAAS_BASE_IMAGE is not set ---------------------------

DEFAULT_BASE = "python:3.12-slim"


def offline(engine: docker.DockerClient) -> None:
    """Fail unless the engine is as on a machine without a registry: no default base
    (it is not pulled in the test either: no registry answers), the offline one built."""
    names = {tag for image in engine.images.list() for tag in image.tags}
    if DEFAULT_BASE in names:
        pytest.fail(f"{DEFAULT_BASE} is on this engine, so the offline fallback cannot be "
                    f"shown; `docker rmi {DEFAULT_BASE}` to run this test")  # fmt: skip
    if OFFLINE_BASE not in names:
        pytest.fail(f"{OFFLINE_BASE} is missing; run `make images`")


def test_unset_base_image_falls_back_to_the_offline_base(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    offline(engine)
    with (
        running_stack(engine, tmp_path / "state", unset=("FAAS_BASE_IMAGE",)) as stack,
        scaffolded(stack, engine, tmp_path) as function,
    ):
        code, _, err = cli(stack, "deploy", "-f", str(function / "faas.toml"))
        assert code == 0, err
        assert f"note: {DEFAULT_BASE} cannot be pulled" in err
        assert f"building on the offline base {OFFLINE_BASE} instead" in err
        got = stack.invoke(function.name, "/hi?name=offline")
        assert got.json() == {"hello": "offline", "method": "GET", "path": "/hi"}


def test_an_explicit_base_image_wins_and_fails_clearly(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    offline(engine)
    missing = "faas-test/missing:base"
    with (
        running_stack(engine, tmp_path / "state", FAAS_BASE_IMAGE=missing) as stack,
        scaffolded(stack, engine, tmp_path) as function,
    ):
        code, _, err = cli(stack, "deploy", "-f", str(function / "faas.toml"))
        assert code == 1
        # Offline it is the registry that cannot be reached; online, the image.
        assert err.startswith("faas: error: "), err
        assert f"cannot reach the registry docker.io to pull '{missing}'" in err or (
            f"image '{missing}' not found: " in err
        )
        assert "offline base" not in err
        assert stack.api("GET", f"/functions/{function.name}").status_code == 404
