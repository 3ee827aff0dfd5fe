"""Replicas and autoscaling, measured (issue 14): part of `make bench`.

Starts its own `faas up` (namespace of its own, free ports) with a short
stable window (`FAAS_AUTOSCALE_STABLE_WINDOW`, 10 s) so that a function scaled
back by hand follows the load again soon; the panic window and the interval
keep their defaults. Load comes from `wrk` (Debian), which counts non-2xx
answers apart: only 2xx answers are counted as served. Prints one markdown
table, writes it to bench/results-replicas.md, removes everything it created.

    python bench/replicas.py                      # all four measures
    BENCH_REPLICAS=throughput,scaleup python bench/replicas.py   # some
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from run import Bench, events_of, gateway_rss, ms, pct

from faas import labels
from faas.config import Settings

IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")
CPU_MS = int(os.environ.get("BENCH_CPU_MS", "5"))  # CPU per request of the CPU-bound handler
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "16"))
SECONDS = int(os.environ.get("BENCH_LOAD_SECONDS", "15"))  # each throughput run
ROUNDS = int(os.environ.get("BENCH_THROUGHPUT_ROUNDS", "3"))  # pinned/auto pairs, order swapped
SCALEUP_RUNS = int(os.environ.get("BENCH_SCALEUP_RUNS", "5"))
SCALEUP_LOAD = int(os.environ.get("BENCH_SCALEUP_LOAD", "10"))  # seconds of load per run
WARM_CALLS = int(os.environ.get("BENCH_WARM_CALLS", "200"))
REST_FUNCTIONS = int(os.environ.get("BENCH_REST_FUNCTIONS", "50"))
REST_SECONDS = float(os.environ.get("BENCH_REST_SECONDS", "30"))
STABLE_WINDOW = "10"
SHORT_PANIC = os.environ.get("BENCH_SHORT_PANIC", "2")  # a second scale-up run with this window
RESULTS = Path(__file__).resolve().parent / "results-replicas.md"
NON_2XX_LUA = Path(__file__).resolve().parent / "non2xx.lua"
CPUACCT = Path("/sys/fs/cgroup/cpuacct/docker")  # cgroup v1, cgroupfs driver (this engine)
NO_LIMITS = {"rate_average": 0, "max_in_flight": 0}  # Traefik's limits would measure themselves


@dataclass
class Load:
    """What wrk reports of one run."""

    requests: int
    non_2xx: int
    errors: int  # socket errors (connect, read, write, timeout)
    seconds: float

    @property
    def ok_per_second(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds


@dataclass
class ScaleUp:
    """One scale-up from one replica to two under load."""

    phases: tuple[float, float, float]  # load -> decision -> started -> answering (seconds)
    codes: Counter[str]  # non-2xx answers by status, and socket errors


@dataclass
class Run:
    """One measured load run: what wrk saw and the CPU (in cores) used meanwhile."""

    load: Load
    function_cores: float  # by the function's containers (their cgroups)
    host_cores: float  # by everything on the host, this bench and the other tenants


def cores(runs: list[Run]) -> str:
    fn = statistics.median(r.function_cores for r in runs)
    host = statistics.median(r.host_cores for r in runs)
    return f"its containers used {fn:.2f} cores, the host {host:.2f} of {os.cpu_count()}"


def host_busy() -> float:
    """CPU seconds the host has been busy (all cores, all tenants), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int) -> list[str]:
    wrk_bin = shutil.which("wrk")
    assert wrk_bin, "wrk is not installed (apt-get install -y wrk)"
    threads = min(CLIENTS, 2)
    return [wrk_bin, f"-t{threads}", f"-c{CLIENTS}", f"-d{seconds}s", "--timeout", "10s", url]


