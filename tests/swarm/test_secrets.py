"""Secrets on a Swarm: each value a Docker secret, read by the function's tasks on
every node at /var/openfaas/secrets/<name>; an update replaces the replicas
(a rolling deploy, no request lost) and removes the old Docker secret; a
removal leaves no Docker secret behind."""

from __future__ import annotations

import json
import time
from collections import Counter
from secrets import token_hex

import pytest
import requests

from tests.integration.conftest import fn_name, wait_for

from .cluster import Cluster
from .platform import Load, SwarmStack
from .test_swarm import node, shown, task_nodes

pytestmark = pytest.mark.integration

# The echo image (non-root) running a server that answers every request with
# the secret's file, its hostname and the request's body (what `Load` checks).
SERVE_SECRET = """\
import json, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        with open("/var/openfaas/secrets/" + sys.argv[1]) as f:
            data = json.dumps({"secret": f.read(), "hostname": socket.gethostname(),
                               "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.answer(b"")
    def do_POST(self):
        self.answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("", 8080), H).serve_forever()
"""


def reader(echo: str, secret: str, **extra: object) -> dict[str, object]:
    """The spec of a function answering the value of `secret`."""
    return {
        "image": echo,
        "command": ["python3", "-c", SERVE_SECRET, secret],
        "secrets": [secret],
        **extra,
    }


def answers(platform: SwarmStack, name: str, calls: int = 30) -> Counter[tuple[str, str]]:
    """(value, hostname) of `calls` answers."""
    session = requests.Session()
    seen: Counter[tuple[str, str]] = Counter()
    for _ in range(calls):
        got = session.get(f"{platform.url}/function/{name}/", timeout=10)
        assert got.status_code == 200, got.text
        seen[(got.json()["secret"], got.json()["hostname"])] += 1
    return seen


def test_every_replica_reads_the_secret_and_an_update_reaches_all_without_a_failure(
    platform: SwarmStack, swarm: Cluster, echo: str
) -> None:
    secret, name = fn_name("db"), fn_name("reads")
    first, second = f"first-{token_hex(8)}", f"second-{token_hex(8)}"
    got = platform.api("POST", "/secrets", json={"name": secret, "value": first})
    assert got.status_code == 201, got.text
    try:
        got = platform.api(
            "PUT", f"/functions/{name}", json=reader(echo, secret, min_scale=3, max_scale=3)
        )
        assert got.status_code == 200, got.text
        nodes = task_nodes(platform, name)
        assert len(nodes) == 3
        assert set(nodes) - {node(swarm, 0)}, nodes  # tasks on workers read it too
        before = answers(platform, name)
        assert {value for value, _ in before} == {first}
        assert len({host for _, host in before}) == 3
        # The value is in a Docker secret of the namespace, never in a label or the env.
        (docker_secret,) = platform.docker_secrets()
        assert docker_secret.startswith(f"faas-{platform.namespace}-{secret}-")
        for service in platform.services(name):
            spec = platform.manager.docker("service", "inspect", service)
            assert first not in spec
            (ref,) = json.loads(spec)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
            assert ref["SecretName"] == docker_secret
            assert ref["File"] == {
                "Name": f"/var/openfaas/secrets/{secret}", "UID": "0", "GID": "0", "Mode": 0o444
            }  # fmt: skip

        with Load(platform, name, clients=4) as load:
            began = time.monotonic()
            got = platform.api("PUT", f"/secrets/{secret}", json={"value": second})
            assert got.status_code == 200, got.text
            assert got.json()["used_by"] == [name]
            # The update returned once the new replicas served alone.
            after = answers(platform, name)
            took = time.monotonic() - began
            served = load.served
            wait_for(lambda: load.served > served + 20, 30, "load served after the update")
        assert load.failures == [], load.failures[:5]
        assert {value for value, _ in after} == {second}, after
        assert len({host for _, host in after}) == 3
        assert not {host for _, host in after} & {host for _, host in before}
        assert took < 60, took
        print(f"secret update reached all 3 replicas in {took:.1f} s, {load.served} calls")
        assert shown(platform, name)["ready_replicas"] == 3
        # The old value's Docker secret went with the replicas that used it.
        (newer,) = platform.docker_secrets()
        assert newer != docker_secret
        assert newer.startswith(f"faas-{platform.namespace}-{secret}-")

        got = platform.api("DELETE", f"/secrets/{secret}")
        assert got.status_code == 409, got.text
        assert name in got.json()["error"]
    finally:
        platform.api("DELETE", f"/functions/{name}")
    # `faas rm` leaves no Docker secret; then the faas secret can go.
    assert platform.docker_secrets() == []
    assert platform.api("DELETE", f"/secrets/{secret}").status_code == 204


def test_a_function_at_zero_wakes_with_the_value_updated_meanwhile(
    platform: SwarmStack, echo: str
) -> None:
    secret, name = fn_name("token"), fn_name("asleep")
    assert (
        platform.api("POST", "/secrets", json={"name": secret, "value": "old"}).status_code == 201
    )
    try:
        assert (
            platform.api("PUT", f"/functions/{name}", json=reader(echo, secret)).status_code == 200
        )
        got = platform.api("POST", f"/functions/{name}/scale", json={"replicas": 0})
        assert got.status_code == 200, got.text
        (old,) = platform.docker_secrets()
        got = platform.api("PUT", f"/secrets/{secret}", json={"value": "new"})
        assert got.status_code == 200, got.text
        # Its service (0 replicas) now references the new value's Docker secret
        # only: nothing started, the old one is gone.
        assert shown(platform, name)["state"] == "stopped"
        (new,) = platform.docker_secrets()
        assert new != old
        got = platform.invoke(name)
        assert got.status_code == 200, got.text
        assert got.json()["secret"] == "new"
    finally:
        platform.api("DELETE", f"/functions/{name}")
    assert platform.docker_secrets() == []
    # One that a gateway killed mid-deploy would leave goes with `faas secrets rm`.
    stray = f"faas-{platform.namespace}-{secret}-stray"
    platform.manager.docker(
        "secret", "create", "--label", f"faas.namespace={platform.namespace}",
        "--label", f"faas.secret={secret}", stray, "/etc/hostname",
    )  # fmt: skip
    assert platform.docker_secrets() == [stray]
    assert platform.api("DELETE", f"/secrets/{secret}").status_code == 204
    assert platform.docker_secrets() == []


def test_an_unknown_secret_is_refused_and_nothing_is_made(platform: SwarmStack, echo: str) -> None:
    name = fn_name("unknown")
    got = platform.api("PUT", f"/functions/{name}", json=reader(echo, "no-such-secret"))
    assert got.status_code == 422, got.text
    assert "no-such-secret" in got.json()["error"]
    assert platform.services(name) == []
    assert platform.docker_secrets() == []
