"""Keeps the egress rules (faas/egress.py) on the function network's bridge.

Only the engine knows which Linux bridge carries the function network, and a
network made anew (the gateway does when someone removed it) gets a new one;
so this reads the network through the Docker SDK, the one module besides the
provider that does: the rules belong to the Docker host, not to the provider
contract.

    python -m faas.egress_guard apply|remove|watch

as root, with the stack's FAAS_* settings, installs, removes or keeps the
rules from outside `faas up` (the compose stack's manager cannot change the
host's firewall: docs/security.md).
"""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
from collections.abc import Mapping

import docker
import docker.errors
from loguru import logger

from . import egress
from .config import Settings

# The engine's name for a bridge network's interface, when it was given one.
BRIDGE_NAME = "com.docker.network.bridge.name"


def bridge_of(attrs: Mapping[str, object]) -> str:
    """The Linux interface of a bridge network, from the engine's description."""
    options = attrs.get("Options")
    named = options.get(BRIDGE_NAME) if isinstance(options, dict) else None
    return str(named) if named else f"br-{str(attrs['Id'])[:12]}"


def allowed(settings: Settings) -> tuple[egress.Allow, ...]:
    """FAAS_EGRESS_ALLOW, plus Traefik's web port when it serves the network: a
    function may call another through Traefik (and its key check) as any client."""
    extra: tuple[egress.Allow, ...] = ()
    if not ipaddress.ip_address(settings.http_host).is_loopback:
        extra = (egress.Allow(ipaddress.IPv4Network("0.0.0.0/0"), str(settings.http_port)),)
    return (*egress.parse_allow(settings.egress_allow), *extra)


class Guard:
    """Keeps the rules on the function network's current bridge: applies them,
    then again whenever the engine creates the network anew (the gateway does
    when someone removed it), from a daemon thread following engine events."""

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self.client = client or docker.from_env()
        self._lock = threading.Lock()

    def apply(self) -> bool:
        net = self.settings.function_network
        try:
            attrs = self.client.api.inspect_network(net)
        except docker.errors.NotFound:
            logger.warning("egress: no network {} yet; rules follow when it is made", net)
            return False
        if attrs.get("Driver") != "bridge":
            logger.warning("egress: network {} is not a bridge; egress is not restricted", net)
            return False
        bridge = bridge_of(attrs)
        with self._lock:
            egress.apply(bridge, self.settings.namespace, allowed(self.settings))
        logger.info(
            "egress: functions on {} ({}) reach neither the host nor {}",
            net,
            bridge,
            egress.LINK_LOCAL,
        )
        return True

    def follow(self) -> None:
        """Re-apply on each `create` of the function network, for as long as the process lives."""
        net = self.settings.function_network
        reconnect = False
        while True:
            try:
                events = self.client.events(
                    decode=True, filters={"type": "network", "event": "create"}
                )
                if reconnect:  # the network may have been made while we were away
                    self.apply()
                for event in events:
                    if event.get("Actor", {}).get("Attributes", {}).get("name") == net:
                        self.apply()
            except (docker.errors.DockerException, egress.EgressError, OSError) as exc:
                logger.warning("egress: following network events: {}", exc)
            reconnect = True
            time.sleep(1)


def guard(settings: Settings) -> None:
    """Restrict functions' egress on this host (`faas up`), or say clearly that it is not.

    The rules stay when `faas up` stops: functions that keep running stay
    confined. `python -m faas.egress_guard remove` takes them away."""
    try:
        egress.iptables("-S", "INPUT")
        keeper = Guard(settings)
        keeper.apply()
    except (egress.EgressError, docker.errors.DockerException) as exc:
        logger.warning(
            "egress from functions is NOT restricted (they can reach this host and "
            "169.254.0.0/16): {}. Run faas up as root, or see docs/security.md",
            exc,
        )
        return
    threading.Thread(target=keeper.follow, name="egress", daemon=True).start()


def main(argv: list[str]) -> int:
    """`python -m faas.egress_guard apply|remove|watch` (see the module docstring)."""
    command = argv[0] if argv else ""
    settings = Settings()
    try:
        if command == "apply":
            return 0 if Guard(settings).apply() else 1
        if command == "remove":
            egress.remove(settings.namespace)
            return 0
        if command == "watch":
            keeper = Guard(settings)
            keeper.apply()
            keeper.follow()
            return 0
    except (egress.EgressError, docker.errors.DockerException) as exc:
        print(f"egress: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m faas.egress_guard apply|remove|watch", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