def parse_wrk(output: str) -> Load:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    assert done, f"no summary in wrk's output:\n{output}"
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done[3]]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return Load(
        requests=int(done[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
        seconds=float(done[2]) * unit,
    )


def run_wrk(url: str, seconds: int) -> Load:
    out = subprocess.run(wrk(url, seconds), capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(up_pid: int, marker: bytes) -> int:
    """The child of `faas up` whose command line holds `marker`."""
    for pid in Path(f"/proc/{up_pid}/task/{up_pid}/children").read_text().split():
        if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise AssertionError(f"no {marker!r} process under faas up")


class Replicas:
    def __init__(self, bench: Bench, variant: str = "") -> None:
        self.bench = bench
        self.variant = variant  # appended to the scale-up row: the settings that differ
        self.deployed: dict[str, float] = {}
        panic = bench.env.get("FAAS_AUTOSCALE_PANIC_WINDOW")
        self.panic = float(panic or Settings.model_fields["autoscale_panic_window"].default)
        self.traefik_api = f"http://127.0.0.1:{bench.env['FAAS_TRAEFIK_API_PORT']}/api"
        self.gateway = f"http://127.0.0.1:{bench.env['FAAS_GATEWAY_PORT']}"

    def url(self, name: str, cpu: bool = True) -> str:
        return f"{self.bench.base}/function/{name}/" + (f"?cpu={CPU_MS}" if cpu else "")

    def deploy(self, name: str, **spec: object) -> None:
        self.bench.call("PUT", f"/functions/{name}", json={"image": IMAGE, **spec})
        self.deployed[name] = time.perf_counter()

    def servers(self, name: str) -> int:
        """Servers in the function's Traefik service (0 when it has none)."""
        url = f"{self.traefik_api}/http/services/{labels.service_name(name)}"
        response = requests.get(url, timeout=5)
        if response.status_code == 404:
            return 0
        response.raise_for_status()
        return len(response.json().get("loadBalancer", {}).get("servers", []))

    def concurrency(self, name: str) -> float:
        """The autoscaler's view of the load (panic window), from the gateway's metrics."""
        text = self.bench.api.get(f"{self.gateway}/metrics", timeout=5).text
        pattern = rf'^faas_function_concurrency\{{[^}}]*"{re.escape(name)}"[^}}]*\}} (\S+)$'
        found = re.search(pattern, text, re.MULTILINE)
        return float(found[1]) if found else 0.0

    def until(self, what: str, check: Callable[[], bool], timeout: float = 90) -> None:
        """Poll `check` until it holds."""
        deadline = time.perf_counter() + timeout
        while not check():
            assert time.perf_counter() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def row(self, what: str, median: str, p90: str = "", note: str = "") -> None:
        self.bench.row(what, median, p90, note)

    # -- 1. throughput, autoscaled vs pinned ---------------------------------------

    def throughput(self) -> None:
        self.deploy("pinned", min_scale=1, max_scale=1, limits=NO_LIMITS)
        self.deploy("auto", min_scale=1, max_scale=2, limits=NO_LIMITS)
        runs: dict[str, list[Run]] = {"pinned": [], "auto": []}
        for i in range(ROUNDS):
            for name in ("pinned", "auto") if i % 2 == 0 else ("auto", "pinned"):
                self.warm_up(name)
                runs[name].append(self.measured(name))
                if name == "auto":  # it served the whole run with two
                    assert self.servers("auto") == 2, "auto lost its second replica"
        p, a = (statistics.median(r.load.ok_per_second for r in runs[n]) for n in runs)
        bad = sum(r.load.non_2xx + r.load.errors for n in runs for r in runs[n])
        note = f"{CLIENTS} wrk connections, ?cpu={CPU_MS} (ms of CPU per request), {SECONDS} s"
        self.row("CPU-bound function pinned to 1 replica", f"{p:.0f} req/s", "",
                 f"{note}; 2xx only; median of {ROUNDS}; {cores(runs['pinned'])}")  # fmt: skip
        warmed = f"each run after a warm-up that reached 2 replicas; {cores(runs['auto'])}"
        self.row("  same, autoscaled (max_scale 2)", f"{a:.0f} req/s", "", warmed)
        alternated = f"target >= 1.6x; runs alternated; {bad} non-2xx or socket errors in all"
        self.row("throughput ratio autoscaled / pinned", f"{a / p:.2f}x", "", alternated)
        per_core = {
            n: statistics.median(r.load.ok_per_second / r.function_cores for r in runs[n])
            for n in runs
        }
        self.row(
            "  req/s per core its containers got, autoscaled / pinned",
            f"{per_core['auto'] / per_core['pinned']:.2f}x",
            "",
            f"{per_core['pinned']:.0f} vs {per_core['auto']:.0f} 2xx answers per CPU-second "
            "of the function's containers (cgroup cpuacct)",
        )
        self.bench.call("DELETE", "/functions/pinned")

    def measured(self, name: str) -> Run:
        """One wrk run on `name`, with the CPU its containers and the host used meanwhile."""
        groups = [CPUACCT / i / "cpuacct.usage" for i in self.container_ids(name)]
        before = [int(g.read_text()) for g in groups], host_busy(), time.perf_counter()
        load = run_wrk(self.url(name), SECONDS)
        wall = time.perf_counter() - before[2]
        used = sum(int(g.read_text()) for g in groups) - sum(before[0])
        return Run(load, used / 1e9 / wall, (host_busy() - before[1]) / wall)

    def container_ids(self, name: str) -> list[str]:
        return subprocess.run(
            ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=faas.function={name}",
             "--filter", f"label=faas.namespace={self.bench.namespace}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip

    def warm_up(self, name: str) -> None:
        """Load `name` until all its replicas serve (`auto`: two), then 2 s more."""
        load = subprocess.Popen(wrk(self.url(name), 120), stdout=subprocess.DEVNULL)
        try:
            want = 2 if name == "auto" else 1
            self.until(f"{name} at {want}", lambda: self.servers(name) == want, 100)
            time.sleep(2)  # the new replica's first requests are not the measure
        finally:
            load.terminate()
            load.wait(10)

    # -- 2. load start -> a second replica serving -------------------------------

    def scaleup(self) -> None:
        if "auto" not in self.names():
            self.deploy("auto", min_scale=1, max_scale=2, limits=NO_LIMITS)
        runs = [self.one_scaleup(self.reset()) for _ in range(SCALEUP_RUNS)]
        n = f"n={SCALEUP_RUNS}, {CLIENTS} wrk connections, ?cpu={CPU_MS}"
        phases = [
            (f"load start -> a second replica answers{self.variant}", f"{n}; target p50 <= 3 s"),
            ("  phase: load start -> the autoscaler decided", "the new container's create event"),
            ("  phase: decision -> container started", "its start event"),
            ("  phase: started -> its first answer", "Traefik balances to it"),
        ]
        total = [sum(r.phases) for r in runs]
        for i, (what, note) in enumerate(phases):
            samples = total if i == 0 else [r.phases[i - 1] for r in runs]
            self.row(what, ms(statistics.median(samples)), ms(pct(samples, 0.9)), note)
        codes = sum((r.codes for r in runs), Counter[str]())
        named = ", ".join(f"{n} x {code}" for code, n in sorted(codes.items())) or "none"
        self.row(
            "  non-2xx answers (or socket errors) during the scale-ups",
            str(sum(codes.values())),
            "",
            f"{named}; wrk's and the probe's, {SCALEUP_LOAD} s of load per run",
        )

    def names(self) -> set[str]:
        listing = self.bench.api.get(f"{self.bench.base}/api/v1/functions", timeout=30).json()
        return {str(f["name"]) for f in listing}

    def reset(self) -> str:
        """Back to one replica, the autoscaler's panic window empty; its hostname.

        The window empties first: while it still holds the last run's load the
        autoscaler would scale straight back up to two."""
        self.until("an idle panic window", lambda: self.concurrency("auto") == 0.0)
        # A function deployed less than a panic window ago has a shorter history,
        # which the autoscaler averages over: it would scale up sooner than usual.
        young = self.deployed.get("auto", 0.0) + self.panic + 1 - time.perf_counter()
        time.sleep(max(young, 0.0))
        self.bench.call("POST", "/functions/auto/scale", json={"replicas": 1})
        self.until("one server", lambda: self.servers("auto") == 1)
        hosts = {hostname(requests.get(self.url("auto", cpu=False), timeout=10)) for _ in range(4)}
        assert len(hosts) == 1, hosts
        return hosts.pop()

    def one_scaleup(self, first: str) -> ScaleUp:
        """Load `auto` (one replica, answering as `first`) until another hostname answers."""
        session = requests.Session()
        session.get(self.url("auto", cpu=False), timeout=10)
        wall = time.time()
        start = time.perf_counter()
        command = [*wrk(self.url("auto"), SCALEUP_LOAD), "-s", str(NON_2XX_LUA)]
        load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        probe_codes: Counter[str] = Counter()
        try:
            while True:
                response = session.get(self.url("auto", cpu=False), timeout=30)
                if response.status_code != 200:  # counted with wrk's, the probe goes on
                    probe_codes[str(response.status_code)] += 1
                elif hostname(response) != first:
                    break
                assert time.perf_counter() - start < SCALEUP_LOAD, "no second replica"
            serving = time.perf_counter() - start
        finally:
            out, _ = load.communicate(timeout=SCALEUP_LOAD + 30)
        filters = [f"label=faas.namespace={self.bench.namespace}", "label=faas.function=auto"]
        created = min(nanos(e) for e in events_of(filters, wall, "create")) - wall
        started = min(nanos(e) for e in events_of(filters, wall, "start")) - wall
        codes = Counter(re.findall(r"^non-2xx (\d+)$", out, re.MULTILINE)) + probe_codes
        errors = parse_wrk(out).errors
        if errors:
            codes["socket error"] += errors
        return ScaleUp((created, started - created, serving - started), codes)

    # -- 3. warm latency, 3 replicas vs 1 ---------------------------------------

    def warm3(self) -> None:
        self.deploy("one", min_scale=1, max_scale=1)
        self.deploy("three", min_scale=3, max_scale=3)
        self.until("three servers", lambda: self.servers("three") == 3)
        sessions = {name: requests.Session() for name in ("one", "three")}
        samples: dict[str, list[float]] = {"one": [], "three": []}
        hosts: dict[str, set[str]] = {"one": set(), "three": set()}
        for name, session in sessions.items():
            session.get(self.url(name, cpu=False), timeout=10).raise_for_status()
        for _ in range(WARM_CALLS):
            for name, session in sessions.items():
                begin = time.perf_counter()
                response = session.get(self.url(name, cpu=False), timeout=10)
                samples[name].append(time.perf_counter() - begin)
                hosts[name].add(hostname(response))
        assert len(hosts["three"]) == 3, hosts
        one, three = (statistics.median(samples[n]) for n in ("one", "three"))
        n = f"n={WARM_CALLS} each, keep-alive, sequential, alternated"
        self.row("warm invoke through Traefik, 1 replica", ms(one), ms(pct(samples["one"], 0.9)), n)
        self.row(
            "warm invoke through Traefik, 3 replicas",
            ms(three),
            ms(pct(samples["three"], 0.9)),
            f"{n}; answered by all 3",
        )
        self.row(
            "  3 replicas - 1 replica",
            f"{(three - one) * 1000:+.2f} ms",
            "",
            "median - median; target <= +0.2 ms",
        )
        for name in ("one", "three"):
            self.bench.call("DELETE", f"/functions/{name}")

    # -- 4. the gateway while autoscaling many functions at rest -------------------

    def rest(self) -> None:
        for name in self.names():  # all of them are this bench's
            self.bench.call("DELETE", f"/functions/{name}")
        up = self.bench.up.pid
        gateway, traefik = child(up, b"uvicorn"), child(up, b"traefik")
        base = self.watch(gateway, traefik)
        rest_spec = {"min_scale": 1, "resources": {"memory": "32m"}}
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: self.deploy(f"rest{i}", **rest_spec), range(REST_FUNCTIONS)))
        assert sum(1 for n in self.names() if n.startswith("rest")) == REST_FUNCTIONS
        many = self.watch(gateway, traefik)
        for label, (cpu, trcpu) in (("0 functions", base), (f"{REST_FUNCTIONS} running", many)):
            note = f"{REST_SECONDS:g} s at rest (autoscaler every 1 s, idle check 5 s, stats 15 s)"
            self.row(
                f"gateway CPU, {label}",
                f"{cpu * 100:.1f}% of a core",
                "",
                f"{note}; target <= 5% (Traefik: {trcpu * 100:.1f}%)",
            )
        self.row(
            f"gateway RSS, {REST_FUNCTIONS} functions running",
            f"{gateway_rss(up)} MiB",
            "",
            "after the window; target <= 100 MiB",
        )
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda i: self.bench.call("DELETE", f"/functions/rest{i}"),
                    range(REST_FUNCTIONS),
                )
            )

    def watch(self, gateway: int, traefik: int) -> tuple[float, float]:
        """CPU share (of one core) of the gateway and Traefik over REST_SECONDS."""
        before = cpu_seconds(gateway), cpu_seconds(traefik), time.perf_counter()
        time.sleep(REST_SECONDS)  # the window measured, not a wait for something
        wall = time.perf_counter() - before[2]
        return (
            (cpu_seconds(gateway) - before[0]) / wall,
            (cpu_seconds(traefik) - before[1]) / wall,
        )


