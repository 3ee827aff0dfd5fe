"""deploy/swarm/stack.yml on the test swarm: `docker stack deploy` runs Traefik,
the gateway (the manager image, built from this checkout), nats and the two
socket proxies on the labelled manager. A function deploys, answers over HTTP
and HTTPS (the stack's certificate, made here, verified), wakes from zero,
takes an asynchronous call, checks invoke keys in Traefik, and is still
served after the gateway restarts;
`docker stack rm` then leaves nothing of the stack behind."""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import fn_name, wait_for

from .cluster import Cluster, Node, sh
from .platform import REPO

pytestmark = pytest.mark.integration
HTTP_PORT = 18501
HTTPS_PORT = 18502


def images() -> dict[str, str]:
    """The stack's images besides the manager's (`make stack-images`, build/images.env)."""
    found = {
        "FAAS_BASE_IMAGE": "python:3.12-slim",
        "FAAS_TRAEFIK_IMAGE": "traefik:v3.7",
        "FAAS_SOCKET_PROXY_IMAGE": "haproxy:2.8",
        "FAAS_NATS_IMAGE": "nats:2.10-alpine",
    }
    env_file = REPO / "build" / "images.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key in found:
                found[key] = value
    return {k: os.environ.get(k, v) for k, v in found.items()}


def certificate(where: Path, ip: str) -> tuple[Path, Path]:
    """A self-signed certificate for `ip` and its key."""
    cert, key = where / "tls.crt", where / "tls.key"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
       "-subj", "/CN=faas-test", "-addext", f"subjectAltName=IP:{ip}",
       "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


@dataclass
class Stack:
    name: str
    namespace: str
    node: Node
    env: dict[str, str]
    cert: Path
    token: str = ""
    api: requests.Session = field(default_factory=requests.Session)

    @property
    def http(self) -> str:
        return f"http://{self.node.ip}:{HTTP_PORT}"

    @property
    def https(self) -> str:
        return f"https://{self.node.ip}:{HTTPS_PORT}"

    def stack(self, *argv: str) -> None:
        subprocess.run(["docker", "stack", *argv], env=self.env, check=True, capture_output=True)

    def gateway_container(self) -> str:
        """The running gateway task's container on the node, or ''."""
        found = self.node.docker(
            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.name}_gateway",
            "--filter", "health=healthy",
        )  # fmt: skip
        return found.split()[0] if found else ""

    def wait_ready(self) -> str:
        """Wait until the gateway is healthy and answers through Traefik; its admin token."""
        wait_for(lambda: bool(self.gateway_container()), 180, "a healthy gateway")
        token = self.node.docker(
            "exec", self.gateway_container(), "cat", "/var/lib/faas/admin-token"
        ).strip()
        self.api.headers["Authorization"] = f"Bearer {token}"

        def answers() -> bool:
            try:
                got = self.api.get(f"{self.http}/api/v1/functions", timeout=5)
            except requests.RequestException:
                return False
            return got.status_code == 200

        wait_for(answers, 120, "the API through Traefik")
        return token

    def leftovers(self) -> list[str]:
        """What of the stack (and its functions) the engine still has."""
        m, left = self.node, []
        for kind in ("service", "config", "secret", "network"):
            found = m.docker(kind, "ls", "-q", "--filter", f"name={self.name}_")
            left += [f"{kind} {x}" for x in found.split()]
        functions = f"label=faas.namespace={self.namespace}"
        found = m.docker("service", "ls", "-q", "--filter", functions)
        left += [f"function service {x}" for x in found.split()]
        found = m.docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={self.name}")
        left += [f"container {x}" for x in found.split()]
        return left


