"""The HTTP server around a user's handler: settings, loading, invoking, draining.

Standard library only (it runs in function images as it is). One thread per connection;
each call of a sync handler gets its own thread so the connection can answer 504 when
it overruns. Errors raised before the server listens:

    StartupError                      exit status 1
     ├── ConfigError(name, value, expected)   a bad PORT / FAAS_* setting (exit status 2)
     └── HandlerNotLoaded(spec, reason)       FAAS_HANDLER cannot be imported
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import io
import logging
import math
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from .messages import BadRequest, Headers, Reply, Request, encode, json_reply

READY_PATH = "/_/ready"
RUNTIME_PREFIX = "/_/"  # reserved for the runtime; never reaches the handler
ACCESS_LOGGER = "faas.runtime.access"

# Longer than Traefik's 90 s idle timeout towards backends: the proxy closes an idle
# keep-alive connection first, so it never sends a request into one we are closing.
IDLE_TIMEOUT = 120.0
# How long a stop waits for the accept loop to notice (serve_forever's select timeout).
_POLL_INTERVAL = 0.1
# Beyond the handler timeout, what a finishing request gets to write its response.
_WRITE_GRACE = 1.0
# After refusing a body, how long we keep reading (and dropping) what is still coming.
_LINGER = 2.0
_MAX_LINE = 8192
_MAX_TRAILERS = 64
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

_log = logging.getLogger("faas.runtime")
_access = logging.getLogger(ACCESS_LOGGER)
_T = TypeVar("_T")


class StartupError(Exception):
    """The runtime cannot start serving."""


class ConfigError(StartupError):
    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r}: expected {expected}")
        self.name, self.value, self.expected = name, value, expected


class HandlerNotLoaded(StartupError):
    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(f"cannot load handler {spec!r}: {reason}")
        self.spec, self.reason = spec, reason


# --- settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    handler: str = "handler:handle"
    app_dir: Path = field(default_factory=Path.cwd)
    host: str = "0.0.0.0"
    port: int = 8080
    timeout: float = 30.0
    max_body: int = 10 * 1024 * 1024
    debug: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read the settings; an empty variable counts as unset."""
        default = cls()
        return cls(
            handler=env.get("FAAS_HANDLER") or default.handler,
            app_dir=Path(env.get("FAAS_APP_DIR") or default.app_dir),
            host=env.get("FAAS_HOST") or default.host,
            port=_setting(env, "PORT", default.port, int, _is_port, "a port number"),
            timeout=_setting(env, "FAAS_TIMEOUT", default.timeout, float, _positive, "seconds > 0"),
            max_body=_setting(env, "FAAS_MAX_BODY", default.max_body, int, _natural, "bytes >= 0"),
            debug=_setting(env, "FAAS_DEBUG", default.debug, _flag, _any, "1 or 0"),
        )


def _setting(
    env: Mapping[str, str],
    name: str,
    default: _T,
    parse: Callable[[str], _T],
    valid: Callable[[_T], bool],
    expected: str,
) -> _T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(name, raw, expected) from None
    if not valid(value):
        raise ConfigError(name, raw, expected)
    return value


def _flag(raw: str) -> bool:
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(raw)


def _is_port(port: int) -> bool:
    return 0 <= port <= 65535


def _positive(seconds: float) -> bool:
    return math.isfinite(seconds) and seconds > 0


def _natural(count: int) -> bool:
    return count >= 0


def _any(_: object) -> bool:
    return True


# --- loading and invoking the handler ------------------------------------------------

Handler = Callable[[Request], object]
AsyncHandler = Callable[[Request], Coroutine[Any, Any, object]]


