#!/usr/bin/env bash
# Decides which images the stack runs on and makes sure they exist, then prints the matching
# variables as `export NAME=value` lines for `eval`. Progress goes to stderr.
#
#   scripts/images.sh [MAJOR...]  Postgres majors wanted besides the demo's (17), each exported
#                                 as POSTGRES<MAJOR>_IMAGE; scripts/test.sh asks for 13 15 17 18
#
#   PGBACKUP_IMAGES=official  use the official images (postgres:13/15/17/18, dxflrs/garage, rust,
#                             debian)
#   PGBACKUP_IMAGES=local     build every image on this machine from Debian packages and crates.io
#   unset                     official when they can be pulled, local otherwise
#
# Local images (no registry needed): a debootstrap rootfs per Debian release with the Postgres
# packages installed by apt inside it, `docker import`ed; Postgres 13 (bullseye), 15 (bookworm),
# 17 (trixie) or 18 (sid) images that honour the official image's contract for their major;
# Garage from `cargo install garage`; and the sidecar from docker/Dockerfile with a pgctl binary
# built here. Each step is skipped when its image already exists, so a second run costs seconds.
# The Postgres images are built side by side while Garage compiles (debootstrap and apt mostly
# wait on the network; the compiler wants the cores).
set -euo pipefail
cd "$(dirname "$0")/.."

GARAGE_VERSION=2.5.0
# CI (CI=true) builds Garage at opt-level 1: it is the test stack's S3 only, its compile is the
# longest step of a run from nothing, and at opt-level 1 it takes about half as long. `make up`
# and `make bench` keep Garage's full release build (another tag, another cache folder), so
# benchmarks never measure a slower S3.
if [ "${CI:-}" = true ]; then GARAGE_OPT=1 GARAGE_SUFFIX=-o1; else GARAGE_OPT=3 GARAGE_SUFFIX=; fi
GARAGE_TAG=v$GARAGE_VERSION$GARAGE_SUFFIX
POSTGRES_MAJOR=17
CACHE=${PGBACKUP_CACHE:-$HOME/.cache/pgbackup}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# The Debian suite that packages each major the test stack runs.
declare -A SUITE=([13]=bullseye [15]=bookworm [17]=trixie [18]=sid)
LOCAL=pgbackup-local

