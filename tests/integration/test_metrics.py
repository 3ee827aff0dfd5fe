"""Metrics and `faas stats` against a real stack, and a real Prometheus scrape.

Request ids: test_call_id.py."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from faas.cli import app
from faas.traefik import LATENCY_BUCKETS

from .conftest import Stack, free_port, wait_for

pytestmark = pytest.mark.integration


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.fixture
def function(stack: Stack) -> Iterator[str]:
    with stack.deployed("m") as name:
        yield name


def test_gateway_metrics_open_locally_and_guarded_through_traefik(
    stack: Stack, function: str
) -> None:
    local = requests.get(f"{stack.direct}/metrics", timeout=10)
    assert local.status_code == 200
    assert value(local.text, "faas_deploys_total", outcome="ok") >= 1
    assert requests.get(f"{stack.url}/api/v1/metrics", timeout=10).status_code == 401
    assert requests.get(f"{stack.url}/metrics", timeout=10).status_code == 404
    guarded = stack.api("GET", "/metrics")
    assert guarded.status_code == 200
    assert "faas_wake_phase_seconds" in guarded.text


def test_resources_are_sampled_for_running_functions(stack: Stack, function: str) -> None:
    def sampled() -> bool:
        text = requests.get(f"{stack.direct}/metrics", timeout=10).text
        return value(text, "faas_function_memory_bytes", function=function) > 0

    wait_for(sampled, 15, "a memory sample")
    text = requests.get(f"{stack.direct}/metrics", timeout=10).text
    # The platform's default limit (256m), as the engine reports it.
    assert value(text, "faas_function_memory_limit_bytes", function=function) == 256 * 2**20
    assert value(text, "faas_function_cpu_seconds_total", function=function) > 0


def test_stats_counts_invocations_errors_and_a_cold_start(stack: Stack, function: str) -> None:
    for _ in range(7):
        assert stack.invoke(function).status_code == 200
    for _ in range(3):
        assert stack.invoke(function, headers={"X-Echo-Status": "503"}).status_code == 503
    (row,) = stack.api("GET", "/stats", params={"name": function}).json()
    assert row["invocations"] == 10
    assert row["error_rate"] == pytest.approx(0.3)
    assert 0 < row["p50_seconds"] <= row["p99_seconds"] < 5
    # The echo answers in a few ms: inside the function-sized buckets, where
    # Traefik's default ones (first bound 0.1 s) gave only "at most 100 ms".
    assert row["p50_seconds"] < 0.05, row
    assert row["p50_bound"] in (None, "le"), row
    bounds = {
        float(sample.labels["le"])
        for family in text_string_to_metric_families(
            requests.get(f"{stack.traefik_api}/metrics", timeout=10).text
        )
        for sample in family.samples
        if sample.name == "traefik_service_request_duration_seconds_bucket"
    }
    assert bounds == {*LATENCY_BUCKETS, math.inf}

    assert stack.api("POST", f"/functions/{function}/scale", json={"replicas": 0}).ok
    assert stack.invoke(function).status_code == 200  # through the gateway: a wake
    (row,) = stack.api("GET", "/stats", params={"name": function}).json()
    assert row["cold_starts"] == 1
    text = requests.get(f"{stack.direct}/metrics", timeout=10).text
    for phase in ("start", "ready", "first_byte"):
        assert value(text, "faas_wake_phase_seconds_count", phase=phase) >= 1, phase
    assert value(text, "faas_wakes_total", function=function) == 1

    result = CliRunner().invoke(app, ["--url", stack.url, "--token", stack.token, "stats"])
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split() == [
        "NAME", "STATE", "INVOCATIONS", "ERRORS", "P50", "P99", "COLD", "MEMORY"
    ]  # fmt: skip
    (mine,) = [line.split() for line in lines if line.split()[0] == function]
    assert mine[1] == "running"
    assert mine[6] == "1"


# -- a real Prometheus -------------------------------------------------------


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("no prometheus binary; run `make test-deps`")
    return found


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping this stack's gateway and Traefik every 0.5 s; its URL."""
    binary = prometheus_binary()
    config = tmp_path / "prometheus.yml"
    gateway = stack.direct.removeprefix("http://")
    traefik = stack.traefik_api.removeprefix("http://")
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: faas, static_configs: [{{targets: ['{gateway}']}}]}}\n"
        f"  - {{job_name: traefik, static_configs: [{{targets: ['{traefik}']}}]}}\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 30, "prometheus to be ready")
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def query(url: str, promql: str) -> list[dict[str, object]]:
    got = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    got.raise_for_status()
    body = got.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_gateway_and_traefik(
    stack: Stack, function: str, prometheus: str
) -> None:
    for _ in range(5):
        assert stack.invoke(function).status_code == 200
    service = f"fn-{function}@docker"
    promql = f'sum(traefik_service_requests_total{{service="{service}"}})'

    def counted_five() -> bool:
        result = query(prometheus, promql)
        return bool(result) and float(result[0]["value"][1]) == 5  # type: ignore[index]

    def both_up() -> bool:
        up = {r["metric"]["job"]: r["value"][1] for r in query(prometheus, "up")}  # type: ignore[index]
        return up == {"faas": "1", "traefik": "1"}

    # Each target is scraped at its own offset within the interval: wait for both.
    wait_for(counted_five, 30, "Prometheus to see 5 requests")
    wait_for(both_up, 30, "both targets up")
    deploys = query(prometheus, 'faas_deploys_total{outcome="ok"}')
    assert deploys
    assert float(deploys[0]["value"][1]) >= 1  # type: ignore[index]
