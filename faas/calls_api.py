"""Asynchronous calls over HTTP: enqueue, list, retry, drop.

    /async-function/{name}[/path]          any method -> 202 + X-Call-Id (OpenFaaS' path;
    /api/v1/async-function/{name}[/path]   the same)  public or key, as the function
    GET    /api/v1/functions/{name}/calls  queued, in flight, failed (admin)
    POST   /api/v1/calls/{id}/retry        a failed call queued again, or a waiting one now
    DELETE /api/v1/calls/{id}              a queued or failed call dropped

Nothing is queued unless it will be accepted by a worker: an unknown function
is 404, a body over the limit 413, a callback URL refused 400 (faas/calls.py),
a missing or wrong key 401/403 as on the sync path, NATS unreachable 503.
"""

from __future__ import annotations

import time
from dataclasses import replace

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import labels
from .body import read_body
from .broker import Broker, Stored
from .calls import Call, async_call_id, check_callback, queued_headers
from .errors import CallInFlight, FunctionNotFound, InvalidSpec
from .invoke import CALL_ID, METHODS, Invoker
from .openfaas import OPENFAAS_NAMESPACE
from .spec import NAME_RE, check_name
from .worker import Workers

ASYNC_PREFIX = "/async-function/"
MAX_LISTED = 1000


class CallsApi:
    def __init__(self, invoker: Invoker, workers: Workers, namespace: str) -> None:
        self.invoker = invoker
        self.workers = workers
        self.broker: Broker = workers.broker
        self.lifecycle = workers.lifecycle
        self.settings = workers.settings
        self.namespaces = {namespace, OPENFAAS_NAMESPACE}

    def invoke_routes(self) -> list[Route]:
        """Open to callers of the function (its key, if it has one)."""
        return [
            Route(f"{base}{ASYNC_PREFIX}{{name}}{rest}", self.enqueue, methods=METHODS)
            for base in ("", "/api/v1")
            for rest in ("", "/{path:path}")
        ]

    def admin_routes(self) -> list[Route]:
        """For the admin token only (`faas.gateway` guards them)."""
        return [
            Route("/api/v1/functions/{name}/calls", self.list_calls, methods=["GET"]),
            Route("/api/v1/calls/{id}/retry", self.retry, methods=["POST"]),
            Route("/api/v1/calls/{id}", self.drop, methods=["DELETE"]),
        ]

    def _function_name(self, given: str) -> str:
        """The name in the URL; `name.namespace` as OpenFaaS allows, in ours only."""
        name, dot, namespace = given.partition(".")
        if not NAME_RE.match(name) or (dot and namespace not in self.namespaces):
            raise FunctionNotFound(given)
        return name

    async def enqueue(self, request: Request) -> Response:
        given = request.path_params["name"]
        name = self._function_name(given)
        spec = (await self.workers.function(name)).spec
        strip: tuple[str, ...] = ()
        if spec.auth == "key":
            self.invoker.authorize(request, name)
            strip = labels.KEY_HEADERS  # a key is never stored in the queue
        callback = request.headers.get("x-callback-url")
        if callback is not None:
            allow, engine = self.workers.callback_allow, self.workers.engine_hosts
            await run_in_threadpool(check_callback, callback, allow, engine)
        limit = self.settings.async_max_body_bytes
        if spec.limits.max_body_bytes:
            limit = min(limit, spec.limits.max_body_bytes)
        body = await read_body(request, limit)
        call = Call(
            id=async_call_id(request.headers.get(CALL_ID)),
            function=name,
            method=request.method,
            path=_sub_path(request, given),
            query=request.url.query,
            headers=queued_headers(request.headers.raw, strip),
            enqueued=time.time(),
            callback=callback,
        )
        await self.broker.publish(call, body, new=True)
        self.workers.ensure(name)
        self.workers.metrics.enqueued.labels(name).inc()
        return JSONResponse(
            {"call_id": call.id, "function": name}, status_code=202, headers={CALL_ID: call.id}
        )

    async def list_calls(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LISTED:
            raise InvalidSpec("limit", f"must be 1-{MAX_LISTED}")
        limit = int(raw)
        now = time.time()
        rows = []
        for stored in await self.broker.scan(name, dead=False, limit=limit):
            call = stored.call
            state = (
                "in-flight" if call.id in self.workers.in_flight
                else "waiting" if call.not_before > now
                else "queued"
            )  # fmt: skip
            rows.append(call.view(state))
        rows += [s.call.view("failed") for s in await self.broker.scan(name, True, limit)]
        depth = await self.broker.depth(name)
        return JSONResponse({"function": name, "queued": depth, "calls": rows})

    async def _found(self, request: Request) -> Stored:
        call_id = request.path_params["id"]
        if not call_id or len(call_id) > 128 or async_call_id(call_id) != call_id:
            raise InvalidSpec("id", "not a call id")
        stored = await self.broker.find(call_id)
        if not stored.dead and call_id in self.workers.in_flight:
            raise CallInFlight(call_id)
        return stored

    async def retry(self, request: Request) -> Response:
        """A failed call back in the queue with its attempts anew; a waiting one due now."""
        stored = await self._found(request)
        call = stored.call
        attempts = 0 if stored.dead else call.attempts
        again = replace(call, not_before=0.0, attempts=attempts)
        await self.broker.publish(again, stored.body)
        await self.broker.delete(stored)
        self.workers.ensure(call.function)
        return JSONResponse(again.view("queued"), status_code=202)

    async def drop(self, request: Request) -> Response:
        stored = await self._found(request)
        await self.broker.delete(stored)
        return Response(status_code=204)


def _sub_path(request: Request, given: str) -> str:
    """The path after /async-function/<name>, raw as it came; "/" at least."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    marker = f"{ASYNC_PREFIX}{given}".encode()
    if marker not in raw:  # the name itself percent-encoded: take the decoded path
        raw, marker = request.url.path.encode(), marker
    rest = raw[raw.index(marker) + len(marker) :].decode("latin-1")
    if rest and not rest.startswith("/"):  # "<name>%2F...": no such function
        raise FunctionNotFound(given + rest)
    return rest or "/"
