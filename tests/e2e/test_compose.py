"""`docker compose up -d`, then everything a user does with `faas up`, then `down -v`."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import time
from collections.abc import Callable

import pytest
import requests
from typer.testing import CliRunner

from faas.cli import app
from tests.probe import PROBE, REJECTED, listener

from .conftest import ECHO_IMAGE, Stack, docker

pytestmark = pytest.mark.integration

NAME = "hello"


def cli(stack: Stack, *args: str) -> str:
    result = CliRunner().invoke(
        app, ["--url", stack.url, "--token", stack.token, *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.stderr
    return result.stdout


def https_get(port: int, path: str) -> tuple[int, bytes, bytes]:
    """GET over TLS without checking the (self-signed) certificate: status, body, cert."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert isinstance(conn.sock, ssl.SSLSocket)
        return response.status, response.read(), conn.sock.getpeercert(binary_form=True) or b""
    finally:
        conn.close()


def proxy_status(stack: Stack, service: str, method: str, path: str) -> str:
    """Status line a socket proxy gives a request, asked from inside its container."""
    script = (
        "exec 3<>/dev/tcp/127.0.0.1/2375 && "
        f"printf '{method} {path} HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3"
    )
    return stack.run("exec", "-T", service, "bash", "-c", script).strip()


def crash(pid: str) -> None:
    """SIGKILL a container's process from the host's PID namespace, through Docker."""
    docker(
        "run", "--rm", "--pid=host", "--user=0", "--network=none", "--label=faas.test=1",
        ECHO_IMAGE, "python3", "-c", f"import os; os.kill({int(pid)}, 9)",
    )  # fmt: skip


def state(stack: Stack) -> str:
    return str(stack.api("GET", f"/functions/{NAME}").json()["state"])


def prometheus_until(
    stack: Stack, query: str, done: Callable[[dict[str, str], float], bool]
) -> tuple[dict[str, str], float]:
    """Poll the stack's Prometheus: `up` per job, and the value of `query`."""
    api = f"http://127.0.0.1:{stack.prometheus_port}/api/v1/query"
    deadline = time.monotonic() + 60
    while True:
        try:
            up = requests.get(api, params={"query": "up"}, timeout=5).json()["data"]["result"]
            jobs = {r["metric"]["job"]: r["value"][1] for r in up}
            result = requests.get(api, params={"query": query}, timeout=5).json()["data"]["result"]
            value = float(result[0]["value"][1]) if result else 0.0
        except (requests.RequestException, KeyError, ValueError):
            jobs, value = {}, 0.0
        if jobs and done(jobs, value):
            return jobs, value
        assert time.monotonic() < deadline, (jobs, value)
        time.sleep(0.5)


