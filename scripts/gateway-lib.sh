# Sourced by the benchmark scripts (needs $bin and $work).
#
# start_gateway [VAR=VALUE...]: starts `$bin serve` on 127.0.0.1 with its data in
# $work/gw and its environment the caller's plus the arguments (Garage's S3 settings in
# place of moto's, say, as an operator would configure one gateway per storage service),
# waits until it is up and sets gw_pid, addr and fp. A gateway this started before is
# stopped first.
gw_pid=
start_gateway() {
    if [ -n "$gw_pid" ]; then
        kill "$gw_pid" 2>/dev/null || true
        wait "$gw_pid" 2>/dev/null || true
    fi
    rm -rf "$work/gw"
    env "$@" "$bin" serve --data-dir "$work/gw" --listen 127.0.0.1:0 >"$work/gw.log" 2>&1 &
    gw_pid=$!
    for _ in $(seq 1 100); do
        grep -q "certificate fingerprint" "$work/gw.log" 2>/dev/null && break
        sleep 0.1
    done
    addr=$(sed -n 's/^gateway listening on \([^ ]*\).*/\1/p' "$work/gw.log")
    fp=$(sed -n 's/^certificate fingerprint: //p' "$work/gw.log")
    [ -n "$addr" ] && [ -n "$fp" ] || {
        echo "the gateway did not start; its log:" >&2
        tail -5 "$work/gw.log" >&2
        return 1
    }
}
