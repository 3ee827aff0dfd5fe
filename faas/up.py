"""`faas up`: Traefik, the gateway and nats-server (unless FAAS_NATS_URL names a
NATS of one's own) as one supervised process tree on the host
(faas/supervisor.py restarts a child that dies)."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import requests
from loguru import logger

from . import auth, broker, egress_guard, traefik
from .config import Settings, host_port, local_host
from .errors import FaasError
from .supervisor import GRACE, Child, describe_exit, supervise


def _settings_env(settings: Settings) -> dict[str, str]:
    """The settings as FAAS_* variables, so the gateway sees what `faas up` was given."""
    env = dict(os.environ)
    # Only what was set: the gateway computes the same defaults, and can tell a
    # setting from a default (an unset FAAS_BASE_IMAGE may fall back offline).
    for field, value in settings.model_dump(exclude_none=True, exclude_unset=True).items():
        if field == "admin_token":
            continue  # the gateway reads the same token file; keep it out of /proc/*/environ
        env[f"FAAS_{field.upper()}"] = str(value)
    if settings.admin_token is not None:
        env["FAAS_ADMIN_TOKEN"] = settings.admin_token.get_secret_value()
    return env


def _wait_until(check: Callable[[], bool], what: str, timeout: float, procs: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for child in procs:
            if (code := child.exit_code()) is not None:
                raise FaasError(f"{child.name} {describe_exit(code)}")
        if time.monotonic() > deadline:
            raise FaasError(f"{what} did not come up within {timeout:g}s")
        time.sleep(0.05)


def _tcp_ok(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return check


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    return check


@dataclass(frozen=True)
class Urls:
    """Where `faas up`'s parts answer, as a client on this host reaches them."""

    web: str  # Traefik's web entrypoint
    direct: str  # the gateway itself
    traefik_ping: str

    @property
    def healthz(self) -> str:
        return f"{self.web}/api/v1/healthz"


def urls(settings: Settings) -> Urls:
    return Urls(
        web=f"http://{host_port(local_host(settings.http_host), settings.http_port)}",
        direct=settings.gateway_url,
        traefik_ping=f"http://127.0.0.1:{settings.traefik_api_port}/ping",
    )


LOCK_FILE = "up.lock"


@contextmanager
def holding_state_dir(settings: Settings) -> Iterator[None]:
    """Hold the state dir for one `faas up`: a second one on it would rewrite the
    first one's Traefik config (its route to the gateway) and share its token.

    An flock on a file there, which the kernel drops when this process ends
    however it ends: a crash leaves no stale lock. Children do not inherit it.
    """
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock.read().strip() or "unknown"
            raise FaasError(
                f"another faas up ({holder}) is running on the state dir {state}: stop it, "
                "or give this one its own FAAS_NAMESPACE (or FAAS_STATE_DIR)"
            ) from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}, namespace {settings.namespace}\n")
        lock.flush()
        yield


def gateway_command(settings: Settings, reload: bool = False) -> list[str]:
    """uvicorn serving the gateway, as `faas up` and the manager image run it."""
    argv = [
        sys.executable, "-m", "uvicorn", "faas.gateway:create_app", "--factory",
        "--host", settings.gateway_host, "--port", str(settings.gateway_port),
        "--no-access-log", "--timeout-graceful-shutdown", str(int(GRACE) - 1),
        "--log-level", settings.log_level.lower(),
        # A woken function's own Date/Server headers pass through; add none.
        "--no-server-header", "--no-date-header",
    ]  # fmt: skip
    if reload:
        argv += ["--reload", "--reload-dir", os.path.dirname(__file__)]
    return argv


def run(settings: Settings, reload: bool = False) -> int:
    """Start Traefik and the gateway, print where they are, supervise until signalled."""
    with holding_state_dir(settings):
        return _run(settings, reload)


def _run(settings: Settings, reload: bool) -> int:
    if os.geteuid() == 0:
        logger.warning(
            "running as root: faas up needs only the Docker socket (e.g. the docker group); "
            "a non-root user limits what a flaw in the gateway or Traefik could do"
        )
    token = auth.admin_token(settings)
    config = traefik.render_config(settings)
    env = _settings_env(settings)
    gateway_argv = gateway_command(settings, reload)

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    where = urls(settings)
    traefik_child = Child(
        # In the config's directory: Traefik finds its plugins there.
        "traefik",
        [traefik.binary(settings), f"--configFile={config}"],
        env,
        config.parent,
    )
    gateway = Child("gateway", gateway_argv, env)
    # Stopped in this order: Traefik first, so no request arrives at a gateway
    # that is going away; NATS last, so the gateway can settle its calls.
    children = [traefik_child, gateway]
    if settings.nats_url is None:
        nats_argv = [broker.binary(settings), "-c", str(broker.render_config(settings))]
        children.append(Child("nats", nats_argv, env))
    try:
        return _serve(settings, token, where, children, lambda: stopping)
    finally:
        for child in children:
            child.stop()
        logger.info("stopped")


def _serve(
    settings: Settings, token: str, where: Urls, children: list[Child], stopping: Callable[[], bool]
) -> int:
    """Start the children, report where they serve, keep them running until `stopping()`."""
    traefik_child, gateway, *nats = children
    try:
        for child in [*nats, traefik_child, gateway]:  # NATS first: the gateway connects to it
            child.start()
        if nats:
            _wait_until(_tcp_ok(settings.nats_port), "nats-server", 30, children)
        _wait_until(_http_ok(where.traefik_ping), "traefik", 30, children)
        _wait_until(_http_ok(where.healthz), "the gateway", 30, children)
    except FaasError as exc:
        logger.error("{}", exc)
        return 1

    web = where.web
    egress_guard.guard(settings)  # the gateway has made the function network by now
    print(f"faas is up (namespace {settings.namespace})", flush=True)
    print(f"  invoke:  {web}/function/<name>", flush=True)
    print(f"  api:     {web}/api/v1  (direct: {where.direct}/api/v1)", flush=True)
    print(f"  token:   {token}", flush=True)
    print(f"  export FAAS_URL={web} FAAS_TOKEN={token}", flush=True)

    # Each judged on its own: the gateway directly, not through Traefik.
    watched = [
        (traefik_child, _http_ok(where.traefik_ping)),
        (gateway, _http_ok(f"{where.direct}/api/v1/healthz")),
        *((child, _tcp_ok(settings.nats_port)) for child in nats),
    ]
    return supervise(watched, stopping)
