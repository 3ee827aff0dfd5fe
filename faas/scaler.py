"""Idle detection: which running functions to scale to zero, and when.

Idleness is read from the proxy's per-service request counters (no Python on
the warm path), plus the requests the gateway forwards itself, confirmed by
the bytes the container sends, so that a long request or a streaming response
is never taken for silence (even a silent long request is seen: the proxy's
TCP keep-alive probes, every 15 s, are answered by the container). The
scale-down itself is `Lifecycle.scale_down` (through a drain).

Two tiers (`faas.policy.idle_tiers`): idle for the pause timeout, a function is
paused (memory kept, resumed in tens of ms); idle for the idle timeout, it is
stopped, paused or not. A paused function serves nothing: any request resumes it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger
from starlette.concurrency import run_in_threadpool

from . import labels, policy
from .lifecycle import Lifecycle
from .logging import logged
from .provider import State

# Seconds the container must stay silent before an idle function is stopped.
QUIET_WINDOW = 20.0


class Step(enum.StrEnum):
    PAUSE = "pause"
    STOP = "stop"


def due(state: State, idle_for: float, pause_after: int, stop_after: int) -> Step | None:
    """The tier an idle function (running or paused) is due for, if any
    (`pause_after`, `stop_after`: seconds, 0 for never, from `policy.idle_tiers`)."""
    if stop_after and idle_for >= stop_after:
        return Step.STOP
    if state is State.RUNNING and pause_after and idle_for >= pause_after:
        return Step.PAUSE
    return None


@dataclass
class Activity:
    """What the scaler last saw of one running function."""

    since: float  # monotonic time of the last sign of traffic
    starts: int = 0  # the lifecycle's wakes and resumes then: either starts a new record
    requests: float = -1.0  # the proxy's counter at that time
    sent: int | None = None  # bytes the container had sent when first seen idle
    sent_since: float = 0.0  # ... and when that was


@dataclass
class Scaler:
    lifecycle: Lifecycle
    interval: float
    clock: Callable[[], float] = time.monotonic
    _activity: dict[str, Activity] = field(default_factory=dict)
    _proxied: Counter[str] = field(default_factory=Counter)

    def begin(self, name: str) -> None:
        """A request the gateway forwards itself (the proxy does not count those) starts."""
        self._proxied[name] += 1
        self._touch(name)

    def end(self, name: str) -> None:
        self._proxied[name] -= 1
        if self._proxied[name] <= 0:
            del self._proxied[name]
        self._touch(name)

    def in_flight(self, name: str) -> int:
        """Requests the gateway is forwarding to `name` right now."""
        return self._proxied[name]

    def _touch(self, name: str) -> None:
        if name in self._activity:
            self._activity[name].since = self.clock()

    async def run(self) -> None:
        """Check for idle functions every `interval` seconds, forever.

        One failed round (the engine away, a surprise from it) is logged and
        counted; the loop itself never ends until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                for name, step in await self.idle():
                    asyncio.create_task(self._scale_down_logged(name, step))  # noqa: RUF006
            except Exception as exc:
                self.lifecycle.metrics.loop_errors.labels("scaler").inc()
                logged(exc).warning("idle check failed: {}", exc)

    async def _scale_down_logged(self, name: str, step: Step = Step.STOP) -> None:
        try:
            await self.lifecycle.scale_down(name, reason="idle", pause=step is Step.PAUSE)
        except Exception as exc:
            self.lifecycle.metrics.loop_errors.labels("scaler").inc()
            logger.warning("scale-down of {} failed: {}", name, exc)

    async def idle(self) -> list[tuple[str, Step]]:
        """Scale-to-zero functions that have seen no traffic for long enough, and
        the tier each is due for: running ones to pause or stop, paused ones to stop."""
        lc = self.lifecycle
        counts = await run_in_threadpool(lc.router.request_counts) if lc.router else {}
        functions = await run_in_threadpool(lc.list)
        lc.metrics.saw_functions(functions)
        now = self.clock()
        watched = {f.spec.name: f for f in functions if f.state in (State.RUNNING, State.PAUSED)}
        for gone in set(self._activity) - set(watched):
            del self._activity[gone]
        idle = []
        for name, fn in watched.items():
            if fn.spec.min_scale > 0 or lc.draining(name) or lc.waking(name):
                continue
            woken = lc.starts[name] + lc.resumes[name]
            seen = self._activity.get(name)
            if seen is None or seen.starts != woken:
                seen = self._activity[name] = Activity(since=now, starts=woken)
            pause_after, stop_after = policy.idle_tiers(fn.spec, lc.settings)
            if fn.state is State.PAUSED:  # frozen: no traffic but what resumes it
                if due(fn.state, now - seen.since, pause_after, stop_after):
                    idle.append((name, Step.STOP))
                continue
            requests = counts.get(labels.service_name(name, lc.settings.provider), 0.0)
            if requests != seen.requests or self._proxied[name]:
                seen.since, seen.requests = now, requests
            step = due(fn.state, now - seen.since, pause_after, stop_after)
            timeout = min(t for t in (pause_after, stop_after) if t) if step else 0
            if step and await self._quiet([i.id for i in fn.replicas], seen, now, timeout):
                idle.append((name, step))
        return idle

    async def _quiet(
        self, instance_ids: list[str], seen: Activity, now: float, timeout: int
    ) -> bool:
        """True when the replicas have sent nothing for long enough.

        "Long enough" spans Go's 15 s TCP keep-alive period (the proxy's
        connections to the containers), capped by the idle timeout itself.
        """
        provider = self.lifecycle.provider
        counts = [await run_in_threadpool(provider.sent_bytes, i) for i in instance_ids]
        known = [c for c in counts if c is not None]
        if not known:
            return False
        sent = sum(known)
        if sent != seen.sent:
            if seen.sent is not None:
                seen.since = now  # the container talked: a long request is on
            seen.sent, seen.sent_since = sent, now
            return False
        return now - seen.sent_since >= min(QUIET_WINDOW, timeout)
