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

# A live dockerd: running (not a zombie) and really dockerd, not a reused pid.
alive_dockerd() {
  [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm")" = dockerd ] &&
    ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

pidfile=/var/run/docker.pid
old=""
if [ -f "$pidfile" ]; then
  old="$(cat "$pidfile" 2>/dev/null || true)"
  if [ -n "$old" ] && alive_dockerd "$old"; then
    log "dockerd ($old) is running but not answering; waiting for it"
  else
    log "removing stale $pidfile"
    rm -f "$pidfile" /var/run/docker.sock
  fi
fi

# Only the pid file of the daemon behind the default socket counts: another
# dockerd (a test's, on a socket of its own) says nothing about this one.
if [ -z "${old:-}" ] || ! alive_dockerd "$old"; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  mkdir -p /var/log
  # Its own session: a Ctrl-C in the terminal that ran `make dev` must not
  # reach the engine (and with it every function).
  setsid dockerd </dev/null >>/var/log/dockerd.log 2>&1 &
  started=$!
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "ready"
    exit 0
  fi
  if [ -n "${started:-}" ] && ! kill -0 "$started" 2>/dev/null; then
    break
  fi
  sleep 0.5
done
log "dockerd is not answering; last lines of /var/log/dockerd.log:"
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
