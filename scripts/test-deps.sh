#!/usr/bin/env bash
# Tools the integration tests use beyond the engine: Debian's prometheus (the
# scrape test runs the binary itself, on a temp config and a free loopback
# port; the system service is not needed and this script does not start it).
# Installs only what is missing; root only.
set -euo pipefail

log() { echo "test-deps: $*" >&2; }

if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  log "prometheus is missing and cannot be installed here (needs root and apt-get)"
  exit 1
fi
log "installing prometheus from Debian"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Without recommends: no node exporter or other daemons come along.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null
