"""Egress rules: what a function container may open connections to.

By default no new connection from the function network reaches the host
itself (any of its addresses: services bound on 0.0.0.0, ports published by
other containers) or a link-local address (169.254.0.0/16: cloud metadata
endpoints). Everything else, the internet included, stays reachable, and
replies to the connections Traefik and the gateway open to functions flow as
before. FAAS_EGRESS_ALLOW opens exceptions.

Two iptables chains of the filter table per namespace, each jumped to from a
built-in hook for traffic coming in on the function network's bridge:

    INPUT        -i <bridge> -> FAAS-<ns>-I-<v>: replies, allowed: RETURN;
                                a new connection: REJECT
    DOCKER-USER  -i <bridge> -> FAAS-<ns>-F-<v>: replies, allowed: RETURN;
                                169.254.0.0/16, and connections Docker DNATs
                                (the host's published ports): REJECT

`<ns>` hashes the namespace, `<v>` the chain's rules, and every rule carries
the comment `faas-<namespace>`. Applying is idempotent and never leaves a
gap: a changed rule set goes into a chain of a new name, the hook jumps there,
then the old jump and chain go. Nothing else is touched, no chain is flushed.
REJECT answers with ICMP "administratively prohibited": the function's
connect fails at once ("No route to host") instead of timing out.

faas/egress_guard.py finds the bridge and keeps the rules on it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

LINK_LOCAL = "169.254.0.0/16"
HOOKS = {"I": "INPUT", "F": "DOCKER-USER"}
REJECT = ("-j", "REJECT", "--reject-with", "icmp-admin-prohibited")
REPLIES = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED")


class EgressError(Exception):
    """iptables is missing, refused (not root) or failed."""


@dataclass(frozen=True)
class Allow:
    """One FAAS_EGRESS_ALLOW entry: `CIDR[:PORT[-PORT]][/udp]` (tcp by default)."""

    network: ipaddress.IPv4Network
    ports: str | None = None  # iptables syntax: "5432" or "8000:8100"
    proto: Literal["tcp", "udp"] = "tcp"


_ENTRY = re.compile(
    r"^(?P<net>[0-9./]+)(?::(?P<lo>\d+)(?:-(?P<hi>\d+))?(?:/(?P<proto>tcp|udp))?)?$"
)


def parse_allow(text: str | None) -> tuple[Allow, ...]:
    """`10.0.0.0/8, 172.17.0.1:5432, 192.0.2.7:8000-8100/udp` -> Allow entries."""
    entries = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"{entry!r}: expected CIDR[:PORT[-PORT]][/tcp|/udp] (IPv4)")
        try:
            network = ipaddress.IPv4Network(match["net"], strict=False)
        except ValueError as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
        ports = [int(p) for p in (match["lo"], match["hi"]) if p]
        if any(not 1 <= p <= 65535 for p in ports) or ports != sorted(ports):
            raise ValueError(f"{entry!r}: ports are 1-65535, low-high")
        proto: Literal["tcp", "udp"] = "udp" if match["proto"] == "udp" else "tcp"
        entries.append(Allow(network, ":".join(map(str, ports)) or None, proto))
    return tuple(entries)


def tag(namespace: str) -> str:
    return f"faas-{namespace}"


def _comment(namespace: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", tag(namespace))


def _port(allow: Allow, option: str) -> tuple[str, ...]:
    return (option, allow.ports) if allow.ports else ()


def chain_rules(kind: str, namespace: str, allow: Sequence[Allow]) -> list[tuple[str, ...]]:
    """The rules of the INPUT (`I`) or DOCKER-USER (`F`) chain, in order."""
    note = _comment(namespace)
    rules = [(*REPLIES, *note, "-j", "RETURN")]
    for a in allow:
        proto = ("-p", a.proto) if a.ports else ()
        if kind == "I":
            where = ("-d", str(a.network), *proto, *_port(a, "--dport"))
        else:
            # After Docker's DNAT `-d` is the container: match where the
            # function meant to go.
            dest = ("-m", "conntrack", "--ctorigdst", str(a.network))
            where = (*proto, *dest, *_port(a, "--ctorigdstport"))
        rules.append((*where, *note, "-j", "RETURN"))
    if kind == "I":
        # New connections only: a stray packet the host's conntrack does not
        # know (an RST answering a readiness probe sent while the container
        # started, say) must reach the host, or the prober waits for its timeout.
        rules.append(("-m", "conntrack", "--ctstate", "NEW", *note, *REJECT))
    else:
        rules.append(("-d", LINK_LOCAL, *note, *REJECT))
        rules.append(("-m", "conntrack", "--ctstate", "DNAT", *note, *REJECT))
    return rules


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def chain_prefix(namespace: str, kind: str) -> str:
    return f"FAAS-{_digest(namespace, 8).upper()}-{kind}-"


def chain_name(namespace: str, kind: str, rules: Iterable[tuple[str, ...]]) -> str:
    """Named after its rules, so a changed set gets a chain of its own (<= 28 chars)."""
    return chain_prefix(namespace, kind) + _digest(repr(list(rules)), 6).upper()


@dataclass
class Table:
    """The filter table as `iptables -S` lists it: chains and their rules."""

    rules: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Table:
        table = cls()
        for line in text.splitlines():
            words = shlex.split(line)
            if len(words) >= 2 and words[0] in ("-N", "-P"):
                table.rules.setdefault(words[1], [])
            elif len(words) >= 2 and words[0] == "-A":
                table.rules.setdefault(words[1], []).append(tuple(words[2:]))
        return table

    def jumps(self, hook: str, namespace: str, prefix: str) -> list[tuple[str, ...]]:
        """The hook's rules of this namespace that jump to one of its chains."""
        return [
            rule
            for rule in self.rules.get(hook, [])
            if tag(namespace) in rule and _target(rule).startswith(prefix)
        ]


