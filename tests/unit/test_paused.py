"""The paused tier: tier timing and the LRU choice (pure), and the sequences
(pause, resume, stop/deploy/remove of a paused function, restart) on fakes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from faas import policy
from faas.config import Settings
from faas.lifecycle import Lifecycle
from faas.provider import State
from faas.scaler import QUIET_WINDOW, Scaler, Step, due
from faas.spec import FunctionSpec, parse_spec

from .conftest import Clock
from .fakes import FakeProvider, FakeRouter, lifecycle


def spec(name: str = "a", **fields: object) -> FunctionSpec:
    return parse_spec({"name": name, "image": "x", **fields})


@pytest.fixture
def life(provider: FakeProvider, router: FakeRouter) -> Lifecycle:
    return lifecycle(provider, router, max_paused=2)


@pytest.mark.parametrize(
    ("fields", "settings", "tiers"),
    [
        ({}, {}, (60, 300)),  # the platform's pause timeout, the spec's idle timeout
        ({"pause_timeout": 5, "idle_timeout": 30}, {}, (5, 30)),
        ({"pause_timeout": 0}, {}, (0, 300)),  # the function turns the paused tier off
        ({}, {"max_paused": 0}, (0, 300)),  # ... or the platform does
        ({}, {"provider": "swarm"}, (0, 300)),  # ... or the engine cannot pause
        ({"idle_timeout": 60}, {}, (0, 60)),  # a pause no sooner than the stop: none
        ({"idle_timeout": 0}, {}, (60, 0)),  # never stopped: paused for good
        ({"idle_timeout": 0, "pause_timeout": 0}, {}, (0, 0)),
    ],
)
def test_idle_tiers(
    fields: dict[str, object], settings: dict[str, object], tiers: tuple[int, int]
) -> None:
    assert policy.idle_tiers(spec(**fields), Settings(**settings)) == tiers  # type: ignore[arg-type]


def test_the_tier_an_idle_function_is_due_for() -> None:
    assert due(State.RUNNING, 59, 60, 300) is None
    assert due(State.RUNNING, 60, 60, 300) is Step.PAUSE
    assert due(State.RUNNING, 300, 60, 300) is Step.STOP  # never paused (a restart): stop
    assert due(State.PAUSED, 299, 60, 300) is None
    assert due(State.PAUSED, 300, 60, 300) is Step.STOP
    assert due(State.PAUSED, 10**6, 60, 0) is None  # the stopped tier off
    assert due(State.RUNNING, 10**6, 0, 0) is None


def test_beyond_the_bound_the_longest_paused_go_first() -> None:
    paused = {"b": 3.0, "a": 1.0, "c": 2.0, "d": 2.0}
    assert policy.evictions(paused, 4) == []
    assert policy.evictions(paused, 2) == ["a", "c"]  # ties by name
    assert policy.evictions(paused, 0) == ["a", "c", "d", "b"]


def test_a_pause_holds_a_drain_until_a_request_resumes_it_once(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    instance = provider.add("a", State.RUNNING)
    assert life.pause("a").state is State.PAUSED
    assert router.drains["a"] == 1
    assert life.paused() == ["a"]
    provider.gate = threading.Event()

    async def scenario() -> list[tuple[str, float | None]]:
        fn = await asyncio.to_thread(life.get, "a")
        callers = asyncio.gather(*(life.address(fn) for _ in range(100)))
        await asyncio.sleep(0.05)
        assert router.drains["a"] == 1, "undrained before it was thawed"
        provider.gate.set()  # type: ignore[union-attr]
        return await callers

    got = asyncio.run(scenario())
    assert {address for address, _ in got} == {instance.address}
    assert provider.count("unpause") == 1
    assert provider.count("start") == 1  # `add`'s only: no cold start
    assert router.drains["a"] == 0
    assert life.paused() == []
    assert (life.resumes["a"], life.starts["a"]) == (1, 0)


def test_pausing_beyond_the_bound_stops_the_least_recently_paused(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    for name in "abc":
        provider.add(name, State.RUNNING)
    life.pause("a")
    life.pause("b")
    asyncio.run(life.wake("a"))  # used again: b is now the least recent
    life.pause("a")
    life.pause("c")
    assert [life.get(n).state for n in "abc"] == [State.PAUSED, State.STOPPED, State.PAUSED]
    assert life.paused() == ["a", "c"]
    assert router.drains["b"] == 0
    assert life.metrics.scale_downs.labels("evicted")._value.get() == 1


@pytest.mark.parametrize("how", ["stop", "deploy", "remove"])
def test_a_paused_function_is_thawed_before_it_goes_and_its_drain_released(
    how: str, life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    old = provider.add("a", State.RUNNING)
    life.pause("a")
    if how == "stop":
        life.stop("a")
        assert life.get("a").state is State.STOPPED
    elif how == "deploy":
        assert life.deploy(spec("a", env={"NEW": "1"})).state is State.RUNNING
        assert old.id not in provider.items
    else:
        life.remove("a")
        assert provider.instances("a") == []
    verbs = [verb for verb, i in provider.calls if i == old.id]
    assert verbs.index("unpause") < verbs.index("stop")
    assert router.drains["a"] == 0
    assert life.paused() == []


def test_a_restarted_gateway_drains_the_paused_functions_again(
    provider: FakeProvider, router: FakeRouter
) -> None:
    provider.add("a", State.RUNNING)
    provider.add("b", State.RUNNING)
    lifecycle(provider, router).pause("a")
    router.drains.clear()  # a new gateway: the old one's drains are gone with it
    fresh = lifecycle(provider, router)
    assert asyncio.run(fresh.recover()) == []
    assert router.events[-1] == ("drain_only", "a")
    assert fresh.paused() == ["a"]
    asyncio.run(fresh.wake("a"))
    assert router.drains["a"] == 0
    assert fresh.get("a").state is State.RUNNING


def test_an_idle_function_is_paused_then_stopped(
    provider: FakeProvider, router: FakeRouter, clock: Clock
) -> None:
    life = lifecycle(provider, router)
    scaler = Scaler(life, interval=3600, clock=clock)
    provider.add(spec("a", pause_timeout=10, idle_timeout=100), State.RUNNING)

    def idle() -> list[tuple[str, Step]]:
        return asyncio.run(scaler.idle())

    assert idle() == []
    clock.now += 10
    assert idle() == []  # due; now the bytes it sends must stay still
    clock.now += 10  # the quiet window, capped by the pause timeout
    assert idle() == [("a", Step.PAUSE)]
    life.pause("a")
    clock.now += 50
    assert idle() == []
    clock.now += 30  # 100 s since its last traffic
    assert idle() == [("a", Step.STOP)]
    assert QUIET_WINDOW > 10


def test_a_secret_update_replaces_a_paused_function_the_provider_cannot_reach(
    provider: FakeProvider, router: FakeRouter, tmp_path: Path
) -> None:
    life = lifecycle(provider, router, state_dir=tmp_path)
    provider.live_secrets = False
    life.secrets.create("db", b"1")
    old = life.deploy(spec("f", secrets=["db"])).container_id
    life.pause("f")
    assert life.update_secret("db", b"2") == ["f"]
    fn = life.get("f")
    assert (fn.state, fn.container_id != old) == (State.RUNNING, True)
    assert provider.mounted == {"f": {"db": b"2"}}
    assert router.drains["f"] == 0
