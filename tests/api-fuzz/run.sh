#!/usr/bin/env bash
# Property-based fuzzing of the job API with Schemathesis, driven by the OpenAPI document
# the gateway serves. A real `trackshift serve --http` runs on 127.0.0.1 with one tenant;
# a copy of the document pins `source` and the destinations to values that tenant may use,
# so generated requests also create real jobs and the stateful phase follows the links
# (get, cancel, retry, manifest, receipts, events) on them. The operator endpoints
# (/health, /ready, /metrics, /dashboard) are called with the gateway's operator key, the
# rest with the tenant's. Fails on any 5xx, any response
# that does not match the document, and any invalid request that is accepted.
#
# Usage: tests/api-fuzz/run.sh TRACKSHIFT_BINARY [SECONDS]
# FUZZ_ARGS adds Schemathesis options (for example `--seed N` to replay a run);
# FUZZ_TAIL sets how many lines of its report are shown (default 40).
set -euo pipefail
BIN=$(realpath "$1")
SECONDS_BUDGET=${2:-60}
ST_VERSION=4.32.5
CACHE=${TRACKSHIFT_CACHE:-$HOME/.cache/trackshift-test-servers}
VENV=$CACHE/fuzz-venv
if [ ! -x "$VENV/bin/st" ] || [ ! -f "$VENV/.st-$ST_VERSION" ]; then
    echo "installing schemathesis $ST_VERSION (PyPI) into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
    touch "$VENV/.st-$ST_VERSION"
fi

WORK=$(mktemp -d)
GW_PID=
cleanup() {
    if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/src" "$WORK/gw"
echo "fuzz source" >"$WORK/src/data.txt"
KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
python3 - "$WORK" "$KEY" <<'PYEOF'
import hashlib, json, os, sys
work, key = sys.argv[1], sys.argv[2]
tenants = {"tenants": [{
    "tenant": "fuzz",
    "api_keys": [hashlib.sha256(key.encode()).hexdigest()],
    "sources": [work + "/src"],
    "destinations": [{"prefix": "null://"}],
}]}
path = work + "/gw/tenants.json"  # owner-only, as the gateway requires
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.fchmod(fd, 0o600)
os.write(fd, json.dumps(tenants).encode())
os.close(fd)
PYEOF
"$BIN" serve --data-dir "$WORK/gw" --listen 127.0.0.1:0 --http 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.log" &
GW_PID=$!
URL=
for _ in $(seq 1 100); do
    URL=$(grep -o 'http://[0-9.:]*' "$WORK/serve.out" | head -1 || true)
    [ -n "$URL" ] && break
    sleep 0.1
done
[ -n "$URL" ] || { echo "the gateway did not start:"; cat "$WORK/serve.log"; exit 1; }
curl -sf "$URL/v1/openapi.json" >"$WORK/openapi.json"
python3 - "$WORK" <<'PYEOF'
import json, re, sys
work = sys.argv[1]
doc = json.load(open(work + "/openapi.json"))
props = doc["components"]["schemas"]["JobSpec"]["properties"]
# Exactly what the tenant may use, as patterns: generated values that match can create
# jobs; values that do not match must be refused.
props["source"]["pattern"] = "^" + re.escape(work + "/src") + "(/[^/]+)*$"
props["destinations"]["items"]["pattern"] = "^null://"
json.dump(doc, open(work + "/openapi-fuzz.json", "w"))
PYEOF
OPERATOR_KEY=$(tr -d '\n' <"$WORK/gw/operator.key")
# An invalid request refused as too large (413) is refused all the same.
cat >"$WORK/schemathesis.toml" <<TOML
headers = { Authorization = "Bearer $KEY" }

[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]

[[operations]]
include-path-regex = "^/(health|ready|metrics|dashboard)\$"
headers = { Authorization = "Bearer $OPERATOR_KEY" }
TOML
cd "$WORK"
fuzz() {
    "$VENV/bin/st" run "$WORK/openapi-fuzz.json" --url "$URL" \
        --checks all --exclude-checks positive_data_acceptance \
        --max-time "$SECONDS_BUDGET" --workers 2 --no-color \
        --request-timeout 30 --request-retries 3 ${FUZZ_ARGS:-} >"$WORK/st.out" 2>&1
}
set +e
fuzz
status=$?
# A run whose only problems are Schemathesis's own runtime errors (a network hiccup on a
# loaded machine, an internal error; no check failed) is shown, then run once more; a failed
# check is never retried.
if [ "$status" -ne 0 ] && grep -q 'Runtime Error' "$WORK/st.out" && ! grep -q -E '^Failures:|FAILURES' "$WORK/st.out"; then
    echo "Schemathesis reported runtime errors only; its report:"
    cat "$WORK/st.out"
    echo "running it once more"
    fuzz
    status=$?
fi
tail -n "${FUZZ_TAIL:-40}" "$WORK/st.out"
if [ "$status" -ne 0 ]; then
    echo "the whole Schemathesis report:"
    cat "$WORK/st.out"
fi
set -e
if grep -q '"level":"ERROR"' "$WORK/serve.log" || grep -q panicked "$WORK/serve.log"; then
    echo "the gateway logged errors during fuzzing:"; grep -E '"level":"ERROR"|panicked' "$WORK/serve.log" | head -20
    exit 1
fi
exit "$status"
