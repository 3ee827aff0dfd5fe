#!/usr/bin/env bash
# The Debian packages `make bench` needs besides the engine and the images:
# wrk, the load generator of bench/replicas.py (it counts non-2xx answers apart,
# and bench/non2xx.lua names them). Installs only what is missing, with root and
# apt-get; anywhere else it names what is missing.
set -euo pipefail

log() { echo "bench-deps: $*" >&2; }
die() {
  log "$*"
  exit 1
}
# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/../scripts/apt.sh"

command -v wrk >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  die "the benchmark needs wrk; run \`make bench\` as root on Debian, or install it yourself"
fi
apt_install wrk
command -v wrk >/dev/null 2>&1 || die "wrk is installed but not on PATH"
log "ready: wrk"
