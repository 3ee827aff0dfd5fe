"""Entry point of the manager container (the gateway) in the compose stack.

    entrypoint.py serve        render Traefik's config, then run the gateway (default)
    entrypoint.py healthcheck  exit 0 when the gateway answers /api/v1/healthz
    entrypoint.py CMD...       run CMD (e.g. `faas --help`)

`faas up` renders traefik/*.yml for a Traefik on the same host (faas/traefik.py).
Here Traefik runs in its own container and cannot render anything (its image
is the bare binary), so the manager renders its templates into the volume the
two share, mounted at <state dir>/traefik here and at /etc/traefik in Traefik:

    traefik/compose.yml     -> traefik.yml          static config (namespace, network)
    traefik/gateway.yml     -> dynamic/gateway.yml  /api/v1 and the wake catch-all
    traefik/compose-tls.yml -> dynamic/tls.yml      HTTPS relay to the web entrypoint

Traefik reads its static config once, at start; compose starts it only once
this container is healthy, so the files are in place by then.

Environment besides the FAAS_* settings: FAAS_GATEWAY_URL (how Traefik reaches
the gateway, default http://manager:<gateway port>) and FAAS_TRAEFIK_TEMPLATES
(default /etc/faas/traefik, where docker-compose.yml mounts traefik/).
"""

from __future__ import annotations

import os
import string
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

from faas.config import Settings
from faas.up import gateway_command

TEMPLATES = Path(os.environ.get("FAAS_TRAEFIK_TEMPLATES", "/etc/faas/traefik"))


def render(settings: Settings) -> None:
    values = {
        "namespace": settings.namespace,
        "network": settings.function_network,
        # The compose service name: Traefik reaches the gateway through Docker's DNS.
        "gateway_url": os.environ.get(
            "FAAS_GATEWAY_URL", f"http://manager:{settings.gateway_port}"
        ),
        "log_level": "DEBUG" if settings.log_level.upper() == "DEBUG" else "WARN",
        "response_timeout": f"{settings.request_timeout:g}s",
    }
    settings.dynamic_dir.mkdir(parents=True, exist_ok=True)
    for template, target in (
        ("compose.yml", settings.state_dir / "traefik" / "traefik.yml"),
        ("gateway.yml", settings.dynamic_dir / "gateway.yml"),
        ("compose-tls.yml", settings.dynamic_dir / "tls.yml"),
    ):
        text = string.Template((TEMPLATES / template).read_text()).substitute(values)
        # Traefik watches the dynamic directory: it must only ever see whole files.
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        tmp.replace(target)


def serve(settings: Settings) -> NoReturn:
    render(settings)
    # uvicorn becomes PID 1 and gets compose's SIGTERM itself.
    replace_process(gateway_command(settings))


def replace_process(argv: list[str]) -> NoReturn:
    os.execvp(argv[0], argv)  # noqa: S606 - exec, not a child: no shell wanted


def healthcheck(settings: Settings) -> int:
    url = f"http://127.0.0.1:{settings.gateway_port}/api/v1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


def main(args: list[str]) -> int:
    command = args[0] if args else "serve"
    if command == "serve":
        serve(Settings())
    if command == "healthcheck":
        return healthcheck(Settings())
    replace_process(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
