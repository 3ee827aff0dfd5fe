"""The gateway's metrics, in process: fake provider and router, httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faas.config import Settings
from faas.gateway import build_app
from faas.keys import Keys
from faas.lifecycle import Lifecycle
from faas.metrics import Metrics
from faas.provider import State
from faas.sampler import Sampler
from faas.scaler import Scaler

from .fakes import SILENT, FakeProvider, lifecycle

TOKEN = "t" * 32


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels or {}).items() <= sample.labels.items():
                return sample.value
    return None


@pytest.fixture
def life(provider: FakeProvider) -> Lifecycle:
    return lifecycle(provider)


@pytest.fixture
def scaler(life: Lifecycle) -> Scaler:
    return Scaler(life, interval=3600)


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
def client(life: Lifecycle, scaler: Scaler, tmp_path: Path) -> Client:
    keys = Keys.from_settings(Settings(state_dir=tmp_path))
    return Client(httpx.ASGITransport(app=build_app(life, TOKEN, keys, scaler=scaler)))


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
    failed = client.put("/api/v1/functions/b", json={"image": SILENT}, headers=auth())
    assert failed.status_code == 502
    assert client.delete("/api/v1/functions/a", headers=auth()).status_code == 204
    assert client.delete("/api/v1/functions/a", headers=auth()).status_code == 404
    text = client.get("/metrics").text
    assert sample_value(text, "faas_deploys_total", {"outcome": "ok"}) == 1
    assert sample_value(text, "faas_deploys_total", {"outcome": "error"}) == 1
    assert sample_value(text, "faas_removes_total", {"outcome": "ok"}) == 1
    assert sample_value(text, "faas_removes_total", {"outcome": "error"}) == 1


def test_wake_phases_failures_and_scale_downs(provider: FakeProvider, life: Lifecycle) -> None:
    provider.add("a")

    async def scenario() -> None:
        await life.wake("a")
        await life.scale_down("a")
        provider.fail_start = ("out of memory", True)
        with pytest.raises(Exception, match="could not be woken"):
            await life.wake("a")

    asyncio.run(scenario())
    text = life.metrics.exposition().decode()
    assert sample_value(text, "faas_wakes_total", {"function": "a"}) == 1
    start = {"phase": "start", "le": "0.05"}
    ready = {"phase": "ready", "le": "0.1"}
    assert sample_value(text, "faas_wake_phase_seconds_bucket", start) == 1
    assert sample_value(text, "faas_wake_phase_seconds_bucket", ready) == 1
    assert sample_value(text, "faas_wake_failures_total", {"cause": "oom"}) == 1
    assert sample_value(text, "faas_scale_downs_total", {"reason": "explicit"}) == 1


def test_functions_by_state_come_from_the_idle_check(
    provider: FakeProvider, scaler: Scaler
) -> None:
    for name in ("a", "b"):
        provider.add(name, State.RUNNING)
    provider.add("c")
    asyncio.run(scaler.idle())
    text = scaler.lifecycle.metrics.exposition().decode()
    assert sample_value(text, "faas_functions", {"state": "running"}) == 2
    assert sample_value(text, "faas_functions", {"state": "stopped"}) == 1
    assert sample_value(text, "faas_functions", {"state": "failed"}) == 0


def test_sampler_bounds_concurrency_and_skips_stopped(
    provider: FakeProvider, life: Lifecycle
) -> None:
    provider.add("f0")
    for i in range(1, 12):
        provider.add(f"f{i}", State.RUNNING)
    metrics = Metrics()
    sampler = Sampler(life, metrics, interval=15, concurrency=3)
    sampled = asyncio.run(sampler.sample())
    assert set(sampled) == {f"f{i}" for i in range(1, 12)}
    assert 1 <= provider.most_in_usage <= 3
    text = metrics.exposition().decode()
    assert sample_value(text, "faas_function_memory_bytes", {"function": "f1"}) == 1 << 20
    assert sample_value(text, "faas_function_cpu_seconds_total", {"function": "f1"}) == 2.5
    assert sample_value(text, "faas_function_memory_bytes", {"function": "f0"}) is None


def test_stats_endpoint_without_traefik(client: Client, provider: FakeProvider) -> None:
    provider.add("a", State.RUNNING)
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
