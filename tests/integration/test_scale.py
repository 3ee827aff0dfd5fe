"""Scale to zero and wake on the first request, through a real Traefik."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest
import requests
from typer.testing import CliRunner

from faas.cli import app

from .conftest import Load, Stack, fn_name, wait_for

pytestmark = pytest.mark.integration


def state(stack: Stack, name: str) -> str:
    return str(stack.api("GET", f"/functions/{name}").json()["state"])


def scale(stack: Stack, name: str, replicas: int) -> requests.Response:
    return stack.api("POST", f"/functions/{name}/scale", json={"replicas": replicas})


def starts(engine: docker.DockerClient, container_id: str, since: float) -> int:
    """Start events of the container since `since` (time.time(); sub-second)."""
    # The engine takes fractional seconds; the stubs only know int.
    events = engine.events(  # type: ignore[call-overload]
        since=since,
        until=time.time(),
        filters={"container": container_id, "event": "start"},
        decode=True,
    )
    return sum(1 for _ in events)


def cold(stack: Stack, engine: docker.DockerClient, **spec: object) -> tuple[str, str]:
    """A deployed function, scaled to zero; returns (name, container id)."""
    name = fn_name("cold")
    assert stack.deploy(name, **spec).status_code == 200
    got = scale(stack, name, 0)
    assert got.status_code == 200, got.text
    assert got.json()["state"] == "stopped"
    (container,) = stack.containers(engine, name)
    return name, str(container.id)


def test_cold_get_and_post_are_answered(stack: Stack, engine: docker.DockerClient) -> None:
    name, _ = cold(stack, engine, env={"ECHO_X": "1"})
    assert state(stack, name) == "stopped"
    got = stack.invoke(name, "/a/b?q=1")
    assert got.status_code == 200
    assert got.json()["path"] == "/a/b"
    assert got.json()["query"] == {"q": ["1"]}
    assert got.json()["env"]["ECHO_X"] == "1"
    assert state(stack, name) == "running"

    assert scale(stack, name, 0).json()["state"] == "stopped"
    body = b"x" * 100_000
    got = stack.invoke(name, "/post", method="POST", data=body, headers={"X-H": "v"})
    assert got.status_code == 200
    assert got.json()["body"] == body.decode()
    assert got.json()["headers"]["x-h"] == "v"
    assert got.headers["X-Echo"] == "1"
    stack.api("DELETE", f"/functions/{name}")


def test_concurrent_cold_requests_start_once(stack: Stack, engine: docker.DockerClient) -> None:
    name, container_id = cold(stack, engine)
    since = time.time()
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda i: stack.invoke(name, f"/{i}").status_code, range(50)))
    assert codes == [200] * 50
    assert starts(engine, container_id, since) == 1
    stack.api("DELETE", f"/functions/{name}")


def test_slow_starter_gets_no_502_while_waking(stack: Stack, engine: docker.DockerClient) -> None:
    name, _ = cold(stack, engine, env={"ECHO_START_DELAY": "1.5"})

    def staggered(i: int) -> int:
        time.sleep(i * 0.1)  # spread the arrivals over the wake: the load's shape
        return stack.invoke(name, f"/{i}").status_code

    with ThreadPoolExecutor(25) as pool:
        results = pool.map(staggered, range(25))
        wait_for(lambda: state(stack, name) == "starting", 5, "describe to say starting")
        codes = list(results)
    assert codes == [200] * 25
    assert state(stack, name) == "running"
    stack.api("DELETE", f"/functions/{name}")


def test_idle_function_scales_to_zero(stack: Stack) -> None:
    name = fn_name("idle")
    assert stack.deploy(name, idle_timeout=1).status_code == 200
    wait_for(lambda: state(stack, name) == "stopped", 20, "idle scale-down")
    listed = {f["name"]: f for f in stack.api("GET", "/functions").json()}
    assert listed[name]["reason"] == "scaled to zero"
    assert stack.invoke(name).status_code == 200  # and it wakes again
    stack.api("DELETE", f"/functions/{name}")


def test_min_scale_one_is_never_idled(stack: Stack) -> None:
    name = fn_name("pinned")
    assert stack.deploy(name, idle_timeout=1, min_scale=1).status_code == 200
    idle = fn_name("idle")
    assert stack.deploy(idle, idle_timeout=1).status_code == 200
    wait_for(lambda: state(stack, idle) == "stopped", 20, "the other function to idle")
    assert state(stack, name) == "running"
    stack.api("DELETE", f"/functions/{name}")
    stack.api("DELETE", f"/functions/{idle}")


def test_traffic_and_long_streams_keep_a_function_up(stack: Stack) -> None:
    name = fn_name("busy")
    assert stack.deploy(name, idle_timeout=1).status_code == 200
    # A 4 s streamed response, much longer than the idle timeout.
    got = stack.invoke(name, "/?stream=16", stream=True)
    lines = [line for line in got.iter_lines() if line]
    assert len(lines) == 16
    assert state(stack, name) == "running"
    # Short requests every 0.3 s for 3 s, also longer than the idle timeout.
    for _ in range(10):
        assert stack.invoke(name).status_code == 200
        time.sleep(0.3)  # the load's pace, not synchronisation
    assert state(stack, name) == "running"
    stack.api("DELETE", f"/functions/{name}")


def test_failed_wake_answers_503_quickly_and_retries(
    stack: Stack, engine: docker.DockerClient
) -> None:
    # The flag file must survive a stop: not on the tmpfs /tmp of a read-only container.
    name, container_id = cold(stack, engine, env={"ECHO_CRASH_ON_RESTART": "1"}, read_only=False)
    since = time.time()
    started = time.monotonic()
    got = stack.invoke(name)
    assert time.monotonic() - started < 5
    assert got.status_code == 503
    assert got.headers["Retry-After"] == "1"
    error = got.json()
    assert name in error["error"]
    assert error["detail"]["function"] == name
    assert "exited with code 1" in error["detail"]["reason"]
    listed = stack.api("GET", f"/functions/{name}").json()
    assert listed["state"] == "failed"
    # The next request tries again rather than remembering the failure.
    assert stack.invoke(name).status_code == 503
    assert starts(engine, container_id, since) == 2
    stack.api("DELETE", f"/functions/{name}")


def test_no_request_fails_across_scale_cycles(stack: Stack, engine: docker.DockerClient) -> None:
    name = fn_name("cycle")
    assert stack.deploy(name).status_code == 200
    # ~20 requests/s: the load's pace
    with Load(stack, name, pace=0.05) as load:
        for cycle in range(1, 4):
            assert scale(stack, name, 0).status_code == 200
            wait_for(lambda: state(stack, name) == "running", 10, "the load to wake it")
            wait_for(lambda: load.served >= 10 * cycle, 10, "some warm traffic")  # noqa: B023
    assert load.failures == []
    stack.api("DELETE", f"/functions/{name}")


def test_gateway_restart_while_stopped_still_wakes(
    stack: Stack, engine: docker.DockerClient
) -> None:
    name, _ = cold(stack, engine)
    stack.stop()
    stack.start()
    assert state(stack, name) == "stopped"
    assert stack.invoke(name).status_code == 200
    stack.api("DELETE", f"/functions/{name}")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"replicas": 1.5},
        {"replicas": -1},
        {"replicas": "1"},
        {"replicas": True},
        {"replicas": 1, "x": 1},
    ],
)
def test_bad_scale_requests(stack: Stack, body: object) -> None:
    got = stack.api("POST", "/functions/whatever/scale", json=body)
    assert got.status_code == 422
    assert "replicas" in got.json()["error"]


def test_cli_scale(stack: Stack) -> None:
    name = fn_name("cli")
    base = ["--url", stack.url, "--token", stack.token]
    runner = CliRunner()
    got = runner.invoke(
        app, [*base, "deploy", name, "--image", "faas/echo:latest", "--idle-timeout", "60"]
    )
    assert got.exit_code == 0, got.stderr
    assert stack.api("GET", f"/functions/{name}").json()["idle_timeout"] == 60
    got = runner.invoke(app, [*base, "scale", name, "0"])
    assert (got.exit_code, got.stdout.strip()) == (0, f"{name}: stopped, 0/0 replicas")
    listed = runner.invoke(app, [*base, "list"]).stdout.splitlines()
    assert [name, "stopped", "(scaled", "to", "zero)", "0/0"] in [
        line.split()[:6] for line in listed
    ]
    got = runner.invoke(app, [*base, "scale", name, "1"])
    assert (got.exit_code, got.stdout.strip()) == (0, f"{name}: running, 1/1 replicas")
    assert runner.invoke(app, [*base, "scale", name, "-1"]).exit_code == 2
    got = runner.invoke(app, [*base, "scale", "no-such-fn", "0"])
    assert got.exit_code == 1
    assert "not found" in got.stderr
    stack.api("DELETE", f"/functions/{name}")


def test_scale_unknown_function(stack: Stack) -> None:
    assert scale(stack, "no-such-fn", 0).status_code == 404
    got = stack.invoke("no-such-fn")
    assert got.status_code == 404
    assert "no-such-fn" in got.json()["error"]
