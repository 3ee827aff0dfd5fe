"""The compose stack (docker-compose.yml) as a user runs it, in a project of its own.

Each run gets its own compose project, namespace (so its function network,
faas-<namespace>, and its Traefik's routes are its own) and free host ports,
so it runs beside a `faas up` stack or other tests on the same engine. Only
the Docker CLI and HTTP are used, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from faas import egress

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ECHO_IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")
HEALTH_TIMEOUT = 90.0


def free_ports(n: int) -> list[int]:
    """n distinct ports free on loopback now (held open together, so no repeats)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def compose_command() -> list[str] | None:
    """Compose v2 when the docker CLI has it, else Debian's docker-compose v1."""
    try:
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            return ["docker", "compose"]
    except FileNotFoundError:
        return None
    try:
        subprocess.run(["docker-compose", "version"], capture_output=True, check=True)
    except (FileNotFoundError, subprocess.CalledProcessError):
        return None
    return ["docker-compose"]


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The stack's image names, built (or found) by scripts/compose-images.sh."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker engine; run `make engine`")
    if subprocess.run(["docker", "image", "inspect", ECHO_IMAGE], capture_output=True).returncode:
        pytest.fail(f"{ECHO_IMAGE} is missing; run `make images`")
    # Quick when nothing changed (Docker's layer cache, wheels kept); it
    # rebuilds the manager image when faas/ changed, so the test runs today's code.
    built = subprocess.run(
        [ROOT / "scripts" / "compose-images.sh"], capture_output=True, text=True, timeout=900
    )
    if built.returncode != 0:
        pytest.fail(f"scripts/compose-images.sh failed:\n{built.stderr[-3000:]}")
    lines = (ROOT / "build" / "images.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


class Stack:
    """One compose project on free loopback ports, in a namespace of its own."""

    def __init__(self, compose: list[str], images: dict[str, str]) -> None:
        suffix = secrets.token_hex(4)
        self.project = f"faase2e{suffix}"
        self.namespace = f"e2e{suffix}"
        self.network = f"faas-{self.namespace}"
        # Traefik, the manager and Prometheus listen on these in the host's namespace.
        ports = free_ports(7)
        self.http_port, self.https_port, self.api_port, self.prometheus_port = ports[:4]
        self.gateway_port, self.nats_port, self.nats_monitor_port = ports[4:]
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.compose = [*compose, "-p", self.project, "-f", str(COMPOSE_FILE)]
        self.env = {
            **os.environ,
            **images,
            "FAAS_NAMESPACE": self.namespace,
            "FAAS_HTTP_HOST": "127.0.0.1",
            "FAAS_HTTP_PORT": str(self.http_port),
            "FAAS_HTTPS_PORT": str(self.https_port),
            "FAAS_TRAEFIK_API_PORT": str(self.api_port),
            "FAAS_GATEWAY_PORT": str(self.gateway_port),
            "FAAS_NATS_PORT": str(self.nats_port),
            "FAAS_NATS_MONITOR_PORT": str(self.nats_monitor_port),
            "FAAS_STOP_TIMEOUT": "3",
            "FAAS_ACCESS_LOG": "true",
            "COMPOSE_PROFILES": "monitoring",
            "FAAS_PROMETHEUS_PORT": str(self.prometheus_port),
        }
        self.token = ""

    def run(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [*self.compose, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def up(self) -> float:
        """`up -d` and wait until every service is healthy; returns the seconds it took."""
        started = time.monotonic()
        self.run("up", "-d")
        while (health := self.health()) and set(health.values()) != {"healthy"}:
            if time.monotonic() - started > HEALTH_TIMEOUT:
                logs = self.run("logs", "--tail=30")
                raise AssertionError(f"not healthy after {HEALTH_TIMEOUT:g}s: {health}\n{logs}")
            time.sleep(0.5)
        took = time.monotonic() - started
        self.token = self.run("exec", "-T", "manager", "cat", "/var/lib/faas/admin-token").strip()
        return took

    def health(self) -> dict[str, str]:
        ids = self.run("ps", "-q").split()
        if not ids:
            return {"(no containers)": "missing"}
        inspected = json.loads(docker("inspect", *ids))
        return {
            c["Name"]: (c["State"].get("Health") or {}).get("Status", c["State"]["Status"])
            for c in inspected
        }

    def api(self, method: str, path: str, body: object = None) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            json=body,
            timeout=60,
        )

    def leftovers(self) -> dict[str, list[str]]:
        """Whatever of this run is still on the engine."""
        project = f"label=com.docker.compose.project={self.project}"
        return {
            kind: found
            for kind, found in {
                "containers": docker("ps", "-aq", "--filter", project).split(),
                "functions": docker(
                    "ps", "-aq", "--filter", f"label=faas.namespace={self.namespace}"
                ).split(),
                "networks": docker("network", "ls", "-q", "--filter", project).split(),
                "volumes": docker("volume", "ls", "-q", "--filter", project).split(),
                "function network": docker(
                    "network", "ls", "-q", "--filter", f"name=^{self.network}$"
                ).split(),
            }.items()
            if found
        }

    def destroy(self) -> None:
        """Remove everything, also after a failure half-way."""
        subprocess.run(
            [*self.compose, "down", "-v", "--remove-orphans", "-t", "3"],
            env=self.env,
            capture_output=True,
            timeout=120,
        )
        functions = docker("ps", "-aq", "--filter", f"label=faas.namespace={self.namespace}")
        if functions:
            docker("rm", "-f", *functions.split(), check=False)
        docker("network", "rm", self.network, check=False)
        # The egress service leaves its rules (for functions that keep running).
        with contextlib.suppress(egress.EgressError):
            egress.remove(self.namespace)


@pytest.fixture
def stack(images: dict[str, str]) -> Iterator[Stack]:
    compose = compose_command()
    if compose is None:
        pytest.fail("no Docker Compose (docker compose / docker-compose); run `make stack-images`")
    s = Stack(compose, images)
    try:
        yield s
    finally:
        s.destroy()
