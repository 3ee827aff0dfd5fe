"""The invoke side of the gateway: the cold path and Traefik's key check.

Only requests for a function Traefik cannot route yet come to the cold path
(`/function/<name>/...`, via the low-priority catch-all or a drain): wake the
function, forward, stream the answer back. Warm requests never touch Python:
for `key` functions Traefik's keys plugin checks the key itself and asks
`check_key` only about the rest (no key, a refused one, the admin token).
"""

from __future__ import annotations

import re
import time
import uuid

from loguru import logger
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import auth, labels
from .config import Settings
from .errors import (
    FaasError,
    Forbidden,
    FunctionNotFound,
    PayloadTooLarge,
    Unauthorized,
    Unreached,
)
from .keys import Keys, presented_key
from .lifecycle import Lifecycle
from .provider import Function
from .proxy import Proxy
from .scaler import Scaler
from .spec import NAME_RE, FunctionSpec, check_name
from .throttle import Throttle, client_address

# The request id header, lower case as ASGI gives header names.
CALL_ID = "x-call-id"
# A caller's request id is kept only when it matches, as in Traefik's callid
# middleware (traefik/plugins-local/src/faas/callid), which sets it first on
# every request through Traefik.
SANE_CALL_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def call_id(given: str | None) -> str:
    """The caller's request id when sane, else a new one (32 hex digits)."""
    if given is not None and SANE_CALL_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class Invoker:
    """Wakes and forwards cold requests; checks invoke keys for Traefik."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        scaler: Scaler,
        keys: Keys,
        token: str,
        settings: Settings,
        throttle: Throttle,
        proxy: Proxy | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.scaler = scaler
        self.keys = keys
        self.token = token
        self.throttle = throttle
        self.max_body = settings.max_body_bytes  # the platform default; a spec may set its own
        self.proxy = proxy or Proxy(settings.request_timeout)
        self.metrics = lifecycle.metrics

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/auth/{name}", self.check_key, methods=METHODS),
            Route("/function/{name}", self.invoke, methods=METHODS),
            Route("/function/{name}/{path:path}", self.invoke, methods=METHODS),
        ]

    def authorize(self, request: Request, name: str) -> None:
        """Let the admin token or a key for `name` through; raise Unauthorized/Forbidden,
        or TooManyRequests for a client locked out after failed keys."""
        client = client_address(request)
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
        """Traefik's key check for `key` functions (its keys plugin asks here about the
        keys it does not let through itself): 200 lets the request through."""
        try:
            self.authorize(request, check_name(request.path_params["name"]))
        except FaasError:
            self.metrics.key_checks.labels("refused").inc()
            raise
        self.metrics.key_checks.labels("allowed").inc()
        return Response(status_code=200)

    def _guard(self, request: Request, spec: FunctionSpec) -> tuple[str, ...]:
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
        """Wake the function if need be, then forward the request to it.

        The request id (`X-Call-Id`: the caller's, or Traefik's, when sane, else a
        new one) goes to the function, back to the caller in place of any the
        function sent (errors included: `faas.gateway` reads it from the
        request's state), and into every log line of this request."""
        rid = call_id(request.headers.get(CALL_ID))
        request.state.call_id = rid
        with logger.contextualize(call_id=rid):
            response = await self._invoke(request, rid)
        response.raw_headers = [
            *((k, v) for k, v in response.raw_headers if k.lower() != CALL_ID.encode()),
            (CALL_ID.encode(), rid.encode()),
        ]
        return response

    async def _invoke(self, request: Request, rid: str) -> Response:
        name = request.path_params["name"]
        if not NAME_RE.match(name):
            raise FunctionNotFound(name)
        function = await run_in_threadpool(self.lifecycle.get, name)
        strip = self._guard(request, function.spec)
        prefix = labels.function_path(name)
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = raw[len(prefix) :].decode("latin-1")
        if path and not path.startswith("/"):  # "<name>%2F...": no such function
            raise FunctionNotFound(name + path)
        return await self.forward(function, request, path or "/", rid, strip)

    async def forward(
        self, function: Function, request: Request, path: str, rid: str, strip: tuple[str, ...]
    ) -> Response:
        """Wake `function` if need be and send it `request` at `path`: the one way the
        gateway calls a function (cold requests here, asynchronous calls in faas/worker.py)."""
        name = function.spec.name
        prefix = labels.function_path(name)
        arrived = time.monotonic()
        address, waited = await self.lifecycle.address(function)
        try:
            response = await self._send(request, address, path, prefix, name, rid, strip)
        except Unreached:
            # A replica that died since `function` was read (before the engine or
            # Traefik noticed): nothing was sent, so once more from a fresh view.
            fresh = await run_in_threadpool(self.lifecycle.get, name)
            address, _ = await self.lifecycle.address(fresh)
            response = await self._send(request, address, path, prefix, name, rid, strip)
        if waited is not None:
            headers_at = time.monotonic()
            self.metrics.cold_first_byte.observe(headers_at - arrived)
            self.metrics.wake_phase.labels("first_byte").observe(headers_at - arrived - waited)
            # Standard timing header: lets callers (and make bench) see the cold start.
            response.raw_headers.append(
                (b"server-timing", f"wake;dur={waited * 1000:.1f}".encode())
            )
        return response

    async def _send(
        self,
        request: Request,
        address: str,
        path: str,
        prefix: str,
        name: str,
        rid: str,
        strip: tuple[str, ...],
    ) -> Response:
        self.scaler.begin(name)
        return await self.proxy.forward(
            request,
            address,
            path,
            prefix,
            done=lambda: self.scaler.end(name),
            strip=strip,
            headers=[(CALL_ID.encode(), rid.encode())],
        )

    async def close(self) -> None:
        await self.proxy.close()
