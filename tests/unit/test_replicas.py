"""Replicas and autoscaling against the fakes: counts, drains, memory, windows."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from faas import labels
from faas.autoscaler import Autoscaler, replicas_for
from faas.errors import DeployFailed, InvalidSpec, NoRoom
from faas.lifecycle import Lifecycle
from faas.policy import effective, fits
from faas.provider import State
from faas.scaler import Scaler
from faas.spec import FunctionSpec, parse_spec

from .conftest import Clock
from .fakes import FakeProvider, FakeRouter, lifecycle


def spec(**fields: object) -> FunctionSpec:
    return parse_spec({"name": "a", "image": "faas/echo:latest", **fields})


@pytest.fixture
def life(provider: FakeProvider, router: FakeRouter) -> Lifecycle:
    return lifecycle(provider, router)


def ready(life: Lifecycle, name: str = "a") -> int:
    return len(life.get(name).addresses)


def test_scale_up_and_down(life: Lifecycle, provider: FakeProvider, router: FakeRouter) -> None:
    life.deploy(spec())
    fn = life.scale_to("a", 3)
    assert len(fn.addresses) == 3
    # Drained while the new ones start (they run before they listen), then all routed.
    assert router.events[-3:] == [
        ("drain", "a"),
        ("routed", "a", ",".join(sorted(fn.addresses)), ""),
        ("undrain", "a"),
    ]
    oldest = sorted(fn.replicas, key=lambda i: i.created)[:2]
    fn = life.scale_to("a", 1)
    assert len(fn.addresses) == 1
    assert [i.id for i in provider.instances("a")] == [fn.container_id]  # the newest stays
    assert {("stop", i.id) for i in oldest} <= set(provider.calls)
    drain = router.events.index(("drain", "a"), 2)
    assert router.events[drain:] == [
        ("drain", "a"),
        ("routed", "a", fn.addresses[0], "only"),
        ("undrain", "a"),
    ]
    assert life.metrics.scale_events.labels("up", "explicit")._value.get() == 1
    assert life.metrics.scale_events.labels("down", "explicit")._value.get() == 1


def test_deploy_replaces_every_replica_with_as_many(
    life: Lifecycle, provider: FakeProvider
) -> None:
    life.deploy(spec(min_scale=2))
    old = {i.id for i in provider.instances("a")}
    assert len(old) == 2
    life.scale_to("a", 3)
    fn = life.deploy(spec(min_scale=2, env={"V": "2"}))
    assert len(fn.addresses) == 3
    assert not old & {i.id for i in provider.instances("a")}


def test_scale_to_zero_keeps_one_stopped_instance(life: Lifecycle, provider: FakeProvider) -> None:
    life.deploy(spec())
    life.scale_to("a", 3)
    asyncio.run(life.scale_down("a"))
    (left,) = provider.instances("a")
    assert left.state is State.STOPPED
    fn = life.scale_to("a", 2)  # wakes it, then adds one
    assert len(fn.addresses) == 2


def test_a_dead_replica_is_replaced(life: Lifecycle, provider: FakeProvider) -> None:
    life.deploy(spec())
    fn = life.scale_to("a", 3)
    provider.stop(fn.replicas[0].id, 0)  # killed from outside
    assert ready(life) == 2
    fn = life.scale_to("a", 3, reason="replace")
    assert len(fn.addresses) == 3
    assert len(provider.instances("a")) == 3  # the dead one is gone


def test_no_replica_beyond_the_hosts_memory(life: Lifecycle, provider: FakeProvider) -> None:
    provider.memory = 600 << 20
    life.deploy(spec(resources={"memory": "256m"}))
    life.scale_to("a", 2)
    with pytest.raises(NoRoom) as refused:
        life.scale_to("a", 3)
    assert "256 MiB" in refused.value.message
    assert ready(life) == 2
    assert fits(256 << 20, 256 << 20, 600 << 20)
    assert not fits(256 << 20, 512 << 20, 600 << 20)
    assert fits(1 << 40, 0, 0)  # unknown memory: no bound


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"min_scale": 3, "max_scale": 2}, "max_scale"),
        ({"min_scale": -1}, "min_scale"),
        ({"max_scale": 0}, "max_scale"),
        ({"concurrency": 0}, "concurrency"),
        ({"max_scale": 1000}, "max_scale"),
    ],
)
def test_bad_bounds_are_refused(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        spec(**fields)
    assert field in refused.value.message


def test_openfaas_scaling_labels(life: Lifecycle) -> None:
    engine = life.provider.engine_info()
    scale = "com.openfaas.scale."
    got = effective(
        spec(labels={f"{scale}min": "2", f"{scale}max": "4", f"{scale}zero-duration": "1m30s"}),
        life.settings,
        engine,
    )
    assert (got.min_scale, got.max_scale, got.idle_timeout) == (2, 4, 90)
    got = effective(
        spec(labels={f"{scale}zero": "true", f"{scale}min": "3"}), life.settings, engine
    )
    assert got.min_scale == 0
    got = effective(spec(labels={f"{scale}zero": "false"}), life.settings, engine)
    assert got.min_scale == 1
    for bad in ({f"{scale}min": "x"}, {f"{scale}zero": "maybe"}, {f"{scale}zero-duration": "1d"}):
        with pytest.raises(InvalidSpec):
            effective(spec(labels=bad), life.settings, engine)
    with pytest.raises(InvalidSpec):  # min above max
        effective(spec(labels={f"{scale}min": "5", f"{scale}max": "2"}), life.settings, engine)


def test_replicas_for_concurrency() -> None:
    assert [replicas_for(c, 10) for c in (0, 0.5, 10, 10.0000001, 10.5, 31)] == [0, 1, 1, 1, 2, 4]


class Loaded:
    """A function under a steady load: `in_flight` requests all the time."""

    def __init__(
        self, router: FakeRouter, clock: Clock, in_flight: float = 0, duration: float = 0.1
    ) -> None:
        self.router, self.clock, self.in_flight = router, clock, in_flight
        self.duration = duration  # of each request, in seconds

    def advance(self, seconds: float) -> None:
        service = labels.service_name("a")
        self.router.busy[service] = self.router.busy.get(service, 0.0) + self.in_flight * seconds
        completed = self.in_flight * seconds / self.duration
        self.router.counts[service] = self.router.counts.get(service, 0.0) + completed
        self.clock.now += seconds


@pytest.fixture
def autoscaler(life: Lifecycle, clock: Clock) -> Autoscaler:
    return Autoscaler(
        life, Scaler(life, 3600), interval=1, panic_window=6, stable_window=60, clock=clock
    )


def settle(autoscaler: Autoscaler) -> dict[str, int]:
    """One round, and the scaling it started."""

    async def run() -> dict[str, int]:
        wanted = await autoscaler.step()
        while autoscaler._busy or any(
            not t.done() for t in asyncio.all_tasks() if t is not asyncio.current_task()
        ):
            await asyncio.sleep(0.001)
        return wanted

    return asyncio.run(run())


def test_load_scales_up_at_once_and_down_after_a_stable_window(
    life: Lifecycle, router: FakeRouter, clock: Clock, autoscaler: Autoscaler
) -> None:
    life.deploy(spec(max_scale=3, concurrency=10))
    load = Loaded(router, clock, in_flight=25)
    settle(autoscaler)
    load.advance(1)
    assert settle(autoscaler) == {"a": 3}  # 25 in flight at 10 each
    assert ready(life) == 3
    assert life.metrics.scale_events.labels("up", "load")._value.get() == 1
    load.in_flight = 4
    for _ in range(59):
        load.advance(1)
        settle(autoscaler)
    assert ready(life) == 3  # not before a whole stable window
    load.advance(1)
    settle(autoscaler)
    assert ready(life) == 1  # 60 s averaging under 5 in flight: one replica holds it
    load.advance(1)
    settle(autoscaler)
    assert life.metrics.snapshot.replicas["a"] == (1, 1)  # (desired, ready)


def test_bounds_and_a_told_count_hold(
    life: Lifecycle, router: FakeRouter, clock: Clock, autoscaler: Autoscaler
) -> None:
    life.deploy(spec(min_scale=2, max_scale=4, concurrency=1))
    load = Loaded(router, clock, in_flight=100)
    settle(autoscaler)
    load.advance(1)
    assert settle(autoscaler) == {"a": 4}  # max_scale caps it
    load.in_flight = 0
    for _ in range(130):
        load.advance(1)
        settle(autoscaler)
    assert ready(life) == 2  # min_scale holds it
    life.scale_to("a", 3)
    autoscaler.told("a", 3)
    for _ in range(30):
        load.advance(1)
        settle(autoscaler)
    assert ready(life) == 3  # told: kept for a stable window


def test_the_autoscaler_replaces_a_killed_replica(
    life: Lifecycle,
    provider: FakeProvider,
    router: FakeRouter,
    clock: Clock,
    autoscaler: Autoscaler,
) -> None:
    life.deploy(spec())
    life.scale_to("a", 3)
    autoscaler.told("a", 3)
    load = Loaded(router, clock)
    settle(autoscaler)
    provider.stop(life.get("a").replicas[0].id, 0)
    load.advance(1)
    settle(autoscaler)
    assert ready(life) == 3
    assert life.metrics.scale_events.labels("up", "replace")._value.get() == 1


def test_no_room_is_counted_not_raised(
    life: Lifecycle,
    provider: FakeProvider,
    router: FakeRouter,
    clock: Clock,
    autoscaler: Autoscaler,
) -> None:
    provider.memory = 300 << 20
    life.deploy(spec(resources={"memory": "256m"}))
    load = Loaded(router, clock, in_flight=50)
    settle(autoscaler)
    load.advance(1)
    settle(autoscaler)
    assert ready(life) == 1
    assert life.metrics.scale_blocked.labels("a", "memory")._value.get() == 1


def test_while_a_replica_starts_the_gateway_forwards_to_the_others(
    life: Lifecycle, provider: FakeProvider
) -> None:
    first = life.deploy(spec())
    provider.gate = threading.Event()
    scaling = threading.Thread(target=life.scale_to, args=("a", 2))
    scaling.start()
    while provider.count("start") < 2:  # the new replica's start is under way
        time.sleep(0.001)
    new = next(i for i in provider.instances("a") if i.id != first.container_id)
    provider._set(new.id, state=State.RUNNING, address="10.9.9.9:8080")  # runs, not ready
    during = {asyncio.run(life.address(life.get("a")))[0] for _ in range(20)}
    provider.gate.set()
    scaling.join()
    assert during == {first.address}
    assert len(life.get("a").addresses) == 2


def test_a_jump_after_quiet_seconds_scales_up_in_one_round(
    life: Lifecycle, router: FakeRouter, clock: Clock, autoscaler: Autoscaler
) -> None:
    life.deploy(spec(max_scale=3, concurrency=10))
    load = Loaded(router, clock)
    settle(autoscaler)
    for _ in range(10):  # quiet: the panic window fills with zeros
        load.advance(1)
        settle(autoscaler)
    load.in_flight = 25
    load.advance(1)
    assert settle(autoscaler) == {"a": 3}  # not only once 6 s of it fill the window


def test_a_failed_route_leaves_no_drain(life: Lifecycle, router: FakeRouter) -> None:
    life.deploy(spec())
    router.fail_route = True
    with pytest.raises(DeployFailed):
        life.scale_to("a", 2)
    assert router.drains["a"] == 0  # else the function stays off the warm path for good
    assert not life._unready


def test_replicas_that_fail_to_start_are_discarded(
    life: Lifecycle, provider: FakeProvider, router: FakeRouter
) -> None:
    first = life.deploy(spec())
    provider.fail_start = ("exited with 1", False)
    with pytest.raises(DeployFailed):
        life.scale_to("a", 3)
    assert [i.id for i in provider.instances("a")] == [first.container_id]
    assert ready(life) == 1
    assert router.drains["a"] == 0


def test_a_stopped_function_is_not_woken_by_the_autoscaler(
    life: Lifecycle, provider: FakeProvider
) -> None:
    life.deploy(spec())
    asyncio.run(life.scale_down("a"))
    assert life.try_scale_to("a", 2, "load") is None
    assert [i.state for i in provider.instances("a")] == [State.STOPPED]


def test_a_long_request_counts_for_its_window_only(
    life: Lifecycle, router: FakeRouter, clock: Clock, autoscaler: Autoscaler
) -> None:
    life.deploy(spec(max_scale=3, concurrency=10))
    settle(autoscaler)
    # Traefik adds a request's duration when it completes: one 60 s request shows
    # as 60 busy seconds within one round, which is one request in flight, not 60.
    service = labels.service_name("a")
    router.busy[service], router.counts[service] = 60.0, 1.0
    clock.now += 1
    assert settle(autoscaler) == {"a": 1}


def test_a_proxy_restart_resets_the_samples(
    life: Lifecycle, router: FakeRouter, clock: Clock, autoscaler: Autoscaler
) -> None:
    life.deploy(spec(max_scale=3, concurrency=10))
    load = Loaded(router, clock, in_flight=5)
    for _ in range(5):
        load.advance(1)
        settle(autoscaler)
    service = labels.service_name("a")
    router.busy[service], router.counts[service] = 0.0, 0.0  # counters begin again
    load.advance(1)
    assert settle(autoscaler) == {"a": 1}
    load.in_flight = 25
    load.advance(1)
    assert settle(autoscaler) == {"a": 3}  # measured from the new counters on


def test_scale_requests_outside_the_bounds_are_refused(
    life: Lifecycle, autoscaler: Autoscaler
) -> None:
    fn = life.deploy(spec(min_scale=2, max_scale=4))
    for wrong in (1, 5, -1):
        with pytest.raises(InvalidSpec) as refused:
            asyncio.run(autoscaler.scale(fn, wrong))
        assert "0 or n from 2 to 4" in refused.value.message
    assert ready(life) == 2  # nothing changed
    assert "a" not in autoscaler.loads or autoscaler.loads["a"].wanted == 2
    asyncio.run(autoscaler.scale(fn, 3))
    assert ready(life) == 3


def test_while_a_deploy_starts_the_gateway_forwards_to_the_old_instance(
    life: Lifecycle, provider: FakeProvider
) -> None:
    first = life.deploy(spec())
    provider.gate = threading.Event()
    deploying = threading.Thread(target=life.deploy, args=(spec(env={"V": "2"}),))
    deploying.start()
    while provider.count("start") < 2:
        time.sleep(0.001)
    new = next(i for i in provider.instances("a") if i.id != first.container_id)
    provider._set(new.id, state=State.RUNNING, address="10.9.9.9:8080")  # runs, not ready
    during = {asyncio.run(life.address(life.get("a")))[0] for _ in range(20)}
    provider.gate.set()
    deploying.join()
    assert during == {first.address}
    assert life.get("a").container_id == new.id  # and then the new one alone
