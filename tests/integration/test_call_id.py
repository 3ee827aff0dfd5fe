"""X-Call-Id on both paths: Traefik's callid plugin (warm) and the gateway (cold).

Each check asks the same three things: the caller gets exactly one id, the
function received that same id, and it is the caller's own when sane, else a
new one of 32 hex digits.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from .conftest import ECHO_IMAGE, Stack, fn_name, image_from, running_stack

pytestmark = pytest.mark.integration

NEW_ID = re.compile(r"[0-9a-f]{32}")
SANE = ["abc-123", "A.b_C-9", "a" * 128]
INSANE = ["", "has space", "semi;colon", "slash/es", "a" * 129, "caf\u00e9", "x\ty"]


@pytest.fixture(scope="module")
def warm(stack: Stack) -> Iterator[str]:
    """A function that stays up: its requests take its own Traefik router."""
    with stack.deployed("cid", min_scale=1) as name:
        yield name


@pytest.fixture(scope="module")
def cold(stack: Stack) -> Iterator[str]:
    with stack.deployed("cidc") as name:
        yield name


def the_id(got: requests.Response) -> str:
    """The one X-Call-Id of the response, which the function also received."""
    assert got.status_code == 200, got.text
    (sent_back,) = got.raw.headers.getlist("X-Call-Id")
    assert got.json()["headers"]["x-call-id"] == sent_back
    return str(sent_back)


def call(stack: Stack, name: str, given: str | None) -> requests.Response:
    return stack.invoke(name, headers={} if given is None else {"X-Call-Id": given})


def cold_call(stack: Stack, name: str, given: str | None) -> requests.Response:
    assert stack.api("POST", f"/functions/{name}/scale", json={"replicas": 0}).ok
    got = call(stack, name, given)
    assert "wake;dur=" in got.headers.get("Server-Timing", ""), "not a cold request"
    return got


# -- warm path: Traefik -> container, no Python ------------------------------


def test_warm_request_gets_a_new_id(stack: Stack, warm: str) -> None:
    first, second = the_id(call(stack, warm, None)), the_id(call(stack, warm, None))
    assert NEW_ID.fullmatch(first)
    assert NEW_ID.fullmatch(second)
    assert first != second


@pytest.mark.parametrize("given", SANE)
def test_warm_request_keeps_a_sane_id(stack: Stack, warm: str, given: str) -> None:
    assert the_id(call(stack, warm, given)) == given


@pytest.mark.parametrize("given", INSANE)
def test_warm_request_replaces_an_insane_id(stack: Stack, warm: str, given: str) -> None:
    assert NEW_ID.fullmatch(the_id(call(stack, warm, given)))


def test_warm_request_with_two_ids_keeps_only_the_first(stack: Stack, warm: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=10)
    try:
        conn.putrequest("GET", f"/function/{warm}/")
        conn.putheader("X-Call-Id", "first")
        conn.putheader("X-Call-Id", "second")
        conn.endheaders()
        got = conn.getresponse()
        body = json.loads(got.read())
    finally:
        conn.close()
    assert got.status == 200
    assert got.headers.get_all("X-Call-Id") == ["first"]
    # The echo function keeps the last of repeated headers: there was one.
    assert body["headers"]["x-call-id"] == "first"


def test_warm_streams_still_flush(stack: Stack, warm: str) -> None:
    """The plugin wraps the response; each chunk must still reach the caller as
    the function sends it (one every 0.25 s), not all at the end."""
    with stack.invoke(warm, "/?stream=4", stream=True, headers={"X-Call-Id": "s1"}) as got:
        assert got.headers["X-Call-Id"] == "s1"
        lines = got.iter_lines()
        assert next(lines) == b"chunk 0"
        first = time.monotonic()
        assert list(lines) == [b"chunk 1", b"chunk 2", b"chunk 3"]
        assert time.monotonic() - first > 0.5


# -- cold path: Traefik -> gateway (wakes the function) -> container ---------


def test_warm_head_and_error_answers_carry_the_id(stack: Stack, warm: str) -> None:
    """The plugin sets the id on answers without a body and on the function's errors,
    and leaves their length alone."""
    head = stack.invoke(warm, "/h", method="HEAD", headers={"X-Call-Id": "head-1"})
    assert head.status_code == 200
    assert head.headers["X-Call-Id"] == "head-1"
    assert int(head.headers["Content-Length"]) > 0
    assert head.content == b""
    failed = stack.invoke(warm, "/e", headers={"X-Echo-Status": "503"})
    assert failed.status_code == 503
    assert NEW_ID.fullmatch(failed.headers["X-Call-Id"])
    assert failed.json()["headers"]["x-call-id"] == failed.headers["X-Call-Id"]
    assert "chunked" not in failed.headers.get("Transfer-Encoding", "")


def test_cold_request_gets_a_new_id(stack: Stack, cold: str) -> None:
    assert NEW_ID.fullmatch(the_id(cold_call(stack, cold, None)))


@pytest.mark.parametrize("given", ["abc-123", "a" * 128])
def test_cold_request_keeps_a_sane_id(stack: Stack, cold: str, given: str) -> None:
    assert the_id(cold_call(stack, cold, given)) == given


@pytest.mark.parametrize("given", ["has space", "a" * 129])
def test_cold_request_replaces_an_insane_id(stack: Stack, cold: str, given: str) -> None:
    assert NEW_ID.fullmatch(the_id(cold_call(stack, cold, given)))


def test_the_gateway_alone_applies_the_same_rule(stack: Stack, warm: str) -> None:
    """Straight to the gateway's port, without Traefik: it checks the id itself."""

    def direct(given: str) -> requests.Response:
        url = f"{stack.direct}/function/{warm}/"
        return requests.get(url, headers={"X-Call-Id": given}, timeout=30)

    assert the_id(direct("abc-123")) == "abc-123"
    assert NEW_ID.fullmatch(the_id(direct("a" * 129)))