def _target(rule: tuple[str, ...]) -> str:
    return rule[rule.index("-j") + 1] if "-j" in rule else ""


def iptables(*args: str) -> str:
    """Run iptables (waiting for the xtables lock) and return its output."""
    try:
        done = subprocess.run(
            ["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        raise EgressError("no iptables binary") from None
    if done.returncode != 0:
        raise EgressError(f"iptables {shlex.join(args)}: {done.stderr.strip()}")
    return done.stdout


def read_table() -> Table:
    return Table.parse(iptables("-S"))


def _drop_chain(chain: str, count: int) -> None:
    """Delete a chain of ours rule by rule (never a flush), then the chain."""
    for _ in range(count):
        iptables("-D", chain, "1")
    iptables("-X", chain)


def apply(bridge: str, namespace: str, allow: Sequence[Allow]) -> None:
    """Install or update this namespace's rules for `bridge`; no-op when in place."""
    table = read_table()
    for kind, hook in HOOKS.items():
        if hook not in table.rules:
            raise EgressError(f"no {hook} chain (is the engine's iptables management off?)")
        _apply_hook(table, hook, kind, bridge, namespace, chain_rules(kind, namespace, allow))


def _apply_hook(
    table: Table, hook: str, kind: str, bridge: str, namespace: str, rules: list[tuple[str, ...]]
) -> None:
    """Build the chain, jump to it, then drop the jumps and chains it replaces."""
    name = chain_name(namespace, kind, rules)
    jump = ("-i", bridge, *_comment(namespace), "-j", name)
    prefix = chain_prefix(namespace, kind)
    jumps = table.jumps(hook, namespace, prefix)
    jumped = jump in jumps
    built = table.rules.get(name)
    # A chain is jumped to only once whole (from this bridge or the one before).
    into = [j for j in jumps if _target(j) == name]
    if built is not None and not (into and len(built) == len(rules)):
        # Left half-built by an interrupted apply, or edited by hand: build it again.
        for j in into:
            iptables("-D", hook, *j)
        jumps = [j for j in jumps if j not in into]
        jumped = False
        _drop_chain(name, len(built))
        built = None
    if built is None:
        iptables("-N", name)
        for rule in rules:
            iptables("-A", name, *rule)
    if not jumped:
        iptables("-I", hook, "1", *jump)
    for old in jumps:
        if old != jump:
            iptables("-D", hook, *old)
    for chain, old_rules in table.rules.items():
        if chain.startswith(prefix) and chain != name:
            _drop_chain(chain, len(old_rules))


def remove(namespace: str) -> None:
    """Remove this namespace's jumps and chains; other rules stay as they are."""
    table = read_table()
    for kind, hook in HOOKS.items():
        prefix = chain_prefix(namespace, kind)
        for jump in table.jumps(hook, namespace, prefix):
            iptables("-D", hook, *jump)
        for chain, rules in table.rules.items():
            if chain.startswith(prefix):
                _drop_chain(chain, len(rules))


def installed(bridge: str, namespace: str) -> bool:
    """Whether every hook jumps from `bridge` into a chain of this namespace."""
    table = read_table()
    for kind, hook in HOOKS.items():
        jumps = table.jumps(hook, namespace, chain_prefix(namespace, kind))
        if not any(jump[:2] == ("-i", bridge) for jump in jumps):
            return False
    return True
