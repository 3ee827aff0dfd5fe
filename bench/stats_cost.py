"""What sampling the containers' resources costs, with N running functions.

Runs N echo functions (min_scale 1) in a namespace of its own through the
Docker provider (no Traefik: routing is not what is measured), then times
`Sampler.sample()` rounds at several concurrency limits, and the engine's CPU
time spent on them (dockerd's utime+stime from /proc, when readable). Prints a
markdown table, writes it to bench/results-stats.md, removes what it created.

    python bench/stats_cost.py [N]        # N defaults to 100
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from faas.config import Settings
from faas.docker_provider import DockerProvider
from faas.lifecycle import Lifecycle
from faas.metrics import Metrics
from faas.sampler import Sampler
from faas.spec import parse_spec

IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")
ROUNDS = int(os.environ.get("BENCH_STATS_ROUNDS", "3"))
RESULTS = Path(__file__).resolve().parent / "results-stats.md"


def dockerd_cpu_seconds() -> float | None:
    """utime+stime of dockerd (and containerd) so far, or None if not readable."""
    total = 0.0
    found = False
    tick = os.sysconf("SC_CLK_TCK")
    for name in ("dockerd", "containerd"):
        pids = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return total if found else None


def deploy_all(provider: Lifecycle, n: int) -> None:
    def one(i: int) -> None:
        provider.deploy(parse_spec({"name": f"s{i}", "image": IMAGE, "min_scale": 1}))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))


def cleanup(namespace: str) -> None:
    label = f"label=faas.namespace={namespace}"
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
    nets = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", label], capture_output=True, text=True
    ).stdout.split()
    if nets:
        subprocess.run(["docker", "network", "rm", *nets], capture_output=True, check=False)


def engine_cpu_rate(seconds: float) -> float | None:
    """The engine's CPU seconds per second while nobody samples: its baseline."""
    before = dockerd_cpu_seconds()
    time.sleep(seconds)  # a measurement window, not synchronisation
    after = dockerd_cpu_seconds()
    return None if before is None or after is None else (after - before) / seconds


def measure(
    provider: Lifecycle, concurrency: int, baseline: float | None
) -> tuple[float, float | None, int]:
    """Median seconds per round, engine CPU seconds per round above its baseline,
    containers sampled."""
    sampler = Sampler(provider, Metrics(), interval=15, concurrency=concurrency)
    durations: list[float] = []
    cpu_before = dockerd_cpu_seconds()
    sampled = 0
    for _ in range(ROUNDS):
        began = time.monotonic()
        sampled = len(asyncio.run(sampler.sample()))
        durations.append(time.monotonic() - began)
    cpu_after = dockerd_cpu_seconds()
    engine = None
    if cpu_before is not None and cpu_after is not None and baseline is not None:
        engine = (cpu_after - cpu_before - baseline * sum(durations)) / ROUNDS
    return statistics.median(durations), engine, sampled


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    namespace = "bstats" + secrets.token_hex(3)
    settings = Settings(namespace=namespace, state_dir=Path(tempfile.mkdtemp()), traefik_api_url="")
    provider = Lifecycle(DockerProvider(settings), None, settings)
    try:
        began = time.monotonic()
        deploy_all(provider, n)
        print(f"{n} functions running after {time.monotonic() - began:.0f} s", file=sys.stderr)
        baseline = engine_cpu_rate(10)
        idle = f"{baseline:.3f}" if baseline is not None else "n/a"
        rows = [
            f"Resource sampling with {n} running functions, median of {ROUNDS} rounds "
            f"(one list, then one stats + one inspect per container); engine CPU is "
            f"dockerd+containerd above their idle rate ({idle} CPU s/s):",
            "",
            "| concurrency | round | per container | engine CPU per round | sampled |",
            "|---|---|---|---|---|",
        ]
        for concurrency in (4, 8, 16):
            took, engine, sampled = measure(provider, concurrency, baseline)
            engine_text = f"{engine:.2f} s" if engine is not None else "n/a"
            rows.append(
                f"| {concurrency} | {took:.2f} s | {took / max(sampled, 1) * 1000:.1f} ms "
                f"| {engine_text} | {sampled} |"
            )
        table = "\n".join(rows)
        print(table)
        RESULTS.write_text(table + "\n")
    finally:
        cleanup(namespace)


if __name__ == "__main__":
    main()
