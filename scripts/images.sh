#!/usr/bin/env bash
# Decides which images the stack runs on and makes sure they exist, then prints the matching
# variables as `export NAME=value` lines for `eval`. Progress goes to stderr.
#
#   PGBACKUP_IMAGES=official  use the official images (postgres:17, dxflrs/garage, rust, debian)
#   PGBACKUP_IMAGES=local     build every image on this machine from Debian packages and crates.io
#   unset                     official when they can be pulled, local otherwise
#
# Local images (no registry needed): a debootstrap rootfs per Debian release with the Postgres
# packages installed by apt inside it, `docker import`ed; Postgres 15 (bookworm) and 17 (trixie)
# images that honour the official image's contract; Garage from `cargo install garage`; and the
# sidecar from docker/Dockerfile with a pgctl binary built here. Each step is skipped when its
# image already exists, so a second run costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

GARAGE_VERSION=2.5.0
POSTGRES_MAJOR=17
CACHE=${PGBACKUP_CACHE:-$HOME/.cache/pgbackup}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL=pgbackup-local

log() { printf 'images: %s\n' "$*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

official() {
    cat <<OUT
export POSTGRES_IMAGE=postgres:${POSTGRES_MAJOR}
export POSTGRES15_IMAGE=postgres:15
export GARAGE_IMAGE=dxflrs/garage:v${GARAGE_VERSION}
unset PGBACKUP_BUILDER_IMAGE PGBACKUP_RUNTIME_IMAGE PGCTL_BINARY
OUT
}

can_pull() {
    local img
    for img in postgres:${POSTGRES_MAJOR} postgres:15 dxflrs/garage:v${GARAGE_VERSION} debian:trixie-slim; do
        have "$img" || timeout 300 docker pull -q "$img" >/dev/null 2>&1 || return 1
    done
}

# rootfs SUITE TAG PACKAGES...: debootstrap, add the postgres user (uid/gid 999 like the official
# image) before apt creates one, install PACKAGES with apt inside the rootfs, import.
rootfs() {
    local suite=$1 tag=$2
    shift 2
    have "$tag" && { log "$tag exists"; return; }
    command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install debootstrap"; exit 1; }
    mkdir -p "$CACHE"
    local dir
    dir=$(mktemp -d "$CACHE/rootfs-$suite.XXXXXX")
    # shellcheck disable=SC2064
    trap "umount '$dir/proc' 2>/dev/null || true; rm -rf '$dir'" EXIT
    log "debootstrap $suite into $dir"
    debootstrap --variant=minbase "$suite" "$dir" "$MIRROR" >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; exit 1; }
    mount -t proc proc "$dir/proc"
    chroot "$dir" groupadd -r -g 999 postgres
    chroot "$dir" useradd -r -g postgres -u 999 -d /var/lib/postgresql -s /bin/bash postgres
    mkdir -p "$dir/etc/postgresql-common"
    echo 'create_main_cluster = false' >"$dir/etc/postgresql-common/createcluster.conf"
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod +x "$dir/usr/sbin/policy-rc.d"
    log "apt-get install $* in $suite"
    chroot "$dir" apt-get update -q >"$dir.log" 2>&1
    DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get install -y -q --no-install-recommends "$@" >>"$dir.log" 2>&1 \
        || { tail -20 "$dir.log" >&2; exit 1; }
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir/usr/sbin/policy-rc.d"
    umount "$dir/proc"
    tar -C "$dir" -c . | docker import - "$tag" >/dev/null
    rm -rf "$dir" "$dir.log"
    trap - EXIT
    log "$tag imported"
}

postgres_image() { # MAJOR BASE
    local tag=$LOCAL/postgres:$1
    have "$tag" && { log "$tag exists"; return; }
    docker build -q -t "$tag" --build-arg BASE="$2" --build-arg PG_MAJOR="$1" \
        -f docker/postgres/Dockerfile docker/postgres >/dev/null
    log "$tag built"
}

garage_image() {
    local tag=$LOCAL/garage:v$GARAGE_VERSION bin=$CACHE/garage-$GARAGE_VERSION/bin/garage
    have "$tag" && { log "$tag exists"; return; }
    if [ ! -x "$bin" ]; then
        log "cargo install garage $GARAGE_VERSION (about 7 minutes on 2 cores)"
        cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
            --features bundled-libs,lmdb --root "$CACHE/garage-$GARAGE_VERSION" >&2
    fi
    local ctx
    ctx=$(mktemp -d)
    cp "$bin" "$ctx/garage"
    docker build -q -t "$tag" --build-arg BASE="$LOCAL/debian:bookworm" -f docker/garage.Dockerfile "$ctx" >/dev/null
    rm -rf "$ctx"
    log "$tag built"
}

local_images() {
    rootfs bookworm "$LOCAL/debian:bookworm" postgresql-15 ca-certificates
    rootfs trixie "$LOCAL/debian:trixie" postgresql-17 ca-certificates curl jq
    postgres_image 15 "$LOCAL/debian:bookworm"
    postgres_image 17 "$LOCAL/debian:trixie"
    garage_image
    # The sidecar's pgctl is compiled here and copied onto the local trixie base.
    # PGCTL_PREBUILT=1: target/release/pgctl is fresh already (scripts/test.sh builds it with the
    # tests, whose feature set differs; building it again here would recompile half the tree).
    if [ "${PGCTL_PREBUILT:-0}" != 1 ]; then
        log "cargo build --release --locked (pgctl for the sidecar image)"
        cargo build --release --locked --bin pgctl >&2
    fi
    mkdir -p docker/bin
    cp "${CARGO_TARGET_DIR:-target}/release/pgctl" docker/bin/pgctl
    cat <<OUT
export POSTGRES_IMAGE=$LOCAL/postgres:${POSTGRES_MAJOR}
export POSTGRES15_IMAGE=$LOCAL/postgres:15
export GARAGE_IMAGE=$LOCAL/garage:v$GARAGE_VERSION
export PGBACKUP_BUILDER_IMAGE=$LOCAL/debian:trixie
export PGBACKUP_RUNTIME_IMAGE=$LOCAL/debian:trixie
export PGCTL_BINARY=docker/bin/pgctl
OUT
}

case "${PGBACKUP_IMAGES:-auto}" in
official) official ;;
local) local_images ;;
auto)
    if can_pull; then
        log "official images available"
        official
    else
        log "no registry reachable: building local images"
        local_images
    fi
    ;;
*) log "PGBACKUP_IMAGES=${PGBACKUP_IMAGES} is not valid: expected official, local, or unset"; exit 2 ;;
esac
