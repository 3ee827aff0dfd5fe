import stat
from pathlib import Path

import pytest

from faas.config import Settings
from faas.errors import Forbidden, InvalidSpec, Unauthorized
from faas.keys import Keys, presented_key


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(tmp_path: Path, clock: Clock) -> Keys:
    return Keys("s" * 32, tmp_path / "revoked-keys", clock)


def test_a_key_invokes_its_function_only(keys: Keys) -> None:
    issued = keys.create("hello", None)
    assert issued.expires is None
    assert keys.check("hello", issued.key) == issued.kid
    with pytest.raises(Forbidden, match="another function"):
        keys.check("hello2", issued.key)


def test_missing_key_is_401_and_bad_ones_403(keys: Keys) -> None:
    good = keys.create("hello", None).key
    with pytest.raises(Unauthorized):
        keys.check("hello", None)
    with pytest.raises(Unauthorized):
        keys.check("hello", "")
    head, _, sig = good.rpartition(".")
    tampered = [
        "garbage",
        good + "x",
        head + "." + ("A" if sig[0] != "A" else "B") + sig[1:],
        good.replace(".hello.", ".other."),
        good.replace(".0.", ".9999999999."),
        "fk1.a.b.c.d.e",
        "x" * 10_000,
    ]
    for key in tampered:
        with pytest.raises(Forbidden):
            keys.check("hello", key)


def test_keys_signed_with_another_secret_are_refused(keys: Keys, tmp_path: Path) -> None:
    other = Keys("t" * 32, tmp_path / "r2").create("hello", None).key
    with pytest.raises(Forbidden):
        keys.check("hello", other)


def test_keys_expire(keys: Keys, clock: Clock) -> None:
    issued = keys.create("hello", 60)
    assert issued.expires == int(clock.now) + 60
    clock.now += 59
    keys.check("hello", issued.key)
    clock.now += 1
    with pytest.raises(Forbidden, match="expired"):
        keys.check("hello", issued.key)


def test_revocation_survives_a_new_instance(keys: Keys, tmp_path: Path) -> None:
    a, b = keys.create("hello", None), keys.create("hello", None)
    keys.revoke(a.kid)
    with pytest.raises(Forbidden, match="revoked"):
        keys.check("hello", a.key)
    keys.check("hello", b.key)
    again = Keys("s" * 32, tmp_path / "revoked-keys")
    with pytest.raises(Forbidden, match="revoked"):
        again.check("hello", a.key)
    assert stat.S_IMODE((tmp_path / "revoked-keys").stat().st_mode) == 0o600
    with pytest.raises(InvalidSpec):
        keys.revoke("../etc")


def test_signing_secret_is_a_private_file_made_once(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    key = Keys.from_settings(settings).create("hello", None).key
    Keys.from_settings(settings).check("hello", key)
    assert stat.S_IMODE(settings.signing_key_file.stat().st_mode) == 0o600


def test_presented_key() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer abc ", None) == "abc"
    assert presented_key("Basic abc", None) is None
    assert presented_key(None, "xyz") == "xyz"
    assert presented_key("Bearer abc", "xyz") == "xyz"
    assert presented_key(None, None) is None


def test_each_revocation_is_published(tmp_path: Path) -> None:
    """Traefik's key check learns the revoked kids from its configuration."""
    told: list[frozenset[str]] = []
    keys = Keys("s" * 32, tmp_path / "revoked-keys", publish=told.append)
    a, b = keys.create("hello", None), keys.create("hello", None)
    keys.revoke(a.kid)
    keys.revoke(b.kid)
    assert told == [frozenset({a.kid}), frozenset({a.kid, b.kid})]
