"""Secrets without an engine: names, the store on disk, the folder a container
sees, the spec field, and the lifecycle's sequences over the fake provider."""

from __future__ import annotations

import base64
import builtins
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from faas import labels, manifest
from faas.config import Settings
from faas.docker_provider import host_path, own_container_id
from faas.errors import (
    InvalidSpec,
    PayloadTooLarge,
    SecretExists,
    SecretInUse,
    SecretNotFound,
)
from faas.lifecycle import Lifecycle
from faas.provider import Instance
from faas.secretstore import SecretStore, check_secret_name, value_from, write_private_copy
from faas.spec import parse_spec

from .fakes import FakeProvider, FakeRouter, lifecycle


@pytest.mark.parametrize("name", ["db", "a", "api-key-2", "0x", "a" * 63])
def test_dns_labels_are_secret_names(name: str) -> None:
    assert check_secret_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "..", "../etc", "a..b", ".hidden", "-a", "a-", "Db", "a_b", "a b", "a" * 64, "é"],
)
def test_other_names_are_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        check_secret_name(name)
    assert caught.value.field == "name"
    assert "not a valid secret name" in caught.value.reason


def test_a_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="not a valid secret name"):
        check_secret_name(["db"])


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    return SecretStore(tmp_path / "secrets", max_bytes=64)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_is_private_and_round_trips_bytes(store: SecretStore) -> None:
    store.create("db", b"\x00one\xff")
    assert mode(store.directory) == 0o700
    assert mode(store.directory / "db") == 0o600
    assert store.read("db") == b"\x00one\xff"
    store.update("db", b"two")
    assert store.read("db") == b"two"
    assert mode(store.directory / "db") == 0o600
    assert store.names() == ["db"]
    assert [p.name for p in store.directory.iterdir()] == ["db"]  # no temp file left


def test_an_existing_directory_is_made_private(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir(mode=0o755)
    SecretStore(tmp_path / "secrets", 64).create("db", b"x")
    assert mode(tmp_path / "secrets") == 0o700


def test_create_update_remove_say_what_is_wrong(store: SecretStore) -> None:
    assert store.names() == []  # no directory yet
    with pytest.raises(SecretNotFound):
        store.update("db", b"x")
    store.create("db", b"one")
    with pytest.raises(SecretExists):
        store.create("db", b"two")
    assert store.read("db") == b"one"
    store.remove("db")
    with pytest.raises(SecretNotFound):
        store.remove("db")
    with pytest.raises(SecretNotFound):
        store.read("db")


def test_one_of_two_concurrent_creates_wins(store: SecretStore) -> None:
    outcomes: list[str] = []

    def create(value: bytes) -> None:
        try:
            store.create("db", value)
            outcomes.append("created")
        except SecretExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(v,)) for v in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created", "exists"]
    assert store.read("db") in (b"a", b"b")


def test_a_value_over_the_limit_is_refused_without_quoting_it(store: SecretStore) -> None:
    value = b"v" * 65
    with pytest.raises(PayloadTooLarge) as caught:
        store.create("db", value)
    assert "at most 64 bytes" in caught.value.message
    assert b"vvvv" not in caught.value.message.encode()
    assert store.names() == []
    store.create("db", b"v" * 64)
    with pytest.raises(PayloadTooLarge):
        store.update("db", value)
    assert store.read("db") == b"v" * 64


def test_on_a_swarm_values_fit_a_docker_secret(tmp_path: Path) -> None:
    """Swarm holds 1 to 511,999 bytes: a value it would refuse at the next deploy
    is refused when it is stored, and the store keeps what it had."""
    swarm = Settings(provider="swarm", state_dir=tmp_path, registry="r:5000")
    assert swarm.secret_sizes == (1, 500 * 1024 - 1)
    assert Settings(state_dir=tmp_path).secret_sizes == (0, 512 * 1024)
    smallest, largest = swarm.secret_sizes
    store = SecretStore(tmp_path / "secrets", largest, smallest)
    with pytest.raises(InvalidSpec):
        store.create("db", b"")
    with pytest.raises(PayloadTooLarge):
        store.create("db", b"v" * (largest + 1))
    store.create("db", b"v" * largest)
    with pytest.raises(InvalidSpec):
        store.update("db", b"")
    assert store.read("db") == b"v" * largest


def test_names_in_paths_are_checked_before_any_file_is_touched(store: SecretStore) -> None:
    for name in ("../x", "a/b"):
        with pytest.raises(InvalidSpec):
            store.create(name, b"x")
        with pytest.raises(InvalidSpec):
            store.read(name)
    assert not store.directory.exists()