@pytest.fixture(scope="module")
def stack(swarm: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    given = images()
    local = f"faas-test/manager-stack:{secrets.token_hex(3)}"
    # This checkout's gateway and templates (./Dockerfile); wheels come from
    # build/wheels when `make stack-images` left them there.
    sh("docker", "build", "-q", "--label", "faas.test=1", "-t", local,
       "--build-arg", f"FAAS_BASE_IMAGE={given['FAAS_BASE_IMAGE']}", str(REPO))  # fmt: skip
    try:
        manager_image = swarm.push(local)
    finally:
        sh("docker", "rmi", "-f", local, check=False)
    m = swarm.manager
    namespace = "k" + secrets.token_hex(4)
    m.docker("network", "create", "--driver", "overlay", "--attachable",
             "--label", f"faas.namespace={namespace}", f"faas-{namespace}")  # fmt: skip
    node_id = m.docker("info", "-f", "{{.Swarm.NodeID}}")
    m.docker("node", "update", "--label-add", "faas.platform=true", node_id)
    cert, key = certificate(tmp_path_factory.mktemp("tls"), m.ip)
    env = {
        **os.environ,
        "DOCKER_HOST": m.socket,
        "DOCKER_SOCKET": f"{m.run}/docker.sock",  # the node's engine, not this host's
        "FAAS_NAMESPACE": namespace,
        "FAAS_REGISTRY": swarm.registry,
        "FAAS_HTTP_PORT": str(HTTP_PORT),
        "FAAS_HTTPS_PORT": str(HTTPS_PORT),
        "FAAS_TLS_CERT": str(cert),
        "FAAS_TLS_KEY": str(key),
        "FAAS_MANAGER_IMAGE": manager_image,
        "FAAS_TRAEFIK_IMAGE": swarm.push(given["FAAS_TRAEFIK_IMAGE"]),
        "FAAS_NATS_IMAGE": swarm.push(given["FAAS_NATS_IMAGE"]),
        "FAAS_SOCKET_PROXY_IMAGE": swarm.push(given["FAAS_SOCKET_PROXY_IMAGE"]),
        "FAAS_READY_TIMEOUT": "30",
        # Each node's engine for the stats agents (the stack passes it on). Swarm
        # expands templates in a service's environment too: escaped, the gateway
        # gets the template itself, not its own node's socket.
        "FAAS_SWARM_DOCKER_SOCKET": swarm.sockets.replace(
            "{{.Node.Hostname}}", '{{"{{"}}.Node.Hostname{{"}}"}}'
        ),
    }
    s = Stack(f"st{namespace}", namespace, m, env, cert)
    s.stack("deploy", "-c", str(REPO / "deploy/swarm/stack.yml"), s.name)
    try:
        s.token = s.wait_ready()
        yield s
    finally:
        subprocess.run(["docker", "stack", "rm", s.name], env=env, check=False, capture_output=True)
        services = m.docker("service", "ls", "-q", "--filter",
                            f"label=faas.namespace={namespace}", check=False)  # fmt: skip
        if services:
            m.docker("service", "rm", *services.split(), check=False)
        # The stats agents and their token secret, which the gateway made.
        agents = f"label=faas.agent={namespace}"
        if services := m.docker("service", "ls", "-q", "--filter", agents, check=False):
            m.docker("service", "rm", *services.split(), check=False)
        if found := m.docker("secret", "ls", "-q", "--filter", agents, check=False):
            m.docker("secret", "rm", *found.split(), check=False)
        wait_for(lambda: not s.leftovers(), 90, "the stack gone")
        volumes = m.docker("volume", "ls", "-q", "--filter", f"name={s.name}_", check=False)
        if volumes:
            m.docker("volume", "rm", *volumes.split(), check=False)
        m.docker("network", "rm", f"faas-{namespace}", check=False)


@pytest.fixture(scope="module")
def function(stack: Stack, echo: str) -> str:
    name = fn_name("stacked")
    got = stack.api.put(f"{stack.http}/api/v1/functions/{name}", json={"image": echo}, timeout=90)
    assert got.status_code == 200, got.text
    return name


def https_get(stack: Stack, path: str) -> requests.Response:
    """GET over HTTPS, the stack's certificate verified (name: the node's address)."""
    return requests.get(f"{stack.https}{path}", verify=str(stack.cert), timeout=30)


def test_http_and_https_through_traefik(stack: Stack, function: str) -> None:
    got = requests.get(f"{stack.http}/function/{function}/plain", timeout=30)
    assert got.status_code == 200, got.text
    got = https_get(stack, f"/function/{function}/tls")
    assert got.status_code == 200, got.text
    assert got.json()["path"] == "/tls"
    # OpenFaaS' name.namespace: the gateway sends it back through Traefik.
    got = requests.get(f"{stack.http}/function/{function}.{stack.namespace}/ns", timeout=30)
    assert got.status_code == 200, got.text
    assert got.json()["path"] == "/ns"
    # The same routes as on web: the API too.
    assert stack.api.get(f"{stack.https}/api/v1/functions", verify=str(stack.cert),
                         timeout=30).status_code == 200  # fmt: skip
    # Not some other certificate that happens to be accepted: Traefik's own fails.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{stack.https}/", verify=True, timeout=30)
    context = ssl.create_default_context(cafile=str(stack.cert))
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "faas-test"),),)


