"""`make bench`: the platform's speed, each comparison measured in one run.

Starts its own `faas up` (own namespace, free ports), prints one markdown
table, writes it to bench/results.md and removes everything it created.
Figures are medians (and p90) over repeated runs on this machine; they are
for the docs, not for CI assertions. Then bench/replicas.py (its own `faas up`)
measures replicas and autoscaling into bench/results-replicas.md, and
bench/async_calls.py asynchronous calls into bench/results-async.md,
bench/warmpath.py the warm path's budget into bench/results-warmpath.md; BENCH_ONLY picks
steps, e.g. BENCH_ONLY=warm,replicas,async,warmpath.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from faas import egress, labels, traefik
from faas.config import Settings
from faas.docker_provider import DockerProvider
from faas.lifecycle import Lifecycle

IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")
WARM_CALLS = int(os.environ.get("BENCH_WARM_CALLS", "200"))
COLD_RUNS = int(os.environ.get("BENCH_COLD_RUNS", "20"))
DEPLOYS = int(os.environ.get("BENCH_DEPLOYS", "5"))
BURST = int(os.environ.get("BENCH_BURST", "100"))
RUNTIME_RUNS = int(os.environ.get("BENCH_RUNTIME_RUNS", "10"))
POPULATIONS = [int(n) for n in os.environ.get("BENCH_POPULATIONS", "0,100,500").split(",")]
API_CALLS = int(os.environ.get("BENCH_API_CALLS", "10"))
TIER_RUNS = int(os.environ.get("BENCH_TIER_RUNS", "20"))


# BENCH_PORTS=18400-18499: ports from that range only (beside other tenants'
# fixed ranges); BENCH_NAMESPACE: the namespace, instead of a random one.
PORTS = os.environ.get("BENCH_PORTS", "")
_handed_out: set[int] = set()


def free_port() -> int:
    low, _, high = PORTS.partition("-")
    candidates = range(int(low), int(high) + 1) if PORTS else [0]
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
            _handed_out.add(port)
            return port
    raise AssertionError(f"no free port in {PORTS}")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


class Bench:
    def __init__(self, settings: dict[str, str] | None = None) -> None:
        """`faas up` in a namespace of its own; `settings` (FAAS_* variables) override."""
        self.namespace = os.environ.get("BENCH_NAMESPACE") or "bench" + secrets.token_hex(3)
        self.port = free_port()
        env = {
            **os.environ,
            **(settings or {}),
            "FAAS_NAMESPACE": self.namespace,
            "FAAS_STATE_DIR": tempfile.mkdtemp(prefix="faas-bench-"),
            "FAAS_GATEWAY_PORT": str(free_port()),
            "FAAS_TRAEFIK_API_PORT": str(free_port()),
            "FAAS_NATS_PORT": str(free_port()),
            "FAAS_LOG_LEVEL": "WARNING",
        }
        self.env = env
        self.up = subprocess.Popen(
            [sys.executable, "-m", "faas.cli", "up", "--port", str(self.port)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.up.stdout is not None
        token = ""
        for line in self.up.stdout:
            if line.strip().startswith("token:"):
                token = line.split(":", 1)[1].strip()
                break
        assert token, "faas up did not start"
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Bearer {token}"
        self.token = token
        self.rows: list[str] = []

    def call(self, method: str, path: str, **kwargs: object) -> dict[str, object]:
        response = self.api.request(method, f"{self.base}/api/v1{path}", timeout=120, **kwargs)  # type: ignore[arg-type]
        response.raise_for_status()
        return json.loads(response.text) if response.text else {}

    def row(self, what: str, median: str, p90: str = "", note: str = "") -> None:
        self.rows.append(f"| {what} | {median} | {p90} | {note} |")

    def close(self) -> None:
        self.up.send_signal(signal.SIGTERM)
        self.up.wait(30)
        if self.up.stdout is not None:
            self.up.stdout.close()
        mine = f"label=faas.namespace={self.namespace}"
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", mine], capture_output=True, text=True
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        subprocess.run(["docker", "network", "rm", f"faas-{self.namespace}"], capture_output=True)
        shutil.rmtree(self.env["FAAS_STATE_DIR"], ignore_errors=True)
        # `faas up` leaves its egress rules for functions that keep running.
        with contextlib.suppress(egress.EgressError):
            egress.remove(self.namespace)

    # -- measures ---------------------------------------------------------------

    def warm(self) -> None:
        self.call("PUT", "/functions/warm", json={"image": IMAGE, "min_scale": 1})
        address = self.call("GET", "/functions/warm")["address"]
        with tempfile.TemporaryDirectory(prefix="faas-bench-plain-") as state:
            plain, plain_url = self.plain_traefik(Path(state))
            try:
                routed, without = timed_pair(
                    f"{self.base}/function/warm/", f"{plain_url}/function/warm/", WARM_CALLS
                )
            finally:
                plain.terminate()
                plain.wait(10)
        direct = timed(requests.Session(), f"http://{address}/", WARM_CALLS)
        t50, d50 = statistics.median(routed), statistics.median(direct)
        w50 = statistics.median(without)
        n = f"n={WARM_CALLS}, keep-alive, sequential"
        self.row("warm invoke through Traefik", ms(t50), ms(pct(routed, 0.9)), n)
        self.row("  same, Traefik without the X-Call-Id plugin", ms(w50), ms(pct(without, 0.9)),
                 "a second Traefik, its requests alternated with the row above")  # fmt: skip
        self.row("  X-Call-Id plugin cost", f"{(t50 - w50) * 1000:.2f} ms", "", "median - median")
        self.row("warm invoke direct to the container", ms(d50), ms(pct(direct, 0.9)), n)
        self.row("warm latency ratio Traefik / direct", f"{t50 / d50:.2f}x", "", "median/median")
        # The same through a key function: Traefik's forwardAuth asks the gateway first.
        self.call("PUT", "/functions/warmkey", json={"image": IMAGE, "min_scale": 1, "auth": "key"})
        key = str(self.call("POST", "/functions/warmkey/keys", json={"ttl": 3600})["key"])
        keyed = requests.Session()
        keyed.headers["Authorization"] = f"Bearer {key}"
        k50 = statistics.median(timed(keyed, f"{self.base}/function/warmkey/", WARM_CALLS))
        self.row("warm invoke of a key function (forwardAuth)", ms(k50), "", n)
        self.row("warm latency ratio key / public function", f"{k50 / t50:.2f}x", "", "")
        self.call("DELETE", "/functions/warmkey")
        self.call("DELETE", "/functions/warm")

    def plain_traefik(self, state: Path) -> tuple[subprocess.Popen[bytes], str]:
        """A second Traefik routing this namespace's functions, configured as `faas up`
        configures its own but for the X-Call-Id middleware: the plugin's cost, same run."""
        port, api = free_port(), free_port()
        settings = Settings(
            namespace=self.namespace,
            state_dir=state,
            http_port=port,
            traefik_api_port=api,
            gateway_port=int(self.env["FAAS_GATEWAY_PORT"]),
        )
        config = traefik.render_config(settings)
        text = config.read_text()
        assert "middlewares: [callid@file]" in text
        config.write_text(text.replace("middlewares: [callid@file]", "middlewares: []"))
        process = subprocess.Popen(
            [traefik.binary(settings), f"--configFile={config}"],
            cwd=config.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Routed by its own router, not the gateway's catch-all.
        service = f"http://127.0.0.1:{api}/api/http/services/{labels.service_name('warm')}"
        deadline = time.monotonic() + 30
        while not ok(service):
            assert time.monotonic() < deadline, "the second Traefik did not route the function"
            time.sleep(0.05)
        return process, f"http://127.0.0.1:{port}"

    def deploy(self) -> None:
        samples = []
        for i in range(DEPLOYS):
            start = time.perf_counter()
            self.call("PUT", f"/functions/d{i}", json={"image": IMAGE})
            while requests.get(f"{self.base}/function/d{i}", timeout=10).status_code != 200:
                pass
            samples.append(time.perf_counter() - start)
            self.call("DELETE", f"/functions/d{i}")
        self.row("deploy (image present) -> first 200", ms(statistics.median(samples)),
                 ms(pct(samples, 0.9)), f"n={DEPLOYS}")  # fmt: skip

    def cold(self) -> None:
        self.call("PUT", "/functions/cold", json={"image": IMAGE})
        container = container_id(self.namespace, "cold")
        total, engine, ready, first_byte = [], [], [], []
        for _ in range(COLD_RUNS):
            self.call("POST", "/functions/cold/scale", json={"replicas": 0})
            sent = time.time()
            response = requests.get(f"{self.base}/function/cold/", timeout=30, stream=True)
            ttfb = time.time() - sent
            response.close()
            assert response.status_code == 200, response.status_code
            wake = server_timing(response.headers.get("Server-Timing", ""), "wake")
            started = start_event(container, sent)
            total.append(ttfb)
            engine.append(started - sent)
            ready.append(wake - (started - sent))
            first_byte.append(ttfb - wake)
        note = f"n={COLD_RUNS}, stopped -> first byte"
        self.row(
            "cold start through Traefik", ms(statistics.median(total)), ms(pct(total, 0.9)), note
        )
        self.row(
            "  phase: request -> container started",
            ms(statistics.median(engine)),
            ms(pct(engine, 0.9)),
            "engine start event",
        )
        self.row(
            "  phase: started -> ready",
            ms(statistics.median(ready)),
            ms(pct(ready, 0.9)),
            "HTTP probe answered",
        )
        self.row(
            "  phase: ready -> first byte",
            ms(statistics.median(first_byte)),
            ms(pct(first_byte, 0.9)),
            "proxied by the gateway",
        )

    def tiers(self) -> None:
        """First byte from paused vs stopped vs warm, interleaved run by run (each
        request on a new connection, as a caller's first): successful ones only."""
        self.call("PUT", "/functions/tier", json={"image": IMAGE})
        url = f"{self.base}/function/tier/"
        samples: dict[str, list[float]] = {"paused": [], "stopped": [], "warm": []}
        failed = 0
        for _ in range(TIER_RUNS):
            for tier in ("paused", "stopped", "warm"):
                if tier == "paused":
                    self.call("POST", "/functions/tier/pause")
                elif tier == "stopped":
                    self.call("POST", "/functions/tier/scale", json={"replicas": 0})
                sent = time.perf_counter()
                response = requests.get(url, timeout=30, stream=True)
                ttfb = time.perf_counter() - sent
                response.close()
                if response.status_code == 200:
                    samples[tier].append(ttfb)
                else:
                    failed += 1
        note = f"n={TIER_RUNS} each, interleaved, new connection; {failed} non-200"
        p50 = {tier: statistics.median(got) for tier, got in samples.items()}
        for tier in ("paused", "stopped", "warm"):
            got = samples[tier]
            self.row(f"first byte from {tier}", ms(p50[tier]), ms(pct(got, 0.9)), note)
        self.row("  ratio paused / stopped", f"{p50['paused'] / p50['stopped']:.2f}x", "",
                 "median/median")  # fmt: skip
        self.row("  ratio paused / warm", f"{p50['paused'] / p50['warm']:.2f}x", "",
                 "median/median")  # fmt: skip
        container = container_id(self.namespace, "tier")
        requests.get(url, timeout=30)
        self.call("POST", "/functions/tier/pause")
        sent = time.time()
        start = time.perf_counter()
        with ThreadPoolExecutor(BURST) as pool:
            codes = list(pool.map(lambda i: requests.get(f"{url}{i}", timeout=60).status_code,
                                  range(BURST)))  # fmt: skip
        wall = time.perf_counter() - start
        self.row(f"{BURST} concurrent requests to a paused function", ms(wall), "",
                 f"wall time; {count_events(container, sent, 'unpause')} unpause(s), "
                 f"{sum(1 for c in codes if c != 200)} non-200")  # fmt: skip
        self.call("DELETE", "/functions/tier")

    def runtimes(self) -> None:
        """Cold start per OCI runtime registered with the engine."""
        info = subprocess.run(
            ["docker", "info", "--format", "{{json .Runtimes}}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        registered = json.loads(info)
        for runtime in ("runc", "crun", "runsc"):
            if runtime not in registered:
                self.row(f"cold start, runtime {runtime}", "n/a", "", "not registered")
                continue
            name = f"rt-{runtime}"
            self.call("PUT", f"/functions/{name}", json={"image": IMAGE, "runtime": runtime})
            samples = []
            for _ in range(RUNTIME_RUNS):
                self.call("POST", f"/functions/{name}/scale", json={"replicas": 0})
                start = time.perf_counter()
                response = requests.get(f"{self.base}/function/{name}/", timeout=30)
                samples.append(time.perf_counter() - start)
                assert response.status_code == 200, response.status_code
            self.row(f"cold start, runtime {runtime}", ms(statistics.median(samples)),
                     ms(pct(samples, 0.9)), f"n={RUNTIME_RUNS}, stopped -> 200")  # fmt: skip
            self.call("DELETE", f"/functions/{name}")

    def burst(self) -> None:
        container = container_id(self.namespace, "cold")
        self.call("POST", "/functions/cold/scale", json={"replicas": 0})
        sent = time.time()

        def one(i: int) -> int:
            try:
                return requests.get(f"{self.base}/function/cold/{i}", timeout=60).status_code
            except requests.RequestException:
                return 0

        start = time.perf_counter()
        with ThreadPoolExecutor(BURST) as pool:
            codes = list(pool.map(one, range(BURST)))
        wall = time.perf_counter() - start
        errors = sum(1 for c in codes if c != 200)
        starts = count_events(container, sent, "start")
        self.row(f"{BURST} concurrent requests to a cold function", ms(wall), "",
                 f"wall time; {starts} container start(s), {errors} errors")  # fmt: skip
        self.call("DELETE", "/functions/cold")

    def population(self) -> None:
        """Gateway RSS, API latency and `faas list` with many deployed functions.

        Deploying hundreds of functions through the API starts each container
        and waits for it (~0.3 s each, then a scale-down). Instead one function
        is deployed through the API and the others are created by the provider's
        own `create` from the same spec with another name: the same image,
        config and labels a deploy writes, never started. The gateway lists
        them as `starting` (created, not exited), which costs it the same as a
        stopped function: one row of the engine's container list, no inspect.
        """
        self.call("PUT", "/functions/pop0", json={"image": IMAGE})
        self.call("POST", "/functions/pop0/scale", json={"replicas": 0})
        settings = Settings(namespace=self.namespace, traefik_api_url="")
        provider = DockerProvider(settings)
        spec = Lifecycle(provider, None, settings).get("pop0").spec
        have = 1
        for target in POPULATIONS:

            def create(i: int) -> None:
                provider.create(spec.model_copy(update={"name": f"pop{i}"}))

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(have, max(target, 1))))
            have = max(have, target)
            listing = timed(self.api, f"{self.base}/api/v1/functions", API_CALLS)
            one = timed(self.api, f"{self.base}/api/v1/functions/pop0", API_CALLS)
            note = f"n={API_CALLS}" + (" (the probe function alone)" if target == 0 else "")
            self.row(f"gateway RSS, {target} functions", f"{gateway_rss(self.up.pid)} MiB", "",
                     "after the API calls below")  # fmt: skip
            self.row(f"GET /api/v1/functions, {target} functions",
                     ms(statistics.median(listing)), ms(pct(listing, 0.9)), note)  # fmt: skip
            self.row(f"GET /api/v1/functions/NAME, {target} functions",
                     ms(statistics.median(one)), ms(pct(one, 0.9)), note)  # fmt: skip
        cli = [sys.executable, "-m", "faas.cli", "--url", self.base, "--token", self.token, "list"]
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cli, capture_output=True, check=True, env=self.env)
            runs.append(time.perf_counter() - start)
        self.row(f"`faas list`, {have} functions", ms(statistics.median(runs)), "",
                 "n=3, whole CLI process")  # fmt: skip

    def table(self) -> str:
        head = ["| measure | median | p90 | notes |", "|---|---|---|---|"]
        return "\n".join(head + self.rows)