def load_handler(spec: str, app_dir: Path) -> Handler:
    """Import `module:function` with `app_dir` first on the import path."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise HandlerNotLoaded(spec, "expected module:function")
    _alias_package()
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    importlib.invalidate_caches()  # the app dir may have changed since the last import
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_part_of(exc.name, module_name):  # the handler's own import failed
            raise HandlerNotLoaded(spec, f"importing {module_name} failed") from exc
        raise HandlerNotLoaded(spec, f"no module {module_name} in {app_dir}") from None
    except Exception as exc:
        raise HandlerNotLoaded(spec, f"importing {module_name} failed") from exc
    handler: object = getattr(module, attribute, None)
    if not callable(handler):
        raise HandlerNotLoaded(spec, f"{module_name} has no function {attribute}")
    return handler


def _is_part_of(name: str | None, dotted: str) -> bool:
    """Whether `name` is `dotted` or one of its parent packages."""
    return name is not None and f"{dotted}.".startswith(f"{name}.")


def _alias_package() -> None:
    # Handlers import `faas_runtime`, whichever name this package runs under
    # (`faas.runtime` from a checkout, `faas_runtime` in an image), and must get the
    # very modules the server uses, or `isinstance(result, Response)` would fail.
    package = __package__ or "faas_runtime"
    for name, module in list(sys.modules.items()):
        if _is_part_of(package, name):
            sys.modules.setdefault("faas_runtime" + name[len(package) :], module)


class Invoker(Protocol):
    def start(self, request: Request) -> Future[object]: ...

    def close(self) -> None: ...


class ThreadInvoker:
    """Runs a sync handler on a fresh daemon thread per call.

    Python cannot stop a thread: after a timeout the call runs on unobserved, and being a
    daemon it cannot hold the process open at exit.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def start(self, request: Request) -> Future[object]:
        future: Future[object] = Future()
        thread = threading.Thread(
            target=self._run, args=(future, request), name="faas-handler", daemon=True
        )
        thread.start()
        return future

    def _run(self, future: Future[object], request: Request) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(self._handler(request))
        except BaseException as exc:  # a handler's sys.exit() is a failed call too
            future.set_exception(exc)

    def close(self) -> None:
        pass


class LoopInvoker:
    """Runs an async handler on one event loop that lives on its own thread.

    One shared loop rather than asyncio.run() per call: handlers can keep loop-bound
    clients (connection pools) across calls, a timed-out call is cancelled as a task,
    and no call pays for a new loop. The price: a handler that blocks (time.sleep)
    stalls every async call in flight.
    """

    def __init__(self, handler: AsyncHandler) -> None:
        self._handler = handler
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="faas-event-loop", daemon=True)
        self._thread.start()

    def start(self, request: Request) -> Future[object]:
        return asyncio.run_coroutine_threadsafe(self._handler(request), self._loop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(_cancel_tasks())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_WRITE_GRACE)


async def _cancel_tasks() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Timeout(Exception):
    pass


@dataclass
class App:
    """A request in, a reply out: the handler call with its timeout and error mapping."""

    invoker: Invoker
    timeout: float
    debug: bool = False

    def respond(self, request: Request) -> Reply:
        try:
            return encode(self._call(request))
        except _Timeout:
            _log.warning("timed out after %gs: %s %s", self.timeout, request.method, request.path)
            return json_reply(504, {"error": "timeout"})
        except BadRequest as exc:
            return json_reply(400, {"error": "bad request", "detail": str(exc)})
        except BaseException as exc:  # whatever the handler raised is a 500
            return self._failed(request, exc)

    def _call(self, request: Request) -> object:
        future = self.invoker.start(request)
        done, _ = wait((future,), self.timeout)
        if not done:
            future.cancel()  # cancels an async handler's task; a thread runs on
            raise _Timeout
        return future.result()

    def _failed(self, request: Request, exc: BaseException) -> Reply:
        _log.error("handler failed: %s %s", request.method, request.path, exc_info=exc)
        if not self.debug:
            return json_reply(500, {"error": "internal error"})
        detail = "".join(traceback.format_exception_only(exc)).strip()
        trace = "".join(traceback.format_exception(exc))
        return json_reply(500, {"error": "internal error", "detail": detail, "traceback": trace})

    def close(self) -> None:
        self.invoker.close()


