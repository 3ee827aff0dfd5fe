#!/usr/bin/env bash
# The Debian packages the test suite runs besides the engine, the runtimes and
# the images (scripts/engine.sh, runtimes.sh and images.sh install what those
# need). `make test` runs this first; it installs only what is missing, and
# needs root and apt-get for that: anywhere else it names what is missing.
#
#   command          package          used by
#   prometheus       prometheus       tests/integration/test_metrics.py runs the
#                                     binary on a temp config and a free port (the
#                                     system service is not needed, not started
#                                     here); scripts/compose-images.sh packs it
#                                     into the compose stack's monitoring image
#   skopeo           skopeo           writes the OCI-layout archive `faas import` loads
#   docker-registry  docker-registry  a loopback registry for the pull tests, and
#                                     the Swarm tier's registry (tests/swarm/)
#   skopeo           skopeo           also copies images into that registry
#   ip               iproute2         the Swarm tier's network namespaces and veths
#   nsenter,unshare  util-linux       its extra dockerd per node (tests/swarm/cluster.py)
#   htpasswd         apache2-utils    that registry's users (private-registry test)
#   debootstrap      debootstrap      the offline base image (scripts/images.sh)
set -euo pipefail
# debootstrap lives in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { echo "test-deps: $*" >&2; }
die() {
  log "$*"
  exit 1
}
# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

NEEDS=(
  prometheus:prometheus
  skopeo:skopeo
  docker-registry:docker-registry
  htpasswd:apache2-utils
  debootstrap:debootstrap
  ip:iproute2
  nsenter:util-linux
  unshare:util-linux
)

missing=()
for need in "${NEEDS[@]}"; do
  command -v "${need%%:*}" >/dev/null 2>&1 || missing+=("${need#*:}")
done
[ "${#missing[@]}" -gt 0 ] || exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  die "the tests need ${missing[*]}; run \`make test-deps\` as root on Debian, or install them yourself"
fi
apt_install "${missing[@]}"
for need in "${NEEDS[@]}"; do
  command -v "${need%%:*}" >/dev/null 2>&1 || die "${need#*:} is installed but ${need%%:*} is not on PATH"
done
log "ready: ${missing[*]}"
