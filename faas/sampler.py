"""Sample the running functions' resource use on an interval, gently.

The engine's stats call is slow even with `one_shot` (no second sample for a
CPU delta): on Docker 20.10 each call waited ~0.5-1 s for the daemon's
collector, so 100 running functions took ~100 s sequentially, ~14 s with 8 in
flight (bench/results-stats.md). So a scrape never calls it: one list of the
functions per round, then at most `concurrency` stats calls at a time for the
running ones; the result replaces the snapshot `/metrics` reads, and the next
round starts `interval` seconds after this one ends (rounds never overlap).
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

        async def one(fn: Function) -> tuple[str, Usage | None]:
            async with gate:
                try:
                    return fn.spec.name, await run_in_threadpool(provider.usage, fn.container_id)
                except FaasError as exc:  # stopped meanwhile: skip it this round
                    logger.debug("no stats for {}: {}", fn.spec.name, exc)
                    return fn.spec.name, None

        pairs = await asyncio.gather(*(one(fn) for fn in running))
        sampled = {name: r for name, r in pairs if r is not None}
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