def load_app(settings: Settings) -> App:
    handler = load_handler(settings.handler, settings.app_dir)
    if inspect.iscoroutinefunction(handler):
        return App(LoopInvoker(handler), settings.timeout, settings.debug)
    return App(ThreadInvoker(handler), settings.timeout, settings.debug)


# --- request bodies --------------------------------------------------------------------


class _Refused(Exception):
    """The request is answered before its handler runs; the connection then closes."""

    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.reply = json_reply(status, {"error": message, **extra}, close=True)


def _body_length(headers: Message, limit: int) -> int | None:
    """The Content-Length within `limit`, or None for a chunked body."""
    coding = headers.get("Transfer-Encoding")
    lengths = set(headers.get_all("Content-Length") or [])
    if coding is not None:
        if coding.strip().lower() != "chunked":
            raise _Refused(501, "only the chunked transfer-encoding is supported")
        if lengths:  # two framings: a smuggling attempt or a broken client
            raise _Refused(400, "both Content-Length and Transfer-Encoding")
        return None
    if not lengths:
        return 0
    value = lengths.pop().strip()
    if lengths or not _DIGITS.fullmatch(value):
        raise _Refused(400, "invalid Content-Length")
    if int(value) > limit:
        raise _Refused(413, "body too large", limit=limit)
    return int(value)


def _read_body(headers: Message, rfile: io.BufferedIOBase, limit: int) -> bytes:
    length = _body_length(headers, limit)
    if length is None:
        return _read_chunked(rfile, limit)
    return _read_exactly(rfile, length)


def _read_exactly(rfile: io.BufferedIOBase, size: int) -> bytes:
    data = rfile.read(size) if size else b""
    if len(data) != size:
        raise _Refused(400, "incomplete body")
    return data


