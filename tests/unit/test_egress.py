"""The egress rules as data: the allow-list, the chains, reading `iptables -S`.
Installing them for real: tests/integration/test_egress.py."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger
from pydantic import ValidationError

from faas import egress, egress_guard
from faas.config import Settings
from faas.egress import Allow, parse_allow

ANY = ipaddress.IPv4Network("0.0.0.0/0")


def test_allow_entries_take_cidrs_ports_ranges_and_udp() -> None:
    assert parse_allow(" 10.0.0.0/8 , 172.17.0.1:5432,192.0.2.7:8000-8100/udp,") == (
        Allow(ipaddress.IPv4Network("10.0.0.0/8")),
        Allow(ipaddress.IPv4Network("172.17.0.1/32"), "5432"),
        Allow(ipaddress.IPv4Network("192.0.2.7/32"), "8000:8100", "udp"),
    )
    assert parse_allow(None) == parse_allow("") == ()
    # Host bits are fine: the network is what is meant.
    assert parse_allow("10.1.2.3/8")[0].network == ipaddress.IPv4Network("10.0.0.0/8")


@pytest.mark.parametrize(
    "bad", ["example.com", "10.0.0.0/33", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:90-80",
            "10.0.0.1:80/sctp", "::1", "10.0.0.1:"],
)  # fmt: skip
def test_bad_allow_entries_name_themselves(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        parse_allow(f"10.0.0.0/8,{bad}")
    with pytest.raises(ValidationError, match="egress_allow"):
        Settings(egress_allow=f"10.0.0.0/8,{bad}")


def test_host_chain_lets_replies_and_allowed_through_and_rejects_the_rest() -> None:
    rules = egress.chain_rules("I", "ns", parse_allow("10.0.0.0/8,172.17.0.1:53/udp"))
    tag = ("-m", "comment", "--comment", "faas-ns")
    assert rules == [
        ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *tag, "-j", "RETURN"),
        ("-d", "10.0.0.0/8", *tag, "-j", "RETURN"),
        ("-d", "172.17.0.1/32", "-p", "udp", "--dport", "53", *tag, "-j", "RETURN"),
        # New connections only: an RST the host's conntrack does not know passes.
        ("-m", "conntrack", "--ctstate", "NEW", *tag,
         "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"),
    ]  # fmt: skip


def test_forward_chain_rejects_link_local_and_dnat_after_the_exceptions() -> None:
    rules = egress.chain_rules("F", "ns", parse_allow("169.254.169.254:80"))
    tag = ("-m", "comment", "--comment", "faas-ns")
    reject = ("-j", "REJECT", "--reject-with", "icmp-admin-prohibited")
    assert rules[1] == (
        "-p", "tcp", "-m", "conntrack", "--ctorigdst", "169.254.169.254/32",
        "--ctorigdstport", "80", *tag, "-j", "RETURN",
    )  # fmt: skip
    assert rules[2:] == [
        ("-d", "169.254.0.0/16", *tag, *reject),
        ("-m", "conntrack", "--ctstate", "DNAT", *tag, *reject),
    ]


def test_chain_names_fit_iptables_and_follow_the_rules() -> None:
    long = "n" * 31  # the longest namespace
    a = egress.chain_name(long, "F", egress.chain_rules("F", long, ()))
    b = egress.chain_name(long, "F", egress.chain_rules("F", long, parse_allow("10.0.0.0/8")))
    assert len(a) <= 28
    assert a != b
    assert a.startswith(egress.chain_prefix(long, "F"))
    assert b.startswith(egress.chain_prefix(long, "F"))
    assert not a.startswith(egress.chain_prefix("other", "F"))


def test_table_reads_iptables_listing_and_finds_this_namespaces_jumps() -> None:
    prefix = egress.chain_prefix("ns", "I")
    listing = f"""\
-P INPUT ACCEPT
-N DOCKER-USER
-N {prefix}ABC
-A INPUT -i br-1 -m comment --comment faas-ns -j {prefix}ABC
-A INPUT -i br-1 -m comment --comment faas-ns-2 -j {egress.chain_prefix("ns-2", "I")}ABC
-A INPUT -p tcp -m comment --comment "someone else's" -j ACCEPT
-A DOCKER-USER -j RETURN
-A {prefix}ABC -m comment --comment faas-ns -j REJECT --reject-with icmp-admin-prohibited
"""
    table = egress.Table.parse(listing)
    assert set(table.rules) == {"INPUT", "DOCKER-USER", f"{prefix}ABC"}
    assert table.rules["INPUT"][2] == (
        "-p", "tcp", "-m", "comment", "--comment", "someone else's", "-j", "ACCEPT",
    )  # fmt: skip
    assert table.jumps("INPUT", "ns", prefix) == [
        ("-i", "br-1", "-m", "comment", "--comment", "faas-ns", "-j", f"{prefix}ABC")
    ]


def test_the_bridge_is_named_after_the_network(tmp_path: Path) -> None:
    one = Settings(state_dir=tmp_path, namespace="a" * 31)
    assert len(one.function_bridge) <= 15  # Linux's limit on interface names
    assert one.function_bridge == Settings(state_dir=tmp_path, namespace="a" * 31).function_bridge
    assert one.function_bridge != Settings(state_dir=tmp_path, namespace="b").function_bridge
    assert Settings(state_dir=tmp_path, network="x").function_bridge.startswith("fb-")


def test_traefik_served_to_the_network_stays_reachable_from_functions(tmp_path: Path) -> None:
    local = Settings(state_dir=tmp_path, egress_allow="10.0.0.0/8")
    assert egress_guard.allowed(local) == parse_allow("10.0.0.0/8")
    public = Settings(state_dir=tmp_path, http_host="0.0.0.0", http_port=8080)
    assert egress_guard.allowed(public) == (Allow(ANY, "8080"),)


@pytest.fixture
def log() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    yield lines
    logger.remove(sink)


def test_without_iptables_faas_up_says_egress_is_unrestricted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: list[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no iptables there
    egress_guard.guard(Settings(state_dir=tmp_path))
    (line,) = log
    assert "egress from functions is NOT restricted" in line
    assert "no iptables binary" in line


def test_installed_reads_the_jumps_of_both_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    chains = {kind: egress.chain_prefix("ns", kind) + "X" for kind in egress.HOOKS}
    both = "\n".join(
        f"-A {hook} -i fb-1 -m comment --comment faas-ns -j {chains[kind]}"
        for kind, hook in egress.HOOKS.items()
    )
    listing = "-P INPUT ACCEPT\n-N DOCKER-USER\n" + both
    monkeypatch.setattr(egress, "iptables", lambda *args: listing)
    assert egress.installed("fb-1", "ns")
    assert not egress.installed("fb-2", "ns")
    assert not egress.installed("fb-1", "other")
    monkeypatch.setattr(egress, "iptables", lambda *args: listing.splitlines()[0])
    assert not egress.installed("fb-1", "ns")
