"""The pure rules of asynchronous calls: the record, retries, backoff, callback URLs."""

from __future__ import annotations

import asyncio
import random
import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.responses import StreamingResponse

from faas import broker
from faas.calls import (
    Backoff,
    Call,
    async_call_id,
    callback_addresses,
    check_callback,
    engine_hosts,
    pinned,
    queued_headers,
    retryable,
)
from faas.config import Settings
from faas.egress import parse_allow
from faas.errors import InvalidCallback
from faas.worker import _collect


def test_a_call_round_trips_through_its_header() -> None:
    call = Call(
        id="abc",
        function="fn",
        method="PUT",
        path="/a b/ü",
        query="x=1&y=%20",
        headers=[("X-A", "1"), ("X-A", "2"), ("Content-Type", "text/plain; charset=\u00e9")],
        enqueued=1.5,
        callback="https://example.com/hook",
    )
    text = call.encode()
    assert text.isascii()
    assert "\n" not in text
    assert Call.decode(text) == call
    again = call.retried("HTTP 503", 503, 9.0)
    assert (again.attempts, again.last_error, again.last_status, again.not_before) == (
        1,
        "HTTP 503",
        503,
        9.0,
    )
    assert Call.decode(again.encode()) == again


def test_the_call_id_is_the_callers_only_when_it_can_name_a_subject() -> None:
    assert async_call_id("my-id_1") == "my-id_1"
    for bad in ("a.b", "a*", "a>b", "", "x" * 129, None):
        new = async_call_id(bad)
        assert new != bad
        assert len(new) == 32


def test_queued_headers_drop_hop_by_hop_the_platforms_and_stripped_ones() -> None:
    raw = [
        (b"Connection", b"keep-alive"),
        (b"Content-Length", b"3"),
        (b"X-Call-Id", b"abc"),
        (b"X-Callback-Url", b"http://x"),
        (b"Authorization", b"Bearer k"),
        (b"X-Kept", b"\xe9"),
    ]
    assert queued_headers(raw, ()) == [("Authorization", "Bearer k"), ("X-Kept", "é")]
    assert queued_headers(raw, ("Authorization",)) == [("X-Kept", "é")]


@pytest.mark.parametrize(
    ("status", "again"),
    [(429, True), (500, True), (503, True), (200, False), (400, False), (404, False)],
)
def test_429_and_5xx_are_retried_other_answers_are_final(status: int, again: bool) -> None:
    assert retryable(status) is again


def test_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    backoff = Backoff(1.0, 10.0, random.Random(7))  # noqa: S311 - jitter, not secrets
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (30, 10.0)]:
        delays = [backoff.delay(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",  # loopback
        "http://[::1]:8080/hook",
        "http://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
        "http://10.0.0.5/hook",  # private: the function network, the engine's bridges
        "http://172.17.0.1:2375/containers/json",  # the engine on its bridge
        "http://0.0.0.0/",
        "http://localhost:8081/api/v1/functions",  # the platform itself, by name
    ],
)
def test_callbacks_to_the_platform_loopback_link_local_or_private_are_refused(url: str) -> None:
    with pytest.raises(InvalidCallback) as info:
        check_callback(url, ())
    assert "FAAS_CALLBACK_ALLOW" in info.value.reason


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "http:///path", "not a url", "http://x:99999/", "/relative"]
)
def test_malformed_callback_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidCallback):
        check_callback(url, ())


def test_the_allow_list_opens_addresses_and_ports() -> None:
    allow = parse_allow("127.0.0.1/32:8000-8100, 10.1.0.0/16")
    assert check_callback("http://127.0.0.1:8050/x", allow) == "http://127.0.0.1:8050/x"
    assert check_callback("http://10.1.2.3/x", allow)
    with pytest.raises(InvalidCallback):
        check_callback("http://127.0.0.1:9000/x", allow)  # not that port
    with pytest.raises(InvalidCallback):
        check_callback("http://10.2.0.1/x", allow)


def test_a_public_address_is_fine_unless_the_engine_is_there() -> None:
    assert check_callback("https://93.184.215.14/hook", ())
    with pytest.raises(InvalidCallback):
        check_callback("https://93.184.215.14/hook", (), refused_hosts=["93.184.215.14"])


def test_the_engine_is_refused_when_reached_over_tcp() -> None:
    assert engine_hosts("tcp://203.0.113.9:2376") == ("203.0.113.9",)
    assert engine_hosts("unix:///var/run/docker.sock") == ()
    assert engine_hosts(None) == ()


def test_a_callback_goes_to_the_address_that_was_checked() -> None:
    """Not to what the name resolves to at connect time (DNS rebinding)."""
    to = pinned("https://user:pw@hooks.example.com:8443/cb?x=1#frag", "93.184.215.14")
    assert to.url == "https://user:pw@93.184.215.14:8443/cb?x=1"
    assert to.host == "hooks.example.com:8443"
    assert to.extensions == {"sni_hostname": "hooks.example.com"}
    to = pinned("http://hooks.example.com/cb", "2606:2800:220:1::")
    assert (to.url, to.host, to.extensions) == (
        "http://[2606:2800:220:1::]/cb",
        "hooks.example.com",
        {},
    )
    assert callback_addresses("http://93.184.215.14/x", ()) == ["93.184.215.14"]


def test_an_answer_above_the_limit_ends_the_call() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 10

    whole = asyncio.run(_collect(StreamingResponse(chunks()), 100))
    assert (whole.status, whole.body) == (200, b"x" * 30)
    cut = asyncio.run(_collect(StreamingResponse(chunks()), 15))
    assert (cut.status, cut.final, cut.ok) == (413, True, False)
    assert cut.error == "the answer is larger than 15 bytes"


def test_the_embedded_nats_server_asks_for_a_token(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    config = broker.render_config(settings)
    token = broker.embedded_token(settings)
    assert len(token) >= 32
    assert f'token: "{token}"' in config.read_text()
    for path in (config, tmp_path / "nats" / "token"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert broker.render_config(settings).read_text().count(token) == 1  # the same token


def test_a_message_no_gateway_queued_does_not_decode() -> None:
    good = Call("abc", "fn", "POST", "/x", "", [], 1.0)
    assert Call.decode(good.encode()) == good
    for bad in (
        replace(good, path="@169.254.169.254/"),
        replace(good, function="../x"),
        replace(good, id="a.b"),
        replace(good, method="GET /x HTTP/1.1\r\n"),
    ):
        with pytest.raises(ValueError, match="not a call"):
            Call.decode(bad.encode())
    with pytest.raises(KeyError):
        Call.decode('{"id": "abc"}')
