"""The OpenFaaS gateway API (what faas-cli speaks), beside /api/v1.

    /healthz                                  unauthenticated
    /system/functions                         GET list, POST deploy, PUT update, DELETE
    /system/function/{name}                   GET
    /system/scale-function/{name}             POST {"serviceName", "replicas"} -> 202
    /system/info, /system/namespaces, /system/logs (NDJSON)
    /system/secrets                           GET list, POST create, PUT update, DELETE
    /function/{name}.{namespace}[/path]       invoke, namespace = ours

Shapes follow openfaas/faas-provider's types (FunctionDeployment,
FunctionStatus, logs.Message). The /system routes take HTTP Basic (user
`admin`, the admin token as password: `faas-cli login`) or the Bearer token.
Bad input answers 400 as OpenFaaS does (where /api/v1 answers 422), with our
JSON error body naming the OpenFaaS field. What maps to what is in
docs/openfaas.md; the mapping itself is the pure functions below.

One namespace: ours (FAAS_NAMESPACE). Requests may also name `openfaas-fn`,
faasd's and OpenFaaS' default, so stack files and scripts written for them
work unchanged; answers always name ours.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hmac
import json
import platform
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from loguru import logger
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import __version__, auth, labels, secretstore
from .api import counted
from .autoscaler import Autoscaler
from .body import read_json
from .config import Settings
from .errors import FaasError, FunctionExists, FunctionNotFound, InvalidSpec
from .invoke import METHODS
from .lifecycle import Lifecycle
from .provider import Function, State, Usage
from .proxy import Proxy
from .scaler import Scaler
from .spec import NAME_RE, FunctionSpec, check_name, memory_bytes, parse_spec
from .streams import replica_lines
from .throttle import Throttle, client_address

# faasd's and OpenFaaS' default function namespace: accepted as an alias of ours.
OPENFAAS_NAMESPACE = "openfaas-fn"
# faasd keeps a function's annotations as labels under this prefix; so do we.
ANNOTATION_PREFIX = "com.openfaas.annotations."
# OpenFaaS' annotation for the readiness path; the watchdogs serve /_/health.
HEALTH_ANNOTATION = "com.openfaas.health.http.path"
WATCHDOG_HEALTH = "/_/health"
# The classic watchdog's command (FunctionDeployment.envProcess).
FPROCESS = "fprocess"
ADMIN_USER = "admin"
REALM = 'Basic realm="faas"'

# FunctionDeployment's fields. Empty values ("", [], {}, null: what Go's
# encoder sends for unset fields without omitempty) count as absent.
DEPLOYMENT_FIELDS = frozenset(
    {
        "service", "image", "namespace", "envProcess", "envVars", "constraints", "secrets",
        "labels", "annotations", "limits", "requests", "readOnlyRootFilesystem",
    }
)  # fmt: skip
# Our spec's fields as OpenFaaS names them, for error messages.
FIELD_NAMES = {
    "name": "service",
    "image": "image",
    "env": "envVars",
    "labels": "labels",
    "resources.memory": "limits.memory",
    "resources.cpus": "limits.cpu",
    "read_only": "readOnlyRootFilesystem",
    "health_path": f"annotations.{HEALTH_ANNOTATION}",
    "secrets": "secrets",
}
# types.Secret: the value as text, or rawValue ([]byte, which Go's JSON encodes as base64).
SECRET_FIELDS = frozenset({"name", "namespace", "value", "rawValue"})
# Spec fields OpenFaaS cannot express: an update through this API keeps them
# as they are (an invoke-key function must not turn public on `faas-cli deploy`).
KEPT_ON_UPDATE = (
    "port", "command", "runtime", "gpus", "auth", "cap_add", "limits", "concurrency", "queue",
    "spread",
)  # fmt: skip

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
}  # fmt: skip
_CPU = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m)?$")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # Go's strconv.ParseBool

Endpoint = Callable[[Request], Awaitable[Response]]


# --- the mapping (pure) ---------------------------------------------------------


def memory_from_quantity(value: str) -> str:
    """A Kubernetes memory quantity ("128Mi", "1G", "0.5Gi", bytes) as our size ("128m")."""
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise InvalidSpec("limits.memory", f"{value!r} is not a quantity like 128Mi or 1Gi")
    try:
        exact = Decimal(match[1]) * _UNITS[match[2]]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise InvalidSpec("limits.memory", f"{value!r} is not a number") from exc
    if exact != exact.to_integral_value() or exact <= 0:
        raise InvalidSpec("limits.memory", f"{value!r} is not a whole, positive number of bytes")
    size = int(exact)
    for suffix, unit in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def quantity_from_memory(value: str) -> str:
    """Our size ("128m") as a Kubernetes quantity ("128Mi")."""
    size = memory_bytes(value)
    for suffix, unit in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def cpus_from_quantity(value: str) -> float:
    """A CPU quantity ("100m" millicores, "0.5", "2") as cores."""
    match = _CPU.match(value.strip())
    cores = float(match[1]) / (1000 if match[2] else 1) if match else 0.0
    if not cores > 0:
        raise InvalidSpec("limits.cpu", f"{value!r} is not a CPU quantity like 500m or 0.5")
    return cores


def quantity_from_cpus(cores: float) -> str:
    """Cores as a CPU quantity: whole cores as "2", the rest in millicores ("500m")."""
    return str(int(cores)) if cores == int(cores) else f"{round(cores * 1000)}m"


def _empty(value: object) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _str_map(body: Mapping[str, object], field: str) -> dict[str, str]:
    value = body.get(field) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidSpec(field, "must be an object of strings")
    return dict(value)


def check_namespace(given: object, ours: str) -> None:
    """Refuse a namespace other than ours (or the `openfaas-fn` alias)."""
    if not _empty(given) and given not in (ours, OPENFAAS_NAMESPACE):
        raise InvalidSpec("namespace", f"{given!r} is not a namespace here; use {ours!r}")


def spec_from_deployment(
    body: object, namespace: str, existing: FunctionSpec | None = None
) -> FunctionSpec:
    """A FunctionDeployment as our spec; InvalidSpec naming the OpenFaaS field
    for what it cannot honour. `existing`: the function an update replaces,
    whose fields OpenFaaS cannot express are kept (`KEPT_ON_UPDATE`)."""
    if not isinstance(body, dict):
        raise InvalidSpec("", "send a FunctionDeployment object")
    given = {k: v for k, v in body.items() if not _empty(v)}
    _refuse_unhonoured(given, namespace)
    annotations = _str_map(given, "annotations")
    resources = _resources(given)
    read_only = given.get("readOnlyRootFilesystem", False)
    if not isinstance(read_only, bool):
        raise InvalidSpec("readOnlyRootFilesystem", "must be true or false")
    data: dict[str, object] = {}
    if existing is not None:
        data.update(existing.model_dump(include=set(KEPT_ON_UPDATE)))
        r = existing.resources
        resources = {"pids": r.pids, "ulimits": r.ulimits, **resources}
    data.update(
        name=given["service"],
        image=given["image"],
        env=_env(given),
        labels={**_labels(given), **{ANNOTATION_PREFIX + k: v for k, v in annotations.items()}},
        resources=resources,
        read_only=read_only,
        health_path=annotations.get(HEALTH_ANNOTATION, WATCHDOG_HEALTH),
        secrets=_secret_names(given),
        constraints=_str_list(given, "constraints"),
    )
    try:
        return parse_spec(data)
    except InvalidSpec as exc:
        raise _renamed(exc) from exc


def _refuse_unhonoured(given: Mapping[str, object], namespace: str) -> None:
    """Unknown fields, and the ones we cannot honour, named in a 400."""
    unknown = sorted(set(given) - DEPLOYMENT_FIELDS)
    if unknown:
        raise InvalidSpec(unknown[0], "unknown field")
    check_namespace(given.get("namespace"), namespace)
    if "requests" in given:
        raise InvalidSpec(
            "requests", "resource requests are not supported (no scheduler); set limits"
        )
    for field in ("service", "image"):
        if not isinstance(given.get(field), str):
            raise InvalidSpec(field, "required, a string")


def _str_list(given: Mapping[str, object], field: str) -> list[str]:
    found = given.get(field, [])
    if not isinstance(found, list) or not all(isinstance(n, str) for n in found):
        raise InvalidSpec(field, "must be a list of strings")
    return found


def _secret_names(given: Mapping[str, object]) -> list[str]:
    names = given.get("secrets", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidSpec("secrets", "must be a list of secret names")
    return names


def _env(given: Mapping[str, object]) -> dict[str, str]:
    """envVars, with envProcess as the watchdog's `fprocess` variable."""
    env = _str_map(given, "envVars")
    process = given.get("envProcess")
    if process is not None:
        if not isinstance(process, str):
            raise InvalidSpec("envProcess", "must be a string")
        env.setdefault(FPROCESS, process)  # envVars' own fprocess wins, as in faasd
    return env


