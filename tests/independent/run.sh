#!/usr/bin/env bash
# Independent auditor check: artifacts made by the trackshift binary are verified by
# tests/independent/verify.py, a verifier written from docs/FORMATS.md alone on third-party
# crypto libraries; tampered artifacts must be rejected by both.
#
# Usage: bash tests/independent/run.sh PATH/TO/trackshift
set -euo pipefail

[ $# = 1 ] || { echo "usage: bash tests/independent/run.sh PATH/TO/trackshift" >&2; exit 2; }
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
    if ! python3 -m venv "$venv"; then
        echo "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        rm -rf "$venv"
        exit 2
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
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

# reason: why the independent verifier rejected (first REJECTED line, file name dropped).
reason() { grep -m1 '^REJECTED' py.out | sed 's/^REJECTED [^:]*: //' || true; }

# expect STATUS DESCRIPTION -- ARGS: both verifiers must exit with STATUS (0 valid, 1 rejected;
# "malformed" = the independent verifier rejects (1) and trackshift reports malformed input (2)).
# The independent verifier gets all FILE arguments at once; trackshift verify takes one.
expect() {
    local want="$1" what="$2"
    shift 3
    local py_rc=0 ts_rc=0
    "$py" "$here/verify.py" "$@" > py.out 2>&1 || py_rc=$?
    "$bin" verify "$@" > ts.out 2>&1 || ts_rc=$?
    local want_py="$want" want_ts="$want"
    if [ "$want" = malformed ]; then want_py=1; want_ts=2; fi
    if [ "$py_rc" = "$want_py" ] && [ "$ts_rc" = "$want_ts" ]; then
        if [ "$want" = 0 ]; then ok "$what"; else ok "$what -- $(reason)"; fi
    else
        bad "$what (independent verifier exit $py_rc, trackshift exit $ts_rc, expected $want)"
        sed 's/^/      py: /' py.out
        sed 's/^/      ts: /' ts.out
    fi
}

# expect_py STATUS DESCRIPTION -- ARGS: the independent verifier alone (several FILEs at once).
expect_py() {
    local want="$1" what="$2"
    shift 3
    local py_rc=0
    "$py" "$here/verify.py" "$@" > py.out 2>&1 || py_rc=$?
    if [ "$py_rc" = "$want" ]; then
        if [ "$want" = 0 ]; then ok "$what"; else ok "$what -- $(reason)"; fi
    else
        bad "$what (independent verifier exit $py_rc, expected $want)"
        sed 's/^/      py: /' py.out
    fi
}

# pyrun SCRIPT ARGS...: Python with verify.py importable (for building test inputs only).
pyrun() { PYTHONPATH="$here" "$py" - "$@"; }

# edit IN OUT PYTHON-STATEMENT: rewrite a JSON document (variable d) with a Python statement.
edit() {
    pyrun "$1" "$2" "$3" <<'PY'
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

field() { "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); exec("print(" + sys.argv[2] + ")")' "$1" "$2"; }

# unsigned_receipt MANIFEST OUT STATUS [JSON-EXTRA]: a receipt for MANIFEST, from FORMATS.md 5.
# manifest_hash is the document hash computed by the independent verifier.
unsigned_receipt() {
    pyrun "$@" <<'PY'
import json, sys, verify
mpath, out, status = sys.argv[1:4]
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
m = json.load(open(mpath))
total = sum(f["size"] for f in m["files"])
r = {
    "format": "trackshift.receipt.v1",
    "job_id": m["job_id"],
    "tenant": m["tenant"],
    "manifest_hash": verify.document_hash(m, verify.manifest_body(m)).hex(),
    "destination": m["destinations"][0] if m["destinations"] else "file:///mnt/backup",
    "bytes": total,
    "confirmation": {"size": total, "blake3": m["root_hash"]},
    "status": status,
    "completed_at": m["created_at"],
}
r.update(extra)
json.dump(r, open(out, "w"), indent=2)
PY
}

# resign IN OUT KEYDIR PUBKEYS PYTHON-STATEMENT: edit a signed document (variable d) and sign it
# again, in Python, with the secret seed of the key that signed it (FORMATS.md 7), so that the
# verifiers' document rules are exercised behind a valid signature. fix_root(d) recomputes
# root_hash (4.2). Also checks that the seed yields the exported public key.
resign() {
    pyrun "$@" <<'PY'
import base64, json, sys, blake3, verify
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dilithium_py.ml_dsa import ML_DSA_65
src, dst, keydir, pubkeys, stmt = sys.argv[1:]
d = json.load(open(src))
def other_hash(h):
    return ("0" if h[0] != "0" else "1") + h[1:]
def fix_root(m):
    m["root_hash"] = blake3.blake3(verify.s("trackshift.manifest.files.v1")
                                   + verify.lst(m["files"], verify.file_entry)).hexdigest()
exec(stmt)
key_id = d["signature"]["key_id"]
secret = json.load(open(f"{keydir}/secret/{key_id}.json"))
seed = base64.b64decode(secret["seed"])
public = next(base64.b64decode(k["public_key"]) for k in json.load(open(pubkeys))["keys"] if k["id"] == key_id)
body = verify.manifest_body(d) if d["format"] == "trackshift.manifest.v1" else verify.receipt_body(d)
_, message, _ = verify.signed_parts(d, body)
if secret["algorithm"] == "ML-DSA-65":
    pk, sk = ML_DSA_65._keygen_internal(seed)
    sig = ML_DSA_65.sign(sk, message, ctx=b"")
else:
    sk = Ed25519PrivateKey.from_private_bytes(seed)
    pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = sk.sign(message)
if pk != public:
    sys.exit(f"FORMATS.md 7: the {secret['algorithm']} seed of {key_id} does not give its public key")
d["signature"]["value"] = base64.b64encode(sig).decode()
json.dump(d, open(dst, "w"), indent=2)
PY
}

echo "==> producing artifacts with $bin"
mkdir -p data/nested/deeper
: > data/empty.bin
printf 'hello, auditor\n' > data/hello.txt
printf 'upper case sorts first in byte order\n' > data/Zed.txt
printf 'non-ASCII path\n' > "data/nested/h$(printf '\xc3\xa9')llo.txt"
"$py" -c "import sys; sys.stdout.buffer.write(bytes((i * 7 + i // 251) % 256 for i in range(5000)))" > data/nested/five-chunks.bin
"$py" -c "import sys; sys.stdout.buffer.write(bytes((i * 13) % 256 for i in range(40000)))" > data/nested/deeper/wide.bin
"$py" -c "import sys; sys.stdout.buffer.write(bytes(range(256)) * 8)" > data/exact-2k.bin
"$py" -c "import sys; sys.stdout.buffer.write(b'x' * 1025)" > data/one-byte-over.bin

"$bin" keys init --dir keys > /dev/null
"$bin" manifest create data --out m1.json --chunk-size 1KiB --tenant acme \
    --dest file:///backup/a --dest s3://bucket/prefix > /dev/null
"$bin" manifest sign --keys keys m1.json > /dev/null
unsigned_receipt m1.json r1.json confirmed \
    '{"confirmation": {"size": 0, "etag": "\"9b2cf535f27731c974343645a3985328\""}, "correlation_id": "req-42"}'
edit r1.json r1.json 'd["confirmation"]["size"] = d["bytes"]; d["confirmation"]["blake3"] = json.load(open("m1.json"))["root_hash"]'
"$bin" receipt sign --keys keys r1.json > /dev/null
unsigned_receipt m1.json r1-failed.json failed \
    '{"bytes": 123, "confirmation": {"size": 0}, "detail": "connection reset by peer"}'
"$bin" receipt sign --keys keys r1-failed.json > /dev/null
unsigned_receipt m1.json r1-unconfirmed.json unconfirmed '{"confirmation": {"size": 7}}'
"$bin" receipt sign --keys keys r1-unconfirmed.json > /dev/null

# Second generation of keys: both purposes rotated; the first keys become retired.
"$bin" keys rotate --dir keys --purpose manifest > /dev/null
"$bin" keys rotate --dir keys --purpose receipt > /dev/null
"$bin" manifest create data --out m2.json --chunk-size 4KiB --tenant acme --job-id job-2 > /dev/null
"$bin" manifest sign --keys keys m2.json --out m2s.json > /dev/null
unsigned_receipt m2s.json r2.json confirmed
"$bin" receipt sign --keys keys r2.json --out r2s.json > /dev/null
"$bin" keys export-public --dir keys --out pub.json > /dev/null

# A manifest and receipt made by the gateway during a real (loopback QUIC) transfer.
"$bin" demo --dir demo --size 1MiB --files 3 --chunk-size 64KiB > demo.out 2>&1
dm="$(find demo/receipts -name manifest.json | head -1)"
dr="$(find demo/receipts -name receipt.json | head -1)"
dk=demo/public-keys.json

m1_key="$(field m1.json 'd["signature"]["key_id"]')"
m2_key="$(field m2s.json 'd["signature"]["key_id"]')"
r1_key="$(field r1.json 'd["signature"]["key_id"]')"
r2_key="$(field r2s.json 'd["signature"]["key_id"]')"
[ "$m1_key" != "$m2_key" ] && [ "$r1_key" != "$r2_key" ] || { echo "rotation did not change keys" >&2; exit 1; }

echo "==> valid artifacts verify"
expect 0 "manifest, 1 KiB chunks (multi-chunk, exact-multiple, 1025-byte, empty, nested, UTF-8 paths), data re-hashed" -- --public-keys pub.json --data data m1.json
expect 0 "manifest signed with the rotated key, 4 KiB chunks, data re-hashed" -- --public-keys pub.json --data data m2s.json
expect 0 "confirmed receipt with etag, blake3 and correlation id, bound to its manifest" -- --public-keys pub.json --manifest m1.json r1.json
expect 0 "failed receipt with detail" -- --public-keys pub.json --manifest m1.json r1-failed.json
expect 0 "unconfirmed receipt, optional fields absent" -- --public-keys pub.json --manifest m1.json r1-unconfirmed.json
expect 0 "receipt signed with the rotated key, bound to its manifest" -- --public-keys pub.json --manifest m2s.json r2s.json
expect 0 "gateway manifest from a QUIC transfer" -- --public-keys "$dk" --data demo/destination "$dm"
# Gateway receipts carry a C2SP tlog-proof of their ledger entry (FORMATS.md section 8):
# checkpoint signed Ed25519 and co-signed ML-DSA-44, RFC 9162 inclusion proof.
expect 0 "gateway receipt with its ledger proof, bound to its manifest" -- --public-keys "$dk" --manifest "$dm" "$dr"
# The proof is not signed, so it can be stripped: a key file that names a ledger wants it
# (FORMATS.md 5.3); without the ledger member the receipt is an ordinary signed receipt.
edit "$dr" dr-noproof.json 'd["ledger_proof"] = None'
expect 1 "gateway receipt stripped of its ledger proof, key file names the ledger" -- --public-keys "$dk" --manifest "$dm" dr-noproof.json
edit "$dk" dk-noledger.json 'del d["ledger"]'
expect 0 "the same receipt against a key file without the ledger member" -- --public-keys dk-noledger.json --manifest "$dm" dr-noproof.json
edit r1-unconfirmed.json t.json 'd["detail"] = None; d["correlation_id"] = None; d["ledger_proof"] = None; d["confirmation"]["etag"] = None'
expect 0 "optional fields given as null" -- --public-keys pub.json t.json
expect_py 0 "several files in one run" -- --public-keys pub.json m1.json m2s.json r1.json r2s.json

echo "==> tampered manifests are rejected"
edit m1.json t.json 'd["signature"]["value"] = flip(d["signature"]["value"], 100)'
expect 1 "flipped signature bit" -- --public-keys pub.json t.json
edit m1.json t.json 'd["tenant"] = "mallory"'
expect 1 "changed tenant" -- --public-keys pub.json t.json
edit m1.json t.json 'd["job_id"] += "x"'
expect 1 "changed job id" -- --public-keys pub.json t.json
edit m1.json t.json 'd["destinations"].append("s3://attacker/")'
expect 1 "added destination" -- --public-keys pub.json t.json
edit m1.json t.json 'd["created_at"] = "2001-01-01T00:00:00Z"'
expect 1 "changed creation time" -- --public-keys pub.json t.json
edit m1.json t.json 'd["files"][1]["size"] += 1'
expect 1 "changed file size" -- --public-keys pub.json t.json
f5="$(field m1.json '[i for i, f in enumerate(d["files"]) if f["path"] == "nested/five-chunks.bin"][0]')"
edit m1.json t.json "d['files'][$f5]['chunks'][3] = other_hash(d['files'][$f5]['chunks'][3])"
expect 1 "changed chunk hash" -- --public-keys pub.json t.json
edit m1.json t.json "c = d['files'][$f5]['chunks']; c[1], c[2] = c[2], c[1]"
expect 1 "two chunk hashes swapped" -- --public-keys pub.json t.json
edit m1.json t.json 'd["root_hash"] = other_hash(d["root_hash"])'
expect 1 "changed root hash" -- --public-keys pub.json t.json
edit m1.json t.json 'd["signature"]["signed_at"] = "2001-01-01T00:00:00Z"'
expect 1 "signing time outside the key window" -- --public-keys pub.json t.json
edit m1.json t.json "d['signature']['key_id'] = '$m2_key'"
expect 1 "signature attributed to the other manifest key" -- --public-keys pub.json t.json
edit m1.json t.json "d['signature']['key_id'] = '$r1_key'"
expect 1 "signature attributed to a receipt key" -- --public-keys pub.json t.json
edit m1.json t.json 'd["signature"]["algorithm"] = "Ed25519"'
expect 1 "algorithm changed" -- --public-keys pub.json t.json
expect 1 "manifest verified with the wrong key file" -- --public-keys "$dk" m1.json
edit m1.json t.json 'd["extra"] = 1'
expect malformed "unknown field" -- --public-keys pub.json t.json
"$py" - m1.json t.json <<'PY'
import sys
text = open(sys.argv[1]).read()
open(sys.argv[2], "w").write(text.replace('"tenant": "acme",', '"tenant": "mallory", "tenant": "acme",', 1))
PY
expect malformed "duplicate field (another reader could see the first value)" -- --public-keys pub.json t.json
edit m1.json t.json 'del d["signature"]'
expect_py 1 "unsigned manifest" -- --public-keys pub.json t.json

echo "==> changed data is detected"
cp -r data data2
printf 'X' | dd of=data2/nested/five-chunks.bin bs=1 seek=3000 conv=notrunc status=none
expect 1 "one data byte changed" -- --public-keys pub.json --data data2 m1.json
rm -rf data2 && cp -r data data2 && printf 'Y' >> data2/hello.txt
expect 1 "one byte appended" -- --public-keys pub.json --data data2 m1.json
rm -rf data2 && cp -r data data2 && rm data2/empty.bin
expect 1 "a file missing" -- --public-keys pub.json --data data2 m1.json

echo "==> tampered receipts are rejected"
edit r1.json t.json 'd["signature"]["value"] = flip(d["signature"]["value"], 63)'
expect 1 "receipt signature bit flipped" -- --public-keys pub.json t.json
edit r1.json t.json 'd["bytes"] += 1; d["confirmation"]["size"] += 1'
expect 1 "receipt bytes changed" -- --public-keys pub.json t.json
edit r1.json t.json 'd["tenant"] = "mallory"'
expect 1 "receipt tenant changed" -- --public-keys pub.json t.json
edit r1-failed.json t.json 'd["status"] = "unconfirmed"'
expect 1 "receipt status changed" -- --public-keys pub.json t.json
edit r1.json t.json 'del d["confirmation"]["etag"]'
expect 1 "optional etag removed" -- --public-keys pub.json t.json
edit r1-unconfirmed.json t.json 'd["detail"] = ""'
expect 1 "optional detail added (empty)" -- --public-keys pub.json t.json
edit r1.json t.json 'd["manifest_hash"] = other_hash(d["manifest_hash"])'
expect 1 "receipt manifest hash changed" -- --public-keys pub.json t.json
edit r1.json t.json "d['signature']['key_id'] = '$m1_key'"
expect 1 "receipt attributed to a manifest key" -- --public-keys pub.json t.json
expect 1 "receipt checked against another manifest" -- --public-keys pub.json --manifest m2s.json r1.json
expect 1 "gateway receipt checked against a local manifest" -- --public-keys "$dk" --manifest m1.json "$dr"
edit r1.json t.json 'd["ledger_proof"] = "trackshift.example/log\n1\nAAAA\n"'
expect malformed "receipt carrying a malformed ledger proof" -- --public-keys pub.json t.json

echo "==> tampered ledger proofs are rejected (FORMATS.md section 8)"
# lp(d) / set_lp(d, lines): the proof's lines.
edit "$dr" t.json 'L = d["ledger_proof"].split("\n"); L[2] = flip(L[2], 5); d["ledger_proof"] = "\n".join(L)'
expect 1 "a proof hash changed" -- --public-keys "$dk" t.json
edit "$dr" t.json 'L = d["ledger_proof"].split("\n"); n = int(L[1].split()[1]); L[1] = "index %d" % (n ^ 1); d["ledger_proof"] = "\n".join(L)'
expect 1 "the proof names the neighbouring entry" -- --public-keys "$dk" t.json
edit "$dr" t.json 'L = d["ledger_proof"].split("\n"); i = L.index(""); L[i + 2] = str(int(L[i + 2]) + 1); d["ledger_proof"] = "\n".join(L)'
expect 1 "the checkpoint's tree size changed (signatures break)" -- --public-keys "$dk" t.json
edit "$dr" t.json 'L = d["ledger_proof"].split("\n"); d["ledger_proof"] = "\n".join(l for l in L if "/mldsa44 " not in l)'
expect 1 "the ML-DSA-44 cosignature removed" -- --public-keys "$dk" t.json
edit "$dk" t-keys.json 'del d["ledger"]'
expect malformed "a key file without the ledger keys" -- --public-keys t-keys.json "$dr"
edit r1.json t.json 'v = d["signature"]["value"]; a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"; d["signature"]["value"] = v[:-3] + a[a.index(v[-3]) ^ 1] + "=="'
expect malformed "non-canonical base64 (same signature bytes)" -- --public-keys pub.json t.json

# Ed25519 strictness (FORMATS.md 2.1), with forgeries only a lax verifier accepts.
pyrun r1.json t-s.json <<'PY'
import base64, json, sys, verify
r = json.load(open(sys.argv[1]))
raw = base64.b64decode(r["signature"]["value"])
s = int.from_bytes(raw[32:], "little") + verify.ED_L  # same signature, S not reduced
r["signature"]["value"] = base64.b64encode(raw[:32] + s.to_bytes(32, "little")).decode()
json.dump(r, open(sys.argv[2], "w"))
PY
expect 1 "Ed25519 S + L (non-canonical S)" -- --public-keys pub.json t-s.json
pyrun r1.json "keys/secret/$r1_key.json" pub.json t-r.json <<'PY'
# Small-order R: R = identity, S = k*a mod L satisfies the cofactorless equation [S]B = R + [k]A.
import base64, hashlib, json, sys, verify
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
r = json.load(open(sys.argv[1]))
seed = base64.b64decode(json.load(open(sys.argv[2]))["seed"])
pk = next(base64.b64decode(k["public_key"]) for k in json.load(open(sys.argv[3]))["keys"]
          if k["id"] == r["signature"]["key_id"])
h = bytearray(hashlib.sha512(seed).digest()[:32]); h[0] &= 248; h[31] &= 127; h[31] |= 64
a = int.from_bytes(h, "little")
R = (1).to_bytes(32, "little")
_, message, _ = verify.signed_parts(r, verify.receipt_body(r))
k = int.from_bytes(hashlib.sha512(R + pk + message).digest(), "little") % verify.ED_L
sig = R + (k * a % verify.ED_L).to_bytes(32, "little")
try:
    Ed25519PublicKey.from_public_bytes(pk).verify(sig, message)
    print("  (note: OpenSSL alone accepts the small-order-R forgery; verify.py must refuse it)")
except Exception:
    pass
r["signature"]["value"] = base64.b64encode(sig).decode()
json.dump(r, open(sys.argv[4], "w"))
PY
expect 1 "Ed25519 small-order R" -- --public-keys pub.json t-r.json

echo "==> re-signed documents that break the document rules are rejected"
# trackshift exits 1 for hash mismatches and 2 ("malformed") for the other rules of 4.4 / 5.2,
# except a confirmed receipt whose confirmation.size differs from bytes, which exits 1.
resign m1.json t.json keys pub.json 'pass'
expect 0 "control: manifest re-signed by the verifier's own ML-DSA-65 signer (seed from FORMATS.md 7)" -- --public-keys pub.json --data data t.json
resign r1.json t.json keys pub.json 'pass'
expect 0 "control: receipt re-signed by the verifier's own Ed25519 signer" -- --public-keys pub.json --manifest m1.json t.json
resign m1.json t.json keys pub.json "d['files'][$f5]['chunks'][3] = other_hash(d['files'][$f5]['chunks'][3]); fix_root(d)"
expect 1 "chunk hash changed (root recomputed, re-signed): chunks do not merge to blake3" -- --public-keys pub.json t.json
resign m1.json t.json keys pub.json "d['files'][$f5]['chunks'].pop(); fix_root(d)"
expect malformed "a chunk hash dropped (re-signed)" -- --public-keys pub.json t.json
resign m1.json t.json keys pub.json 'd["root_hash"] = other_hash(d["root_hash"])'
expect 1 "root hash wrong (re-signed)" -- --public-keys pub.json t.json
resign m1.json t.json keys pub.json "d['files'][$f5]['size'] += 1; fix_root(d)"
expect 0 "size +1 with the same chunk count (re-signed): consistent without data" -- --public-keys pub.json t.json
expect 1 "... and caught when the data is re-hashed" -- --public-keys pub.json --data data t.json
resign m1.json t.json keys pub.json 'd["files"][0]["path"] = "../escape"; d["files"].sort(key=lambda f: f["path"].encode()); fix_root(d)'
expect malformed "path with a .. component (re-signed)" -- --public-keys pub.json t.json
resign m1.json t.json keys pub.json 'd["files"].reverse(); fix_root(d)'
expect malformed "paths not in byte order (re-signed)" -- --public-keys pub.json t.json
resign m1.json t.json keys pub.json 'f = next(f for f in d["files"] if f["path"] == "hello.txt"); f["path"] = "nested"; d["files"].sort(key=lambda f: f["path"].encode()); fix_root(d)'
expect malformed "a file path that is also a directory of another (re-signed)" -- --public-keys pub.json t.json
resign m1.json t.json keys pub.json 'f = next(f for f in d["files"] if f["path"] == "hello.txt"); f["chunk_size"] = 1000; fix_root(d)'
expect malformed "chunk size not a power of two (re-signed)" -- --public-keys pub.json t.json
resign m1.json t.json keys pub.json 'd["tenant"] = ""'
expect malformed "empty tenant (re-signed)" -- --public-keys pub.json t.json
resign r1.json t.json keys pub.json 'd["confirmation"]["size"] -= 1'
expect 1 "confirmed receipt with confirmation.size != bytes (re-signed)" -- --public-keys pub.json t.json
resign r1-failed.json t.json keys pub.json 'del d["detail"]'
expect malformed "failed receipt without detail (re-signed)" -- --public-keys pub.json t.json
resign r1.json t.json keys pub.json 'd["status"] = "lost"'
expect malformed "unknown receipt status (re-signed)" -- --public-keys pub.json t.json
resign r1.json t.json keys pub.json 'd["bytes"] -= 1; d["confirmation"]["size"] -= 1'
expect 0 "receipt bytes short of the manifest (re-signed): consistent alone" -- --public-keys pub.json t.json
expect 1 "... and rejected against its manifest" -- --public-keys pub.json --manifest m1.json t.json
resign r1.json t.json keys pub.json 'd["confirmation"]["blake3"] = other_hash(d["confirmation"]["blake3"])'
expect 1 "confirmation.blake3 differs from the manifest root (re-signed)" -- --public-keys pub.json --manifest m1.json t.json
resign r1.json t.json keys pub.json 'd["tenant"] = "mallory"'
expect 1 "receipt tenant differs from the manifest (re-signed)" -- --public-keys pub.json --manifest m1.json t.json

echo "==> hex is lower case only (FORMATS.md 1)"
edit m1.json t.json 'd["root_hash"] = d["root_hash"].upper()'
expect malformed "manifest root_hash in upper case (same bytes)" -- --public-keys pub.json t.json
edit m1.json t.json "d['files'][$f5]['chunks'][0] = d['files'][$f5]['chunks'][0].upper()"
expect malformed "one chunk hash in upper case" -- --public-keys pub.json t.json
edit m1.json t.json 'i = next(i for i, c in enumerate(d["signature"]["key_id"]) if c.isalpha()); k = d["signature"]["key_id"]; d["signature"]["key_id"] = k[:i] + k[i].upper() + k[i + 1:]'
expect malformed "signature key_id with one upper-case digit" -- --public-keys pub.json t.json
edit r1.json t.json 'd["manifest_hash"] = d["manifest_hash"].upper()'
expect malformed "receipt manifest_hash in upper case" -- --public-keys pub.json t.json
edit r1.json t.json 'd["confirmation"]["blake3"] = d["confirmation"]["blake3"].upper()'
expect malformed "receipt confirmation.blake3 in upper case" -- --public-keys pub.json t.json
edit pub.json tk.json '[k.__setitem__("id", k["id"].upper()) for k in d["keys"]]'
expect malformed "public key file with upper-case key ids" -- --public-keys tk.json m2s.json
# (The key with a letter in its 8-digit id: the other one's may be all decimal digits.)
edit "$dk" tk.json 'm = next(m for m in ("log_key", "cosigner_key") if any(c.isalpha() for c in d["ledger"][m].split("+")[1])); n, i, k = d["ledger"][m].split("+", 2); d["ledger"][m] = "+".join([n, i.upper(), k])'
expect malformed "ledger verifier key with an upper-case key id" -- --public-keys tk.json "$dr"

echo "==> timestamp spellings (FORMATS.md 1: RFC 3339, whole seconds, any offset)"
sa="$(field r1.json 'd["signature"]["signed_at"]')"
edit r1.json t.json "d['signature']['signed_at'] = '${sa%Z}+00:00'"
expect 0 "signed_at written with a +00:00 offset (same signed bytes)" -- --public-keys pub.json t.json
edit r1.json t.json "d['signature']['signed_at'] = '${sa%Z}z'.replace('T', 't')"
expect 0 "signed_at with lower-case t and z (RFC 3339 5.6 note)" -- --public-keys pub.json t.json
edit r1.json t.json "d['signature']['signed_at'] = '${sa%Z}.5Z'"
expect malformed "signed_at with a fraction of a second" -- --public-keys pub.json t.json
edit r1.json t.json "d['signature']['signed_at'] = '${sa%Z}.000Z'"
expect malformed "signed_at with a zero fraction (.000), refused as FORMATS.md 1 says" -- --public-keys pub.json t.json
edit r1.json t.json "d['signature']['signed_at'] = '${sa}'.replace('T', ' ')"
expect malformed "signed_at with a space instead of T (not RFC 3339)" -- --public-keys pub.json t.json

echo "==> key files"
edit pub.json tk.json 'k = d["keys"][0]; k["id"] = other_hash(k["id"])'
expect malformed "key id is not the SHA-256 of the public key" -- --public-keys tk.json m2s.json
edit pub.json tk.json '[k.__setitem__("status", "active") for k in d["keys"]]'
expect malformed "two active keys for one purpose" -- --public-keys tk.json m2s.json
edit pub.json tk.json "[k.__setitem__('not_after', k['not_before']) for k in d['keys'] if k['id'] == '$m1_key']"
expect 1 "manifest key window shrunk to nothing" -- --public-keys tk.json m1.json

echo "==> revocation"
"$bin" keys revoke --dir keys --key-id "$m1_key" > /dev/null
"$bin" keys revoke --dir keys --key-id "$r2_key" > /dev/null
"$bin" keys export-public --dir keys --out pub2.json > /dev/null
expect 1 "manifest signed with a revoked key" -- --public-keys pub2.json m1.json
expect 1 "receipt signed with a revoked key" -- --public-keys pub2.json r2s.json
expect 1 "valid receipt bound to a manifest whose key is revoked" -- --public-keys pub2.json --manifest m1.json r1.json
expect 0 "manifest signed with the unrevoked key still verifies" -- --public-keys pub2.json m2s.json
expect 0 "receipt signed with the retired, unrevoked key still verifies" -- --public-keys pub2.json r1.json
expect_py 1 "one rejected file among valid ones fails the run" -- --public-keys pub2.json m2s.json m1.json r1.json

echo
echo "${passed} passed, ${failed} failed"
[ "$failed" = 0 ]
