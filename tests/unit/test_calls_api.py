"""The enqueue and calls endpoints in process, against an in-memory broker:
what is stored, what is refused (with nothing stored), who may do what."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from faas.broker import Broker, Stored
from faas.calls import Call
from faas.config import Settings
from faas.errors import CallNotFound
from faas.gateway import build_app
from faas.keys import Keys
from faas.spec import parse_spec
from tests.unit.fakes import FakeProvider, lifecycle
from tests.unit.test_metrics import TOKEN, Client

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class MemoryBroker(Broker):
    """The two streams as lists; subscribing waits forever (no worker runs here)."""

    def __init__(self) -> None:
        super().__init__("nats://memory", "t", 30)
        self.stored: list[Stored] = []

    async def publish(self, call: Call, body: bytes, dead: bool = False, new: bool = False) -> None:
        self.stored.append(Stored(len(self.stored) + 1, dead, call, body))

    async def subscribe(self, function: str) -> Broker:  # type: ignore[override]
        await asyncio.Event().wait()
        raise AssertionError  # pragma: no cover

    async def scan(self, function: str, dead: bool, limit: int) -> list[Stored]:
        return [s for s in self.stored if s.call.function == function and s.dead == dead][:limit]

    async def depth(self, function: str) -> int:
        return len(await self.scan(function, False, 10**6))

    async def find(self, call_id: str) -> Stored:
        for stored in self.stored:
            if stored.call.id == call_id:
                return stored
        raise CallNotFound(call_id)

    async def delete(self, stored: Stored) -> None:
        self.stored.remove(stored)


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def client(tmp_path: Path, broker: MemoryBroker) -> Client:
    provider = FakeProvider()
    provider.add(parse_spec({"name": "fn", "image": "x"}))
    provider.add(parse_spec({"name": "small", "image": "x", "limits": {"max_body_bytes": 10}}))
    provider.add(parse_spec({"name": "keyed", "image": "x", "auth": "key"}))
    settings = Settings(state_dir=tmp_path, callback_allow="198.51.100.0/24")
    app = build_app(
        lifecycle(provider), TOKEN, Keys.from_settings(settings), settings, broker=broker
    )
    return Client(httpx.ASGITransport(app=app))


def test_an_enqueue_stores_the_whole_request_and_answers_202(
    client: Client, broker: MemoryBroker
) -> None:
    got = client.request(
        "PATCH",
        "/async-function/fn/a/b%20c?x=1&y=2",
        content=b"payload",
        headers={"X-Custom": "v", "X-Call-Id": "mine-1", "X-Callback-Url": "http://198.51.100.7/h"},
    )
    assert got.status_code == 202, got.text
    assert got.headers["X-Call-Id"] == "mine-1"
    assert got.json() == {"call_id": "mine-1", "function": "fn"}
    (stored,) = broker.stored
    call = stored.call
    assert (call.method, call.path, call.query) == ("PATCH", "/a/b%20c", "x=1&y=2")
    assert ("x-custom", "v") in call.headers
    assert not any(k in ("x-call-id", "x-callback-url", "content-length") for k, _ in call.headers)
    assert (call.callback, call.attempts, stored.body, stored.dead) == (
        "http://198.51.100.7/h",
        0,
        b"payload",
        False,
    )


def test_the_api_v1_path_and_the_openfaas_namespace_form_queue_too(
    client: Client, broker: MemoryBroker
) -> None:
    assert client.request("POST", "/api/v1/async-function/fn", content=b"").status_code == 202
    assert client.request("POST", "/async-function/fn.openfaas-fn/p").status_code == 202
    assert client.request("POST", "/async-function/fn.elsewhere/p").status_code == 404
    assert [s.call.path for s in broker.stored] == ["/", "/p"]


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [
        ("/async-function/nosuch", {}, b"x", 404),
        # An encoded slash must not make the rest of the path the URL's authority.
        ("/async-function/fn%2F@169.254.169.254/latest", {}, b"x", 404),
        ("/async-function/small", {}, b"x" * 11, 413),
        ("/async-function/fn", {"X-Callback-Url": "http://127.0.0.1:8081/api/v1"}, b"x", 400),
        ("/async-function/fn", {"X-Callback-Url": "http://169.254.169.254/"}, b"x", 400),
        ("/async-function/fn", {"X-Callback-Url": "file:///etc/passwd"}, b"x", 400),
        ("/async-function/keyed", {}, b"x", 401),
        ("/async-function/keyed", {"X-Faas-Key": "wrong"}, b"x", 403),
    ],
)
def test_refused_calls_store_nothing(
    client: Client,
    broker: MemoryBroker,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    got = client.request("POST", path, content=body, headers=headers)
    assert got.status_code == status, got.text
    assert "error" in got.json()
    assert broker.stored == []


def test_a_key_function_queues_with_the_admin_token_and_no_key_is_stored(
    client: Client, broker: MemoryBroker
) -> None:
    got = client.request("POST", "/async-function/keyed", headers=AUTH)
    assert got.status_code == 202, got.text
    (stored,) = broker.stored
    assert TOKEN not in stored.call.encode()


def test_listing_retrying_and_dropping_need_the_admin_token(
    client: Client, broker: MemoryBroker
) -> None:
    call_id = client.request("POST", "/async-function/fn").headers["X-Call-Id"]
    assert client.request("GET", "/api/v1/functions/fn/calls").status_code == 401
    assert client.request("DELETE", f"/api/v1/calls/{call_id}").status_code == 401
    assert client.request("POST", f"/api/v1/calls/{call_id}/retry").status_code == 401
    listed = client.request("GET", "/api/v1/functions/fn/calls", headers=AUTH).json()
    assert listed["queued"] == 1
    assert [(c["id"], c["state"]) for c in listed["calls"]] == [(call_id, "queued")]
    assert client.request("DELETE", f"/api/v1/calls/{call_id}", headers=AUTH).status_code == 204
    assert client.request("DELETE", f"/api/v1/calls/{call_id}", headers=AUTH).status_code == 404
    assert client.request("DELETE", "/api/v1/calls/a.b", headers=AUTH).status_code == 422


def test_a_failed_call_retried_is_queued_again_with_its_attempts_anew(
    client: Client, broker: MemoryBroker
) -> None:
    dead = Call("c1", "fn", "POST", "/", "", [], 1.0, attempts=5, last_error="HTTP 500")
    broker.stored.append(Stored(1, True, dead, b"body"))
    listed = client.request("GET", "/api/v1/functions/fn/calls", headers=AUTH).json()
    assert [(c["state"], c["attempts"], c["last_error"]) for c in listed["calls"]] == [
        ("failed", 5, "HTTP 500")
    ]
    got = client.request("POST", "/api/v1/calls/c1/retry", headers=AUTH)
    assert got.status_code == 202, got.text
    (again,) = broker.stored
    assert (again.dead, again.call.attempts, again.call.last_error, again.body) == (
        False,
        0,
        "HTTP 500",
        b"body",
    )
