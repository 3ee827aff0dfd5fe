"""Several replicas per function and autoscaling, through a real Traefik, on a
stack of its own with short autoscaler windows."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import docker
import pytest
import requests

from .conftest import ECHO_IMAGE, Load, Stack, cli, fn_name, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scaled(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running_stack(
        engine,
        tmp_path_factory.mktemp("replicas"),
        FAAS_AUTOSCALE_INTERVAL="0.5",
        FAAS_AUTOSCALE_PANIC_WINDOW="2",
        FAAS_AUTOSCALE_STABLE_WINDOW="6",
    ) as s:
        yield s


def hostnames(stack: Stack, name: str, calls: int = 60) -> Counter[str]:
    session = requests.Session()  # keep-alive: Traefik balances per request anyway
    seen: Counter[str] = Counter()
    for _ in range(calls):
        got = session.get(f"{stack.url}/function/{name}/", timeout=10)
        assert got.status_code == 200, got.text
        seen[got.json()["hostname"]] += 1
    return seen


def shown(stack: Stack, name: str) -> dict[str, object]:
    return dict(stack.api("GET", f"/functions/{name}").json())


def test_scale_to_three_serves_from_three_and_back_to_one_loses_nothing(
    scaled: Stack, engine: docker.DockerClient
) -> None:
    with scaled.deployed("three", min_scale=1) as name:
        code, out, err = cli(scaled, "scale", name, "3")
        assert code == 0, err
        assert "3/3 replicas" in out
        assert len(scaled.containers(engine, name)) == 3
        assert len(hostnames(scaled, name)) == 3  # Traefik balances over all three
        # Logs come from every replica, each line tagged with the one that wrote it.
        logs = scaled.api("GET", f"/functions/{name}/logs").text.splitlines()
        said = [line.split(" ", 2) for line in logs if line.endswith("echo listening on :8080")]
        assert len({replica for _, replica, _ in said}) == 3, logs
        assert [stamp for stamp, _, _ in said] == sorted(stamp for stamp, _, _ in said)
        code, out, _ = cli(scaled, "list")
        (row,) = [line for line in out.splitlines() if line.startswith(name)]
        assert " 3/3 " in row
        with Load(scaled, name, clients=4) as load:
            wait_for(lambda: load.served > 20, 20, "load to flow")
            code, out, err = cli(scaled, "scale", name, "1")
            assert code == 0, err
            served = load.served
            wait_for(lambda: load.served > served + 20, 20, "load after the scale-down")
        assert load.failures == []
        running = [c for c in scaled.containers(engine, name) if c.status == "running"]
        assert len(running) == 1
        assert len(scaled.containers(engine, name)) == 1  # the two others are removed
        assert (shown(scaled, name)["replicas"], shown(scaled, name)["ready_replicas"]) == (1, 1)


def test_load_adds_a_replica_then_it_goes_back_to_min_then_zero(scaled: Stack) -> None:
    name = fn_name("cpu")
    got = scaled.deploy(
        name,
        max_scale=2,
        concurrency=1,
        idle_timeout=2,
        limits={"rate_average": 0, "max_in_flight": 0},
    )
    assert got.status_code == 200, got.text
    statuses: Counter[int] = Counter()
    hosts: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                got = session.get(f"{scaled.url}/function/{name}/?cpu=20", timeout=15)
                statuses[got.status_code] += 1
                if got.status_code == 200:
                    hosts.add(got.json()["hostname"])
            except requests.RequestException:
                statuses[0] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    began = time.monotonic()
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: len(hosts) >= 2, 20, "a second replica to serve")
        second_after = time.monotonic() - began
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert shown(scaled, name)["ready_replicas"] == 2
    assert set(statuses) == {200}, statuses
    # At rest: back to one replica after the stable window, then to zero.
    wait_for(lambda: shown(scaled, name)["ready_replicas"] == 1, 30, "back to one replica")
    wait_for(lambda: shown(scaled, name)["state"] == "stopped", 30, "scale to zero")
    print(f"second replica serving {second_after:.1f} s after the load began")
    scaled.api("DELETE", f"/functions/{name}")


def test_rolling_redeploy_of_three_replicas_under_load(
    scaled: Stack, engine: docker.DockerClient
) -> None:
    with scaled.deployed("roll", min_scale=3, env={"ECHO_V": "1"}) as name:
        assert len(scaled.containers(engine, name)) == 3
        versions: Counter[str] = Counter()
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            session = requests.Session()
            while not stop.is_set():
                try:
                    got = session.get(f"{scaled.url}/function/{name}/", timeout=15)
                    if got.status_code != 200:
                        failures.append(f"{got.status_code} {got.text[:80]}")
                    else:
                        versions[got.json()["env"].get("ECHO_V", "?")] += 1
                except requests.RequestException as exc:
                    failures.append(repr(exc))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            wait_for(lambda: versions["1"] > 20, 20, "load on version 1")
            got = scaled.deploy(name, min_scale=3, env={"ECHO_V": "2"})
            assert got.status_code == 200, got.text
            wait_for(lambda: versions["2"] > 20, 20, "load on version 2")
        finally:
            stop.set()
            for thread in clients:
                thread.join()
        assert failures == []
        assert set(versions) == {"1", "2"}
        assert len(scaled.containers(engine, name)) == 3
        assert len(hostnames(scaled, name, 30)) == 3


@pytest.mark.parametrize(
    ("spec", "mentions"),
    [
        ({"min_scale": 3, "max_scale": 2}, "max_scale"),
        ({"min_scale": -1}, "min_scale"),
        ({"max_scale": 0}, "max_scale"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_bad_bounds_are_refused_and_change_nothing(
    scaled: Stack, engine: docker.DockerClient, spec: dict[str, object], mentions: str
) -> None:
    name = fn_name("bounds")
    got = scaled.deploy(name, **spec)
    assert got.status_code == 422, got.text
    assert mentions in got.json()["error"]
    assert scaled.containers(engine, name) == []


def test_a_scale_beyond_max_scale_is_refused(scaled: Stack, engine: docker.DockerClient) -> None:
    with scaled.deployed("beyond", max_scale=2) as name:
        before = [c.id for c in scaled.containers(engine, name)]
        for replicas in (3, -1):
            got = scaled.api("POST", f"/functions/{name}/scale", json={"replicas": replicas})
            assert got.status_code == 422, got.text
            assert "from 0 to" in got.json()["error"]
        assert [c.id for c in scaled.containers(engine, name)] == before
        code, _, err = cli(scaled, "scale", name, "5")
        assert code == 1
        assert "from 0 to 2" in err


def test_a_killed_replica_is_replaced(scaled: Stack, engine: docker.DockerClient) -> None:
    with scaled.deployed("killed", min_scale=1) as name:
        assert scaled.api("POST", f"/functions/{name}/scale", json={"replicas": 3}).ok
        victim = scaled.containers(engine, name)[0]
        with Load(scaled, name, clients=2) as load:
            wait_for(lambda: load.served > 10, 20, "load to flow")
            victim.kill()
            wait_for(
                lambda: (
                    shown(scaled, name)["ready_replicas"] == 3
                    and victim.id not in {c.id for c in scaled.containers(engine, name)}
                ),
                20,
                "the killed replica to be replaced",
            )
            served = load.served
            wait_for(lambda: load.served > served + 10, 20, "load after the replacement")
        # Requests sent as it died may fail once Traefik's retries are spent; none hangs.
        assert all("Timeout" not in f for f in load.failures), load.failures
        assert len(load.failures) <= 2, load.failures


def test_flags_and_a_replica_the_host_has_no_memory_for(
    scaled: Stack, engine: docker.DockerClient
) -> None:
    name = fn_name("flags")
    total = int(engine.info()["MemTotal"])
    big = f"{total * 6 // 10 >> 20}m"  # one fits, two would not
    code, _, err = cli(
        scaled, "deploy", name, "--image", ECHO_IMAGE, "--max-scale", "3",
        "--concurrency", "4", "--memory", big,
    )  # fmt: skip
    assert code == 0, err
    try:
        spec = shown(scaled, name)
        assert (spec["max_scale"], spec["concurrency"], spec["min_scale"]) == (3, 4, 0)
        got = scaled.api("POST", f"/functions/{name}/scale", json={"replicas": 2})
        assert got.status_code == 409, got.text
        assert "no room for another replica" in got.json()["error"]
        assert shown(scaled, name)["ready_replicas"] == 1
        assert len(scaled.containers(engine, name)) == 1
    finally:
        scaled.api("DELETE", f"/functions/{name}")
