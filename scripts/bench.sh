#!/usr/bin/env bash
# `make bench`: backup throughput and sidecar memory on one database, in one run, against the
# real stack (project pgbackup-bench). Writes BENCHMARKS.md.
#
#   raw dump    docker exec db pg_dump -Fc -Z0 app > /dev/null        (the ceiling)
#   pgbackup    pgctl backup (exec pg_dump → zstd:3 → SHA-256 → Garage multipart)
#   naive       docker exec db pg_dump app | gzip | aws s3 cp - s3://…  (awscli from PyPI)
#   memory      peak RSS (VmHWM) of pgctl, the sidecar's only process, fresh for each size
# and the same for restore, into db-restore:
#   local       pg_restore --single-transaction of the dump file inside db-restore (the ceiling)
#   pgbackup    pgctl restore latest (Garage → SHA-256 → zstd -d → pg_restore | psql, one transaction)
#   naive       aws s3 cp - | gunzip | psql (the naive backup, plain SQL)
#
# Two datasets in one run: the realistic one (scripts/bench-data.py, BENCH_REAL_SCALE, default
# 1 ≈ 1.3 GB dump, 3.4:1 with zstd), whose rows the targets are read from, repeated 4× larger to
# show memory does not grow with it (BENCH_SKIP_4X=1 to skip); then the pgbench best case
# (BENCH_SCALE, default 40, plus repetitive text: 27:1).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
# The realistic dataset draws its words from Debian's wamerican list.
if [ ! -f /usr/share/dict/american-english ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wamerican >/dev/null
    else
        echo "bench: /usr/share/dict/american-english is missing: install Debian's wamerican" >&2
        exit 1
    fi
fi
eval "$(scripts/images.sh)"

P=pgbackup-bench
compose=(docker compose -p "$P" -f compose.yaml -f compose.test.yaml)
SCALE=${BENCH_SCALE:-40}
DB="$P-db-1"
RDB="$P-db-restore-1"
SIDECAR="$P-backup-1"
# The aws CLI scripts/deps.sh installed.
VENV=${PGBACKUP_CACHE:-$HOME/.cache/pgbackup}/awscli-venv

log() { printf 'bench: %s\n' "$*" >&2; }

"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
trap '"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
"${compose[@]}" up -d --build --quiet-pull db db-restore backup garage garage-init >/dev/null
scripts/wait-healthy.sh "${compose[@]}"

GARAGE=$("${compose[@]}" port garage 3900)
export AWS_ACCESS_KEY_ID=GK5a0696932d5415f414fe611f
export AWS_SECRET_ACCESS_KEY=9ee5125902ef55aa4941e05962e260ee547efe45d9c1ad3e2c2dfcaccb976025
export AWS_DEFAULT_REGION=garage

psql() { docker exec "$DB" psql -X -q -v ON_ERROR_STOP=1 -U app -d app "$@"; }
psqli() { docker exec -i "$DB" psql -X -q -v ON_ERROR_STOP=1 -U app -d app "$@"; }
rpsql() { docker exec "$RDB" psql -X -q -v ON_ERROR_STOP=1 -U app -d postgres "$@"; }
fresh() { rpsql -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null; }

# empty: drops every table of app (both datasets go into it in turn).
empty() {
    psql -c "DROP TABLE IF EXISTS documents, attachments, comments, orders, users, pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers CASCADE" >/dev/null
}

# fill_realistic SCALE: the realistic dataset (scripts/bench-data.py: users, orders with jsonb,
# English-like comments, attachments), generated offline and seeded, loaded with COPY; the four
# tables are generated two at a time (two cores).
fill_realistic() {
    log "filling: realistic dataset, scale $1"
    empty
    python3 scripts/bench-data.py schema | psqli >/dev/null
    local pids=() t
    for pair in "users orders" "comments attachments"; do
        (for t in $pair; do
            python3 scripts/bench-data.py "$t" "$1" | psqli -c "\copy $t FROM STDIN" >/dev/null
        done) &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    python3 scripts/bench-data.py constraints | psqli >/dev/null
    psql -c "VACUUM ANALYZE" >/dev/null
}

# fill SCALE TEXT_ROWS: pgbench tables plus a text-heavy table (documents, mixed repetition).
fill() {
    log "filling: pgbench scale $1, $2 text rows"
    empty
    docker exec "$DB" pgbench -q -i -s "$1" -U app app >/dev/null 2>&1
    psql -c "CREATE TABLE documents AS
        SELECT g AS id, now() - g * interval '1 second' AS created,
               repeat(md5(g::text), 8) || ' ' || repeat('lorem ipsum dolor sit amet ', 1 + g % 20) AS body
        FROM generate_series(1, $2) g" >/dev/null
    psql -c "VACUUM ANALYZE" >/dev/null
}

secs() { python3 -c "import sys; print(f'{float(sys.argv[1]):.1f}')" "$1"; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1])/float(sys.argv[2])/1e6:.1f}')" "$1" "$2"; }

