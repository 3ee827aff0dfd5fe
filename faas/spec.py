"""FunctionSpec: what a user asks for when deploying a function, validated."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidSpec
from .secretstore import MAX_SECRETS_PER_FUNCTION, MOUNT_PATH
from .secretstore import NAME_RE as SECRET_NAME_RE

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")

# The distribution reference grammar (docker/distribution reference/regexp.go),
# written out: [domain[:port]/]path[:tag][@digest]
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?/)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"(?::[\w][\w.-]{0,127})?"
_DIGEST = r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
IMAGE_RE = re.compile(rf"^{_DOMAIN}{_COMPONENT}(?:/{_COMPONENT})*{_TAG}{_DIGEST}$")
IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

RESERVED_ENV_PREFIX = "FAAS_"
# The function runtime's own knobs (faas/runtime): FAAS_* but the user's to set.
RUNTIME_ENV = frozenset({"FAAS_HANDLER", "FAAS_TIMEOUT", "FAAS_MAX_BODY", "FAAS_DEBUG"})
MAX_ENV_BYTES = 64 * 1024
# Swarm's placement grammar: <attribute> == or != <value>.
CONSTRAINT_RE = re.compile(
    r"^(node\.(id|hostname|role|platform\.os|platform\.arch)|(node|engine)\.labels\.[\w.-]+)"
    r"\s*(==|!=)\s*[\w.-]+$"
)
SPREAD_RE = re.compile(r"^(node|engine)\.labels\.[\w.-]+$")

Name = Annotated[str, Field(description="Function name: ^[a-z][a-z0-9-]{0,62}$")]


def valid_image(image: str) -> bool:
    return len(image) <= 512 and bool(IMAGE_RE.match(image) or IMAGE_ID_RE.match(image))


# Words the platform itself names things with: Traefik routers, services,
# middlewares, transports, entrypoints, plugins and providers (traefik/*.yml,
# the drains of faas/traefik.py, Traefik's own @internal ones), the path
# segments of the gateway's routes, and the compose stack's services. A
# function lives under /function/<name> and its Traefik names are fn-<name>
# and fn-<name>-<suffix> (faas/labels.py), so none of these collides today;
# they stay free so that nothing named after a function ever can. The
# fn-<name>-<suffix> middlewares need no reservation: every one starts with
# its own function's full name, and no suffix contains a '-'.
# tests/unit/test_spec.py checks that this set covers every name in those
# configs and routes.
RESERVED_NAMES = frozenset(
    {
        # Traefik: the gateway's and the HTTPS relay's routers, services, transports
        "faas", "faas-api", "faas-wake", "faas-gateway", "faas-https", "faas-web",
        "gateway", "wake", "drain", "drains", "callid", "unreached",
        # Traefik: entrypoints, providers, and its @internal routers and services
        "web", "websecure", "traefik", "docker", "file", "internal",
        "api", "dashboard", "ping", "prometheus", "rest", "noop", "acme-http",
        # The gateway's routes (/metrics, /function/..., /api/v1/...)
        "metrics", "function", "healthz", "openapi", "stats", "functions", "images",
        "keys", "auth", "logs", "scale", "pause", "build", "pull", "load", "secrets",
        # The OpenFaaS API's routes (faas/openfaas.py) and its Traefik router
        "system", "scale-function", "info", "namespaces", "faas-system",
        # Asynchronous calls (faas/calls_api.py) and their Traefik router
        "async-function", "calls", "retry", "faas-async",
        # The compose stack's services (docker-compose.yml)
        "manager", "docker-proxy-traefik", "docker-proxy-manager", "egress", "nats",
    }
)  # fmt: skip


def check_name(name: str) -> str:
    """A well-formed function name: how existing functions are addressed."""
    if not NAME_RE.match(name):
        raise InvalidSpec(
            "name",
            f"{name!r} is not a valid function name: use 1-63 lowercase letters, digits "
            "and '-', starting with a letter",
        )
    return name


def check_new_name(name: str) -> str:
    """A name a new function may take: well-formed and not reserved.

    Only creation refuses reserved words; a function deployed under one by an
    older version is still read, listed and removed through `check_name`."""
    if check_name(name) in RESERVED_NAMES:
        raise InvalidSpec(
            "name",
            f"{name!r} is reserved: the platform uses it for its own routes and "
            "services; choose another name",
        )
    return name


# Replicas per function: the autoscaler's bounds. The default ceiling keeps one
# busy function from taking a small host; a function sets its own up to the cap.
MAX_REPLICAS = 100
DEFAULT_MAX_SCALE = 10
DEFAULT_CONCURRENCY = 10

MEMORY_RE = re.compile(r"^([1-9][0-9]*)([bkmg]?)$")
MEMORY_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_MEMORY = 6 << 20  # Docker refuses less
RUNTIME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
GPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
ULIMITS = frozenset(
    {"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nofile", "nproc", "stack"}
)


def memory_bytes(value: str) -> int:
    match = MEMORY_RE.match(value.lower())
    if match is None:
        raise ValueError(f"{value!r} is not a size like 64m or 1g")
    return int(match[1]) * MEMORY_UNITS[match[2]]


class Resources(BaseModel):
    """Limits of the function's container; unset ones take the platform defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory: str | None = Field(None, description="Memory limit, e.g. 64m or 1g (no swap).")
    cpus: float | None = Field(None, gt=0, le=256, description="CPU quota in cores, e.g. 0.5.")
    pids: int | None = Field(None, ge=16, le=1 << 22, description="Process (and thread) limit.")
    ulimits: dict[str, int] = Field(
        default_factory=dict, description='Ulimits (soft = hard), e.g. {"nofile": 1024}.'
    )

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and memory_bytes(value) < MIN_MEMORY:
            raise ValueError("must be at least 6m")
        return value.lower() if value else value

    @field_validator("ulimits")
    @classmethod
    def _ulimits(cls, value: dict[str, int]) -> dict[str, int]:
        for key, limit in value.items():
            if key not in ULIMITS:
                raise ValueError(f"{key!r} is not one of {', '.join(sorted(ULIMITS))}")
            if limit < 0:
                raise ValueError(f"{key!r} must not be negative")
        return value


