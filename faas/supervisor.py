"""Keeping `faas up`'s children (Traefik, the gateway) running.

A child that dies is started again after a delay that doubles from
`Policy.first_delay` up to `Policy.max_delay`; a child that has run
`Policy.stable_after` seconds counts as healthy again (its next failure starts
from the first delay). The other child keeps serving meanwhile: Traefik routes
warm functions without the gateway, and the gateway keeps its API without
Traefik. Only `Policy.max_failures` fast failures within `Policy.window`
seconds make the supervisor give up, which stops everything (`faas up` exits 1).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from .errors import FaasError

# Children get SIGTERM, then this long to exit before SIGKILL.
GRACE = 10.0


@dataclass(frozen=True)
class Policy:
    first_delay: float = 0.5
    max_delay: float = 10.0
    stable_after: float = 30.0
    max_failures: int = 5
    window: float = 60.0


@dataclass
class Restarts:
    """One child's recent failures: when to start it again, or that it is hopeless."""

    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], float] = time.monotonic
    failures: list[float] = field(default_factory=list)
    _started: float = 0.0
    _delay: float = 0.0

    def started(self) -> None:
        self._started = self.clock()

    def failed(self) -> float | None:
        """Record a failure now: the delay before the next start, or None to give up."""
        now = self.clock()
        if now - self._started >= self.policy.stable_after:
            # It ran fine for a while: this is a new failure, not a loop.
            self.failures.clear()
            self._delay = 0.0
        self.failures = [t for t in self.failures if now - t < self.policy.window] + [now]
        if len(self.failures) >= self.policy.max_failures:
            return None
        self._delay = min(self._delay * 2 or self.policy.first_delay, self.policy.max_delay)
        return self._delay


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _end_with_parent() -> None:
    """In the child, before exec: SIGTERM when `faas up` dies, even by SIGKILL, so no
    Traefik or gateway outlives it holding its ports (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Child:
    """A process `faas up` runs, and starts again when asked."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Own session: a terminal's Ctrl-C reaches only `faas up`, which stops
        # the children in order.
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_end_with_parent,
            )
        except OSError as exc:
            raise FaasError(f"cannot start {self.name}: {exc}") from exc
        logger.info("started {} (pid {})", self.name, self.process.pid)

    def exit_code(self) -> int | None:
        """The code it exited with (negative: the signal); None while it runs."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(GRACE)
        except subprocess.TimeoutExpired:
            logger.warning("{} did not stop in {}s; killing it", self.name, GRACE)
            self.process.kill()
            self.process.wait()


@dataclass
class Watched:
    """A supervised child and where it stands."""

    child: Child
    ready: Callable[[], bool]
    restarts: Restarts
    restart_at: float | None = None  # dead, to be started again then
    died_at: float | None = None  # dead or restarted, not serving yet


def supervise(
    children: Sequence[tuple[Child, Callable[[], bool]]],
    stopping: Callable[[], bool],
    policy: Policy = Policy(),
    tick: float = 0.1,
) -> int:
    """Keep the (started) children running until `stopping()`; 0, or 1 when a
    child failed too often. Leaves stopping the children to the caller."""
    watched = [Watched(child, ready, Restarts(policy)) for child, ready in children]
    for w in watched:
        w.restarts.started()
    while not stopping():
        for w in watched:
            if not _step(w):
                return 1
        time.sleep(tick)
    return 0


def _step(w: Watched) -> bool:
    """Advance one child; False when it is to be given up."""
    now = time.monotonic()
    if w.restart_at is not None:
        if now >= w.restart_at:
            w.restart_at = None
            w.child.start()
            w.restarts.started()
        return True
    code = w.child.exit_code()
    if code is None:
        if w.died_at is not None and w.ready():
            logger.info("{} serves again, {:.1f}s after it died", w.child.name, now - w.died_at)
            w.died_at = None
        return True
    delay = w.restarts.failed()
    how = describe_exit(code)
    if delay is None:
        failures = len(w.restarts.failures)
        logger.error(
            "{} {}: {} failures within {:g}s; giving up",
            w.child.name, how, failures, w.restarts.policy.window,
        )  # fmt: skip
        return False
    logger.error("{} {}; starting it again in {:g}s", w.child.name, how, delay)
    w.restart_at = now + delay
    if w.died_at is None:  # the outage began with the first of a series
        w.died_at = now
    return True
