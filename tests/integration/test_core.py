"""The Docker provider's side of the API and CLI through a real Traefik: what
the parametrised suite (tests/providers/) does not cover on both providers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import docker
import pytest
import requests
from typer.testing import CliRunner

from faas.cli import app

from .conftest import ECHO_IMAGE, Stack, assert_refused, cli, fn_name

pytestmark = pytest.mark.integration


def test_plain_http_matches_the_cli(stack: Stack, tmp_path: Path) -> None:
    name = fn_name("curl")
    assert stack.deploy(name).status_code == 200
    payload = tmp_path / "payload.json"
    payload.write_text('{"hello": "world"}')
    code, out, _ = cli(stack, "invoke", name, "/x?y=1", "-d", f"@{payload}", "-H", "X-A: b")
    assert code == 0
    via_cli = json.loads(out)
    via_http = stack.invoke(
        name, "/x?y=1", method="POST", data=payload.read_bytes(), headers={"X-A": "b"}
    ).json()
    for key in ("method", "path", "query", "body", "env"):
        assert via_cli[key] == via_http[key]
    assert via_cli["headers"]["x-a"] == "b"

    code, out, _ = cli(stack, "invoke", name, "-H", "X-Echo-Status: 500")
    assert code == 1
    code, out, _ = cli(stack, "list")
    assert code == 0
    assert any(line.split()[:2] == [name, "running"] for line in out.splitlines())
    code, out, _ = cli(stack, "describe", name)
    assert code == 0
    assert json.loads(out)["image"] == ECHO_IMAGE
    assert cli(stack, "rm", name)[0] == 0


def test_restart_keeps_functions_listed_and_routable(stack: Stack) -> None:
    name = fn_name("keep")
    assert stack.deploy(name, env={"ECHO_K": "v"}).status_code == 200
    stack.stop()
    stack.start()
    listed = {f["name"]: f for f in stack.api("GET", "/functions").json()}
    assert listed[name]["state"] == "running"
    assert listed[name]["env"] == {"ECHO_K": "v"}
    deadline = time.monotonic() + 10
    while (got := stack.invoke(name)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got.json()["env"]["ECHO_K"] == "v"
    assert stack.api("DELETE", f"/functions/{name}").status_code == 204


@pytest.mark.parametrize("base", ["url", "direct"])
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc", "Bearer "])
def test_admin_api_refuses_without_the_token(stack: Stack, base: str, header: str | None) -> None:
    root = getattr(stack, base)
    headers = {"Authorization": header} if header else {}
    for method, path in [("GET", "/functions"), ("PUT", "/functions/x"), ("DELETE", "/functions/x"),
                         ("GET", "/functions/x/logs"), ("GET", "/openapi.json")]:  # fmt: skip
        got = requests.request(
            method, f"{root}/api/v1{path}", headers=headers, json={"image": ECHO_IMAGE}, timeout=10
        )
        assert got.status_code == 401, (method, path)
        assert "error" in got.json()
    assert requests.get(f"{root}/api/v1/healthz", timeout=10).json()["status"] == "ok"


BAD = [
    ("PUT", "/functions/Bad_Name", {"image": ECHO_IMAGE}, 422, "name"),
    ("PUT", "/functions/ok", {"image": "Not An Image"}, 422, "image"),
    ("PUT", "/functions/ok", {"image": ECHO_IMAGE, "port": 70000}, 422, "port"),
    ("PUT", "/functions/ok", {"image": ECHO_IMAGE, "env": {"A=B": "x"}}, 422, "env"),
    ("PUT", "/functions/ok", {"image": ECHO_IMAGE, "privileged": True}, 422, "privileged"),
    ("PUT", "/functions/ok", {"image": ECHO_IMAGE, "name": "other"}, 422, "name"),
    # A registry on a closed loopback port: unreachable, told apart from a missing image.
    (
        "PUT",
        "/functions/ok",
        {"image": "127.0.0.1:9/faas-test/x:1"},
        502,
        "cannot reach the registry",
    ),
    ("POST", "/functions", {"name": "ok"}, 422, "image"),
    ("POST", "/functions", ["not", "an", "object"], 422, ""),
    ("PUT", "/functions/ok", "{broken", 422, "JSON"),
    ("GET", "/functions/missing-fn", None, 404, "missing-fn"),
    ("DELETE", "/functions/missing-fn", None, 404, "missing-fn"),
    ("GET", "/functions/missing-fn/logs", None, 404, "missing-fn"),
    ("GET", "/functions/x/logs?tail=-1", None, 422, "tail"),
    ("GET", "/nowhere", None, 404, "nowhere"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "mentions"), BAD)
def test_bad_input_is_refused_and_changes_nothing(
    stack: Stack,
    engine: docker.DockerClient,
    method: str,
    path: str,
    body: object,
    status: int,
    mentions: str,
) -> None:
    assert_refused(stack, engine, method, path, body, status, mentions)


def test_post_refuses_an_existing_name(stack: Stack) -> None:
    name = fn_name("dup")
    assert (
        stack.api("POST", "/functions", json={"name": name, "image": ECHO_IMAGE}).status_code == 201
    )
    got = stack.api("POST", "/functions", json={"name": name, "image": ECHO_IMAGE})
    assert got.status_code == 409
    assert stack.api("DELETE", f"/functions/{name}").status_code == 204


def test_concurrent_deploys_leave_one_container(stack: Stack, engine: docker.DockerClient) -> None:
    name = fn_name("race")
    codes: list[int] = []

    def deploy(i: int) -> None:
        codes.append(stack.deploy(name, env={"ECHO_I": str(i)}).status_code)

    threads = [threading.Thread(target=deploy, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 4
    assert len(stack.containers(engine, name)) == 1
    assert stack.invoke(name).status_code == 200

    removals = [threading.Thread(target=stack.api, args=("DELETE", f"/functions/{name}"))
                for _ in range(3)]  # fmt: skip
    for t in removals:
        t.start()
    for t in removals:
        t.join()
    assert stack.containers(engine, name) == []


def test_failed_update_keeps_the_running_version(stack: Stack, engine: docker.DockerClient) -> None:
    name = fn_name("keepold")
    assert stack.deploy(name, env={"ECHO_V": "1"}).status_code == 200
    before = [c.id for c in stack.containers(engine, name)]

    crash = stack.deploy(name, env={"PORT": "not-a-number"})
    assert crash.status_code == 502
    assert "did not start" in crash.json()["error"]
    assert "ValueError" in crash.json()["detail"]["logs"]  # the crash's own output

    silent = stack.deploy(name, port=9999)  # nothing listens there
    assert silent.status_code == 502
    assert "no HTTP answer on port 9999" in silent.json()["error"]

    assert [c.id for c in stack.containers(engine, name)] == before
    assert stack.invoke(name).json()["env"]["ECHO_V"] == "1"
    assert stack.api("DELETE", f"/functions/{name}").status_code == 204


def test_logs_and_follow(stack: Stack) -> None:
    name = fn_name("logs")
    assert stack.deploy(name).status_code == 200
    assert stack.invoke(name, "/first-call").status_code == 200
    got = stack.api("GET", f"/functions/{name}/logs")
    assert got.status_code == 200
    assert "echo listening on :8080" in got.text
    assert "/first-call" in got.text

    with stack.api("GET", f"/functions/{name}/logs?follow=true&tail=0", stream=True) as live:
        assert live.status_code == 200
        assert stack.invoke(name, "/second-call").status_code == 200
        seen = b""
        deadline = time.monotonic() + 10
        for chunk in live.iter_content(chunk_size=None):
            seen += chunk
            if b"/second-call" in seen or time.monotonic() > deadline:
                break
        assert b"/second-call" in seen
        assert b"/first-call" not in seen  # tail=0

    code, out, _ = cli(stack, "logs", name, "--tail", "1")
    assert code == 0
    assert "/second-call" in out

    code, out, _ = cli(stack, "logs", name, "--since", "1h")
    assert code == 0
    assert "/first-call" in out
    assert "/second-call" in out
    code, out, _ = cli(stack, "logs", name, "--since", "0s")  # from now on: nothing yet
    assert code == 0
    assert "/first-call" not in out
    assert stack.api("DELETE", f"/functions/{name}").status_code == 204


def test_openapi_document(stack: Stack) -> None:
    doc = stack.api("GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/functions", "/api/v1/functions/{name}"} <= set(doc["paths"])
    assert "image" in doc["components"]["schemas"]["FunctionSpec"]["properties"]


def test_cli_errors_are_one_line(stack: Stack) -> None:
    code, _, err = cli(stack, "rm", "missing-fn")
    assert code == 1
    assert err.strip() == "faas: error: function 'missing-fn' not found"
    result = CliRunner().invoke(app, ["--url", "http://127.0.0.1:9", "list"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "cannot reach the faas API" in result.stderr
    result = CliRunner().invoke(app, ["--url", stack.url, "--token", "nope", "list"])
    assert result.exit_code == 1
    assert "admin token" in result.stderr
    result = CliRunner().invoke(
        app, ["--url", stack.url, "deploy", "x", "--image", "e", "-e", "NOEQUALS"]
    )
    assert result.exit_code == 2
