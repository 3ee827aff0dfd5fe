"""The gateway: the management REST API under /api/v1, guarded by the admin token.

Run with `uvicorn faas.gateway:create_app --factory`; `faas up` does that.
It keeps no state: every answer is read from the provider (Docker labels), so
a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import IO, TypeVar, cast

from loguru import logger
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import __version__, auth, labels, openapi
from .body import parse_json, read_body, read_json
from .config import Settings
from .docker_provider import DockerProvider
from .errors import (
    BuildFailed,
    DeployFailed,
    FaasError,
    Forbidden,
    FunctionExists,
    FunctionNotFound,
    GatewayTimeout,
    ImageNotFound,
    InvalidSpec,
    PayloadTooLarge,
    ProviderError,
    RegistryUnreachable,
    TooManyRequests,
    Unauthorized,
    WakeFailed,
)
from .keys import Keys, check_kid, presented_key
from .logging import configure_logging
from .metrics import CONTENT_TYPE
from .provider import Function, LogStream, Provider, State
from .proxy import Proxy
from .sampler import Sampler
from .scaler import Scaler
from .spec import FunctionSpec, check_name, parse_spec, valid_image
from .stats import function_rows, parse_traefik
from .throttle import Throttle
from .traefik import Drains, TraefikRouter

# One table from error type to HTTP status.
STATUS: dict[type[FaasError], int] = {
    InvalidSpec: 422,
    FunctionNotFound: 404,
    FunctionExists: 409,
    ImageNotFound: 422,
    RegistryUnreachable: 502,
    DeployFailed: 502,
    BuildFailed: 422,
    Unauthorized: 401,
    Forbidden: 403,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
    ProviderError: 503,
    WakeFailed: 503,
    GatewayTimeout: 504,
}

# Longest lifetime of an invoke key, in seconds (ten years).
MAX_KEY_TTL = 10 * 365 * 24 * 3600
# The request id header, lower case as ASGI gives header names.
CALL_ID = "x-call-id"
# A caller's request id is kept only when it matches, as in Traefik's callid
# middleware (traefik/plugins-local/src/faas/callid), which sets it first on
# every request through Traefik.
SANE_CALL_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# How long a caller should wait before retrying after a failed wake.
RETRY_AFTER = "1"

Endpoint = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
_END = object()


def call_id(given: str | None) -> str:
    """The caller's request id when sane, else a new one (32 hex digits)."""
    if given is not None and SANE_CALL_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def error_response(exc: FaasError) -> JSONResponse:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, WakeFailed):
        headers = {"Retry-After": RETRY_AFTER}
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(math.ceil(exc.retry_after))}
    return JSONResponse(
        {"error": exc.message, "detail": exc.detail()}, status_code=status, headers=headers
    )


