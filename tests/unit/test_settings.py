from pathlib import Path

import pytest
from pydantic import ValidationError

from faas.cli import _default_token
from faas.config import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("FAAS_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.function_network == "faas-default"
    assert s.traefik_api == "http://127.0.0.1:8082"
    assert s.admin_token is None


def test_env_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAAS_NAMESPACE", "prod")
    monkeypatch.setenv("FAAS_HTTP_PORT", "9999")
    monkeypatch.setenv("FAAS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("FAAS_TRAEFIK_API_URL", "")
    s = Settings()
    assert s.namespace == "prod"
    assert s.http_port == 9999
    assert s.function_network == "faas-prod"
    assert s.token_file == tmp_path / "admin-token"
    assert s.traefik_api is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("FAAS_NAMESPACE", "Bad_NS"),
        ("FAAS_HTTP_PORT", "70000"),
        ("FAAS_READY_TIMEOUT", "0"),
        # Traefik's config takes an address as it is: no names.
        ("FAAS_HTTP_HOST", "localhost"),
        ("FAAS_GATEWAY_HOST", ""),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("namespace", "under_xdg"),
    [
        # Where every namespace lived before: an upgraded install keeps its token.
        ("default", "faas"),
        ("staging", "faas/namespaces/staging"),
        ("traefik", "faas/namespaces/traefik"),  # no clash with default's traefik/
    ],
)
def test_state_dir_per_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, namespace: str, under_xdg: str
) -> None:
    monkeypatch.delenv("FAAS_STATE_DIR", raising=False)
    monkeypatch.setenv("FAAS_NAMESPACE", namespace)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Settings().state_dir == tmp_path / "xdg" / under_xdg
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().state_dir == tmp_path / "home" / ".local" / "state" / under_xdg
    monkeypatch.setenv("FAAS_STATE_DIR", str(tmp_path / "mine"))
    assert Settings().state_dir == tmp_path / "mine"


def test_cli_finds_its_namespace_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI reads the token file of the `faas up` of FAAS_NAMESPACE on this host."""
    monkeypatch.delenv("FAAS_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    for namespace in ("default", "staging"):
        Settings(namespace=namespace).token_file.parent.mkdir(parents=True)
        Settings(namespace=namespace).token_file.write_text(f"token-of-{namespace}\n")
    monkeypatch.delenv("FAAS_NAMESPACE", raising=False)
    assert _default_token() == "token-of-default"
    assert (tmp_path / "faas" / "admin-token").read_text() == "token-of-default\n"
    monkeypatch.setenv("FAAS_NAMESPACE", "staging")
    assert _default_token() == "token-of-staging"
