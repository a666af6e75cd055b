#!/usr/bin/env bash
# Throughput of one large file to each remote connector on loopback, through a local
# gateway (`trackshift send` → QUIC → gateway → connector) and through the connector alone
# (connectors/examples/put.rs, from memory), next to `rclone copy` of the same file to the
# same server in the same run. Prints a Markdown table for BENCHMARKS.md.
#
#   scripts/bench-connectors.sh [SIZE_MIB [DEST...]]
#       default 2048; s3 (moto) garage (S3, built once from crates.io) azure sftp ftps
#
# Needs what scripts/test.sh needs, plus rclone (Debian package, installed if missing).
# Uses its own server directory and ports, so it does not disturb a test run's servers
# (but not at the same time as one: the FTPS test user's password is reset).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-2048}
shift || true
dests=("$@")
[ ${#dests[@]} -eq 0 ] && dests=(s3 garage azure sftp ftps)
export TRACKSHIFT_SERVERS_RUN=${TRACKSHIFT_SERVERS_RUN:-/tmp/trackshift-bench-servers}
export TRACKSHIFT_S3_PORT=39200 TRACKSHIFT_AZURE_PORT=39210 TRACKSHIFT_SFTP_PORT=39222
export TRACKSHIFT_FTPS_PORT=39221 TRACKSHIFT_FTPS_PASV_MIN=39300 TRACKSHIFT_GARAGE_PORT=39240

command -v rclone >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --no-upgrade \
        rclone >/dev/null
}
cargo build --release --locked --bin trackshift >&2
cargo build --release --locked -p trackshift-connectors --example put >&2
bin=$PWD/target/release/trackshift
put=$PWD/target/release/examples/put

work=$(mktemp -d)
gw_pid=
cleanup() {
    [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null
    scripts/test-servers.sh stop
    rm -rf "$work"
}
trap cleanup EXIT
scripts/test-servers.sh stop
servers=(s3 azure sftp ftps)
for d in "${dests[@]}"; do [ "$d" = garage ] && servers+=(garage); done
scripts/test-servers.sh start "${servers[@]}"
# shellcheck disable=SC1090
source <(scripts/test-servers.sh env)

mkdir -p "$work/src"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$work/src/blob.bin"
bytes=$((SIZE_MIB << 20))

# shellcheck source=scripts/gateway-lib.sh
source scripts/gateway-lib.sh

under() { # URI SUB
    case "$1" in
        *\?*) printf '%s/%s?%s' "${1%%\?*}" "$2" "${1#*\?}" ;;
        *) printf '%s/%s' "$1" "$2" ;;
    esac
}
now() { date +%s.%N; }
rate() { # SECONDS → "MiB/s (Gbit/s)"
    awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f MiB/s (%.2f Gbit/s)", b / s / 1048576, b * 8 / s / 1e9 }'
}

# rclone remotes, configured through the environment.
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other
export RCLONE_CONFIG_S3_ENDPOINT=$AWS_ENDPOINT RCLONE_CONFIG_S3_REGION=us-east-1
export RCLONE_CONFIG_S3_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
# moto answers HEAD ?versionId=null (after a multipart upload) with 400.
export RCLONE_CONFIG_S3_NO_HEAD=true
# rclone 1.60 builds Azure URLs as https://ACCOUNT.ENDPOINT: reach Azurite by a container SAS URL.
export RCLONE_CONFIG_AZ_TYPE=azureblob
RCLONE_CONFIG_AZ_SAS_URL=$("${TRACKSHIFT_SERVERS_CACHE:-$HOME/.cache/trackshift-test-servers}/venv/bin/python" - <<'EOF'
import datetime, os
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
sas = generate_container_sas(
    os.environ["AZURE_STORAGE_ACCOUNT_NAME"], "trackshift-test",
    account_key=os.environ["AZURE_STORAGE_ACCOUNT_KEY"],
    permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
    expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2))
