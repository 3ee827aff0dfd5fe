"""deploy/swarm/stack.yml on the test swarm: `docker stack deploy` runs the
platform (faas/swarm: the manager image with Traefik) and its socket proxy on
the labelled manager; a function deploys, wakes from zero and is removed."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import fn_name, wait_for

from .cluster import Cluster, sh
from .platform import REPO

pytestmark = pytest.mark.integration
PORT = 18501


def images() -> dict[str, str]:
    """The compose stack's images (scripts/compose-images.sh, build/images.env)."""
    found = {
        "FAAS_MANAGER_IMAGE": "faas/manager:latest",
        "FAAS_TRAEFIK_IMAGE": "traefik:v3.7",
        "FAAS_SOCKET_PROXY_IMAGE": "haproxy:2.8",
        "FAAS_NATS_IMAGE": "nats:2.10",  # its binary at /nats-server (not the alpine one)
    }
    env_file = REPO / "build" / "images.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key in found:
                found[key] = value
    return {k: os.environ.get(k, v) for k, v in found.items()}


@pytest.fixture(scope="module")
def stack(swarm: Cluster) -> Iterator[tuple[str, str]]:
    """The stack deployed in a namespace of its own; (URL, admin token)."""
    given = images()
    local = f"faas-test/swarm:{secrets.token_hex(3)}"
    sh("docker", "build", "-q", "--label", "faas.test=1", "-t", local,
       "-f", str(REPO / "deploy/swarm/Dockerfile"),
       "--build-arg", f"FAAS_MANAGER_IMAGE={given['FAAS_MANAGER_IMAGE']}",
       "--build-arg", f"FAAS_TRAEFIK_IMAGE={given['FAAS_TRAEFIK_IMAGE']}",
       "--build-arg", f"FAAS_NATS_IMAGE={given['FAAS_NATS_IMAGE']}", str(REPO))  # fmt: skip
    try:
        platform_image = swarm.push(local)
        proxy_image = swarm.push(given["FAAS_SOCKET_PROXY_IMAGE"])
    finally:
        sh("docker", "rmi", "-f", local, check=False)
    m = swarm.manager
    namespace = "k" + secrets.token_hex(4)
    m.docker("network", "create", "--driver", "overlay", "--attachable",
             "--label", f"faas.namespace={namespace}", f"faas-{namespace}")  # fmt: skip
    node_id = m.docker("info", "-f", "{{.Swarm.NodeID}}")
    m.docker("node", "update", "--label-add", "faas.platform=true", node_id)
    env = {
        **os.environ,
        "DOCKER_HOST": m.socket,
        "DOCKER_SOCKET": f"{m.run}/docker.sock",  # the node's engine, not this host's
        "FAAS_NAMESPACE": namespace,
        "FAAS_REGISTRY": swarm.registry,
        "FAAS_HTTP_PORT": str(PORT),
        "FAAS_SWARM_IMAGE": platform_image,
        "FAAS_SOCKET_PROXY_IMAGE": proxy_image,
        # Each node's engine for the stats agents (the stack passes it on). Swarm
        # expands templates in a service's environment too: escaped, the gateway
        # gets the template itself, not its own node's socket.
        "FAAS_SWARM_DOCKER_SOCKET": swarm.sockets.replace(
            "{{.Node.Hostname}}", '{{"{{"}}.Node.Hostname{{"}}"}}'
        ),
    }
    name = f"st{namespace}"
    compose = str(Path(REPO, "deploy/swarm/stack.yml"))
    subprocess.run(["docker", "stack", "deploy", "-c", compose, name], env=env, check=True,
                   capture_output=True)  # fmt: skip
    try:
        token = ""
        deadline = time.monotonic() + 120
        while not token:
            logs = m.docker("service", "logs", f"{name}_faas", check=False)
            for line in logs.splitlines():
                if "token:" in line:
                    token = line.rsplit(" ", 1)[-1].strip()
            assert time.monotonic() < deadline, logs[-2000:]
            time.sleep(0.5)
        yield f"http://{m.ip}:{PORT}", token
    finally:
        subprocess.run(["docker", "stack", "rm", name], env=env, check=False, capture_output=True)
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
        wait_for(
            lambda: not m.docker("service", "ls", "-q", "--filter", f"name={name}_"),
            60,
            "the stack's services gone",
        )
        m.docker("network", "rm", f"faas-{namespace}", check=False)


def test_the_stack_file_runs_the_platform(stack: tuple[str, str], echo: str) -> None:
    url, token = stack
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    name = fn_name("stacked")
    got = api.put(f"{url}/api/v1/functions/{name}", json={"image": echo}, timeout=90)
    assert got.status_code == 200, got.text
    try:
        assert requests.get(f"{url}/function/{name}/", timeout=30).status_code == 200
        got = api.post(f"{url}/api/v1/functions/{name}/scale", json={"replicas": 0}, timeout=60)
        assert got.status_code == 200, got.text
        assert requests.get(f"{url}/function/{name}/", timeout=30).status_code == 200
    finally:
        assert api.delete(f"{url}/api/v1/functions/{name}", timeout=60).status_code == 204
