#!/usr/bin/env bash
# Many small files: Trackshift writing a tree of COUNT files of SIZE_KIB each to local disk,
# against `rclone copy` of the same tree to the same disk plus a final `sync`, alternating,
# so that a shared or noisy machine treats both alike (BENCHMARKS.md, issue 15's target:
# Trackshift at 1.5x rclone's files/s or better, for 20,000 x 4 KiB and 2,000 x 256 KiB).
#
#   scripts/compare-small.sh [COUNT] [SIZE_KIB] [ROUNDS]   (default 20000 files, 4 KiB, 3 rounds)
#
# TRACKSHIFT_SEND_ARGS adds options to `trackshift send`, RCLONE_ARGS to `rclone copy`.
# WORK_DIR picks the disk (default: a new directory under $TMPDIR or /tmp). BASELINE=/path
# to an older trackshift adds it as a third contender (a before-and-after in the same run).
# rclone comes from Debian's package when it is missing.
#
# The tree (directories of at most 1,000 files) is in the page cache; each contender writes
# it into an empty directory and is done when the files are durable: rclone then `sync`;
# `trackshift send` to a `file://` destination at a `trackshift serve` gateway on 127.0.0.1,
# which acknowledges a chunk only once it is synced, commits each file by an fsynced rename
# and ends with the signed receipt. Each copy is compared with the source.
set -euo pipefail

count=${1:-20000}
size_kib=${2:-4}
rounds=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v rclone >/dev/null; then
    echo "installing rclone from Debian's packages" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq rclone >/dev/null; else sudo apt-get install -y -qq rclone >/dev/null; fi
fi
cargo build --release --quiet --bin trackshift
target=${CARGO_TARGET_DIR:-$root/target}
ts=$target/release/trackshift

# shellcheck source=scripts/measure-lib.sh
. "$root/scripts/measure-lib.sh"
start_work 0 "${WORK_DIR:-}"
src=$work/tree
left=$count d=0
while [ "$left" -gt 0 ]; do
    n=$((left < 1000 ? left : 1000))
    mkdir -p "$src/d$d"
    head -c $((n * size_kib * 1024)) /dev/urandom | split -b $((size_kib * 1024)) -d -a 4 - "$src/d$d/f"
    left=$((left - n)) d=$((d + 1))
done
cat "$src"/*/* >/dev/null # into the page cache
bytes=$((count * size_kib * 1024))
sync

row() { # contender wall cpu rss
    awk -v c="$1" -v w="$2" -v cpu="$3" -v r="$4" -v n="$count" -v b="$bytes" \
        'BEGIN { printf "| %s | %.2f s | %.0f files/s | %.1f MB/s | %.2f s | %s |\n", c, w, n / w, b / w / 1e6, cpu, r }'
}

same() { # DIR: the copy holds exactly the source's files and bytes
    diff -rq "$src" "$1" >/dev/null || { echo "$2's copy differs from the source" >&2; exit 1; }
}

# Every copy goes to a directory of its own, removed only at the end: ext4 without a
# journal passes over inodes freed in the last seconds when it allocates new ones, so a
# contender writing just after another's copy was removed would pay for that removal.
copy() {
    local dst=$work/rclone-dst-$1
    mkdir "$dst" && sync
    local timing
    # shellcheck disable=SC2086 # RCLONE_ARGS is a list of options
    timing=$({ /usr/bin/time -f '%e %U %S %M' bash -c "rclone copy ${RCLONE_ARGS:-} '$src' '$dst' && sync"; } 2>&1 | tail -1)
    read -r wall user sys maxrss <<<"$timing"
    same "$dst" rclone
    row "rclone copy ${RCLONE_ARGS:-}+ sync" "$wall" "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "$((maxrss / 1024)) MiB"
}

trackshift() {
    local bin=$2 label=$3 dst=$work/$3-dst-$1
    mkdir "$dst" && sync
    ts_send "$bin" "file://$dst" "$src"
    same "$dst" "$label"
    row "$label ${TRACKSHIFT_SEND_ARGS:-}" "$wall" "$(awk -v u="$user" -v s="$sys" -v g="$gcpu" 'BEGIN { print u + s + g }')" "$((maxrss / 1024)) / $grss MiB"
}

echo "$count files of $size_kib KiB from the page cache to $(df --output=source "$work" | tail -1) ($(nproc) cores, $(date -u +%F), $(rclone version | head -1)), $rounds rounds, alternating"
echo
echo "| contender | wall | files/s | speed | CPU (all processes) | resident |"
echo "|---|---|---|---|---|---|"
for r in $(seq 1 "$rounds"); do
    copy "$r"
    trackshift "$r" "$ts" trackshift
    if [ -n "${BASELINE:-}" ]; then trackshift "$r" "$BASELINE" baseline; fi
done
