"""Asynchronous calls on a stack of its own: real nats-server (JetStream, file
storage; one of the test's own via FAAS_NATS_URL, and `faas up`'s own in the
SIGKILL tests), real function containers, a real callback receiver on loopback
(opened with FAAS_CALLBACK_ALLOW), and the gateway or nats-server SIGKILLed
with calls queued and in flight."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest
import requests

from faas import broker
from faas.config import Settings

from .conftest import Stack, cli, free_port, running_stack, wait_for
from .test_faults_supervise import children

pytestmark = pytest.mark.integration

CONCURRENCY = 5
# The test function, on the echo image (python3): no image to build. It counts
# per call id the attempts it got, and the most requests it had in flight.
#   POST /work?fail=N&sleep=S   500 for the first N attempts of a call id, then
#                               200 {"call", "attempt"} after S seconds
#   GET  /stats                 {"calls": {id: attempts}, "first": {id: time of the
#                               first attempt}, "max_in_flight"}
COUNTER = r"""
import json, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
lock = threading.Lock()
calls, first, state = {}, {}, {"now": 0, "max": 0}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        with lock:
            self.answer(200, {"calls": calls, "first": first, "max_in_flight": state["max"]})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        q = parse_qs(urlsplit(self.path).query)
        cid = self.headers.get("X-Call-Id", "")
        with lock:
            calls[cid] = attempt = calls.get(cid, 0) + 1
            first.setdefault(cid, time.time())
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(float(q.get("sleep", ["0"])[0]))
            if attempt <= int(q.get("fail", ["0"])[0]):
                self.answer(500, {"call": cid, "attempt": attempt, "error": "failing on purpose"})
            else:
                self.answer(200, {"call": cid, "attempt": attempt})
        finally:
            with lock:
                state["now"] -= 1
ThreadingHTTPServer(("", 8080), H).serve_forever()
"""


class Receiver:
    """A callback receiver on loopback: every POST it gets, in order."""

    def __init__(self) -> None:
        self.got: queue.Queue[dict[str, object]] = queue.Queue()
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.put({"headers": dict(self.headers), "body": body, "path": self.path})
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = 30) -> dict[str, object]:
        return self.got.get(timeout=timeout)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS of our own (FAAS_NATS_URL), as an operator's cluster would be."""
    port = free_port()
    store = tmp_path_factory.mktemp("nats")
    argv = [broker.binary(Settings()), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: tcp_open(port), 10, "nats-server")
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def tcp_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def queued(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory, nats_url: str
) -> Iterator[Stack]:
    with running_stack(
        engine,
        tmp_path_factory.mktemp("async"),
        FAAS_NATS_URL=nats_url,
        FAAS_CALLBACK_ALLOW="127.0.0.1/32",
        FAAS_ASYNC_BACKOFF="0.1",
        FAAS_ASYNC_MAX_BACKOFF="0.5",
        FAAS_ASYNC_ACK_WAIT="3",
        FAAS_ASYNC_CONCURRENCY=str(CONCURRENCY),
    ) as s:
        yield s


def deploy_counter(stack: Stack, prefix: str, **spec: object) -> str:
    name = f"{prefix}-{os.urandom(3).hex()}"
    got = stack.deploy(name, command=["python3", "-c", COUNTER], max_scale=1, **spec)
    assert got.status_code == 200, got.text
    return name


def stats(stack: Stack, name: str, key: str = "") -> dict[str, object]:
    got = stack.invoke(name, "/stats", headers={"X-Faas-Key": key} if key else {})
    assert got.status_code == 200, got.text
    return dict(got.json())