def test_values_name_the_first_missing_secret(store: SecretStore) -> None:
    store.create("a", b"1")
    with pytest.raises(SecretNotFound) as caught:
        store.values(["a", "b"])
    assert caught.value.name == "b"
    assert store.values(["a", "b"], missing_ok=True) == {"a": b"1"}


def test_a_value_is_text_or_base64_and_errors_do_not_quote_it() -> None:
    assert value_from({"value": "héllo"}, "value", "rawValue") == "héllo".encode()
    raw = base64.b64encode(b"\x00\xff").decode()
    assert value_from({"value": "x", "rawValue": raw}, "value", "rawValue") == b"\x00\xff"
    assert value_from({"value": "", "rawValue": ""}, "value", "rawValue") == b""
    for body, field in (
        ({"rawValue": "sekrit!!"}, "rawValue"),
        ({"rawValue": 12}, "rawValue"),
        ({"value": ["sekrit"]}, "value"),
        ({}, "value"),
    ):
        with pytest.raises(InvalidSpec) as caught:
            value_from(body, "value", "rawValue")
        assert caught.value.field == field
        assert "sekrit" not in caught.value.message


def test_a_function_folder_holds_exactly_its_secrets_readable_by_any_user(tmp_path: Path) -> None:
    folder = tmp_path / "fn"
    write_private_copy(folder, {"a": b"1", "b": b"2"})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"a": b"1", "b": b"2"}
    assert mode(folder / "a") == 0o444
    inode = (folder / "a").stat().st_ino
    write_private_copy(folder, {"a": b"new"})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"a": b"new"}
    assert (folder / "a").stat().st_ino != inode  # replaced by a rename: never half written


def test_the_spec_lists_names_sorted_once_and_labels_keep_names_only() -> None:
    spec = parse_spec({"name": "f", "image": "x", "secrets": ["db", "api", "db"]})
    assert spec.secrets == ["api", "db"]
    out = labels.spec_labels(spec)
    assert out["faas.spec.secrets"] == '["api", "db"]'
    assert labels.spec_from_labels(out) == spec
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"name": "f", "image": "x", "secrets": ["../db"]})
    assert caught.value.field.startswith("secrets")
    assert parse_spec({"name": "f", "image": "x"}).secrets == []


def test_a_manifest_lists_secrets_as_a_top_level_key(tmp_path: Path) -> None:
    path = tmp_path / "faas.toml"
    path.write_text('name = "f"\nimage = "x"\nsecrets = ["db", "api"]\n')
    loaded = manifest.load(path)
    assert parse_spec(loaded.spec).secrets == ["api", "db"]


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def life(provider: FakeProvider, tmp_path: Path) -> Lifecycle:
    return lifecycle(provider, FakeRouter(), state_dir=tmp_path)


