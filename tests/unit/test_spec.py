from pathlib import Path

import pytest

from faas import manifest
from faas.errors import InvalidSpec
from faas.spec import FunctionSpec, check_name, parse_spec


@pytest.mark.parametrize("name", ["a", "hello", "my-fn-2", "a" * 63])
def test_good_names(name: str) -> None:
    assert parse_spec({"name": name, "image": "echo"}).name == name
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "A", "1abc", "-abc", "hello_world", "a" * 64, "a.b", "a/b", "héllo", "a b"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"name": name, "image": "echo"})
    assert info.value.field == "name"
    with pytest.raises(InvalidSpec):
        check_name(name)


@pytest.mark.parametrize(
    "image",
    [
        "echo",
        "faas/echo:latest",
        "localhost:5000/team/fn:v1.2",
        "registry.example.com/a/b/c",
        "python:3.12-slim",
        "repo@sha256:" + "a" * 64,
        "repo:tag@sha256:" + "b" * 64,
        "sha256:" + "c" * 64,
    ],
)
def test_good_images(image: str) -> None:
    assert parse_spec({"name": "f", "image": image}).image == image


@pytest.mark.parametrize(
    "image", ["", "echo/UPPER", "a b", "echo:", "echo:tag with space", ":tag", "a//b", "x;rm -rf"]
)
def test_bad_images(image: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"name": "f", "image": image})
    assert info.value.field == "image"


@pytest.mark.parametrize("port", [0, -1, 65536, "http"])
def test_bad_ports(port: object) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"name": "f", "image": "echo", "port": port})
    assert info.value.field == "port"


@pytest.mark.parametrize(
    "env",
    [{"A B": "1"}, {"1X": "1"}, {"": "x"}, {"X": "a\x00b"}, {"FAAS_SECRET": "x"}, {"X": 1}],
)
def test_bad_env(env: dict[str, object]) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"name": "f", "image": "echo", "env": env})
    assert info.value.field.startswith("env")


def test_unknown_fields_are_rejected() -> None:
    for field in ("privileged", "labels_", "volumes", "network_mode"):
        with pytest.raises(InvalidSpec) as info:
            parse_spec({"name": "f", "image": "echo", field: True})
        assert info.value.reason == "unknown field"


def test_defaults() -> None:
    spec = parse_spec({"name": "f", "image": "echo"})
    assert spec == FunctionSpec(name="f", image="echo", port=8080, env={}, health_path="/")


@pytest.mark.parametrize("path", ["health", "/a b", "/x\n"])
def test_bad_health_path(path: str) -> None:
    with pytest.raises(InvalidSpec):
        parse_spec({"name": "f", "image": "echo", "health_path": path})


def test_not_an_object() -> None:
    with pytest.raises(InvalidSpec):
        parse_spec(["name", "image"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("runtime", "bad runtime"),
        ("runtime", ""),
        ("gpus", "some"),
        ("gpus", 0),
        ("gpus", True),
        ("gpus", []),
        ("gpus", ["ok", "bad id"]),
        ("resources", {"memory": "1k"}),
        ("resources", {"memory": "lots"}),
        ("resources", {"cpus": 0}),
        ("resources", {"pids": 1}),
        ("resources", {"ulimits": {"nothing": 1}}),
        ("resources", {"ulimits": {"nofile": -1}}),
        ("resources", {"privileged": True}),
    ],
)
def test_bad_runtime_gpus_resources(field: str, value: object) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"name": "f", "image": "echo", field: value})
    assert info.value.field.startswith(field)


def test_good_runtime_gpus_resources() -> None:
    spec = parse_spec(
        {
            "name": "f",
            "image": "echo",
            "runtime": "runsc",
            "gpus": 1,
            "resources": {"memory": "64M", "cpus": 0.25, "pids": 32, "ulimits": {"nofile": 64}},
        }
    )
    assert spec.resources.memory == "64m"
    assert spec.gpus == 1


@pytest.mark.parametrize(
    "key", ["traefik.http.routers.x.rule", "TRAEFIK.enable", "faas.namespace", "com.docker.x"]
)
def test_reserved_user_labels_are_refused_naming_the_field(key: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"name": "a", "image": "i", "labels": {key: "x"}})
    assert info.value.field.startswith("labels")
    assert key in info.value.reason


def test_security_fields_default_and_validate() -> None:
    spec = parse_spec({"name": "a", "image": "i"})
    assert (spec.auth, spec.read_only, spec.cap_add) == ("public", True, [])
    assert parse_spec({"name": "a", "image": "i", "cap_add": ["cap_net_bind_service"]}).cap_add == [
        "NET_BIND_SERVICE"
    ]
    for bad in ({"auth": "open"}, {"cap_add": ["ALL; rm"]}, {"labels": {"bad key": "x"}}):
        with pytest.raises(InvalidSpec):
            parse_spec({"name": "a", "image": "i", **bad})


def test_every_spec_field_has_a_manifest_key(tmp_path: Path) -> None:
    assert set(FunctionSpec.model_fields) == manifest.SPEC_KEYS | manifest.SCALING_KEYS
    path = tmp_path / "faas.toml"
    path.write_text(
        'name = "a"\nimage = "x"\n[scaling]\nmin_scale = 1\n[limits]\nmax_in_flight = 3\n'
    )
    spec = parse_spec(manifest.load(path).spec)
    assert (spec.min_scale, spec.limits.max_in_flight) == (1, 3)
