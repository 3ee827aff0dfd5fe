"""Per-function statistics: Traefik's per-service metrics joined with the gateway's.

Traefik names a function's service `fn-<name>@docker` (`labels.service_name`);
its counters reset when Traefik restarts, and a service's series vanish while
the function is stopped, so the figures cover the running Traefik's lifetime
and, for a function scaled to zero, are absent until it runs again. Requests
the gateway itself forwards (cold ones) are counted under Traefik's
`faas-gateway@file` service, not the function's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from . import labels
from .provider import Function, Usage

REQUESTS = "traefik_service_requests_total"
BUCKETS = "traefik_service_request_duration_seconds_bucket"


@dataclass
class ServiceStats:
    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count


def parse_traefik(text: str) -> dict[str, ServiceStats]:
    """Request counts, 5xx counts and latency buckets per Traefik service, summed
    over code, method and protocol."""
    services: dict[str, ServiceStats] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            service = sample.labels.get("service")
            if service is None or sample.name not in (REQUESTS, BUCKETS):
                continue
            stats = services.setdefault(service, ServiceStats())
            if sample.name == REQUESTS:
                stats.requests += sample.value
                if sample.labels.get("code", "").startswith("5"):
                    stats.errors += sample.value
            else:
                le = float(sample.labels["le"])
                stats.buckets[le] = stats.buckets.get(le, 0.0) + sample.value
    return services


@dataclass(frozen=True)
class Quantile:
    """A quantile read from histogram buckets.

    Between two bucket bounds it is interpolated (`bound` None). In the first
    bucket or the open-ended last one, interpolation would invent a figure: all
    the buckets say is that it is at most (`le`) the first bound, or more than
    (`gt`) the last finite one, and `seconds` is that bound.
    """

    seconds: float
    bound: Literal["le", "gt"] | None = None


def quantile(q: float, buckets: Mapping[float, float]) -> Quantile | None:
    """Like PromQL's histogram_quantile: linear within the bucket that holds rank q,
    except in the first and the open-ended bucket (see `Quantile`)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for index, bound in enumerate(bounds):
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return Quantile(lower, "gt")
            if index == 0:
                return Quantile(bound, "le")
            if count == below:
                return Quantile(bound)
            return Quantile(lower + (bound - lower) * (rank - below) / (count - below))
        lower, below = bound, count
    return None


def quantile_fields(name: str, value: Quantile | None) -> dict[str, object]:
    """`<name>_seconds` and `<name>_bound` of a stats row (both None without requests)."""
    return {
        f"{name}_seconds": value.seconds if value else None,
        f"{name}_bound": value.bound if value else None,
    }


def function_rows(
    functions: list[Function],
    traefik: Mapping[str, ServiceStats],
    cold_starts: Mapping[str, int],
    resources: Mapping[str, Usage],
    provider: str = "docker",
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for fn in functions:
        name = fn.spec.name
        service = traefik.get(labels.service_name(name, provider), ServiceStats())
        sample = resources.get(name)
        rows.append(
            {
                "name": name,
                "state": fn.state.value,
                "invocations": int(service.requests),
                "error_rate": service.errors / service.requests if service.requests else None,
                **quantile_fields("p50", quantile(0.5, service.buckets)),
                **quantile_fields("p99", quantile(0.99, service.buckets)),
                "cold_starts": cold_starts.get(name, 0),
                "memory_bytes": sample.memory_bytes if sample else None,
                "memory_limit_bytes": sample.memory_limit_bytes if sample else None,
            }
        )
    return rows