def _labels(given: Mapping[str, object]) -> dict[str, str]:
    user_labels = _str_map(given, "labels")
    for key in user_labels:
        if key.startswith(ANNOTATION_PREFIX):
            raise InvalidSpec(f"labels.{key}", f"{ANNOTATION_PREFIX}* is kept for annotations")
    return user_labels


def _resources(given: Mapping[str, object]) -> dict[str, object]:
    """`limits` as our resources (memory, cpus)."""
    limits = given.get("limits", {})
    if not isinstance(limits, dict) or not set(limits) <= {"memory", "cpu"}:
        raise InvalidSpec("limits", 'must be {"memory"?: "128Mi", "cpu"?: "500m"}')
    resources: dict[str, object] = {}
    for key, value in limits.items():
        if _empty(value):
            continue
        if not isinstance(value, str):
            raise InvalidSpec(f"limits.{key}", "must be a string")
        if key == "memory":
            resources["memory"] = memory_from_quantity(value)
        else:
            resources["cpus"] = cpus_from_quantity(value)
    return resources


def _renamed(exc: InvalidSpec) -> InvalidSpec:
    """The error with our field's name replaced by OpenFaaS' (labels.x stays labels.x)."""
    head, dot, rest = exc.field.partition(".")
    field = FIELD_NAMES.get(exc.field) or (FIELD_NAMES.get(head, head) + dot + rest)
    return InvalidSpec(field, exc.reason)


