"""Scale to zero and back: wake stopped functions on demand, stop idle ones.

Waking is single-flight: however many requests arrive for a stopped function,
one start runs and they all wait for it. Idleness is read from Traefik's
per-service request counters (no Python on the warm path), confirmed by the
bytes the container sends, so that a long request or a streaming response is
never taken for silence (even a silent long request is seen: the proxy's TCP
keep-alive probes, every 15 s, are answered by the container). Stopping goes through a drain router
(`Router.drain`) so no request is sent to a container on its way out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from loguru import logger
from starlette.concurrency import run_in_threadpool

from . import labels
from .errors import DeployFailed, FaasError, ProviderError, WakeFailed
from .metrics import Metrics, wake_failure_cause
from .provider import Function, Provider, StartTimes, State
from .traefik import TraefikRouter

# Seconds the container must stay silent before an idle function is stopped.
QUIET_WINDOW = 20.0


@dataclass
class Activity:
    """What the scaler last saw of one running function."""

    since: float  # monotonic time of the last sign of traffic
    requests: float = -1.0  # Traefik's counter at that time
    sent: int | None = None  # bytes the container had sent when first seen idle
    sent_since: float = 0.0  # ... and when that was


@dataclass
class Scaler:
    provider: Provider
    router: TraefikRouter | None
    interval: float
    metrics: Metrics = field(default_factory=Metrics)
    _waking: dict[str, asyncio.Future[Function]] = field(default_factory=dict)
    _draining: dict[str, asyncio.Event] = field(default_factory=dict)
    _activity: dict[str, Activity] = field(default_factory=dict)
    _proxied: Counter[str] = field(default_factory=Counter)
    starts: Counter[str] = field(default_factory=Counter)

    # -- waking --------------------------------------------------------------

    async def address(self, fn: Function) -> tuple[str, float | None]:
        """Where to send a request for `fn` now, and the wake's duration if it had to wait.

        `fn` is the caller's fresh view of the function; it is read again only when
        a scale-down finished meanwhile."""
        name = fn.spec.name
        drained = False
        while (draining := self._draining.get(name)) is not None:
            await draining.wait()
            drained = True
        started = time.monotonic()
        if name in self._waking:  # join the start in flight; no need to ask the engine
            return await self.wake(name), time.monotonic() - started
        if drained:
            fn = await run_in_threadpool(self.provider.get, name)
        if fn.state is State.RUNNING and fn.address:
            return fn.address, None
        address = await self.wake(name)
        return address, time.monotonic() - started

    def waking(self, name: str) -> bool:
        return name in self._waking

    async def wake(self, name: str) -> str:
        future = self._waking.get(name)
        if future is None:
            future = asyncio.ensure_future(self._start(name))
            self._waking[name] = future
            future.add_done_callback(lambda _: self._waking.pop(name, None))
        # shield: a caller that goes away must not cancel the others' start.
        fn = await asyncio.shield(future)
        assert fn.address is not None
        return fn.address

    async def _start(self, name: str) -> Function:
        started = time.monotonic()
        times = StartTimes()
        try:
            fn = await run_in_threadpool(self.provider.start, name, times)
        except DeployFailed as exc:
            logger.warning("wake of {} failed: {}", name, exc.reason)
            self.metrics.wake_failures.labels(wake_failure_cause(exc.reason)).inc()
            raise WakeFailed(name, exc.reason) from exc
        except ProviderError:
            self.metrics.wake_failures.labels("engine").inc()
            raise
        self.starts[name] += 1
        self.metrics.wakes.labels(name).inc()
        self.metrics.wake_phase.labels("start").observe(times.started)
        self.metrics.wake_phase.labels("ready").observe(times.ready)
        self._activity[name] = Activity(since=time.monotonic())
        logger.info("woke {} in {:.0f} ms", name, (time.monotonic() - started) * 1000)
        return fn

    def begin(self, name: str) -> None:
        """A request the gateway forwards itself (Traefik does not count those) starts."""
        self._proxied[name] += 1
        self._touch(name)

    def end(self, name: str) -> None:
        self._proxied[name] -= 1
        self._touch(name)

    def _touch(self, name: str) -> None:
        if name in self._activity:
            self._activity[name].since = time.monotonic()

    # -- stopping ------------------------------------------------------------

    async def scale_down(self, name: str, reason: str = "explicit") -> None:
        """Stop `name` without failing a request that arrives meanwhile.

        `reason` ("idle" or "explicit") labels the scale-down metric."""
        if name in self._draining:
            await self._draining[name].wait()
            return
        done = asyncio.Event()
        self._draining[name] = done
        try:
            if self.router is not None:
                await run_in_threadpool(self.router.drain, name)
            await run_in_threadpool(self.provider.stop, name)
            if self.router is not None:
                await run_in_threadpool(self.router.unrouted, name)
            self._activity.pop(name, None)
            self.metrics.scale_downs.labels(reason).inc()
            logger.info("scaled {} to zero ({})", name, reason)
        finally:
            if self.router is not None:
                self.router.undrain(name)
            del self._draining[name]
            done.set()

    async def run(self) -> None:
        """Check for idle functions every `interval` seconds, forever."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                for name in await self.idle():
                    asyncio.create_task(self._scale_down_logged(name))  # noqa: RUF006
            except FaasError as exc:
                logger.warning("idle check failed: {}", exc)

    async def _scale_down_logged(self, name: str) -> None:
        try:
            await self.scale_down(name, reason="idle")
        except FaasError as exc:
            logger.warning("scale-down of {} failed: {}", name, exc)

    async def idle(self) -> list[str]:
        """Running scale-to-zero functions that have seen no traffic for their idle timeout."""
        counts = await run_in_threadpool(self.router.request_counts) if self.router else {}
        functions = await run_in_threadpool(self.provider.list)
        self.metrics.saw_functions(functions)
        now = time.monotonic()
        running = {f.spec.name: f for f in functions if f.state is State.RUNNING}
        for gone in set(self._activity) - set(running):
            del self._activity[gone]
        idle = []
        for name, fn in running.items():
            if fn.spec.min_scale > 0 or name in self._draining or name in self._waking:
                continue
            seen = self._activity.setdefault(name, Activity(since=now))
            requests = counts.get(labels.service_name(name), 0.0)
            if requests != seen.requests or self._proxied[name]:
                seen.since, seen.requests = now, requests
            timeout = fn.spec.idle_timeout
            if now - seen.since >= timeout and await self._quiet(name, seen, now, timeout):
                idle.append(name)
        return idle

    async def _quiet(self, name: str, seen: Activity, now: float, timeout: int) -> bool:
        """True when the container has sent nothing for long enough.

        "Long enough" spans Go's 15 s TCP keep-alive period (Traefik's
        connections to the container), capped by the idle timeout itself.
        """
        sent = await run_in_threadpool(self.provider.sent_bytes, name)
        if sent is None:
            return False
        if sent != seen.sent:
            if seen.sent is not None:
                seen.since = now  # the container talked: a long request is on
            seen.sent, seen.sent_since = sent, now
            return False
        return now - seen.sent_since >= min(QUIET_WINDOW, timeout)
