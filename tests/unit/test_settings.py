from pathlib import Path

import pytest
from pydantic import ValidationError

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