def function_status(
    function: Function, namespace: str, invocations: float, usage: Usage | None
) -> dict[str, object]:
    """The FunctionStatus of a function (openfaas/faas-provider types)."""
    spec = function.spec
    env = dict(spec.env)
    process = env.pop(FPROCESS, None)
    user_labels = {k: v for k, v in spec.labels.items() if not k.startswith(ANNOTATION_PREFIX)}
    annotations = {
        k.removeprefix(ANNOTATION_PREFIX): v
        for k, v in spec.labels.items()
        if k.startswith(ANNOTATION_PREFIX)
    }
    limits: dict[str, str] = {}
    if spec.resources.memory:
        limits["memory"] = quantity_from_memory(spec.resources.memory)
    if spec.resources.cpus:
        limits["cpu"] = quantity_from_cpus(spec.resources.cpus)
    status: dict[str, object] = {
        "name": spec.name,
        "image": spec.image,
        "namespace": namespace,
        "envProcess": process or "",
        "envVars": env,
        "labels": user_labels,
        "annotations": annotations,
        "limits": limits,
        "requests": {},
        "readOnlyRootFilesystem": spec.read_only,
        "secrets": list(spec.secrets),
        "constraints": list(spec.constraints),
        "invocationCount": invocations,
        "replicas": len(function.replicas),
        "availableReplicas": len(function.addresses),
        "createdAt": function.created.isoformat().replace("+00:00", "Z"),
    }
    if usage is not None:
        status["usage"] = {"totalMemoryBytes": usage.memory_bytes}
    return status


def log_message(name: str, namespace: str, instance: str, line: str) -> dict[str, object]:
    """One `docker logs --timestamps` line as an OpenFaaS log message."""
    stamp, _, text = line.partition(" ")
    return {
        "name": name,
        "namespace": namespace,
        "instance": instance,
        "timestamp": stamp,
        "text": text,
    }