def timed(session: requests.Session, url: str, n: int) -> list[float]:
    session.get(url, timeout=10).raise_for_status()  # open the connection first
    out = []
    for _ in range(n):
        start = time.perf_counter()
        session.get(url, timeout=10).raise_for_status()
        out.append(time.perf_counter() - start)
    return out


def timed_pair(first: str, second: str, n: int) -> tuple[list[float], list[float]]:
    """`timed` for two URLs at once, alternating requests, each on its own connection."""
    sessions = requests.Session(), requests.Session()
    samples: tuple[list[float], list[float]] = ([], [])
    for session, url in zip(sessions, (first, second), strict=True):
        session.get(url, timeout=10).raise_for_status()
    for _ in range(n):
        for session, url, out in zip(sessions, (first, second), samples, strict=True):
            start = time.perf_counter()
            session.get(url, timeout=10).raise_for_status()
            out.append(time.perf_counter() - start)
    return samples


def ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def gateway_rss(up_pid: int) -> int:
    """RSS (MiB) of the gateway: the uvicorn child of `faas up`."""
    for child in Path(f"/proc/{up_pid}/task/{up_pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"uvicorn" in cmdline or b"faas.gateway" in cmdline:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    raise AssertionError("no gateway process under faas up")


def server_timing(header: str, metric: str) -> float:
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name == metric:
            return float(params.split("dur=", 1)[1]) / 1000
    raise AssertionError(f"no {metric} in Server-Timing {header!r}")


def container_id(namespace: str, name: str) -> str:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=faas.namespace={namespace}",
         "--filter", f"label=faas.function={name}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0]


def events(container: str, since: float, event: str) -> list[dict[str, object]]:
    return events_of([f"container={container}"], since, event)


def events_of(filters: list[str], since: float, event: str) -> list[dict[str, object]]:
    """The engine's `event` events since `since` (epoch seconds) matching `filters`."""
    options = [arg for f in filters for arg in ("--filter", f)]
    out = subprocess.run(
        ["docker", "events", "--since", f"{since:.6f}", "--until", f"{time.time():.6f}",
         *options, "--filter", f"event={event}", "--format", "{{json .}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def start_event(container: str, since: float) -> float:
    (event,) = events(container, since, "start")
    return int(str(event["timeNano"])) / 1e9


def count_events(container: str, since: float, event: str) -> int:
    return len(events(container, since, event))


def main() -> None:
    """All steps, or those named in BENCH_ONLY (`replicas`, `async`, `warmpath`: the
    tables of bench/replicas.py, bench/async_calls.py and bench/warmpath.py)."""
    default = [
        "warm",
        "deploy",
        "cold",
        "burst",
        "tiers",
        "runtimes",
        "population",
        "replicas",
        "async",
        "warmpath",
    ]
    names = os.environ["BENCH_ONLY"].split(",") if os.environ.get("BENCH_ONLY") else default
    own = [n for n in names if n not in ("replicas", "async", "warmpath")]
    if own:
        table = platform(own)
        if names == default:  # a partial run must not replace the full table
            Path(__file__).with_name("results.md").write_text(table + "\n")
    # Each imports this module: at call time, not at import time.
    if "replicas" in names:
        import replicas

        replicas.main()
    if "async" in names:
        import async_calls

        async_calls.main()
    if "warmpath" in names:
        import warmpath

        warmpath.main()


def platform(names: list[str]) -> str:
    bench = Bench()
    steps: list[Callable[[], None]] = [getattr(bench, name) for name in names]
    try:
        for step in steps:
            step()
    finally:
        bench.close()
    table = bench.table()
    print(table)
    return table


if __name__ == "__main__":
    main()
