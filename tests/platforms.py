"""What the API tests need of a running platform, whichever provider runs it.

`Stack` (tests/integration/conftest.py: `faas up` on this host, Docker
provider) and `SwarmStack` (tests/swarm/platform.py: `faas up` in a container
on a swarm's manager, Swarm provider) both are a `Platform`: its address and
admin token, the API, the function path, the CLI in process, and the engine
the functions run on, to see what exists there.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import docker
import requests
from typer.testing import CliRunner

from faas.cli import app


def fn_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


class Platform:
    """A started platform: set `url`, `token` (then `authorize()`), `namespace`,
    `echo` (the echo image as its engine names it) and `engine`."""

    provider = "docker"
    api_timeout = 60.0

    def __init__(self, namespace: str, echo: str) -> None:
        self.namespace = namespace
        self.echo = echo
        self.url = ""
        self.token = ""
        self.session = requests.Session()

    @property
    def engine(self) -> docker.DockerClient:
        """The engine the functions run on."""
        raise NotImplementedError

    def authorize(self, token: str) -> None:
        self.token = token
        self.session.headers["Authorization"] = f"Bearer {token}"

    def api(self, method: str, path: str, **kwargs: object) -> requests.Response:
        url = f"{self.url}/api/v1{path}"
        return self.session.request(method, url, timeout=self.api_timeout, **kwargs)  # type: ignore[arg-type]

    def invoke(
        self, name: str, path: str = "/", method: str = "GET", **kwargs: object
    ) -> requests.Response:
        return requests.request(method, f"{self.url}/function/{name}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]

    def deploy(self, name: str, **spec: object) -> requests.Response:
        return self.api("PUT", f"/functions/{name}", json={"image": self.echo, **spec})

    @contextlib.contextmanager
    def deployed(self, prefix: str, **spec: object) -> Iterator[str]:
        """A function of the echo image (or `spec`), removed afterwards; yields its name."""
        name = fn_name(prefix)
        got = self.deploy(name, **spec)
        assert got.status_code == 200, got.text
        try:
            yield name
        finally:
            self.api("DELETE", f"/functions/{name}")

    def cli(self, *args: str) -> tuple[int, str, str]:
        """The real CLI, in process, against this platform: (exit code, stdout, stderr)."""
        result = CliRunner().invoke(app, ["--url", self.url, "--token", self.token, *args])
        return result.exit_code, result.stdout, result.stderr

    def instances(self, name: str | None = None) -> list[str]:
        """Ids of what holds the replicas of function `name` (of every function
        if None) in the engine: containers (Docker), services (Swarm)."""
        found = self.engine.containers.list(
            all=True, filters=self._labels(name), ignore_removed=True
        )
        return [str(c.id) for c in found]

    def leftovers(self, name: str) -> list[str]:
        """Whatever of function `name` the engine still has: replicas, containers,
        networks, volumes."""
        wanted = self._labels(name)
        return [
            *(f"instance {i}" for i in self.instances(name)),
            *(
                f"container {c.name}"
                for c in self.engine.containers.list(all=True, filters=wanted, ignore_removed=True)
            ),
            *(f"network {n.name}" for n in self.engine.networks.list(filters=wanted)),
            *(f"volume {v.name}" for v in self.engine.volumes.list(filters=wanted)),
        ]

    def _labels(self, name: str | None) -> dict[str, str | list[str] | bool]:
        wanted = [f"faas.namespace={self.namespace}"]
        if name:
            wanted.append(f"faas.function={name}")
        return {"label": wanted}
