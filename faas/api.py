"""The management API under /api/v1: functions, logs, scaling, images, keys, secrets, stats.

Endpoints only raise `faas.errors`; `faas.gateway` turns them into answers.
Every answer is read from the engine (Docker labels): a restart loses nothing.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from loguru import logger
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import __version__, openapi, secretstore, template
from .autoscaler import Autoscaler
from .body import parse_json, read_body, read_json
from .config import Settings
from .errors import FaasError, FunctionExists, FunctionNotFound, InvalidSpec, SecretNotFound
from .keys import Keys, check_kid
from .lifecycle import Lifecycle
from .metrics import CONTENT_TYPE
from .provider import Function, State
from .scaler import Scaler
from .spec import FunctionSpec, check_name, parse_spec, valid_image
from .stats import function_rows, parse_traefik
from .streams import iterate, ndjson, prepend, relay, replica_lines, spool

# Longest lifetime of an invoke key, in seconds (ten years).
MAX_KEY_TTL = 10 * 365 * 24 * 3600
# Largest build context or image archive the API accepts.
MAX_UPLOAD = 2 << 30


class ManagementApi:
    """The /api/v1 endpoints (all but healthz need the admin token: `faas.gateway`)."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        scaler: Scaler,
        autoscaler: Autoscaler,
        keys: Keys,
        settings: Settings,
    ) -> None:
        self.lifecycle = lifecycle
        self.autoscaler = autoscaler
        self.provider = lifecycle.provider
        self.scaler = scaler
        self.keys = keys
        self.settings = settings
        self.api_max_body = settings.api_max_body_bytes
        self.metrics = lifecycle.metrics

    def routes(self) -> list[Route]:
        """(path, endpoint, methods); `faas.gateway` adds the token check."""
        return [
            Route("/api/v1/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/v1/metrics", self.prometheus, methods=["GET"]),
            Route("/api/v1/stats", self.stats, methods=["GET"]),
            Route("/api/v1/functions", self.list_functions, methods=["GET"]),
            Route("/api/v1/functions", self.create_function, methods=["POST"]),
            Route("/api/v1/functions/{name}", self.get_function, methods=["GET"]),
            Route("/api/v1/functions/{name}", self.put_function, methods=["PUT"]),
            Route("/api/v1/functions/{name}", self.delete_function, methods=["DELETE"]),
            Route("/api/v1/functions/{name}/logs", self.logs, methods=["GET"]),
            Route("/api/v1/functions/{name}/scale", self.scale, methods=["POST"]),
            Route("/api/v1/functions/{name}/pause", self.pause, methods=["POST"]),
            Route("/api/v1/functions/{name}/build", self.build, methods=["POST"]),
            Route("/api/v1/functions/{name}/keys", self.create_key, methods=["POST"]),
            Route("/api/v1/keys/{kid}", self.revoke_key, methods=["DELETE"]),
            Route("/api/v1/secrets", self.list_secrets, methods=["GET"]),
            Route("/api/v1/secrets", self.create_secret, methods=["POST"]),
            Route("/api/v1/secrets/{name}", self.get_secret, methods=["GET"]),
            Route("/api/v1/secrets/{name}", self.update_secret, methods=["PUT"]),
            Route("/api/v1/secrets/{name}", self.delete_secret, methods=["DELETE"]),
            Route("/api/v1/images/pull", self.pull, methods=["POST"]),
            Route("/api/v1/images/load", self.load, methods=["POST"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi.document())

    async def prometheus(self, request: Request) -> Response:
        """The gateway's Prometheus exposition (the proxy serves its own)."""
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def stats(self, request: Request) -> Response:
        """Per function: the proxy's request metrics joined with the gateway's numbers."""
        name = request.query_params.get("name")
        if name is not None:
            functions = [await run_in_threadpool(self.lifecycle.get, check_name(name))]
        else:
            functions = await run_in_threadpool(self.lifecycle.list)
        router = self.lifecycle.router
        text = await run_in_threadpool(router.metrics_text) if router else ""
        rows = function_rows(
            functions,
            parse_traefik(text),
            self.lifecycle.starts,
            self.metrics.snapshot.resources,
            self.lifecycle.settings.provider,
        )
        return JSONResponse(rows)

    def _view(self, function: Function) -> dict[str, object]:
        view = function.to_json()
        if self.lifecycle.waking(function.spec.name):
            view["state"] = State.STARTING.value  # the engine says running; not ready yet
        return view

    async def list_functions(self, request: Request) -> Response:
        functions = await run_in_threadpool(self.lifecycle.list)
        return JSONResponse([self._view(f) for f in functions])

    async def create_function(self, request: Request) -> Response:
        spec = parse_spec(await read_json(request, self.api_max_body))
        try:
            await run_in_threadpool(self.lifecycle.get, spec.name)
        except FunctionNotFound:
            pass
        else:
            raise FunctionExists(spec.name)
        return await self._deploy(spec, status=201)

    async def get_function(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        function = await run_in_threadpool(self.lifecycle.get, name)
        return JSONResponse(self._view(function))

    async def put_function(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        body = await read_json(request, self.api_max_body)
        if isinstance(body, dict) and body.setdefault("name", name) != name:
            raise InvalidSpec("name", f"does not match the URL ({name!r})")
        return await self._deploy(parse_spec(body), status=200)

    async def _deploy(self, spec: FunctionSpec, status: int) -> Response:
        logger.info("deploying {} from {}", spec.name, spec.image)
        with counted(self.metrics.deploys):
            function = await run_in_threadpool(self.lifecycle.deploy, spec)
        return JSONResponse(function.to_json(), status_code=status)

    async def delete_function(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        with counted(self.metrics.removes):
            await run_in_threadpool(self.lifecycle.remove, name)
        return Response(status_code=204)

    async def logs(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        follow = request.query_params.get("follow", "false").lower() in ("1", "true", "yes")
        tail = _int_param(request, "tail")
        since = _int_param(request, "since")
        function = await run_in_threadpool(self.lifecycle.get, name)
        ids = [i.id for i in function.replicas] or [function.container_id]
        opened = functools.partial(self.provider.logs, follow=follow, tail=tail, since=since)
        if len(ids) == 1:
            stream = await run_in_threadpool(opened, ids[0])
            return StreamingResponse(relay(stream), media_type="text/plain; charset=utf-8")
        # Several replicas: each line says which one wrote it, after its timestamp.
        streams = [(i[:12], await run_in_threadpool(opened, i)) for i in ids]
        found = replica_lines(streams, follow=follow, tail=tail or 0)
        return StreamingResponse(_tagged(found), media_type="text/plain; charset=utf-8")

    async def scale(self, request: Request) -> Response:
        """Run `replicas` replicas now (0 stops the function); the autoscaler keeps
        the count for a stable window, then follows the load within the bounds."""
        name = check_name(request.path_params["name"])
        body = await read_json(request, self.api_max_body)
        replicas = body.get("replicas") if isinstance(body, dict) and len(body) == 1 else None
        if type(replicas) is not int or replicas < 0:
            raise InvalidSpec("replicas", 'send {"replicas": n}, n from 0 to its max_scale')
        function = await run_in_threadpool(self.lifecycle.get, name)
        await self.autoscaler.scale(function, replicas)
        function = await run_in_threadpool(self.lifecycle.get, name)
        return JSONResponse(function.to_json())

    async def pause(self, request: Request) -> Response:
        """Pause a running function now (the paused tier): its memory is kept, the
        next request resumes it; it is stopped at its idle timeout."""
        name = check_name(request.path_params["name"])
        await run_in_threadpool(self.lifecycle.get, name)  # 404 before anything else
        await self.lifecycle.scale_down(name, pause=True)
        function = await run_in_threadpool(self.lifecycle.get, name)
        return JSONResponse(function.to_json())

    async def create_key(self, request: Request) -> Response:
        name = check_name(request.path_params["name"])
        raw = await read_body(request, self.api_max_body)
        body = parse_json(raw) if raw.strip() else {}
        ttl = body.get("ttl") if isinstance(body, dict) and set(body) <= {"ttl"} else "bad"
        if ttl is not None and (type(ttl) is not int or not 1 <= ttl <= MAX_KEY_TTL):
            raise InvalidSpec(
                "ttl", f'send {{"ttl": seconds (1-{MAX_KEY_TTL})}} or {{"ttl": null}}'
            )
        await run_in_threadpool(self.lifecycle.get, name)
        issued = self.keys.create(name, ttl)
        logger.info("created key {} for {}", issued.kid, name)  # the id only, never the key
        return JSONResponse(issued.to_json(), status_code=201)

    async def revoke_key(self, request: Request) -> Response:
        kid = check_kid(request.path_params["kid"])
        await run_in_threadpool(self.keys.revoke, kid)
        logger.info("revoked key {}", kid)
        return Response(status_code=204)

    async def _secret_views(self, names: list[str]) -> list[dict[str, object]]:
        """Names and the functions that use each: never a value."""
        functions = await run_in_threadpool(self.lifecycle.list)
        return [
            {"name": n, "used_by": [f.spec.name for f in functions if n in f.spec.secrets]}
            for n in names
        ]

    async def list_secrets(self, request: Request) -> Response:
        names = await run_in_threadpool(self.lifecycle.secrets.names)
        return JSONResponse(await self._secret_views(names))

    async def get_secret(self, request: Request) -> Response:
        name = secretstore.check_secret_name(request.path_params["name"])
        if not await run_in_threadpool(self.lifecycle.secrets.exists, name):
            raise SecretNotFound(name)
        return JSONResponse((await self._secret_views([name]))[0])

    async def create_secret(self, request: Request) -> Response:
        """{"name", "value" (text) | "raw_value" (base64)} -> 201 {"name"}; 409 if it exists."""
        body = await self._secret_body(request, {"name", "value", "raw_value"})
        name = secretstore.check_secret_name(body.get("name"))
        value = secretstore.value_from(body, "value", "raw_value")
        await run_in_threadpool(self.lifecycle.secrets.create, name, value)
        logger.info("created secret {}", name)  # the name only, never the value
        return JSONResponse({"name": name, "used_by": []}, status_code=201)

    async def update_secret(self, request: Request) -> Response:
        """A new value, which reaches the functions using it; 404 if there is no such secret."""
        name = secretstore.check_secret_name(request.path_params["name"])
        body = await self._secret_body(request, {"name", "value", "raw_value"})
        if body.get("name", name) != name:
            raise InvalidSpec("name", f"does not match the URL ({name!r})")
        value = secretstore.value_from(body, "value", "raw_value")
        used_by = await run_in_threadpool(self.lifecycle.update_secret, name, value)
        return JSONResponse({"name": name, "used_by": used_by})

    async def delete_secret(self, request: Request) -> Response:
        name = secretstore.check_secret_name(request.path_params["name"])
        await run_in_threadpool(self.lifecycle.remove_secret, name)
        return Response(status_code=204)

    async def _secret_body(self, request: Request, fields: set[str]) -> dict[str, object]:
        body = await read_json(request, self.api_max_body)
        if not isinstance(body, dict):
            raise InvalidSpec("", 'send {"name": "...", "value": "..." or "raw_value": "<base64>"}')
        unknown = sorted(set(body) - fields)
        if unknown:
            raise InvalidSpec(str(unknown[0])[:80], "unknown field")
        return body

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
        return ndjson(prepend(first, events))

    async def load(self, request: Request) -> Response:
        """Load a docker-save or OCI archive sent as the body."""
        archive = await spool(request, MAX_UPLOAD)
        with archive:
            images = await run_in_threadpool(self.provider.load, archive)
        return JSONResponse({"images": images})

    async def build(self, request: Request) -> Response:
        """Build the tar context in the body as faas/<name>:<content hash>, streaming output.

        The last JSON line is {"image": ...} or {"error": ..., "log": ...}; nothing is
        deployed here, so a failed build leaves the running version untouched.
        """
        name = check_name(request.path_params["name"])
        context = await spool(request, MAX_UPLOAD)
        digest = hashlib.sha256()
        for block in iter(lambda: context.read(1 << 20), b""):
            digest.update(block)
        context.seek(0)
        tag = self.settings.published(f"faas/{name}:{digest.hexdigest()[:12]}")
        is_template = "template" in request.query_params

        async def lines() -> AsyncIterator[dict[str, object]]:
            try:
                args = None
                if is_template:
                    # A handler template's Dockerfile starts FROM the platform's base image.
                    base = await run_in_threadpool(
                        template.base_image, self.provider, self.settings
                    )
                    args = {"BASE_IMAGE": base.image}
                    if base.note:
                        yield {"stream": f"{base.note}\n"}
                async for line in iterate(self.provider.build(context, tag, args)):
                    yield {"stream": line}
                yield {"image": tag}
            except FaasError as exc:
                yield {"error": exc.message, "detail": exc.detail()}
            finally:
                context.close()

        return ndjson(lines())


@contextmanager
def counted(counter: Counter) -> Iterator[None]:
    """Count one operation by outcome: `ok`, or `error` if it raised."""
    try:
        yield
    except BaseException:
        counter.labels("error").inc()
        raise
    counter.labels("ok").inc()


def _int_param(request: Request, key: str) -> int | None:
    raw = request.query_params.get(key)
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidSpec(key, "must be a non-negative integer")
    return int(raw)


async def _tagged(found: AsyncIterator[tuple[str, str]]) -> AsyncIterator[bytes]:
    async for replica, line in found:
        stamp, _, text = line.partition(" ")
        yield f"{stamp} [{replica}] {text}\n".encode()
