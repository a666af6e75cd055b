# Sourced by the side-by-side comparisons (compare-quinn.sh, compare-disk.sh): reading a
# process's CPU and memory, waiting for a child's line.
#
# cpu_of PID: CPU seconds (user + system) the process has used so far (/proc/PID/stat).
cpu_of() { awk '{ sub(/.*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"; }
# rss_of PID: its peak resident memory, in MiB.
rss_of() { awk '/^VmHWM:/ { print int($2 / 1024) }' "/proc/$1/status"; }
# wait_line FILE PATTERN: waits (10 s at most) until FILE has a line matching PATTERN.
wait_line() {
    for _ in $(seq 1 200); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "no '$2' in $1" >&2
    cat "$1" >&2
    return 1
}

# start_work SIZE_MIB [DIR]: a new $work directory (under DIR, default $TMPDIR or /tmp),
# removed on exit after every PID in $pids is stopped, holding SIZE_MIB of random bytes in
# $work/src.bin, read into the page cache; sets $bytes.
pids=()
start_work() {
    work=$(mktemp -d "${2:-${TMPDIR:-/tmp}}/compare.XXXXXX")
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
    bytes=$(($1 << 20))
    head -c "$bytes" /dev/urandom >"$work/src.bin"
    cat "$work/src.bin" >/dev/null # into the page cache
}

# ts_send BIN DEST [SRC]: `BIN serve` on 127.0.0.1 with DEST as its default destination,
# then `BIN send` of SRC (default $work/src.bin) to DEST (with $TRACKSHIFT_SEND_ARGS), then
# the gateway stopped. Sets wall, user, sys, maxrss (the sender's: seconds and KiB), gcpu and grss
# (the gateway's CPU seconds during the send and peak resident MiB).
ts_send() {
    local bin=$1 dest=$2 src=${3:-$work/src.bin} data=$work/ts-$RANDOM
    local out=$data.out
    "$bin" serve --data-dir "$data" --listen 127.0.0.1:0 --default-dest "$dest" >"$out" 2>/dev/null &
    local gw=$!
    pids+=("$gw")
    wait_line "$out" '^certificate fingerprint: '
    local addr fp before timing
    addr=$(sed -n 's/^gateway listening on \([^ ]*\).*/\1/p' "$out")
    fp=$(sed -n 's/^certificate fingerprint: //p' "$out")
    before=$(cpu_of "$gw")
    # shellcheck disable=SC2086 # TRACKSHIFT_SEND_ARGS is a list of options
    timing=$({ /usr/bin/time -f '%e %U %S %M' "$bin" send "$src" --to "$addr" --fingerprint "$fp" \
        --token-file "$data/default.token" --dest "$dest" -q --out-dir "$data/docs" ${TRACKSHIFT_SEND_ARGS:-} >/dev/null; } 2>&1 | tail -1)
    gcpu=$(awk -v a="$(cpu_of "$gw")" -v b="$before" 'BEGIN { print a - b }')
    grss=$(rss_of "$gw")
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    read -r wall user sys maxrss <<<"$timing"
    rm -rf "$data"
}
