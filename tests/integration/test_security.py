"""The attack table: each attack tried for real against a running stack, refused
with a clear 4xx, and nothing created or woken."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator

import docker
import docker.errors
import pytest
import requests

from tests.probe import PROBE

from .conftest import (
    ECHO_IMAGE,
    Stack,
    assert_refused,
    fn_name,
    image_from,
    running_stack,
    wait_for,
)

pytestmark = pytest.mark.integration

ICC = "com.docker.network.bridge.enable_icc"


@pytest.fixture(scope="module")
def stack(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: the load and abuse tests here leave Traefik slow to pick up
    new containers for a while, which must not fail unrelated tests after them."""
    with running_stack(engine, tmp_path_factory.mktemp("security")) as s:
        yield s


E = ECHO_IMAGE

# (method, path, body, status, the error names this)
ATTACKS = [
    # Label injection through the spec's own labels.
    (
        "PUT",
        "/functions/ok",
        {"image": E, "labels": {"traefik.http.routers.x.rule": "PathPrefix(`/`)"}},
        422,
        "labels",
    ),
    ("PUT", "/functions/ok", {"image": E, "labels": {"Traefik.enable": "true"}}, 422, "labels"),
    ("PUT", "/functions/ok", {"image": E, "labels": {"faas.namespace": "other"}}, 422, "labels"),
    (
        "PUT",
        "/functions/ok",
        {"image": E, "labels": {"com.docker.compose.project": "x"}},
        422,
        "labels",
    ),
    # ...or through env: a key cannot even be spelled like a label.
    ("PUT", "/functions/ok", {"image": E, "env": {"traefik.http.routers.x.rule": "y"}}, 422, "env"),
    ("PUT", "/functions/ok", {"image": E, "env": {"FAAS_FUNCTION_NAME": "x"}}, 422, "env"),
    # Names: traversal, slashes, case, length, rule injection.
    ("POST", "/functions", {"name": "..", "image": E}, 422, "name"),
    ("POST", "/functions", {"name": "a..b", "image": E}, 422, "name"),
    ("POST", "/functions", {"name": "../etc", "image": E}, 422, "name"),
    ("POST", "/functions", {"name": "a/b", "image": E}, 422, "name"),
    ("PUT", "/functions/a%2Fb", {"image": E}, 404, "no such endpoint"),
    ("POST", "/functions", {"name": "Hello", "image": E}, 422, "name"),
    ("POST", "/functions", {"name": "a" * 200, "image": E}, 422, "name"),
    ("POST", "/functions", {"name": "x`) || PathPrefix(`/", "image": E}, 422, "name"),
    ("POST", "/functions", {"name": "x\nrule", "image": E}, 422, "name"),
    # Words the platform names its own routes and services with.
    ("PUT", "/functions/healthz", {"image": E}, 422, "'healthz' is reserved"),
    ("POST", "/functions", {"name": "faas-wake", "image": E}, 422, "'faas-wake' is reserved"),
    # Host access: privileged, mounts, devices, namespaces, capabilities.
    ("PUT", "/functions/ok", {"image": E, "privileged": True}, 422, "privileged"),
    ("PUT", "/functions/ok", {"image": E, "volumes": {"/": {"bind": "/host"}}}, 422, "volumes"),
    ("PUT", "/functions/ok", {"image": E, "mounts": ["/var/run/docker.sock:/s"]}, 422, "mounts"),
    ("PUT", "/functions/ok", {"image": E, "binds": ["/:/host"]}, 422, "binds"),
    ("PUT", "/functions/ok", {"image": E, "devices": ["/dev/sda"]}, 422, "devices"),
    ("PUT", "/functions/ok", {"image": E, "network_mode": "host"}, 422, "network_mode"),
    ("PUT", "/functions/ok", {"image": E, "pid_mode": "host"}, 422, "pid_mode"),
    ("PUT", "/functions/ok", {"image": E, "ipc_mode": "host"}, 422, "ipc_mode"),
    (
        "PUT",
        "/functions/ok",
        {"image": E, "security_opt": ["seccomp=unconfined"]},
        422,
        "security_opt",
    ),
    ("PUT", "/functions/ok", {"image": E, "cap_add": ["SYS_ADMIN"]}, 422, "SYS_ADMIN"),
    ("PUT", "/functions/ok", {"image": E, "cap_add": ["ALL"]}, 422, "cap_add"),
    ("PUT", "/functions/ok", {"image": E, "resources": {"devices": ["/dev/kmsg"]}}, 422, "devices"),
    # Bodies.
    ("PUT", "/functions/ok", "{broken", 422, "JSON"),
    ("PUT", "/functions/ok", "\xff\xfe", 422, "JSON"),
    ("POST", "/functions/ok/keys", {"ttl": -5}, 422, "ttl"),
    ("POST", "/functions/ok/keys", {"ttl": "forever"}, 422, "ttl"),
    ("POST", "/functions/ok/keys", {"scope": "*"}, 422, "ttl"),
    ("DELETE", "/keys/..%2F..%2Fetc", None, 404, "no such endpoint"),
    ("DELETE", "/keys/not-a-kid", None, 422, "kid"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "mentions"), ATTACKS)
