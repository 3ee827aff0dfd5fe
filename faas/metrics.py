"""The gateway's Prometheus metrics: every metric object lives here, in one registry.

Invocation counts, error rates and latency are not here: Traefik measures them
per service on the warm path (`traefik_service_requests_total{service="fn-<name>@docker"}`),
where no Python runs. The gateway counts what only it sees: deploys, wakes and
their phases, scale-downs, and samples of the containers' resources.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .provider import Function, State, Usage

# Wakes take from ~30 ms (a tiny server) to the ready timeout (30 s by default).
WAKE_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Snapshot(Collector):
    """Gauges read from the latest samples, so a scrape never calls the engine."""

    def __init__(self) -> None:
        self.states: Tally[str] = Tally()
        self.resources: dict[str, Usage] = {}
        self.replicas: dict[str, tuple[int, int]] = {}  # function -> (desired, ready)
        self.concurrency: dict[str, float] = {}  # function -> requests in flight (panic window)

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "faas_functions",
            "Deployed functions by state (at the last idle check).",
            labels=["state"],
        )
        for state in State:
            states.add_metric([state.value], self.states[state.value])
        yield states
        yield from self._resources()
        yield from self._replicas()

    def _replicas(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily(
            "faas_function_replicas",
            "Replicas per function: desired (the autoscaler's) and ready (answering).",
            labels=["function", "kind"],
        )
        for name, (desired, ready) in sorted(self.replicas.items()):
            replicas.add_metric([name, "desired"], desired)
            replicas.add_metric([name, "ready"], ready)
        concurrency = GaugeMetricFamily(
            "faas_function_concurrency",
            "Requests in flight per function, averaged over the autoscaler's panic window.",
            labels=["function"],
        )
        for name, value in sorted(self.concurrency.items()):
            concurrency.add_metric([name], value)
        yield from (replicas, concurrency)

    def _resources(self) -> Iterator[Metric]:
        fn = ["function"]
        memory = GaugeMetricFamily("faas_function_memory_bytes", "Memory in use.", labels=fn)
        limit = GaugeMetricFamily("faas_function_memory_limit_bytes", "Memory limit.", labels=fn)
        cpu = CounterMetricFamily("faas_function_cpu_seconds", "CPU time used.", labels=fn)
        restarts = CounterMetricFamily(
            "faas_function_restarts", "Restarts of the container by the engine.", labels=fn
        )
        oom = GaugeMetricFamily(
            "faas_function_oom_killed", "1 if the container's last exit was an OOM kill.", labels=fn
        )
        for name, r in sorted(self.resources.items()):
            memory.add_metric([name], r.memory_bytes)
            limit.add_metric([name], r.memory_limit_bytes)
            cpu.add_metric([name], r.cpu_seconds)
            restarts.add_metric([name], r.restarts)
            oom.add_metric([name], float(r.oom_killed))
        yield from (memory, limit, cpu, restarts, oom)


class Metrics:
    """The metric objects of one gateway (own registry: tests build many gateways)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deploys = Counter("faas_deploys", "Deploys by outcome.", ["outcome"], registry=r)
        self.removes = Counter("faas_removes", "Removals by outcome.", ["outcome"], registry=r)
        self.wakes = Counter(
            "faas_wakes", "Cold starts (wakes) by function.", ["function"], registry=r
        )
        self.wake_phase = Histogram(
            "faas_wake_phase_seconds",
            "Wake duration by phase: start (engine starts the container), "
            "ready (started -> answers HTTP), first_byte (woken -> the function's "
            "response headers, per request that waited).",
            ["phase"],
            buckets=WAKE_BUCKETS,
            registry=r,
        )
        self.cold_first_byte = Histogram(
            "faas_cold_request_first_byte_seconds",
            "A request that had to wait for a wake: arrival -> response headers from the function.",
            buckets=WAKE_BUCKETS,
            registry=r,
        )
        self.wake_failures = Counter(
            "faas_wake_failures", "Failed wakes by cause.", ["cause"], registry=r
        )
        self.scale_downs = Counter(
            "faas_scale_downs",
            "Scale-downs to zero (stopped) by reason (idle, explicit, evicted: beyond "
            "FAAS_MAX_PAUSED).",
            ["reason"],
            registry=r,
        )
        self.pauses = Counter(
            "faas_pauses", "Functions paused (the paused tier) by reason.", ["reason"], registry=r
        )
        self.resumes = Counter(
            "faas_resumes", "Resumes from the paused tier by function.", ["function"], registry=r
        )
        self.scale_events = Counter(
            "faas_scale_events",
            "Replica count changes by direction (up, down) and reason (load, explicit, "
            "replace, idle).",
            ["direction", "reason"],
            registry=r,
        )
        self.scale_blocked = Counter(
            "faas_scale_blocked",
            "Scale-ups refused by function and reason (memory: the replica's limit does "
            "not fit beside the running functions' limits).",
            ["function", "reason"],
            registry=r,
        )
        self.key_checks = Counter(
            "faas_key_checks",
            "Invoke keys Traefik asked the gateway about, by outcome (allowed, refused): "
            "its key plugin asks only about the keys it cannot let through itself.",
            ["outcome"],
            registry=r,
        )
        self.nodes = Gauge(
            "faas_nodes",
            "Nodes of a multi-node engine by state: up (answered the gateway's last "
            "check), lost (stopped answering: their replicas get no requests where "
            "others can serve, until the engine moves them or the node answers).",
            ["state"],
            registry=r,
        )
        self.node_losses = Counter(
            "faas_node_losses", "Nodes that stopped answering the gateway.", registry=r
        )
        self.loop_errors = Counter(
            "faas_loop_errors",
            "Failed rounds of a background loop (scaler, sampler, nodes); the loop goes on.",
            ["loop"],
            registry=r,
        )
        self.snapshot = Snapshot()
        r.register(self.snapshot)

    def saw_functions(self, functions: Iterable[Function]) -> None:
        self.snapshot.states = Tally(f.state.value for f in functions)

    def saw_replicas(self, replicas: dict[str, tuple[int, int]]) -> None:
        self.snapshot.replicas = replicas

    def saw_concurrency(self, name: str, value: float) -> None:
        self.snapshot.concurrency[name] = value

    def sampled(self, resources: dict[str, Usage]) -> None:
        self.snapshot.resources = resources

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
