"""A lost node fenced off (faas.nodes, Lifecycle.fence) against the fakes, and
the watch's TCP check against real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from faas.errors import ProviderError
from faas.lifecycle import Lifecycle
from faas.nodes import NodeWatch, answers
from faas.provider import Instance, State

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


def move(provider: FakeProvider, name: str, node: str, address: str) -> None:
    """The engine moves `name`'s replica on `node` to a live node, at `address`."""
    (lost,) = [i for i in provider.instances(name) if i.node == node]
    provider._set(lost.id, node="n3", address=address)


def picks(life: Lifecycle, name: str) -> set[str]:
    return {asyncio.run(life.address(life.get(name)))[0] for _ in range(30)}


def test_a_fence_drains_what_has_replicas_elsewhere_until_the_engine_moves_them(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    stays, goes = on_nodes(provider, "a", "n1", "n2")
    (alone,) = on_nodes(provider, "alone", "n2")  # nothing else could answer: left alone
    on_nodes(provider, "elsewhere", "n1")
    ended: list[bool] = []
    fence = threading.Thread(target=lambda: ended.append(life.fence("n2", lambda: True)))
    fence.start()
    try:
        wait(lambda: ("drain", "a") in router.events)
        # The gateway forwards to the replica that answers, never to the lost one.
        assert picks(life, "a") == {stays}
        assert picks(life, "alone") == {alone}
        # The engine moves the lost replicas to a live node; the fence holds
        # until both have moved.
        move(provider, "a", "n2", "10.0.0.98:8080")
        assert fence.is_alive()
        move(provider, "alone", "n2", "10.0.0.99:8080")
    finally:
        fence.join(5)
    assert not fence.is_alive()
    assert ended == [False]
    assert router.events[-2:] == [("unrouted", f"a {[goes]}"), ("undrain", "a")]
    assert [e for e in router.events if e[0] == "drain"] == [("drain", "a")]
    assert picks(life, "a") == {stays, "10.0.0.98:8080"}


def test_a_fence_drains_a_function_once_it_has_a_replica_elsewhere_and_outlasts_engine_errors(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    (goes,) = on_nodes(provider, "a", "n2")
    listing = provider.instances
    failing = threading.Event()

    def instances(name: str | None = None) -> list[Instance]:
        if failing.is_set():
            raise ProviderError("the manager is busy")
        return listing(name)

    monkeypatch.setattr(provider, "instances", instances)
    fence = threading.Thread(target=life.fence, args=("n2", lambda: True))
    fence.start()
    try:
        assert fence.is_alive()
        on_nodes(provider, "a", "n1")  # the autoscaler starts one elsewhere
        wait(lambda: ("drain", "a") in router.events)
        failing.set()
        wait(lambda: fence.is_alive() and router.drains["a"] == 1)
        failing.clear()
        move(provider, "a", "n2", "10.0.0.99:8080")
    finally:
        fence.join(5)
    assert not fence.is_alive()
    assert router.events[-2:] == [("unrouted", f"a {[goes]}"), ("undrain", "a")]


def test_a_node_that_answers_again_is_undrained_at_once(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    on_nodes(provider, "a", "n1", "n2")
    back = threading.Event()
    ended: list[bool] = []
    fence = threading.Thread(
        target=lambda: ended.append(life.fence("n2", lambda: not back.is_set()))
    )
    fence.start()
    wait(lambda: ("drain", "a") in router.events)
    back.set()
    fence.join(5)
    assert ended == [True]
    assert router.events[-1] == ("undrain", "a")
    assert not any(e[0] == "unrouted" for e in router.events)  # its replica serves again
    assert len(picks(life, "a")) == 2


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_answers_is_a_tcp_connection(listener: socket.socket) -> None:
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    assert asyncio.run(answers(address))
    listener.close()
    assert not asyncio.run(answers(address))


@pytest.fixture
def other() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def address_of(server: socket.socket) -> str:
    return f"127.0.0.1:{server.getsockname()[1]}"


def watching(life: Lifecycle, fenced: list[str]) -> NodeWatch:
    def fence(node: str, lost: Callable[[], bool]) -> bool:
        fenced.append(node)
        return False

    life.fence = fence  # type: ignore[method-assign]
    return NodeWatch(life, misses=2, timeout=0.5)


def test_the_watch_fences_a_node_after_misses_in_a_row_and_not_before(
    life: Lifecycle, provider: FakeProvider, listener: socket.socket, other: socket.socket
) -> None:
    fenced: list[str] = []
    watch = watching(life, fenced)
    provider.node_addresses = {
        "n1": address_of(listener),
        "n2": address_of(other),
        "never-seen": "127.0.0.1:1",
    }

    async def rounds() -> None:
        await watch.round()
        assert watch.lost == set()  # a node that never answered is not lost
        listener.close()
        await watch.round()
        assert watch.lost == set()  # one miss is not enough
        await watch.round()
        assert watch.lost == {"n1"}
        await asyncio.gather(*watch._fences.values())  # in a worker thread
        assert life.metrics.nodes.labels("lost")._value.get() == 1
        await watch.round()
        assert watch.lost == {"n1"}  # its fence ended, but it still does not answer
        # The engine drops the node (its agent) from its list: nothing left to watch.
        del provider.node_addresses["n1"]
        await watch.round()
        assert watch.lost == set()

    asyncio.run(rounds())
    assert fenced == ["n1"]
    assert life.metrics.node_losses._value.get() == 1
    assert life.metrics.nodes.labels("up")._value.get() == 1
    assert life.metrics.nodes.labels("lost")._value.get() == 0


def test_no_miss_counts_when_nothing_answers_or_where_the_agent_moved(
    life: Lifecycle, provider: FakeProvider, listener: socket.socket, other: socket.socket
) -> None:
    fenced: list[str] = []
    watch = watching(life, fenced)
    provider.node_addresses = {"n1": address_of(listener), "n2": address_of(other)}
    moved = {"n1": "127.0.0.1:2", "n2": address_of(other)}
    nodes = provider.nodes

    async def rounds() -> None:
        await watch.round()
        listener.close()
        # The engine now places n1's agent elsewhere (a fresh listing says so).
        provider.nodes = lambda *, fresh=False: moved if fresh else nodes()  # type: ignore[method-assign]
        for _ in range(3):
            await watch.round()
        assert watch.lost == set()
        # Nothing answers at all: the gateway's own trouble, not every node's.
        provider.nodes = nodes  # type: ignore[method-assign]
        other.close()
        for _ in range(3):
            await watch.round()
        assert watch.lost == set()

    asyncio.run(rounds())
    assert fenced == []


def wait(check: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