def test_attack_is_refused_and_creates_nothing(
    stack: Stack,
    engine: docker.DockerClient,
    method: str,
    path: str,
    body: object,
    status: int,
    mentions: str,
) -> None:
    assert_refused(stack, engine, method, path, body, status, mentions)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/functions/x/keys"), ("DELETE", "/keys/0123456789ab"), ("GET", "/functions")],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Bearer fk1.a.b.0.c"])
def test_admin_api_without_the_token(
    stack: Stack, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    got = requests.request(method, f"{stack.url}/api/v1{path}", headers=headers, timeout=10)
    assert got.status_code == 401
    assert "admin token" in got.json()["error"]


def traefik_routers(stack: Stack) -> list[str]:
    port = stack.env["FAAS_TRAEFIK_API_PORT"]
    routers = requests.get(f"http://127.0.0.1:{port}/api/http/routers", timeout=10).json()
    return [str(r["name"]) for r in routers]


def test_env_values_never_become_labels_or_routes(
    stack: Stack, engine: docker.DockerClient
) -> None:
    name = fn_name("envlabel")
    evil = "traefik.http.routers.evil.rule=PathPrefix(`/`)"
    got = stack.deploy(
        name, env={"ECHO_LABEL": evil, "TRAEFIK_HTTP_ROUTERS_EVIL_RULE": "PathPrefix(`/`)"}
    )
    assert got.status_code == 200, got.text
    try:
        (container,) = stack.containers(engine, name)
        assert not any("evil" in key for key in container.labels)
        assert container.labels["faas.spec.env"].lower().count("evil") == 2  # data only
        assert not any("evil" in r for r in traefik_routers(stack))
        assert stack.invoke(name).json()["env"]["ECHO_LABEL"] == evil
    finally:
        stack.api("DELETE", f"/functions/{name}")


@pytest.fixture
def labelled_image(engine: docker.DockerClient) -> Iterator[str]:
    """A tiny image FROM the echo image that carries a Traefik route of its own."""
    dockerfile = f"FROM {ECHO_IMAGE}\nLABEL traefik.http.routers.evil.rule=PathPrefix(`/`)\n"
    with image_from(engine, "evil", dockerfile) as tag:
        yield tag


def test_image_labels_cannot_inject_routes(
    stack: Stack, engine: docker.DockerClient, labelled_image: str
) -> None:
    before = [c.id for c in stack.containers(engine)]
    got = stack.deploy(fn_name("evilimg"), image=labelled_image)
    assert got.status_code == 422, got.text
    assert "traefik.http.routers.evil.rule" in got.json()["error"]
    assert got.json()["detail"]["field"] == "image"
    assert [c.id for c in stack.containers(engine)] == before
    assert not any("evil" in r for r in traefik_routers(stack))


# -- invoke keys ---------------------------------------------------------------


def new_key(stack: Stack, name: str, ttl: int | None = None) -> dict[str, object]:
    got = stack.api("POST", f"/functions/{name}/keys", json={"ttl": ttl})
    assert got.status_code == 201, got.text
    return dict(got.json())


def scale(stack: Stack, name: str, replicas: int) -> str:
    got = stack.api("POST", f"/functions/{name}/scale", json={"replicas": replicas})
    assert got.status_code == 200, got.text
    return str(got.json()["state"])


@pytest.fixture(scope="module")
def keyed(stack: Stack) -> Iterator[tuple[str, str]]:
    """A `key` function and a public one, both deployed."""
    name, other = fn_name("keyed"), fn_name("other")
    assert stack.deploy(name, auth="key").status_code == 200
    assert stack.deploy(other, auth="key").status_code == 200
    try:
        yield name, other
    finally:
        stack.api("DELETE", f"/functions/{name}")
        stack.api("DELETE", f"/functions/{other}")


def refused_calls(stack: Stack, name: str, other: str, marker: str) -> list[tuple[str, int]]:
    """Every way of calling without a valid key: (what, status), each with an error body."""
    expired = str(new_key(stack, name, ttl=1)["key"])
    revoked = new_key(stack, name)
    assert stack.api("DELETE", f"/keys/{revoked['kid']}").status_code == 204
    foreign = str(new_key(stack, other)["key"])
    good = str(new_key(stack, name)["key"])
    head, _, sig = good.rpartition(".")
    # Wait for the expiry at the key check itself: a call through Traefik would wake the function.
    check = f"{stack.direct}/api/v1/auth/{name}"
    wait_for(lambda: requests.get(check, headers={"X-Faas-Key": expired}, timeout=5).status_code
             == 403, 5, "the 1 s key to expire")  # fmt: skip
    cases = {
        "missing": {},
        "empty bearer": {"Authorization": "Bearer "},
        "wrong": {"Authorization": "Bearer not-a-key"},
        "tampered": {"X-Faas-Key": head + "." + sig[::-1]},
        "other function": {"Authorization": f"Bearer {foreign}"},
        "expired": {"X-Faas-Key": expired},
        "revoked": {"Authorization": f"Bearer {revoked['key']}"},
        "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    }
    out = []
    for what, headers in cases.items():
        got = stack.invoke(name, f"/{marker}", method="POST", data=b"x", headers=headers)
        assert "error" in got.json(), (what, got.text)
        out.append((what, got.status_code))
    return out


EXPECTED = [
    ("missing", 401),
    ("empty bearer", 401),
    ("wrong", 403),
    ("tampered", 403),
    ("other function", 403),
    ("expired", 403),
    ("revoked", 403),
    ("basic auth", 401),
]


def logs(stack: Stack, name: str) -> str:
    return str(stack.api("GET", f"/functions/{name}/logs").text)


def assert_let_through_without_key_headers(stack: Stack, name: str) -> None:
    key = str(new_key(stack, name)["key"])
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-Faas-Key": key},
                    {"Authorization": f"Bearer {stack.token}"}):  # fmt: skip
        got = stack.invoke(name, "/ok", headers={**headers, "X-Other": "kept"})
        assert got.status_code == 200, (headers, got.text)
        seen = got.json()["headers"]
        assert "authorization" not in seen
        assert "x-faas-key" not in seen
        assert seen["x-other"] == "kept"


def test_keys_on_the_warm_path(stack: Stack, keyed: tuple[str, str]) -> None:
    name, other = keyed
    marker = "warm-" + secrets.token_hex(4)
    assert refused_calls(stack, name, other, marker) == EXPECTED
    assert marker not in logs(stack, name)  # the function never saw them
    assert_let_through_without_key_headers(stack, name)


def test_keys_on_the_cold_path(stack: Stack, keyed: tuple[str, str]) -> None:
    name, other = keyed
    assert scale(stack, name, 0) == "stopped"
    marker = "cold-" + secrets.token_hex(4)
    assert refused_calls(stack, name, other, marker) == EXPECTED
    got = stack.api("GET", f"/functions/{name}").json()
    assert got["state"] == "stopped"  # nothing woke it
    assert_let_through_without_key_headers(stack, name)  # the first of these wakes it
    assert marker not in logs(stack, name)


def key_checks(stack: Stack) -> dict[str, float]:
    """The gateway's count of the keys Traefik asked it about, by outcome."""
    text = requests.get(f"{stack.direct}/metrics", timeout=10).text
    found = re.finditer(r'^faas_key_checks_total\{outcome="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {m[1]: float(m[2]) for m in found}


def test_traefik_checks_valid_keys_itself_and_learns_revocations(
    stack: Stack, keyed: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid key passes Traefik's keys plugin without a word to the gateway; a
    revocation holds from the next request after the API answered."""
    name, _ = keyed
    assert scale(stack, name, 1) == "running"
    issued = new_key(stack, name)
    headers = {"X-Faas-Key": str(issued["key"])}
    before = key_checks(stack)
    for _ in range(20):
        got = stack.invoke(name, "/ok", headers=headers)
        assert got.status_code == 200, got.text
        assert "x-faas-key" not in got.json()["headers"]
    assert key_checks(stack) == before  # not one request went to the gateway
    # A key Traefik has verified (and remembers) still expires on time.
    short = str(new_key(stack, name, ttl=3)["key"])
    assert stack.invoke(name, "/ok", headers={"X-Faas-Key": short}).status_code == 200
    wait_for(lambda: stack.invoke(name, "/ok", headers={"X-Faas-Key": short}).status_code
             == 403, 6, "the remembered 3 s key to expire")  # fmt: skip
    revoked_at = time.monotonic()
    # The API answers once Traefik's key check has the revocation in force.
    assert stack.api("DELETE", f"/keys/{issued['kid']}").status_code == 204
    took = time.monotonic() - revoked_at
    with capsys.disabled():
        print(f"\nrevocation -> in force in Traefik: {took * 1000:.0f} ms")
    assert took < 2.0
    got = stack.invoke(name, "/ok", headers=headers)
    assert (got.status_code, got.json()["error"]) == (403, f"key {issued['kid']} has been revoked")
    assert key_checks(stack).get("refused", 0) > before.get("refused", 0)


def test_forward_auth_endpoint_itself(stack: Stack, keyed: tuple[str, str]) -> None:
    name, other = keyed
    key = str(new_key(stack, name)["key"])
    url = f"{stack.direct}/api/v1/auth"
    assert requests.get(f"{url}/{name}", headers={"X-Faas-Key": key}, timeout=10).status_code == 200
    assert (
        requests.get(f"{url}/{other}", headers={"X-Faas-Key": key}, timeout=10).status_code == 403
    )
    assert requests.get(f"{url}/{name}", timeout=10).status_code == 401
    assert requests.get(f"{url}/Bad..Name", timeout=10).status_code == 422


def test_public_functions_keep_their_authorization_header(stack: Stack) -> None:
    name = fn_name("pub")
    assert stack.deploy(name).status_code == 200
    try:
        got = stack.invoke(name, headers={"Authorization": "Bearer theirs"})
        assert got.json()["headers"]["authorization"] == "Bearer theirs"
    finally:
        stack.api("DELETE", f"/functions/{name}")


# -- limits ----------------------------------------------------------------------


def test_oversized_bodies_get_413_warm_and_cold(stack: Stack) -> None:
    name = fn_name("small")
    assert stack.deploy(name, limits={"max_body_bytes": 1000}).status_code == 200
    try:
        assert stack.invoke(name, method="POST", data=b"x" * 1000).status_code == 200
        assert stack.invoke(name, method="POST", data=b"x" * 1001).status_code == 413
        assert scale(stack, name, 0) == "stopped"
        got = stack.invoke(name, method="POST", data=b"x" * 5000)
        assert got.status_code == 413
        assert "1000 bytes" in got.json()["error"]
        assert stack.api("GET", f"/functions/{name}").json()["state"] == "stopped"
    finally:
        stack.api("DELETE", f"/functions/{name}")


def test_rate_and_in_flight_limits_answer_429(stack: Stack) -> None:
    name = fn_name("rate")
    got = stack.deploy(name, min_scale=1, limits={"rate_average": 2, "rate_burst": 2})
    assert got.status_code == 200, got.text
    try:
        codes = [stack.invoke(name).status_code for _ in range(6)]
        assert codes[:2] == [200, 200]
        assert 429 in codes
    finally:
        stack.api("DELETE", f"/functions/{name}")
    name = fn_name("inflight")
    got = stack.deploy(name, min_scale=1, limits={"max_in_flight": 1, "rate_average": 0})
    assert got.status_code == 200, got.text
    try:
        with stack.invoke(name, "/?stream=12", stream=True) as slow:
            assert slow.status_code == 200  # headers in: the one slot is taken
            got = stack.invoke(name)
            assert got.status_code == 429
            assert b"chunk 11" in slow.content
        assert stack.invoke(name).status_code == 200
    finally:
        stack.api("DELETE", f"/functions/{name}")


# -- what a function container can reach ---------------------------------------------


def test_a_function_container_reaches_neither_gateway_nor_docker(
    stack: Stack, engine: docker.DockerClient
) -> None:
    name, neighbour = fn_name("jail"), fn_name("neighbour")
    assert stack.deploy(name, min_scale=1).status_code == 200
    assert stack.deploy(neighbour, min_scale=1, auth="key").status_code == 200
    try:
        (container,) = stack.containers(engine, name)
        other_ip, other_port = (
            stack.api("GET", f"/functions/{neighbour}").json()["address"].split(":")
        )
        network = engine.networks.get(stack.env.get("FAAS_NETWORK") or f"faas-{stack.namespace}")
        bridge_ip = network.attrs["IPAM"]["Config"][0]["Gateway"]  # the host, seen from inside
        own_ip = stack.api("GET", f"/functions/{name}").json()["address"].split(":")[0]
        targets = [
            ("itself", own_ip, 8080),  # the probe works
            ("gateway via bridge", bridge_ip, stack.gateway_port),
            ("traefik web via bridge", bridge_ip, stack.http_port),
            ("traefik api via bridge", bridge_ip, int(stack.env["FAAS_TRAEFIK_API_PORT"])),
            ("docker tcp via bridge", bridge_ip, 2375),
            ("gateway via loopback", "127.0.0.1", stack.gateway_port),
            # Straight to another function, around its key check: no ICC on the network.
            ("another function", other_ip, int(other_port)),
        ]
        code, output = container.exec_run(["python3", "-c", PROBE, json.dumps(targets)])
        assert code == 0, output
        assert isinstance(output, bytes)
        seen = json.loads(output)
        assert seen.pop("itself") == "connected"
        for label, _, _ in targets[1:]:
            # Rejected by the egress rules on the host's bridge address (OSError: no
            # route to host; refused where they are not installed), dropped between
            # functions.
            assert seen[label] in ("OSError", "ConnectionRefusedError", "TimeoutError"), (
                label,
                seen[label],
            )
        assert seen["another function"] == "TimeoutError"
        assert seen["sockets"] == []
        assert seen["docker_host"] is None
        assert seen["/app/x"] == "OSError"  # read-only root filesystem
        assert seen["/tmp/x"] == "written"  # ...with a writable tmpfs /tmp
        assert seen["CapEff"] == "0000000000000000"
        assert seen["NoNewPrivs"] == "1"
        assert seen["uid"] != 0
        # The host side: nothing mounted from the host, nothing privileged.
        host = container.attrs["HostConfig"]
        assert container.attrs["Mounts"] == []
        assert host["Privileged"] is False
        assert host["ReadonlyRootfs"] is True
        assert host["NetworkMode"] == network.name
        assert network.attrs["Options"][ICC] == "false"
        # ...while the platform itself still reaches the gateway.
        assert requests.get(f"{stack.direct}/api/v1/healthz", timeout=5).status_code == 200
    finally:
        stack.api("DELETE", f"/functions/{name}")
        stack.api("DELETE", f"/functions/{neighbour}")


def test_a_network_that_lets_functions_meet_is_reported_at_start(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A function network made by hand (or by an older faas) with inter-container
    traffic on is used as it is, but the gateway says so when it starts."""
    name = f"faas-icc-{secrets.token_hex(3)}"
    network = engine.networks.create(name, labels={"faas.test": "1"})
    seen: list[str] = []

    def warned() -> bool:
        seen.append(capfd.readouterr().err)
        return f"network {name} lets its containers reach each other" in "".join(seen)

    try:
        with running_stack(engine, tmp_path_factory.mktemp("icc"), FAAS_NETWORK=name) as stack:
            wait_for(warned, 10, "the gateway's warning")
            # The way out the warning gives: scale to zero, remove the network;
            # the next wake makes it anew, without ICC, and reattaches.
            fn = fn_name("icc")
            assert stack.deploy(fn).status_code == 200
            assert stack.api("POST", f"/functions/{fn}/scale", json={"replicas": 0}).ok
            network.remove()
            got = stack.invoke(fn, "/again")
            assert got.status_code == 200, got.text
            assert got.json()["path"] == "/again"
            network = engine.networks.get(name)
            assert network.attrs["Options"][ICC] == "false"
            (container,) = stack.containers(engine, fn)
            assert list(container.attrs["NetworkSettings"]["Networks"]) == [name]
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            for container in engine.containers.list(all=True, filters={"network": name}):
                container.remove(force=True)
            network.remove()


def test_read_only_is_an_opt_out(stack: Stack, engine: docker.DockerClient) -> None:
    name = fn_name("rw")
    assert stack.deploy(name, read_only=False).status_code == 200
    try:
        (container,) = stack.containers(engine, name)
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is False
        assert stack.api("GET", f"/functions/{name}").json()["read_only"] is False
    finally:
        stack.api("DELETE", f"/functions/{name}")


# -- the cost of the forwardAuth hop ------------------------------------------------------


def throughput(url: str, headers: dict[str, str], seconds: float = 3, threads: int = 8) -> float:
    counts = [0] * threads
    errors: list[int] = []
    deadline = time.monotonic() + seconds

    def worker(i: int) -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            got = session.get(url, headers=headers, timeout=10)
            if got.status_code != 200:
                errors.append(got.status_code)
            counts[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    return sum(counts) / (time.monotonic() - started)


def test_key_check_overhead(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    public, keyed = fn_name("bpub"), fn_name("bkey")
    off = {"rate_average": 0, "max_in_flight": 0}
    assert stack.deploy(public, min_scale=1, limits=off).status_code == 200
    assert stack.deploy(keyed, min_scale=1, limits=off, auth="key").status_code == 200
    try:
        key = str(new_key(stack, keyed)["key"])
        throughput(f"{stack.url}/function/{public}/", {}, seconds=0.5)  # warm up
        plain = throughput(f"{stack.url}/function/{public}/", {})
        with_key = throughput(f"{stack.url}/function/{keyed}/", {"X-Faas-Key": key})
        with capsys.disabled():
            print(
                f"\nkey check overhead: public {plain:.0f} req/s, key {with_key:.0f} req/s "
                f"({with_key / plain:.2f} of public)"
            )
        assert with_key > 0.1 * plain
    finally:
        stack.api("DELETE", f"/functions/{public}")
        stack.api("DELETE", f"/functions/{keyed}")


def test_cli_keys_create_invoke_revoke(stack: Stack, keyed: tuple[str, str]) -> None:
    from typer.testing import CliRunner

    from faas.cli import app

    name, _ = keyed
    base = ["--url", stack.url, "--token", stack.token]
    created = CliRunner().invoke(app, [*base, "keys", "create", name, "--ttl", "1d"])
    assert created.exit_code == 0, created.stderr
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines())
    kid, key = fields["kid"].strip(), fields["key"].strip()
    assert int(fields["expires"]) > time.time() + 86_000
    called = CliRunner().invoke(app, ["--url", stack.url, "invoke", name, "--key", key])
    assert called.exit_code == 0, called.stderr
    assert "x-faas-key" not in json.loads(called.stdout)["headers"]
    assert CliRunner().invoke(app, [*base, "keys", "revoke", kid]).exit_code == 0
    refused = CliRunner().invoke(app, ["--url", stack.url, "invoke", name, "--key", key])
    assert refused.exit_code == 1
    assert "revoked" in refused.stdout
    bad = CliRunner().invoke(app, [*base, "keys", "create", name, "--ttl", "soon"])
    assert bad.exit_code == 2


SLOW_SERVER = (
    "import http.server, time\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        if self.path != '/':\n"
    "            time.sleep(120)\n"
    "        self.send_response(200)\n"
    "        self.end_headers()\n"
    "http.server.ThreadingHTTPServer(('', 8080), H).serve_forever()\n"
)


@pytest.fixture
def slow_image(engine: docker.DockerClient) -> Iterator[str]:
    """An image whose server never answers anything but `/`."""
    dockerfile = f"FROM {ECHO_IMAGE}\nCMD {json.dumps(['python3', '-c', SLOW_SERVER])}\n"
    with image_from(engine, "slow", dockerfile) as tag:
        yield tag


def test_a_function_that_never_answers_gets_504_warm_and_cold(
    stack: Stack, slow_image: str
) -> None:
    timeout = float(stack.env["FAAS_REQUEST_TIMEOUT"])
    name = fn_name("slow")
    assert stack.deploy(name, image=slow_image).status_code == 200
    try:
        for path in ("warm", "cold"):
            if path == "cold":
                assert scale(stack, name, 0) == "stopped"
            started = time.monotonic()
            got = stack.invoke(name, "/hang")
            took = time.monotonic() - started
            assert got.status_code == 504, (path, got.text)
            assert timeout <= took < timeout + 8, (path, took)
        assert "did not answer within" in got.json()["error"]  # the gateway's, cold
    finally:
        stack.api("DELETE", f"/functions/{name}")