print(f"{os.environ['AZURE_STORAGE_ENDPOINT']}/trackshift-test?{sas}")
EOF
)
export RCLONE_CONFIG_AZ_SAS_URL
export RCLONE_CONFIG_SFTP_TYPE=sftp RCLONE_CONFIG_SFTP_HOST=127.0.0.1
export RCLONE_CONFIG_SFTP_PORT=$TRACKSHIFT_SFTP_PORT RCLONE_CONFIG_SFTP_USER=tssftp
export RCLONE_CONFIG_SFTP_KEY_FILE=$TRACKSHIFT_SFTP_KEY
export RCLONE_CONFIG_SFTP_KNOWN_HOSTS_FILE=$TRACKSHIFT_SERVERS_RUN/sftp/known_hosts
export RCLONE_CONFIG_FTPS_TYPE=ftp RCLONE_CONFIG_FTPS_HOST=127.0.0.1
export RCLONE_CONFIG_FTPS_PORT=$TRACKSHIFT_FTPS_PORT RCLONE_CONFIG_FTPS_USER=tsftps
RCLONE_CONFIG_FTPS_PASS=$(rclone obscure "$TRACKSHIFT_FTPS_PASSWORD")
export RCLONE_CONFIG_FTPS_PASS
export RCLONE_CONFIG_FTPS_EXPLICIT_TLS=true RCLONE_CONFIG_FTPS_NO_CHECK_CERTIFICATE=true
export RCLONE_CONFIG_FTPS_DISABLE_TLS13=true
if [ -n "${TRACKSHIFT_GARAGE_ENDPOINT:-}" ]; then
    export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other
    export RCLONE_CONFIG_GARAGE_ENDPOINT=$TRACKSHIFT_GARAGE_ENDPOINT
    export RCLONE_CONFIG_GARAGE_REGION=garage
    export RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$TRACKSHIFT_GARAGE_KEY_ID
    export RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$TRACKSHIFT_GARAGE_SECRET
fi
unset AWS_CA_BUNDLE
garage_env=(AWS_ENDPOINT="${TRACKSHIFT_GARAGE_ENDPOINT:-}" AWS_REGION=garage
    AWS_ACCESS_KEY_ID="${TRACKSHIFT_GARAGE_KEY_ID:-}" AWS_SECRET_ACCESS_KEY="${TRACKSHIFT_GARAGE_SECRET:-}")

sftp_dir=$TRACKSHIFT_SERVERS_RUN/sftp/data
ftps_dir=$TRACKSHIFT_SERVERS_RUN/ftps/data
echo "| destination | trackshift send (via gateway) | connector alone | rclone copy (direct) |"
echo "|---|---:|---:|---:|"
for d in "${dests[@]}"; do
    extra=()
    case $d in
        s3) uri=$TRACKSHIFT_TEST_S3 remote=s3:trackshift-test/rclone ;;
        garage) uri=$TRACKSHIFT_TEST_GARAGE remote=garage:trackshift-test/rclone extra=("${garage_env[@]}") ;;
        azure) uri=$TRACKSHIFT_TEST_AZURE remote=az:trackshift-test/rclone ;;
        sftp) uri=$TRACKSHIFT_TEST_SFTP remote=sftp:$sftp_dir/rclone ;;
        ftps) uri=$TRACKSHIFT_TEST_FTPS remote=ftps:$ftps_dir/rclone ;;
        *) echo "unknown destination $d" >&2; exit 2 ;;
    esac
    start_gateway "${extra[@]}"
    t0=$(now)
    "$bin" send "$work/src" --to "$addr" --fingerprint "$fp" \
        --token-file "$work/gw/default.token" --dest "$(job_dest "$uri" "ts-bench-$$")" \
        --out-dir "$work/receipts/$d" >"$work/send-$d.log" 2>&1 \
        || { echo "send to $d failed:" >&2; tail -5 "$work/send-$d.log" >&2; exit 1; }
    t1=$(now)
    rclone copy "$work/src/blob.bin" "$remote" --retries 1 >"$work/rclone-$d.log" 2>&1 \
        || { echo "rclone to $d failed:" >&2; tail -5 "$work/rclone-$d.log" >&2; exit 1; }
    t2=$(now)
    # The connector alone, from memory, with the gateway's default chunk size for it.
    chunk=4
    case $d in s3 | garage) chunk=8 ;; esac
    alone=$(env "${extra[@]}" "$put" "$(under "$uri" put-bench)" "$SIZE_MIB" "$chunk" 8 2>&1) \
        || { echo "put to $d failed: $alone" >&2; exit 1; }
    alone=$(sed -n 's/.* = \([0-9]*\) MiB\/s (\([0-9.]*\) Gbit\/s).*/\1 MiB\/s (\2 Gbit\/s)/p' <<<"$alone")
    ts=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    rc=$(awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }')
    echo "| $d | $(rate "$ts") | $alone | $(rate "$rc") |"
done
