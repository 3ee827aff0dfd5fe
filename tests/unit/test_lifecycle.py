"""The sequences above the provider, against in-process fakes (no engine)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from faas.errors import (
    Cause,
    DeployFailed,
    FunctionNotFound,
    ImageNotFound,
    InvalidSpec,
    WakeFailed,
)
from faas.lifecycle import Lifecycle
from faas.provider import Instance, State
from faas.spec import parse_spec

from .fakes import MISSING, SILENT, FakeProvider, FakeRouter, lifecycle


@pytest.fixture
def life(provider: FakeProvider, router: FakeRouter) -> Lifecycle:
    return lifecycle(provider, router)


async def opened_later(gate: threading.Event, seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)  # lets every caller queue up behind the start first
    gate.set()


def test_concurrent_wakes_start_once(life: Lifecycle, provider: FakeProvider) -> None:
    provider.add("a")
    provider.gate = threading.Event()

    async def scenario() -> list[tuple[str, float | None]]:
        fn = await asyncio.to_thread(life.get, "a")
        callers = asyncio.gather(*(life.address(fn) for _ in range(50)))
        await opened_later(provider.gate)  # type: ignore[arg-type]
        return await callers

    got = asyncio.run(scenario())
    assert provider.count("start") == 1
    assert len({address for address, _ in got}) == 1
    assert all(waited is not None for _, waited in got)
    assert life.starts["a"] == 1


def test_a_running_function_is_not_woken(life: Lifecycle, provider: FakeProvider) -> None:
    running = provider.add("a", State.RUNNING)
    fn = life.get("a")
    assert asyncio.run(life.address(fn)) == (running.address, None)
    assert provider.count("start") == 1  # the one `add` made


def test_a_request_during_a_drain_waits_and_is_served(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    provider.add("a", State.RUNNING)
    stopping = threading.Event()
    release = threading.Event()
    real_stop = provider.stop

    def slow_stop(instance_id: str, timeout: float) -> None:
        stopping.set()
        assert release.wait(5)
        real_stop(instance_id, timeout)

    provider.stop = slow_stop  # type: ignore[method-assign]

    async def scenario() -> str:
        fn = await asyncio.to_thread(life.get, "a")  # the caller saw it running
        down = asyncio.create_task(life.scale_down("a"))
        await asyncio.to_thread(stopping.wait, 5)
        request = asyncio.create_task(life.address(fn))
        await asyncio.sleep(0.05)
        assert not request.done(), "the request went to a container on its way out"
        release.set()
        await down
        address, waited = await request
        assert waited is not None  # it woke the function again
        return address

    address = asyncio.run(scenario())
    assert provider.count("start") == 2
    assert any(i.address == address and i.state is State.RUNNING for i in provider.instances())
    drain, stop, unrouted, undrain = (
        router.events.index(("drain", "a")),
        provider.calls.index(("stop", provider.instances("a")[0].id)),
        router.events.index(("unrouted", "a")),
        router.events.index(("undrain", "a")),
    )
    assert drain < unrouted < undrain
    assert stop >= 0
    assert router.drains["a"] == 0


def test_a_failed_wake_fails_every_waiter_and_the_next_request_retries(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    provider.add("a")
    provider.fail_start = ("out of memory", True)
    provider.gate = threading.Event()

    async def waiters() -> list[BaseException | tuple[str, float | None]]:
        fn = await asyncio.to_thread(life.get, "a")
        callers = asyncio.gather(*(life.address(fn) for _ in range(10)), return_exceptions=True)
        await opened_later(provider.gate)  # type: ignore[arg-type]
        return await callers

    got = asyncio.run(waiters())
    assert provider.count("start") == 1
    assert all(isinstance(g, WakeFailed) and g.cause is Cause.OOM for g in got)
    (instance,) = provider.instances("a")
    assert instance.state is State.STOPPED  # stopped, not crash-looping
    assert ("unrouted", "a") in router.events
    assert router.drains["a"] == 0

    provider.fail_start = None
    fn = life.get("a")
    _address, waited = asyncio.run(life.address(fn))
    assert provider.count("start") == 2
    assert waited is not None
    assert life.metrics.wake_failures.labels("oom")._value.get() == 1


def test_a_start_that_never_answers_times_out(life: Lifecycle, provider: FakeProvider) -> None:
    provider.add(parse_spec({"name": "a", "image": SILENT}))
    with pytest.raises(WakeFailed) as failed:
        asyncio.run(life.wake("a"))
    assert failed.value.cause is Cause.TIMEOUT
    assert "no HTTP answer on port 8080 within 0.3s" in failed.value.reason


def test_deploy_applies_policy_and_routes(life: Lifecycle, router: FakeRouter) -> None:
    fn = life.deploy(parse_spec({"name": "a", "image": "faas/echo:latest"}))
    assert fn.state is State.RUNNING
    assert fn.spec.runtime is None
    assert fn.spec.resources.memory == "256m"
    assert router.events == [("routed", "a", fn.address, "")]


def test_deploy_pulls_a_missing_image_and_refuses_an_unknown_one(
    life: Lifecycle, provider: FakeProvider
) -> None:
    life.deploy(parse_spec({"name": "a", "image": "faas/new:1"}))
    assert ("pull", "faas/new:1") in provider.calls
    with pytest.raises(ImageNotFound):
        life.deploy(parse_spec({"name": "b", "image": MISSING}))
    assert provider.instances("b") == []


def test_rollout_replaces_the_old_instance_behind_a_drain(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    old = life.deploy(parse_spec({"name": "a", "image": "faas/echo:latest"}))
    new = life.deploy(parse_spec({"name": "a", "image": "faas/echo:latest", "env": {"V": "2"}}))
    assert [i.id for i in provider.instances("a")] == [new.container_id]
    # Drained from the new one's start (the proxy would route it before it listens)
    # until the proxy balances over the new one alone.
    assert router.events[1:] == [
        ("drain", "a"),
        ("routed", "a", new.address, ""),
        ("drain", "a"),
        ("routed", "a", new.address, "only"),
        ("undrain", "a"),
        ("undrain", "a"),
    ]
    stop_old = provider.calls.index(("stop", old.container_id))
    assert provider.calls.index(("start", new.container_id)) < stop_old


def test_rollout_keeps_the_old_instance_when_the_new_one_fails_readiness(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    old = life.deploy(parse_spec({"name": "a", "image": "faas/echo:latest"}))
    with pytest.raises(DeployFailed) as failed:
        life.deploy(parse_spec({"name": "a", "image": SILENT}))
    assert failed.value.cause is Cause.TIMEOUT
    assert failed.value.logs == "the last lines"
    (kept,) = provider.instances("a")
    assert (kept.id, kept.state) == (old.container_id, State.RUNNING)
    # Its route restored, then the drain the new one started behind goes.
    assert router.events[-2:] == [("routed", "a", old.address, "only"), ("undrain", "a")]


def test_rollout_keeps_the_old_instance_when_the_route_never_comes(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    old = life.deploy(parse_spec({"name": "a", "image": "faas/echo:latest"}))
    router.fail_route = True
    with pytest.raises(DeployFailed) as failed:
        life.deploy(parse_spec({"name": "a", "image": "faas/echo:latest", "port": 9000}))
    assert failed.value.cause is Cause.ROUTE
    assert [i.id for i in provider.instances("a")] == [old.container_id]


def test_a_crash_while_starting_says_exited_or_oom(life: Lifecycle, provider: FakeProvider) -> None:
    provider.fail_start = ("exited with code 3", False)
    with pytest.raises(DeployFailed) as failed:
        life.deploy(parse_spec({"name": "a", "image": "faas/echo:latest"}))
    assert (failed.value.cause, failed.value.reason) == (Cause.EXITED, "exited with code 3")
    assert provider.instances("a") == []


def test_policy_refusals_change_nothing(life: Lifecycle, provider: FakeProvider) -> None:
    with pytest.raises(InvalidSpec):
        life.deploy(parse_spec({"name": "a", "image": "x", "runtime": "kata"}))
    with pytest.raises(InvalidSpec):
        life.deploy(parse_spec({"name": "a", "image": "x", "cap_add": ["NET_ADMIN"]}))
    assert provider.calls == []


def test_remove_retires_every_instance(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    provider.add("a", State.RUNNING)
    provider.add("a")
    life.remove("a")
    assert provider.instances() == []
    assert router.events[-1] == ("unrouted", "a")
    with pytest.raises(FunctionNotFound):
        life.remove("a")


def test_an_invalid_instance_is_listed_and_never_started(
    life: Lifecycle, provider: FakeProvider
) -> None:
    provider.add("a", State.RUNNING)
    bad = provider.add("b")
    provider.items[bad.id] = Instance(
        id=bad.id, spec=bad.spec, state=State.INVALID, created=bad.created, reason="labels: port"
    )
    listed = {f.spec.name: f for f in life.list()}
    assert (listed["b"].state, listed["b"].reason) == (State.INVALID, "labels: port")
    assert listed["a"].state is State.RUNNING
    with pytest.raises(WakeFailed) as failed:
        asyncio.run(life.wake("b"))
    assert failed.value.cause is Cause.INVALID
    life.remove("b")
    assert [f.spec.name for f in life.list()] == ["a"]


def test_serving_instance_prefers_running_then_newest(
    life: Lifecycle, provider: FakeProvider
) -> None:
    running = provider.add("a", State.RUNNING)
    provider.add("a")  # newer, stopped
    assert life.get("a").container_id == running.id


def test_a_start_cut_by_a_gateway_crash_is_finished_behind_a_drain(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    """The gateway died mid-wake: the container runs but does not listen yet.
    At the next start the gateway drains it until it answers; requests join."""
    instance = provider.add("a", State.RUNNING)
    listening = threading.Event()
    provider.answers = lambda address, path: listening.is_set()  # type: ignore[method-assign]
    life.probe = provider.answers

    async def scenario() -> tuple[list[str], tuple[str, float | None]]:
        unfinished = await life.recover()
        assert life.waking("a")
        request = asyncio.create_task(life.address(life.get("a")))
        await asyncio.sleep(0.05)
        assert not request.done(), "a request reached a container that does not listen"
        listening.set()
        return unfinished, await request

    unfinished, (address, waited) = asyncio.run(scenario())
    assert unfinished == ["a"]
    assert address == instance.address
    assert waited is not None
    # No drain is left from before the restart (none was paused), then the start's own.
    assert router.events == [("drain_only", ""), ("drain", "a"), ("undrain", "a")]
    assert provider.count("start") == 1  # only `add`'s: nothing was started again


def test_recover_leaves_answering_functions_alone(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    provider.add("a", State.RUNNING)
    provider.add("b")
    assert asyncio.run(life.recover()) == []
    assert router.events == [("drain_only", "")]  # no drain left over from before


def test_a_cut_start_that_never_answers_is_stopped(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    provider.add(parse_spec({"name": "a", "image": SILENT}), State.RUNNING)

    async def scenario() -> None:
        assert await life.recover() == ["a"]
        with pytest.raises(WakeFailed):
            await life.wake("a")  # joins the unfinished start, and its failure

    asyncio.run(scenario())
    (instance,) = provider.instances("a")
    assert instance.state is State.STOPPED
    assert ("unrouted", "a") in router.events
    assert router.drains["a"] == 0