def _read_chunked(rfile: io.BufferedIOBase, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while size := _chunk_size(rfile):
        total += size
        if total > limit:
            raise _Refused(413, "body too large", limit=limit)
        parts.append(_read_exactly(rfile, size))
        if rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
            raise _Refused(400, "malformed chunked body")
    _skip_trailers(rfile)
    return b"".join(parts)


def _chunk_size(rfile: io.BufferedIOBase) -> int:
    line = rfile.readline(_MAX_LINE)
    size = line.split(b";", 1)[0].strip()
    if not line.endswith(b"\n") or not _HEX.fullmatch(size):
        raise _Refused(400, "malformed chunked body")
    return int(size, 16)


def _skip_trailers(rfile: io.BufferedIOBase) -> None:
    for _ in range(_MAX_TRAILERS):
        line = rfile.readline(_MAX_LINE)
        if line in (b"\r\n", b"\n"):
            return
        if not line.endswith(b"\n"):
            break
    raise _Refused(400, "malformed chunked trailer")


def _linger(conn: socket.socket) -> None:
    """Read and drop what a client still sends after a refused body, for a moment.

    Closing a socket with unread input makes the kernel send a reset, and a client that
    is still uploading can then lose the response (413) before reading it.
    """
    deadline = time.monotonic() + _LINGER
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not conn.recv(65536):
                return


def _runtime_reply(method: str, path: str, draining: bool) -> Reply:
    if path != READY_PATH:
        return json_reply(404, {"error": "not found"})
    if method not in ("GET", "HEAD"):
        return Reply(405, [("Allow", "GET, HEAD")], b"")
    if draining:
        return json_reply(503, {"status": "draining"})
    return json_reply(200, {"status": "ready"})


# --- connections -----------------------------------------------------------------------


class _Connections:
    """How many connections are open, and which wait idle for their next request.

    Draining shuts the read side of idle ones: a blocked readline returns EOF, and bytes
    that already arrived are still read and served. Busy ones finish their request and
    answer with `Connection: close`.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open = 0
        self._idle: set[socket.socket] = set()
        self.draining = False

    def accepted(self) -> None:
        with self._changed:
            self._open += 1

    def released(self) -> None:
        with self._changed:
            self._open -= 1
            self._changed.notify_all()

    def mark_idle(self, conn: socket.socket) -> None:
        with self._changed:
            if self.draining:
                _shut_read(conn)
            else:
                self._idle.add(conn)

    def unmark_idle(self, conn: socket.socket) -> None:
        with self._changed:
            self._idle.discard(conn)

    def drain(self, grace: float) -> bool:
        """Close idle connections, wait up to `grace` for the rest; False if some remain."""
        with self._changed:
            self.draining = True
            for conn in self._idle:
                _shut_read(conn)
            return self._changed.wait_for(lambda: self._open == 0, grace)


def _shut_read(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the client may have closed it already
        conn.shutdown(socket.SHUT_RD)


class _Connection(BaseHTTPRequestHandler):
    server: FunctionServer
    protocol_version = "HTTP/1.1"  # keep-alive
    # Without TCP_NODELAY keep-alive clients wait ~40 ms for a delayed ACK per response.
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    _started = 0.0
    _linger = False

    def setup(self) -> None:
        super().setup()
        self.server.connections.mark_idle(self.connection)

    def handle_one_request(self) -> None:
        self._started, self.path = 0.0, "-"
        super().handle_one_request()
        if not self.close_connection:
            self.server.connections.mark_idle(self.connection)

    def parse_request(self) -> bool:
        self._started = time.perf_counter()
        self.server.connections.unmark_idle(self.connection)
        return super().parse_request()

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client sends it.
        try:
            _body_length(self.headers, self.server.settings.max_body)
        except _Refused as refused:
            self._send(refused.reply)
            return False
        return super().handle_expect_100()

    def _dispatch(self) -> None:
        self._send(self._reply())

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def _reply(self) -> Reply:
        try:
            body = _read_body(self.headers, self.rfile, self.server.settings.max_body)
        except _Refused as refused:
            self._linger = True
            return refused.reply
        url = urlsplit(self.path)
        if url.path.startswith(RUNTIME_PREFIX):
            return _runtime_reply(self.command, url.path, self.server.connections.draining)
        request = Request(
            method=self.command,
            path=unquote(url.path),
            query=parse_qs(url.query, keep_blank_values=True),
            headers=Headers(self.headers.items()),
            body=body,
        )
        return self.server.app.respond(request)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.status not in (204, 304):  # neither has a body to measure
            self.send_header("Content-Length", str(len(reply.body)))
        if reply.close or self.server.connections.draining:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The parser's errors (bad request line, unknown method...) in JSON like ours.
        reason = message or self.responses.get(code, ("error",))[0]
        self._send(json_reply(code, {"error": reason}, close=True))

    def finish(self) -> None:
        super().finish()
        if self._linger:
            _linger(self.connection)

    def version_string(self) -> str:
        return "faas-runtime"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        elapsed = (time.perf_counter() - self._started) * 1000 if self._started else 0.0
        path = urlsplit(self.path).path or "-"
        _access.info("%s %s %s %.1fms", self.command or "-", path, code, elapsed)

    def log_message(self, format: str, *args: object) -> None:
        _log.info("%s: %s", self.address_string(), format % args)


class FunctionServer(ThreadingHTTPServer):
    # A handler stuck past the drain grace must not keep the process alive.
    daemon_threads = True
    # server_close() would join every connection thread without a bound; drain() bounds it.
    block_on_close = False
    # A short listen backlog drops SYNs under bursts, and clients retry only after 1 s.
    request_queue_size = 128

    def __init__(self, settings: Settings, app: App) -> None:
        self.settings = settings
        self.app = app
        self.connections = _Connections()
        super().__init__((settings.host, settings.port), _Connection)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (socket.getfqdn), which can hang
        # for seconds where DNS is missing; nothing here uses the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.port

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted before its thread starts, so a drain right after cannot miss it.
        self.connections.accepted()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.released()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.unmark_idle(request)
            self.connections.released()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            _log.info("%s went away: %s", client_address, exc)
        else:
            _log.error("error serving %s", client_address, exc_info=exc)


def create_server(settings: Settings) -> FunctionServer:
    """Import the handler, then listen: until it is importable, connections are refused."""
    app = load_app(settings)
    try:
        return FunctionServer(settings, app)
    except OSError as exc:
        app.close()
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc


@contextlib.contextmanager
def serving(server: FunctionServer) -> Iterator[FunctionServer]:
    """Serve on a thread; on exit stop accepting, drain, and release everything."""
    thread = threading.Thread(
        target=server.serve_forever, args=(_POLL_INTERVAL,), name="faas-accept"
    )
    thread.start()
    try:
        yield server
    finally:
        _stop(server, thread)


def _stop(server: FunctionServer, thread: threading.Thread) -> None:
    # shutdown() waits for serve_forever() to return: never call it on that thread.
    server.shutdown()
    server.server_close()  # refuse new connections now rather than queue them
    grace = server.settings.timeout + _WRITE_GRACE
    if not server.connections.drain(grace):
        _log.warning("requests still running %gs after the stop; exiting anyway", grace)
    server.app.close()
    thread.join()


# --- the process ----------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopSignals:
    """SIGTERM and SIGINT as bytes on a pipe, for the main thread to wait on.

    The kernel may deliver a signal to any thread, and a Python handler runs only when
    the main thread executes bytecode again, never while it blocks in read(). The wakeup
    fd is written by the C-level handler whichever thread caught the signal; the Python
    handlers only replace the default actions (die, KeyboardInterrupt). After the first
    stop signal the previous handlers are back, so a second one acts at once.
    """

    def __enter__(self) -> _StopSignals:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # set_wakeup_fd requires it
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, _noted) for sig in STOP_SIGNALS}
        return self

    def wait(self) -> signal.Signals:
        # Other signals with a Python handler (the user's code may install some) wake us too.
        while (signum := os.read(self._read, 1)[0]) not in STOP_SIGNALS:
            pass
        self._restore()
        return signal.Signals(signum)

    def _restore(self) -> None:
        if not self._previous:
            return
        while self._previous:
            sig, previous = self._previous.popitem()
            signal.signal(sig, previous)
        signal.set_wakeup_fd(self._previous_fd)

    def __exit__(self, *exc_info: object) -> None:
        self._restore()
        os.close(self._read)
        os.close(self._write)


def _noted(signum: int, frame: FrameType | None) -> None:
    """The wakeup fd has the signal; nothing else to do."""


def _configure_logging() -> None:
    access = logging.StreamHandler(sys.stdout)
    access.setFormatter(logging.Formatter("%(message)s"))
    _access.addHandler(access)
    _access.propagate = False
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    _log.addHandler(errors)
    _log.setLevel(logging.INFO)
    # Handlers' own print() lines should reach `docker logs` as they happen.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)


def main() -> int:
    """Serve until SIGTERM/SIGINT, then drain; the process exit status."""
    _configure_logging()
    try:
        settings = Settings.from_env(os.environ)
        with _StopSignals() as stop, serving(create_server(settings)) as server:
            where = f"{settings.host}:{server.port}"
            _log.info("serving %s from %s on %s", settings.handler, settings.app_dir, where)
            signum = stop.wait()
            _log.info("%s: finishing in-flight requests", signum.name)
    except ConfigError as exc:
        _log.error("%s", exc)
        return 2
    except StartupError as exc:
        _log.error("%s", exc, exc_info=exc.__cause__)
        return 1
    _log.info("stopped")
    return 0