def test_compose_stack(stack: Stack) -> None:
    took = stack.up()
    print(f"\ncompose up -d -> all services healthy: {took:.1f}s")
    assert stack.token

    # The management API is only for the token's holder.
    assert requests.get(f"{stack.url}/api/v1/functions", timeout=10).status_code == 401

    # Deploy with the CLI; it returns once Traefik routes the function.
    out = cli(stack, "deploy", NAME, "--image", ECHO_IMAGE, "-e", "ECHO_GREETING=hi")
    assert "(running)" in out

    # Plain HTTP through Traefik, warm path (no wake timing from the gateway).
    got = requests.post(f"{stack.url}/function/{NAME}/any/path?x=1", data=b"body", timeout=30)
    assert got.status_code == 200
    assert "server-timing" not in got.headers
    echo = got.json()
    assert (echo["path"], echo["query"], echo["body"]) == ("/any/path", {"x": ["1"]}, "body")
    assert echo["env"]["ECHO_GREETING"] == "hi"
    # Traefik's callid plugin (in the shared volume) gave the request an id.
    assert len(got.headers["X-Call-Id"]) == 32
    assert echo["headers"]["x-call-id"] == got.headers["X-Call-Id"]
    # ...which Traefik's access log (FAAS_ACCESS_LOG) records.
    deadline = time.monotonic() + 10
    while f'"request_X-Call-Id":"{got.headers["X-Call-Id"]}"' not in stack.run("logs", "traefik"):
        assert time.monotonic() < deadline, "no access log line with the request's id"
        time.sleep(0.2)
    assert json.loads(cli(stack, "invoke", NAME, "/cli", "-d", "x"))["path"] == "/cli"

    # Isolation, tried from inside the function: its network has no member but
    # functions and lets none reach another; the manager listens on the host's
    # loopback, the socket proxies on Unix sockets in volumes of their own.
    other = stack.api("PUT", "/functions/neighbour", {"image": ECHO_IMAGE, "min_scale": 1})
    assert other.status_code == 200, other.text
    other_ip, other_port = other.json()["address"].split(":")
    host_ip = docker(
        "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", stack.network
    )
    network = json.loads(docker("network", "inspect", stack.network))[0]
    assert len(network["Containers"]) == 2  # the two functions, nobody else
    assert network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    # Where the stack's own services sit: none on a network a function could share.
    service = '{{index .Config.Labels "com.docker.compose.service"}}'
    ids = stack.run("ps", "-q").split()
    modes = dict(
        line.split()
        for line in docker(
            "inspect", "-f", f"{service} {{{{.HostConfig.NetworkMode}}}}", *ids
        ).splitlines()
    )
    assert modes == {
        "traefik": "host", "manager": "host", "prometheus": "host", "egress": "host",
        "docker-proxy-traefik": "none", "docker-proxy-manager": "none",
    }  # fmt: skip
    (container,) = docker(
        "ps", "-q", "--filter", f"label=faas.namespace={stack.namespace}",
        "--filter", f"label=faas.function={NAME}",
    ).split()  # fmt: skip
    own_ip = docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container
    )
    # A server on every address of this host: the egress rules keep functions off it.
    server, server_port = listener()
    targets = [
        # The probe itself works: the function reaches its own server.
        ("itself", own_ip, 8080),
        ("a host server on 0.0.0.0", host_ip, server_port),
        ("manager via the host", host_ip, stack.gateway_port),
        ("traefik api via the host", host_ip, stack.api_port),
        ("traefik web via the host", host_ip, stack.http_port),  # loopback in this test
        ("prometheus via the host", host_ip, stack.prometheus_port),
        ("docker via the host", host_ip, 2375),
        ("another function", other_ip, int(other_port)),
    ]
    with server:
        seen = json.loads(docker("exec", container, "python3", "-c", PROBE, json.dumps(targets)))
    # The host's own addresses are closed by the egress service's rules (before
    # them, the ports below answered "refused": nothing listens there).
    assert {label: seen[label] for label, *_ in targets} == {
        "itself": "connected",
        "a host server on 0.0.0.0": REJECTED,
        "manager via the host": REJECTED,
        "traefik api via the host": REJECTED,
        "traefik web via the host": REJECTED,
        "prometheus via the host": REJECTED,
        "docker via the host": REJECTED,
        "another function": "TimeoutError",
    }
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    assert f"faas-{stack.namespace}" in rules
    assert "169.254.0.0/16" in rules
    assert (seen["sockets"], seen["docker_host"]) == ([], None)
    # ...while Traefik, from the host, still routes to both.
    got = requests.get(f"{stack.url}/function/neighbour/n", timeout=30)
    assert got.status_code == 200, got.text
    assert stack.api("DELETE", "/functions/neighbour").status_code == 204

    # The monitoring profile's Prometheus scrapes the gateway and Traefik, and
    # sees this function's invocations in Traefik's per-service counter.
    series = f'sum(traefik_service_requests_total{{service="fn-{NAME}@docker"}})'
    jobs, _ = prometheus_until(stack, series, lambda jobs, n: n >= 2)
    assert jobs == {"faas-gateway": "1", "traefik": "1"}

    # HTTPS with Traefik's self-signed default certificate, same routes.
    status, body, cert = https_get(stack.https_port, f"/function/{NAME}/tls")
    assert status == 200
    assert json.loads(body)["path"] == "/tls"
    assert b"TRAEFIK DEFAULT CERT" in cert

    # The dashboard answers on the loopback-only API port, not on the web one.
    dashboard = f"http://127.0.0.1:{stack.api_port}/dashboard/"
    assert requests.get(dashboard, timeout=10).status_code == 200
    assert requests.get(f"{stack.url}/dashboard/", timeout=10).status_code == 404

    # Each socket proxy allows its client's calls only.
    assert "200" in proxy_status(stack, "docker-proxy-traefik", "GET", "/v1.41/containers/json")
    assert "403" in proxy_status(stack, "docker-proxy-traefik", "POST", "/v1.41/containers/create")
    assert "403" in proxy_status(stack, "docker-proxy-manager", "GET", "/v1.41/images/json")
    assert "403" in proxy_status(stack, "docker-proxy-manager", "POST", "/v1.41/containers/x/exec")

    # The manager crashes (its process killed, as the OOM killer would; `docker
    # kill` would not do: Docker then suspends the restart policy). Warm calls
    # go on through Traefik; the restart policy brings the manager back healthy.
    manager = stack.run("ps", "-q", "manager").strip()
    crash(docker("inspect", "-f", "{{.State.Pid}}", manager))
    killed = time.monotonic()
    got = requests.get(f"{stack.url}/function/{NAME}/meanwhile", timeout=30)
    assert got.status_code == 200, got.text
    restarted = "{{.RestartCount}} {{.State.Health.Status}}"
    while (seen := docker("inspect", "-f", restarted, manager)) != "1 healthy":
        assert time.monotonic() - killed < 60, seen
        time.sleep(0.2)
    print(f"manager killed: restarted and healthy after {time.monotonic() - killed:.1f}s")
    assert stack.api("GET", f"/functions/{NAME}").status_code == 200

    # Scale to zero through the API: the container stops but stays.
    scaled = stack.api("POST", f"/functions/{NAME}/scale", {"replicas": 0})
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["state"] == "stopped"
    namespace = f"label=faas.namespace={stack.namespace}"
    (container,) = docker("ps", "-aq", "--filter", namespace).split()
    assert docker("inspect", "-f", "{{.State.Status}}", container) == "exited"

    # The next request wakes it, through Traefik's catch-all to the gateway.
    started = time.monotonic()
    got = requests.get(f"{stack.url}/function/{NAME}/wake", timeout=60)
    assert got.status_code == 200
    assert got.json()["path"] == "/wake"
    assert got.headers["server-timing"].startswith("wake;dur=")
    assert got.headers["X-Call-Id"] == got.json()["headers"]["x-call-id"]
    print(f"wake through the stack: {time.monotonic() - started:.2f}s")
    assert state(stack) == "running"

    # Only this namespace is routed: a labelled container of another
    # namespace, even on this stack's network, gets no route.
    stray = docker(
        "run", "-d", "--network", stack.network, "--label", "faas.test=1",
        "--label", f"faas.namespace={stack.namespace}x", "--label", "traefik.enable=true",
        "--label", "traefik.http.routers.fn-stray.rule=PathPrefix(`/function/stray`)",
        "--label", "traefik.http.services.fn-stray.loadbalancer.server.port=8080",
        ECHO_IMAGE,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # well past Traefik's 100 ms provider throttle
        # Not Traefik's route: the gateway's catch-all, which knows no "stray".
        assert requests.get(f"{stack.url}/function/stray", timeout=30).status_code == 404
    finally:
        docker("rm", "-f", stray)

    # An `auth: key` function: Traefik's forwardAuth reaches the manager on the
    # host's loopback, and the key headers never reach the function.
    keyed = stack.api("PUT", f"/functions/{NAME}", {"image": ECHO_IMAGE, "auth": "key"})
    assert keyed.status_code == 200, keyed.text
    assert requests.get(f"{stack.url}/function/{NAME}/k", timeout=30).status_code == 401
    key = stack.api("POST", f"/functions/{NAME}/keys", {"ttl": 60}).json()["key"]
    got = requests.get(f"{stack.url}/function/{NAME}/k", headers={"X-Faas-Key": key}, timeout=30)
    assert got.status_code == 200, got.text
    assert "x-faas-key" not in got.json()["headers"]

    # A secret: the manager's state is a volume; the function still reads its file.
    assert stack.api("POST", "/secrets", {"name": "db", "value": "s3cret"}).status_code == 201
    with_secret = stack.api(
        "PUT", f"/functions/{NAME}", {"image": ECHO_IMAGE, "secrets": ["db"], "min_scale": 1}
    )
    assert with_secret.status_code == 200, with_secret.text
    container = with_secret.json()["container"]
    assert docker("exec", container, "cat", "/var/openfaas/secrets/db") == "s3cret"

    cli(stack, "rm", NAME)
    assert stack.api("GET", f"/functions/{NAME}").status_code == 404
    assert stack.api("DELETE", "/secrets/db").status_code == 204

    stack.run("down", "-v", "-t", "3")
    # The function network is the stack's only external part (the manager
    # made it, and `down` leaves it for the functions).
    docker("network", "rm", stack.network)
    assert stack.leftovers() == {}
