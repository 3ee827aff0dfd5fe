"""The platform on a test swarm: `faas up` (Traefik and the gateway) in one
container on the manager node, attached to the functions' overlay network.

Task addresses on an overlay network are reachable only from its members, so
Traefik and the gateway cannot run on this host as the Docker tier runs them.
The container runs this checkout's code with this interpreter (both
bind-mounted, read-only), so no image has to be rebuilt after a change; the
stack file (deploy/swarm/) runs the released images instead. Its web port is
published on the manager node's address.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import requests

from tests.platforms import Platform

from .cluster import Cluster, Node

REPO = Path(__file__).resolve().parents[2]
WEB_PORT = 8080


class SwarmStack(Platform):
    """`faas up` with FAAS_PROVIDER=swarm, in a container on the manager."""

    provider = "swarm"
    api_timeout = 90.0

    def __init__(self, cluster: Cluster, image: str, port: int, **env: str) -> None:
        # `image`: the echo image in the cluster's registry. It also runs the
        # platform's container: any Debian bookworm image does, the interpreter is mounted.
        super().__init__("s" + secrets.token_hex(4), image)
        self.cluster = cluster
        self.image = image
        self.network = f"faas-{self.namespace}"
        self.container = f"faas-{self.namespace}-platform"
        self.port = port
        self.url = f"http://{cluster.manager.ip}:{port}"
        self._engine: docker.DockerClient | None = None
        # The gateway's first packet to a woken task can find its address not
        # yet announced to this node; the kernel asks again only after
        # retrans_time (1 s by default): every 100 ms instead (eth0 is the
        # overlay; see docs/swarm.md).
        self.sysctls = {"net.ipv4.neigh.eth0.retrans_time_ms": "100"}
        self.env = {
            "FAAS_PROVIDER": "swarm",
            "FAAS_NAMESPACE": self.namespace,
            "FAAS_STATE_DIR": "/state",
            "FAAS_HTTP_HOST": "0.0.0.0",
            "FAAS_HTTP_PORT": str(WEB_PORT),
            "FAAS_READY_TIMEOUT": "20",
            "FAAS_STOP_TIMEOUT": "3",
            "FAAS_SCALE_INTERVAL": "0.3",
            "FAAS_REQUEST_TIMEOUT": "10",
            "FAAS_STATS_INTERVAL": "0.5",
            "FAAS_AUTH_MAX_FAILURES": "0",
            "FAAS_REGISTRY": cluster.registry,
            "FAAS_SWARM_DOCKER_SOCKET": cluster.sockets,
            "PYTHONPATH": str(REPO),
            **env,
        }

    @property
    def manager(self) -> Node:
        return self.cluster.manager

    @property
    def engine(self) -> docker.DockerClient:
        """The manager's engine: services, and the containers of the tasks it runs."""
        if self._engine is None:
            self._engine = docker.DockerClient(base_url=self.manager.socket)
        return self._engine

    def start(self) -> None:
        m = self.manager
        m.docker("network", "create", "--driver", "overlay", "--attachable",
                 "--label", f"faas.namespace={self.namespace}", self.network)  # fmt: skip
        mounts = {sys.prefix, sys.base_prefix, str(REPO)}
        argv = ["run", "-d", "--name", self.container, "--label", "faas.test=1",
                "--network", self.network, "-p", f"{self.port}:{WEB_PORT}",
                "--user", "0:0", "-v", "/state",
                "-v", f"{m.run}/docker.sock:/var/run/docker.sock",
                "--entrypoint", sys.executable]  # fmt: skip
        for key, value in self.sysctls.items():
            argv += ["--sysctl", f"{key}={value}"]
        for path in sorted(mounts):
            argv += ["-v", f"{path}:{path}:ro"]
        for key, value in self.env.items():
            argv += ["-e", f"{key}={value}"]
        m.docker(*argv, self.image, "-m", "faas.cli", "up", "--port", str(WEB_PORT))
        deadline = time.monotonic() + 90
        token = ""
        while not token:
            logs = m.docker("logs", self.container, check=False)
            for line in logs.splitlines():
                if line.strip().startswith("token:"):
                    token = line.split(":", 1)[1].strip()
            if time.monotonic() > deadline:
                raise RuntimeError(f"faas up did not print its token:\n{self.logs()}")
            time.sleep(0.2)
        self.authorize(token)

    def logs(self) -> str:
        return self.manager.docker("logs", "--tail", "60", self.container, check=False)

    def restart(self) -> None:
        """Stop and start the platform's container (the gateway and Traefik restart)."""
        self.manager.docker("restart", "-t", "10", self.container)

    def stop(self) -> None:
        m = self.manager
        m.docker("rm", "-fv", self.container, check=False)
        services = m.docker("service", "ls", "-q", "--filter",
                            f"label=faas.namespace={self.namespace}", check=False)  # fmt: skip
        if services:
            m.docker("service", "rm", *services.split(), check=False)
        for secret in self.docker_secrets(check=False):
            m.docker("secret", "rm", secret, check=False)
        # The stats agents (faas/agent.py) and their token, which the gateway made.
        agent = f"label=faas.agent={self.namespace}"
        if services := m.docker("service", "ls", "-q", "--filter", agent, check=False):
            m.docker("service", "rm", *services.split(), check=False)
        if secrets := m.docker("secret", "ls", "-q", "--filter", agent, check=False):
            m.docker("secret", "rm", *secrets.split(), check=False)
        # Refused while the removed services' tasks are still attached.
        deadline = time.monotonic() + 30
        while m.docker("network", "inspect", "-f", "{{.Name}}", self.network, check=False):
            if time.monotonic() > deadline:
                raise RuntimeError(f"network {self.network} still in use after 30 s")
            m.docker("network", "rm", self.network, check=False)
            time.sleep(0.5)

    def engine_services(self, engine: Any, name: str) -> list[dict[str, Any]]:
        wanted = [f"faas.namespace={self.namespace}", f"faas.function={name}"]
        return list(engine.api.services(filters={"label": wanted}))

    def docker_secrets(self, *, check: bool = True) -> list[str]:
        """The names of the namespace's Docker secrets."""
        wanted = f"label=faas.namespace={self.namespace}"
        out = self.manager.docker(
            "secret", "ls", "--filter", wanted, "--format", "{{.Name}}", check=check
        )
        return sorted(out.split())

    def services(self, name: str | None = None) -> list[str]:
        wanted = ["--filter", f"label=faas.namespace={self.namespace}"]
        if name:
            wanted += ["--filter", f"label=faas.function={name}"]
        return self.manager.docker("service", "ls", "-q", *wanted).split()

    def instances(self, name: str | None = None) -> list[str]:
        return self.services(name)


@contextlib.contextmanager
def running_platform(cluster: Cluster, image: str, port: int, **env: str) -> Iterator[SwarmStack]:
    s = SwarmStack(cluster, image, port, **env)
    try:
        s.start()
        yield s
    finally:
        s.stop()


class Load:
    """Clients POSTing to a function until the block ends; every answer that is
    not the function's echo is kept in `failures` with the time it was sent
    (monotonic), and every request's (sent, seconds taken) in `times`."""

    def __init__(self, stack: SwarmStack, name: str, clients: int = 1) -> None:
        self.url = f"{stack.url}/function/{name}/load"
        self.served = 0
        self.failures: list[tuple[float, str]] = []
        self.times: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._clients = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                got = session.post(self.url, data=b"payload", timeout=15)
                if got.status_code != 200 or got.json()["body"] != "payload":
                    self.failures.append((sent, f"{got.status_code} {got.text[:80]}"))
                self.served += 1
            except requests.RequestException as exc:
                self.failures.append((sent, repr(exc)[:120]))
            self.times.append((sent, time.monotonic() - sent))

    def __enter__(self) -> Load:
        for client in self._clients:
            client.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for client in self._clients:
            client.join()
