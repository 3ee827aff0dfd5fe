"""Installs the egress rules (faas/egress.py) on the function network's bridge.

The provider names the function network's Linux bridge after the network
(`Settings.function_bridge`), so the rules can name it before the network
exists and keep holding when the gateway makes it anew; nothing here asks the
engine.

    python -m faas.egress_guard apply|keep|remove|check

as root, with the stack's FAAS_* settings, installs or removes the rules from
outside `faas up`; `keep` installs them and stays, as the compose stack's
`egress` service does (its manager is unprivileged: docs/security.md).
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading

from loguru import logger

from . import egress
from .config import Settings


def allowed(settings: Settings) -> tuple[egress.Allow, ...]:
    """FAAS_EGRESS_ALLOW, plus Traefik's web port when it serves the network: a
    function may call another through Traefik (and its key check) as any client."""
    extra: tuple[egress.Allow, ...] = ()
    if not ipaddress.ip_address(settings.http_host).is_loopback:
        extra = (egress.Allow(ipaddress.IPv4Network("0.0.0.0/0"), str(settings.http_port)),)
    return (*egress.parse_allow(settings.egress_allow), *extra)


def apply(settings: Settings) -> None:
    """Install (or update) the namespace's rules on its function bridge."""
    bridge = settings.function_bridge
    egress.apply(bridge, settings.namespace, allowed(settings))
    logger.info(
        "egress: functions on {} ({}) reach neither the host nor {}",
        settings.function_network,
        bridge,
        egress.LINK_LOCAL,
    )


def guard(settings: Settings) -> None:
    """Restrict functions' egress on this host (`faas up`), or say clearly that it is not.

    The rules stay when `faas up` stops: functions that keep running stay
    confined. `python -m faas.egress_guard remove` takes them away."""
    try:
        apply(settings)
    except egress.EgressError as exc:
        logger.warning(
            "egress from functions is NOT restricted (they can reach this host and "
            "169.254.0.0/16): {}. Run faas up as root, or see docs/security.md",
            exc,
        )


def keep(settings: Settings) -> None:
    """Apply, then wait for SIGTERM: a service that puts the rules back at every
    start of the engine (the compose stack's `egress`; a reboot empties the firewall)."""
    apply(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    stop.wait()


def main(argv: list[str]) -> int:
    """`python -m faas.egress_guard apply|keep|remove|check` (see the module docstring)."""
    command = argv[0] if argv else ""
    settings = Settings()
    try:
        if command == "apply":
            apply(settings)
            return 0
        if command == "keep":
            keep(settings)
            return 0
        if command == "remove":
            egress.remove(settings.namespace)
            return 0
        if command == "check":  # the compose service's healthcheck
            return 0 if egress.installed(settings.function_bridge, settings.namespace) else 1
    except egress.EgressError as exc:
        print(f"egress: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m faas.egress_guard apply|keep|remove|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