log() { printf 'images: %s\n' "$*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

MAJORS=("$POSTGRES_MAJOR")
for m in "$@"; do
    [ -n "${SUITE[$m]:-}" ] || { log "Postgres $m is not one of ${!SUITE[*]}"; exit 2; }
    [ "$m" = "$POSTGRES_MAJOR" ] || MAJORS+=("$m")
done

# POSTGRES_IMAGE (the demo's) and POSTGRES<N>_IMAGE for every major wanted, from REPO:<major>.
postgres_vars() {
    local m
    echo "export POSTGRES_IMAGE=$1:${POSTGRES_MAJOR}"
    for m in "${MAJORS[@]}"; do echo "export POSTGRES${m}_IMAGE=$1:$m"; done
}

official() {
    postgres_vars postgres
    cat <<OUT
export GARAGE_IMAGE=dxflrs/garage:v${GARAGE_VERSION}
unset PGBACKUP_BUILDER_IMAGE PGBACKUP_RUNTIME_IMAGE PGCTL_BINARY PGBACKUP_APT_OPTIONS
OUT
}

can_pull() {
    local img
    for img in "${MAJORS[@]/#/postgres:}" dxflrs/garage:v${GARAGE_VERSION} debian:trixie-slim; do
        have "$img" || timeout 300 docker pull -q "$img" >/dev/null 2>&1 || return 1
    done
}

# apt_options SUITE: what apt needs to read SUITE from the mirrors. A mirror serving a snapshot
# (as on some CI networks) has Release files past their Valid-Until, which apt refuses unless
# told not to check; say so when that is the case, and only then.
apt_options() {
    local url until
    for url in "$MIRROR/dists/$1/Release" "$SECURITY_MIRROR/dists/$1-security/Release"; do
        until=$(curl -fsS -m 30 "$url" 2>/dev/null | sed -n 's/^Valid-Until: //p') || true
        if [ -n "$until" ] && [ "$(date -d "$until" +%s)" -lt "$(date +%s)" ]; then
            log "$url expired on $until (a snapshot mirror): apt will not check Valid-Until for $1"
            echo "-o Acquire::Check-Valid-Until=false"
            return
        fi
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
    if [ "$suite" != sid ]; then # point releases and security fixes (13.23 is in bullseye-security)
        printf 'deb %s %s-updates main\ndeb %s %s-security main\n' \
            "$MIRROR" "$suite" "$SECURITY_MIRROR" "$suite" >>"$dir/etc/apt/sources.list"
    fi
    chroot "$dir" groupadd -r -g 999 postgres
    chroot "$dir" useradd -r -g postgres -u 999 -d /var/lib/postgresql -s /bin/bash postgres
    if [ -n "${SLIM:-}" ]; then
        # As Debian's -slim images: no documentation, manual pages or translations.
        printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
            'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
            'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
            >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim"
        find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
        rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/* \
            "$dir"/var/cache/apt/*.bin "$dir"/var/log/*.log
    fi
    mkdir -p "$dir/etc/postgresql-common"
    echo 'create_main_cluster = false' >"$dir/etc/postgresql-common/createcluster.conf"
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod +x "$dir/usr/sbin/policy-rc.d"
    log "apt-get install $* in $suite"
    local opts
    opts=$(apt_options "$suite")
    # shellcheck disable=SC2086
    chroot "$dir" apt-get $opts update -q >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; exit 1; }
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

# postgres_image MAJOR [PACKAGES...]: the rootfs of the major's suite with postgresql-MAJOR and
# PACKAGES, then the Postgres image on it. From 18 on, the official image keeps PGDATA in
# /var/lib/postgresql/<major>/docker on a volume at /var/lib/postgresql.
postgres_image() {
    local major=$1 tag=$LOCAL/postgres:$1
    shift
    local base=$LOCAL/debian:${SUITE[$major]}
    rootfs "${SUITE[$major]}" "$base" "postgresql-$major" ca-certificates "$@"
    # Rebuilt when docker/postgres/ changed since (the image carries the hash of its context).
    local context
    context=$(cat docker/postgres/* | sha256sum | cut -c1-16)
    if [ "$(docker image inspect -f '{{index .Config.Labels "images.context-sha256"}}' "$tag" 2>/dev/null)" = "$context" ]; then
        log "$tag exists"
        return
    fi
    local layout=()
    if [ "$major" -ge 18 ]; then
        layout=(--build-arg "PGDATA=/var/lib/postgresql/$major/docker" --build-arg DATA_VOLUME=/var/lib/postgresql)
    fi
    docker build -q -t "$tag" --label images.context-sha256="$context" \
        --build-arg BASE="$base" --build-arg PG_MAJOR="$major" "${layout[@]}" \
        -f docker/postgres/Dockerfile docker/postgres >/dev/null
    log "$tag built"
}

garage_binary() {
    local tag=$LOCAL/garage:$GARAGE_TAG bin=$CACHE/garage-$GARAGE_VERSION$GARAGE_SUFFIX/bin/garage
    have "$tag" && return
    if [ ! -x "$bin" ]; then
        log "cargo install garage $GARAGE_VERSION at opt-level $GARAGE_OPT (7 to 11 minutes on 2 cores at 3)"
        # A target directory of its own: a CARGO_TARGET_DIR shared with a build running
        # meanwhile (scripts/test.sh) would make one wait for the other's lock.
        CARGO_TARGET_DIR=$CACHE/garage-build$GARAGE_SUFFIX CARGO_PROFILE_RELEASE_OPT_LEVEL=$GARAGE_OPT \
            cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
            --features bundled-libs,lmdb --root "$CACHE/garage-$GARAGE_VERSION$GARAGE_SUFFIX" >&2
    fi
}

garage_image() { # on the bookworm rootfs
    local tag=$LOCAL/garage:$GARAGE_TAG bin=$CACHE/garage-$GARAGE_VERSION$GARAGE_SUFFIX/bin/garage
    have "$tag" && { log "$tag exists"; return; }
    local ctx
    ctx=$(mktemp -d)
    cp "$bin" "$ctx/garage"
    docker build -q -t "$tag" --build-arg BASE="$LOCAL/debian:bookworm" -f docker/garage.Dockerfile "$ctx" >/dev/null
    rm -rf "$ctx"
    log "$tag built"
}

local_images() {
    local m pids=()
    for m in "${MAJORS[@]}"; do
        if [ "$m" = 17 ]; then # trixie is the sidecar's base too: curl and jq for its checks
            postgres_image "$m" curl jq &
        else
            postgres_image "$m" &
        fi
        pids+=($!)
    done
    # The sidecar's own base: trixie with nothing but what debootstrap's minbase brings (the
    # Dockerfile adds the Postgres 18 client, curl and jq), as small as debian:trixie-slim.
    SLIM=1 rootfs trixie "$LOCAL/debian:trixie-slim" &
    pids+=($!)
    garage_binary
    for m in "${pids[@]}"; do wait "$m" || { log "a Postgres image or the sidecar's base failed (see above)"; exit 1; }; done
    garage_image
    # The sidecar's pgctl is compiled here and copied onto the local trixie base.
    # PGCTL_PREBUILT=1: target/release/pgctl is fresh already (scripts/test.sh builds it with the
    # tests, whose feature set differs; building it again here would recompile half the tree).
    # PGCTL_PREBUILT=later: it is being built meanwhile; the caller copies it to docker/bin.
    case "${PGCTL_PREBUILT:-0}" in
    later) ;;
    1) mkdir -p docker/bin && cp "${CARGO_TARGET_DIR:-target}/release/pgctl" docker/bin/pgctl ;;
    *)
        log "cargo build --release --locked (pgctl for the sidecar image)"
        cargo build --release --locked --bin pgctl >&2
        mkdir -p docker/bin && cp "${CARGO_TARGET_DIR:-target}/release/pgctl" docker/bin/pgctl
        ;;
    esac
    postgres_vars "$LOCAL/postgres"
    cat <<OUT
export PGBACKUP_APT_OPTIONS='$(apt_options sid)'
export GARAGE_IMAGE=$LOCAL/garage:$GARAGE_TAG
export PGBACKUP_BUILDER_IMAGE=$LOCAL/debian:trixie
export PGBACKUP_RUNTIME_IMAGE=$LOCAL/debian:trixie-slim
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
