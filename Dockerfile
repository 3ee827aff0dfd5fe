# The faas manager: the gateway (management API, wake-on-request, idling) that
# docker-compose.yml runs next to Traefik. `faas up` runs the same gateway on
# the host instead.
#
# Dependencies come from wheels in build/wheels when scripts/compose-images.sh
# has downloaded them on the host (`make images`): then nothing is fetched
# during the build (--no-index), pip itself included, so the base needs only
# python3. Without them (a plain `docker compose up -d` on a fresh clone) pip
# installs from the package index.
ARG FAAS_BASE_IMAGE=python:3.12-slim

FROM ${FAAS_BASE_IMAGE} AS build
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
# .dockerignore lets through only the package, its metadata, deploy/manager/
# and build/wheels.
COPY . /src
RUN python3 -m venv --without-pip /opt/faas; \
    wheels=/src/build/wheels; \
    if pip_wheel=$(compgen -G "$wheels/pip-*.whl"); then \
        pip=(/opt/faas/bin/python "$pip_wheel/pip" install --no-index --find-links "$wheels"); \
    else \
        pip=(python3 -m pip --python /opt/faas/bin/python install); \
    fi; \
    mapfile -t requirements < <(python3 /src/deploy/manager/requirements.py /src/pyproject.toml); \
    "${pip[@]}" --no-cache-dir "${requirements[@]}"; \
    "${pip[@]}" --no-cache-dir --no-deps /src; \
    /opt/faas/bin/python -c 'import faas.gateway'

FROM ${FAAS_BASE_IMAGE}
# iptables for the compose stack's `egress` service (same image, run as root
# with NET_ADMIN); the manager itself never uses it. apt talks plain HTTP to
# the Debian mirror, which works where PyPI and registries are out of reach.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && iptables -V
# A fixed uid and gid, so named volumes keep working across rebuilds. An
# empty named volume mounted on /var/lib/faas (the admin token) or on
# /var/lib/faas/traefik or .../prometheus (what those read) takes the owner
# of the image's directory, so the unprivileged gateway can write there.
RUN groupadd --system --gid 10001 faas \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/faas --no-create-home faas \
    && mkdir -p /var/lib/faas/traefik/dynamic /var/lib/faas/prometheus \
    && chown -R faas:faas /var/lib/faas
COPY --from=build /opt/faas /opt/faas
COPY deploy/manager/entrypoint.py /opt/faas/entrypoint.py
# The templates entrypoint.py renders for Traefik and Prometheus. The Swarm
# stack has nothing else (no checkout on the node); compose mounts the
# checkout's copies over them.
COPY traefik/*.yml /etc/faas/traefik/
COPY traefik/plugins-local /etc/faas/traefik/plugins-local
COPY deploy/prometheus/prometheus.yml /etc/faas/prometheus/prometheus.yml
ENV PATH=/opt/faas/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FAAS_STATE_DIR=/var/lib/faas \
    FAAS_GATEWAY_HOST=0.0.0.0 \
    FAAS_GATEWAY_PORT=8081
USER faas
WORKDIR /var/lib/faas
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/opt/faas/entrypoint.py", "healthcheck"]
ENTRYPOINT ["python", "/opt/faas/entrypoint.py"]
CMD ["serve"]
