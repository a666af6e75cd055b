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

# shellcheck source=scripts/measure-lib.sh
. "$root/scripts/measure-lib.sh"
start_work "$size_mib" "${WORK_DIR:-}"
sync

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
    local bin=${1:-$ts} label=${2:-trackshift} dst=$work/ts-dst
    rm -rf "$dst" && mkdir "$dst" && sync
    ts_send "$bin" "file://$dst"
    cmp -s "$work/src.bin" "$dst/src.bin" || { echo "trackshift's copy differs from the source" >&2; exit 1; }
    row "$label ${TRACKSHIFT_SEND_ARGS:-}" "$wall" "$(awk -v u="$user" -v s="$sys" -v g="$gcpu" 'BEGIN { print u + s + g }')" "$((maxrss / 1024)) / $grss MiB"
    rm -rf "$dst" && sync
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
