"""The gateway: the management REST API under /api/v1, guarded by the admin token.

Run with `uvicorn faas.gateway:create_app --factory`; `faas up` does that.
It keeps no state: every answer is read from the provider (Docker labels), so
a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from loguru import logger
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import __version__, auth, labels, openapi
from .config import Settings
from .docker_provider import DockerProvider
from .errors import (
    DeployFailed,
    FaasError,
    FunctionExists,
    FunctionNotFound,
    ImageNotFound,
    InvalidSpec,
    ProviderError,
    Unauthorized,
    WakeFailed,
)
from .logging import configure_logging
from .metrics import CONTENT_TYPE
from .provider import Function, LogStream, Provider, State
from .proxy import Proxy
from .sampler import Sampler
from .scaler import Scaler
from .spec import FunctionSpec, check_name, parse_spec
from .stats import function_rows, parse_traefik
from .traefik import Drains, TraefikRouter

# One table from error type to HTTP status.
STATUS: dict[type[FaasError], int] = {
    InvalidSpec: 422,
    FunctionNotFound: 404,
    FunctionExists: 409,
    ImageNotFound: 422,
    DeployFailed: 502,
    Unauthorized: 401,
    ProviderError: 503,
    WakeFailed: 503,
}

# The request id header, lower case as ASGI gives header names.
CALL_ID = "x-call-id"

# How long a caller should wait before retrying after a failed wake.
RETRY_AFTER = "1"

Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(exc: FaasError) -> JSONResponse:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, WakeFailed):
        headers = {"Retry-After": RETRY_AFTER}
    return JSONResponse(
        {"error": exc.message, "detail": exc.detail()}, status_code=status, headers=headers
    )


class Api:
    """The endpoints, bound to one provider and one admin token."""

    def __init__(
        self, provider: Provider, token: str, scaler: Scaler, router: TraefikRouter | None = None
    ) -> None:
        self.provider = provider
        self.token = token
        self.scaler = scaler
        self.counters = scaler.metrics
        self.router = router
        self.proxy = Proxy()

    def admin(self, endpoint: Endpoint) -> Endpoint:
        """Wrap an endpoint: require the admin token, turn FaasError into JSON."""

        async def guarded(request: Request) -> Response:
            try:
                if not auth.bearer_matches(request.headers.get("authorization"), self.token):
                    raise Unauthorized("missing or wrong admin token (Authorization: Bearer ...)")
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
        spec = parse_spec(await _json_body(request))
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
        body = await _json_body(request)
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
        body = await _json_body(request)
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

    async def invoke(self, request: Request) -> Response:
        """A request for a function Traefik has no live route for: wake it, forward.

        The request id (`X-Call-Id`, made up if the caller sent none) goes to the
        function, back to the caller, and into every log line of this request."""
        call_id = request.headers.get(CALL_ID) or uuid.uuid4().hex
        with logger.contextualize(call_id=call_id):
            response = await self._invoke(request, call_id)
        if CALL_ID.encode() not in (k.lower() for k, _ in response.raw_headers):
            response.raw_headers.append((CALL_ID.encode(), call_id.encode("latin-1")))
        return response

    async def _invoke(self, request: Request, call_id: str) -> Response:
        name = request.path_params["name"]
        try:
            check_name(name)
            prefix = labels.function_path(name)
            raw = request.scope.get("raw_path") or request.url.path.encode()
            path = raw[len(prefix) :].decode("latin-1") or "/"
            arrived = time.monotonic()
            address, waited = await self.scaler.address(name)
            self.scaler.begin(name)
            response = await self.proxy.forward(
                request,
                address,
                path,
                prefix,
                done=lambda: self.scaler.end(name),
                headers=[(CALL_ID.encode(), call_id.encode("latin-1"))],
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


async def _json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSpec("", f"request body is not valid JSON: {exc}") from exc


def _int_param(request: Request, key: str) -> int | None:
    raw = request.query_params.get(key)
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidSpec(key, "must be a non-negative integer")
    return int(raw)


async def _drain(stream: LogStream) -> AsyncIterator[bytes]:
    """Relay a blocking log stream; closing it on disconnect frees its thread."""
    chunks = iter(stream)
    try:
        while True:
            chunk = await run_in_threadpool(next, chunks, None)
            if chunk is None:
                return
            yield chunk
    finally:
        stream.close()


def build_app(
    provider: Provider,
    token: str,
    scaler: Scaler,
    router: TraefikRouter | None = None,
    sampler: Sampler | None = None,
) -> Starlette:
    api = Api(provider, token, scaler, router)
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
        Route("/function/{name}", api.invoke, methods=methods),
        Route("/function/{name}/{path:path}", api.invoke, methods=methods),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
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
    sampler = Sampler(provider, scaler.metrics, settings.stats_interval, settings.stats_concurrency)
    return build_app(provider, auth.admin_token(settings), scaler, router, sampler)