def enqueue(
    stack: Stack,
    name: str,
    query: str = "",
    session: requests.Session | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    got = (session or requests).post(
        f"{stack.url}/async-function/{name}/work{query}", data=b"job", headers=headers, timeout=30
    )
    assert got.status_code == 202, got.text
    assert got.headers["X-Call-Id"] == got.json()["call_id"]
    return str(got.headers["X-Call-Id"])


def calls_of(stack: Stack, name: str) -> list[dict[str, object]]:
    got = stack.api("GET", f"/functions/{name}/calls")
    assert got.status_code == 200, got.text
    return list(got.json()["calls"])


def done(stack: Stack, name: str, ids: set[str]) -> bool:
    seen = stats(stack, name)["calls"]
    assert isinstance(seen, dict)
    return ids <= set(seen) and stack.api("GET", f"/functions/{name}/calls").json()["queued"] == 0


def test_a_call_is_made_once_and_its_answer_called_back(queued: Stack, receiver: Receiver) -> None:
    assert "nats" not in children(queued)  # FAAS_NATS_URL: no nats-server of faas up's own
    name = deploy_counter(queued, "once")
    call = enqueue(queued, name, "?x=1", headers={"X-Callback-Url": f"{receiver.url}/hook"})
    back = receiver.next()
    headers = back["headers"]
    assert isinstance(headers, dict)
    assert headers["X-Call-Id"] == call
    assert headers["X-Function-Status"] == "200"
    assert headers["X-Function-Name"] == name
    assert float(headers["X-Duration-Seconds"]) > 0
    assert headers["Content-Type"] == "application/json"
    assert json.loads(back["body"]) == {"call": call, "attempt": 1}  # type: ignore[arg-type]
    assert back["path"] == "/hook"
    assert stats(queued, name)["calls"] == {call: 1}


def test_a_failing_call_is_retried_then_dead_lettered(queued: Stack, receiver: Receiver) -> None:
    name = deploy_counter(queued, "retry", queue={"max_attempts": 3})
    hook = {"X-Callback-Url": f"{receiver.url}/hook"}
    twice = enqueue(queued, name, "?fail=2", headers=hook)
    back = receiver.next()
    headers = back["headers"]
    assert isinstance(headers, dict)
    assert (headers["X-Call-Id"], headers["X-Function-Status"]) == (twice, "200")
    assert headers["X-Function-Attempts"] == "3"
    assert json.loads(back["body"]) == {"call": twice, "attempt": 3}  # type: ignore[arg-type]

    always = enqueue(queued, name, "?fail=1000", headers=hook)
    back = receiver.next()
    headers = back["headers"]
    assert isinstance(headers, dict)
    assert (headers["X-Call-Id"], headers["X-Function-Status"]) == (always, "500")
    assert stats(queued, name)["calls"] == {twice: 3, always: 3}
    assert receiver.got.empty()  # one callback per call, none per retry
    # Acknowledged once its callback is sent: until then it is listed as queued too.
    wait_for(lambda: len(calls_of(queued, name)) == 1, 10, "the call settled")
    (failed,) = calls_of(queued, name)
    assert (failed["id"], failed["state"], failed["attempts"]) == (always, "failed", 3)
    metrics = requests.get(f"{queued.direct}/metrics", timeout=10).text
    for line in (
        f'faas_async_enqueued_total{{function="{name}"}} 2.0',
        f'faas_async_attempts_total{{function="{name}",outcome="ok"}} 1.0',
        f'faas_async_attempts_total{{function="{name}",outcome="failed"}} 5.0',
        f'faas_async_retries_total{{function="{name}"}} 4.0',
        f'faas_async_dead_letters_total{{function="{name}"}} 1.0',
        f'faas_async_latency_seconds_count{{function="{name}"}} 2.0',
        'faas_async_callbacks_total{outcome="sent"}',
    ):
        assert line in metrics, line
    assert failed["last_status"] == 500
    code, out, err = cli(queued, "calls", name)
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(always)]
    assert "failed" in row
    assert " 3 " in row
    assert "HTTP 500" in row

    # Retried by hand: three more attempts, the dead letter again; then dropped.
    code, out, err = cli(queued, "calls", "retry", always)
    assert code == 0, err
    wait_for(lambda: stats(queued, name)["calls"] == {twice: 3, always: 6}, 30, "3 more attempts")
    assert receiver.next()["headers"]["X-Call-Id"] == always  # type: ignore[index]
    wait_for(lambda: [c["state"] for c in calls_of(queued, name)] == ["failed"], 10, "failed")
    code, out, err = cli(queued, "calls", "drop", always)
    assert code == 0, err
    assert calls_of(queued, name) == []
    code, _, err = cli(queued, "calls", "drop", always)
    assert code == 1
    assert "no queued or failed call" in err


def test_bad_calls_are_refused_and_nothing_is_queued(queued: Stack) -> None:
    name = deploy_counter(queued, "refuse", limits={"max_body_bytes": 1000})
    url = f"{queued.url}/async-function/{name}"
    got = requests.post(url, data=b"x" * 1001, timeout=10)
    assert got.status_code == 413, got.text
    got = requests.post(f"{queued.url}/async-function/nosuch-fn", data=b"x", timeout=10)
    assert got.status_code == 404
    assert "error" in got.json()
    for callback in ("ftp://example.com/x", "http://169.254.169.254/latest", "not a url"):
        got = requests.post(url, data=b"x", headers={"X-Callback-Url": callback}, timeout=10)
        assert got.status_code == 400, (callback, got.text)
        assert "X-Callback-Url" in got.json()["error"]
    assert calls_of(queued, name) == []
    assert queued.api("GET", f"/functions/{name}/calls").json()["queued"] == 0