# measure LABEL: prints one markdown row per method; sets RAW_RATE/PGB_RATE/NAIVE_RATE/PEAK.
measure() {
    local label=$1 size raw_bytes t0 t1 raw_s pgb_s naive_s out peak
    size=$(psql -At -c "SELECT pg_database_size('app')")
    log "$label: database is $((size / 1024 / 1024)) MiB"

    t0=$(date +%s.%N)
    raw_bytes=$(docker exec "$DB" pg_dump -U app -Fc -Z0 app | wc -c)
    t1=$(date +%s.%N)
    raw_s=$(python3 -c "print($t1-$t0)")

    # A fresh sidecar so its peak RSS belongs to this backup alone.
    docker restart -t 5 "$SIDECAR" >/dev/null
    scripts/wait-healthy.sh "${compose[@]}" 2>/dev/null
    sleep 3
    out=$(docker exec "$SIDECAR" pgctl backup --wait --json "$P/db")
    pgb_s=$(printf '%s' "$out" | python3 -c "import json,sys; r=json.load(sys.stdin)['outcomes'][0]; assert r['ok'], r; print(r['result']['duration_seconds'])")
    stored=$(printf '%s' "$out" | python3 -c "import json,sys; print(json.load(sys.stdin)['outcomes'][0]['result']['bytes'])")
    peak=$(docker exec "$SIDECAR" awk '/VmHWM/ {print int($2/1024)}' /proc/1/status)

    t0=$(date +%s.%N)
    docker exec "$DB" pg_dump -U app app | gzip | "$VENV/bin/aws" --endpoint-url "http://$GARAGE" s3 cp - "s3://pgbackup/naive/app-$label.sql.gz" --only-show-errors
    t1=$(date +%s.%N)
    naive_s=$(python3 -c "print($t1-$t0)")

    NAIVE_SIZE=$("$VENV/bin/aws" --endpoint-url "http://$GARAGE" s3 ls "s3://pgbackup/naive/app-$label.sql.gz" | awk '{print $3}')
    STORED=$stored
    RAW_RATE=$(rate "$raw_bytes" "$raw_s")
    PGB_RATE=$(rate "$raw_bytes" "$pgb_s")
    NAIVE_RATE=$(rate "$raw_bytes" "$naive_s")
    PEAK=$peak
    RAW_BYTES=$raw_bytes
    ROWS+="| $label | $((size / 1024 / 1024)) MiB | $((raw_bytes / 1024 / 1024)) MiB | $(secs "$raw_s") s · $RAW_RATE MB/s | $(secs "$pgb_s") s · $PGB_RATE MB/s ($((stored / 1024 / 1024)) MiB stored) | $(secs "$naive_s") s · $NAIVE_RATE MB/s | $PEAK MiB |"$'\n'
    log "$label: raw $RAW_RATE MB/s, pgbackup $PGB_RATE MB/s, naive $NAIVE_RATE MB/s, peak RSS $PEAK MiB"
}

# sidecar [ENV=VALUE…]: (re)creates the sidecar with these variables, waits until healthy.
sidecar() {
    env "$@" "${compose[@]}" up -d --force-recreate backup >/dev/null 2>&1
    scripts/wait-healthy.sh "${compose[@]}" 2>/dev/null
    sleep 3
}