def test_deploying_with_an_unknown_secret_makes_nothing(
    life: Lifecycle, provider: FakeProvider
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        life.deploy(parse_spec({"name": "f", "image": "x", "secrets": ["db"]}))
    assert (caught.value.field, "'db'" in caught.value.reason) == ("secrets", True)
    assert provider.items == {}
    assert provider.mounted == {}


def test_a_deploy_mounts_the_function_s_secrets_and_a_remove_forgets_them(
    life: Lifecycle, provider: FakeProvider
) -> None:
    life.secrets.create("db", b"1")
    life.secrets.create("other", b"2")
    life.deploy(parse_spec({"name": "f", "image": "x", "secrets": ["db"]}))
    assert provider.mounted == {"f": {"db": b"1"}}
    life.remove("f")
    assert provider.mounted == {}


def test_a_redeploy_without_a_secret_drops_it_once_the_old_instances_are_gone(
    life: Lifecycle, provider: FakeProvider
) -> None:
    life.secrets.create("db", b"1")
    life.deploy(parse_spec({"name": "f", "image": "x", "secrets": ["db"]}))
    life.deploy(parse_spec({"name": "f", "image": "x"}))
    assert provider.mounted == {}
    assert [i.spec.secrets for i in provider.instances("f")] == [[]]


def test_an_update_reaches_the_functions_using_it_in_place(
    life: Lifecycle, provider: FakeProvider
) -> None:
    life.secrets.create("db", b"1")
    life.deploy(parse_spec({"name": "f", "image": "x", "secrets": ["db"]}))
    life.deploy(parse_spec({"name": "g", "image": "x"}))
    before = {i.id for i in provider.instances()}
    assert life.update_secret("db", b"2") == ["f"]
    assert provider.mounted == {"f": {"db": b"2"}}
    assert {i.id for i in provider.instances()} == before  # no restart


def test_an_update_replaces_the_instances_when_the_provider_cannot_in_place(
    life: Lifecycle, provider: FakeProvider
) -> None:
    provider.live_secrets = False
    life.secrets.create("db", b"1")
    life.deploy(parse_spec({"name": "f", "image": "x", "secrets": ["db"]}))
    old = {i.id for i in provider.instances("f")}
    life.update_secret("db", b"2")
    new = {i.id for i in provider.instances("f")}
    assert new
    assert not new & old
    assert provider.mounted == {"f": {"db": b"2"}}


def test_a_secret_in_use_cannot_be_removed(life: Lifecycle, provider: FakeProvider) -> None:
    life.secrets.create("db", b"1")
    life.deploy(parse_spec({"name": "f", "image": "x", "secrets": ["db"]}))
    with pytest.raises(SecretInUse) as caught:
        life.remove_secret("db")
    assert caught.value.functions == ["f"]
    assert life.secrets.names() == ["db"]
    assert ("forget_secret", "db") not in provider.calls
    life.remove("f")
    life.remove_secret("db")
    assert life.secrets.names() == []
    # The engine drops what it kept of it (Swarm: its Docker secrets).
    assert provider.calls[-1] == ("forget_secret", "db")


class MountGate(FakeProvider):
    """Holds the first mount of secrets (a deploy past its check, before any
    instance exists) until `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go = threading.Event()
        self.listed = threading.Event()  # someone listed every function meanwhile

    def instances(self, name: str | None = None) -> builtins.list[Instance]:
        if name is None and self.entered.is_set():
            self.listed.set()
        return super().instances(name)

    def mount_secrets(self, name: str, values: Mapping[str, bytes]) -> bool:
        if values and not self.entered.is_set():
            self.entered.set()
            assert self.go.wait(5), "the test never let the mount go"
        return super().mount_secrets(name, values)


def test_a_secret_a_deploy_in_flight_checked_cannot_be_removed(tmp_path: Path) -> None:
    provider = MountGate()
    life = lifecycle(provider, FakeRouter(), state_dir=tmp_path)
    life.secrets.create("db", b"1")
    spec = parse_spec({"name": "f", "image": "x", "secrets": ["db"]})
    deploy = threading.Thread(target=life.deploy, args=(spec,))
    deploy.start()
    try:
        assert provider.entered.wait(5)
        assert provider.instances() == []  # nothing in the engine says "db" is used yet
        with pytest.raises(SecretInUse) as caught:
            life.remove_secret("db")
        assert caught.value.functions == ["f"]
    finally:
        provider.go.set()
        deploy.join()
    assert life.secrets.names() == ["db"]
    assert provider.mounted == {"f": {"db": b"1"}}


def test_an_update_during_a_deploy_that_read_the_old_value_reaches_it(tmp_path: Path) -> None:
    provider = MountGate()
    life = lifecycle(provider, FakeRouter(), state_dir=tmp_path)
    life.secrets.create("db", b"old")
    spec = parse_spec({"name": "f", "image": "x", "secrets": ["db"]})
    deploy = threading.Thread(target=life.deploy, args=(spec,))
    deploy.start()
    assert provider.entered.wait(5)  # the deploy has read "old", no instance yet
    update = threading.Thread(target=life.update_secret, args=("db", b"new"))
    update.start()
    assert provider.listed.wait(5)  # the update looked for the functions using it
    provider.go.set()
    deploy.join()
    update.join()
    assert provider.mounted == {"f": {"db": b"new"}}


def test_a_path_through_the_gateways_own_mounts(tmp_path: Path) -> None:
    mounts = [("/var/lib/faas", "/data/volumes/x_state/_data"), ("/var/lib/faas/traefik", "/t")]
    assert host_path("/var/lib/faas/secret-mounts/fn", mounts) == (
        "/data/volumes/x_state/_data/secret-mounts/fn"
    )
    assert host_path("/var/lib/faas/traefik/a", mounts) == "/t/a"  # the longest prefix
    assert host_path("/var/lib/faasx/a", mounts) == "/var/lib/faasx/a"
    assert host_path("/srv/a", []) == "/srv/a"
    info = tmp_path / "mountinfo"
    info.write_text(
        "601 590 0:40 /docker/containers/" + "ab" * 32 + "/hostname /etc/hostname rw - ext4\n"
    )
    assert own_container_id(str(info)) == "ab" * 32
    info.write_text("22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n")
    assert own_container_id(str(info)) is None
    assert own_container_id(str(tmp_path / "none")) is None


def test_a_shared_mounts_dir_keeps_namespaces_apart(tmp_path: Path) -> None:
    one = Settings(namespace="a", secret_mounts_dir=tmp_path, state_dir=tmp_path / "s")
    two = Settings(namespace="b", secret_mounts_dir=tmp_path, state_dir=tmp_path / "s")
    assert one.function_secrets_dir != two.function_secrets_dir
    assert Settings(state_dir=tmp_path).function_secrets_dir == tmp_path / "secret-mounts"