def parse_since(raw: str) -> int:
    """An RFC 3339 time as Unix seconds (what the engine's `since` takes)."""
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise InvalidSpec("since", f"{raw!r} is not an RFC 3339 time") from exc
    if moment.tzinfo is None:
        raise InvalidSpec("since", f"{raw!r} has no time zone (RFC 3339)")
    return max(0, int(moment.timestamp()))


def basic_matches(authorization: str | None, password: str) -> bool:
    """Constant-time check of `Authorization: Basic admin:<password>`."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not password:
        return False
    try:
        user, sep, given = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    user_ok = hmac.compare_digest(user, ADMIN_USER.encode())
    password_ok = hmac.compare_digest(given, password.encode())
    return bool(sep) and user_ok and password_ok


# --- the endpoints --------------------------------------------------------------


def _git_sha() -> str:
    """The checkout's commit when the package runs from one (else "unknown")."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        )
        return done.stdout.strip() or "unknown"
    return "unknown"


class OpenFaasApi:
    """The OpenFaaS gateway's routes, guarded (Basic or Bearer) where OpenFaaS guards."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        scaler: Scaler,
        autoscaler: Autoscaler,
        settings: Settings,
        token: str,
        throttle: Throttle,
        proxy: Proxy,
    ) -> None:
        self.lifecycle = lifecycle
        self.scaler = scaler
        self.autoscaler = autoscaler
        self.namespace = settings.namespace
        self.max_body = settings.api_max_body_bytes
        self.token = token
        self.throttle = throttle
        self.proxy = proxy
        self.metrics = lifecycle.metrics
        # Where the web entrypoint listens: `.namespace` invokes go back through
        # Traefik, so the function's own router (limits, key check) serves them.
        self.traefik = settings.traefik_web_address
        self.sha = _git_sha()

    def routes(self) -> list[Route]:
        guarded = [
            Route("/system/functions", self.list_functions, methods=["GET"]),
            Route("/system/functions", self.deploy, methods=["POST"]),
            Route("/system/functions", self.update, methods=["PUT"]),
            Route("/system/functions", self.delete, methods=["DELETE"]),
            Route("/system/function/{name}", self.get_function, methods=["GET"]),
            Route("/system/scale-function/{name}", self.scale, methods=["POST"]),
            Route("/system/info", self.info, methods=["GET"]),
            Route("/system/namespaces", self.namespaces, methods=["GET"]),
            Route("/system/logs", self.logs, methods=["GET"]),
            Route("/system/secrets", self.list_secrets, methods=["GET"]),
            Route("/system/secrets", self.create_secret, methods=["POST"]),
            Route("/system/secrets", self.update_secret, methods=["PUT"]),
            Route("/system/secrets", self.delete_secret, methods=["DELETE"]),
        ]
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            *(
                Route(r.path, self._guard(r.endpoint), methods=sorted(r.methods or ()))
                for r in guarded
            ),
            Route("/function/{name}.{namespace}", self.invoke, methods=METHODS),
            Route("/function/{name}.{namespace}/{path:path}", self.invoke, methods=METHODS),
        ]

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        """Basic (admin + token) or Bearer; 401 with a Basic challenge, so that
        browsers and faas-cli know what to send. Bad input answers 400."""

        async def guarded(request: Request) -> Response:
            client = client_address(request)
            self.throttle.check(client)
            authorization = request.headers.get("authorization")
            if not (
                basic_matches(authorization, self.token)
                or auth.bearer_matches(authorization, self.token)
            ):
                if authorization:
                    self.throttle.failed(client, "admin credentials")
                return JSONResponse(
                    {
                        "error": "missing or wrong credentials (faas-cli login: user admin, "
                        "the admin token as password; or Authorization: Bearer)",
                        "detail": None,
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": REALM},
                )
            self.throttle.succeeded(client)
            try:
                return await endpoint(request)
            except InvalidSpec as exc:  # OpenFaaS answers bad input with 400
                return JSONResponse({"error": exc.message, "detail": exc.detail()}, 400)

        return guarded

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request) -> Response:
        version = {"sha": self.sha, "release": __version__, "commit_message": ""}
        return JSONResponse(
            {
                "provider": {"provider": "faas", "orchestration": "docker", "version": version},
                "version": version,
                "arch": platform.machine(),
            }
        )

    async def namespaces(self, request: Request) -> Response:
        return JSONResponse([self.namespace])

    async def _invocations(self) -> dict[str, float]:
        router = self.lifecycle.router
        if router is None:
            return {}
        try:
            return await run_in_threadpool(router.request_counts)
        except FaasError as exc:  # a listing must not fail for want of a counter
            logger.warning("no invocation counts: {}", exc)
            return {}

    def _status(self, function: Function, counts: Mapping[str, float]) -> dict[str, object]:
        name = function.spec.name
        usage = self.metrics.snapshot.resources.get(name)
        invocations = counts.get(labels.service_name(name, self.lifecycle.settings.provider), 0.0)
        return function_status(function, self.namespace, invocations, usage)

    async def list_functions(self, request: Request) -> Response:
        check_namespace(request.query_params.get("namespace"), self.namespace)
        functions = await run_in_threadpool(self.lifecycle.list)
        counts = await self._invocations()
        return JSONResponse(
            [self._status(f, counts) for f in functions if f.state is not State.INVALID]
        )

    async def get_function(self, request: Request) -> Response:
        check_namespace(request.query_params.get("namespace"), self.namespace)
        name = check_name(request.path_params["name"])
        function = await run_in_threadpool(self.lifecycle.get, name)
        return JSONResponse(self._status(function, await self._invocations()))

    async def deploy(self, request: Request) -> Response:
        """POST: a new function (409 if it exists; faas-cli updates with PUT)."""
        spec = spec_from_deployment(await read_json(request, self.max_body), self.namespace)
        try:
            await run_in_threadpool(self.lifecycle.get, spec.name)
        except FunctionNotFound:
            pass
        else:
            raise FunctionExists(spec.name)
        return await self._deploy(spec, 202)

    async def update(self, request: Request) -> Response:
        """PUT: replace a function (404 if missing: faas-cli then POSTs)."""
        body = await read_json(request, self.max_body)
        spec = spec_from_deployment(body, self.namespace)  # bad input: 400 before 404
        existing = await run_in_threadpool(self.lifecycle.get, spec.name)
        spec = spec_from_deployment(body, self.namespace, existing.spec)
        return await self._deploy(spec, 200)

    async def _deploy(self, spec: FunctionSpec, status: int) -> Response:
        logger.info("deploying {} from {} (OpenFaaS API)", spec.name, spec.image)
        with counted(self.metrics.deploys):
            function = await run_in_threadpool(self.lifecycle.deploy, spec)
        return JSONResponse(self._status(function, {}), status_code=status)

    async def delete(self, request: Request) -> Response:
        body = await read_json(request, self.max_body)
        name = body.get("functionName") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise InvalidSpec("functionName", 'send {"functionName": "..."}')
        assert isinstance(body, dict)
        given = body.get("namespace") or request.query_params.get("namespace")
        check_namespace(given, self.namespace)
        with counted(self.metrics.removes):
            await run_in_threadpool(self.lifecycle.remove, check_name(name))
        return Response(status_code=200)

    async def scale(self, request: Request) -> Response:
        """Run `replicas` replicas (0: stop, which OpenFaaS CE refuses); 202."""
        name = check_name(request.path_params["name"])
        body = await read_json(request, self.max_body)
        if not isinstance(body, dict):
            raise InvalidSpec("", 'send {"serviceName": "...", "replicas": n}')
        replicas = body.get("replicas")
        if type(replicas) is not int or replicas < 0:
            raise InvalidSpec("replicas", "must be a whole number, 0 or more")
        if body.get("serviceName") not in (None, "", name):
            raise InvalidSpec("serviceName", f"does not match the URL ({name!r})")
        check_namespace(body.get("namespace"), self.namespace)
        function = await run_in_threadpool(self.lifecycle.get, name)
        await self.autoscaler.scale(function, replicas)
        return Response(status_code=202)

    async def logs(self, request: Request) -> Response:
        """NDJSON log messages of the function's instances (each replica's container)."""
        query = request.query_params
        check_namespace(query.get("namespace"), self.namespace)
        name = check_name(query.get("name", ""))
        raw_tail = query.get("tail", "")
        if raw_tail and not raw_tail.lstrip("-").isdigit():
            raise InvalidSpec("tail", "must be a whole number")
        tail = int(raw_tail) if raw_tail else 0
        since = parse_since(query["since"]) if query.get("since") else None
        follow = query.get("follow", "") in _TRUE
        function = await run_in_threadpool(self.lifecycle.get, name)
        ids = [i.id for i in function.replicas] or [function.container_id]
        wanted = query.get("instance")
        if wanted:
            ids = [i for i in ids if i.startswith(wanted)]
            if not ids:
                raise FunctionNotFound(f"{name} instance {wanted}")
        opened = functools.partial(
            self.lifecycle.provider.logs,
            follow=follow,
            tail=tail if tail > 0 else None,
            since=since,
        )
        streams = [(i[:12], await run_in_threadpool(opened, i)) for i in ids]
        messages = (
            log_message(name, self.namespace, instance, line)
            async for instance, line in replica_lines(streams, follow=follow, tail=tail)
        )
        return StreamingResponse(_encode(messages), media_type="application/x-ndjson")

    async def list_secrets(self, request: Request) -> Response:
        check_namespace(request.query_params.get("namespace"), self.namespace)
        names = await run_in_threadpool(self.lifecycle.secrets.names)
        return JSONResponse([{"name": n, "namespace": self.namespace} for n in names])

    async def _secret(self, request: Request, *, value: bool) -> tuple[str, bytes]:
        """A types.Secret body: its name, and (with `value`) its value."""
        body = await read_json(request, self.max_body)
        if not isinstance(body, dict):
            raise InvalidSpec("", 'send {"name": "...", "value": "..." or "rawValue": "<base64>"}')
        unknown = sorted(set(body) - SECRET_FIELDS)
        if unknown:
            raise InvalidSpec(str(unknown[0])[:80], "unknown field")
        check_namespace(
            body.get("namespace") or request.query_params.get("namespace"), self.namespace
        )
        name = secretstore.check_secret_name(body.get("name"))
        return name, secretstore.value_from(body, "value", "rawValue") if value else b""

    async def create_secret(self, request: Request) -> Response:
        """POST: a new secret (201); 409 if it exists (faas-cli says so)."""
        name, value = await self._secret(request, value=True)
        await run_in_threadpool(self.lifecycle.secrets.create, name, value)
        logger.info("created secret {} (OpenFaaS API)", name)  # never the value
        return Response(status_code=201)

    async def update_secret(self, request: Request) -> Response:
        """PUT: a new value (200), which reaches the functions using it; 404 if missing."""
        name, value = await self._secret(request, value=True)
        await run_in_threadpool(self.lifecycle.update_secret, name, value)
        return Response(status_code=200)

    async def delete_secret(self, request: Request) -> Response:
        """DELETE {"name"}: 200; 404 if missing; 409 naming the functions still using it."""
        name, _ = await self._secret(request, value=False)
        await run_in_threadpool(self.lifecycle.remove_secret, name)
        return Response(status_code=200)

    async def invoke(self, request: Request) -> Response:
        """`/function/<name>.<namespace>/...`: back through Traefik as
        `/function/<name>/...`, so the function's own router serves it (its rate,
        in-flight and key checks; the gateway's cold path when it is stopped)."""
        name, namespace = request.path_params["name"], request.path_params["namespace"]
        if namespace not in (self.namespace, OPENFAAS_NAMESPACE) or not NAME_RE.match(name):
            raise FunctionNotFound(f"{name}.{namespace}")
        raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
        prefix = f"{labels.function_path(name)}.{namespace}"
        rest = raw[len(prefix) :].decode("latin-1")
        return await self.proxy.forward(
            request, self.traefik, labels.function_path(name) + rest, prefix
        )


async def _encode(messages: AsyncIterator[dict[str, object]]) -> AsyncIterator[bytes]:
    async for message in messages:
        yield json.dumps(message).encode() + b"\n"