class Api:
    """The endpoints, bound to one provider and one admin token."""

    def __init__(
        self,
        provider: Provider,
        token: str,
        scaler: Scaler,
        keys: Keys,
        settings: Settings,
        router: TraefikRouter | None = None,
    ) -> None:
        self.provider = provider
        self.token = token
        self.base_image = settings.base_image
        self.scaler = scaler
        self.keys = keys
        self.max_body = settings.max_body_bytes  # the platform default; a spec may set its own
        self.api_max_body = settings.api_max_body_bytes
        self.proxy = Proxy(settings.request_timeout)
        self.counters = scaler.metrics
        self.router = router
        self.throttle = Throttle.from_settings(settings)

    def admin(self, endpoint: Endpoint) -> Endpoint:
        """Wrap an endpoint: require the admin token, turn FaasError into JSON."""

        async def guarded(request: Request) -> Response:
            try:
                client = _client(request)
                self.throttle.check(client)
                authorization = request.headers.get("authorization")
                if not auth.bearer_matches(authorization, self.token):
                    if authorization:
                        self.throttle.failed(client, "admin token")
                    raise Unauthorized("missing or wrong admin token (Authorization: Bearer ...)")
                self.throttle.succeeded(client)
                return await endpoint(request)
            except FaasError as exc:
                return error_response(exc)

        return guarded

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi.document())

    async def metrics(self, request: Request) -> Response:
        """The gateway's Prometheus exposition (Traefik serves its own)."""
        return Response(self.counters.exposition(), media_type=CONTENT_TYPE)

    async def stats(self, request: Request) -> Response:
        """Per function: Traefik's request metrics joined with the gateway's numbers."""
        name = request.query_params.get("name")
        if name is not None:
            functions = [await run_in_threadpool(self.provider.get, check_name(name))]
        else:
            functions = await run_in_threadpool(self.provider.list)
        text = await run_in_threadpool(self.router.metrics_text) if self.router else ""
        rows = function_rows(
            functions, parse_traefik(text), self.scaler.starts, self.counters.snapshot.resources
        )
        return JSONResponse(rows)

    def _view(self, function: Function) -> dict[str, object]:
        view = function.to_json()
        if self.scaler.waking(function.spec.name):
            view["state"] = State.STARTING.value  # the engine says running; not ready yet
        return view

    async def list_functions(self, request: Request) -> Response:
        functions = await run_in_threadpool(self.provider.list)
        return JSONResponse([self._view(f) for f in functions])

    async def create_function(self, request: Request) -> Response:
        spec = parse_spec(await read_json(request, self.api_max_body))
        try:
            await run_in_threadpool(self.provider.get, spec.name)
        except FunctionNotFound:
            pass
        else:
            raise FunctionExists(spec.name)
        return await self._deploy(spec, status=201)

    async def get_function(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        function = await run_in_threadpool(self.provider.get, name)
        return JSONResponse(self._view(function))

    async def put_function(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        body = await read_json(request, self.api_max_body)
        if isinstance(body, dict) and body.setdefault("name", name) != name:
            raise InvalidSpec("name", f"does not match the URL ({name!r})")
        return await self._deploy(parse_spec(body), status=200)

    async def delete_function(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        with counted(self.counters.removes):
            await run_in_threadpool(self.provider.remove, name)
        return Response(status_code=204)

    async def logs(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        follow = request.query_params.get("follow", "false").lower() in ("1", "true", "yes")
        tail = _int_param(request, "tail")
        since = _int_param(request, "since")
        stream = await run_in_threadpool(
            lambda: self.provider.logs(name, follow=follow, tail=tail, since=since)
        )
        return StreamingResponse(_drain(stream), media_type="text/plain; charset=utf-8")

    async def scale(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        body = await read_json(request, self.api_max_body)
        replicas = body.get("replicas") if isinstance(body, dict) and len(body) == 1 else None
        if type(replicas) is not int or replicas not in (0, 1):
            raise InvalidSpec("replicas", 'send {"replicas": 0} or {"replicas": 1}')
        function = await run_in_threadpool(self.provider.get, name)
        if replicas == 0 and function.state is not State.STOPPED:
            await self.scaler.scale_down(name)
        elif replicas == 1 and function.state is not State.RUNNING:
            await self.scaler.wake(name)
        function = await run_in_threadpool(self.provider.get, name)
        return JSONResponse(function.to_json())

    def authorize(self, request: Request, name: str) -> None:
        """Let the admin token or a key for `name` through; raise Unauthorized/Forbidden,
        or TooManyRequests for a client locked out after failed keys."""
        client = _client(request)
        self.throttle.check(client)
        authorization = request.headers.get("authorization")
        faas_key = request.headers.get("x-faas-key")
        if auth.bearer_matches(authorization, self.token) or auth.bearer_matches(
            f"Bearer {faas_key}", self.token
        ):
            return
        key = presented_key(authorization, faas_key)
        try:
            self.keys.check(name, key)
        except (Unauthorized, Forbidden):
            if key:
                self.throttle.failed(client, f"invoke key for {name}")
            raise

    async def check_key(self, request: Request) -> Response:
        """Traefik's forwardAuth for `key` functions: 200 lets the request through."""
        try:
            self.authorize(request, check_name(request.path_params["name"]))
        except FaasError as exc:
            return error_response(exc)
        return Response(status_code=200)

    async def create_key(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        raw = await read_body(request, self.api_max_body)
        body = parse_json(raw) if raw.strip() else {}
        ttl = body.get("ttl") if isinstance(body, dict) and set(body) <= {"ttl"} else "bad"
        if ttl is not None and (type(ttl) is not int or not 1 <= ttl <= MAX_KEY_TTL):
            raise InvalidSpec(
                "ttl", f'send {{"ttl": seconds (1-{MAX_KEY_TTL})}} or {{"ttl": null}}'
            )
        await run_in_threadpool(self.provider.get, name)
        issued = self.keys.create(name, ttl)
        logger.info("created key {} for {}", issued.kid, name)  # the id only, never the key
        return JSONResponse(issued.to_json(), status_code=201)

    async def revoke_key(self, request: Request) -> Response:
        kid = check_kid(request.path_params["kid"])
        await run_in_threadpool(self.keys.revoke, kid)
        logger.info("revoked key {}", kid)
        return Response(status_code=204)

    def _guard_invoke(self, request: Request, spec: FunctionSpec) -> tuple[str, ...]:
        """Check a cold-path request as the function's own router would; returns
        the headers to strip before forwarding."""
        limit = self.max_body if spec.limits.max_body_bytes is None else spec.limits.max_body_bytes
        length = request.headers.get("content-length", "")
        if limit and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        if spec.auth != "key":
            return ()
        self.authorize(request, spec.name)
        return labels.KEY_HEADERS

    async def invoke(self, request: Request) -> Response:
        """A request for a function Traefik has no live route for: wake it, forward.

        The request id (`X-Call-Id`: the caller's, or Traefik's, when sane, else a
        new one) goes to the function, back to the caller in place of any the
        function sent, and into every log line of this request."""
        rid = call_id(request.headers.get(CALL_ID))
        with logger.contextualize(call_id=rid):
            response = await self._invoke(request, rid)
        response.raw_headers = [
            *((k, v) for k, v in response.raw_headers if k.lower() != CALL_ID.encode()),
            (CALL_ID.encode(), rid.encode()),
        ]
        return response

    async def _invoke(self, request: Request, rid: str) -> Response:
        name = request.path_params["name"]
        try:
            check_name(name)
            function = await run_in_threadpool(self.provider.get, name)
            strip = self._guard_invoke(request, function.spec)
            prefix = labels.function_path(name)
            raw = request.scope.get("raw_path") or request.url.path.encode()
            path = raw[len(prefix) :].decode("latin-1") or "/"
            arrived = time.monotonic()
            address, waited = await self.scaler.address(function)
            self.scaler.begin(name)
            response = await self.proxy.forward(
                request,
                address,
                path,
                prefix,
                done=lambda: self.scaler.end(name),
                strip=strip,
                headers=[(CALL_ID.encode(), rid.encode())],
            )
            if waited is not None:
                headers_at = time.monotonic()
                self.counters.cold_first_byte.observe(headers_at - arrived)
                self.counters.wake_phase.labels("first_byte").observe(headers_at - arrived - waited)
                # Standard timing header: lets callers (and make bench) see the cold start.
                response.raw_headers.append(
                    (b"server-timing", f"wake;dur={waited * 1000:.1f}".encode())
                )
            return response
        except InvalidSpec:
            return error_response(FunctionNotFound(name))
        except FaasError as exc:
            return error_response(exc)

    async def pull(self, request: Request) -> Response:
        """Pull an image unless present, streaming the engine's progress as JSON lines."""
        body = await read_json(request, self.api_max_body)
        if not isinstance(body, dict) or not set(body) <= {"image", "auth"}:
            raise InvalidSpec("", 'send {"image": "repo[:tag]", "auth"?: {"username", "password"}}')
        image, credentials = body.get("image"), body.get("auth")
        if not isinstance(image, str) or not valid_image(image):
            raise InvalidSpec("image", "not a valid image reference")
        if credentials is not None and not (
            isinstance(credentials, dict)
            and set(credentials) == {"username", "password"}
            and all(isinstance(v, str) for v in credentials.values())
        ):
            raise InvalidSpec("auth", 'must be {"username": "...", "password": "..."}')
        events = iter(self.provider.pull(image, credentials))
        first = await run_in_threadpool(next, events, None)  # fail as a plain 4xx
        return _ndjson(_prepend(first, events))

    async def load(self, request: Request) -> Response:
        """Load a docker-save or OCI archive sent as the body."""
        archive = await _spool(request, MAX_UPLOAD)
        with archive:
            images = await run_in_threadpool(self.provider.load, archive)
        return JSONResponse({"images": images})

    async def build(self, request: Request) -> Response:
        """Build the tar context in the body as faas/<name>:<content hash>, streaming output.

        The last JSON line is {"image": ...} or {"error": ..., "log": ...}; nothing is
        deployed here, so a failed build leaves the running version untouched.
        """
        name = check_name(request.path_params["name"])
        context = await _spool(request, MAX_UPLOAD)
        digest = hashlib.sha256()
        for block in iter(lambda: context.read(1 << 20), b""):
            digest.update(block)
        context.seek(0)
        tag = f"faas/{name}:{digest.hexdigest()[:12]}"
        # A handler template's Dockerfile starts FROM the platform's base image.
        args = {"BASE_IMAGE": self.base_image} if "template" in request.query_params else None

        async def lines() -> AsyncIterator[dict[str, object]]:
            try:
                async for line in _iterate(self.provider.build(context, tag, args)):
                    yield {"stream": line}
                yield {"image": tag}
            except FaasError as exc:
                yield {"error": exc.message, "detail": exc.detail()}
            finally:
                context.close()

        return _ndjson(lines())

    async def _deploy(self, spec: FunctionSpec, status: int) -> Response:
        logger.info("deploying {} from {}", spec.name, spec.image)
        with counted(self.counters.deploys):
            function = await run_in_threadpool(self.provider.deploy, spec)
        return JSONResponse(function.to_json(), status_code=status)


@contextmanager
def counted(counter: Counter) -> Iterator[None]:
    """Count one operation by outcome: `ok`, or `error` if it raised."""
    try:
        yield
    except BaseException:
        counter.labels("error").inc()
        raise
    counter.labels("ok").inc()


def _client(request: Request) -> str | None:
    """The caller's address: uvicorn takes it from X-Forwarded-For only when the peer
    is loopback, where Traefik is (its default FORWARDED_ALLOW_IPS), and Traefik
    replaces any X-Forwarded-For its own clients send."""
    return request.client.host if request.client else None


def _int_param(request: Request, key: str) -> int | None:
    raw = request.query_params.get(key)
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidSpec(key, "must be a non-negative integer")
    return int(raw)


# Largest build context or image archive the API accepts.
MAX_UPLOAD = 2 << 30


async def _spool(request: Request, limit: int) -> IO[bytes]:
    """The request body in a temporary file (memory first, disk when large)."""
    spool = tempfile.SpooledTemporaryFile(max_size=32 << 20)  # noqa: SIM115 - returned
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            spool.close()
            raise InvalidSpec("body", f"larger than {limit} bytes")
        spool.write(chunk)
    spool.seek(0)
    return cast(IO[bytes], spool)


async def _iterate(blocking: Iterable[T]) -> AsyncIterator[T]:
    """Walk a blocking iterator from async code, one step per worker thread."""
    items = iter(blocking)
    while True:
        item = await run_in_threadpool(next, items, _END)
        if item is _END:
            return
        yield cast(T, item)


async def _prepend(
    first: dict[str, object] | None, rest: Iterator[dict[str, object]]
) -> AsyncIterator[dict[str, object]]:
    try:
        if first is not None:
            yield first
            async for event in _iterate(rest):
                yield event
        yield {"status": "ready"}
    except FaasError as exc:
        yield {"error": exc.message, "detail": exc.detail()}


def _ndjson(events: AsyncIterator[dict[str, object]]) -> StreamingResponse:
    async def encode() -> AsyncIterator[bytes]:
        async for event in events:
            yield json.dumps(event).encode() + b"\n"

    return StreamingResponse(encode(), media_type="application/x-ndjson")


async def _drain(stream: LogStream) -> AsyncIterator[bytes]:
    """Relay a blocking log stream; closing it on disconnect frees its thread."""
    try:
        async for chunk in _iterate(stream):
            yield chunk
    finally:
        stream.close()


def build_app(
    provider: Provider,
    token: str,
    scaler: Scaler,
    keys: Keys,
    settings: Settings | None = None,
    router: TraefikRouter | None = None,
    sampler: Sampler | None = None,
) -> Starlette:
    api = Api(provider, token, scaler, keys, settings or Settings(), router)
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/api/v1/healthz", api.healthz),
        Route("/api/v1/openapi.json", api.admin(api.openapi)),
        # Unguarded on the gateway's own (loopback) port; through Traefik only with the token.
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/api/v1/metrics", api.admin(api.metrics), methods=["GET"]),
        Route("/api/v1/stats", api.admin(api.stats), methods=["GET"]),
        Route("/api/v1/functions", api.admin(api.list_functions), methods=["GET"]),
        Route("/api/v1/functions", api.admin(api.create_function), methods=["POST"]),
        Route("/api/v1/functions/{name}", api.admin(api.get_function), methods=["GET"]),
        Route("/api/v1/functions/{name}", api.admin(api.put_function), methods=["PUT"]),
        Route("/api/v1/functions/{name}", api.admin(api.delete_function), methods=["DELETE"]),
        Route("/api/v1/functions/{name}/logs", api.admin(api.logs), methods=["GET"]),
        Route("/api/v1/functions/{name}/scale", api.admin(api.scale), methods=["POST"]),
        Route("/api/v1/functions/{name}/build", api.admin(api.build), methods=["POST"]),
        Route("/api/v1/images/pull", api.admin(api.pull), methods=["POST"]),
        Route("/api/v1/images/load", api.admin(api.load), methods=["POST"]),
        Route("/api/v1/functions/{name}/keys", api.admin(api.create_key), methods=["POST"]),
        Route("/api/v1/keys/{kid}", api.admin(api.revoke_key), methods=["DELETE"]),
        Route("/api/v1/auth/{name}", api.check_key, methods=methods),
        Route("/function/{name}", api.invoke, methods=methods),
        Route("/function/{name}/{path:path}", api.invoke, methods=methods),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(provider.prepare)
        except FaasError as exc:
            # Not fatal: the engine may come later; every call says so meanwhile.
            logger.warning("could not prepare the engine: {}", exc)
        tasks = [asyncio.create_task(scaler.run())]
        if sampler is not None:
            tasks.append(asyncio.create_task(sampler.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await api.proxy.close()

    return Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_allowed},
        lifespan=lifespan,
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"no such endpoint: {request.url.path}", "detail": None}, 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"method {request.method} not allowed", "detail": None}, 405)


def create_app(settings: Settings | None = None) -> Starlette:
    """The app uvicorn serves: settings from FAAS_*, the Docker provider."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    api_url = settings.traefik_api
    router = None
    if api_url:
        drains = Drains(settings.dynamic_dir)
        drains.clear()  # a drain left by a crash would keep traffic on the gateway
        router = TraefikRouter(api_url, settings.ready_timeout, drains)
    provider = DockerProvider(settings, router=router)
    scaler = Scaler(provider, router, settings.scale_interval)
    keys = Keys.from_settings(settings)
    token = auth.admin_token(settings)
    sampler = Sampler(provider, scaler.metrics, settings.stats_interval, settings.stats_concurrency)
    return build_app(provider, token, scaler, keys, settings, router, sampler)
