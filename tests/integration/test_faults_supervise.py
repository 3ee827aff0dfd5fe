"""`faas up` under a child's crash: SIGKILL the gateway mid-wake, SIGKILL Traefik,
and a gateway that keeps dying. Each test runs a stack of its own (it breaks it).

The figures (requests sent, failures by status, recovery times) are printed:
run with -s to read them.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from faas.traefik import drain_router

from .conftest import Load, Stack, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def own(engine: docker.DockerClient, state_dir: Path) -> Iterator[Stack]:
    with running_stack(engine, state_dir) as s:
        yield s


def children(stack: Stack) -> dict[str, int]:
    """`faas up`'s children by name (traefik, gateway, nats), read from /proc."""
    assert stack.process is not None
    pid = stack.process.pid
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue  # gone since
        name = (
            "gateway" if b"uvicorn" in argv
            else "traefik" if argv[0].endswith(b"traefik")
            else "nats" if argv[0].endswith(b"nats-server")
            else ""
        )  # fmt: skip
        if name:
            found[name] = int(child)
    return found


def kill(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def by_status(load: Load) -> Counter[str]:
    """Load's failures by HTTP status, or by exception class."""
    return Counter(f.split(" ", 1)[0].split("(", 1)[0] for f in load.failures)


def sent(load: Load) -> int:
    """Requests the load sent: those answered, and those that got no answer."""
    return load.served + sum(n for kind, n in by_status(load).items() if not kind.isdigit())


def drains(state_dir: Path) -> dict[str, object]:
    """The drain routers in `faas up`'s drains.yml."""
    path = state_dir / "traefik" / "dynamic" / "drains.yml"
    try:
        routers: dict[str, object] = json.loads(path.read_text())["http"]["routers"]
        return routers
    except FileNotFoundError:
        return {}


def test_gateway_killed_mid_wake(own: Stack, state_dir: Path) -> None:
    with (
        own.deployed("warm", min_scale=1) as warm,
        own.deployed("cold", env={"ECHO_START_DELAY": "2"}) as cold,
    ):
        scaled = own.api("POST", f"/functions/{cold}/scale", json={"replicas": 0})
        assert scaled.status_code == 200, scaled.text
        before = children(own)
        waking: list[int] = []
        wake = threading.Thread(target=lambda: waking.append(own.invoke(cold).status_code))
        with Load(own, warm, clients=2, pace=0.01) as load:
            time.sleep(0.5)  # load running
            wake.start()
            # The wake is under way: its drain router sends the function's
            # traffic to the gateway while the container starts.
            wait_for(lambda: drain_router(cold) in drains(state_dir), 10, "the wake's drain router")
            killed = kill(before["gateway"])
            wait_for(lambda: ok(f"{own.direct}/api/v1/healthz"), 30, "the gateway back")
            back = time.monotonic() - killed
            wait_for(lambda: ok(f"{own.url}/api/v1/healthz"), 10, "the API through Traefik")
            wait_for(lambda: drains(state_dir) == {}, 10, "drains.yml without routers")
            cleared = time.monotonic() - killed
            wake.join(30)
            # The next requests reach the function (the container the dead gateway
            # started, routed by Traefik): what a caller sees until it listens.
            first: Counter[int] = Counter()
            while (status := own.invoke(cold).status_code) != 200:
                first[status] += 1
                assert time.monotonic() - killed < 30, first
            served = time.monotonic() - killed
            time.sleep(0.5)  # load after the recovery too
        after = children(own)
        assert own.process is not None
        assert own.process.poll() is None
        assert after["traefik"] == before["traefik"]  # Traefik served throughout
        assert after["gateway"] != before["gateway"]
        print(
            f"\ngateway SIGKILL mid-wake: back (healthz) after {back:.2f}s, drains cleared "
            f"after {cleared:.2f}s, cold function 200 after {served:.2f}s "
            f"(non-200 before: {dict(first)}); the waiting request got {waking}; "
            f"warm load: {sent(load)} sent, failed {dict(by_status(load))}"
        )
        assert load.failures == []  # warm traffic never touched the gateway
        # The restarted gateway wakes the function from zero again.
        assert own.api("POST", f"/functions/{cold}/scale", json={"replicas": 0}).ok
        woken = own.invoke(cold, "/again")
        assert woken.status_code == 200
        assert woken.headers["server-timing"].startswith("wake;dur=")


def test_traefik_killed(own: Stack) -> None:
    with own.deployed("warm", min_scale=1) as warm:
        before = children(own)
        probe = f"{own.url}/function/{warm}/probe"
        with Load(own, warm, clients=2, pace=0.01) as load:
            time.sleep(0.5)
            killed = kill(before["traefik"])
            listening = None
            while True:
                try:
                    status: int | None = requests.get(probe, timeout=2).status_code
                except requests.RequestException:
                    status = None
                since = time.monotonic() - killed
                if status is not None and listening is None:
                    listening = since
                if status == 200:
                    break
                assert since < 30, f"no route {since:.1f}s after Traefik's death"
                time.sleep(0.01)
            wait_for(lambda: ok(f"{own.url}/api/v1/healthz"), 10, "the API route back")
            time.sleep(0.5)
        after = children(own)
        assert own.process is not None
        assert own.process.poll() is None
        assert after["gateway"] == before["gateway"]
        assert after["traefik"] != before["traefik"]
        failed = by_status(load)
        print(
            f"\nTraefik SIGKILL: listening again after {listening:.2f}s, warm route back "
            f"after {since:.2f}s; warm load: {sent(load)} sent, failed {dict(failed)}"
        )
        # While it was down callers found no listener; then, until its providers
        # had loaded, Traefik's own 404 (traefik/traefik#7347); nothing else.
        assert set(failed) <= {"ConnectionError", "404"}
        assert {f for f in load.failures if f.startswith("404")} <= {"404 404 page not found\n"}
        assert own.invoke(warm).status_code == 200


def test_gateway_crash_loop_gives_up(own: Stack) -> None:
    """A gateway that dies again as soon as it is back: `faas up` restarts it
    with growing delays, then gives up, stopping Traefik, and exits 1."""
    assert own.process is not None
    started = time.monotonic()
    killed: set[int] = set()
    traefik = children(own)["traefik"]
    while own.process.poll() is None:
        gateway = children(own).get("gateway")
        if gateway is not None and gateway not in killed:
            kill(gateway)
            killed.add(gateway)
        assert time.monotonic() - started < 60, f"still running after {len(killed)} kills"
        time.sleep(0.02)
    kills = len(killed)
    took = time.monotonic() - started
    print(f"\ngateway crash loop: gave up after {kills} kills, {took:.1f}s")
    assert own.process.returncode == 1
    assert kills == 5
    assert not Path(f"/proc/{traefik}").exists()  # stopped with it
