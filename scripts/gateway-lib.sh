# Sourced by the benchmark scripts (needs $bin and $work).
#
# start_gateway [VAR=VALUE...]: starts `$bin serve` on 127.0.0.1 with its data in
# $work/gw and its environment the caller's plus the arguments (Garage's S3 settings in
# place of moto's, say, as an operator would configure one gateway per storage service),
# waits until it is up and sets gw_pid, addr and fp. A gateway this started before is
# stopped first. The default tenant may write to every test server named in the
# environment (TRACKSHIFT_TEST_*: their settings, such as the host-key pin or the CA file,
# become the operator's rule) and to null://.
#
# job_dest URI SUB: what a job names for URI plus SUB: the path only (the settings in the
# query stay the operator's).
job_dest() { printf '%s/%s' "${1%%\?*}" "$2"; }
gw_pid=
start_gateway() {
    if [ -n "$gw_pid" ]; then
        kill "$gw_pid" 2>/dev/null || true
        wait "$gw_pid" 2>/dev/null || true
    fi
    rm -rf "$work/gw"
    local allow=(--default-dest null://) var
    for var in TRACKSHIFT_TEST_S3 TRACKSHIFT_TEST_GARAGE TRACKSHIFT_TEST_AZURE \
        TRACKSHIFT_TEST_SFTP TRACKSHIFT_TEST_FTPS; do
        [ -n "${!var:-}" ] && allow+=(--default-dest "${!var}")
    done
    env "$@" "$bin" serve --data-dir "$work/gw" --listen 127.0.0.1:0 "${allow[@]}" \
        >"$work/gw.log" 2>&1 &
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
