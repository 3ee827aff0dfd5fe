"""The function runtime over real HTTP on 127.0.0.1, with tiny handler modules in tmp_path.

Most tests run the server in-process; the signal and start-up tests run it as a process
with `python -S` (no site-packages) to prove it needs nothing but the standard library.
"""

import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

import faas
from faas import runtime
from faas.runtime.messages import BadRequest, Headers, Request
from faas.runtime.server import (
    ConfigError,
    HandlerNotLoaded,
    Settings,
    create_server,
    load_handler,
    serving,
)

REPO = Path(faas.__file__).parent.parent


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    """Send bytes as they are; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return _read_until(sock, lambda received: False)


def _read_until(sock: socket.socket, enough: Callable[[bytes], bool]) -> bytes:
    received = b""
    while not enough(received) and (chunk := sock.recv(65536)):
        received += chunk
    return received


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Start(Protocol):
    def __call__(
        self, source: str, *, timeout: float = ..., max_body: int = ..., debug: bool = ...
    ) -> int: ...


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    """Start a server for a handler module's source; the port. Stopped after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the runtime prepends the app dir
    with contextlib.ExitStack() as stack:

        def start(
            source: str, *, timeout: float = 5.0, max_body: int = 1 << 20, debug: bool = False
        ) -> int:
            name = f"handler_{uuid.uuid4().hex}"
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
            stack.callback(sys.modules.pop, name, None)
            settings = Settings(
                handler=f"{name}:handle",
                app_dir=tmp_path,
                host="127.0.0.1",
                port=0,
                timeout=timeout,
                max_body=max_body,
                debug=debug,
            )
            return stack.enter_context(serving(create_server(settings))).port

        yield start


ECHO = """
    def handle(request):
        return {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "one": request.headers.get("X-ONE"),
            "all": request.headers.get_all("x-rep"),
            "body": request.body.decode(),
        }
"""


# --- what a handler returns ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("returned", "content_type", "body"),
    [
        ('"héllo"', "text/plain; charset=utf-8", "héllo".encode()),
        ('b"\\x00\\x01"', "application/octet-stream", b"\x00\x01"),
        ('{"a": [1, "é"]}', "application/json", '{"a": [1, "é"]}'.encode()),
        ("[1, 2]", "application/json", b"[1, 2]"),
    ],
)
def test_plain_returns_are_200_with_a_content_type(
    serve: Start, returned: str, content_type: str, body: bytes
) -> None:
    port = serve(f"def handle(request):\n    return {returned}\n")
    answer = call(port)
    assert (answer.status, answer.headers["Content-Type"], answer.body) == (200, content_type, body)
    assert answer.headers["Content-Length"] == str(len(body))


def test_none_is_204_without_body(serve: Start) -> None:
    answer = call(serve("def handle(request):\n    return None\n"))
    assert (answer.status, answer.body) == (204, b"")
    assert "Content-Length" not in answer.headers


def test_response_sets_status_and_headers(serve: Start) -> None:
    port = serve("""
        from faas_runtime import Response

        def handle(request):
            if request.path == "/created":
                cookies = ["a=1", "b=2"]
                return Response({"id": 7}, 201, headers={"Location": "/7", "Set-Cookie": cookies})
            return Response("<p>hi</p>", headers={"Content-Type": "text/html"})
    """)
    created = call(port, "POST", "/created")
    assert (created.status, created.json()) == (201, {"id": 7})
    assert created.headers["Location"] == "/7"
    assert created.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert created.headers["Content-Type"] == "application/json"
    html = call(port)
    assert (html.headers["Content-Type"], html.body) == ("text/html", b"<p>hi</p>")


@pytest.mark.parametrize(
    "returned",
    ["42", 'Response("x", status=99)', 'Response("x", headers={"X-Bad": "a\\r\\nInjected: 1"})'],
)
def test_what_cannot_be_sent_is_a_500(serve: Start, returned: str) -> None:
    port = serve(f"from faas_runtime import *\ndef handle(request):\n    return {returned}\n")
    answer = call(port)
    assert (answer.status, answer.json()) == (500, {"error": "internal error"})
    assert "Injected" not in answer.headers


def test_head_sends_headers_only(serve: Start) -> None:
    port = serve("def handle(request):\n    return 'x' * 10\n")
    answer = call(port, "HEAD")
    assert (answer.status, answer.headers["Content-Length"], answer.body) == (200, "10", b"")


# --- what a handler sees ----------------------------------------------------------------


