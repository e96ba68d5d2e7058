#!/usr/bin/env bash
# Minimal re-implementation of the official postgres image's entrypoint contract, for the
# offline test images. See docker/postgres/Dockerfile.
set -Eeo pipefail

# file_env VAR [DEFAULT]: VAR or VAR_FILE (Docker secrets), never both.
file_env() {
    local var=$1 file_var="${1}_FILE" def=${2:-}
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        echo >&2 "error: both $var and $file_var are set (but are exclusive)"
        exit 1
    fi
    local val=$def
    if [ -n "${!var:-}" ]; then
        val=${!var}
    elif [ -n "${!file_var:-}" ]; then
        val=$(<"${!file_var}")
    fi
    export "$var"="$val"
    unset "$file_var"
}

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

if [ "$1" = 'postgres' ]; then
    # 18 moved the data directory: a volume still mounted at the old place would hold nothing
    # and the data would end up in the container. The official image refuses that too.
    if [ "${PG_MAJOR:-0}" -ge 18 ] && [ "$PGDATA" = "/var/lib/postgresql/$PG_MAJOR/docker" ] \
        && mountpoint -q /var/lib/postgresql/data; then
        cat >&2 <<MSG
Error: a volume is mounted at /var/lib/postgresql/data, but Postgres $PG_MAJOR keeps its data in
       $PGDATA. Mount the volume at /var/lib/postgresql instead (or set PGDATA to the old
       place if the volume holds an older layout on purpose).
MSG
        exit 1
    fi
    if [ "$(id -u)" = '0' ]; then
        mkdir -p "$PGDATA"
        chmod 00700 "$PGDATA" || :
        find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
        mkdir -p /var/run/postgresql
        chown postgres:postgres /var/run/postgresql
        chmod 3777 /var/run/postgresql
        exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
    fi

    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        file_env POSTGRES_PASSWORD
        file_env POSTGRES_USER postgres
        file_env POSTGRES_DB "$POSTGRES_USER"
        file_env POSTGRES_INITDB_ARGS
        if [ -z "$POSTGRES_PASSWORD" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
            cat >&2 <<'MSG'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".
       Or set POSTGRES_HOST_AUTH_METHOD=trust (not recommended).
MSG
            exit 1
        fi
        # shellcheck disable=SC2086
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
            --encoding=UTF8 --locale=C.UTF-8 $POSTGRES_INITDB_ARGS >/dev/null
        printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
        # As the official image: the method that matches how the password was stored
        # (md5 up to 13, scram-sha-256 from 14 on).
        auth=${POSTGRES_HOST_AUTH_METHOD:-$(postgres -C password_encryption -D "$PGDATA")}
        printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

        pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >/dev/null
        export PGPASSWORD=$POSTGRES_PASSWORD
        psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
        if [ "$POSTGRES_DB" != postgres ]; then
            "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >/dev/null
        fi
        for f in /docker-entrypoint-initdb.d/*; do
            case "$f" in
            *.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) echo "running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
            *) ;;
            esac
        done
        unset PGPASSWORD
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
        echo 'PostgreSQL init process complete; ready for start up.'
    fi
fi

exec "$@"
