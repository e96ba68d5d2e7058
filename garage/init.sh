#!/bin/sh
# Idempotent one-shot set-up of the local Garage through its admin API (v2): single-node layout,
# the fixed access key from the environment, the bucket, and the key's rights on it. Runs in the
# sidecar image (sh, curl, jq) because the official Garage image has no shell.
set -eu

: "${GARAGE_ADMIN_URL:=http://garage:3903}"
: "${GARAGE_ADMIN_TOKEN:?set GARAGE_ADMIN_TOKEN}"
: "${S3_BUCKET:?set S3_BUCKET}"
: "${S3_ACCESS_KEY_ID:?set S3_ACCESS_KEY_ID}"
: "${S3_SECRET_ACCESS_KEY:?set S3_SECRET_ACCESS_KEY}"

api() { # METHOD PATH [JSON]
    if [ $# -ge 3 ]; then
        curl -sS -f -X "$1" -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" \
            -H 'Content-Type: application/json' --data "$3" "$GARAGE_ADMIN_URL$2"
    else
        curl -sS -f -X "$1" -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" "$GARAGE_ADMIN_URL$2"
    fi
}

i=0
until api GET /v2/GetClusterStatus >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 60 ] || { echo "garage-init: admin API at $GARAGE_ADMIN_URL did not answer in 60s" >&2; exit 1; }
    sleep 1
done

status=$(api GET /v2/GetClusterStatus)
node=$(printf '%s' "$status" | jq -r '.nodes[0].id')
if [ "$(printf '%s' "$status" | jq -r '.nodes[0].role // empty')" = "" ]; then
    echo "garage-init: assigning node ${node%"${node#????????????????}"} to the layout"
    api POST /v2/UpdateClusterLayout \
        "{\"roles\":[{\"id\":\"$node\",\"zone\":\"local\",\"capacity\":10000000000,\"tags\":[]}]}" >/dev/null
    version=$(api GET /v2/GetClusterLayout | jq -r '.version')
    api POST /v2/ApplyClusterLayout "{\"version\":$((version + 1))}" >/dev/null
fi

if ! api GET "/v2/GetKeyInfo?id=$S3_ACCESS_KEY_ID" >/dev/null 2>&1; then
    echo "garage-init: importing access key $S3_ACCESS_KEY_ID"
    api POST /v2/ImportKey "$(jq -cn --arg id "$S3_ACCESS_KEY_ID" --arg s "$S3_SECRET_ACCESS_KEY" \
        '{accessKeyId:$id, secretAccessKey:$s, name:"pgbackup"}')" >/dev/null
fi

if ! bucket=$(api GET "/v2/GetBucketInfo?globalAlias=$S3_BUCKET" 2>/dev/null); then
    echo "garage-init: creating bucket $S3_BUCKET"
    bucket=$(api POST /v2/CreateBucket "{\"globalAlias\":\"$S3_BUCKET\"}")
fi
bucket_id=$(printf '%s' "$bucket" | jq -r '.id')
api POST /v2/AllowBucketKey "{\"bucketId\":\"$bucket_id\",\"accessKeyId\":\"$S3_ACCESS_KEY_ID\",\"permissions\":{\"read\":true,\"write\":true,\"owner\":true}}" >/dev/null
echo "garage-init: bucket $S3_BUCKET ready for key $S3_ACCESS_KEY_ID"