def test_a_key_function_needs_its_key_to_queue(queued: Stack) -> None:
    name = deploy_counter(queued, "keyed", auth="key")
    url = f"{queued.url}/api/v1/async-function/{name}/work"
    assert requests.post(url, data=b"x", timeout=10).status_code == 401
    key = queued.api("POST", f"/functions/{name}/keys", json={}).json()["key"]
    got = requests.post(url, data=b"x", headers={"X-Faas-Key": key}, timeout=10)
    assert got.status_code == 202, got.text
    call = got.headers["X-Call-Id"]
    wait_for(lambda: call in stats(queued, name, key)["calls"], 30, "the keyed call")  # type: ignore[operator]
    # The key went to the function with the call, never into the queue.
    assert key not in json.dumps(queued.api("GET", f"/functions/{name}/calls").json())


def test_a_burst_wakes_a_function_at_zero_once_and_keeps_to_its_concurrency(
    queued: Stack, engine: docker.DockerClient
) -> None:
    name = deploy_counter(queued, "burst")
    assert queued.api("POST", f"/functions/{name}/scale", json={"replicas": 0}).status_code == 200
    wakes = wakes_of(queued, name)
    session = requests.Session()
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: enqueue(queued, name, "?sleep=0.01", session), range(1000)))
    accepted = time.monotonic() - began
    assert len(ids) == 1000
    wait_for(lambda: done(queued, name, ids), 120, "1,000 calls made")
    seen = stats(queued, name)
    assert set(made_calls(queued, name)) == ids
    assert seen["max_in_flight"] == CONCURRENCY
    assert wakes_of(queued, name) == wakes + 1
    print(f"\nburst of 1,000 async calls to a function at zero: accepted in {accepted:.1f}s, "
          f"max in flight {seen['max_in_flight']}, 1 wake")  # fmt: skip


def wakes_of(stack: Stack, name: str) -> float:
    text = requests.get(f"{stack.direct}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'faas_wakes_total{{function="{name}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("victim", ["gateway", "nats"])
def test_calls_survive_a_sigkill(victim: str, engine: docker.DockerClient, tmp_path: Path) -> None:
    with running_stack(
        engine,
        tmp_path,
        FAAS_ASYNC_BACKOFF="0.1",
        FAAS_ASYNC_ACK_WAIT="4",  # a loaded host may delay the in-progress beats
        FAAS_ASYNC_CONCURRENCY="10",
    ) as own:
        name = deploy_counter(own, f"kill-{victim}", min_scale=1)
        session = requests.Session()
        with ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(lambda _: enqueue(own, name, "?sleep=0.02", session), range(500)))
        wait_for(lambda: len(made_calls(own, name)) >= 100, 60, "100 calls made")
        killed = time.time()
        os.kill(children(own)[victim], signal.SIGKILL)
        wait_for(lambda: done_after_kill(own, name, ids), 120, "all 500 calls made")
        seen = stats(own, name)
        made, first = seen["calls"], seen["first"]
        assert isinstance(made, dict)
        assert isinstance(first, dict)
        assert set(made) == ids  # none lost
        twice = {call for call, n in made.items() if n > 1}
        assert all(made[call] == 2 for call in twice), made
        # Only calls in flight at the kill are made again: a worker holds at most 10
        # plus the few being acknowledged. In flight means delivered by NATS and not
        # acknowledged, which includes calls fetched just before the kill and made
        # just after it (by a worker whose acknowledgement then fails, or by the
        # restarted gateway while NATS redelivers them after the ack wait).
        assert all(call in first for call in twice), (killed, twice)
        assert len(twice) <= 20, twice
        print(f"\n{victim} SIGKILLed with 500 calls queued: all made, {len(twice)} made twice")


def made_calls(stack: Stack, name: str) -> dict[str, int]:
    made = stats(stack, name)["calls"]
    assert isinstance(made, dict)
    return made


def done_after_kill(stack: Stack, name: str, ids: set[str]) -> bool:
    try:
        return done(stack, name, ids)
    except (requests.RequestException, AssertionError, ValueError):
        return False  # the gateway is restarting
