#!/usr/bin/env bash
# Independent auditor check: artifacts made by the trackshift binary are verified by
# tests/independent/verify.py, a verifier written from docs/FORMATS.md alone on third-party
# crypto libraries; tampered artifacts must be rejected by both.
#
# Usage: bash tests/independent/run.sh PATH/TO/trackshift
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
[ -x "$bin" ] || { echo "not an executable: $1" >&2; exit 2; }

# Python environment, rebuilt only when requirements.txt changes.
venv="$root/target/independent-venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi
py="$venv/bin/python"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "  ok: $*"; }
bad() { failed=$((failed + 1)); echo "  FAILED: $*"; }

# expect STATUS DESCRIPTION -- ARGS: both verifiers must exit with STATUS (0 valid, 1 rejected;
# "malformed" = the independent verifier rejects (1) and trackshift reports malformed input (2)).
expect() {
    local want="$1" what="$2"
    shift 3
    local py_rc=0 ts_rc=0
    "$py" "$here/verify.py" "$@" > py.out 2>&1 || py_rc=$?
    "$bin" verify "$@" > ts.out 2>&1 || ts_rc=$?
    local want_py="$want" want_ts="$want"
    if [ "$want" = malformed ]; then want_py=1; want_ts=2; fi
    if [ "$py_rc" = "$want_py" ] && [ "$ts_rc" = "$want_ts" ]; then
        ok "$what"
    else
        bad "$what (independent verifier exit $py_rc, trackshift exit $ts_rc, expected $want)"
        sed 's/^/      py: /' py.out
        sed 's/^/      ts: /' ts.out
    fi
}

# edit IN OUT PYTHON-EXPR: rewrite a JSON document (variable d) with a Python statement.
edit() {
    "$py" - "$1" "$2" "$3" <<'PY'
import base64, json, sys
src, dst, stmt = sys.argv[1:]
d = json.load(open(src))
def flip(b64, i=0):
    raw = bytearray(base64.b64decode(b64)); raw[i] ^= 1
    return base64.b64encode(bytes(raw)).decode()
def other_hash(h):
    return ("0" if h[0] != "0" else "1") + h[1:]
exec(stmt)
json.dump(d, open(dst, "w"), indent=2)
PY
}

echo "==> producing artifacts with $bin"
mkdir -p data/nested/deeper
: > data/empty.bin
printf 'hello, auditor\n' > data/hello.txt
"$py" -c "import sys; sys.stdout.buffer.write(bytes((i * 7 + i // 251) % 256 for i in range(5000)))" > data/nested/five-chunks.bin
"$py" -c "import sys; sys.stdout.buffer.write(bytes((i * 13) % 256 for i in range(40000)))" > data/nested/deeper/wide.bin
"$bin" keys init --dir keys > /dev/null
"$bin" manifest create data --out m1.json --chunk-size 1KiB --tenant acme --dest file:///backup --keys keys > /dev/null
"$bin" keys rotate --dir keys --purpose manifest > /dev/null
"$bin" manifest create data --out m2.json --chunk-size 4KiB --tenant acme --keys keys > /dev/null
"$bin" keys export-public --dir keys --out pub.json > /dev/null
"$bin" demo --dir demo --size 1MiB --files 3 --chunk-size 64KiB > demo.out
dm="$(find demo/receipts -name manifest.json | head -1)"
dr="$(find demo/receipts -name receipt.json | head -1)"
dk=demo/public-keys.json

echo "==> valid artifacts verify"
expect 0 "manifest, 1 KiB chunks, data re-hashed" -- --public-keys pub.json --data data m1.json
expect 0 "manifest signed with the rotated key, 4 KiB chunks" -- --public-keys pub.json --data data m2.json
expect 0 "gateway manifest from a QUIC transfer" -- --public-keys "$dk" --data demo/destination "$dm"
expect 0 "gateway receipt bound to its manifest" -- --public-keys "$dk" --manifest "$dm" "$dr"

echo "==> tampered artifacts are rejected"
edit m1.json t.json 'd["signature"]["value"] = flip(d["signature"]["value"], 100)'
expect 1 "flipped signature bit" -- --public-keys pub.json t.json
edit m1.json t.json 'd["tenant"] = "mallory"'
expect 1 "changed tenant" -- --public-keys pub.json t.json
edit m1.json t.json 'd["files"][1]["size"] += 1'
expect 1 "changed file size" -- --public-keys pub.json t.json
edit m1.json t.json 'd["files"][2]["chunks"][3] = other_hash(d["files"][2]["chunks"][3])'
expect 1 "changed chunk hash" -- --public-keys pub.json t.json
edit m1.json t.json 'd["signature"]["signed_at"] = "2001-01-01T00:00:00Z"'
expect 1 "signing time outside the key window" -- --public-keys pub.json t.json
edit m1.json t.json 'd["extra"] = 1'
expect malformed "unknown field" -- --public-keys pub.json t.json
cp -r data data2
printf 'X' | dd of=data2/nested/five-chunks.bin bs=1 seek=3000 conv=notrunc status=none
expect 1 "one data byte changed" -- --public-keys pub.json --data data2 m1.json
edit "$dr" t.json 'd["bytes"] += 1'
expect 1 "receipt bytes changed" -- --public-keys "$dk" t.json
edit "$dr" t.json 'd["signature"]["value"] = flip(d["signature"]["value"], 63)'
expect 1 "receipt signature bit flipped" -- --public-keys "$dk" t.json
expect 1 "receipt checked against another manifest" -- --public-keys "$dk" --manifest m1.json "$dr"
expect 1 "manifest verified with the wrong key file" -- --public-keys "$dk" m1.json

echo "==> revocation"
old="$("$py" -c 'import json,sys; print(json.load(open("m1.json"))["signature"]["key_id"])')"
"$bin" keys revoke --dir keys --key-id "$old" > /dev/null
"$bin" keys export-public --dir keys --out pub2.json > /dev/null
expect 1 "manifest signed with a revoked key" -- --public-keys pub2.json m1.json
expect 0 "manifest signed with the new key still verifies" -- --public-keys pub2.json m2.json

echo
echo "${passed} passed, ${failed} failed"
[ "$failed" = 0 ]
