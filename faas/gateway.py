"""The gateway app: wiring, the admin token, and errors as HTTP answers.

Run with `uvicorn faas.gateway:create_app --factory`; `faas up` does that.

    faas.api        management API (/api/v1, admin token)
    faas.invoke     cold path (/function/<name>) and Traefik's key check
    faas.openfaas   the OpenFaaS gateway API (/system/*, /healthz) for faas-cli
    faas.lifecycle  deploy, wake, drain, rollout, remove  ->  Provider / Router
    faas.scaler     idle detection;  faas.sampler  resource samples
    faas.nodes      a lost node's instances fenced off before the engine notices

Endpoints raise `faas.errors`; `STATUS` below is the one table from error
class to HTTP status, applied by Starlette's exception handlers.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from loguru import logger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import auth, traefik
from .api import ManagementApi
from .autoscaler import Autoscaler
from .broker import Broker, embedded_token
from .calls_api import CallsApi
from .config import Settings
from .docker_provider import DockerProvider
from .errors import (
    BuildFailed,
    CallInFlight,
    CallNotFound,
    DeployFailed,
    FaasError,
    Forbidden,
    FunctionExists,
    FunctionNotFound,
    GatewayTimeout,
    ImageNotFound,
    InvalidCallback,
    InvalidSpec,
    NoRoom,
    PayloadTooLarge,
    ProviderError,
    QueueFull,
    QueueUnavailable,
    RegistryUnreachable,
    SecretExists,
    SecretInUse,
    SecretNotFound,
    TooManyRequests,
    Unauthorized,
    WakeFailed,
)
from .invoke import CALL_ID, Invoker
from .keys import Keys
from .lifecycle import Lifecycle
from .logging import configure_logging
from .nodes import NodeWatch
from .openfaas import OpenFaasApi
from .provider import Provider, Router
from .proxy import Proxy
from .sampler import Sampler
from .scaler import Scaler
from .swarm_provider import SwarmProvider
from .throttle import Throttle, client_address
from .traefik import Drains, TraefikRouter
from .worker import AsyncMetrics, Workers

# One table from error type to HTTP status.
STATUS: dict[type[FaasError], int] = {
    InvalidSpec: 422,
    FunctionNotFound: 404,
    FunctionExists: 409,
    SecretNotFound: 404,
    SecretExists: 409,
    SecretInUse: 409,
    NoRoom: 409,
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
    InvalidCallback: 400,
    QueueUnavailable: 503,
    QueueFull: 429,
    CallNotFound: 404,
    CallInFlight: 409,
}

# How long a caller should wait before retrying after a failed wake.
RETRY_AFTER = "1"

Endpoint = Callable[[Request], Awaitable[Response]]


def status_of(exc: FaasError) -> int:
    return next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)


async def error_response(request: Request, exc: Exception) -> Response:
    """A FaasError as its JSON answer (the exception handler of every FaasError)."""
    assert isinstance(exc, FaasError)
    status = status_of(exc)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, WakeFailed):
        headers["Retry-After"] = RETRY_AFTER
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(math.ceil(exc.retry_after))
    rid = getattr(request.state, "call_id", None)
    if rid is not None:  # a cold-path request: the caller gets the id the log lines carry
        headers[CALL_ID] = rid
    return JSONResponse(
        {"error": exc.message, "detail": exc.detail()}, status_code=status, headers=headers
    )


def admin(token: str, throttle: Throttle, endpoint: Endpoint) -> Endpoint:
    """`endpoint`, for callers with the admin token only (wrong ones are throttled)."""

    async def guarded(request: Request) -> Response:
        client = client_address(request)
        throttle.check(client)
        authorization = request.headers.get("authorization")
        if not auth.bearer_matches(authorization, token):
            if authorization:
                throttle.failed(client, "admin token")
            raise Unauthorized("missing or wrong admin token (Authorization: Bearer ...)")
        throttle.succeeded(client)
        return await endpoint(request)

    return guarded


def build_app(
    lifecycle: Lifecycle,
    token: str,
    keys: Keys,
    settings: Settings | None = None,
    *,
    scaler: Scaler | None = None,
    sampler: Sampler | None = None,
    proxy: Proxy | None = None,
    broker: Broker | None = None,
) -> Starlette:
    settings = settings or Settings()
    scaler = scaler or Scaler(lifecycle, settings.scale_interval)
    throttle = Throttle.from_settings(settings)
    autoscaler = Autoscaler.from_settings(lifecycle, scaler, settings)
    api = ManagementApi(lifecycle, scaler, autoscaler, keys, settings)
    invoker = Invoker(lifecycle, scaler, keys, token, settings, throttle, proxy)
    openfaas = OpenFaasApi(lifecycle, scaler, autoscaler, settings, token, throttle, invoker.proxy)
    broker = broker or Broker(
        settings.nats,
        settings.namespace,
        settings.async_ack_wait,
        settings.async_max_queue_bytes,
        token=None if settings.nats_url else embedded_token(settings),
    )
    metrics = AsyncMetrics(lifecycle.metrics.registry)
    workers = Workers(broker, invoker, lifecycle, settings, metrics)
    calls = CallsApi(invoker, workers, settings.namespace)
    routes = [
        Route("/api/v1/healthz", api.healthz, methods=["GET"]),
        # Unguarded on the gateway's own (loopback) port; through Traefik only with the token.
        Route("/metrics", api.prometheus, methods=["GET"]),
        *(
            Route(r.path, admin(token, throttle, r.endpoint), methods=sorted(r.methods or ()))
            for r in [*api.routes(), *calls.admin_routes()]
        ),
        *calls.invoke_routes(),
        # Before the invoker's: /function/{name}.{namespace} would match /function/{name}.
        *openfaas.routes(),
        *invoker.routes(),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(lifecycle.provider.prepare)
        except FaasError as exc:
            # Not fatal: the engine may come later; every call says so meanwhile.
            logger.warning("could not prepare the engine: {}", exc)
        try:
            await lifecycle.recover()
        except FaasError as exc:
            logger.warning("could not look for unfinished starts: {}", exc)
        tasks = [
            asyncio.create_task(scaler.run()),
            asyncio.create_task(autoscaler.run()),
            asyncio.create_task(workers.run()),
            asyncio.create_task(NodeWatch(lifecycle).run()),
        ]
        if sampler is not None:
            tasks.append(asyncio.create_task(sampler.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await workers.close()
            await invoker.close()

    handlers: dict[int | type[Exception], Callable[[Request, Exception], Awaitable[Response]]]
    handlers = {404: _not_found, 405: _not_allowed, FaasError: error_response}
    handlers.update(dict.fromkeys(STATUS, error_response))
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"no such endpoint: {request.url.path}", "detail": None}, 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"method {request.method} not allowed", "detail": None}, 405)


def _publish_keys(settings: Settings, router: TraefikRouter, revoked: frozenset[str]) -> None:
    """Give Traefik's key check the revoked kids, and wait until it uses them."""
    traefik.publish_keys(settings, revoked)
    router.wait_revoked(revoked)


def create_app(settings: Settings | None = None) -> Starlette:
    """The app uvicorn serves: settings from FAAS_*, the Docker provider."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    router: Router | None = None
    keys = Keys.from_settings(settings)
    if settings.traefik_api:
        # Its drains are rebuilt at the start (Lifecycle.recover): the paused functions'.
        drains = Drains(settings.dynamic_dir)
        router = TraefikRouter(
            settings.traefik_api, settings.ready_timeout, drains, settings.provider
        )
        traefik.publish_keys(settings, keys.revoked())
        keys.publish = functools.partial(_publish_keys, settings, router)
    provider: Provider = (
        SwarmProvider(settings) if settings.provider == "swarm" else DockerProvider(settings)
    )
    lifecycle = Lifecycle(provider, router, settings)
    sampler = Sampler(
        lifecycle, lifecycle.metrics, settings.stats_interval, settings.stats_concurrency
    )
    token = auth.admin_token(settings)
    return build_app(lifecycle, token, keys, settings, sampler=sampler)
