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
# provider, windows, UDP buffers and idle timeout); the floor is the same with the file read
# and BLAKE3 on both sides, the work Trackshift cannot leave out; Trackshift is `trackshift send` of a file
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

# shellcheck source=scripts/measure-lib.sh
. "$root/scripts/measure-lib.sh"
start_work "$size_mib"
gib=$(awk -v b="$bytes" 'BEGIN { print b / 1073741824 }')

row() { # contender wall send_cpu recv_cpu send_rss recv_rss
    awk -v c="$1" -v w="$2" -v sc="$3" -v rc="$4" -v sr="$5" -v rr="$6" -v b="$bytes" -v g="$gib" \
        'BEGIN { printf "| %s | %.2f s | %.2f Gbit/s | %.2f + %.2f = %.2f | %d / %d MiB |\n",
                 c, w, b * 8 / w / 1e9, sc / g, rc / g, (sc + rc) / g, sr, rr }'
}

# bare [floor]: bare quinn; with `floor`, the sender reads and hashes the file and the
# receiver hashes what it receives (the least work a transfer that proves what arrived does).
bare() {
    local out=$work/bq-serve.out name="bare quinn" serve_args=() send_args=()
    if [[ ${1:-} == floor ]]; then
        name="floor: quinn + pread + BLAKE3"
        serve_args=(--hash)
        send_args=("$work/src.bin")
    fi
    rm -f "$out"
    "$bq" serve "$work/bq-tls" "${serve_args[@]}" >"$out" &
    local server=$!
    pids+=("$server")
    wait_line "$out" '^listening'
    read -r _ addr fp < <(grep '^listening' "$out")
    local client
    client=$("$bq" send "$addr" "$fp" "$bytes" 8 "${send_args[@]}")
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
    row "$name" "$wall" "$sc" "$rc" $(($(field max_rss_kib "$client") / 1024)) $(($(field max_rss_kib "$line") / 1024))
}

trackshift() {
    ts_send "$ts" null://
    row "trackshift ${TRACKSHIFT_SEND_ARGS:-}" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "$gcpu" $((maxrss / 1024)) "$grss"
}

echo "$size_mib MiB from the page cache over 127.0.0.1, $rounds rounds, alternating ($(nproc) cores, $(date -u +%F))"
echo
echo "| contender | wall | speed | CPU s/GiB, send + receive | resident, send / receive |"
echo "|---|---|---|---|---|"
for _ in $(seq 1 "$rounds"); do
    bare
    bare floor
    trackshift
done
