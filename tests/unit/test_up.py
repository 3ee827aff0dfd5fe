"""`faas up`'s pure parts: the URLs it checks and prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from faas.config import Settings
from faas.up import urls


@pytest.mark.parametrize(
    ("http_host", "gateway_host", "web", "direct"),
    [
        ("127.0.0.1", "127.0.0.1", "http://127.0.0.1:8080", "http://127.0.0.1:8081"),
        # A wildcard is reached at this host's loopback, an IPv6 address in brackets.
        ("0.0.0.0", "0.0.0.0", "http://127.0.0.1:8080", "http://127.0.0.1:8081"),
        ("::", "::", "http://[::1]:8080", "http://[::1]:8081"),
        ("::1", "::1", "http://[::1]:8080", "http://[::1]:8081"),
        ("fd00::5", "127.0.0.1", "http://[fd00::5]:8080", "http://127.0.0.1:8081"),
    ],
)
def test_urls_bracket_ipv6_and_reach_wildcards_on_loopback(
    tmp_path: Path, http_host: str, gateway_host: str, web: str, direct: str
) -> None:
    settings = Settings(state_dir=tmp_path, http_host=http_host, gateway_host=gateway_host)
    got = urls(settings)
    assert (got.web, got.direct) == (web, direct)
    assert got.healthz == f"{web}/api/v1/healthz"
    assert got.traefik_ping == "http://127.0.0.1:8082/ping"
