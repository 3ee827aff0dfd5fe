"""`faas up`: Traefik and the gateway as one supervised process tree on the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import requests
from loguru import logger

from . import auth, egress_guard, traefik
from .config import Settings
from .errors import FaasError

# Children get SIGTERM, then this long to exit before SIGKILL.
GRACE = 10.0


def _settings_env(settings: Settings) -> dict[str, str]:
    """The settings as FAAS_* variables, so the gateway sees what `faas up` was given."""
    env = dict(os.environ)
    for field, value in settings.model_dump(exclude_none=True).items():
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
            if child.process.poll() is not None:
                raise FaasError(f"{child.name} exited with code {child.process.returncode}")
        if time.monotonic() > deadline:
            raise FaasError(f"{what} did not come up within {timeout:g}s")
        time.sleep(0.05)


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    return check


class Child:
    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> None:
        self.name = name
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the
        # children in order.
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(GRACE)
        except subprocess.TimeoutExpired:
            logger.warning("{} did not stop in {}s; killing it", self.name, GRACE)
            self.process.kill()
            self.process.wait()


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

    children = [
        # In the config's directory: Traefik finds its plugins there.
        Child("traefik", [traefik.binary(settings), f"--configFile={config}"], env, config.parent),
        Child("gateway", gateway_argv, env),
    ]
    web = f"http://{settings.http_host}:{settings.http_port}"
    try:
        _wait_until(
            _http_ok(f"http://127.0.0.1:{settings.traefik_api_port}/ping"), "traefik", 30, children
        )
        _wait_until(_http_ok(f"{web}/api/v1/healthz"), "the gateway", 30, children)
    except FaasError as exc:
        logger.error("{}", exc)
        for child in children:
            child.stop()
        return 1

    egress_guard.guard(settings)  # the gateway has made the function network by now
    print(f"faas is up (namespace {settings.namespace})", flush=True)
    print(f"  invoke:  {web}/function/<name>", flush=True)
    direct = f"http://{settings.gateway_host}:{settings.gateway_port}/api/v1"
    print(f"  api:     {web}/api/v1  (direct: {direct})", flush=True)
    print(f"  token:   {token}", flush=True)
    print(f"  export FAAS_URL={web} FAAS_TOKEN={token}", flush=True)

    code = 0
    while not stopping:
        for child in children:
            if child.process.poll() is not None:
                logger.error(
                    "{} exited with code {}; stopping", child.name, child.process.returncode
                )
                stopping, code = True, 1
        time.sleep(0.2)
    # Traefik first, so no request arrives at a gateway that is going away.
    for child in children:
        child.stop()
    logger.info("stopped")
    return code
