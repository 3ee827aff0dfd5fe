"""Autoscaling: replicas follow the load, read without touching a request.

Load is the average number of requests in flight. The proxy adds up how long
its requests took, per function (`Router.traffic`); by Little's law the
rate of that sum over a window is the average concurrency in the window. The
proxy adds a request when it completes, so one long request would show as a
burst: a request counts for at most the window it is averaged over (the sum
over a window is capped at the requests completed in it times its length).
The requests the gateway itself forwards (cold ones) are added as they stand.

Knative's model, in two windows:
- **panic** (`FAAS_AUTOSCALE_PANIC_WINDOW`, short): when its concurrency (or
  that of the last round, so that a jump counts at once) needs more
  replicas than are ready, scale up at once;
- **stable** (`FAAS_AUTOSCALE_STABLE_WINDOW`, long): scale down to what its
  concurrency (or the panic window's, if higher) needs, and only once a whole
  stable window has passed since the last scale-up or explicit `faas scale`.

Replicas = ceil(concurrency / the function's `concurrency` target), within
[max(min_scale, 1), max_scale]. Scaling to zero stays with the idle scaler
(`faas.scaler`), which knows about long requests and streams. A replica that
died (a `docker kill`) is replaced: the count the autoscaler wants is kept
here, in memory; after a gateway restart it starts from what is running.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger
from starlette.concurrency import run_in_threadpool

from . import labels, policy
from .config import Settings
from .errors import NoRoom
from .lifecycle import Lifecycle
from .logging import logged
from .provider import Function, State, Traffic
from .scaler import Scaler


@dataclass(frozen=True)
class Sample:
    at: float
    requests: float  # completed through the proxy, so far
    busy: float  # their durations summed
    forwarded: float  # busy seconds of the requests the gateway forwarded itself


@dataclass
class Load:
    """What the autoscaler has seen of one running function."""

    since: float  # when it last scaled it up (or was told a count): the stable window starts
    wanted: int  # replicas it wants now
    samples: deque[Sample] = field(default_factory=deque)
    changed: bool = False  # the last round changed `wanted` (else a scale-up replaces)
    blocked: bool = False  # the last scale-up found no room (logged once)

    def add(self, sample: Sample) -> None:
        if self.samples and sample.requests < self.samples[-1].requests:
            self.samples.clear()  # the proxy restarted: its counters began again
        self.samples.append(sample)

    def rate(self, now: float, window: float) -> float | None:
        """Average requests in flight over the last `window` seconds (or what is known)."""
        start = now - window
        older = [s for s in self.samples if s.at <= start]
        first = older[-1] if older else self.samples[0]
        last = self.samples[-1]
        span = last.at - first.at
        if span <= 0:
            return None
        proxied = min(last.busy - first.busy, (last.requests - first.requests) * span)
        return max(proxied + last.forwarded - first.forwarded, 0.0) / span


def replicas_for(concurrency: float, target: int) -> int:
    """Replicas that hold `concurrency` requests at `target` each."""
    return math.ceil(round(concurrency / target, 6))


@dataclass
class Autoscaler:
    lifecycle: Lifecycle
    scaler: Scaler  # for the requests the gateway forwards itself
    interval: float
    panic_window: float
    stable_window: float
    clock: Callable[[], float] = time.monotonic
    loads: dict[str, Load] = field(default_factory=dict)
    _busy: set[str] = field(default_factory=set)  # functions being scaled right now

    @classmethod
    def from_settings(cls, lifecycle: Lifecycle, scaler: Scaler, settings: Settings) -> Autoscaler:
        return cls(
            lifecycle,
            scaler,
            settings.autoscale_interval,
            settings.autoscale_panic_window,
            settings.autoscale_stable_window,
        )

    def told(self, name: str, replicas: int) -> None:
        """`faas scale` set a count: keep it for a stable window before following load."""
        if replicas == 0:
            self.loads.pop(name, None)
            return
        load = self.loads.setdefault(name, Load(since=self.clock(), wanted=replicas))
        load.since, load.wanted = self.clock(), replicas

    async def scale(self, fn: Function, replicas: int) -> None:
        """`faas scale`: run `replicas` now (0 stops it), then keep that count for a
        stable window before following the load."""
        policy.check_replicas(fn.spec, replicas)
        name = fn.spec.name
        self.told(name, replicas)  # first: a round meanwhile must not undo it
        try:
            await self.lifecycle.scale(fn, replicas)
        except BaseException:
            self.loads.pop(name, None)  # follow what runs, not a count never reached
            raise

    async def run(self) -> None:
        """Read the load every `interval` seconds and scale, forever."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.step()
            except Exception as exc:
                self.lifecycle.metrics.loop_errors.labels("autoscaler").inc()
                logged(exc).warning("autoscaling round failed: {}", exc)

    async def step(self) -> dict[str, int]:
        """One round: the replicas wanted per running function (scaling started for
        those that differ from what is ready)."""
        lc = self.lifecycle
        if lc.router is None:
            return {}
        traffic = await run_in_threadpool(lc.router.traffic)
        functions = await run_in_threadpool(lc.list)
        now = self.clock()
        running = {f.spec.name: f for f in functions if f.state is State.RUNNING}
        for gone in set(self.loads) - set(running):
            del self.loads[gone]
        wanted: dict[str, int] = {}
        for name, fn in running.items():
            if lc.waking(name) or lc.draining(name) or name in self._busy:
                continue
            served = traffic.get(labels.service_name(name, lc.settings.provider), Traffic(0.0, 0.0))
            wanted[name] = self._want(fn, served, now)
            if wanted[name] != len(fn.addresses):
                asyncio.create_task(self._scale(fn, wanted[name]))  # noqa: RUF006
        lc.metrics.saw_replicas(
            {n: (wanted.get(n, len(f.replicas)), len(f.addresses)) for n, f in running.items()}
        )
        return wanted

    def _want(self, fn: Function, served: Traffic, now: float) -> int:
        spec, ready = fn.spec, len(fn.addresses)
        load = self.loads.get(spec.name)
        if load is None:
            load = self.loads[spec.name] = Load(since=now, wanted=max(ready, 1))
        forwarded = 0.0
        if load.samples:  # the gateway's own requests in flight, integrated over time
            last = load.samples[-1]
            forwarded = last.forwarded + self.scaler.in_flight(spec.name) * (now - last.at)
        load.add(Sample(now, served.requests, served.seconds, forwarded))
        while len(load.samples) > 2 and load.samples[1].at <= now - self.stable_window:
            load.samples.popleft()
        # A jump shows in the last round before it fills the panic window, whose
        # average still holds the quiet seconds before it: take the higher.
        rates = (load.rate(now, self.panic_window), load.rate(now, self.interval))
        panic = max((r for r in rates if r is not None), default=None)
        stable = load.rate(now, self.stable_window)
        floor, ceiling = max(spec.min_scale, 1), spec.max_scale
        self.lifecycle.metrics.saw_concurrency(spec.name, panic or 0.0)
        before = load.wanted
        if panic is not None and replicas_for(panic, spec.concurrency) > load.wanted:
            load.wanted, load.since = replicas_for(panic, spec.concurrency), now
        elif stable is not None and now - load.since >= self.stable_window:
            # Down to what the stable window needs, but not below what the last
            # seconds need: else a fading burst would flap down and up again.
            load.wanted = replicas_for(max(stable, panic or 0.0), spec.concurrency)
        load.wanted = min(max(load.wanted, floor), ceiling)
        load.changed = load.wanted != before
        return load.wanted

    async def _scale(self, fn: Function, replicas: int) -> None:
        name = fn.spec.name
        load = self.loads.get(name)
        reason = "load" if load is None or load.changed else "replace"
        self._busy.add(name)
        try:
            await run_in_threadpool(self.lifecycle.try_scale_to, name, replicas, reason)
            if load is not None:
                load.blocked = False
        except NoRoom as exc:
            self.lifecycle.metrics.scale_blocked.labels(name, "memory").inc()
            if load is not None and not load.blocked:
                load.blocked = True
                logger.warning("{}", exc.message)
        except Exception as exc:
            self.lifecycle.metrics.loop_errors.labels("autoscaler").inc()
            logger.warning("scaling {} to {} failed: {}", name, replicas, exc)
        finally:
            self._busy.discard(name)
