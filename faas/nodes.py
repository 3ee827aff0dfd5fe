"""Watching the nodes of a multi-node engine, to fence a lost node off before the engine does.

A Swarm manager takes a node for dead only once it has missed its heartbeats
(about 14 s after a loss with Docker's default 5 s dispatcher heartbeat);
until then the node's tasks stay "running" and the proxy keeps routing to
them: each request sent there waits for a dial timeout before its retry goes
elsewhere, or for its answer until the request timeout on a kept-alive
connection. The gateway needs no consensus to stop sending there: it opens a
TCP connection to an address on each node (`Provider.nodes`: the stats
agents) every INTERVAL seconds, and after MISSES missed in a row fences the
node (`Lifecycle.fence`) until it answers again or the engine has moved its
instances. A connection, not an HTTP call: the kernel accepts it however busy
the process is, so a slow agent does not read as a lost node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter

from loguru import logger
from starlette.concurrency import run_in_threadpool

from .lifecycle import Lifecycle
from .logging import logged

INTERVAL = 0.25
# On one network a connection takes well under a millisecond; an event loop held
# up for a moment must not make a node look lost, hence also MISSES.
TIMEOUT = 0.5
MISSES = 2


async def answers(address: str, timeout: float = TIMEOUT) -> bool:
    """Whether a TCP connection to "ip:port" opens within `timeout` seconds."""
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, int(port))
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class NodeWatch:
    """Connects to every node each round and fences those that stop answering."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        interval: float = INTERVAL,
        misses: int = MISSES,
        timeout: float = TIMEOUT,
    ) -> None:
        self.lifecycle = lifecycle
        self.interval = interval
        self.misses = misses
        self.timeout = timeout
        self.lost: set[str] = set()
        # node -> the address that last answered there: only a node seen up can be
        # lost, and only at that address (an agent that moved is not a lost node).
        self._seen: dict[str, str] = {}
        self._missed: Counter[str] = Counter()
        self._fences: dict[str, asyncio.Task[None]] = {}  # node -> its fence, while it lasts
        self._listed: set[str] = set()  # the nodes the provider named last
        self._failing = False

    async def run(self) -> None:
        """Watch forever (until cancelled); a round that fails is logged once."""
        try:
            while True:
                try:
                    await self.round()
                except Exception as exc:
                    self.lifecycle.metrics.loop_errors.labels("nodes").inc()
                    if not self._failing:
                        logged(exc).warning("cannot watch the nodes: {}", exc)
                    self._failing = True
                else:
                    self._failing = False
                await asyncio.sleep(self.interval)
        finally:
            self.lost.clear()  # the fences' threads end at their next look

    async def round(self) -> None:
        provider = self.lifecycle.provider
        nodes = await run_in_threadpool(provider.nodes)
        up = await asyncio.gather(*(answers(a, self.timeout) for a in nodes.values()))
        self._listed = set(nodes)
        self.lifecycle.metrics.nodes.labels("up").set(sum(up))
        # Nothing answers: the trouble is on this side (an event loop held up, the
        # gateway's own network), not on every node at once.
        missed = [n for (n, a), ok in zip(nodes.items(), up, strict=True) if not ok]
        if missed and any(up):
            # A miss counts only where the engine still places the node's agent: one
            # restarted elsewhere on the node (a new address) is no lost node.
            now = await run_in_threadpool(functools.partial(provider.nodes, fresh=True))
            for node in missed:
                if self._seen.get(node) == nodes[node] == now.get(node):
                    self._miss(node)
        for node, ok in zip(nodes, up, strict=True):
            if ok:
                self._seen[node] = nodes[node]
                self._missed.pop(node, None)
                if node in self.lost:
                    self.lost.discard(node)
                    logger.info("node {} answers again", node)
        # Gone from the engine's list, and no fence holds it: nothing to watch.
        for node in set(self._seen) - self._listed - self._fences.keys():
            self.lost.discard(node)
            del self._seen[node]
            self._missed.pop(node, None)
        self.lifecycle.metrics.nodes.labels("lost").set(len(self.lost))

    def _miss(self, node: str) -> None:
        self._missed[node] += 1
        if self._missed[node] < self.misses or node in self.lost:
            return
        self.lost.add(node)
        self.lifecycle.metrics.node_losses.inc()
        logger.warning(
            "node {} does not answer at {} ({} tries): its replicas get no requests "
            "where others can serve them",
            node,
            self._seen[node],
            self._missed[node],
        )
        if node not in self._fences:  # else that fence goes on (`_hold`)
            fence = asyncio.create_task(self._hold(node))
            self._fences[node] = fence
            fence.add_done_callback(lambda _: self._fences.pop(node, None))

    async def _hold(self, node: str) -> None:
        def lost() -> bool:
            return node in self.lost

        try:
            # A fence that ended as the node answered, when it is lost again meanwhile.
            while await run_in_threadpool(self.lifecycle.fence, node, lost) and lost():
                pass
        except Exception as exc:
            logged(exc).warning("fence of node {} ended early: {}", node, exc)
