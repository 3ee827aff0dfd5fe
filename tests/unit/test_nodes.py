"""A lost node fenced off (faas.nodes, Lifecycle.fence) against the fakes, and
the watch's TCP check against real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from faas.lifecycle import Lifecycle
from faas.nodes import NodeWatch, answers
from faas.provider import Function, State

from .fakes import FakeProvider, FakeRouter, lifecycle


@pytest.fixture
def life(provider: FakeProvider, router: FakeRouter) -> Lifecycle:
    return lifecycle(provider, router)


def on_nodes(provider: FakeProvider, name: str, *nodes: str) -> list[str]:
    """Running replicas of `name`, one per node; their addresses."""
    addresses = []
    for node in nodes:
        instance = provider.add(name, State.RUNNING)
        provider._set(instance.id, node=node)
        assert instance.address is not None
        addresses.append(instance.address)
    return addresses


def test_a_fence_drains_what_has_replicas_elsewhere_until_the_engine_moves_them(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    stays, goes = on_nodes(provider, "a", "n1", "n2")
    on_nodes(provider, "alone", "n2")  # nothing else could answer: left alone
    on_nodes(provider, "elsewhere", "n1")
    fence = threading.Thread(target=life.fence, args=("n2", lambda: True))
    fence.start()
    try:
        wait(lambda: ("drain", "a") in router.events)
        # The gateway forwards to the replica that answers, never to the lost one.
        picks = {asyncio.run(life.address(life.get("a")))[0] for _ in range(20)}
        assert picks == {stays}
        assert asyncio.run(life.address(life.get("alone")))[0] is not None
        assert fence.is_alive()
        # The engine moves the lost replica to a live node.
        (lost,) = [i for i in provider.instances("a") if i.node == "n2"]
        provider._set(lost.id, node="n3", address="10.0.0.99:8080")
    finally:
        fence.join(5)
    assert not fence.is_alive()
    assert router.events[-2:] == [("unrouted", f"a {[goes]}"), ("undrain", "a")]
    assert [e for e in router.events if e[0] == "drain"] == [("drain", "a")]
    assert set(asyncio.run(life.address(life.get("a")))[0] for _ in range(20)) <= {
        stays,
        "10.0.0.99:8080",
    }


def test_a_node_that_answers_again_is_undrained_at_once(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    on_nodes(provider, "a", "n1", "n2")
    back = threading.Event()
    fence = threading.Thread(target=life.fence, args=("n2", lambda: not back.is_set()))
    fence.start()
    wait(lambda: ("drain", "a") in router.events)
    back.set()
    fence.join(5)
    assert router.events[-1] == ("undrain", "a")
    assert not any(e[0] == "unrouted" for e in router.events)  # its replica serves again
    assert len({asyncio.run(life.address(life.get("a")))[0] for _ in range(40)}) == 2


def test_every_replica_on_the_lost_node_still_gets_the_requests(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    (only,) = on_nodes(provider, "a", "n2")
    life.fence("n2", lambda: True)  # returns at once: nothing to fence
    assert router.events == []
    fn: Function = life.get("a")
    assert asyncio.run(life.address(fn)) == (only, None)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_answers_is_a_tcp_connection(listener: socket.socket) -> None:
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    assert asyncio.run(answers(address))
    listener.close()
    assert not asyncio.run(answers(address))


def test_the_watch_fences_a_node_after_misses_in_a_row_and_not_before(
    life: Lifecycle, provider: FakeProvider, listener: socket.socket
) -> None:
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    fenced: list[str] = []
    life.fence = lambda node, lost: fenced.append(node)  # type: ignore[method-assign]
    provider.node_addresses = {"n1": address, "never-seen": "127.0.0.1:1"}
    watch = NodeWatch(life, misses=2, timeout=0.5)

    async def rounds() -> None:
        await watch.round()
        assert watch.lost == set()  # a node that never answered is not lost
        listener.close()
        await watch.round()
        assert watch.lost == set()  # one miss is not enough
        await watch.round()
        assert watch.lost == {"n1"}
        await asyncio.gather(*watch._fences.values())  # in a worker thread

    asyncio.run(rounds())
    assert fenced == ["n1"]
    assert life.metrics.node_losses._value.get() == 1
    assert life.metrics.nodes.labels("up")._value.get() == 0
    assert life.metrics.nodes.labels("lost")._value.get() == 1


def wait(check: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
