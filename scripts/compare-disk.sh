#!/usr/bin/env bash
# Trackshift writing to local disk against `cp` + `sync` of the same bytes to the same disk,
# alternating, so that a shared or noisy machine treats both alike (BENCHMARKS.md, issue
# 15's target: Trackshift at 0.8x the speed of cp + sync or better).
#
#   scripts/compare-disk.sh [SIZE_MIB] [ROUNDS]      (default 2048 MiB, 3 rounds)
#
# TRACKSHIFT_SEND_ARGS adds options to `trackshift send`. WORK_DIR picks the disk (default:
# a new directory under $TMPDIR or /tmp). BASELINE=/path/to/an/older/trackshift adds it as a
# third contender (a before-and-after in the same run).
#
# The source file is in the page cache; each contender writes it into an empty directory
# and is done when the bytes are durable: `cp` then `sync`; `trackshift send` to a
# `file://` destination at a `trackshift serve` gateway on 127.0.0.1, which acknowledges a
# chunk only once it is synced and ends with the receipt (the file read back and checked).
# Before each run the page cache's dirty data is written out (`sync`), so neither inherits
# the other's writeback.
set -euo pipefail

size_mib=${1:-2048}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin trackshift
target=${CARGO_TARGET_DIR:-$root/target}
ts=$target/release/trackshift

work=$(mktemp -d "${WORK_DIR:-${TMPDIR:-/tmp}}/compare-disk.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

bytes=$((size_mib << 20))
head -c "$bytes" /dev/urandom >"$work/src.bin"
cat "$work/src.bin" >/dev/null # into the page cache
sync

cpu_of() { awk '{ sub(/.*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"; }
rss_of() { awk '/^VmHWM:/ { print int($2 / 1024) }' "/proc/$1/status"; }

wait_line() {
    for _ in $(seq 1 200); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "no '$2' in $1" >&2
    cat "$1" >&2
    return 1
}

row() { # contender wall cpu rss
    awk -v c="$1" -v w="$2" -v cpu="$3" -v r="$4" -v b="$bytes" \
        'BEGIN { printf "| %s | %.2f s | %.0f MB/s | %.2f s | %s |\n", c, w, b / w / 1e6, cpu, r }'
}

copy() {
    local dst=$work/cp-dst
    rm -rf "$dst" && mkdir "$dst" && sync
    local timing
    timing=$({ /usr/bin/time -f '%e %U %S' bash -c "cp '$work/src.bin' '$dst/' && sync"; } 2>&1 | tail -1)
    read -r wall user sys <<<"$timing"
    row "cp + sync" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "-"
    rm -rf "$dst" && sync
}

trackshift() {
    local ts=${1:-$ts} label=${2:-trackshift}
    local data=$work/ts-$RANDOM dst=$work/ts-dst
    rm -rf "$dst" && mkdir "$dst" && sync
    local out=$data.out
    "$ts" serve --data-dir "$data" --listen 127.0.0.1:0 --default-dest "file://$dst" >"$out" 2>/dev/null &
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
        --token-file "$data/default.token" --dest "file://$dst" -q --out-dir "$data/docs" ${TRACKSHIFT_SEND_ARGS:-} >/dev/null; } 2>&1 | tail -1)
    local gcpu rss
    gcpu=$(awk -v a="$(cpu_of "$gw")" -v b="$before" 'BEGIN { print a - b }')
    rss=$(rss_of "$gw")
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    read -r wall user sys maxrss <<<"$timing"
    cmp -s "$work/src.bin" "$dst/src.bin" || { echo "trackshift's copy differs from the source" >&2; exit 1; }
    row "$label ${TRACKSHIFT_SEND_ARGS:-}" "$wall" "$(awk -v u="$user" -v s="$sys" -v g="$gcpu" 'BEGIN { print u + s + g }')" "$((maxrss / 1024)) / $rss MiB"
    rm -rf "$dst" "$data" && sync
}

echo "$size_mib MiB from the page cache to $(df --output=source "$work" | tail -1) ($(nproc) cores, $(date -u +%F)), $rounds rounds, alternating"
echo
echo "| contender | wall | speed | CPU (both sides) | resident, send / gateway |"
echo "|---|---|---|---|---|"
for _ in $(seq 1 "$rounds"); do
    copy
    trackshift
    if [ -n "${BASELINE:-}" ]; then trackshift "$BASELINE" "baseline"; fi
done
