"""Egress from function containers (faas/egress.py): by default neither this
host's addresses nor 169.254.0.0/16, the rest of the world as before, and
FAAS_EGRESS_ALLOW opens exceptions.

Only listeners these tests start are ever connected to: a server on this
host, a published port, and a container standing for the outside world.
Link-local addresses get no packet: their rule is read back from iptables."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from faas import egress
from faas.config import Settings
from tests.probe import PROBE, REJECTED, listener

from .conftest import ECHO_IMAGE, Stack, free_port, running_stack, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="iptables rules need root"),
]


@pytest.fixture(scope="module")
def stack(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(engine, tmp_path_factory.mktemp("egress")) as s:
        yield s


@pytest.fixture
def host_port() -> Iterator[int]:
    server, port = listener()
    with server:
        yield port


def probe(container: Container, targets: list[tuple[str, str, int]]) -> dict[str, object]:
    code, output = container.exec_run(["python3", "-c", PROBE, json.dumps(targets)])
    assert code == 0, output
    assert isinstance(output, bytes)
    seen = json.loads(output)
    assert isinstance(seen, dict)
    return seen


def gateway_ip(network: Network) -> str:
    """The host's address on a bridge network, as its containers reach it."""
    network.reload()
    return str(network.attrs["IPAM"]["Config"][0]["Gateway"])


def interface_ip(name: str) -> str:
    """This host's IPv4 address on an interface (`ip` reads it; no packet sent)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", name], capture_output=True, text=True, timeout=10
    ).stdout
    return out.split()[3].split("/")[0]


def bridge(network: Network) -> str:
    """The Linux bridge of a network: the name it was given, else the engine's."""
    named = (network.attrs.get("Options") or {}).get("com.docker.network.bridge.name")
    return str(named) if named else f"br-{str(network.id)[:12]}"


def function_network(stack: Stack, engine: docker.DockerClient) -> Network:
    return engine.networks.get(stack.env.get("FAAS_NETWORK") or f"faas-{stack.namespace}")


def the_container(stack: Stack, engine: docker.DockerClient, name: str) -> Container:
    (container,) = stack.containers(engine, name)
    return container


@pytest.fixture
def outside(engine: docker.DockerClient) -> Iterator[str]:
    """The outside world in small: an echo server (port 8080) on none of this host's
    addresses and on no Docker bridge, in a container with no network but one end
    of a veth pair the host routes to (198.18.0.0/15, the benchmarking range)."""
    container = engine.containers.run(
        ECHO_IMAGE, detach=True, network_mode="none", labels={"faas.test": "1"}
    )
    host_side = f"fx{secrets.token_hex(4)}"
    octet = 1 + secrets.randbelow(250)
    near, far = f"198.18.{octet}.1", f"198.18.{octet}.2"

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    try:
        # Listening first: with a route, its server's name lookup would wait on DNS.
        wait_for(lambda: b"echo listening" in container.logs(), 30, "the outside server")
        container.reload()
        inside = ["nsenter", "-t", str(container.attrs["State"]["Pid"]), "-n"]
        run("ip", "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns",
            str(container.attrs["State"]["Pid"]))  # fmt: skip
        run("ip", "addr", "add", f"{near}/30", "dev", host_side)
        run("ip", "link", "set", host_side, "up")
        run(*inside, "ip", "addr", "add", f"{far}/30", "dev", "eth0")
        run(*inside, "ip", "link", "set", "eth0", "up")
        run(*inside, "ip", "route", "add", "default", "via", near)
        yield far
    finally:
        container.remove(force=True)  # its namespace goes, and the veth pair with it
        subprocess.run(["ip", "link", "del", host_side], capture_output=True, timeout=30)


def chains_of(namespace: str, bridge: str) -> dict[str, list[str]]:
    """This namespace's chains for `bridge`, by the hook that jumps to them."""
    text = egress.iptables("-S")
    found: dict[str, list[str]] = {}
    for hook in ("INPUT", "DOCKER-USER"):
        for line in text.splitlines():
            words = line.split()
            if words[:2] == ["-A", hook] and f"faas-{namespace}" in words and bridge in words:
                chain = words[words.index("-j") + 1]
                found[hook] = [r for r in text.splitlines() if r.startswith(f"-A {chain} ")]
    return found


def test_functions_reach_no_address_of_this_host_but_the_world(
    stack: Stack, engine: docker.DockerClient, host_port: int, outside: str
) -> None:
    with stack.deployed("egress", min_scale=1) as name:
        network = function_network(stack, engine)
        default = engine.networks.get("bridge").attrs["Options"]
        docker0 = interface_ip(default.get("com.docker.network.bridge.name", "docker0"))
        seen = probe(
            the_container(stack, engine, name),
            [
                # A server this test runs on 0.0.0.0, at two of the host's addresses.
                ("host via its bridge", gateway_ip(network), host_port),
                ("host via docker0", docker0, host_port),
                # Nothing listens there: rejected all the same, not refused.
                ("closed host port", gateway_ip(network), free_port()),
                # The positive control: a server that is not the host is reached.
                ("outside", outside, 8080),
            ],
        )
        assert seen["host via its bridge"] == REJECTED, seen
        assert seen["host via docker0"] == REJECTED, seen
        assert seen["closed host port"] == REJECTED, seen
        assert seen["outside"] == "connected", seen
        # ...while the host still reaches the function: replies flow.
        assert stack.invoke(name, "/ok").status_code == 200


