#!/usr/bin/env bash
# Trackshift against bare quinn on this machine, side by side and alternating, so that a
# shared or noisy machine treats both alike (BENCHMARKS.md, issue 15's target: Trackshift at
# 0.8x bare quinn's speed or better, 0.7x its CPU per GiB or better).
#
#   scripts/compare-quinn.sh [SIZE_MIB] [ROUNDS]      (default 2048 MiB, 3 rounds)
#
# TRACKSHIFT_SEND_ARGS adds options to `trackshift send` (for example --fixed-window).
#
# Bare quinn is `engine/examples/bare_quinn.rs` (quinn's `perf` shape with Trackshift's TLS
# provider, windows, UDP buffers and idle timeout); Trackshift is `trackshift send` of a file
# in the page cache to `null://` at a `trackshift serve` gateway. Both run on 127.0.0.1. For
# each run: wall time, Gbit/s, CPU seconds per GiB of each side, peak resident memory.
set -euo pipefail

size_mib=${1:-2048}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin trackshift
cargo build --release --quiet -p trackshift-engine --example bare_quinn
target=${CARGO_TARGET_DIR:-$root/target}
ts=$target/release/trackshift
bq=$target/release/examples/bare_quinn

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

bytes=$((size_mib << 20))
head -c "$bytes" /dev/urandom >"$work/src.bin"
cat "$work/src.bin" >/dev/null # into the page cache

# CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
cpu_of() { awk '{ sub(/.*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"; }
rss_of() { awk '/^VmHWM:/ { print int($2 / 1024) }' "/proc/$1/status"; }
gib=$(awk -v b="$bytes" 'BEGIN { print b / 1073741824 }')

# Waits until FILE has a line matching PATTERN (the child printed its address).
wait_line() {
    for _ in $(seq 1 200); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "no '$2' in $1" >&2
    cat "$1" >&2
    return 1
}

row() { # contender wall send_cpu recv_cpu send_rss recv_rss
    awk -v c="$1" -v w="$2" -v sc="$3" -v rc="$4" -v sr="$5" -v rr="$6" -v b="$bytes" -v g="$gib" \
        'BEGIN { printf "| %s | %.2f s | %.2f Gbit/s | %.2f + %.2f = %.2f | %d / %d MiB |\n",
                 c, w, b * 8 / w / 1e9, sc / g, rc / g, (sc + rc) / g, sr, rr }'
}

bare() {
    local out=$work/bq-serve.out
    rm -f "$out"
    "$bq" serve "$work/bq-tls" >"$out" &
    local server=$!
    pids+=("$server")
    wait_line "$out" '^listening'
    read -r _ addr fp < <(grep '^listening' "$out")
    local client
    client=$("$bq" send "$addr" "$fp" "$bytes" 8)
    wait_line "$out" '^bytes='
    local line
    line=$(grep '^bytes=' "$out")
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
    local wall sc rc
    wall=$(field seconds "$client")
    sc=$(awk -v u="$(field cpu_user "$client")" -v s="$(field cpu_sys "$client")" 'BEGIN { print u + s }')
    rc=$(awk -v u="$(field cpu_user "$line")" -v s="$(field cpu_sys "$line")" 'BEGIN { print u + s }')
    row "bare quinn" "$wall" "$sc" "$rc" $(($(field max_rss_kib "$client") / 1024)) $(($(field max_rss_kib "$line") / 1024))
}

trackshift() {
    local data=$work/ts-$RANDOM
    local out=$data.out
    "$ts" serve --data-dir "$data" --listen 127.0.0.1:0 --default-dest null:// >"$out" 2>/dev/null &
    local gw=$!
    pids+=("$gw")
    wait_line "$out" '^certificate fingerprint: '
    local addr fp
    addr=$(sed -n 's/^gateway listening on \([^ ]*\).*/\1/p' "$out")
    fp=$(sed -n 's/^certificate fingerprint: //p' "$out")
    local before
    before=$(cpu_of "$gw")
    local timing
    timing=$({ /usr/bin/time -f '%e %U %S %M' "$ts" send "$work/src.bin" --to "$addr" --fingerprint "$fp" \
        --token-file "$data/default.token" --dest null:// -q --out-dir "$data/docs" ${TRACKSHIFT_SEND_ARGS:-} >/dev/null; } 2>&1 | tail -1)
    local rc rss
    rc=$(awk -v a="$(cpu_of "$gw")" -v b="$before" 'BEGIN { print a - b }')
    rss=$(rss_of "$gw")
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    read -r wall user sys maxrss <<<"$timing"
    row "trackshift ${TRACKSHIFT_SEND_ARGS:-}" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "$rc" $((maxrss / 1024)) "$rss"
}

echo "$size_mib MiB from the page cache over 127.0.0.1, $rounds rounds, alternating ($(nproc) cores, $(date -u +%F))"
echo
echo "| contender | wall | speed | CPU s/GiB, send + receive | resident, send / receive |"
echo "|---|---|---|---|---|"
for _ in $(seq 1 "$rounds"); do
    bare
    trackshift
done
