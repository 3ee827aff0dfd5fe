import pytest

from faas import labels
from faas.spec import FunctionSpec, Resources

SPECS = [
    FunctionSpec(name="hello", image="faas/echo:latest"),
    FunctionSpec(
        name="x-1",
        image="localhost:5000/a/b:c",
        port=9000,
        env={"A": "1", "B": 'quote " and = and \n newline', "EMPTY": ""},
        health_path="/healthz",
        min_scale=1,
        idle_timeout=60,
        runtime="crun",
        gpus=["GPU-1", "GPU-2"],
        resources=Resources(memory="64m", cpus=0.5, pids=64, ulimits={"nofile": 1024}),
    ),
    FunctionSpec(name="g", image="i", gpus="all"),
    FunctionSpec(name="g", image="i", gpus=2),
]


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trips_through_labels(spec: FunctionSpec) -> None:
    assert labels.spec_from_labels(labels.spec_labels(spec)) == spec


@pytest.mark.parametrize("spec", SPECS)
def test_container_labels_round_trip_and_carry_identity(spec: FunctionSpec) -> None:
    got = labels.container_labels(spec, "prod", "faas-prod")
    assert labels.spec_from_labels(got) == spec
    assert got[labels.NAMESPACE] == "prod"
    assert got[labels.FUNCTION] == spec.name
    assert got[labels.SCHEMA] == labels.SCHEMA_VERSION
    assert all(isinstance(v, str) for v in got.values())


def test_labels_are_readable_strings() -> None:
    got = labels.spec_labels(FunctionSpec(name="hello", image="echo", env={"K": "v"}))
    assert got["faas.spec.image"] == "echo"
    assert got["faas.spec.port"] == "8080"
    assert got["faas.spec.env"] == '{"K": "v"}'


def test_unknown_spec_labels_from_newer_versions_are_ignored() -> None:
    got = labels.spec_labels(FunctionSpec(name="hello", image="echo"))
    got["faas.spec.future_field"] = "1"
    got["other.label"] = "x"
    assert labels.spec_from_labels(got).name == "hello"


def test_traefik_labels_route_the_function_path_only() -> None:
    got = labels.traefik_labels(FunctionSpec(name="hello", image="echo", port=9000), "net")
    assert got["traefik.enable"] == "true"
    assert got["traefik.docker.network"] == "net"
    rule = got["traefik.http.routers.fn-hello.rule"]
    # Exact path or a sub-path: /function/hello2 must not match.
    assert rule == "Path(`/function/hello`) || PathPrefix(`/function/hello/`)"
    assert got["traefik.http.middlewares.fn-hello-strip.stripprefix.prefixes"] == "/function/hello"
    chain = got["traefik.http.routers.fn-hello.middlewares"].split(",")
    # The entrypoint's callid plugin (502 for an unreachable container) is outermost.
    assert chain == ["fn-hello-retry", "fn-hello-strip"]
    assert got["traefik.http.middlewares.fn-hello-retry.retry.attempts"] == "3"
    assert got["traefik.http.services.fn-hello.loadbalancer.server.port"] == "9000"
    assert got["traefik.http.routers.fn-hello.entrypoints"] == "web"


def test_key_functions_get_the_key_plugin_and_nothing_else() -> None:
    spec = FunctionSpec(name="hello", image="echo", auth="key")
    got = labels.traefik_labels(spec, "net")
    chain = got["traefik.http.routers.fn-hello.middlewares"].split(",")
    assert chain == ["keys@file", "fn-hello-retry", "fn-hello-strip"]
    # Declared once in the dynamic configuration: no secret, path or URL in labels.
    assert not any("keys" in k or "forwardauth" in k or "nokey" in k for k in got)
    public = labels.traefik_labels(FunctionSpec(name="hello", image="echo"), "net")
    assert "keys@file" not in public["traefik.http.routers.fn-hello.middlewares"]


def test_limits_become_middlewares_before_the_function() -> None:
    spec = FunctionSpec(
        name="hello",
        image="echo",
        limits={"rate_average": 10, "rate_burst": 20, "max_in_flight": 5, "max_body_bytes": 1000},
    )
    got = labels.traefik_labels(spec, "net")
    mw = "traefik.http.middlewares.fn-hello"
    assert got[f"{mw}-rate.ratelimit.average"] == "10"
    assert got[f"{mw}-rate.ratelimit.burst"] == "20"
    assert got[f"{mw}-inflight.inflightreq.amount"] == "5"
    assert got[f"{mw}-body.buffering.maxrequestbodybytes"] == "1000"
    assert got["traefik.http.routers.fn-hello.middlewares"].split(",")[:3] == [
        "fn-hello-rate",
        "fn-hello-inflight",
        "fn-hello-body",
    ]


def test_user_labels_are_written_but_never_over_the_platforms() -> None:
    spec = FunctionSpec(name="hello", image="echo", labels={"team": "a", "org.x/y": "b"})
    got = labels.container_labels(spec, "prod", "faas-prod")
    assert got["team"] == "a"
    assert got["org.x/y"] == "b"
    assert labels.spec_from_labels(got) == spec
