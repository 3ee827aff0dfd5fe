"""Echo function: answers every request with what it received, as JSON.

Standard library only, so it runs on any Python base image. Environment
variables whose names start with ECHO_ or FAAS_ are echoed too, which lets
tests see configuration changes from the outside.
"""

import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_hog: list[bytearray] = []


def _memtotal_kb() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1])


def _burn(seconds: float) -> None:
    """Hash until this thread has used `seconds` of CPU (the GIL makes it one core)."""
    until = time.thread_time() + seconds
    block = b"x" * 4096
    while time.thread_time() < until:
        block = hashlib.sha256(block).digest() * 128


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY keep-alive clients see a 40 ms delayed-ACK stall.
    disable_nagle_algorithm = True

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        chunks = parse_qs(url.query).get("stream")
        if chunks:
            self._stream(int(chunks[0]))
            return
        alloc = parse_qs(url.query).get("alloc")
        if alloc:  # hold N MiB in this process: for memory-limit tests
            _hog.append(bytearray(int(alloc[0]) << 20))
        cpu = parse_qs(url.query).get("cpu")
        if cpu:  # hash for N ms of CPU time: a CPU-bound function, for scaling tests
            _burn(float(cpu[0]) / 1000)
        payload = {
            "method": self.command,
            "path": url.path,
            "query": parse_qs(url.query, keep_blank_values=True),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "env": {k: v for k, v in os.environ.items() if k.startswith(("ECHO_", "FAAS_"))},
            # What the function sees of its sandbox: gVisor answers as 4.4.0
            # and sizes MemTotal to the memory limit.
            "kernel": os.uname().release,
            "memtotal_kb": _memtotal_kb(),
            "hostname": socket.gethostname(),  # one per replica
        }
        data = json.dumps(payload).encode()
        status = int(self.headers.get("X-Echo-Status") or 200)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Echo", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _stream(self, chunks: int) -> None:
        """A slow chunked response: one line every 0.25 s (for long-request tests)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(chunks):
            line = f"chunk {i}\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            time.sleep(0.25)
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _echo

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    # ECHO_CRASH_ON_RESTART=1: start once, then fail every later start of the
    # same container (its filesystem survives a stop), to test failed wakes.
    marker = "/tmp/echo-started"  # noqa: S108 - a flag file, not data
    if os.environ.get("ECHO_CRASH_ON_RESTART") == "1":
        if os.path.exists(marker):
            sys.exit("echo: refusing to start again (ECHO_CRASH_ON_RESTART)")
        open(marker, "w").close()
    # ECHO_ALLOC_MB=N: hold N MiB from the start (to test out-of-memory starts).
    _hog.append(bytearray(int(os.environ.get("ECHO_ALLOC_MB", "0")) << 20))
    # ECHO_START_DELAY=S: a slow starter, listening only after S seconds.
    time.sleep(float(os.environ.get("ECHO_START_DELAY", "0")))
    port = int(os.environ.get("PORT", "8080"))
    # The default listen backlog of 5 drops SYNs under a burst: 1 s retries.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("0.0.0.0", port), Echo)
    server.daemon_threads = True
    # shutdown() waits for serve_forever() to return, so it must not run on
    # the thread that is serving.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"echo listening on :{port}", flush=True)
    # A short poll interval makes shutdown() (hence scale-down) quick.
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