# measure_encrypted LABEL RAW_BYTES: the same backup with every object encrypted to an age key
# (README "Encryption"), by a fresh sidecar with PGBACKUP_AGE_RECIPIENTS; one markdown row.
measure_encrypted() {
    local label=$1 raw_bytes=$2 out enc_s stored peak
    rm -f "$KEYDIR/key.txt" # one key per dataset: age-keygen will not overwrite a file
    age-keygen -o "$KEYDIR/key.txt" 2>/dev/null
    sidecar PGBACKUP_AGE_RECIPIENTS="$(age-keygen -y "$KEYDIR/key.txt")"
    out=$(docker exec "$SIDECAR" pgctl backup --wait --json "$P/db")
    enc_s=$(printf '%s' "$out" | python3 -c "import json,sys; r=json.load(sys.stdin)['outcomes'][0]; assert r['ok'], r; print(r['result']['duration_seconds'])")
    stored=$(printf '%s' "$out" | python3 -c "import json,sys; print(json.load(sys.stdin)['outcomes'][0]['result']['bytes'])")
    peak=$(docker exec "$SIDECAR" awk '/VmHWM/ {print int($2/1024)}' /proc/1/status)
    sidecar PGBACKUP_AGE_RECIPIENTS=
    ENC_RATE=$(rate "$raw_bytes" "$enc_s")
    EROWS+="| $label | $PGB_RATE MB/s | $(secs "$enc_s") s · $ENC_RATE MB/s ($((stored / 1024 / 1024)) MiB stored) | $(ratio "$ENC_RATE" "$PGB_RATE")× | $peak MiB |"$'\n'
    log "$label encrypted: $ENC_RATE MB/s ($(ratio "$ENC_RATE" "$PGB_RATE")× unencrypted), peak RSS $peak MiB"
}

# measure_codecs RAW_BYTES: the same backup with other codecs (the db service recreated with
# another pgbackup.compression; its data volume stays), against the default's row; one
# markdown row per codec: rate, share of the raw rate, stored size.
measure_codecs() {
    local raw_bytes=$1 c out s stored
    CROWS="| zstd:3 (default) | $PGB_RATE MB/s | $(ratio "$PGB_RATE" "$RAW_RATE")× | $((STORED / 1024 / 1024)) MiB | $(ratio "$raw_bytes" "$STORED"):1 |"$'\n'
    for c in zstd:1 zstd:6 gzip:6 none; do
        PGBACKUP_BENCH_COMPRESSION=$c "${compose[@]}" up -d --wait db >/dev/null 2>&1
        sleep 3 # the sidecar sees the recreated container through Docker's events
        out=$(docker exec "$SIDECAR" pgctl backup --wait --json "$P/db")
        s=$(printf '%s' "$out" | python3 -c "import json,sys; r=json.load(sys.stdin)['outcomes'][0]; assert r['ok'], r; print(r['result']['duration_seconds'])")
        stored=$(printf '%s' "$out" | python3 -c "import json,sys; print(json.load(sys.stdin)['outcomes'][0]['result']['bytes'])")
        CROWS+="| $c | $(rate "$raw_bytes" "$s") MB/s | $(ratio "$(rate "$raw_bytes" "$s")" "$RAW_RATE")× | $((stored / 1024 / 1024)) MiB | $(ratio "$raw_bytes" "$stored"):1 |"$'\n'
        log "codec $c: $(rate "$raw_bytes" "$s") MB/s, $((stored / 1024 / 1024)) MiB stored"
    done
    "${compose[@]}" up -d --wait db >/dev/null 2>&1
    sleep 3
}

