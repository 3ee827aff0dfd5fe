"""Function names the platform keeps for itself: one set (faas.spec.RESERVED_NAMES),
checked against every name the platform's configs and routes actually use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from faas import labels, traefik
from faas.config import Settings
from faas.errors import InvalidSpec
from faas.gateway import build_app
from faas.keys import Keys
from faas.spec import (
    NAME_RE,
    RESERVED_NAMES,
    FunctionSpec,
    check_name,
    check_new_name,
    parse_spec,
)
from tests.unit.fakes import FakeProvider, lifecycle
from tests.unit.test_metrics import TOKEN, Client

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API_VERSION = re.compile(r"^v[0-9]+$")


def rendered(name: str, tmp_path: Path) -> dict[str, Any]:
    values = traefik.compose_values(Settings(state_dir=tmp_path), 443)
    target = tmp_path / "out" / name
    traefik.render([(ROOT / "traefik" / name, target)], values)
    loaded = yaml.safe_load(target.read_text())
    assert isinstance(loaded, dict)
    return loaded


def dynamic_names(doc: dict[str, Any]) -> set[str]:
    """Routers, services, middlewares and transports of a dynamic config, and
    the plugins its middlewares name."""
    names: set[str] = set()
    for kind in ("http", "tcp"):
        for section in ("routers", "services", "middlewares", "serversTransports"):
            names |= set(doc.get(kind, {}).get(section, {}))
    for middleware in doc.get("http", {}).get("middlewares", {}).values():
        names |= set(middleware.get("plugin", {}))
    return names


def static_names(doc: dict[str, Any]) -> set[str]:
    """Entrypoints, providers and plugins of a static config, and the
    @internal routers and services its sections make Traefik add."""
    names = set(doc["entryPoints"]) | set(doc["experimental"]["localPlugins"])
    names |= {key for key, value in doc["providers"].items() if isinstance(value, dict)}
    names |= set(doc["metrics"])  # prometheus@internal
    names |= {"api", "ping"} & set(doc)
    if doc["api"].get("dashboard"):
        names.add("dashboard")
    return names


def route_words(tmp_path: Path) -> set[str]:
    """The words of the gateway's route paths (/api/v1/functions/{name}/keys...)."""
    provider = FakeProvider()
    settings = Settings(state_dir=tmp_path)
    app = build_app(lifecycle(provider), TOKEN, Keys.from_settings(settings), settings)
    words: set[str] = set()
    for route in app.routes:
        for segment in getattr(route, "path", "").split("/"):
            word = segment.split(".")[0]  # openapi.json
            if word and not word.startswith("{") and not API_VERSION.match(word):
                words.add(word)
    return words


def platform_names(tmp_path: Path) -> set[str]:
    names = route_words(tmp_path)
    for dynamic in ("gateway.yml", "compose-tls.yml"):
        names |= dynamic_names(rendered(dynamic, tmp_path))
    for static in ("traefik.yml", "compose.yml"):
        names |= static_names(rendered(static, tmp_path))
    drains = traefik.Drains(tmp_path)
    names.add(drains.path.stem)
    names.add(traefik.drain_router("x").removeprefix(f"{labels.router_name('x')}-"))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    names |= set(compose["services"])
    return names


def test_every_name_the_platform_uses_is_reserved(tmp_path: Path) -> None:
    used = platform_names(tmp_path)
    # The extraction found what it should (a guard against it finding nothing).
    assert {"faas-api", "faas-wake", "faas-gateway", "callid", "web", "drain"} <= used
    assert {"healthz", "metrics", "functions", "auth", "function"} <= used
    assert used - RESERVED_NAMES == set()


def test_reserved_names_could_be_function_names() -> None:
    # A word the name syntax already refuses needs no reservation.
    assert all(NAME_RE.match(name) for name in RESERVED_NAMES)


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_a_new_function_cannot_take_a_reserved_name(name: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"name": name, "image": "echo"})
    assert info.value.field == "name"
    assert info.value.reason.startswith(f"{name!r} is reserved")
    with pytest.raises(InvalidSpec):
        check_new_name(name)
    # An existing function of that name (an older version's) can still be addressed.
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["apis", "my-api", "gateway2", "drainer", "fn-api", "web-hook"])
def test_names_that_merely_contain_a_reserved_word_are_fine(name: str) -> None:
    assert parse_spec({"name": name, "image": "echo"}).name == name


def test_the_api_refuses_reserved_names_and_still_removes_an_old_one(tmp_path: Path) -> None:
    provider = FakeProvider()
    settings = Settings(state_dir=tmp_path)
    keys = Keys.from_settings(settings)
    app = build_app(lifecycle(provider), TOKEN, keys, settings)
    client = Client(httpx.ASGITransport(app=app))
    got = client.put("/api/v1/functions/metrics", json={"image": "echo"}, headers=AUTH)
    assert got.status_code == 422
    assert got.json()["error"].startswith("name: 'metrics' is reserved")
    got = client.request(
        "POST", "/api/v1/functions", json={"name": "faas-wake", "image": "echo"}, headers=AUTH
    )
    assert got.status_code == 422
    assert "'faas-wake' is reserved" in got.json()["error"]
    assert provider.instances() == []
    # Deployed before the word was reserved: readable and removable.
    provider.add(FunctionSpec.model_validate({"name": "api", "image": "echo"}))
    assert client.get("/api/v1/functions/api", headers=AUTH).status_code == 200
    assert client.delete("/api/v1/functions/api", headers=AUTH).status_code == 204
    assert provider.instances() == []
