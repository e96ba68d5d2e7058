#!/usr/bin/env bash
# wait-first-backup.sh COMPOSE-COMMAND...: after `make up`, waits (60 s at most) until the
# start-up backup of the demo target is committed, then prints `pgctl list`.
set -euo pipefail
deadline=$((SECONDS + 60))
until [ "$("$@" exec -T backup pgctl list --json 2>/dev/null | grep -c '"backup_id"' || true)" -gt 0 ]; do
    if [ $SECONDS -ge $deadline ]; then
        echo "up: no committed backup after 60 s; see 'make logs'" >&2
        exit 1
    fi
    sleep 2
done
"$@" exec -T backup pgctl list
