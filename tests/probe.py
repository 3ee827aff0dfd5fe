"""What a function container can reach and do, seen from inside it.

Run with `python3 -c PROBE '<json [[label, host, port], ...]>'` in the
container; prints a JSON object: each label -> "connected" or the error's
name, the Docker sockets it can see, DOCKER_HOST, whether / and /tmp are
writable, its effective capabilities, no-new-privileges and uid.
"""

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
