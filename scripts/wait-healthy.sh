#!/usr/bin/env bash
# wait-healthy.sh COMPOSE-COMMAND...: waits until every running service of the project with a
# health check is healthy (180 s at most); prints the unhealthy ones' logs on failure.
set -euo pipefail
deadline=$((SECONDS + ${WAIT_TIMEOUT:-180}))
while :; do
    pending=()
    for id in $("$@" ps -q); do
        state=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
        read -r name status health <<<"$state"
        if [ "$status" != running ] || { [ "$health" != healthy ] && [ "$health" != none ]; }; then
            pending+=("${name#/}:$status/$health")
        fi
    done
    [ ${#pending[@]} -eq 0 ] && { echo "wait-healthy: all services healthy" >&2; exit 0; }
    if [ $SECONDS -ge $deadline ]; then
        echo "wait-healthy: not healthy in time: ${pending[*]}" >&2
        "$@" ps -a >&2 || true
        "$@" logs --tail 50 >&2 || true
        exit 1
    fi
    sleep 1
done