def test_request_has_method_path_query_headers_and_body(serve: Start) -> None:
    port = serve(ECHO)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("PUT", "/a/b%20c?x=1&x=2&empty=")
        conn.putheader("x-One", "1")
        conn.putheader("X-Rep", "a")
        conn.putheader("X-Rep", "b")
        conn.putheader("Content-Length", "4")
        conn.endheaders(b"data")
        answer = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert answer == {
        "method": "PUT",
        "path": "/a/b c",
        "query": {"x": ["1", "2"], "empty": [""]},
        "one": "1",
        "all": ["a", "b"],
        "body": "data",
    }


def test_json_body(serve: Start) -> None:
    port = serve("def handle(request):\n    return {'got': request.json()}\n")
    assert call(port, "POST", body=b'{"n": [1]}').json() == {"got": {"n": [1]}}
    invalid = call(port, "POST", body=b"{nope")
    assert invalid.status == 400
    assert invalid.json()["error"] == "bad request"
    assert "not valid JSON" in invalid.json()["detail"]


def test_bad_request_raised_by_the_handler_is_a_400(serve: Start) -> None:
    port = serve("""
        from faas_runtime import BadRequest

        def handle(request):
            raise BadRequest("name is required")
    """)
    answer = call(port)
    assert (answer.status, answer.json()) == (
        400,
        {"error": "bad request", "detail": "name is required"},
    )


def test_chunked_body_reaches_the_handler(serve: Start) -> None:
    port = serve("def handle(request):\n    return request.body\n")
    answer = call(port, "POST", body=iter([b"abc", b"", b"defg"]))
    assert (answer.status, answer.body) == (200, b"abcdefg")


def test_keep_alive_serves_several_requests_on_one_connection(serve: Start) -> None:
    port = serve("def handle(request):\n    return request.path\n")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/one")
        assert conn.getresponse().read() == b"/one"
        first = conn.sock
        conn.request("GET", "/two")
        assert conn.getresponse().read() == b"/two"
        assert conn.sock is first
    finally:
        conn.close()


def test_async_handler(serve: Start) -> None:
    port = serve("""
        import asyncio

        async def handle(request):
            await asyncio.sleep(0)
            return {"path": request.path}
    """)
    assert call(port, path="/x").json() == {"path": "/x"}


@pytest.mark.parametrize(
    "source",
    [
        "import time\ndef handle(request):\n    time.sleep(0.3)\n",
        "import asyncio\nasync def handle(request):\n    await asyncio.sleep(0.3)\n",
    ],
    ids=["sync", "async"],
)
def test_requests_run_concurrently(serve: Start, source: str) -> None:
    port = serve(source)
    started = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        statuses = list(pool.map(lambda _: call(port).status, range(5)))
    assert statuses == [204] * 5
    assert time.monotonic() - started < 1.0  # one after the other would take 1.5 s


# --- failures -----------------------------------------------------------------------------

FAILING = "def handle(request):\n    raise ValueError('secret detail')\n"


def test_handler_exception_is_a_500_that_does_not_leak(
    serve: Start, caplog: pytest.LogCaptureFixture
) -> None:
    answer = call(serve(FAILING), path="/boom")
    assert (answer.status, answer.json()) == (500, {"error": "internal error"})
    assert b"secret" not in answer.body
    assert "secret detail" in caplog.text  # the traceback is logged
    assert "Traceback" in caplog.text


def test_debug_returns_the_exception(serve: Start) -> None:
    answer = call(serve(FAILING, debug=True))
    assert answer.status == 500
    assert answer.json()["detail"] == "ValueError: secret detail"
    assert "Traceback" in answer.json()["traceback"]


def test_sync_timeout_is_a_504(serve: Start) -> None:
    port = serve("import time\ndef handle(request):\n    time.sleep(3)\n", timeout=0.3)
    started = time.monotonic()
    answer = call(port)
    assert (answer.status, answer.json()) == (504, {"error": "timeout"})
    assert time.monotonic() - started < 2


def test_async_timeout_is_a_504_and_cancels_the_handler(serve: Start, tmp_path: Path) -> None:
    marker = tmp_path / "cancelled"
    port = serve(
        f"""
        import asyncio, pathlib

        async def handle(request):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pathlib.Path({str(marker)!r}).touch()
                raise
        """,
        timeout=0.3,
    )
    assert call(port).status == 504
    until(marker.exists)


def test_handler_raising_timeout_error_is_a_500(serve: Start) -> None:
    # Only the runtime's own deadline is a 504; a handler's TimeoutError is its failure.
    answer = call(serve("def handle(request):\n    raise TimeoutError('backend')\n"))
    assert answer.status == 500


# --- limits and framing -------------------------------------------------------------------

