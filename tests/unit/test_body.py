"""Bounded, defensive JSON bodies (faas/body.py): a tiny app, then the real gateway."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faas import body as body_module
from faas.body import MAX_DEPTH, parse_json, read_json
from faas.config import Settings
from faas.errors import FaasError, InvalidSpec
from faas.gateway import build_app, error_response
from faas.keys import Keys
from tests.unit.fakes import FakeProvider, lifecycle
from tests.unit.test_metrics import TOKEN, Client

LIMIT = 4096
API_LIMIT = 1 << 16
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"NaN", "NaN is not a JSON value"),
        (b'{"a": -Infinity}', "Infinity is not a JSON value"),
        (b'"\xff\xfe\xfa"', "not UTF-8"),
        (b"1" * (sys.get_int_max_str_digits() + 1), "integer over"),
        (b"[" * 100_000, "nests deeper"),
        (nested(5_000), "nests deeper"),  # past the recursion limit: RecursionError inside
        (nested(MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),  # parsed, then refused
        (b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "nests deeper"),
    ],
)
def test_hostile_json_is_invalid_spec_naming_why(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_json(raw)
    assert reason in caught.value.message


def test_sane_json_parses_up_to_the_depth_limit() -> None:
    assert parse_json(b'{"a": [1, {"b": null}], "c": 1e400}') == {
        "a": [1, {"b": None}],
        "c": float("inf"),
    }
    assert parse_json(nested(MAX_DEPTH)) is not None
    assert parse_json(b"1" * sys.get_int_max_str_digits()) == int("1" * 4300)


async def echo(request: Request) -> Response:
    try:
        return JSONResponse({"got": await read_json(request, LIMIT)})
    except FaasError as exc:
        return await error_response(request, exc)


@pytest.fixture
def tiny() -> Client:
    app = Starlette(routes=[Route("/", echo, methods=["POST"])])
    return Client(httpx.ASGITransport(app=app))


async def chunks(total: int, sent: list[int]) -> AsyncIterator[bytes]:
    """A chunked body of `total` bytes (a JSON string), counting what was pulled."""
    yield b'"'
    for _ in range((total - 2) // 1024):
        sent.append(1024)
        yield b"x" * 1024
    yield b'"'


def test_a_body_up_to_the_limit_is_read(tiny: Client) -> None:
    body = b'"' + b"x" * (LIMIT - 2) + b'"'
    got = tiny.request("POST", "/", content=body)
    assert got.status_code == 200
    assert got.json() == {"got": "x" * (LIMIT - 2)}
    sent: list[int] = []
    assert tiny.request("POST", "/", content=chunks(LIMIT, sent)).status_code == 200


def test_a_declared_length_over_the_limit_is_refused_unread(tiny: Client) -> None:
    got = tiny.request("POST", "/", content=b"x" * (LIMIT + 1))
    assert got.status_code == 413
    assert (
        got.json()["error"] == f"request body of {LIMIT + 1} bytes is over the {LIMIT}-byte limit"
    )


def test_a_chunked_body_is_cut_at_the_limit(tiny: Client) -> None:
    sent: list[int] = []
    got = tiny.request("POST", "/", content=chunks(1 << 20, sent))
    assert got.status_code == 413
    assert got.json()["error"] == f"request body is over the {LIMIT}-byte limit"
    assert sum(sent) == (1 << 20) - 1024  # drained, so that the client hears the 413


async def stalls(sent: list[int]) -> AsyncIterator[bytes]:
    """Twice the limit, then nothing for a minute."""
    for _ in range(8):
        sent.append(1024)
        yield b"x" * 1024
    await asyncio.sleep(60)
    yield b"never"


def test_a_refused_body_is_drained_for_a_bounded_time(
    tiny: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(body_module, "DRAIN_SECONDS", 0.3)
    sent: list[int] = []
    started = time.monotonic()
    got = tiny.request("POST", "/", content=stalls(sent))
    assert got.status_code == 413
    assert 0.3 <= time.monotonic() - started < 5
    assert sum(sent) == 8 * 1024


def test_a_client_expecting_100_continue_is_answered_at_once(tiny: Client) -> None:
    sent: list[int] = []
    headers = {"Content-Length": str(1 << 20), "Expect": "100-continue"}
    got = tiny.request("POST", "/", content=chunks(1 << 20, sent), headers=headers)
    assert got.status_code == 413
    assert sent == []
    # Without the Expect header, the declared body is drained.
    del headers["Expect"]
    assert (
        tiny.request("POST", "/", content=chunks(1 << 20, sent), headers=headers).status_code == 413
    )
    assert sum(sent) == (1 << 20) - 1024


@pytest.fixture
def gateway(tmp_path: Path) -> Client:
    provider = FakeProvider()
    settings = Settings(state_dir=tmp_path, api_max_body_bytes=API_LIMIT)
    keys = Keys.from_settings(settings)
    app = build_app(lifecycle(provider), TOKEN, keys, settings)
    return Client(httpx.ASGITransport(app=app))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/functions"),
        ("PUT", "/api/v1/functions/fn"),
        ("POST", "/api/v1/functions/fn/scale"),
        ("POST", "/api/v1/functions/fn/keys"),
        ("POST", "/api/v1/images/pull"),
    ],
)
def test_every_json_route_of_the_gateway_is_bounded_and_defensive(
    gateway: Client, method: str, path: str
) -> None:
    hostile = {
        b"9" * 10_000: 422,
        nested(1_000): 422,
        b'{"a":' * 2_000: 422,
        b"\xff" * 10: 422,
        b'"' + b"x" * API_LIMIT + b'"': 413,
    }
    for body, status in hostile.items():
        got = gateway.request(method, path, content=body, headers=AUTH)
        assert got.status_code == status, (body[:20], got.text)
        assert got.json()["error"].startswith("request body")
    assert gateway.get("/api/v1/functions", headers=AUTH).status_code == 200
