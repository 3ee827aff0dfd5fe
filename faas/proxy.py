"""Forward one request to a function container, streaming both bodies.

Only requests for a function that Traefik cannot route yet (it was stopped,
or is being stopped) come this way; warm requests never touch Python.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import GatewayTimeout, ProviderError, Unreached

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class Proxy:
    def __init__(
        self, header_timeout: float = 0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.header_timeout = header_timeout or None  # 0: wait as long as the caller
        # No read timeout: a long request or a stream must not be cut here.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5.0, read=None, write=None, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            transport=transport,
        )

    async def forward(
        self,
        request: Request,
        address: str,
        path: str,
        prefix: str,
        done: Callable[[], None] = lambda: None,
        strip: tuple[str, ...] = (),
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Response:
        """Send `request` to `address` with its path replaced by `path`, without
        the headers named in `strip`.

        `headers` replace the request's headers of the same names. `done` runs
        exactly once, when the relay ends or when forwarding fails.
        """
        try:
            return await self._forward(request, address, path, prefix, done, strip, headers)
        except BaseException:
            done()
            raise

    async def _forward(
        self,
        request: Request,
        address: str,
        path: str,
        prefix: str,
        done: Callable[[], None],
        strip: tuple[str, ...],
        extra: Sequence[tuple[bytes, bytes]],
    ) -> Response:
        query = request.url.query
        # The path always starts the URL's path: a raw remainder such as
        # "%2F@host/x" must never turn the function's address into user info.
        if not path.startswith("/"):
            path = "/" + path
        url = f"http://{address}{path}" + (f"?{query}" if query else "")
        dropped = (
            HOP_BY_HOP
            | {h.lower() for h in strip}
            | {k.decode("latin-1").lower() for k, _ in extra}
        )
        headers = [
            (k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in dropped
        ]
        headers.extend(extra)
        headers.append((b"x-forwarded-prefix", prefix.encode()))
        body = request.stream() if _has_body(request) else None
        upstream = self.client.build_request(request.method, url, headers=headers, content=body)
        try:
            response = await asyncio.wait_for(
                self.client.send(upstream, stream=True), self.header_timeout
            )
        except TimeoutError as exc:
            raise GatewayTimeout(
                f"function at {address} did not answer within {self.header_timeout:g}s"
            ) from exc
        except httpx.ConnectError as exc:
            raise Unreached(f"function at {address} did not answer: {exc}") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"function at {address} did not answer: {exc}") from exc
        out = Relayed(response, done)
        # Raw pairs, not a dict: repeated headers (Set-Cookie) must all pass.
        out.raw_headers = [
            (k, v) for k, v in response.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        return out

    async def close(self) -> None:
        await self.client.aclose()


class Relayed(StreamingResponse):
    """The function's answer, streamed; `done` runs however the relay ends.

    However: the body sent whole, the function dying mid-body, the client going
    away, a cancellation. (A background task would be skipped when the body
    stream raises, and the scaler would count the request as in flight forever.)
    """

    def __init__(self, upstream: httpx.Response, done: Callable[[], None]) -> None:
        super().__init__(upstream.aiter_raw(), status_code=upstream.status_code)
        self.upstream = upstream
        self.done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await self.upstream.aclose()
            finally:
                self.done()


def _has_body(request: Request) -> bool:
    return "content-length" in request.headers or "transfer-encoding" in request.headers
