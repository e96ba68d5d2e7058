#!/usr/bin/env bash
# Installs what the stack and the tests need on this machine when it is missing:
# debootstrap (offline images), zstd and age (the README's standard-tools recipes), the Compose
# v2 CLI plugin (`docker compose`), and the aws CLI (from PyPI, into a venv under the cache: the
# README's standard-tools recipes and `make bench` run it). On a machine whose Docker comes from
# Docker's own packages debootstrap and Compose are usually there already.
set -euo pipefail

log() { printf 'deps: %s\n' "$*" >&2; }
need_apt=()
command -v docker >/dev/null || { log "docker is required: install Docker Engine first"; exit 1; }
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v curl >/dev/null || need_apt+=(curl)
command -v zstd >/dev/null || need_apt+=(zstd)
# The README's encrypted-backup recipe decrypts with the age CLI (age-keygen comes with it).
command -v age >/dev/null || need_apt+=(age)
# The outside-Docker test makes a test CA and a server certificate.
command -v openssl >/dev/null || need_apt+=(openssl)

if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "missing: ${need_apt[*]} (install them with your package manager)"
        exit 1
    fi
    log "apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
    # Debian bookworm only packages Compose v1 (docker-compose 1.29, a different CLI); trixie
    # packages v2, a static-enough Go binary that runs on bookworm. Fetch that one .deb through
    # apt with a private trixie source list (the system's sources stay untouched) and install
    # its plugin binary for the current user.
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "'docker compose' (Compose v2) is missing: install the docker-compose-plugin package"
        exit 1
    fi
    log "installing the Compose v2 plugin from Debian trixie's docker-compose package"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main" >"$tmp/sources.list"
    aptopts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::Archives=$tmp/archives" -o APT::Sandbox::User=root)
    apt-get "${aptopts[@]}" update -qq >/dev/null
    (cd "$tmp" && apt-get "${aptopts[@]}" download -qq docker-compose >/dev/null)
    dpkg-deb -x "$tmp"/docker-compose_*.deb "$tmp/x"
    mkdir -p "$HOME/.docker/cli-plugins"
    install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$HOME/.docker/cli-plugins/docker-compose"
    docker compose version >&2
fi

# The aws CLI: a venv of its own, so the system Python stays untouched.
AWS_VENV=${PGBACKUP_CACHE:-$HOME/.cache/pgbackup}/awscli-venv
if [ ! -x "$AWS_VENV/bin/aws" ]; then
    log "installing awscli from PyPI into $AWS_VENV"
    python3 -m venv "$AWS_VENV"
    "$AWS_VENV/bin/pip" install -q awscli
fi
