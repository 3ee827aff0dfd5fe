"""What a function container can reach and do, seen from inside it.

Run with `python3 -c PROBE '<json [[label, host, port], ...]>'` in the
container; prints a JSON object: each label -> "connected" or the error's
name, the Docker sockets it can see, DOCKER_HOST, whether / and /tmp are
writable, its effective capabilities, no-new-privileges and uid.
"""

from __future__ import annotations

import contextlib
import socket
import threading

PROBE = """
import json, os, socket, sys
out = {}
for label, host, port in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        out[label] = "connected"
    except OSError as exc:
        out[label] = type(exc).__name__
    finally:
        s.close()
out["sockets"] = [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)]
out["docker_host"] = os.environ.get("DOCKER_HOST")
for path in ("/app/x", "/tmp/x"):
    try:
        open(path, "w").write("x")
        out[path] = "written"
    except OSError as exc:
        out[path] = type(exc).__name__
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
out["CapEff"] = status["CapEff"].strip()
out["NoNewPrivs"] = status["NoNewPrivs"].strip()
out["uid"] = os.getuid()
print(json.dumps(out))
"""

# What a probe sees of a connection the egress rules reject (faas/egress.py):
# EHOSTUNREACH, from ICMP "administratively prohibited".
REJECTED = "OSError"


def listener() -> tuple[socket.socket, int]:
    """A server on every address of this host (0.0.0.0), accepting and closing;
    with its port. Close the socket to stop it."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                server.accept()[0].close()

    threading.Thread(target=serve, daemon=True).start()
    return server, int(server.getsockname()[1])
