#!/usr/bin/env bash
# Build every image the platform and its tests need, without a registry when
# there is none. Real users get the public base image (FAAS_BASE_IMAGE,
# default python:3.12-slim) pulled as usual; when it cannot be pulled we build
# an equivalent offline: debootstrap a minimal bookworm with python3 and
# `docker import` it. Images that already exist are kept (delete them, or
# `make clean`, to rebuild).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${FAAS_BASE_IMAGE:-python:3.12-slim}"
OFFLINE_BASE="faas/python-base:bookworm"
ECHO_IMAGE="${FAAS_ECHO_IMAGE:-faas/echo:latest}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { echo "images: $*" >&2; }
die() {
  log "$*"
  exit 1
}
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
have() { docker image inspect "$1" >/dev/null 2>&1; }

offline_base() {
  if have "$OFFLINE_BASE"; then return; fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "need debootstrap to build $OFFLINE_BASE"
    apt_install debootstrap
  fi
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' RETURN
  log "debootstrapping $OFFLINE_BASE (about a minute)"
  debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root" "$DEBIAN_MIRROR" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL faas.image=base' \
    --change 'CMD ["python3"]' \
    - "$OFFLINE_BASE" >/dev/null
}

base() {
  if have "$BASE_IMAGE"; then echo "$BASE_IMAGE"; return; fi
  if timeout 300 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then echo "$BASE_IMAGE"; return; fi
  log "cannot pull $BASE_IMAGE; using the offline base $OFFLINE_BASE"
  offline_base
  echo "$OFFLINE_BASE"
}

example() {  # example NAME IMAGE
  # Rebuild when the example's files changed: the image carries their hash.
  local hash
  hash="$(cd "examples/$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
  if [ "$(docker image inspect -f '{{index .Config.Labels "faas.source"}}' "$2" 2>/dev/null)" = "$hash" ]; then
    return
  fi
  log "building $2"
  docker build -q --build-arg "BASE_IMAGE=$(base)" --label faas.image=example \
    --label "faas.source=$hash" -t "$2" "examples/$1" >/dev/null
}

example echo "$ECHO_IMAGE"
log "ready: $ECHO_IMAGE"
