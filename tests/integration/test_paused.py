"""The paused tier through a real Traefik: pause, resume on the next request
(once, however many wait), stop from paused, deploy over and remove a paused
function, all under load; the bound on paused functions; a gateway restart
while functions are paused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
import requests

from faas.traefik import drain_router

from .conftest import Load, Stack, cli, fn_name, running_stack, wait_for
from .test_faults_supervise import children, kill

pytestmark = pytest.mark.integration


def state(stack: Stack, name: str) -> str:
    return str(stack.api("GET", f"/functions/{name}").json()["state"])


def pause(stack: Stack, name: str) -> requests.Response:
    got = stack.api("POST", f"/functions/{name}/pause")
    assert got.status_code == 200, got.text
    return got


def engine_events(engine: docker.DockerClient, container_id: str, since: float, what: str) -> int:
    """`what` events (pause, unpause, start...) of the container since `since`."""
    # The engine takes fractional seconds; the stubs only know int.
    events = engine.events(  # type: ignore[call-overload]
        since=since,
        until=time.time(),
        filters={"container": container_id, "event": what},
        decode=True,
    )
    return sum(1 for _ in events)


def drained(stack: Stack, name: str) -> bool:
    """True while Traefik serves the function's drain router (its traffic to the gateway)."""
    url = f"{stack.traefik_api}/api/http/routers/{drain_router(name)}@file"
    return requests.get(url, timeout=5).status_code == 200


def test_a_paused_function_answers_its_next_requests_resumed_once(
    stack: Stack, engine: docker.DockerClient
) -> None:
    with stack.deployed("paused", env={"ECHO_X": "1"}) as name:
        assert stack.invoke(name).status_code == 200
        assert cli(stack, "pause", name)[:2] == (0, f"{name}: paused\n")
        (container,) = stack.containers(engine, name)
        container.reload()
        assert container.status == "paused"
        assert drained(stack, name)
        code, out, _ = cli(stack, "list")
        assert code == 0
        assert any(line.split()[:2] == [name, "paused"] for line in out.splitlines()), out

        got = stack.invoke(name, "/a?q=1", method="POST", data=b"body")
        assert got.status_code == 200
        assert (got.json()["path"], got.json()["body"]) == ("/a", "body")
        assert got.json()["env"]["ECHO_X"] == "1"
        assert state(stack, name) == "running"
        undrained(stack, name)

        pause(stack, name)
        since = time.time()
        with ThreadPoolExecutor(100) as pool:
            answers = list(
                pool.map(
                    lambda i: stack.invoke(name, f"/{i}", method="POST", data=str(i)), range(100)
                )
            )
        assert [a.status_code for a in answers] == [200] * 100
        assert [a.json()["body"] for a in answers] == [str(i) for i in range(100)]
        assert engine_events(engine, str(container.id), since, "unpause") == 1
        assert engine_events(engine, str(container.id), since, "start") == 0


def flowing(load: Load) -> None:
    served = load.served
    wait_for(lambda: load.served > served + 20, 10, "the load to flow")


def undrained(stack: Stack, name: str) -> None:
    """Wait until Traefik has dropped the drain (the file provider reloads in its time)."""
    wait_for(lambda: not drained(stack, name), 5, "the drain to go")


def test_transitions_under_constant_load_fail_no_request(
    stack: Stack, engine: docker.DockerClient
) -> None:
    with stack.deployed("moving") as name, Load(stack, name, clients=4) as load:
        flowing(load)
        for round_ in range(3):
            pause(stack, name)  # resumed by the next request of the load
            wait_for(lambda: state(stack, name) == "running", 5, "a resume under load")
            pause(stack, name)
            got = stack.api("POST", f"/functions/{name}/scale", json={"replicas": 0})
            assert got.status_code == 200, got.text
            pause(stack, name)
            got = stack.deploy(name, env={"ROUND": str(round_)})
            assert got.status_code == 200, got.text
            flowing(load)
    assert load.failures == []
    assert load.served > 100


def test_stop_deploy_and_remove_of_a_paused_function(
    stack: Stack, engine: docker.DockerClient
) -> None:
    name = fn_name("frozen")
    assert stack.deploy(name).status_code == 200
    pause(stack, name)
    got = stack.api("POST", f"/functions/{name}/scale", json={"replicas": 0})
    assert got.json()["state"] == "stopped"
    undrained(stack, name)
    assert stack.invoke(name).status_code == 200  # a wake from stopped

    pause(stack, name)
    (old,) = stack.containers(engine, name)
    assert stack.deploy(name, env={"ECHO_NEW": "1"}).status_code == 200
    assert state(stack, name) == "running"
    assert [c.id for c in stack.containers(engine, name)] != [old.id]
    assert stack.invoke(name).json()["env"]["ECHO_NEW"] == "1"
    undrained(stack, name)

    pause(stack, name)
    assert stack.api("DELETE", f"/functions/{name}").status_code == 204
    assert stack.containers(engine, name) == []
    undrained(stack, name)
    assert stack.invoke(name).status_code == 404


@pytest.fixture(scope="module")
def bounded(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack of its own: at most 2 paused functions, idle functions paused after 1 s."""
    state_dir: Path = tmp_path_factory.mktemp("bounded")
    with running_stack(engine, state_dir, FAAS_MAX_PAUSED="2", FAAS_PAUSE_TIMEOUT="1") as s:
        yield s


def test_pausing_beyond_the_bound_stops_the_least_recently_used(bounded: Stack) -> None:
    a, b, _c = names = [fn_name(f"lru{i}") for i in range(3)]
    for name in names:  # paused by hand only
        assert bounded.deploy(name, pause_timeout=0).status_code == 200
    try:
        for name in names:
            pause(bounded, name)
        assert [state(bounded, n) for n in names] == ["stopped", "paused", "paused"]
        assert bounded.invoke(b).status_code == 200  # used: c is now the least recent
        pause(bounded, b)
        assert bounded.invoke(a).status_code == 200
        pause(bounded, a)
        assert [state(bounded, n) for n in names] == ["paused", "paused", "stopped"]
        metrics = bounded.api("GET", "/metrics").text
        assert 'faas_scale_downs_total{reason="evicted"} 2.0' in metrics
        wait_for(
            lambda: 'faas_functions{state="paused"} 2.0' in bounded.api("GET", "/metrics").text,
            5,
            "the paused gauge to count 2",
        )
    finally:
        for name in names:
            bounded.api("DELETE", f"/functions/{name}")


def test_idle_functions_are_paused_then_stopped(bounded: Stack) -> None:
    with bounded.deployed("tiers", idle_timeout=4) as name:
        wait_for(lambda: state(bounded, name) == "paused", 15, "the idle pause")
        wait_for(lambda: state(bounded, name) == "stopped", 15, "the stop after the pause")
        assert bounded.invoke(name).status_code == 200


def test_a_restarted_gateway_keeps_paused_functions_drained(bounded: Stack) -> None:
    with bounded.deployed("restart", pause_timeout=0) as name:
        pause(bounded, name)
        kill(children(bounded)["gateway"])
        wait_for(lambda: _healthy(bounded), 30, "the gateway to be back")
        wait_for(lambda: drained(bounded, name), 10, "the drain to be rebuilt")
        assert state(bounded, name) == "paused"
        got = bounded.invoke(name, "/after")
        assert (got.status_code, got.json()["path"]) == (200, "/after")
        assert state(bounded, name) == "running"
        undrained(bounded, name)


def _healthy(stack: Stack) -> bool:
    try:
        return requests.get(f"{stack.direct}/api/v1/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