def test_link_local_and_the_hosts_published_ports_are_rejected(
    stack: Stack, engine: docker.DockerClient
) -> None:
    """169.254.0.0/16 (cloud metadata) is checked in the rules, never with a packet;
    a published port (Docker's DNAT on the host's address) with a real connection."""
    published = engine.containers.run(
        ECHO_IMAGE, detach=True, ports={"8080/tcp": None}, labels={"faas.test": "1"}
    )
    try:
        with stack.deployed("egress", min_scale=1) as name:
            network = function_network(stack, engine)
            chains = chains_of(stack.namespace, bridge(network))
            assert set(chains) == {"INPUT", "DOCKER-USER"}, chains
            forward = "\n".join(chains["DOCKER-USER"])
            assert "-d 169.254.0.0/16" in forward, forward
            assert forward.count("REJECT --reject-with icmp-admin-prohibited") == 2, forward
            assert chains["INPUT"][-1].endswith("-j REJECT --reject-with icmp-admin-prohibited")
            published.reload()
            port = int(published.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
            seen = probe(
                the_container(stack, engine, name),
                [("published", gateway_ip(network), port)],
            )
            assert seen["published"] == REJECTED, seen
            # The port itself works: this host reaches it.
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    finally:
        published.remove(force=True)


def test_the_allow_list_opens_exactly_its_exceptions(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    # A function network made beforehand as the platform makes it, so its host
    # address is known to allow.
    name = f"faas-egress-{secrets.token_hex(3)}"
    network = engine.networks.create(
        name,
        options={
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.name": Settings(network=name).function_bridge,
        },
        labels={"faas.test": "1"},
    )
    allowed, allowed_port = listener()
    other, other_port = listener()
    try:
        host = gateway_ip(network)
        with (
            allowed,
            other,
            running_stack(
                engine, tmp_path, FAAS_NETWORK=name, FAAS_EGRESS_ALLOW=f"{host}/32:{allowed_port}"
            ) as stack,
            stack.deployed("allow", min_scale=1) as fn,
        ):
            seen = probe(
                the_container(stack, engine, fn),
                [("allowed", host, allowed_port), ("other", host, other_port)],
            )
            assert seen["allowed"] == "connected", seen
            assert seen["other"] == REJECTED, seen
    finally:
        for container in engine.containers.list(all=True, filters={"network": name}):
            container.remove(force=True)
        network.remove()


def test_a_function_network_made_anew_gets_the_rules(
    stack: Stack, engine: docker.DockerClient
) -> None:
    """The gateway makes the network again when someone removed it, with the same
    bridge name, which the rules name: they hold for the new network at once."""
    with stack.deployed("anew") as name:
        got = stack.api("POST", f"/functions/{name}/scale", json={"replicas": 0})
        assert got.status_code == 200, got.text
        old = function_network(stack, engine)
        old.remove()
        assert stack.invoke(name, "/again").status_code == 200  # the wake makes it anew
        new = function_network(stack, engine)
        assert new.id != old.id
        named = Settings(namespace=stack.namespace, network=stack.env.get("FAAS_NETWORK"))
        assert bridge(new) == bridge(old) == named.function_bridge
        assert set(chains_of(stack.namespace, bridge(new))) == {"INPUT", "DOCKER-USER"}


def test_rules_are_idempotent_tagged_and_removed_without_touching_others() -> None:
    """Against the real iptables, on a bridge that does not exist (inert rules)."""
    namespace = f"t{secrets.token_hex(4)}"
    before = egress.iptables("-S")
    allow = egress.parse_allow("10.9.0.0/16,192.0.2.7:8000-8100/udp")
    try:
        egress.apply("br-faastest0", namespace, allow)
        once = egress.iptables("-S")
        egress.apply("br-faastest0", namespace, allow)
        assert egress.iptables("-S") == once  # nothing changed
        ours = [line for line in once.splitlines() if line not in before.splitlines()]
        assert all(f"faas-{namespace}" in line for line in ours if line.startswith("-A")), ours
        # Another bridge and allow-list: replaced, no second set left behind.
        egress.apply("br-faastest1", namespace, allow[:1])
        after = egress.iptables("-S")
        assert "br-faastest0" not in after
        assert len(chains_of(namespace, "br-faastest1")) == 2
        assert sum(f"faas-{namespace}" in line for line in after.splitlines()) == 2 + 3 + 4
    finally:
        egress.remove(namespace)
    assert egress.iptables("-S") == before
