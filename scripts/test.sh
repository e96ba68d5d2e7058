#!/usr/bin/env bash
# `make test`: unit tests and end-to-end tests against the real Docker engine, Postgres 13, 15,
# 17 and 18 and Garage, through compose.yaml + compose.test.yaml. Sets up everything it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
# The images are made while the tests compile (from nothing: Garage compiles for minutes and
# debootstrap waits on the network; two builds keep the 2 cores busier than one after the
# other). One release build serves the tests and the sidecar image.
vars=$(mktemp)
PGCTL_PREBUILT=later scripts/images.sh 13 15 17 18 >"$vars" &
images=$!
cargo test --release --locked --all-targets --no-run
wait "$images" || { echo "test: scripts/images.sh failed" >&2; exit 1; }
eval "$(cat "$vars")"
rm -f "$vars"
if [ -n "${PGCTL_BINARY:-}" ]; then # local images: the sidecar gets the pgctl just built
    mkdir -p "$(dirname "$PGCTL_BINARY")"
    cp "${CARGO_TARGET_DIR:-target}/release/pgctl" "$PGCTL_BINARY"
fi

# The aws CLI scripts/deps.sh installed, for the README recipes the tests run as written.
export PGBACKUP_E2E_AWS_BIN=${PGBACKUP_CACHE:-$HOME/.cache/pgbackup}/awscli-venv/bin
export PGBACKUP_E2E_PROJECT=${PGBACKUP_E2E_PROJECT:-pgbackup-e2e}
# Compose projects the physical-restore tests create; mounted into the sidecar at this path.
export PGBACKUP_E2E_SCRATCH=${PGBACKUP_E2E_SCRATCH:-/tmp/pgbackup-e2e-scratch}
mkdir -p "$PGBACKUP_E2E_SCRATCH"
compose=(docker compose -p "$PGBACKUP_E2E_PROJECT" -f compose.yaml -f compose.test.yaml)

"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
cleanup() {
    mkdir -p target
    "${compose[@]}" logs --no-color >target/e2e-stack.log 2>&1 || true
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    docker ps -aq --filter "label=pgbackup-e2e.owner=$PGBACKUP_E2E_PROJECT" | xargs -r docker rm -f >/dev/null 2>&1 || true
    # Volumes of the physical-restore tests' scratch projects (old, restored, leftovers).
    docker volume ls -q | grep "^$PGBACKUP_E2E_PROJECT-swap-" | xargs -r docker volume rm -f >/dev/null 2>&1 || true
    # Throwaway servers of restore drills the stack's sidecar left (a test stopped mid-drill).
    docker ps -aq --filter "label=pgbackup-drill.owner=$PGBACKUP_E2E_PROJECT/backup" | xargs -r docker rm -fv >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "test: starting the stack (project $PGBACKUP_E2E_PROJECT)" >&2
"${compose[@]}" up -d --build --quiet-pull
scripts/wait-healthy.sh "${compose[@]}"

cargo test --release --locked --all-targets "$@"
