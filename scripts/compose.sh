#!/usr/bin/env bash
# Docker Compose on docker-compose.yml, the same with Compose v2 (`docker
# compose`) or Debian's docker-compose v1, with the image names that
# scripts/compose-images.sh wrote to build/images.env (a variable already set
# in the environment wins).
#
#   scripts/compose.sh up     `up -d`, wait until every service is healthy,
#                             then print the URL and the admin token (as
#                             `faas up` does)
#   scripts/compose.sh ARGS   any other compose command: down, logs -f, ps ...
set -euo pipefail
cd "$(dirname "$0")/.."

HEALTH_TIMEOUT="${FAAS_HEALTH_TIMEOUT:-120}"

log() { echo "compose: $*" >&2; }

if [ -f build/images.env ]; then
  while IFS='=' read -r key value; do
    if [ -n "$key" ] && [ -z "${!key:-}" ]; then
      export "$key=$value"
    fi
  done <build/images.env
fi

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  log "no Docker Compose: install the compose plugin or docker-compose (make images does on Debian)"
  exit 1
fi

if [ "${1:-}" != up ]; then
  exec "${compose[@]}" "$@"
fi

namespace="${FAAS_NAMESPACE:-default}"
started=$SECONDS
"${compose[@]}" up -d
# `up --wait` is Compose v2 only; poll the healthchecks instead.
while true; do
  ids="$("${compose[@]}" ps -q)"
  states="$(xargs -r docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' <<<"$ids")"
  if [ -n "$states" ] && ! grep -qv ' healthy$' <<<"$states"; then
    break
  fi
  if [ $((SECONDS - started)) -ge "$HEALTH_TIMEOUT" ]; then
    log "not healthy after ${HEALTH_TIMEOUT}s:"
    echo "$states" >&2
    "${compose[@]}" logs --tail=20 >&2
    exit 1
  fi
  sleep 1
done

token="$("${compose[@]}" exec -T manager cat /var/lib/faas/admin-token)"
port="${FAAS_HTTP_PORT:-80}"
host="${FAAS_HTTP_HOST:-127.0.0.1}"
[ "$host" = 0.0.0.0 ] && host=localhost
web="http://$host$([ "$port" = 80 ] || echo ":$port")"
echo "faas is up in containers (namespace $namespace), healthy after $((SECONDS - started))s"
echo "  invoke:     $web/function/<name>  (and https on port ${FAAS_HTTPS_PORT:-443}, self-signed)"
echo "  api:        $web/api/v1"
echo "  dashboard:  http://127.0.0.1:${FAAS_TRAEFIK_API_PORT:-8082}/dashboard/  (this host only)"
echo "  token:      $token"
echo "  export FAAS_URL=$web FAAS_TOKEN=$token"