def test_wakes_from_zero_and_queues_async_calls(stack: Stack, function: str) -> None:
    got = stack.api.post(
        f"{stack.http}/api/v1/functions/{function}/scale", json={"replicas": 0}, timeout=60
    )
    assert got.status_code == 200, got.text
    assert stack.api.get(f"{stack.http}/api/v1/functions/{function}",
                         timeout=30).json()["state"] != "running"  # fmt: skip
    got = https_get(stack, f"/function/{function}/woken")
    assert got.status_code == 200, got.text
    # Queued in nats (the stack's network), then made by the gateway's worker.
    got = requests.post(f"{stack.http}/async-function/{function}/later", data=b"x", timeout=30)
    assert got.status_code == 202, got.text

    def made() -> bool:
        calls = stack.api.get(f"{stack.http}/api/v1/functions/{function}/calls", timeout=10)
        return calls.status_code == 200 and not calls.json()["calls"]

    wait_for(made, 60, "the asynchronous call made")


def test_invoke_keys_checked_in_traefik(stack: Stack, echo: str) -> None:
    """Traefik's key check reads the signing secret the gateway left in their volume."""
    name = fn_name("keyed")
    url = f"{stack.http}/api/v1/functions/{name}"
    got = stack.api.put(url, json={"image": echo, "auth": "key"}, timeout=90)
    assert got.status_code == 200, got.text
    try:
        assert https_get(stack, f"/function/{name}/").status_code == 401
        key = stack.api.post(f"{url}/keys", json={}, timeout=30).json()["key"]
        got = requests.get(f"{stack.https}/function/{name}/", headers={"X-Faas-Key": key},
                           verify=str(stack.cert), timeout=30)  # fmt: skip
        assert got.status_code == 200, got.text
        assert "x-faas-key" not in got.json()["headers"]  # checked in Traefik, then dropped
    finally:
        assert stack.api.delete(url, timeout=60).status_code == 204


def test_a_locked_out_client_locks_out_no_other(stack: Stack, swarm: Cluster) -> None:
    """The gateway sees each caller's own address behind Traefik (X-Forwarded-For,
    believed from the stack's network only): wrong tokens from one client lock that
    client out, not everyone who comes through Traefik."""
    other = swarm.nodes[1]  # another address: a request from inside that node's netns
    probe = (
        "import sys, urllib.request, urllib.error\n"
        "req = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer wrong'})\n"
        "codes = []\n"
        "for _ in range(15):\n"
        "    try:\n"
        "        codes.append(urllib.request.urlopen(req, timeout=10).status)\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        codes.append(exc.code)\n"
        "print(' '.join(map(str, codes)))\n"
    )
    codes = sh("nsenter", f"--net=/var/run/netns/{other.netns}", sys.executable, "-c", probe,
               f"{stack.http}/api/v1/functions").split()  # fmt: skip
    assert (codes[0], codes[-1]) == ("401", "429"), codes  # that client is locked out
    got = stack.api.get(f"{stack.http}/api/v1/functions", timeout=30)
    assert got.status_code == 200, got.text  # this one is not


def test_gateway_restart_keeps_state(stack: Stack, function: str) -> None:
    before = stack.gateway_container()
    stack.node.docker("service", "update", "--force", "--detach", f"{stack.name}_gateway")
    wait_for(lambda: stack.gateway_container() not in ("", before), 180, "a new gateway")
    assert stack.wait_ready() == stack.token  # the volume `state` kept it
    got = stack.api.get(f"{stack.http}/api/v1/functions/{function}", timeout=30)
    assert got.status_code == 200, got.text
    assert https_get(stack, f"/function/{function}/again").status_code == 200


def test_stack_rm_leaves_nothing(stack: Stack, function: str) -> None:
    got = stack.api.delete(f"{stack.http}/api/v1/functions/{function}", timeout=60)
    assert got.status_code == 204, got.text
    stack.stack("rm", stack.name)
    deadline = time.monotonic() + 90
    while left := stack.leftovers():
        assert time.monotonic() < deadline, left
        time.sleep(0.5)
