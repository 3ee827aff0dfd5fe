#!/usr/bin/env bash
# Make sure a Docker engine answers on this host: install Debian's docker.io
# when dockerd is missing (root only), start dockerd when nothing answers.
# A dockerd killed with its session leaves /var/run/docker.pid behind; dockerd
# refuses to start over a pid file whose process is gone, so we clear it.
set -euo pipefail

log() { echo "engine: $*" >&2; }

if docker info >/dev/null 2>&1; then
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "no Docker engine and cannot install one here; install Docker and retry"
    exit 1
  fi
  log "installing docker.io from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if [ "$(id -u)" != 0 ]; then
  log "dockerd is installed but not running; start it (e.g. sudo systemctl start docker)"
  exit 1
fi

pidfile=/var/run/docker.pid
if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  log "removing stale $pidfile"
  rm -f "$pidfile"
fi
rm -f /var/run/docker.sock 2>/dev/null || true

log "starting dockerd"
mkdir -p /var/log
nohup dockerd >/var/log/dockerd.log 2>&1 &

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "ready"
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 60 s; last lines of /var/log/dockerd.log:"
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
