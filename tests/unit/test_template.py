"""The base image of template builds: the setting, else the default, else the offline base."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator

import pytest

from faas import up
from faas.config import Settings
from faas.errors import ImageNotFound, RegistryUnreachable
from faas.template import OFFLINE_BASE, BaseImage, base_image

from .fakes import FakeProvider

DEFAULT = "python:3.12-slim"


class Engine(FakeProvider):
    """Has `images`; pulls of anything else fail as they do offline."""

    def __init__(self, *images: str) -> None:
        super().__init__()
        self.images = set(images)
        self.pulls: builtins.list[str] = []

    def pull(self, image: str, auth: dict[str, str] | None = None) -> Iterator[dict[str, object]]:
        self.pulls.append(image)
        if image not in self.images:
            raise RegistryUnreachable(
                image, "registry-1.docker.io", "dial tcp: lookup registry-1.docker.io: no such host"
            )
        yield from ()


@pytest.fixture
def unset(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from an environment without FAAS_* variables."""
    for key in list(os.environ):
        if key.startswith("FAAS_"):
            monkeypatch.delenv(key)
    return Settings()


def test_the_default_when_the_engine_has_it_or_can_pull_it(unset: Settings) -> None:
    engine = Engine(DEFAULT, OFFLINE_BASE)
    assert base_image(engine, unset) == BaseImage(DEFAULT)
    assert engine.pulls == [DEFAULT]


def test_the_offline_base_when_the_default_cannot_be_had(unset: Settings) -> None:
    chosen = base_image(Engine(OFFLINE_BASE), unset)
    assert chosen.image == OFFLINE_BASE
    assert chosen.note is not None
    assert f"{DEFAULT} cannot be pulled (dial tcp" in chosen.note
    assert f"offline base {OFFLINE_BASE}" in chosen.note


def test_neither_is_an_error_naming_the_default_and_the_way_out(unset: Settings) -> None:
    with pytest.raises(ImageNotFound) as caught:
        base_image(Engine(), unset)
    assert caught.value.image == DEFAULT
    assert "no such host" in caught.value.reason
    assert f"`make images` builds {OFFLINE_BASE}" in caught.value.reason


def test_an_explicit_setting_always_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_BASE_IMAGE", "mine:1")
    engine = Engine("mine:1", DEFAULT, OFFLINE_BASE)
    assert base_image(engine, Settings()) == BaseImage("mine:1")
    # Missing, it fails naming it; no fallback, even when it names the default.
    for explicit in (Settings(base_image="some/missing:image"), Settings(base_image=DEFAULT)):
        engine = Engine(OFFLINE_BASE)
        with pytest.raises(RegistryUnreachable) as caught:
            base_image(engine, explicit)
        assert caught.value.image == explicit.base_image
        assert engine.pulls == [explicit.base_image]


def test_faas_up_passes_on_only_what_was_set(unset: Settings) -> None:
    assert "FAAS_BASE_IMAGE" not in up._settings_env(unset)
    assert "FAAS_HTTP_PORT" not in up._settings_env(unset)
    given = up._settings_env(Settings(base_image="mine:1", http_port=9000))
    assert (given["FAAS_BASE_IMAGE"], given["FAAS_HTTP_PORT"]) == ("mine:1", "9000")
