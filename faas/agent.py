"""The stats agent: one per Swarm node, reading its own node's engine for the gateway.

An engine answers for its own containers only, so the manager's cannot read the
stats of a task that runs on another node. The Swarm provider therefore runs
this module as a global service on the functions' overlay network (one task
per node, `SwarmProvider.prepare`), and asks the agent of a task's node:

    GET /containers/<id>      Authorization: Bearer <token>
    200 {"usage": {<faas.provider.Usage>}, "sent_bytes": int | null}
    404 no running container of the namespace with that id on this node
    401 a missing or wrong token;  400 not a container id

The agent only reads: its one engine call is `DockerProvider.sample` (list by
the namespace's label, one-shot stats, inspect). Its token is derived from the
admin token (`token`) and reaches it as a Docker secret file (TOKEN_FILE):
never in a label or the environment, which functions on the same network, or
anyone who may inspect services, could read. `Agents` is the gateway's side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx
from loguru import logger
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import auth
from .errors import FaasError, ProviderError
from .provider import Usage

PORT = 8099
TOKEN_FILE = Path("/run/secrets/faas-agent-token")
# A stats call takes ~0.5-1 s on a busy engine (faas/sampler.py); a dead node
# must not hold a sampling round for long.
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
# How long the gateway trusts its list of agents (node -> address).
AGENTS_TTL = 5.0
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")

# The (usage, bytes sent) of a container whose node's agent did not answer:
# zeros, and a constant byte count (the last one it answered, if any), so
# idleness is judged by requests alone.
UNKNOWN = (Usage(0, 0, 0.0, 0, False), 0)

Sample = tuple[Usage, int | None]


class Reader(Protocol):
    def sample(self, container_id: str) -> Sample | None: ...


def token(admin_token: str) -> str:
    """The agents' token: derived from the admin token, so it needs no state of its
    own, changes with it, and reveals nothing of it."""
    return hmac.new(admin_token.encode(), b"faas stats agent", hashlib.sha256).hexdigest()


def app(reader: Reader, secret: str) -> Starlette:
    async def container(request: Request) -> JSONResponse:
        if not auth.bearer_matches(request.headers.get("authorization"), secret):
            return JSONResponse({"error": "missing or wrong token"}, 401)
        container_id = request.path_params["id"]
        if not _CONTAINER_ID.fullmatch(container_id):
            return JSONResponse({"error": "not a container id (64 hex digits)"}, 400)
        try:
            found = await run_in_threadpool(reader.sample, container_id)
        except FaasError as exc:
            return JSONResponse({"error": str(exc)}, 502)
        if found is None:
            error = f"no running container {container_id[:12]} of this namespace here"
            return JSONResponse({"error": error}, 404)
        usage, sent = found
        return JSONResponse({"usage": dataclasses.asdict(usage), "sent_bytes": sent})

    return Starlette(routes=[Route("/containers/{id}", container, methods=["GET"])])


class Agents:
    """The gateway's side: finds the agent of a node (`find`: node id -> address of
    the agents' running tasks, re-read after AGENTS_TTL seconds) and asks it."""

    def __init__(
        self,
        find: Callable[[], dict[str, str]],
        secret: str,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._find = find
        self._http = httpx.Client(
            timeout=TIMEOUT, headers={"Authorization": f"Bearer {secret}"}, transport=transport
        )
        self._lock = threading.Lock()
        self._addresses: dict[str, str] = {}
        self._read_at = -AGENTS_TTL
        # node -> until when it is not asked again, after it failed (its failure is
        # logged once): a dead node must not cost a sampling round a 2 s dial per task.
        self._failing: dict[str, float] = {}
        # container -> bytes sent when its agent last answered: reported while it
        # does not, so that a flapping agent reads as no traffic, not as traffic.
        self._sent: dict[str, int] = {}

    def addresses(self, *, fresh: bool = False) -> dict[str, str]:
        """Node id -> agent address, read again when `fresh` or older than AGENTS_TTL;
        a failed read is not tried again before AGENTS_TTL unless `fresh`."""
        with self._lock:
            if fresh or time.monotonic() - self._read_at >= AGENTS_TTL:
                self._read_at = time.monotonic()
                self._addresses = self._find()
            return self._addresses

    def sample(self, node: str, container_id: str) -> Sample | None:
        """The container's sample from its node's agent; None when it says no such
        container runs; UNKNOWN (and a log line) when no agent answers."""
        with self._lock:
            retry_at = self._failing.get(node)
            if retry_at is not None and time.monotonic() < retry_at:
                return self._unknown(container_id)
        try:
            found = self._ask(node, container_id)
        except ProviderError as exc:
            with self._lock:
                if node not in self._failing:
                    logger.warning("no stats from node {}: {} (zeros until it answers)", node, exc)
                self._failing[node] = time.monotonic() + AGENTS_TTL
                return self._unknown(container_id)
        with self._lock:
            if self._failing.pop(node, None) is not None:
                logger.info("stats from node {} again", node)
            if found is None:
                self._sent.pop(container_id, None)
            elif found[1] is not None:
                self._sent[container_id] = found[1]
        return found

    def _unknown(self, container_id: str) -> Sample:
        usage, sent = UNKNOWN
        return usage, self._sent.get(container_id, sent)

    def _ask(self, node: str, container_id: str) -> Sample | None:
        try:
            address = self.addresses().get(node)
        except FaasError as exc:
            raise ProviderError(f"the stats agents could not be listed: {exc}") from exc
        if address is None:
            raise ProviderError("no stats agent runs there")
        try:
            got = self._http.get(f"http://{address}/containers/{container_id}")
        except httpx.HTTPError as exc:
            raise ProviderError(f"its stats agent at {address}: {exc!r}") from exc
        if got.status_code == 404:
            return None
        try:
            got.raise_for_status()
            body = got.json()
            return Usage(**body["usage"]), body["sent_bytes"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ProviderError(
                f"its stats agent at {address}: {got.status_code} {got.text[:200]}"
            ) from exc


def main() -> None:
    """`python -m faas.agent`: serve this node's stats (FAAS_NAMESPACE's containers)."""
    import uvicorn

    from .config import Settings
    from .docker_provider import DockerProvider
    from .logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    secret = TOKEN_FILE.read_text().strip()
    logger.info("stats agent of namespace {} on port {}", settings.namespace, PORT)
    uvicorn.run(
        app(DockerProvider(settings), secret), host="0.0.0.0", port=PORT, log_level="warning"
    )


if __name__ == "__main__":
    main()
