"""Asynchronous calls, measured (issue 17): part of `make bench`.

Starts its own `faas up` (namespace of its own, free ports, nats-server beside
it) with a callback receiver on loopback (FAAS_CALLBACK_ALLOW=127.0.0.1/32),
and a warm echo function (min_scale 1). Three measures, one run:

- accepted calls per second: wrk POSTing to /async-function/<name> for
  BENCH_ASYNC_SECONDS; only 202 answers count (the workers drain meanwhile);
- end-to-end latency: BENCH_ASYNC_LATENCY_CALLS calls, one at a time, each
  from its POST to the arrival of its callback;
- a burst of BENCH_ASYNC_BURST calls: the time to accept them all, and to
  drain (the last callback), and how many never called back (lost).

Writes bench/results-async.md and removes everything it created.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from run import Bench, ms, pct

IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")
SECONDS = int(os.environ.get("BENCH_ASYNC_SECONDS", "10"))
LATENCY_CALLS = int(os.environ.get("BENCH_ASYNC_LATENCY_CALLS", "200"))
BURST = int(os.environ.get("BENCH_ASYNC_BURST", "10000"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "16"))
RESULTS = Path(__file__).resolve().parent / "results-async.md"
POST_LUA = """
wrk.method = "POST"
wrk.body = "job"
response = function(status, headers, body)
  if status ~= 202 then io.write("non-202 ", status, "\\n") end
end
"""


class Receiver:
    """Callbacks on loopback: when each call id called back (first time), and how often."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.count = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.count += 1
                    outer.arrived.setdefault(self.headers["X-Call-Id"], time.monotonic())
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Async:
    def __init__(self, bench: Bench, receiver: Receiver) -> None:
        self.bench = bench
        self.receiver = receiver
        self.url = f"{bench.base}/async-function/aecho/"
        bench.call("PUT", "/functions/aecho", json={"image": IMAGE, "min_scale": 1})

    def post(self, session: requests.Session, callback: bool = True) -> str:
        headers = {"X-Callback-Url": self.receiver.url} if callback else {}
        got = session.post(self.url, data=b"job", headers=headers, timeout=30)
        assert got.status_code == 202, got.text
        return str(got.headers["X-Call-Id"])

    def drained(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.bench.call("GET", "/functions/aecho/calls?limit=1")["queued"]:
            assert time.monotonic() < deadline, "the queue did not drain"
            time.sleep(0.2)

    def accepted(self) -> None:
        wrk = shutil.which("wrk")
        assert wrk, "wrk is not installed (apt-get install -y wrk)"
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(POST_LUA)
            script.flush()
            argv = [wrk, "-t2", f"-c{CLIENTS}", f"-d{SECONDS}s", "-s", script.name, self.url]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        total = int(out.split(" requests in ")[0].split()[-1])
        refused = sum(1 for line in out.splitlines() if line.startswith("non-202"))
        rate = (total - refused) / SECONDS
        self.bench.row(
            "async calls accepted (202) per second",
            f"{rate:.0f}/s",
            "",
            f"wrk, {CLIENTS} connections, {SECONDS} s, warm function draining meanwhile; "
            f"{refused} answers not 202",
        )
        self.drained()

    def latency(self) -> None:
        session = requests.Session()
        samples = []
        for _ in range(LATENCY_CALLS):
            sent = time.monotonic()
            call = self.post(session)
            deadline = sent + 30
            while call not in self.receiver.arrived:
                assert time.monotonic() < deadline, f"no callback for {call}"
                time.sleep(0.0005)
            samples.append(self.receiver.arrived[call] - sent)
        self.bench.row(
            "async call end to end (POST -> callback received), warm",
            ms(statistics.median(samples)),
            ms(pct(samples, 0.9)),
            f"n={LATENCY_CALLS}, one at a time",
        )

    def burst(self) -> None:
        self.drained()
        session_of = threading.local()

        def one(_: int) -> str:
            if not hasattr(session_of, "s"):
                session_of.s = requests.Session()
            return self.post(session_of.s)

        began = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            ids = set(pool.map(one, range(BURST)))
        accepted = time.monotonic() - began
        deadline = time.monotonic() + 900
        while not ids <= set(self.receiver.arrived) and time.monotonic() < deadline:
            time.sleep(0.2)
        lost = len(ids - set(self.receiver.arrived))
        last = max((self.receiver.arrived[i] for i in ids if i in self.receiver.arrived), default=0)
        self.bench.row(
            f"burst of {BURST} async calls: accepted / drained (last callback)",
            f"{accepted:.1f} s / {last - began:.1f} s",
            "",
            f"{len(ids)} accepted, {lost} lost (no callback), {CLIENTS} clients; "
            f"default concurrency (10 in flight)",
        )
        assert lost == 0, f"{lost} calls lost"


def main() -> str:
    load_before = os.getloadavg()[0]
    receiver = Receiver()
    bench = Bench({"FAAS_CALLBACK_ALLOW": "127.0.0.1/32"})
    try:
        measures = Async(bench, receiver)
        measures.accepted()
        measures.latency()
        measures.burst()
    finally:
        bench.close()
        receiver.close()
    table = (
        "Asynchronous calls: `faas up` with its nats-server (JetStream, file storage), a warm "
        f"echo function, callbacks to a receiver on loopback; {os.cpu_count()} cores shared "
        f"with other tenants (load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end).\n\n" + bench.table()
    )
    print(table)
    RESULTS.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
