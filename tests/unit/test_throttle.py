"""The failed-credentials throttle (faas/throttle.py): a fake clock, then the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from loguru import logger

from faas.config import Settings
from faas.errors import TooManyRequests
from faas.gateway import build_app
from faas.keys import Keys
from faas.spec import FunctionSpec
from faas.throttle import Throttle, client_key
from tests.unit.conftest import Clock
from tests.unit.fakes import FakeProvider, lifecycle
from tests.unit.test_metrics import TOKEN, Client

A, B = "203.0.113.7", "198.51.100.9"


def throttle(clock: Clock, **values: float) -> Throttle:
    settings: dict[str, float] = {
        "limit": 3,
        "window": 60,
        "backoff": 1,
        "max_backoff": 8,
        "max_clients": 100,
        **values,
    }
    return Throttle(
        int(settings["limit"]),
        settings["window"],
        settings["backoff"],
        settings["max_backoff"],
        int(settings["max_clients"]),
        clock=clock,
    )


def fail(t: Throttle, host: str, times: int = 1) -> None:
    for _ in range(times):
        t.check(host)
        t.failed(host, "admin token")


def test_the_limit_th_failure_locks_the_client_out(clock: Clock) -> None:
    t = throttle(clock)
    fail(t, A, 2)
    assert t.retry_after(A) == 0
    fail(t, A)
    assert t.retry_after(A) == 1
    with pytest.raises(TooManyRequests) as info:
        t.check(A)
    assert info.value.retry_after == 1
    t.check(B)  # another client is never refused
    clock.now += 0.6
    assert t.retry_after(A) == pytest.approx(0.4)
    clock.now += 0.4
    t.check(A)


def test_failures_older_than_the_window_do_not_count(clock: Clock) -> None:
    t = throttle(clock)
    fail(t, A, 2)
    clock.now += 61
    fail(t, A, 2)
    assert t.retry_after(A) == 0


def test_each_further_lockout_doubles_up_to_the_maximum(clock: Clock) -> None:
    t = throttle(clock)
    fail(t, A, 3)
    lockouts = []
    for _ in range(6):
        lockouts.append(t.retry_after(A))
        clock.now += t.retry_after(A)
        fail(t, A)  # one more failure after the lockout: locked out again, longer
    assert lockouts == [1, 2, 4, 8, 8, 8]


def test_a_right_credential_forgets_the_failures(clock: Clock) -> None:
    t = throttle(clock)
    fail(t, A, 2)
    t.succeeded(A)
    fail(t, A, 2)
    assert t.retry_after(A) == 0


def test_a_client_quiet_for_a_window_starts_again_from_the_first_lockout(clock: Clock) -> None:
    t = throttle(clock, max_backoff=100)
    fail(t, A, 3)
    clock.now += 1
    fail(t, A)
    assert t.retry_after(A) == 2
    clock.now += 2 + 60
    fail(t, A, 2)
    assert t.retry_after(A) == 0
    fail(t, A)
    assert t.retry_after(A) == 1


def test_memory_is_bounded_by_forgetting_the_longest_idle(clock: Clock) -> None:
    t = throttle(clock, max_clients=3)
    fail(t, "10.0.0.1", 3)
    for i in range(2, 6):
        clock.now += 0.1
        fail(t, f"10.0.0.{i}")
    assert len(t) == 3
    assert t.retry_after("10.0.0.1") == 0  # the oldest, locked out, was forgotten first


def test_limit_zero_switches_it_off(clock: Clock) -> None:
    t = throttle(clock, limit=0)
    fail(t, A, 100)
    assert t.retry_after(A) == 0
    assert len(t) == 0


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # same /64: one client
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("testclient", "testclient"),
        (None, "unknown"),
    ],
)
def test_client_keys(host: str | None, key: str) -> None:
    assert client_key(host) == key


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")
    yield lines
    logger.remove(sink)


def gateway(tmp_path: Path, provider: FakeProvider, address: str) -> Client:
    settings = Settings(state_dir=tmp_path, auth_max_failures=5)
    keys = Keys.from_settings(settings)
    app = build_app(lifecycle(provider), TOKEN, keys, settings)
    return Client(httpx.ASGITransport(app=app, client=(address, 40000)))


def test_the_gateway_locks_out_a_guesser_only(tmp_path: Path, logs: list[str]) -> None:
    provider = FakeProvider()
    guesser = gateway(tmp_path, provider, A)
    admin = Client(httpx.ASGITransport(app=guesser.transport.app, client=(B, 40000)))
    codes = [
        guesser.get("/api/v1/functions", headers={"Authorization": f"Bearer guess-{i:04}"})
        for i in range(200)
    ]
    assert [r.status_code for r in codes[:5]] == [401] * 5
    assert {r.status_code for r in codes[5:]} == {429}
    assert codes[5].headers["retry-after"] == "1"
    assert codes[5].json()["detail"] == {"retry_after": 1}
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert admin.get("/api/v1/functions", headers=right).status_code == 200
    # The guesser's own right token waits for the lockout: 429 tells nothing.
    assert guesser.get("/api/v1/functions", headers=right).status_code == 429
    # No token at all is not a guess.
    assert (
        Client(httpx.ASGITransport(app=guesser.transport.app, client=("192.0.2.50", 1)))
        .get("/api/v1/functions")
        .status_code
        == 401
    )
    failures = [line for line in logs if line.startswith("wrong admin token")]
    assert len(failures) == 5
    assert all(A in line for line in failures)
    assert not any("guess-" in line for line in logs)


def test_wrong_invoke_keys_are_throttled_on_the_key_check(tmp_path: Path) -> None:
    provider = FakeProvider()
    provider.add(FunctionSpec.model_validate({"name": "fn", "image": "x", "auth": "key"}))
    guesser = gateway(tmp_path, provider, A)
    other = Client(httpx.ASGITransport(app=guesser.transport.app, client=(B, 1)))
    key = Keys.from_settings(Settings(state_dir=tmp_path)).create("fn", None).key
    codes = [
        guesser.get("/api/v1/auth/fn", headers={"X-Faas-Key": f"fk1.{i}"}).status_code
        for i in range(20)
    ]
    assert codes == [403] * 5 + [429] * 15
    assert other.get("/api/v1/auth/fn", headers={"X-Faas-Key": key}).status_code == 200
    assert other.get("/api/v1/auth/fn").status_code == 401  # no key: not counted
    assert guesser.get("/api/v1/auth/fn", headers={"X-Faas-Key": key}).status_code == 429
