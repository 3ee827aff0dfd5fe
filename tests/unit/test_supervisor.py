"""The supervisor's restart policy (a fake clock), and the loop on real tiny processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from faas.supervisor import Child, Policy, Restarts, describe_exit, supervise


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def restarts() -> tuple[Restarts, Clock]:
    clock = Clock()
    r = Restarts(Policy(), clock)
    r.started()
    return r, clock


def test_delays_double_up_to_the_cap_then_it_gives_up() -> None:
    r, clock = restarts()
    delays = []
    for _ in range(4):
        clock.now += 1  # dies a second after each start
        delay = r.failed()
        assert delay is not None
        delays.append(delay)
        clock.now += delay
        r.started()
    assert delays == [0.5, 1, 2, 4]
    clock.now += 1
    assert r.failed() is None  # the fifth failure within 60 s


def test_the_delay_stops_growing_at_the_cap() -> None:
    r, clock = restarts()
    delays = []
    for _ in range(8):
        clock.now += 20  # never stable, but too slow a loop to give up on
        delay = r.failed()
        assert delay is not None
        delays.append(delay)
        clock.now += delay
        r.started()
    assert delays == [0.5, 1, 2, 4, 8, 10, 10, 10]


def test_a_stable_run_starts_over() -> None:
    r, clock = restarts()
    for _ in range(4):
        clock.now += 1
        delay = r.failed()
        assert delay is not None
        clock.now += delay
        r.started()
    clock.now += 30  # ran fine for `stable_after`
    assert r.failed() == 0.5
    assert len(r.failures) == 1


def test_failures_older_than_the_window_do_not_count() -> None:
    r, clock = restarts()
    for _ in range(4):
        clock.now += 1
        assert r.failed() is not None
        r.started()
    clock.now += 61
    r.started()
    clock.now += 1
    assert r.failed() is not None
    assert len(r.failures) == 1


def test_exit_descriptions() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


FAST = Policy(first_delay=0.01, max_delay=0.05, stable_after=5, max_failures=3, window=10)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_crash_loop_gives_up() -> None:
    crashing = Child("crasher", python("raise SystemExit(3)"), dict(os.environ))
    steady = Child("steady", python("import time; time.sleep(60)"), dict(os.environ))
    for child in (crashing, steady):
        child.start()
    try:
        started = time.monotonic()
        code = supervise([(crashing, lambda: True), (steady, lambda: True)], lambda: False, FAST)
        assert code == 1
        assert time.monotonic() - started < 5
        assert crashing.exit_code() == 3
        assert steady.exit_code() is None  # stopping is the caller's part
    finally:
        steady.stop()


def test_a_dead_child_is_started_again_and_the_other_left_alone(tmp_path: Path) -> None:
    # Each start appends a line: the starts are counted from outside.
    starts = tmp_path / "starts"
    argv = python(f"open({str(starts)!r}, 'a').write('x\\n'); import time; time.sleep(60)")
    child = Child("worker", argv, dict(os.environ))
    other = Child("other", python("import time; time.sleep(60)"), dict(os.environ))
    for c in (child, other):
        c.start()
    assert child.process is not None
    assert other.process is not None
    first, other_pid = child.process.pid, other.process.pid
    stop = threading.Event()
    done: list[int] = []
    ready: Callable[[], bool] = lambda: True  # noqa: E731
    loop = threading.Thread(
        target=lambda: done.append(supervise([(child, ready), (other, ready)], stop.is_set, FAST))
    )
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not starts.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(first, signal.SIGKILL)
        while child.process.pid == first or starts.read_text().count("x") < 2:
            assert time.monotonic() < deadline, "not started again"
            time.sleep(0.01)
        assert child.exit_code() is None
        assert other.process.pid == other_pid
        assert other.exit_code() is None
    finally:
        stop.set()
        loop.join(5)
        for c in (child, other):
            c.stop()
    assert done == [0]


def test_stop_ends_a_child() -> None:
    child = Child("sleeper", python("import time; time.sleep(60)"), dict(os.environ))
    child.start()
    child.stop()
    assert child.exit_code() == -signal.SIGTERM


def test_children_end_with_faas_up_even_when_it_is_killed(tmp_path: Path) -> None:
    """SIGKILL of `faas up` cannot stop its children itself: the kernel does."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from pathlib import Path; from faas.supervisor import Child; "
            "c = Child('sleeper', [sys.executable, '-c', 'import time; time.sleep(60)'], {}); "
            "c.start(); assert c.process is not None; "
            f"Path({str(pid_file)!r}).write_text(str(c.process.pid)); time.sleep(60)",
        ],
        env={**os.environ},
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.02)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        assert time.monotonic() < deadline, "the child outlived faas up"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
