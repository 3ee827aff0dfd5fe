"""The warm path's budget (issue 18): part of `make bench`.

Successful requests per second at 16 connections (wrk; 2xx only), each
comparison's runs alternated within one run and repeated (median of
BENCH_WARMPATH_ROUNDS):

1. the platform as deployed (`faas up`, default limits): straight to the
   container, through Traefik to a public function, through Traefik to a
   `key` function with a valid key;
2. what each piece of a function's router costs: a second Traefik, configured
   as `faas up` configures its own but without the entrypoint's X-Call-Id
   middleware, serves the same container through one router per variant
   (chosen by an X-Variant header), each with one middleware or none; per
   variant the successful requests per second and the CPU that Traefik spent
   per successful request (its /proc/<pid>/stat), against the bare route.

All of it in one alternation: each round runs the three of (1) back to back and
every variant of (2), in an order rotated from round to round, so that other
tenants of the machine weigh on all of them alike.

Writes bench/results-warmpath.md; removes everything it created.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from replicas import Load, cpu_seconds, parse_wrk
from run import Bench, free_port, ok

from faas import traefik
from faas.config import Settings

IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "16"))
SECONDS = int(os.environ.get("BENCH_WARMPATH_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_WARMPATH_ROUNDS", "5"))
RESULTS = Path(__file__).resolve().parent / "results-warmpath.md"
PINNED = {"min_scale": 1, "max_scale": 1}  # the autoscaler must not add a replica mid-run
# A limit no run reaches: the middleware's cost, not its effect.
UNREACHED_RATE = 1_000_000

# The variants of a function's router, each on the same container: name -> the
# middlewares (dynamic-config names) in its chain. `key`: sends a valid key.
VARIANTS: dict[str, list[str]] = {
    "bare": [],
    "call id and 502 (callid plugin)": ["callid@file"],
    "retry (3 attempts)": ["retry"],
    "rate limit": ["rate"],
    "rate limit at the old default (1000/s, burst 2000)": ["rate1000"],
    "in-flight limit": ["inflight"],
    "strip prefix": ["strip"],
    "key: forwardAuth to the gateway": ["forwardauth", "nokey"],
    "key: keys plugin": ["keys@file"],
    "a public function's whole chain": ["callid@file", "rate", "inflight", "retry", "strip"],
    "a key function's whole chain": [
        "callid@file",
        "rate",
        "inflight",
        "keys@file",
        "retry",
        "strip",
    ],
}
KEYED = {"key: forwardAuth to the gateway", "key: keys plugin", "a key function's whole chain"}


@dataclass
class Sample:
    load: Load
    traefik_cpu: float  # CPU seconds the measured Traefik used during the run

    @property
    def ok(self) -> int:
        return self.load.requests - self.load.non_2xx

    @property
    def cpu_per_ok_us(self) -> float:
        return self.traefik_cpu / max(self.ok, 1) * 1e6


def wrk(url: str, headers: dict[str, str]) -> Load:
    wrk_bin = shutil.which("wrk")
    assert wrk_bin, "wrk is not installed (bench/deps.sh)"
    flags = [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
    command = [wrk_bin, "-t2", f"-c{CLIENTS}", f"-d{SECONDS}s", "--timeout", "10s", *flags, url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def measure(url: str, headers: dict[str, str], pid: int) -> Sample:
    before = cpu_seconds(pid)
    load = wrk(url, headers)
    return Sample(load, cpu_seconds(pid) - before)


def per_second(samples: list[Sample]) -> float:
    return statistics.median(s.load.ok_per_second for s in samples)


def bad(samples: list[Sample]) -> int:
    return sum(s.load.non_2xx + s.load.errors for s in samples)


class WarmPath:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        bench.call("PUT", "/functions/pub", json={"image": IMAGE, **PINNED})
        bench.call("PUT", "/functions/kf", json={"image": IMAGE, "auth": "key", **PINNED})
        self.key = str(bench.call("POST", "/functions/kf/keys", json={"ttl": 3600})["key"])
        self.address = str(bench.call("GET", "/functions/pub")["address"])
        self.traefik_pid = child_pid(bench.up.pid, b"traefik")

    def run(self) -> None:
        """All measures in one alternation: each round runs the platform's three
        (direct, public, key; back to back, so their ratios compare runs a few seconds
        apart) and every variant on the second Traefik, in an order rotated per round."""
        with tempfile.TemporaryDirectory(prefix="faas-bench-warmpath-") as state:
            process, url = self.probe_traefik(Path(state))
            try:
                platform, variants = self.alternate(url, process.pid)
            finally:
                process.terminate()
                process.wait(10)
        self.platform_rows(platform)
        self.variant_rows(variants)

    def alternate(
        self, url: str, pid: int
    ) -> tuple[dict[str, list[Sample]], dict[str, list[Sample]]]:
        platform: dict[str, list[Sample]] = {"direct": [], "public": [], "key": []}
        targets = {
            "direct": (f"http://{self.address}/", {}),
            "public": (f"{self.bench.base}/function/pub/", {}),
            "key": (f"{self.bench.base}/function/kf/", {"X-Faas-Key": self.key}),
        }
        variants: dict[str, list[Sample]] = {name: [] for name in VARIANTS}
        units = ["platform", *VARIANTS]
        for i in range(ROUNDS):
            shift = i * len(units) // max(ROUNDS, 1)
            for unit in units[shift:] + units[:shift]:
                if unit == "platform":
                    order = list(platform)
                    for name in order[i % 3 :] + order[: i % 3]:
                        target, headers = targets[name]
                        platform[name].append(measure(target, headers, self.traefik_pid))
                    continue
                headers = {"X-Variant": variant_id(unit)}
                if unit in KEYED:
                    headers["X-Faas-Key"] = self.key
                sample = measure(url, headers, pid)
                assert sample.ok > 0, f"{unit}: no 2xx answer"
                variants[unit].append(sample)
        return platform, variants

    def platform_rows(self, runs: dict[str, list[Sample]]) -> None:
        d, p, k = (per_second(runs[n]) for n in ("direct", "public", "key"))
        note = f"{CLIENTS} connections, {SECONDS} s, 2xx only, median of {ROUNDS}"
        self.row("straight to the container", f"{d:.0f} req/s", note)
        self.row("through Traefik, public function", f"{p:.0f} req/s",
                 f"Traefik {cpu(runs['public']):.0f} µs CPU per request")  # fmt: skip
        self.row("through Traefik, key function (valid key)", f"{k:.0f} req/s",
                 f"Traefik {cpu(runs['key']):.0f} µs CPU per request")  # fmt: skip
        errors = sum(bad(r) for r in runs.values())
        self.row("**ratio Traefik / direct**", f"**{p / d:.2f}**",
                 f"target >= 0.8; per round {spread(runs['public'], runs['direct'])}; "
                 f"{errors} non-2xx or socket errors in all runs")  # fmt: skip
        self.row("**ratio key / public**", f"**{k / p:.2f}**",
                 f"target >= 0.7; per round {spread(runs['key'], runs['public'])}")  # fmt: skip

    def variant_rows(self, runs: dict[str, list[Sample]]) -> None:
        base_ok, base_cpu = per_second(runs["bare"]), cpu(runs["bare"])
        self.bench.rows.append("")
        self.bench.rows.append(
            "| router variant (second Traefik, no entrypoint middleware) | 2xx req/s "
            "| / bare | Traefik CPU µs per request | cost vs bare |"
        )
        self.bench.rows.append("|---|---|---|---|---|")
        for name, samples in runs.items():
            got, used = per_second(samples), cpu(samples)
            self.bench.rows.append(
                f"| {name} | {got:.0f} | {got / base_ok:.2f} | {used:.0f} | "
                f"{used - base_cpu:+.0f} µs |"
            )

    def probe_traefik(self, state: Path) -> tuple[subprocess.Popen[bytes], str]:
        """A second Traefik: `faas up`'s static config without the entrypoint's call id,
        the gateway's dynamic config (its plugins' middlewares, the platform's key check)
        and one router per variant, all to the public function's container."""
        port, api = free_port(), free_port()
        settings = Settings(
            namespace=self.bench.namespace + "x",  # routes none of the platform's containers
            state_dir=state,
            http_port=port,
            traefik_api_port=api,
            gateway_port=int(self.bench.env["FAAS_GATEWAY_PORT"]),
        )
        config = traefik.render_config(settings)
        text = config.read_text()
        assert "middlewares: [callid@file]" in text
        config.write_text(text.replace("middlewares: [callid@file]", "middlewares: []"))
        platform = Path(self.bench.env["FAAS_STATE_DIR"]) / "traefik"
        shutil.copy(platform / traefik.SECRET_COPY, config.parent / traefik.SECRET_COPY)
        shutil.copy(platform / "dynamic" / traefik.KEYS_FILE, settings.dynamic_dir)
        gateway = f"http://127.0.0.1:{settings.gateway_port}"
        variants = {"http": variants_config(self.address, gateway)}
        (settings.dynamic_dir / "variants.yml").write_text(json.dumps(variants, indent=1))
        process = subprocess.Popen(
            [traefik.binary(settings), f"--configFile={config}"],
            cwd=config.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        routers = f"http://127.0.0.1:{api}/api/http/routers/{variant_id('bare')}@file"
        deadline = time.monotonic() + 30
        while not ok(routers):
            assert time.monotonic() < deadline, "the second Traefik did not load the variants"
            time.sleep(0.05)
        return process, f"http://127.0.0.1:{port}/function/kf/"

    def row(self, what: str, value: str, note: str = "") -> None:
        self.bench.rows.append(f"| {what} | {value} | {note} |")


def cpu(samples: list[Sample]) -> float:
    return statistics.median(s.cpu_per_ok_us for s in samples)


def spread(top: list[Sample], bottom: list[Sample]) -> str:
    """The lowest and highest of the per-round ratios top/bottom."""
    ratios = [t.load.ok_per_second / b.load.ok_per_second for t, b in zip(top, bottom, strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def variant_id(name: str) -> str:
    return "v" + str(list(VARIANTS).index(name))


def variants_config(address: str, gateway: str) -> dict[str, object]:
    """Routers (one per variant, matched by X-Variant) and the middlewares they use,
    set as faas/labels.py sets a function's, the limits made unreachable."""
    middlewares = {
        "retry": {"retry": {"attempts": 3, "initialInterval": "50ms"}},
        "rate": {"rateLimit": {"average": UNREACHED_RATE, "burst": UNREACHED_RATE}},
        "rate1000": {"rateLimit": {"average": 1000, "burst": 2000}},
        "inflight": {"inFlightReq": {"amount": 100_000}},
        "strip": {"stripPrefix": {"prefixes": ["/function/kf"]}},
        "forwardauth": {"forwardAuth": {"address": f"{gateway}/api/v1/auth/kf"}},
        "nokey": {"headers": {"customRequestHeaders": {"Authorization": "", "X-Faas-Key": ""}}},
    }
    routers = {
        variant_id(name): {
            "rule": f"Header(`X-Variant`, `{variant_id(name)}`)",
            "entryPoints": ["web"],
            "middlewares": chain,
            "service": "echo",
        }
        for name, chain in VARIANTS.items()
    }
    services = {"echo": {"loadBalancer": {"servers": [{"url": f"http://{address}"}]}}}
    return {"routers": routers, "middlewares": middlewares, "services": services}


def child_pid(up_pid: int, marker: bytes) -> int:
    for pid in Path(f"/proc/{up_pid}/task/{up_pid}/children").read_text().split():
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(marker):
            return int(pid)
    raise AssertionError(f"no {marker!r} process under faas up")


def main() -> str:
    load_before = os.getloadavg()[0]
    bench = Bench()
    bench.rows.extend(["| measure | value | notes |", "|---|---|---|"])
    try:
        WarmPath(bench).run()
    finally:
        bench.close()
    table = (
        f"Warm path budget: `faas up` with its default settings, functions pinned to one "
        f"replica (the echo image); load by wrk, {CLIENTS} connections, {SECONDS} s per run; "
        f"{os.cpu_count()} cores shared by wrk, Traefik, the function and other tenants "
        f"(load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)."
        "\n\n" + "\n".join(bench.rows)
    )
    print(table)
    if not os.environ.get("BENCH_WARMPATH_NO_SAVE"):
        RESULTS.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
