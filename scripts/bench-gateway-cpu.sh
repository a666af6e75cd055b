#!/usr/bin/env bash
# The gateway's CPU time per GiB on an SFTP transfer (1 GiB of random bytes, sent three
# times through a local gateway to sshd on loopback), with the environment given as
# VAR=VALUE arguments applied to the gateway and the sender, for A/B runs of a setting:
#
#   scripts/bench-gateway-cpu.sh                              # as shipped
#   scripts/bench-gateway-cpu.sh MIMALLOC_PURGE_DELAY=1000    # mimalloc's own default
#
# CPU time (utime + stime of the gateway process, from /proc) varies less between runs
# on a shared machine than wall time; both are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRACKSHIFT_SERVERS_RUN=${TRACKSHIFT_SERVERS_RUN:-/tmp/trackshift-cpu-bench}
export TRACKSHIFT_SFTP_PORT=${TRACKSHIFT_SFTP_PORT:-39322}
cargo build --release --locked --bin trackshift >&2
bin=$PWD/target/release/trackshift
work=$(mktemp -d)
gw_pid=
cleanup() {
    [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null
    scripts/test-servers.sh stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
scripts/test-servers.sh stop
scripts/test-servers.sh start sftp >&2
# shellcheck disable=SC1090
source <(scripts/test-servers.sh env)
mkdir -p "$work/src"
head -c 1G /dev/urandom >"$work/src/blob.bin"
# shellcheck source=scripts/gateway-lib.sh
source scripts/gateway-lib.sh
start_gateway "$@"
ticks() { awk '{ print $14 + $15 }' "/proc/$gw_pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks)
for i in 1 2 3; do
    env "$@" "$bin" send "$work/src" --to "$addr" --fingerprint "$fp" \
        --token-file "$work/gw/default.token" --out-dir "$work/receipts/$i" \
        --dest "$(job_dest "$TRACKSHIFT_TEST_SFTP" "run$i-$$")" 2>&1 | sed -n 's/^\(sent .* s\) (.*/\1/p'
done
t1=$(ticks)
awk -v t="$((t1 - t0))" -v hz="$hz" -v env="${*:-as shipped}" \
    'BEGIN { printf "%s: gateway CPU %.2f s per GiB\n", env, t / hz / 3 }'
