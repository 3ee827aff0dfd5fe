import math
from datetime import UTC, datetime

import pytest

from faas.cli import _latency
from faas.provider import Function, State, Usage
from faas.spec import parse_spec
from faas.stats import Quantile, function_rows, parse_traefik, quantile

# Shaped like Traefik 3.7's exposition (trimmed).
TRAEFIK = """\
# HELP traefik_service_requests_total How many HTTP requests processed on a service.
# TYPE traefik_service_requests_total counter
traefik_service_requests_total{code="200",method="GET",protocol="http",service="fn-a@docker"} 90
traefik_service_requests_total{code="502",method="GET",protocol="http",service="fn-a@docker"} 10
traefik_service_requests_total{code="200",method="GET",protocol="http",service="faas-gateway@file"} 3
# HELP traefik_service_request_duration_seconds How long it took to process the request.
# TYPE traefik_service_request_duration_seconds histogram
traefik_service_request_duration_seconds_bucket{code="200",method="GET",protocol="http",service="fn-a@docker",le="0.1"} 50
traefik_service_request_duration_seconds_bucket{code="200",method="GET",protocol="http",service="fn-a@docker",le="0.3"} 90
traefik_service_request_duration_seconds_bucket{code="200",method="GET",protocol="http",service="fn-a@docker",le="+Inf"} 90
traefik_service_request_duration_seconds_bucket{code="502",method="GET",protocol="http",service="fn-a@docker",le="0.1"} 10
traefik_service_request_duration_seconds_bucket{code="502",method="GET",protocol="http",service="fn-a@docker",le="0.3"} 10
traefik_service_request_duration_seconds_bucket{code="502",method="GET",protocol="http",service="fn-a@docker",le="+Inf"} 10
traefik_service_request_duration_seconds_sum{code="200",method="GET",protocol="http",service="fn-a@docker"} 9
traefik_service_request_duration_seconds_count{code="200",method="GET",protocol="http",service="fn-a@docker"} 90
"""  # noqa: E501 (real exposition lines)


def test_parse_sums_codes_and_counts_5xx() -> None:
    services = parse_traefik(TRAEFIK)
    a = services["fn-a@docker"]
    assert (a.requests, a.errors) == (100, 10)
    assert a.buckets == {0.1: 60, 0.3: 100, math.inf: 100}
    assert services["faas-gateway@file"].requests == 3


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = {0.001: 10.0, 0.005: 60.0, 0.01: 100.0, math.inf: 100.0}
    median, q80 = quantile(0.5, buckets), quantile(0.8, buckets)
    assert median is not None
    assert q80 is not None
    assert median.seconds == pytest.approx(0.001 + 0.004 * 40 / 50)
    assert q80.seconds == pytest.approx(0.005 + 0.005 * 20 / 40)
    assert median.bound is q80.bound is None
    assert quantile(0.5, {}) is None
    assert quantile(0.5, {math.inf: 0.0}) is None


def test_quantile_in_the_first_bucket_is_only_its_bound() -> None:
    """The old figure: a 3 ms call under Traefik's default buckets read as p50 50 ms."""
    default = {0.1: 100.0, 0.3: 100.0, 1.2: 100.0, 5.0: 100.0, math.inf: 100.0}
    assert quantile(0.5, default) == Quantile(0.1, "le")
    assert quantile(0.99, default) == Quantile(0.1, "le")


def test_quantile_in_the_open_bucket_is_more_than_its_floor() -> None:
    assert quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == Quantile(0.1, "gt")


@pytest.mark.parametrize(
    ("seconds", "bound", "shown"),
    [
        (0.0031, None, "3.1ms"),
        (0.0005, "le", "≤0.5ms"),
        (0.1, "le", "≤100.0ms"),
        (60.0, "gt", ">60s"),
        (2.5, None, "2.5s"),
        (None, None, "-"),
    ],
)
def test_the_cli_marks_a_quantile_that_is_only_a_bound(
    seconds: float | None, bound: str | None, shown: str
) -> None:
    assert _latency(seconds, bound) == shown


def function(name: str, state: State) -> Function:
    spec = parse_spec({"name": name, "image": "faas/echo:latest"})
    return Function(spec=spec, state=state, container_id="c" * 64, created=datetime.now(UTC))


def test_rows_join_traefik_service_to_function() -> None:
    sample = Usage(100, 1000, 1.5, 0, False)
    rows = function_rows(
        [function("a", State.RUNNING), function("b", State.STOPPED)],
        parse_traefik(TRAEFIK),
        {"a": 2},
        {"a": sample},
    )
    a, b = rows
    assert a["invocations"] == 100
    assert a["error_rate"] == pytest.approx(0.1)
    assert a["cold_starts"] == 2
    assert a["memory_bytes"] == 100
    assert b["invocations"] == 0
    assert b["error_rate"] is None
    assert b["p99_seconds"] is None
    assert b["p99_bound"] is None
    # TRAEFIK's p50 (rank 50 of 100) lies in its first bucket, (0, 0.1].
    assert (a["p50_seconds"], a["p50_bound"]) == (0.1, "le")
    assert b["memory_bytes"] is None