def nanos(event: dict[str, object]) -> float:
    return int(str(event["timeNano"])) / 1e9


def hostname(response: requests.Response) -> str:
    response.raise_for_status()
    return str(response.json()["hostname"])


STEPS = ("throughput", "scaleup", "warm3", "rest")


def main() -> str:
    """Run the chosen steps (BENCH_REPLICAS, default all) in a `faas up` of their own;
    the scale-up once more with a short panic window (BENCH_SHORT_PANIC, "" to skip)."""
    chosen = os.environ.get("BENCH_REPLICAS", ",".join(STEPS)).split(",")
    load_before = os.getloadavg()[0]
    bench = Bench({"FAAS_AUTOSCALE_STABLE_WINDOW": STABLE_WINDOW})
    try:
        for step in chosen:
            getattr(Replicas(bench), step)()
    finally:
        bench.close()
    if "scaleup" in chosen and SHORT_PANIC:
        window = {"FAAS_AUTOSCALE_PANIC_WINDOW": SHORT_PANIC}
        short = Bench({"FAAS_AUTOSCALE_STABLE_WINDOW": STABLE_WINDOW, **window})
        try:
            Replicas(short, f", FAAS_AUTOSCALE_PANIC_WINDOW={SHORT_PANIC}").scaleup()
        finally:
            short.close()
        bench.rows.extend(short.rows)
    table = (
        f"Replicas and autoscaling: `faas up` with FAAS_AUTOSCALE_STABLE_WINDOW={STABLE_WINDOW} s "
        "(the panic window and the 1 s interval at their defaults unless a row says otherwise); "
        f"load by wrk; {os.cpu_count()} cores shared with other tenants (load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end).\n\n" + bench.table()
    )
    print(table)
    if set(chosen) == set(STEPS):  # a partial run must not replace the full table
        RESULTS.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
