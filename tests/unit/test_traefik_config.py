"""The Traefik and Prometheus configs rendered from the templates, for both modes."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from faas import labels, traefik
from faas.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# Traefik's and Prometheus' documents, read back: their schemas are theirs.
Document = dict[str, Any]


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(state_dir=tmp_path, **values)  # type: ignore[arg-type]


def rendered(template: Path, values: dict[str, str], tmp_path: Path) -> Document:
    target = tmp_path / "out" / template.name
    traefik.render([(template, target)], values)
    loaded = yaml.safe_load(target.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.parametrize(
    ("host", "web", "websecure", "relay", "trusted"),
    [
        ("127.0.0.1", "127.0.0.1:80", "127.0.0.1:443", "127.0.0.1:80", ["127.0.0.1/32"]),
        ("0.0.0.0", "0.0.0.0:80", "0.0.0.0:443", "127.0.0.1:80", ["127.0.0.1/32"]),
        # Linux sends to 127.0.0.2 from 127.0.0.1: both are trusted.
        ("127.0.0.2", "127.0.0.2:80", "127.0.0.2:443", "127.0.0.2:80",
         ["127.0.0.1/32", "127.0.0.2/32"]),
        ("192.0.2.7", "192.0.2.7:80", "192.0.2.7:443", "192.0.2.7:80",
         ["127.0.0.1/32", "192.0.2.7/32"]),
        ("::", "[::]:80", "[::]:443", "[::1]:80", ["127.0.0.1/32", "::1/128"]),
    ],
)  # fmt: skip
def test_compose_entrypoints_and_https_relay(
    tmp_path: Path, host: str, web: str, websecure: str, relay: str, trusted: list[str]
) -> None:
    values = traefik.compose_values(settings(tmp_path, http_host=host, http_port=80), 443)
    static = rendered(ROOT / "traefik" / "compose.yml", values, tmp_path)
    entrypoints = static["entryPoints"]
    assert isinstance(entrypoints, dict)
    assert entrypoints["web"]["address"] == web
    assert sorted(entrypoints["web"]["proxyProtocol"]["trustedIPs"]) == trusted
    assert entrypoints["websecure"]["address"] == websecure
    # Loopback only, whatever the web address.
    assert entrypoints["traefik"]["address"].startswith("127.0.0.1:")
    assert entrypoints["web"]["http"]["middlewares"] == ["callid@file"]
    tls = rendered(ROOT / "traefik" / "compose-tls.yml", values, tmp_path)
    (server,) = tls["tcp"]["services"]["faas-web"]["loadBalancer"]["servers"]
    assert server == {"address": relay}


def test_swarm_stack_traefik_in_a_container_of_its_own(tmp_path: Path) -> None:
    """deploy/swarm/stack.yml: the Swarm provider through Traefik's socket proxy,
    its API where the gateway reaches it, the gateway by name, the certificate."""
    s = settings(tmp_path, provider="swarm", http_host="0.0.0.0", http_port=8080)
    values = traefik.compose_values(
        s,
        8443,
        gateway_url="http://gateway:8081",
        api_host="0.0.0.0",
        certificate=("/run/secrets/tls.crt", "/run/secrets/tls.key"),
    )
    static = rendered(ROOT / "traefik" / "compose.yml", values, tmp_path)
    assert "docker" not in static["providers"]
    swarm = static["providers"]["swarm"]
    assert swarm["endpoint"] == "unix:///run/docker-proxy/docker.sock"
    assert swarm["refreshSeconds"] == 1
    assert static["providers"]["file"]["directory"] == "/etc/traefik/dynamic"
    assert static["entryPoints"]["traefik"]["address"] == "0.0.0.0:8082"
    assert static["entryPoints"]["websecure"]["address"] == "0.0.0.0:8443"
    gateway = rendered(ROOT / "traefik" / "gateway.yml", values, tmp_path)
    servers = gateway["http"]["services"]["faas-gateway"]["loadBalancer"]["servers"]
    assert servers == [{"url": "http://gateway:8081"}]
    tls = rendered(ROOT / "traefik" / "compose-tls.yml", values, tmp_path)
    assert tls["tls"]["stores"]["default"]["defaultCertificate"] == {
        "certFile": "/run/secrets/tls.crt",
        "keyFile": "/run/secrets/tls.key",
    }
    # Compose: the Docker provider, the self-signed default certificate.
    values = traefik.compose_values(settings(tmp_path), 443)
    assert "swarm" not in rendered(ROOT / "traefik" / "compose.yml", values, tmp_path)["providers"]
    assert "tls" not in rendered(ROOT / "traefik" / "compose-tls.yml", values, tmp_path)


def test_gateway_and_prometheus_on_loopback(tmp_path: Path) -> None:
    s = settings(tmp_path, gateway_host="127.0.0.1", gateway_port=9001, traefik_api_port=9002)
    values = traefik.compose_values(s, 443)
    gateway = rendered(ROOT / "traefik" / "gateway.yml", values, tmp_path)
    servers = gateway["http"]["services"]["faas-gateway"]["loadBalancer"]["servers"]
    assert servers == [{"url": "http://127.0.0.1:9001"}]
    prometheus = rendered(ROOT / "deploy" / "prometheus" / "prometheus.yml", values, tmp_path)
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]
    }
    assert targets == {"faas-gateway": ["127.0.0.1:9001"], "traefik": ["127.0.0.1:9002"]}


@pytest.mark.parametrize("template", ["traefik.yml", "compose.yml"])
@pytest.mark.parametrize("on", [True, False])
def test_access_log_is_a_setting(tmp_path: Path, template: str, on: bool) -> None:
    values = traefik.compose_values(settings(tmp_path, access_log=on), 443)
    static = rendered(ROOT / "traefik" / template, values, tmp_path)
    if on:
        assert static["accessLog"]["format"] == "json"
        assert static["accessLog"]["fields"]["headers"]["names"] == {"X-Call-Id": "keep"}
    else:
        assert "accessLog" not in static


def test_an_ipv6_gateway_is_bracketed(tmp_path: Path) -> None:
    s = settings(tmp_path, gateway_host="::", gateway_port=9001)
    assert s.gateway_url == "http://[::1]:9001"
    assert s.forward_auth_url == "http://[::1]:9001/api/v1/auth"


def test_latency_buckets_fit_functions(tmp_path: Path) -> None:
    """Sub-millisecond to a minute in both modes, not Traefik's 0.1 to 5 s."""
    up = yaml.safe_load(traefik.render_config(settings(tmp_path / "up")).read_text())
    values = traefik.compose_values(settings(tmp_path), 443)
    compose = rendered(ROOT / "traefik" / "compose.yml", values, tmp_path)
    for static in (up, compose):
        buckets = static["metrics"]["prometheus"]["buckets"]
        assert buckets == list(traefik.LATENCY_BUCKETS) == sorted(buckets)
        assert buckets[0] <= 0.0005
        assert buckets[-1] >= 60


