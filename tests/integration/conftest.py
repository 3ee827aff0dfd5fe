"""A real stack per test session: dockerd, Traefik and the gateway via `faas up`.

Each session gets its own namespace, so its Traefik only routes its own
containers and teardown removes exactly what the session created.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import requests
from docker.models.containers import Container

from faas import egress
from tests.platforms import Platform
from tests.platforms import fn_name as fn_name  # the tiers import it from here

ECHO_IMAGE = os.environ.get("FAAS_ECHO_IMAGE", "faas/echo:latest")


def base_image() -> str:
    """The public Python base when the engine has it, else the offline one (make images)."""
    client = docker.from_env()
    for name in (os.environ.get("FAAS_BASE_IMAGE"), "python:3.12-slim"):
        if name:
            try:
                client.images.get(name)
                return name
            except docker.errors.ImageNotFound:
                pass
    return "faas/python-base:bookworm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine ({exc}); run `make engine`")
    try:
        client.images.get(ECHO_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{ECHO_IMAGE} is missing; run `make images`")
    return client


class Stack(Platform):
    """`faas up` in a subprocess, on free ports, in a namespace of its own."""

    def __init__(self, state_dir: Path, log: Path | None = None) -> None:
        super().__init__("t" + secrets.token_hex(4), ECHO_IMAGE)
        self.state_dir = state_dir
        self.log = log  # where its stderr (the gateway's and Traefik's logs) goes, if set
        self._engine = docker.from_env()
        self.http_port = free_port()
        self.gateway_port = free_port()
        self.traefik_api_port = free_port()
        self.nats_port = free_port()
        self.env = {
            **os.environ,
            "FAAS_NAMESPACE": self.namespace,
            "FAAS_STATE_DIR": str(state_dir),
            "FAAS_GATEWAY_PORT": str(self.gateway_port),
            "FAAS_TRAEFIK_API_PORT": str(self.traefik_api_port),
            "FAAS_NATS_PORT": str(self.nats_port),
            "FAAS_READY_TIMEOUT": "8",
            "FAAS_STOP_TIMEOUT": "3",
            "FAAS_SCALE_INTERVAL": "0.3",
            "FAAS_BASE_IMAGE": base_image(),
            "FAAS_REQUEST_TIMEOUT": "10",
            "FAAS_STATS_INTERVAL": "0.5",
            # Many tests send wrong tokens and keys from 127.0.0.1 on purpose; the
            # throttle would lock that address out (test_hostile_input.py turns it on).
            "FAAS_AUTH_MAX_FAILURES": "0",
        }
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.direct = f"http://127.0.0.1:{self.gateway_port}"
        self.traefik_api = f"http://127.0.0.1:{self.traefik_api_port}"
        self.process: subprocess.Popen[str] | None = None

    @property
    def engine(self) -> docker.DockerClient:
        return self._engine

    def start(self) -> None:
        with contextlib.ExitStack() as files:
            stderr = files.enter_context(self.log.open("ab")) if self.log else None
            self.process = subprocess.Popen(
                [sys.executable, "-m", "faas.cli", "up", "--port", str(self.http_port)],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        token = ""
        for line in self.process.stdout:
            if line.strip().startswith("token:"):
                token = line.split(":", 1)[1].strip()
                break
            assert time.monotonic() < deadline, "faas up did not print its token"
        assert token, f"faas up exited with {self.process.wait()}"
        self.authorize(token)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(30) == 0
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def remove_all(self, engine: docker.DockerClient) -> None:
        """Everything of this namespace: containers, networks, egress rules (which
        `faas up` leaves for functions that keep running)."""
        for container in self.containers(engine):
            container.remove(force=True)
        for network in engine.networks.list(filters={"label": f"faas.namespace={self.namespace}"}):
            network.remove()
        with contextlib.suppress(egress.EgressError):
            egress.remove(self.namespace)

    def containers(self, engine: docker.DockerClient, name: str | None = None) -> list[Container]:
        wanted = [f"faas.namespace={self.namespace}"]
        if name:
            wanted.append(f"faas.function={name}")
        return list(
            engine.containers.list(all=True, filters={"label": wanted}, ignore_removed=True)
        )


@contextlib.contextmanager
def running_stack(
    engine: docker.DockerClient,
    state_dir: Path,
    *,
    unset: tuple[str, ...] = (),
    log: Path | None = None,
    **env: str,
) -> Iterator[Stack]:
    """A started stack (`env`: more FAAS_* settings, `unset`: variables it must not
    see, `log`: a file for its stderr); on exit it is stopped and everything of its
    namespace removed."""
    s = Stack(state_dir, log)
    s.env.update(env)
    for key in unset:
        s.env.pop(key, None)
    s.start()
    try:
        yield s
    finally:
        s.stop()
        s.remove_all(engine)


@pytest.fixture(scope="session")
def stack(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(engine, tmp_path_factory.mktemp("state")) as s:
        yield s


def cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    """The real CLI, in process, against `stack`: (exit code, stdout, stderr)."""
    return stack.cli(*args)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_refused(
    stack: Stack, engine: docker.DockerClient, method: str, path: str, body: object,
    status: int, mentions: str,
) -> None:  # fmt: skip
    """The API refuses the call with `status`, naming `mentions`, and creates nothing."""
    before = [c.id for c in stack.containers(engine)]
    data = body if isinstance(body, str) else None
    got = stack.api(method, path, json=None if data else body, data=data)
    assert got.status_code == status, got.text
    assert mentions in got.json()["error"]
    assert [c.id for c in stack.containers(engine)] == before


@contextlib.contextmanager
def image_from(engine: docker.DockerClient, name: str, dockerfile: str) -> Iterator[str]:
    """An image built from `dockerfile` alone (no context), removed afterwards."""
    tag = f"faas-test/{name}:{secrets.token_hex(3)}"
    engine.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=tag, labels={"faas.test": "1"}, rm=True
    )
    try:
        yield tag
    finally:
        engine.images.remove(tag, force=True)


class Load:
    """Clients POSTing to a function until the block ends: `served` counts the
    answers, `failures` keeps every one that was not the function's echo."""

    def __init__(self, stack: Platform, name: str, clients: int = 1, pace: float = 0.0) -> None:
        self.url = f"{stack.url}/function/{name}/load"
        self.pace = pace
        self.served = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._clients = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                got = session.post(self.url, data=b"payload", timeout=15)
                if got.status_code != 200 or got.json()["body"] != "payload":
                    self.failures.append(f"{got.status_code} {got.text[:100]}")
                self.served += 1
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            time.sleep(self.pace)

    def __enter__(self) -> Load:
        for client in self._clients:
            client.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for client in self._clients:
            client.join()