# measure_restore LABEL RAW_BYTES: local pg_restore, pgctl restore, naive; one markdown row.
measure_restore() {
    local label=$1 raw_bytes=$2 t0 t1 local_s local_j2_s pgb_s naive_s peak
    docker exec "$DB" pg_dump -U app -Fc -Z0 -f /tmp/bench.dump app
    docker cp "$DB:/tmp/bench.dump" - | docker cp - "$RDB:/tmp/"
    docker exec "$DB" rm -f /tmp/bench.dump
    fresh app_local
    t0=$(date +%s.%N)
    docker exec "$RDB" pg_restore -U app -d app_local --single-transaction /tmp/bench.dump
    t1=$(date +%s.%N)
    local_s=$(python3 -c "print($t1-$t0)")
    rpsql -c "DROP DATABASE app_local" >/dev/null
    # pg_restore's parallel mode (two jobs: two cores) reads the file at random: not all or
    # nothing, and not possible on a stream; the figure says what a file on disk would allow.
    fresh app_local
    t0=$(date +%s.%N)
    docker exec "$RDB" pg_restore -U app -d app_local -j 2 /tmp/bench.dump
    t1=$(date +%s.%N)
    local_j2_s=$(python3 -c "print($t1-$t0)")
    docker exec "$RDB" rm -f /tmp/bench.dump
    rpsql -c "DROP DATABASE app_local" >/dev/null

    fresh app
    # pgctl restore runs as its own process in the sidecar: sample its peak RSS while it runs.
    t0=$(date +%s.%N)
    peak=$(docker exec "$SIDECAR" sh -c '
        pgctl restore latest --from '"$P/db"' --to db-restore --db app --json >/dev/null & pid=$!
        peak=0
        while kill -0 $pid 2>/dev/null; do
            v=$(awk "/VmHWM/ {print int(\$2/1024)}" /proc/$pid/status 2>/dev/null || echo 0)
            [ "${v:-0}" -gt "$peak" ] && peak=$v
            sleep 0.2
        done
        wait $pid || exit 1
        echo $peak')
    t1=$(date +%s.%N)
    pgb_s=$(python3 -c "print($t1-$t0)")

    fresh app_naive
    t0=$(date +%s.%N)
    "$VENV/bin/aws" --endpoint-url "http://$GARAGE" s3 cp "s3://pgbackup/naive/app-$label.sql.gz" - |
        gunzip | docker exec -i "$RDB" psql -X -q -o /dev/null -v ON_ERROR_STOP=1 -1 -U app -d app_naive
    t1=$(date +%s.%N)
    naive_s=$(python3 -c "print($t1-$t0)")
    rpsql -c "DROP DATABASE app_naive" >/dev/null

    LOCAL_R=$(rate "$raw_bytes" "$local_s")
    LOCAL_J2_R=$(rate "$raw_bytes" "$local_j2_s")
    PGB_R=$(rate "$raw_bytes" "$pgb_s")
    NAIVE_R=$(rate "$raw_bytes" "$naive_s")
    RROWS+="| $label | $(secs "$local_s") s · $LOCAL_R MB/s | $(secs "$local_j2_s") s · $LOCAL_J2_R MB/s | $(secs "$pgb_s") s · $PGB_R MB/s | $(secs "$naive_s") s · $NAIVE_R MB/s | $peak MiB |"$'\n'
    log "$label restore: local $LOCAL_R MB/s (-j 2: $LOCAL_J2_R MB/s), pgbackup $PGB_R MB/s, naive $NAIVE_R MB/s, pgctl peak RSS $peak MiB"
}

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
KEYDIR=$(mktemp -d)
ROWS=""
RROWS=""
EROWS=""
# measure_all LABEL: backup, restore and encrypted backup of what app holds now.
measure_all() {
    measure "$1"
    measure_restore "$1" "$RAW_BYTES"
    # After the restore: `latest` is then the encrypted backup.
    measure_encrypted "$1" "$RAW_BYTES"
}
# idle_and_empty: the fixed costs. A backup of an empty database (start to committed manifest,
# median of 3), and the sidecar's memory and CPU while it idles with 20 labelled targets.
idle_and_empty() {
    local e="$P-empty" i out d
    docker run -d --name "$e" -e POSTGRES_PASSWORD=bench -l pgbackup.enable=true \
        -l pgbackup.schedule=off -l pgbackup.databases=postgres "$POSTGRES_IMAGE" >/dev/null
    for i in $(seq 1 60); do docker exec "$e" pg_isready -q -h 127.0.0.1 && break; sleep 1; done
    for i in 1 2 3; do docker exec "$e" psql -q -U postgres -c "SELECT 1" >/dev/null 2>&1 && break; sleep 2; done
    sleep 2
    d=()
    for i in 1 2 3; do
        out=$(docker exec "$SIDECAR" pgctl backup --wait --json "$e")
        d+=("$(printf '%s' "$out" | python3 -c "import json,sys; r=json.load(sys.stdin)['outcomes'][0]; assert r['ok'], r; print(r['result']['duration_seconds'])")")
    done
    EMPTY_S=$(printf '%s\n' "${d[@]}" | sort -n | sed -n 2p | xargs printf '%.2f')
    docker rm -fv "$e" >/dev/null
    for i in $(seq 1 20); do
        docker run -d --name "$P-idle-$i" -l pgbackup.enable=true -l pgbackup.schedule=off \
            --entrypoint sleep "$POSTGRES_IMAGE" 3600 >/dev/null
    done
    sidecar
    sleep 10
    local t0 t1 rss targets
    t0=$(docker exec "$SIDECAR" awk '{print $14 + $15}' /proc/1/stat)
    sleep 30 # a full resync (PGBACKUP_RESYNC_INTERVAL) falls inside
    t1=$(docker exec "$SIDECAR" awk '{print $14 + $15}' /proc/1/stat)
    rss=$(docker exec "$SIDECAR" awk '/VmRSS/ {print int($2/1024)}' /proc/1/status)
    targets=$(docker exec "$SIDECAR" pgctl status --json | python3 -c "import json,sys; print(sum(1 for t in json.load(sys.stdin)['targets'] if t['state'] == 'valid'))")
    IDLE_RSS=$rss
    IDLE_CPU=$(python3 -c "print(f'{($t1 - $t0) / $(getconf CLK_TCK) / 30 * 100:.2f}')")
    IDLE_TARGETS=$targets
    for i in $(seq 1 20); do docker rm -f "$P-idle-$i" >/dev/null; done
    log "empty database backup ${EMPTY_S}s; idle with $targets targets: RSS $rss MiB, CPU $IDLE_CPU %"
}
REAL=${BENCH_REAL_SCALE:-1}
fill_realistic "$REAL"
measure_all "realistic-1x"
BASE_ENC=$ENC_RATE
BASE_PGB=$PGB_RATE BASE_RAW=$RAW_RATE BASE_NAIVE=$NAIVE_RATE BASE_PEAK=$PEAK
BASE_LOCAL_R=$LOCAL_R BASE_LOCAL_J2_R=$LOCAL_J2_R BASE_PGB_R=$PGB_R BASE_NAIVE_R=$NAIVE_R
REAL_ZSTD=$(ratio "$RAW_BYTES" "$STORED") REAL_GZIP=$(ratio "$RAW_BYTES" "$NAIVE_SIZE")
REAL_DUMP=$((RAW_BYTES / 1024 / 1024))
measure_codecs "$RAW_BYTES"
if [ "${BENCH_SKIP_4X:-0}" != 1 ]; then
    fill_realistic $((REAL * 4))
    measure_all "realistic-4x"
fi
idle_and_empty
# The best case: pgbench tables and repetitive text (27:1), kept for comparison.
fill "$SCALE" 1500000
measure_all "pgbench-1x"
PGBENCH_ZSTD=$(ratio "$RAW_BYTES" "$STORED") PGBENCH_GZIP=$(ratio "$RAW_BYTES" "$NAIVE_SIZE")
rm -rf "$KEYDIR"
# Everything from "## History" on is written by people: kept as it is.
notes=$(sed -n '/^## History/,$p' BENCHMARKS.md 2>/dev/null || true)
cat >BENCHMARKS.md <<MD
# Benchmarks

Produced by \`make bench\` (scripts/bench.sh) on $(date -u +%Y-%m-%d), $(nproc) cores,
$(free -g | awk '/Mem:/ {print $2}') GiB, Docker $(docker version -f '{{.Server.Version}}'),
images: \`$POSTGRES_IMAGE\`, \`$GARAGE_IMAGE\`. Garage runs on the same machine, so the figures
include its CPU use. Rates are dump bytes (uncompressed custom format) per second.

| size | database | dump | raw \`pg_dump > /dev/null\` | pgbackup → Garage | naive \`pg_dump \| gzip \| aws s3 cp -\` | sidecar peak RSS |
|---|---|---|---|---|---|---|
$ROWS
Realistic data, base size: pgbackup reaches **$(ratio "$BASE_PGB" "$BASE_RAW")×** the raw dump
rate and **$(ratio "$BASE_PGB" "$BASE_NAIVE")×** the naive pipeline; peak sidecar memory
$BASE_PEAK MiB. Targets: ≥ 0.95× raw, ≥ 3× naive, ≤ 48 MiB and flat with size.

Compression of the two datasets (dump bytes ÷ stored bytes): realistic **zstd:3 $REAL_ZSTD:1**,
gzip -6 (the naive pipeline's plain SQL) $REAL_GZIP:1; pgbench best case zstd:3 $PGBENCH_ZSTD:1,
gzip -6 $PGBENCH_GZIP:1.

The sidecar image (\`$(docker inspect -f '{{.Config.Image}}' "$SIDECAR")\`, built on
\`${PGBACKUP_RUNTIME_IMAGE:-debian:trixie-slim}\`) is **$(docker image inspect -f '{{.Size}}' "$(docker inspect -f '{{.Config.Image}}' "$SIDECAR")" | awk '{printf "%d", $1 / 1000000}') MB**
(target ≤ 150 MB): pgctl, the Postgres 18 client programs, curl and jq.

Fixed costs: a backup of an empty database (\`pgbackup.databases=postgres\`, roles included)
takes **${EMPTY_S} s** from start to committed manifest (median of 3; target ≤ 1 s); the sidecar
idling with $IDLE_TARGETS valid targets holds **$IDLE_RSS MiB** (VmRSS; target ≤ 24 MiB) and uses
$IDLE_CPU % of a core over 30 s that include a full re-listing (target: none between runs).

The same backup encrypted with age (\`PGBACKUP_AGE_RECIPIENTS\`, a fresh sidecar; README
"Encryption"):

| size | pgbackup | pgbackup + age → Garage | encrypted ÷ unencrypted | sidecar peak RSS |
|---|---|---|---|---|
$EROWS
Realistic data, base size: encrypted backups run at **$(ratio "$BASE_ENC" "$BASE_PGB")×** the
unencrypted rate.
Target: ≥ 0.9×.

Codecs on the realistic data, base size (\`pgbackup.compression\`; the same backup, the raw rate
of the row above):

| codec | pgbackup → Garage | of the raw rate | stored | ratio |
|---|---|---|---|---|
$CROWS
Restore into \`db-restore\` (a fresh database each time; rates are dump bytes per second):

| size | local \`pg_restore --single-transaction\` of the file | local \`pg_restore -j 2\` of the file | \`pgctl restore latest\` from Garage | naive \`aws s3 cp - \| gunzip \| psql -1\` | pgctl peak RSS |
|---|---|---|---|---|---|
$RROWS
Realistic data, base size: pgbackup's restore reaches **$(ratio "$BASE_PGB_R" "$BASE_LOCAL_R")×** a
local pg_restore, **$(ratio "$BASE_PGB_R" "$BASE_LOCAL_J2_R")×** a local \`pg_restore -j 2\` and
**$(ratio "$BASE_PGB_R" "$BASE_NAIVE_R")×** the naive restore. Target: ≥ 0.90× local.

Commands, exactly as run:

\`\`\`sh
docker exec $DB pg_dump -U app -Fc -Z0 app | wc -c                       # raw
docker exec $SIDECAR pgctl backup --wait --json $P/db                    # pgbackup (zstd:3)
PGBACKUP_AGE_RECIPIENTS=\$(age-keygen -y key.txt) docker compose up -d backup   # then the same backup, encrypted
docker exec $DB pg_dump -U app app | gzip | aws --endpoint-url http://\$GARAGE s3 cp - s3://pgbackup/naive/app.sql.gz
docker exec $SIDECAR awk '/VmHWM/' /proc/1/status                         # peak RSS, fresh sidecar per size
docker exec $RDB pg_restore -U app -d app_local --single-transaction /tmp/bench.dump       # local restore
docker exec $RDB pg_restore -U app -d app_local -j 2 /tmp/bench.dump                      # local parallel restore
docker exec $SIDECAR pgctl restore latest --from $P/db --to db-restore --db app          # pgbackup restore
aws --endpoint-url http://\$GARAGE s3 cp s3://pgbackup/naive/app.sql.gz - | gunzip | docker exec -i $RDB psql -1 -U app -d app_naive
\`\`\`

Data: **realistic** = \`scripts/bench-data.py\` at scale $REAL ($REAL_DUMP MiB custom dump;
4× for the larger size): users (names, e-mails, UUIDs), orders (jsonb line items, UUIDs,
amounts), English-like comments (Zipf-distributed words from Debian's wamerican list),
attachments (bytea, a fifth of it random bytes), generated offline with a fixed seed, loaded with
COPY, then foreign keys and indexes. **pgbench** = \`pgbench -i -s $SCALE\` plus a \`documents\`
table of 1.5 M repetitive text rows: the best case for every compressor.
MD
if [ -n "$notes" ]; then printf '\n%s\n' "$notes" >>BENCHMARKS.md; fi
log "wrote BENCHMARKS.md"
cat BENCHMARKS.md