def test_functions_dial_fast_and_the_plugins_are_wired(tmp_path: Path) -> None:
    """Both modes: a 250 ms dial timeout for functions; the callid plugin (call ids,
    and 502 for an unreachable backend) on the web entrypoint and the keys plugin
    declared, their source shipped; `unreached@file`, which older functions' labels
    name, still defined."""
    up = yaml.safe_load(traefik.render_config(settings(tmp_path / "up")).read_text())
    values = traefik.compose_values(settings(tmp_path), 443)
    compose = rendered(ROOT / "traefik" / "compose.yml", values, tmp_path)
    for static in (up, compose):
        assert static["serversTransport"]["forwardingTimeouts"]["dialTimeout"] == "250ms"
        plugins = static["experimental"]["localPlugins"]
        assert plugins == {
            "callid": {"moduleName": "faas/callid"},
            "keys": {"moduleName": "faas/keys"},
        }
        assert static["entryPoints"]["web"]["http"]["middlewares"] == ["callid@file"]
    gateway = rendered(ROOT / "traefik" / "gateway.yml", values, tmp_path)
    assert gateway["http"]["middlewares"]["callid"] == {"plugin": {"callid": {}}}
    assert set(gateway["http"]["middlewares"]["unreached"]) == {"headers"}
    for plugin in ("callid", "keys"):
        source = tmp_path / "up" / "traefik" / traefik.PLUGINS / "src" / "faas" / plugin
        assert (source / f"{plugin}.go").is_file()
        assert (source / ".traefik.yml").is_file()


def test_each_drain_write_raises_the_priority_a_drain_waits_for(tmp_path: Path) -> None:
    drains = traefik.Drains(tmp_path)

    def routers() -> dict[str, dict[str, object]]:
        return dict(json.loads(drains.path.read_text())["http"]["routers"])

    first = drains.add("a")
    assert routers()[traefik.drain_router("a")]["priority"] == first
    assert first > traefik.DRAIN_PRIORITY
    drains.discard("a")
    assert not drains.path.exists()
    second = drains.add("a")  # Traefik may still show the first router: not enough
    assert second > first
    drains.only(["b", "b", "c"])
    assert sorted(routers()) == [traefik.drain_router("b"), traefik.drain_router("c")]
    assert drains.names == {"b": 1, "c": 1}
    drains.clear()
    assert not drains.path.exists()


def test_the_key_plugin_gets_a_copy_of_the_secret_and_the_revoked_kids(tmp_path: Path) -> None:
    """The middleware's configuration (shown by Traefik's API) names the secret's
    file, relative to Traefik's working directory, never the secret itself."""
    s = settings(tmp_path / "state", auth_url="http://127.0.0.1:9/api/v1/auth/")
    traefik.publish_keys(s, {"0123456789ab", "ba9876543210"})
    secret = s.signing_key_file.read_text().strip()
    copy = s.state_dir / "traefik" / traefik.SECRET_COPY
    assert copy.read_text().strip() == secret
    assert stat.S_IMODE(copy.stat().st_mode) == 0o640  # Traefik's group reads it (compose)
    text = (s.dynamic_dir / traefik.KEYS_FILE).read_text()
    assert secret not in text
    declared = yaml.safe_load(text)["http"]["middlewares"]["keys"]
    assert declared == {
        "plugin": {
            "keys": {
                "secretFile": "signing-key",
                "authUrl": "http://127.0.0.1:9/api/v1/auth",
                "failureWindow": 60,
                "revoked": ["0123456789ab", "ba9876543210"],
            }
        }
    }
    assert labels.KEYS == "keys@file"
    # With the throttle off the plugin never holds back a refused client.
    traefik.publish_keys(settings(tmp_path / "state", auth_max_failures=0), set())
    again = yaml.safe_load((s.dynamic_dir / traefik.KEYS_FILE).read_text())
    assert again["http"]["middlewares"]["keys"]["plugin"]["keys"]["failureWindow"] == 0
    assert copy.read_text().strip() == secret  # the same secret, not a new one