BODY_LENGTH = "def handle(request):\n    return len(request.body)\n"


def test_body_over_the_limit_is_a_413(serve: Start) -> None:
    port = serve("def handle(request):\n    return str(len(request.body))\n", max_body=1000)
    assert call(port, "POST", body=b"x" * 1000).body == b"1000"
    answer = call(port, "POST", body=b"x" * 1001)
    assert (answer.status, answer.json()) == (413, {"error": "body too large", "limit": 1000})
    assert answer.headers["Connection"] == "close"


def test_large_upload_over_the_limit_still_reads_the_413(serve: Start) -> None:
    # The server drops what keeps coming instead of resetting the connection under it.
    port = serve("def handle(request):\n    return 'unreachable'\n", max_body=1000)
    assert call(port, "POST", body=b"x" * (4 << 20)).status == 413


def test_chunked_body_over_the_limit_is_a_413(serve: Start) -> None:
    port = serve("def handle(request):\n    return 'unreachable'\n", max_body=1000)
    answer = call(port, "POST", body=iter([b"x" * 600, b"x" * 600]))
    assert answer.status == 413


def test_expect_100_continue_is_refused_before_the_body(serve: Start) -> None:
    port = serve("def handle(request):\n    return request.body\n", max_body=10)
    head = b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head % 11)
        assert _read_until(sock, lambda got: b"\r\n\r\n" in got).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head % 5)
        assert _read_until(sock, lambda got: b"\r\n\r\n" in got) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        assert _read_until(sock, lambda got: got.endswith(b"hello")).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"PROPFIND / HTTP/1.1\r\n\r\n", 501),
    ],
)
def test_bad_framing_is_refused(serve: Start, request_bytes: bytes, status: int) -> None:
    port = serve("def handle(request):\n    return 'unreachable'\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_bytes)
        if request_bytes.endswith(b"short"):
            sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
        answer = _read_until(sock, lambda got: False)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"unreachable" not in answer


# --- the runtime's own endpoints and logs -------------------------------------------------


def test_readiness(serve: Start) -> None:
    port = serve("def handle(request):\n    return 'handler'\n")
    ready = call(port, path="/_/ready")
    assert (ready.status, ready.json()) == (200, {"status": "ready"})
    assert call(port, "HEAD", "/_/ready").status == 200
    assert call(port, "POST", "/_/ready").status == 405
    assert call(port, path="/_/other").status == 404
    assert call(port, path="/ready").body == b"handler"


def test_access_log_line(serve: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="faas.runtime")
    port = serve("def handle(request):\n    return 'ok'\n")
    call(port, "POST", "/some/path?secret=1")
    lines = [r.getMessage() for r in caplog.records if r.name == "faas.runtime.access"]
    assert len(lines) == 1
    assert re.fullmatch(r"POST /some/path 200 \d+\.\dms", lines[0])


# --- settings and loading -----------------------------------------------------------------


def test_settings_defaults() -> None:
    assert Settings.from_env({}) == Settings(
        handler="handler:handle",
        app_dir=Path.cwd(),
        host="0.0.0.0",
        port=8080,
        timeout=30.0,
        max_body=10 * 1024 * 1024,
        debug=False,
    )


def test_settings_from_env() -> None:
    env = {
        "FAAS_HANDLER": "app:main",
        "FAAS_APP_DIR": "/srv/fn",
        "FAAS_HOST": "127.0.0.1",
        "PORT": "9000",
        "FAAS_TIMEOUT": "0.5",
        "FAAS_MAX_BODY": "0",
        "FAAS_DEBUG": "true",
        "FAAS_UNRELATED": "x",
    }
    expected = Settings("app:main", Path("/srv/fn"), "127.0.0.1", 9000, 0.5, 0, True)
    assert Settings.from_env(env) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("FAAS_TIMEOUT", "0"),
        ("FAAS_TIMEOUT", "nan"),
        ("FAAS_MAX_BODY", "-1"),
        ("FAAS_MAX_BODY", "1.5"),
        ("FAAS_DEBUG", "maybe"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert (caught.value.name, caught.value.value) == (name, value)


@pytest.mark.parametrize(
    ("spec", "source", "reason"),
    [
        ("no_colon", "", "expected module:function"),
        ("missing:handle", None, "no module missing"),
        ("missing.sub:handle", None, "no module missing.sub"),
        ("mod:handle", "handle = 3\n", "has no function handle"),
        ("mod:handle", "import not_installed_anywhere\n", "importing mod failed"),
        ("mod:handle", "raise RuntimeError('at import')\n", "importing mod failed"),
    ],
)
def test_handler_that_cannot_be_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, source: str | None, reason: str
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "mod", raising=False)
    if source is not None:
        (tmp_path / "mod.py").write_text(source)
    with pytest.raises(HandlerNotLoaded, match=reason):
        load_handler(spec, tmp_path)
    sys.modules.pop("mod", None)


def test_headers_are_case_insensitive() -> None:
    headers = Headers([("Accept", "a"), ("X-Rep", "1"), ("x-rep", "2")])
    assert headers["accept"] == headers["ACCEPT"] == "a"
    assert headers["X-REP"] == "1, 2"
    assert headers.get_all("x-Rep") == ["1", "2"]
    assert "ACCEPT" in headers
    assert object() not in headers
    assert sorted(headers) == ["accept", "x-rep"]


def test_json_of_a_bad_body_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        Request("POST", "/", body=b"\xff").json()
    assert isinstance(BadRequest("x"), ValueError)


def test_package_exports_the_handler_api() -> None:
    assert runtime.Response is runtime.messages.Response
    assert set(runtime.__all__) == {"BadRequest", "Headers", "Request", "Response"}


# --- as a process -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued just as the listening socket closed
        return False
    return False


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """The package copied the way images carry it: `faas_runtime`, alone."""
    root = tmp_path / "opt"
    source = Path(runtime.__file__).parent
    shutil.copytree(source, root / "faas_runtime", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def runtime_env(app_dir: Path, port: int, **extra: str) -> dict[str, str]:
    base = {"PATH": os.environ["PATH"], "FAAS_APP_DIR": str(app_dir), "FAAS_HOST": "127.0.0.1"}
    return base | {"PORT": str(port)} | extra


def test_sigterm_finishes_the_in_flight_request_then_exits_0(
    tmp_path: Path, image_root: Path
) -> None:
    app, started, release = tmp_path / "app", tmp_path / "started", tmp_path / "release"
    app.mkdir()
    (app / "handler.py").write_text(
        textwrap.dedent(f"""
        import pathlib, time
        from faas_runtime import Response

        def handle(request):
            pathlib.Path({str(started)!r}).touch()
            deadline = time.monotonic() + 10
            while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return Response("done", headers={{"X-Done": "1"}})
        """)
    )
    port = free_port()
    command = [sys.executable, "-S", "-m", "faas_runtime"]
    env = runtime_env(app, port, FAAS_TIMEOUT="10")
    with subprocess.Popen(
        command, cwd=image_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            _check_drain(proc, port, started, release)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert re.search(rb"^GET /slow 200 \d+\.\dms$", out, re.MULTILINE), out
    assert b"SIGTERM: finishing in-flight requests" in err


def _check_drain(proc: subprocess.Popen[bytes], port: int, started: Path, release: Path) -> None:
    until(lambda: proc.poll() is not None or _ready(port))
    assert proc.poll() is None, "the runtime did not start"
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    busy = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        idle.request("GET", "/_/ready")
        assert idle.getresponse().read()  # now an idle keep-alive connection
        busy.request("GET", "/slow")
        until(started.exists)
        proc.send_signal(signal.SIGTERM)
        until(lambda: refused(port))  # no new connections while the request runs
        assert proc.poll() is None
        assert idle.sock is not None
        assert idle.sock.recv(1) == b""  # the idle connection was closed
        release.touch()
        response = busy.getresponse()
        assert (response.status, response.read()) == (200, b"done")
        assert response.headers["Connection"] == "close"
        assert proc.wait(timeout=10) == 0
    finally:
        idle.close()
        busy.close()


def _ready(port: int) -> bool:
    try:
        return call(port, path="/_/ready").status == 200
    except OSError:
        return False


@pytest.mark.parametrize(
    ("env", "source", "status", "message"),
    [
        ({"FAAS_TIMEOUT": "soon"}, "def handle(request): pass\n", 2, "FAAS_TIMEOUT='soon'"),
        ({}, "raise RuntimeError('broken at import')\n", 1, "broken at import"),
        ({"FAAS_HANDLER": "handler:nope"}, "def handle(r): pass\n", 1, "no function nope"),
    ],
)
def test_checkout_layout_fails_to_start_with_a_reason(
    tmp_path: Path, env: dict[str, str], source: str, status: int, message: str
) -> None:
    (tmp_path / "handler.py").write_text(source)
    done = subprocess.run(
        [sys.executable, "-S", "-m", "faas.runtime"],
        cwd=REPO,
        env=runtime_env(tmp_path, free_port(), **env),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == status, done.stderr
    assert message in done.stderr.decode()