CAPABILITY_RE = re.compile(r"^[A-Z][A-Z_]{1,31}$")
USER_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# Docker merges labels into one map: these prefixes would let a user route
# traffic (traefik.*), rewrite the platform's state (faas.*) or impersonate
# the engine's tooling (com.docker.*).
RESERVED_LABEL_PREFIXES = ("traefik.", "faas.", "com.docker.")


class Limits(BaseModel):
    """Abuse limits enforced by Traefik in front of the function; unset ones take
    the platform defaults (FAAS_RATE_AVERAGE ...), 0 switches one off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_average: int | None = Field(None, ge=0, le=1_000_000, description="Requests/s, averaged.")
    rate_burst: int | None = Field(None, ge=1, le=1_000_000, description="Burst of requests.")
    max_in_flight: int | None = Field(None, ge=0, le=100_000, description="Concurrent requests.")
    max_body_bytes: int | None = Field(
        None, ge=0, le=1 << 34, description="Largest request body in bytes (413 above)."
    )


class Queue(BaseModel):
    """How its asynchronous calls are made; unset ones take the platform defaults
    (FAAS_ASYNC_CONCURRENCY, FAAS_ASYNC_MAX_ATTEMPTS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int | None = Field(
        None, ge=1, le=10_000, description="Asynchronous calls in flight at once."
    )
    max_attempts: int | None = Field(
        None, ge=1, le=100, description="Attempts before a call goes to the dead letters."
    )


class FunctionSpec(BaseModel):
    """A function: an image plus how to run and route it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    image: str = Field(description="Image reference (repo[:tag][@digest]) or image id.")
    port: int = Field(8080, ge=1, le=65535, description="Port the function listens on.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables.")
    command: list[str] | None = Field(
        None, description="Command to run instead of the image's CMD (argv list)."
    )
    health_path: str = Field(
        "/", description="Path probed over HTTP until the function answers (any status < 500)."
    )
    min_scale: int = Field(
        0,
        ge=0,
        le=MAX_REPLICAS,
        description="Replicas always running; 0 lets the function scale to zero when idle.",
    )
    max_scale: int = Field(
        DEFAULT_MAX_SCALE,
        ge=1,
        le=MAX_REPLICAS,
        description="Most replicas the autoscaler (or `faas scale`) runs.",
    )
    concurrency: int = Field(
        DEFAULT_CONCURRENCY,
        ge=1,
        le=10_000,
        description="Target concurrent requests per replica: the autoscaler adds replicas "
        "when the average in flight is above it, removes them when below.",
    )
    idle_timeout: int = Field(
        300,
        ge=0,
        le=7 * 24 * 3600,
        description="Seconds without traffic before scaling to zero (stopped); 0: never "
        "(a paused function then stays paused, unless the paused tier is full).",
    )
    pause_timeout: int | None = Field(
        None,
        ge=0,
        le=7 * 24 * 3600,
        description="Seconds without traffic before pausing (memory kept, resumes in tens "
        "of ms), when shorter than idle_timeout; 0: never paused; unset: FAAS_PAUSE_TIMEOUT.",
    )
    runtime: str | None = Field(
        None, description="OCI runtime registered with the engine (runc, crun, runsc, kata...)."
    )
    gpus: str | int | list[str] | None = Field(
        None, description='GPUs: "all", a count, or a list of device ids.'
    )
    resources: Resources = Field(default_factory=Resources)
    auth: Literal["public", "key"] = Field(
        "public", description='"key": callers need an invoke key (or the admin token).'
    )
    read_only: bool = Field(True, description="Read-only root filesystem (a tmpfs on /tmp).")
    cap_add: list[str] = Field(
        default_factory=list,
        description="Capabilities to add back (all are dropped); only those the admin allows.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Container labels; traefik.*, faas.* and com.docker.* are refused.",
    )
    limits: Limits = Field(default_factory=Limits)
    constraints: list[str] = Field(
        default_factory=list,
        description="Swarm placement constraints, e.g. node.labels.gpu==true "
        "(FAAS_PROVIDER=swarm).",
    )
    spread: list[str] = Field(
        default_factory=list,
        description="Swarm placement preferences: spread replicas over a node label's values, "
        "e.g. node.labels.zone (FAAS_PROVIDER=swarm).",
    )

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: list[str]) -> list[str]:
        for constraint in value:
            if not CONSTRAINT_RE.match(constraint):
                raise ValueError(
                    f"{constraint!r} is not a placement constraint (e.g. node.labels.gpu==true)"
                )
        return value

    @field_validator("spread")
    @classmethod
    def _spread(cls, value: list[str]) -> list[str]:
        for key in value:
            if not SPREAD_RE.match(key):
                raise ValueError(f"{key!r} is not a node label to spread over (node.labels.<key>)")
        return value

    secrets: list[str] = Field(
        default_factory=list,
        description=f"Names of secrets (`faas secrets`) the function reads as files, "
        f"{MOUNT_PATH}/<name>; each must exist when it is deployed.",
    )

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            if not SECRET_NAME_RE.match(name):
                raise ValueError(
                    f"{name[:80]!r} is not a valid secret name: use 1-63 lowercase letters, "
                    "digits and '-', starting and ending with a letter or digit"
                )
        if len(set(value)) > MAX_SECRETS_PER_FUNCTION:
            raise ValueError(f"at most {MAX_SECRETS_PER_FUNCTION} secrets")
        return sorted(set(value))

    queue: Queue = Field(default_factory=Queue)

    @field_validator("cap_add")
    @classmethod
    def _cap_add(cls, value: list[str]) -> list[str]:
        caps = [c.upper().removeprefix("CAP_") for c in value]
        for cap in caps:
            if not CAPABILITY_RE.match(cap):
                raise ValueError(f"{cap!r} is not a capability name")
        return sorted(set(caps))

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if key.lower().startswith(RESERVED_LABEL_PREFIXES):
                raise ValueError(
                    f"{key!r}: labels starting with {', '.join(RESERVED_LABEL_PREFIXES)} "
                    "are reserved to the platform"
                )
            if not USER_LABEL_RE.match(key):
                raise ValueError(f"{key!r} is not a valid label key")
            if len(val) > 4096 or "\x00" in val:
                raise ValueError(f"{key!r}: value too long or contains a NUL byte")
        if len(value) > 64:
            raise ValueError("at most 64 labels")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("use 1-63 lowercase letters, digits and '-', starting with a letter")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not valid_image(value):
            raise ValueError(f"{value!r} is not a valid image reference")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not ENV_KEY_RE.match(key):
                raise ValueError(f"{key!r} is not a valid variable name")
            if key.upper().startswith(RESERVED_ENV_PREFIX) and key not in RUNTIME_ENV:
                raise ValueError(f"{key!r}: names starting with {RESERVED_ENV_PREFIX} are reserved")
            if "\x00" in val:
                raise ValueError(f"{key!r}: value contains a NUL byte")
        if sum(len(k) + len(v) for k, v in value.items()) > MAX_ENV_BYTES:
            raise ValueError(f"more than {MAX_ENV_BYTES} bytes of environment")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any("\x00" in arg for arg in value)):
            raise ValueError("must be a non-empty list of arguments without NUL bytes")
        return value

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str | None) -> str | None:
        if value is not None and not RUNTIME_RE.match(value):
            raise ValueError(f"{value!r} is not a runtime name")
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus_not_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # pydantic would take True for 1
            raise ValueError('use "all", a count, or a list of device ids')
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: str | int | list[str] | None) -> str | int | list[str] | None:
        if isinstance(value, str) and value != "all":
            raise ValueError('a string must be "all"')
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("a count must be 1-64")
        if isinstance(value, list) and not (value and all(GPU_ID_RE.match(v) for v in value)):
            raise ValueError("device ids must be a non-empty list of ids")
        return value

    @model_validator(mode="after")
    def _scale_bounds(self) -> FunctionSpec:
        if self.min_scale > self.max_scale:
            raise ValueError(
                f"min_scale ({self.min_scale}) must not be above max_scale ({self.max_scale})"
            )
        return self

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, value: str) -> str:
        if not value.startswith("/") or len(value) > 1024 or any(c in value for c in " \r\n\t"):
            raise ValueError("must be an absolute URL path without whitespace")
        return value


def parse_spec(data: object) -> FunctionSpec:
    """Validate untrusted input into a spec, or raise InvalidSpec naming the field."""
    try:
        spec = FunctionSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            reason = "unknown field"
        raise InvalidSpec(field, reason) from exc
    check_new_name(spec.name)  # here, not in the model, which also reads labels back
    return spec
