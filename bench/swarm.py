"""`make bench-swarm`: the platform on a 3-node Docker Swarm next to the Docker
provider, in one run on this machine (root: it builds the swarm of
tests/swarm/cluster.py, extra dockerd in network namespaces).

    cold start   scaled to zero -> first byte through Traefik, p50/p90, on the
                 swarm and on the Docker provider (its own `faas up`)
    warm         latency through Traefik to a task on the Traefik node and to
                 one on another node (p50/p90 of sequential calls)
    scale 0 -> 3 `faas scale NAME 3` from zero until 3 distinct replicas answer

Prints a markdown table and writes it to bench/results-swarm.md. Every figure
counts successful (200) answers only.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import ECHO_IMAGE, running_stack
from tests.swarm.cluster import cluster
from tests.swarm.platform import SwarmStack, running_platform

COLD_RUNS = int(os.environ.get("BENCH_COLD_RUNS", "10"))
WARM_CALLS = int(os.environ.get("BENCH_WARM_CALLS", "300"))
SCALE_RUNS = int(os.environ.get("BENCH_SCALE_RUNS", "3"))
PORT = int(os.environ.get("BENCH_SWARM_PORT", "18580"))
Api = Callable[..., requests.Response]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def p50_p90(samples: list[float]) -> str:
    return f"{ms(statistics.median(samples))} / {ms(pct(samples, 0.9))}"


def first_byte(url: str) -> float | None:
    began = time.monotonic()
    with requests.get(url, stream=True, timeout=60) as got:
        next(got.iter_content(1), b"")
        took = time.monotonic() - began
        return took if got.status_code == 200 else None


def cold_starts(api: Api, base: str, image: str) -> tuple[list[float], int]:
    """Scale to zero, then time one request; (successful times, failures)."""
    assert api("PUT", "/functions/cold", json={"image": image}).status_code == 200
    times, failed = [], 0
    for _ in range(COLD_RUNS):
        assert api("POST", "/functions/cold/scale", json={"replicas": 0}).status_code == 200
        took = first_byte(f"{base}/function/cold/")
        if took is None:
            failed += 1
        else:
            times.append(took)
    api("DELETE", "/functions/cold")
    return times, failed


def warm(base: str, name: str) -> list[float]:
    session = requests.Session()
    url = f"{base}/function/{name}/"
    for _ in range(20):
        session.get(url, timeout=10)
    times = []
    for _ in range(WARM_CALLS):
        began = time.monotonic()
        got = session.get(url, timeout=10)
        if got.status_code == 200:
            times.append(time.monotonic() - began)
    return times


def scale_zero_to_three(platform: SwarmStack, image: str) -> list[float]:
    """From zero, `faas scale 3`, until three distinct replicas answer through Traefik."""
    spec = {"image": image, "max_scale": 3}
    assert platform.api("PUT", "/functions/three", json=spec).status_code == 200
    times = []
    for _ in range(SCALE_RUNS):
        platform.api("POST", "/functions/three/scale", json={"replicas": 0})
        began = time.monotonic()
        got = platform.api("POST", "/functions/three/scale", json={"replicas": 3})
        assert got.status_code == 200, got.text
        session, seen = requests.Session(), set[str]()
        while len(seen) < 3 and time.monotonic() - began < 60:
            answer = session.get(f"{platform.url}/function/three/", timeout=10)
            if answer.status_code == 200:
                seen.add(answer.json()["hostname"])
        times.append(time.monotonic() - began)
    platform.api("DELETE", "/functions/three")
    return times


def swarm_figures() -> dict[str, str]:
    rows: dict[str, str] = {}
    with cluster(3) as c:
        image = c.push(ECHO_IMAGE)
        with running_platform(c, image, PORT, FAAS_AUTOSCALE_STABLE_WINDOW="300") as p:
            times, failed = cold_starts(p.api, p.url, image)
            rows["cold swarm"] = p50_p90(times) + f" ({failed} failed of {COLD_RUNS})"
            rows["_cold_swarm_p50"] = str(statistics.median(times))
            for name, where in (("near", "n1"), ("far", "n2")):
                spec = {"image": image, "min_scale": 1,
                        "constraints": [f"node.labels.faas.test.node=={where}"]}  # fmt: skip
                assert p.api("PUT", f"/functions/{name}", json=spec).status_code == 200
            near, far = warm(p.url, "near"), warm(p.url, "far")
            rows["warm near"] = p50_p90(near)
            rows["warm far"] = p50_p90(far)
            rows["warm ratio"] = f"{statistics.median(far) / statistics.median(near):.2f}"
            rows["scale 0 -> 3"] = p50_p90(scale_zero_to_three(p, image))
    return rows


def docker_figures() -> dict[str, str]:
    engine = docker.from_env()
    with tempfile.TemporaryDirectory() as state, running_stack(engine, Path(state)) as s:
        times, failed = cold_starts(s.api, s.url, ECHO_IMAGE)
    return {
        "cold docker": p50_p90(times) + f" ({failed} failed of {COLD_RUNS})",
        "_cold_docker_p50": str(statistics.median(times)),
    }


def main() -> None:
    rows = {**swarm_figures(), **docker_figures()}
    ratio = float(rows["_cold_swarm_p50"]) / float(rows["_cold_docker_p50"])
    table = "\n".join(
        [
            "| Swarm (3 nodes on one machine) | p50 / p90 |",
            "|---|---|",
            f"| cold start, scaled to zero -> first byte, Swarm | {rows['cold swarm']} |",
            f"| cold start, same, Docker provider | {rows['cold docker']} |",
            f"| cold start ratio Swarm / Docker (p50) | {ratio:.2f} |",
            f"| warm, through Traefik to a task on its node | {rows['warm near']} |",
            f"| warm, through Traefik to a task on another node | {rows['warm far']} |",
            f"| warm ratio other node / same node (p50) | {rows['warm ratio']} |",
            f"| `faas scale NAME 3` from zero until 3 replicas answer | {rows['scale 0 -> 3']} |",
        ]
    )
    print(table)
    out = Path(__file__).with_name("results-swarm.md")
    out.write_text(f"# make bench-swarm ({time.strftime('%Y-%m-%d')}, one run)\n\n{table}\n")


if __name__ == "__main__":
    main()
