"""Entry point of the manager container (the gateway) in the compose stack.

    entrypoint.py serve        render Traefik's config, then run the gateway (default)
    entrypoint.py healthcheck  exit 0 when the gateway answers /api/v1/healthz
    entrypoint.py CMD...       run CMD (e.g. `faas --help`)

`faas up` renders traefik/*.yml for a Traefik on the same host (faas/traefik.py).
Here Traefik runs in its own container and cannot render anything (its image
is the bare binary), so the manager renders its templates into the volume the
two share, mounted at <state dir>/traefik here and at /etc/traefik in Traefik:

    traefik/compose.yml     -> traefik.yml          static config (entrypoints, network)
    traefik/gateway.yml     -> dynamic/gateway.yml  /api/v1 and the wake catch-all
    traefik/compose-tls.yml -> dynamic/tls.yml      HTTPS relay to the web entrypoint
    traefik/plugins-local/  -> plugins-local/       the X-Call-Id middleware's Go source

and Prometheus' (the `monitoring` profile) into <state dir>/prometheus.
Traefik and Prometheus read their static config once, at start; compose
starts them only once this container is healthy, so the files are in place
by then. All three share the host's network namespace, so
every address is a host address. Traefik loads plugins-local/ from its
working directory, which docker-compose.yml sets to /etc/traefik.

The Swarm stack (deploy/swarm/stack.yml) runs this container the same way,
with FAAS_PROVIDER=swarm: Traefik (its Swarm provider) shares the volume on
the same node, but runs in a container of its own, on the stack's network.

Environment besides the FAAS_* settings: FAAS_HTTPS_PORT (Traefik's websecure
entrypoint, default 443) and FAAS_TRAEFIK_TEMPLATES / FAAS_PROMETHEUS_TEMPLATES
(default /etc/faas/traefik and /etc/faas/prometheus, in the image; compose
mounts traefik/ and deploy/prometheus/ there, so edits need no rebuild). For
a Traefik in a network namespace of its own (the Swarm stack):
FAAS_TRAEFIK_GATEWAY_URL (where it reaches this gateway), FAAS_TRAEFIK_API_HOST
(where its API listens, for this gateway; default 127.0.0.1) and
FAAS_TLS_CERT_FILE / FAAS_TLS_KEY_FILE (its default certificate, as paths in
its container; default its self-signed one).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

from faas import traefik
from faas.config import Settings
from faas.up import gateway_command

TEMPLATES = Path(os.environ.get("FAAS_TRAEFIK_TEMPLATES", "/etc/faas/traefik"))
PROMETHEUS_TEMPLATES = Path(os.environ.get("FAAS_PROMETHEUS_TEMPLATES", "/etc/faas/prometheus"))


def render(settings: Settings) -> None:
    state = settings.state_dir
    files = [
        (TEMPLATES / "compose.yml", state / "traefik" / "traefik.yml"),
        (TEMPLATES / "gateway.yml", settings.dynamic_dir / "gateway.yml"),
        (TEMPLATES / "compose-tls.yml", settings.dynamic_dir / "tls.yml"),
        (PROMETHEUS_TEMPLATES / "prometheus.yml", state / "prometheus" / "prometheus.yml"),
    ]
    https_port = int(os.environ.get("FAAS_HTTPS_PORT", "443"))
    cert, key = os.environ.get("FAAS_TLS_CERT_FILE"), os.environ.get("FAAS_TLS_KEY_FILE")
    if bool(cert) != bool(key):
        # Else Traefik would quietly serve its self-signed default certificate.
        raise SystemExit("FAAS_TLS_CERT_FILE and FAAS_TLS_KEY_FILE go together: set both")
    values = traefik.compose_values(
        settings,
        https_port,
        gateway_url=os.environ.get("FAAS_TRAEFIK_GATEWAY_URL"),
        api_host=os.environ.get("FAAS_TRAEFIK_API_HOST", "127.0.0.1"),
        certificate=(cert, key) if cert and key else None,
    )
    traefik.render(files, values)
    traefik.install_plugins(settings.state_dir / "traefik", TEMPLATES)


def serve(settings: Settings) -> NoReturn:
    render(settings)
    # uvicorn becomes PID 1 and gets compose's SIGTERM itself.
    replace_process(gateway_command(settings))


def replace_process(argv: list[str]) -> NoReturn:
    os.execvp(argv[0], argv)  # noqa: S606 - exec, not a child: no shell wanted


def healthcheck(settings: Settings) -> int:
    url = f"{settings.gateway_url}/api/v1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - http:// always
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
