"""The gateway's metrics, in process: a fake provider, Starlette's TestClient."""

from __future__ import annotations

import asyncio
import builtins
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faas.config import Settings
from faas.errors import DeployFailed, FunctionNotFound
from faas.gateway import build_app
from faas.keys import Keys
from faas.metrics import Metrics, wake_failure_cause
from faas.provider import Function, LogStream, Resources, StartTimes, State
from faas.sampler import Sampler
from faas.scaler import Scaler
from faas.spec import FunctionSpec, parse_spec

TOKEN = "t" * 32


class FakeProvider:
    """Functions in a dict; starts take the times given; stats calls are counted."""

    def __init__(self) -> None:
        self.functions: dict[str, Function] = {}
        self.fail_start = ""
        self.in_stats = 0
        self.most_in_stats = 0
        self._lock = threading.Lock()

    def prepare(self) -> None:
        pass

    def deploy(self, spec: FunctionSpec) -> Function:
        if spec.image == "bad":
            raise DeployFailed(spec.name, "no HTTP answer on port 8080 within 1s")
        fn = Function(spec, State.RUNNING, "c" * 64, datetime.now(UTC), "10.0.0.2:8080")
        self.functions[spec.name] = fn
        return fn

    def remove(self, name: str) -> None:
        self.get(name)
        del self.functions[name]

    def get(self, name: str) -> Function:
        if name not in self.functions:
            raise FunctionNotFound(name)
        return self.functions[name]

    def list(self) -> list[Function]:
        return list(self.functions.values())

    def start(self, name: str, times: StartTimes | None = None) -> Function:
        if self.fail_start:
            raise DeployFailed(name, self.fail_start)
        if times is not None:
            times.started, times.ready = 0.03, 0.2
        self.functions[name] = replace(self.get(name), state=State.RUNNING)
        return self.functions[name]

    def stop(self, name: str) -> None:
        self.functions[name] = replace(self.get(name), state=State.STOPPED)

    def sent_bytes(self, name: str) -> int | None:
        return 0

    def pull(self, image: str, auth: dict[str, str] | None = None) -> Iterator[dict[str, object]]:
        raise NotImplementedError

    def load(self, archive: IO[bytes]) -> builtins.list[str]:
        raise NotImplementedError

    def build(
        self, context: IO[bytes], tag: str, args: dict[str, str] | None = None
    ) -> Iterator[str]:
        raise NotImplementedError

    def resources(self, fn: Function) -> Resources:
        with self._lock:
            self.in_stats += 1
            self.most_in_stats = max(self.most_in_stats, self.in_stats)
        time.sleep(0.01)
        with self._lock:
            self.in_stats -= 1
        return Resources(1 << 20, 1 << 28, 2.5, 1, False)

    def logs(
        self, name: str, *, follow: bool = False, tail: int | None = None, since: int | None = None
    ) -> LogStream:
        raise NotImplementedError


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                return sample.value
    return None


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def scaler(provider: FakeProvider) -> Scaler:
    return Scaler(provider, None, interval=3600)


class Client:
    """Synchronous calls into the app, in process (no lifespan: no background loops)."""

    def __init__(self, transport: httpx.ASGITransport) -> None:
        self.transport = transport

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://gw") as c:
                response = await c.request(method, path, **kwargs)  # type: ignore[arg-type]
                await response.aread()
                return response

        return asyncio.run(call())

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def client(provider: FakeProvider, scaler: Scaler, tmp_path: Path) -> Client:
    keys = Keys.from_settings(Settings(state_dir=tmp_path))
    return Client(httpx.ASGITransport(app=build_app(provider, TOKEN, scaler, keys)))


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_metrics_open_on_gateway_port_but_token_under_api(client: Client) -> None:
    open_ = client.get("/metrics")
    assert open_.status_code == 200
    assert open_.headers["content-type"].startswith("text/plain")
    assert "faas_deploys_total" in open_.text
    assert client.get("/api/v1/metrics").status_code == 401
    assert client.get("/api/v1/metrics", headers=auth()).text.count("faas_wakes") > 0


