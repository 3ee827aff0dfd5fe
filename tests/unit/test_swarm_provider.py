"""The Swarm provider's pure parts: which task stands for a service, its state,
the service's labels, the placement fields, and what Swarm cannot do."""

from __future__ import annotations

from typing import Any

import pytest

from faas import labels
from faas.config import Settings
from faas.errors import InvalidSpec
from faas.provider import State
from faas.spec import parse_spec
from faas.swarm_provider import (
    _SECRET_NAME_MAX,
    _check_swarm,
    _current,
    _references,
    _task_state,
    docker_secret_name,
)


def task(state: str, desired: str = "running", created: str = "2026-01-01T00:00:01Z",
         **status: Any) -> dict[str, Any]:  # fmt: skip
    return {"DesiredState": desired, "CreatedAt": created, "Status": {"State": state, **status}}


def test_the_newest_task_meant_to_run_stands_for_the_service() -> None:
    old = task("shutdown", "shutdown", "2026-01-01T00:00:01Z")
    new = task("running", "running", "2026-01-01T00:00:02Z")
    assert _current([old, new]) is new


def test_right_after_a_scale_up_no_task_yet_means_starting_not_the_old_exit() -> None:
    # The task of the last run, stopped on purpose, must not read as a failure.
    old = task("complete", "remove", "2026-01-01T00:00:01Z",
               ContainerStatus={"ExitCode": 0})  # fmt: skip
    assert _current([old], "2026-01-01T00:00:05Z") is None
    assert _task_state(None) == (State.STARTING, "")


def test_a_failed_task_not_restarted_counts_only_after_the_scale_up() -> None:
    before = task("failed", "shutdown", "2026-01-01T00:00:01Z", Err="exit 1")
    after = task("failed", "shutdown", "2026-01-01T00:00:09Z", Err="No such image: x")
    assert _current([before], "2026-01-01T00:00:05Z") is None
    assert _current([before, after], "2026-01-01T00:00:05Z") is after
    assert _task_state(after) == (State.FAILED, "No such image: x")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"State": "running"}, (State.RUNNING, "")),
        ({"State": "preparing"}, (State.STARTING, "")),
        ({"State": "pending"}, (State.STARTING, "")),
        (
            {"State": "pending", "Err": "no suitable node (scheduling constraints not satisfied)"},
            (State.FAILED, "no suitable node (scheduling constraints not satisfied)"),
        ),
        (
            {"State": "failed", "ContainerStatus": {"ExitCode": 3}},
            (State.FAILED, "exited with code 3"),
        ),
    ],
)
def test_task_states(status: dict[str, Any], expected: tuple[State, str]) -> None:
    assert _task_state({"Status": status}) == expected


def test_service_labels_name_the_network_for_traefiks_swarm_provider() -> None:
    spec = parse_spec({"name": "f", "image": "x", "constraints": ["node.labels.gpu==true"]})
    got = labels.service_labels(spec, "ns", "faas-ns")
    assert got["traefik.swarm.network"] == "faas-ns"
    assert "traefik.docker.network" not in got
    # No passive health check: it counts the function's own 5xx as failures.
    assert not [k for k in got if "healthcheck" in k]
    assert labels.spec_from_labels(got) == spec  # the state, on the service
    assert labels.service_name("f", "swarm") == "fn-f@swarm"
    assert labels.service_name("f") == "fn-f@docker"


@pytest.mark.parametrize(
    "constraint",
    ["node.labels.gpu==true", "node.role!=manager", "node.hostname == n2", "engine.labels.a.b==c"],
)
def test_placement_constraints_in_swarms_grammar(constraint: str) -> None:
    assert parse_spec({"name": "f", "image": "x", "constraints": [constraint]}).constraints


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("constraints", ["node.labels.gpu=true"]),
        ("constraints", ["gpu==true"]),
        ("constraints", ["node.labels.x==$(id)"]),
        ("spread", ["zone"]),
    ],
)
def test_bad_placement_is_refused_naming_the_field(field: str, value: list[str]) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"name": "f", "image": "x", field: value})
    assert field in str(caught.value)


@pytest.mark.parametrize(("field", "value"), [("runtime", "runsc"), ("gpus", 1)])
def test_what_a_swarm_service_cannot_choose_is_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidSpec) as caught:
        _check_swarm(parse_spec({"name": "f", "image": "x", field: value}))
    assert caught.value.field == field


def test_secrets_are_allowed_on_a_swarm() -> None:
    _check_swarm(parse_spec({"name": "f", "image": "x", "secrets": ["db-password"]}))


def test_a_new_value_gets_a_new_docker_secret_the_same_value_the_same_one() -> None:
    first = docker_secret_name("ns", "db", b"one", b"k")
    assert first.startswith("faas-ns-db-")
    assert docker_secret_name("ns", "db", b"one", b"k") == first
    assert docker_secret_name("ns", "db", b"two", b"k") != first
    # Per namespace and secret: two secrets of one value are two Docker secrets.
    assert docker_secret_name("ns", "db2", b"one", b"k") != first
    assert docker_secret_name("other", "db", b"one", b"k") != first
    assert "one" not in first.removeprefix("faas-ns-db-")
    # Keyed: without the key (from the admin token) the hash tells nothing of the value.
    assert docker_secret_name("ns", "db", b"one", b"other key") != first


def test_a_long_secret_name_is_cut_to_swarms_limit_and_stays_distinct() -> None:
    long = "a" * 62 + "-b"
    names = {
        docker_secret_name("ns", long, b"v", b"k"),
        docker_secret_name("ns", long[:-1] + "c", b"v", b"k"),
    }
    assert len(names) == 2
    for name in names:
        assert len(name) <= _SECRET_NAME_MAX
        assert name.startswith("faas-ns-aaaa")
        assert "--" not in name  # a cut never ends the prefix on its dash


def test_secrets_are_files_at_the_openfaas_path_readable_by_any_user() -> None:
    (ref,) = _references({"db": ("id1", "faas-ns-db-0123")})
    assert ref["SecretID"] == "id1"
    assert ref["SecretName"] == "faas-ns-db-0123"
    assert ref["File"] == {
        "Name": "/var/openfaas/secrets/db",
        "UID": "0",
        "GID": "0",
        "Mode": 0o444,
    }


def test_images_built_or_loaded_are_published_in_the_registry() -> None:
    assert Settings(registry=None).published("faas/f:1") == "faas/f:1"
    swarm = Settings(registry="10.0.0.10:5000")
    assert swarm.published("faas/f:1") == "10.0.0.10:5000/faas/f:1"
    assert swarm.published("10.0.0.10:5000/faas/f:1") == "10.0.0.10:5000/faas/f:1"