def test_an_unknown_function_answers_with_an_id(stack: Stack) -> None:
    got = stack.invoke(fn_name("nobody"), headers={"X-Call-Id": "lost-1"})
    assert got.status_code == 404
    assert got.raw.headers.getlist("X-Call-Id") == ["lost-1"]


def test_traefik_refusals_answer_with_an_id(stack: Stack) -> None:
    """A key function called without a key: Traefik's forwardAuth answers 401,
    behind the entrypoint's middleware."""
    name = fn_name("cidk")
    assert stack.deploy(name, auth="key", min_scale=1).status_code == 200
    try:
        got = stack.invoke(name, headers={"X-Call-Id": "no-key-1"})
        assert got.status_code == 401
        assert got.raw.headers.getlist("X-Call-Id") == ["no-key-1"]
    finally:
        stack.api("DELETE", f"/functions/{name}")


def test_traefik_access_log_records_the_id(engine: docker.DockerClient, tmp_path: Path) -> None:
    """FAAS_ACCESS_LOG: a JSON line per request, with the id the function got."""
    with running_stack(engine, tmp_path, FAAS_ACCESS_LOG="true") as stack:
        assert stack.process is not None
        assert stack.process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        out = stack.process.stdout

        def follow() -> None:
            for line in out:
                lines.put(line)

        threading.Thread(target=follow, daemon=True).start()
        name = fn_name("alog")
        assert stack.deploy(name, min_scale=1).status_code == 200
        made = the_id(stack.invoke(name, "/logged"))
        kept = the_id(stack.invoke(name, "/logged", headers={"X-Call-Id": "order-42"}))
        assert kept == "order-42"
        seen: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 10
        while {made, kept} - seen.keys():
            assert time.monotonic() < deadline, seen
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                if line.startswith("{") and '"request_X-Call-Id"' in line:
                    entry = json.loads(line)
                    seen[str(entry["request_X-Call-Id"])] = entry
        for call_id in (made, kept):
            entry = seen[call_id]
            assert entry["RequestPath"] == f"/function/{name}/logged"
            assert entry["DownstreamStatus"] == 200
            assert entry["ServiceName"] == f"fn-{name}@docker"
            assert entry["downstream_X-Call-Id"] == call_id


UPGRADER = """
import socketserver


class Upgrade(socketserver.StreamRequestHandler):
    # Plain HTTP for the readiness probe; an upgrade answers 101 saying which
    # X-Call-Id it got, then echoes raw bytes, as a WebSocket server would frames.
    def handle(self):
        lines = []
        while (line := self.rfile.readline()) not in (b"", b"\\r\\n"):
            lines.append(line.decode())
        headers = dict(
            (k.strip().lower(), v.strip()) for k, v in (x.split(":", 1) for x in lines[1:])
        )
        if headers.get("upgrade", "").lower() != "websocket":
            self.wfile.write(
                b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n"
                b"Connection: close\\r\\n\\r\\nok"
            )
            return
        seen = headers.get("x-call-id", "")
        self.wfile.write(
            b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n"
            b"Connection: Upgrade\\r\\nX-Seen-Call-Id: " + seen.encode() + b"\\r\\n\\r\\n"
        )
        self.wfile.flush()
        while data := self.request.recv(1024):
            self.request.sendall(data)


socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer(("", 8080), Upgrade).serve_forever()
"""


def test_an_upgraded_connection_carries_the_id(stack: Stack, engine: docker.DockerClient) -> None:
    """WebSocket-style upgrades pass the middleware: the function gets an id, and
    the tunnel then carries bytes both ways."""
    dockerfile = f"FROM {ECHO_IMAGE}\nCMD {json.dumps(['python3', '-c', UPGRADER])}\n"
    with (
        image_from(engine, "upgrade", dockerfile) as image,
        stack.deployed("ws", image=image, min_scale=1) as name,
        socket.create_connection(("127.0.0.1", stack.http_port), timeout=10) as conn,
    ):
        conn.sendall(
            f"GET /function/{name}/socket HTTP/1.1\r\nHost: faas\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(1024)
            assert chunk, head
            head += chunk
        status, *lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        assert status.startswith("HTTP/1.1 101"), head
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        assert NEW_ID.fullmatch(headers["x-seen-call-id"]), head
        # Traefik's retry middleware (every function's router has one) writes
        # the 101 from a header map of its own, which holds the function's
        # headers only: the function may send the id back itself.
        assert headers.get("x-call-id", headers["x-seen-call-id"]) == headers["x-seen-call-id"]
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"
