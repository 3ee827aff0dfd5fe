"""Idle detection on a fake clock, and background loops that survive a bad round."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

import pytest

from faas import labels
from faas.provider import Instance, State
from faas.sampler import Sampler
from faas.scaler import QUIET_WINDOW, Scaler, Step
from faas.spec import FunctionSpec, parse_spec

from .conftest import Clock
from .fakes import FakeProvider, FakeRouter, lifecycle


@pytest.fixture
def scaler(provider: FakeProvider, router: FakeRouter, clock: Clock) -> Scaler:
    return Scaler(lifecycle(provider, router), interval=3600, clock=clock)


def idle(scaler: Scaler) -> list[str]:
    """The functions due for a stop (the idle checks of the stopped tier)."""
    return [name for name, step in asyncio.run(scaler.idle()) if step is Step.STOP]


def spec(name: str, timeout: int = 60, min_scale: int = 0) -> FunctionSpec:
    return parse_spec({"name": name, "image": "x", "idle_timeout": timeout, "min_scale": min_scale})


def test_idle_after_the_timeout_and_a_quiet_window(
    scaler: Scaler, provider: FakeProvider, clock: Clock
) -> None:
    provider.add(spec("a"), State.RUNNING)
    assert idle(scaler) == []  # first seen now
    clock.now += 61
    assert idle(scaler) == []  # timeout passed; now watch the bytes it sends
    clock.now += QUIET_WINDOW
    assert idle(scaler) == ["a"]


def test_requests_counted_by_the_proxy_keep_it_busy(
    scaler: Scaler, provider: FakeProvider, router: FakeRouter, clock: Clock
) -> None:
    provider.add(spec("a"), State.RUNNING)
    idle(scaler)
    for served in range(1, 4):
        clock.now += 50
        router.counts[labels.service_name("a")] = served
        assert idle(scaler) == []
    clock.now += 61
    idle(scaler)
    clock.now += QUIET_WINDOW
    assert idle(scaler) == ["a"]


def test_a_long_silent_request_is_seen_through_the_bytes_sent(
    scaler: Scaler, provider: FakeProvider, clock: Clock
) -> None:
    instance = provider.add(spec("a"), State.RUNNING)
    idle(scaler)
    clock.now += 61
    idle(scaler)
    for _ in range(5):  # keep-alive answers, a trickle of a stream...
        clock.now += QUIET_WINDOW
        provider.sent[instance.id] += 60
        assert idle(scaler) == []
    # Quiet from now on: idle only a whole timeout after the last bytes seen.
    quiet_for = 0
    while not idle(scaler):
        clock.now += 10
        quiet_for += 10
        assert quiet_for <= 200
    assert quiet_for >= 60


def test_requests_the_gateway_forwards_keep_it_busy(
    scaler: Scaler, provider: FakeProvider, clock: Clock
) -> None:
    provider.add(spec("a"), State.RUNNING)
    idle(scaler)
    scaler.begin("a")
    clock.now += 600
    assert idle(scaler) == []
    scaler.end("a")
    assert scaler.in_flight("a") == 0
    clock.now += 61
    idle(scaler)
    clock.now += QUIET_WINDOW
    assert idle(scaler) == ["a"]


def test_never_idle_kept_running_waking_or_stopped(
    scaler: Scaler, provider: FakeProvider, clock: Clock
) -> None:
    provider.add(spec("kept", min_scale=1), State.RUNNING)
    provider.add(spec("off"))
    for _ in range(3):
        idle(scaler)
        clock.now += 1000
    assert idle(scaler) == []


def test_a_wake_starts_a_fresh_record(scaler: Scaler, provider: FakeProvider, clock: Clock) -> None:
    provider.add(spec("a"), State.RUNNING)
    idle(scaler)
    clock.now += 61
    idle(scaler)
    scaler.lifecycle.starts["a"] += 1  # woken meanwhile (stopped and started)
    clock.now += QUIET_WINDOW
    assert idle(scaler) == []


def fail_first_listing(provider: FakeProvider, error: BaseException) -> list[int]:
    """Make the provider's first listing raise `error`; returns the listings count."""
    real, rounds = provider.instances, [0]

    def flaky(name: str | None = None) -> list[Instance]:
        rounds[0] += 1
        if rounds[0] == 1:
            raise error
        return real(name)

    provider.instances = flaky  # type: ignore[method-assign]
    return rounds


async def runs_three_rounds(loop: Coroutine[object, object, None], rounds: list[int]) -> None:
    task = asyncio.create_task(loop)
    while rounds[0] < 3:
        await asyncio.sleep(0.001)
    assert not task.done(), "the loop ended"
    task.cancel()


def test_the_idle_loop_survives_a_bad_round(scaler: Scaler, provider: FakeProvider) -> None:
    scaler.interval = 0.001
    rounds = fail_first_listing(provider, ValueError("a surprise from the engine"))
    asyncio.run(runs_three_rounds(scaler.run(), rounds))
    assert scaler.lifecycle.metrics.loop_errors.labels("scaler")._value.get() == 1


def test_the_sampler_survives_a_bad_round(provider: FakeProvider) -> None:
    life = lifecycle(provider)
    sampler = Sampler(life, life.metrics, interval=0.001)
    provider.add("a", State.RUNNING)
    rounds = fail_first_listing(provider, RecursionError("deep"))
    asyncio.run(runs_three_rounds(sampler.run(), rounds))
    assert life.metrics.loop_errors.labels("sampler")._value.get() == 1
    assert "a" in life.metrics.snapshot.resources