def test_deploys_and_removes_are_counted_by_outcome(client: Client) -> None:
    ok = client.put("/api/v1/functions/a", json={"image": "faas/echo:latest"}, headers=auth())
    assert ok.status_code == 200
    failed = client.put("/api/v1/functions/b", json={"image": "bad"}, headers=auth())
    assert failed.status_code == 502
    assert client.delete("/api/v1/functions/a", headers=auth()).status_code == 204
    assert client.delete("/api/v1/functions/a", headers=auth()).status_code == 404
    text = client.get("/metrics").text
    assert sample_value(text, "faas_deploys_total", {"outcome": "ok"}) == 1
    assert sample_value(text, "faas_deploys_total", {"outcome": "error"}) == 1
    assert sample_value(text, "faas_removes_total", {"outcome": "ok"}) == 1
    assert sample_value(text, "faas_removes_total", {"outcome": "error"}) == 1


def test_wake_phases_failures_and_scale_downs(provider: FakeProvider, scaler: Scaler) -> None:
    provider.deploy(parse_spec({"name": "a", "image": "x"}))
    provider.stop("a")

    async def scenario() -> None:
        await scaler.wake("a")
        await scaler.scale_down("a")
        provider.fail_start = "out of memory"
        with pytest.raises(Exception, match="could not be woken"):
            await scaler.wake("a")

    asyncio.run(scenario())
    text = scaler.metrics.exposition().decode()
    assert sample_value(text, "faas_wakes_total", {"function": "a"}) == 1
    start = {"phase": "start", "le": "0.05"}
    ready = {"phase": "ready", "le": "0.1"}
    assert sample_value(text, "faas_wake_phase_seconds_bucket", start) == 1
    assert sample_value(text, "faas_wake_phase_seconds_bucket", ready) == 0  # 0.2 s > 0.1
    assert sample_value(text, "faas_wake_failures_total", {"cause": "oom"}) == 1
    assert sample_value(text, "faas_scale_downs_total", {"reason": "explicit"}) == 1


def test_functions_by_state_come_from_the_idle_check(
    provider: FakeProvider, scaler: Scaler
) -> None:
    for name in ("a", "b", "c"):
        provider.deploy(parse_spec({"name": name, "image": "x"}))
    provider.stop("c")
    asyncio.run(scaler.idle())
    text = scaler.metrics.exposition().decode()
    assert sample_value(text, "faas_functions", {"state": "running"}) == 2
    assert sample_value(text, "faas_functions", {"state": "stopped"}) == 1
    assert sample_value(text, "faas_functions", {"state": "failed"}) == 0


def test_sampler_bounds_concurrency_and_skips_stopped(provider: FakeProvider) -> None:
    for i in range(12):
        provider.deploy(parse_spec({"name": f"f{i}", "image": "x"}))
    provider.stop("f0")
    metrics = Metrics()
    sampler = Sampler(provider, metrics, interval=15, concurrency=3)
    sampled = asyncio.run(sampler.sample())
    assert set(sampled) == {f"f{i}" for i in range(1, 12)}
    assert 1 <= provider.most_in_stats <= 3
    text = metrics.exposition().decode()
    assert sample_value(text, "faas_function_memory_bytes", {"function": "f1"}) == 1 << 20
    assert sample_value(text, "faas_function_cpu_seconds_total", {"function": "f1"}) == 2.5
    assert sample_value(text, "faas_function_memory_bytes", {"function": "f0"}) is None


def test_stats_endpoint_without_traefik(client: Client, provider: FakeProvider) -> None:
    provider.deploy(parse_spec({"name": "a", "image": "x"}))
    rows = client.get("/api/v1/stats", headers=auth()).json()
    assert rows == [
        {
            "name": "a",
            "state": "running",
            "invocations": 0,
            "error_rate": None,
            "p50_seconds": None,
            "p50_bound": None,
            "p99_seconds": None,
            "p99_bound": None,
            "cold_starts": 0,
            "memory_bytes": None,
            "memory_limit_bytes": None,
        }
    ]
    assert client.get("/api/v1/stats?name=zz", headers=auth()).status_code == 404


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("out of memory", "oom"),
        ("no HTTP answer on port 8080 within 8s", "timeout"),
        ("exited with code 1", "exited"),
        ("Traefik did not route to 1.2.3.4:80 within 8s", "route"),
        ("something else", "other"),
    ],
)
def test_wake_failure_causes_are_a_fixed_set(reason: str, cause: str) -> None:
    assert wake_failure_cause(reason) == cause
