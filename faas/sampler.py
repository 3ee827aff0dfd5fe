"""Sample the running functions' resource use on an interval, gently.

The engine's stats call is slow even with `one_shot` (no second sample for a
CPU delta): on Docker 20.10 each call waited ~0.5-1 s for the daemon's
collector, so 100 running functions took ~100 s sequentially, ~14 s with 8 in
flight (bench/results-stats.md). So a scrape never calls it: one list of the
functions per round, then at most `concurrency` stats calls at a time for the
running replicas (a function's use is its replicas' summed); the result
replaces the snapshot `/metrics` reads, and the next round starts `interval`
seconds after this one ends (rounds never overlap).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from loguru import logger
from starlette.concurrency import run_in_threadpool

from .errors import FaasError
from .lifecycle import Lifecycle
from .logging import logged
from .metrics import Metrics
from .provider import Function, State, Usage


@dataclass
class Sampler:
    lifecycle: Lifecycle
    metrics: Metrics
    interval: float
    concurrency: int = 8
    last_duration: float = 0.0  # seconds the last round took, for the logs and the bench

    async def sample(self) -> dict[str, Usage]:
        began = time.monotonic()
        functions = await run_in_threadpool(self.lifecycle.list)
        running = [f for f in functions if f.state is State.RUNNING]
        gate = asyncio.Semaphore(self.concurrency)

        provider = self.lifecycle.provider

        async def one(name: str, instance_id: str) -> tuple[str, Usage | None]:
            async with gate:
                try:
                    return name, await run_in_threadpool(provider.usage, instance_id)
                except FaasError as exc:  # stopped meanwhile: skip it this round
                    logger.debug("no stats for {} ({}): {}", name, instance_id[:12], exc)
                    return name, None

        pairs = await asyncio.gather(
            *(one(fn.spec.name, i) for fn in running for i in _running_ids(fn))
        )
        sampled: dict[str, Usage] = {}
        for name, usage in pairs:
            if usage is not None:
                sampled[name] = _sum(sampled[name], usage) if name in sampled else usage
        self.metrics.sampled(sampled)
        self.last_duration = time.monotonic() - began
        return sampled

    async def run(self) -> None:
        """Sample every `interval` seconds, forever."""
        while True:
            try:
                sampled = await self.sample()
                logger.debug("sampled {} containers in {:.3f}s", len(sampled), self.last_duration)
            except Exception as exc:
                self.metrics.loop_errors.labels("sampler").inc()
                logged(exc).warning("resource sampling failed: {}", exc)
            await asyncio.sleep(self.interval)


def _running_ids(fn: Function) -> list[str]:
    return [i.id for i in fn.replicas if i.state is State.RUNNING] or [fn.container_id]


def _sum(a: Usage, b: Usage) -> Usage:
    """A function's use: its replicas' together."""
    return Usage(
        a.memory_bytes + b.memory_bytes,
        a.memory_limit_bytes + b.memory_limit_bytes,
        a.cpu_seconds + b.cpu_seconds,
        a.restarts + b.restarts,
        a.oom_killed or b.oom_killed,
    )
