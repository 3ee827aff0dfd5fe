"""Deploy and warm-invoke latency, through Traefik and direct, measured in one run.

Starts its own `faas up` (own namespace, free ports), prints a markdown table,
writes it to bench/results-core.md and removes everything it created.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")
DEPLOYS = 5
CALLS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed_calls(session: requests.Session, url: str, n: int) -> list[float]:
    session.get(url, timeout=10).raise_for_status()  # open the connection first
    out = []
    for _ in range(n):
        start = time.perf_counter()
        session.get(url, timeout=10).raise_for_status()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    namespace = "bench" + secrets.token_hex(3)
    port = free_port()
    env = {
        **os.environ,
        "FAAS_NAMESPACE": namespace,
        "FAAS_STATE_DIR": tempfile.mkdtemp(prefix="faas-bench-"),
        "FAAS_HTTP_PORT": str(port),
        "FAAS_GATEWAY_PORT": str(free_port()),
        "FAAS_TRAEFIK_API_PORT": str(free_port()),
        "FAAS_LOG_LEVEL": "WARNING",
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "faas.cli", "up"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert up.stdout is not None
    token = next(
        line.split(":", 1)[1].strip() for line in up.stdout if line.strip().startswith("token:")
    )
    base = f"http://127.0.0.1:{port}"
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    try:
        deploy_to_200 = []
        for i in range(DEPLOYS):
            name = f"b{i}"
            start = time.perf_counter()
            api.put(
                f"{base}/api/v1/functions/{name}", json={"image": IMAGE}, timeout=60
            ).raise_for_status()
            while requests.get(f"{base}/function/{name}", timeout=10).status_code != 200:
                pass
            deploy_to_200.append(time.perf_counter() - start)
            if i:
                api.delete(f"{base}/api/v1/functions/{name}", timeout=60)
        address = api.get(f"{base}/api/v1/functions/b0", timeout=10).json()["address"]
        traefik = timed_calls(requests.Session(), f"{base}/function/b0/", CALLS)
        direct = timed_calls(requests.Session(), f"http://{address}/", CALLS)
        api.delete(f"{base}/api/v1/functions/b0", timeout=60)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(30)
        mine = f"label=faas.namespace={namespace}"
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", mine], capture_output=True, text=True
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        subprocess.run(["docker", "network", "rm", f"faas-{namespace}"], capture_output=True)

    t50, d50 = ms(traefik, 0.5), ms(direct, 0.5)
    rows = [
        "| measure | median | p90 |",
        "|---|---|---|",
        f"| deploy (existing image) -> first 200, n={DEPLOYS} "
        f"| {ms(deploy_to_200, 0.5):.0f} ms | {ms(deploy_to_200, 0.9):.0f} ms |",
        f"| warm invoke through Traefik, n={CALLS} | {t50:.2f} ms | {ms(traefik, 0.9):.2f} ms |",
        f"| warm invoke direct to container, n={CALLS} | {d50:.2f} ms | {ms(direct, 0.9):.2f} ms |",
        f"| Traefik / direct (median) | {t50 / d50:.2f}x | |",
    ]  # fmt: skip
    table = "\n".join(rows)
    print(table)
    Path(__file__).with_name("results-core.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
