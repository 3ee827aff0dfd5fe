"""The cold path in process: requests forwarded by the gateway are counted as in
flight exactly while they are relayed, however the relay ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import ClientDisconnect
from starlette.types import Message

from faas.config import Settings
from faas.gateway import build_app
from faas.keys import Keys
from faas.provider import State
from faas.proxy import Proxy
from faas.scaler import Scaler

from .fakes import FakeProvider, lifecycle


class Upstream(httpx.AsyncByteStream):
    """A function's answer: `chunks`, then an error if `dies`, or forever if `endless`."""

    def __init__(self, chunks: int, *, dies: bool = False, endless: bool = False) -> None:
        self.chunks, self.dies, self.endless = chunks, dies, endless
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.chunks or self.endless:
            sent += 1
            yield b"x" * 100
            await asyncio.sleep(0)
        if self.dies:
            raise httpx.ReadError("the function died mid-answer")

    async def aclose(self) -> None:
        self.closed = True


def scenario(
    upstream: Upstream, fail_send_after: int | None = None
) -> tuple[Scaler, list[Message]]:
    """One request to /function/a through the app; returns the scaler and what was sent."""
    provider = FakeProvider()
    provider.add("a", State.RUNNING)
    life = lifecycle(provider)
    scaler = Scaler(life, interval=3600)
    proxy = Proxy(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, stream=upstream))
    )
    keys = Keys.from_settings(Settings(state_dir=Path("/nonexistent-faas-test")))
    app = build_app(life, "t" * 32, keys, scaler=scaler, proxy=proxy)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if fail_send_after is not None and len(sent) >= fail_send_after:
            raise OSError("the client went away")
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/function/a/x",
        "raw_path": b"/function/a/x",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gw")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8081),
    }

    async def run() -> None:
        await app(scope, receive, send)

    # What the server would log; the point here is what was cleaned up.
    with contextlib.suppress(httpx.ReadError, OSError, ClientDisconnect):
        asyncio.run(run())
    return scaler, sent


def body(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_whole_answer_is_relayed_and_uncounted() -> None:
    upstream = Upstream(5)
    scaler, sent = scenario(upstream)
    assert sent[0]["status"] == 200
    assert body(sent) == b"x" * 500
    assert scaler.in_flight("a") == 0
    assert upstream.closed


def test_a_function_dying_mid_answer_is_uncounted() -> None:
    upstream = Upstream(3, dies=True)
    scaler, sent = scenario(upstream)
    assert body(sent) == b"x" * 300  # what came before the death was relayed
    assert scaler.in_flight("a") == 0
    assert upstream.closed


@pytest.mark.parametrize("after", [0, 1, 3])
def test_a_client_going_away_is_uncounted(after: int) -> None:
    upstream = Upstream(0, endless=True)
    scaler, _ = scenario(upstream, fail_send_after=after)
    assert scaler.in_flight("a") == 0
    assert upstream.closed


@pytest.mark.parametrize("run", range(6))  # the first pick is random: both orders come up
def test_a_replica_that_died_unnoticed_costs_one_more_try_not_an_error(run: int) -> None:
    """The gateway's view lists a replica that refuses connections (killed a moment
    ago): nothing was sent to it, so the request goes to another replica."""
    provider = FakeProvider()
    alive, dead = provider.add("a", State.RUNNING), provider.add("a", State.RUNNING)
    tried: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        tried.append(f"{request.url.host}:{request.url.port}")
        if tried[-1] == dead.address:
            provider._set(dead.id, state=State.FAILED, address=None)  # the engine notices
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, stream=Upstream(1))

    life = lifecycle(provider)
    scaler = Scaler(life, interval=3600)
    proxy = Proxy(transport=httpx.MockTransport(answer))
    keys = Keys.from_settings(Settings(state_dir=Path("/nonexistent-faas-test")))
    app = build_app(life, "t" * 32, keys, scaler=scaler, proxy=proxy)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://gw"
        ) as client:
            return await client.get("/function/a/x")

    got = asyncio.run(call())
    assert (got.status_code, got.content) == (200, b"x" * 100)
    assert tried[-1] == alive.address
    assert scaler.in_flight("a") == 0
