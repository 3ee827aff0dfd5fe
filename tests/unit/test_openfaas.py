"""The OpenFaaS mapping: FunctionDeployment -> FunctionSpec -> FunctionStatus, as pure functions."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from faas.config import Settings
from faas.errors import InvalidSpec
from faas.gateway import build_app
from faas.keys import Keys
from faas.openfaas import (
    ANNOTATION_PREFIX,
    WATCHDOG_HEALTH,
    basic_matches,
    cpus_from_quantity,
    function_status,
    log_message,
    memory_from_quantity,
    parse_since,
    quantity_from_cpus,
    quantity_from_memory,
    spec_from_deployment,
)
from faas.provider import Function, Instance, State, Usage
from faas.spec import FunctionSpec, Resources
from tests.unit.fakes import FakeProvider, lifecycle
from tests.unit.test_metrics import TOKEN, Client

NS = "prod"


def deployment(**fields: object) -> dict[str, object]:
    return {"service": "hello", "image": "faas/echo:latest", **fields}


@pytest.mark.parametrize(
    ("quantity", "ours"),
    [
        ("128Mi", "128m"),
        ("1Gi", "1g"),
        ("0.5Gi", "512m"),
        ("100Ki", "100k"),
        ("1G", "1000000000"),  # decimal units are exact bytes, not rounded
        ("64M", "62500k"),
        ("134217728", "128m"),
    ],
)
def test_memory_quantities_become_our_sizes(quantity: str, ours: str) -> None:
    assert memory_from_quantity(quantity) == ours


@pytest.mark.parametrize("bad", ["", "12 Mi", "-1Mi", "0", "1.5", "1Xi", "1e9", "0.0000001Ki"])
def test_bad_memory_quantities_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        memory_from_quantity(bad)
    assert caught.value.field == "limits.memory"


def test_our_sizes_read_back_as_quantities() -> None:
    assert quantity_from_memory("128m") == "128Mi"
    assert quantity_from_memory("1g") == "1Gi"
    assert quantity_from_memory("1000000000") == "1000000000"


@pytest.mark.parametrize(
    ("quantity", "cores"), [("100m", 0.1), ("0.5", 0.5), ("2", 2.0), ("1500m", 1.5)]
)
def test_cpu_quantities_become_cores(quantity: str, cores: float) -> None:
    assert cpus_from_quantity(quantity) == cores


@pytest.mark.parametrize("bad", ["", "0", "0m", "half", "-1", "1 m"])
def test_bad_cpu_quantities_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        cpus_from_quantity(bad)
    assert caught.value.field == "limits.cpu"


def test_cores_read_back_as_quantities() -> None:
    assert quantity_from_cpus(0.5) == "500m"
    assert quantity_from_cpus(2.0) == "2"


def test_a_full_deployment_maps_onto_the_spec() -> None:
    spec = spec_from_deployment(
        deployment(
            namespace=NS,
            envProcess="cat",
            envVars={"A": "1"},
            labels={"team": "x", "com.openfaas.scale.min": "1"},
            annotations={"topic": "orders"},
            limits={"memory": "128Mi", "cpu": "500m"},
            readOnlyRootFilesystem=True,
        ),
        NS,
    )
    assert spec.name == "hello"
    assert spec.env == {"A": "1", "fprocess": "cat"}
    assert spec.labels == {
        "team": "x",
        "com.openfaas.scale.min": "1",
        f"{ANNOTATION_PREFIX}topic": "orders",
    }
    assert spec.resources.memory == "128m"
    assert spec.resources.cpus == 0.5
    assert spec.read_only is True
    assert spec.health_path == WATCHDOG_HEALTH


def test_what_go_sends_for_unset_fields_counts_as_absent() -> None:
    spec = spec_from_deployment(
        deployment(namespace="", network="", secrets=[], constraints=None, labels={}), NS
    )
    assert spec.read_only is False  # OpenFaaS' default: a writable root
    assert spec.env == {}


def test_env_vars_fprocess_wins_over_env_process() -> None:
    spec = spec_from_deployment(deployment(envProcess="cat", envVars={"fprocess": "env"}), NS)
    assert spec.env == {"fprocess": "env"}


def test_the_health_annotation_sets_the_readiness_path() -> None:
    spec = spec_from_deployment(
        deployment(annotations={"com.openfaas.health.http.path": "/ready"}), NS
    )
    assert spec.health_path == "/ready"


def test_constraints_are_swarm_placement() -> None:
    spec = spec_from_deployment(deployment(constraints=["node.labels.gpu==true"]), NS)
    assert spec.constraints == ["node.labels.gpu==true"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"secrets": ["../db"]}, "secrets"),
        ({"secrets": "db"}, "secrets"),
        ({"constraints": ["anywhere"]}, "constraints"),
        ({"constraints": "node.role==manager"}, "constraints"),
        ({"requests": {"memory": "64Mi"}}, "requests"),
        ({"namespace": "other"}, "namespace"),
        ({"registryAuth": "abc"}, "registryAuth"),
        ({"service": "Bad_Name"}, "service"),
        ({"service": "functions"}, "service"),  # reserved
        ({"image": "not an image"}, "image"),
        ({"image": None}, "image"),
        ({"envVars": {"FAAS_X": "1"}}, "envVars"),
        ({"envVars": {"A": 1}}, "envVars"),
        ({"labels": {"traefik.enable": "true"}}, "labels"),
        ({"labels": {f"{ANNOTATION_PREFIX}x": "1"}}, f"labels.{ANNOTATION_PREFIX}x"),
        ({"limits": {"memory": "1Mi"}}, "limits.memory"),  # below Docker's minimum
        ({"limits": {"gpu": "1"}}, "limits"),
        ({"readOnlyRootFilesystem": "yes"}, "readOnlyRootFilesystem"),
        ({"labels": {"com.openfaas.scale.max": "many"}}, None),  # checked at deploy (policy)
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    fields: dict[str, object], field: str | None
) -> None:
    if field is None:
        spec_from_deployment(deployment(**fields), NS)
        return
    with pytest.raises(InvalidSpec) as caught:
        spec_from_deployment(deployment(**fields), NS)
    assert caught.value.field.startswith(field), caught.value


def test_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidSpec):
        spec_from_deployment(["hello"], NS)


def test_openfaas_fn_is_an_alias_of_our_namespace() -> None:
    assert spec_from_deployment(deployment(namespace="openfaas-fn"), NS).name == "hello"


def test_an_update_keeps_what_openfaas_cannot_express() -> None:
    existing = FunctionSpec(
        name="hello",
        image="faas/echo:old",
        auth="key",
        port=9000,
        cap_add=["NET_BIND_SERVICE"],
        env={"OLD": "1"},
        resources=Resources(memory="512m", pids=64),
    )
    spec = spec_from_deployment(deployment(envVars={"NEW": "1"}), NS, existing)
    assert (spec.auth, spec.port, spec.cap_add) == ("key", 9000, ["NET_BIND_SERVICE"])
    assert spec.resources.pids == 64
    assert spec.resources.memory is None  # OpenFaaS said none: the platform default
    assert spec.env == {"NEW": "1"}
    assert spec.image == "faas/echo:latest"


def test_status_splits_labels_annotations_and_fprocess_back_out() -> None:
    spec = FunctionSpec(
        name="hello",
        image="faas/echo:latest",
        env={"A": "1", "fprocess": "cat"},
        labels={"team": "x", f"{ANNOTATION_PREFIX}topic": "orders"},
        resources=Resources(memory="128m", cpus=0.5),
        read_only=True,
        secrets=["db", "api-key"],
    )
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    running = Instance("abc", spec, State.RUNNING, created, "10.0.0.2:8080")
    starting = Instance("def", spec, State.STARTING, created)
    fn = Function(spec, State.RUNNING, "abc", created, replicas=(running, starting))
    usage = Usage(1000, 2000, 1.0, 0, False)
    status = function_status(fn, NS, 7.0, usage)
    assert status == {
        "name": "hello",
        "image": "faas/echo:latest",
        "namespace": NS,
        "envProcess": "cat",
        "envVars": {"A": "1"},
        "labels": {"team": "x"},
        "annotations": {"topic": "orders"},
        "limits": {"memory": "128Mi", "cpu": "500m"},
        "requests": {},
        "readOnlyRootFilesystem": True,
        "secrets": ["api-key", "db"],
        "constraints": [],
        "invocationCount": 7.0,
        "replicas": 2,
        "availableReplicas": 1,
        "createdAt": "2026-01-02T03:04:05Z",
        "usage": {"totalMemoryBytes": 1000},
    }
    assert "usage" not in function_status(fn, NS, 0.0, None)


def test_a_docker_log_line_becomes_a_message() -> None:
    got = log_message("hello", NS, "abc", "2026-01-02T03:04:05.123456789Z hello world")
    assert got == {
        "name": "hello",
        "namespace": NS,
        "instance": "abc",
        "timestamp": "2026-01-02T03:04:05.123456789Z",
        "text": "hello world",
    }


def test_since_is_rfc3339() -> None:
    assert parse_since("1970-01-01T00:01:40Z") == 100
    assert parse_since("1970-01-01T01:01:40+01:00") == 100
    for bad in ("yesterday", "1970-01-01T00:01:40"):
        with pytest.raises(InvalidSpec):
            parse_since(bad)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_takes_admin_and_the_token_only() -> None:
    token = "t" * 32
    assert basic_matches(basic("admin", token), token)
    assert not basic_matches(basic("admin", token + "x"), token)
    assert not basic_matches(basic("root", token), token)
    assert not basic_matches(f"Bearer {token}", token)
    assert not basic_matches("Basic !!!", token)
    assert not basic_matches("Basic " + base64.b64encode(b"admin").decode(), token)
    assert not basic_matches(None, token)
    assert not basic_matches(basic("admin", ""), "")


def test_the_system_routes_take_basic_or_bearer_and_answer_bad_input_400(tmp_path: Path) -> None:
    provider = FakeProvider()
    settings = Settings(state_dir=tmp_path)
    app = build_app(
        lifecycle(provider, state_dir=tmp_path), TOKEN, Keys.from_settings(settings), settings
    )
    client = Client(httpx.ASGITransport(app=app))
    assert client.get("/healthz").status_code == 200
    for headers in ({}, {"Authorization": basic("admin", "x" * 32)}, {"Authorization": "Bearer x"}):
        got = client.get("/system/functions", headers=headers)
        assert got.status_code == 401
        assert got.headers["www-authenticate"] == 'Basic realm="faas"'
    got = client.request(
        "POST",
        "/system/functions",
        json={"service": "hello", "image": "faas/echo:latest", "secrets": ["db"]},
        headers={"Authorization": basic("admin", TOKEN)},
    )
    assert got.status_code == 400  # where /api/v1 answers 422
    assert got.json()["detail"] == {
        "field": "secrets",
        "reason": "no secret 'db': create it first (faas secrets create)",
    }
    assert provider.instances() == []
    got = client.get("/system/functions", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (got.status_code, got.json()) == (200, [])
