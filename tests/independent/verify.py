#!/usr/bin/env python3
"""Independent verifier for Trackshift manifests and receipts.

Written from docs/FORMATS.md alone: it shares no code with Trackshift and uses third-party
implementations of ML-DSA-65 (dilithium-py), Ed25519 (cryptography), BLAKE3 (blake3) and
SHA-256 (hashlib). BLAKE3 chunk chaining values (FORMATS.md 4.3), which the blake3 package
does not expose, are computed with the small pure-Python BLAKE3 compression below.

Usage:
  verify.py --public-keys KEYS.json [--manifest M.json] [--data DIR] FILE...

Exit status: 0 when every FILE verifies, 1 when any is rejected, 2 on usage errors.
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import re
import struct
import sys

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65


class Rejected(Exception):
    """The document does not verify."""


# The ledger keys of the loaded public key file (section 8), or None.
LEDGER_KEYS = None


# ---------------------------------------------------------------- BLAKE3 (spec section 2)

IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
CHUNK_START, CHUNK_END, PARENT, ROOT = 1, 2, 4, 8
M32 = 0xFFFFFFFF


def _g(s, a, b, c, d, x, y):
    s[a] = (s[a] + s[b] + x) & M32
    s[d] = ((s[d] ^ s[a]) >> 16 | (s[d] ^ s[a]) << 16) & M32
    s[c] = (s[c] + s[d]) & M32
    s[b] = ((s[b] ^ s[c]) >> 12 | (s[b] ^ s[c]) << 20) & M32
    s[a] = (s[a] + s[b] + y) & M32
    s[d] = ((s[d] ^ s[a]) >> 8 | (s[d] ^ s[a]) << 24) & M32
    s[c] = (s[c] + s[d]) & M32
    s[b] = ((s[b] ^ s[c]) >> 7 | (s[b] ^ s[c]) << 25) & M32


def compress(cv, block, counter, block_len, flags):
    m = list(struct.unpack("<16I", block))
    s = list(cv) + IV[:4] + [counter & M32, (counter >> 32) & M32, block_len, flags]
    for r in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]


def words(b):
    return list(struct.unpack("<8I", b))


def to_bytes(w):
    return struct.pack("<8I", *w)


def chunk_cv(data, counter):
    """Chaining value of one 1024-byte BLAKE3 chunk (non-root)."""
    cv = IV
    blocks = [data[i:i + 64] for i in range(0, len(data), 64)] or [b""]
    for i, blk in enumerate(blocks):
        flags = (CHUNK_START if i == 0 else 0) | (CHUNK_END if i == len(blocks) - 1 else 0)
        cv = compress(cv, blk.ljust(64, b"\0"), counter, len(blk), flags)
    return cv


def parent_cv(left, right, root=False):
    return compress(IV, to_bytes(left) + to_bytes(right), 0, 64, PARENT | (ROOT if root else 0))


def merge(cvs, root):
    """Merges subtree chaining values: the left part holds the largest power of two below n."""
    if len(cvs) == 1:
        return cvs[0]
    split = 1
    while split * 2 < len(cvs):
        split *= 2
    return parent_cv(merge(cvs[:split], False), merge(cvs[split:], False), root)


def subtree_cv(data, offset):
    """BLAKE3 chaining value (non-root) of `data` placed at byte `offset` of a file."""
    counter = offset // 1024
    cvs = [chunk_cv(data[i:i + 1024], counter + k) for k, i in enumerate(range(0, len(data), 1024))]
    return merge(cvs, False)


def merge_to_root(chunk_hashes):
    return to_bytes(merge([words(h) for h in chunk_hashes], True))


# ---------------------------------------------------------------- canonical encoding (1.1)

def u32(n):
    return struct.pack(">I", n)


def u64(n):
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 2**64:
        raise Rejected(f"not a u64: {n!r}")
    return struct.pack(">Q", n)


def s(text):
    if not isinstance(text, str):
        raise Rejected(f"not a string: {text!r}")
    b = text.encode("utf-8")
    return u32(len(b)) + b


def hsh(text):
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{64}", text):
        raise Rejected(f"not a hash: {text!r}")
    return bytes.fromhex(text)


def ts_seconds(text):
    if not isinstance(text, str):
        raise Rejected(f"not a timestamp: {text!r}")
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)([Zz]|[+-]\d\d:\d\d)", text)
    if not m:
        raise Rejected(f"not a whole-second RFC 3339 timestamp: {text!r}")
    zone = "+00:00" if m.group(3) in ("Z", "z") else m.group(3)
    t = datetime.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{zone}")
    secs = int(t.timestamp())
    if secs < 0:
        raise Rejected(f"timestamp before 1970: {text!r}")
    return secs


def ts(text):
    return u64(ts_seconds(text))


def opt(value, enc):
    return b"\x00" if value is None else b"\x01" + enc(value)


def lst(items, enc):
    if not isinstance(items, list):
        raise Rejected(f"not a list: {items!r}")
    return u32(len(items)) + b"".join(enc(i) for i in items)


def file_entry(f):
    return s(f["path"]) + u64(f["size"]) + u64(f["chunk_size"]) + lst(f["chunks"], hsh) + hsh(f["blake3"])


# ---------------------------------------------------------------- documents

MANIFEST_FIELDS = {"format", "job_id", "tenant", "created_at", "source", "destinations", "files", "root_hash", "signature"}
FILE_FIELDS = {"path", "size", "chunk_size", "chunks", "blake3"}
RECEIPT_FIELDS = {"format", "job_id", "tenant", "manifest_hash", "destination", "bytes", "confirmation", "status",
                  "detail", "correlation_id", "completed_at", "signature", "ledger_proof"}
CONFIRMATION_FIELDS = {"size", "etag", "blake3"}
SIGNATURE_FIELDS = {"algorithm", "key_id", "signed_at", "value"}
KEY_FIELDS = {"id", "purpose", "algorithm", "public_key", "not_before", "not_after", "status", "revoked_at"}
ALGORITHMS = {"ML-DSA-65": ("manifest", 1952, 3309), "Ed25519": ("receipt", 32, 64)}


def closed(obj, allowed, what):
    if not isinstance(obj, dict):
        raise Rejected(f"{what} is not an object")
    unknown = set(obj) - allowed
    if unknown:
        raise Rejected(f"{what} has unknown fields {sorted(unknown)}")


def no_duplicates(pairs):
    """json object hook: a repeated name would let two readers see different values."""
    obj = {}
    for name, value in pairs:
        if name in obj:
            raise Rejected(f"duplicate field {name!r}")
        obj[name] = value
    return obj


def bad_constant(name):
    raise Rejected(f"not JSON: {name}")


def load_json(path):
    with open(path, "rb") as fh:
        return json.loads(fh.read().decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=bad_constant)


def b64(text):
    if not isinstance(text, str):
        raise Rejected(f"not base64: {text!r}")
    try:
        raw = base64.b64decode(text, validate=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is a rejection
        raise Rejected(f"bad base64: {e}") from None
    if base64.b64encode(raw).decode() != text:
        raise Rejected("non-canonical base64 (padding or unused bits)")
    return raw


def manifest_body(m):
    return (s(m["job_id"]) + s(m["tenant"]) + ts(m["created_at"]) + s(m["source"])
            + lst(m["destinations"], s) + lst(m["files"], file_entry) + hsh(m["root_hash"]))


def receipt_body(r):
    c = r["confirmation"]
    return (s(r["job_id"]) + s(r["tenant"]) + hsh(r["manifest_hash"]) + s(r["destination"]) + u64(r["bytes"])
            + u64(c["size"]) + opt(c.get("etag"), s) + opt(c.get("blake3"), hsh) + s(r["status"])
            + opt(r.get("detail"), s) + opt(r.get("correlation_id"), s) + ts(r["completed_at"]))


def signed_parts(doc, body):
    sig = doc.get("signature")
    if sig is None:
        raise Rejected("unsigned")
    closed(sig, SIGNATURE_FIELDS, "signature")
    message = s(doc["format"]) + s(sig["algorithm"]) + hsh(sig["key_id"]) + ts(sig["signed_at"]) + body
    value = b64(sig["value"])
    return sig, message, value


def signed_bytes(doc, body):
    _, message, value = signed_parts(doc, body)
    return message + u32(len(value)) + value


def document_hash(doc, body):
    return blake3.blake3(signed_bytes(doc, body)).digest()


# ---- Ledger (FORMATS.md section 8): C2SP signed notes, cosignatures, tlog-proofs ----

def parse_vkey(vkey, want_type, want_len):
    if not isinstance(vkey, str) or vkey.count("+") < 2:
        raise Rejected(f"malformed verifier key {vkey!r}")
    # Names never contain "+"; the base64 key data may.
    name, key_id, data = vkey.split("+", 2)
    raw = b64(data)
    if not raw or raw[0] != want_type or len(raw) != 1 + want_len:
        raise Rejected(f"verifier key {name}: wrong type or length")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() != key_id:
        raise Rejected(f"verifier key {name}: key id does not match")
    return name, bytes.fromhex(key_id), raw[1:]


def load_ledger_keys(ring):
    led = ring.get("ledger")
    if led is None:
        return None
    closed(led, {"origin", "log_key", "cosigner_key"}, "ledger keys")
    origin = led["origin"]
    log = parse_vkey(led["log_key"], 0x01, 32)
    cos = parse_vkey(led["cosigner_key"], 0x06, 1312)
    if log[0] != origin or cos[0] != origin + "/mldsa44":
        raise Rejected("ledger keys: names do not match the origin")
    return {"origin": origin, "log": log, "cosigner": cos}


def verify_checkpoint(note, led):
    text, sep, sigs = note.partition("\n\n")
    lines = text.split("\n")
    if not sep or len(lines) != 3 or not sigs.endswith("\n"):
        raise Rejected("malformed checkpoint")
    origin, size_text, root_text = lines
    if origin != led["origin"]:
        raise Rejected(f"checkpoint of another log: {origin!r}")
    if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size_text):
        raise Rejected("checkpoint size is not a decimal number")
    size, root = int(size_text), b64(root_text)
    if len(root) != 32:
        raise Rejected("checkpoint root is not 32 bytes")
    signed = (text + "\n").encode()
    log_name, log_id, log_pk = led["log"]
    cos_name, cos_id, cos_pk = led["cosigner"]
    have_log = have_cos = False
    for line in sigs[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            raise Rejected("malformed checkpoint signature line")
        name, raw = parts[1], b64(parts[2])
        if name == log_name and raw[:4] == log_id:
            if len(raw) != 4 + 64 or not ed25519_verify_strict(log_pk, signed, raw[4:]):
                raise Rejected("checkpoint: bad log signature")
            have_log = True
        elif name == cos_name and raw[:4] == cos_id:
            if len(raw) != 4 + 8 + 2420:
                raise Rejected("checkpoint: bad cosignature length")
            stamp = raw[4:12]
            message = (b"subtree/v1\n\x00" + bytes([len(name)]) + name.encode() + stamp
                       + bytes([len(origin)]) + origin.encode() + struct.pack(">QQ", 0, size) + root)
            if not ML_DSA_44.verify(cos_pk, message, raw[12:], ctx=b""):
                raise Rejected("checkpoint: bad ML-DSA-44 cosignature")
            have_cos = True
    if not (have_log and have_cos):
        raise Rejected("checkpoint lacks the log signature or the cosignature")
    return size, root


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index, size, leaf, path, root):
    # RFC 9162 section 2.1.3.2.
    if index >= size:
        raise Rejected("ledger proof: index outside the tree")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise Rejected("ledger proof: too many hashes")
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise Rejected("ledger proof: the entry is not in the checkpoint's tree")


def verify_ledger_proof(text, entry, led):
    if led is None:
        raise Rejected("carries a ledger proof but the key file has no ledger keys")
    lines = text.split("\n")
    if not lines or lines[0] != "c2sp.org/tlog-proof@v1":
        raise Rejected("ledger proof: not a c2sp.org/tlog-proof@v1")
    i = 1
    if i < len(lines) and lines[i].startswith("extra "):
        i += 1
    m = re.fullmatch(r"index (0|[1-9][0-9]{0,19})", lines[i] if i < len(lines) else "")
    if not m:
        raise Rejected("ledger proof: no index line")
    index, i = int(m.group(1)), i + 1
    path = []
    while i < len(lines) and lines[i] != "":
        h = b64(lines[i])
        if len(h) != 32:
            raise Rejected("ledger proof: a hash is not 32 bytes")
        path.append(h)
        i += 1
    if i >= len(lines):
        raise Rejected("ledger proof: no checkpoint")
    size, root = verify_checkpoint("\n".join(lines[i + 1:]), led)
    verify_inclusion(index, size, hashlib.sha256(b"\x00" + entry).digest(), path, root)
    return index, size


def load_keys(path):
    ring = load_json(path)
    closed(ring, {"format", "keys", "ledger"}, "public key file")
    global LEDGER_KEYS
    LEDGER_KEYS = load_ledger_keys(ring)
    if ring.get("format") != "trackshift.public-keys.v1":
        raise Rejected("public key file: unknown format")
    keys, active = {}, set()
    if not isinstance(ring["keys"], list):
        raise Rejected("public key file: keys is not a list")
    for k in ring["keys"]:
        closed(k, KEY_FIELDS, "key")
        alg = k["algorithm"]
        if alg not in ALGORITHMS or ALGORITHMS[alg][0] != k["purpose"]:
            raise Rejected(f"key {k['id']}: purpose/algorithm mismatch")
        pk = b64(k["public_key"])
        if len(pk) != ALGORITHMS[alg][1]:
            raise Rejected(f"key {k['id']}: wrong public key length")
        if hashlib.sha256(pk).hexdigest() != k["id"]:
            raise Rejected(f"key {k['id']}: id is not SHA-256 of the public key")
        if k["id"] in keys:
            raise Rejected(f"key {k['id']}: duplicate id")
        if k["status"] not in ("active", "retired", "revoked"):
            raise Rejected(f"key {k['id']}: unknown status")
        if (k["status"] == "revoked") != (k.get("revoked_at") is not None):
            raise Rejected(f"key {k['id']}: revoked_at must be present exactly when revoked")
        if k.get("revoked_at") is not None:
            ts_seconds(k["revoked_at"])
        if k["status"] == "active":
            if k["purpose"] in active:
                raise Rejected(f"two active {k['purpose']} keys")
            active.add(k["purpose"])
        nb = ts_seconds(k["not_before"])
        na = ts_seconds(k["not_after"]) if k.get("not_after") is not None else None
        if na is not None and na < nb:
            raise Rejected(f"key {k['id']}: not_after before not_before")
        keys[k["id"]] = {**k, "pk": pk, "nb": nb, "na": na}
    return keys


def check_signature(doc, body, purpose, keys):
    sig, message, value = signed_parts(doc, body)
    key = keys.get(sig["key_id"])
    if key is None:
        raise Rejected("unknown key")
    if key["purpose"] != purpose:
        raise Rejected(f"key is for {key['purpose']}s, not {purpose}s")
    if key["status"] == "revoked":
        raise Rejected("key is revoked")
    at = ts_seconds(sig["signed_at"])
    if at < key["nb"] or (key["na"] is not None and at >= key["na"]):
        raise Rejected("signed outside the key's validity window")
    if sig["algorithm"] != key["algorithm"]:
        raise Rejected("algorithm does not match the key")
    if len(value) != ALGORITHMS[key["algorithm"]][2]:
        raise Rejected("wrong signature length")
    if key["algorithm"] == "ML-DSA-65":
        ok = ML_DSA_65.verify(key["pk"], message, value, ctx=b"")
    else:
        ok = ed25519_verify_strict(key["pk"], message, value)
    if not ok:
        raise Rejected("bad signature")


ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493
# y coordinates of the 8 points of small order (x = 0, order 1, 2, 4 and the order-8 points).
ED_SMALL_ORDER_Y = {0, 1, ED_P - 1} | {
    int.from_bytes(bytes.fromhex(h), "little")
    for h in ("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
              "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")}


def ed25519_point_ok(enc):
    """Canonical encoding (y < p) of a point that is not of small order."""
    y = int.from_bytes(enc, "little") & ((1 << 255) - 1)
    return y < ED_P and y not in ED_SMALL_ORDER_Y


def ed25519_verify_strict(pk, message, sig):
    if not ed25519_point_ok(pk):
        raise Rejected("Ed25519 public key is non-canonical or of small order")
    if not ed25519_point_ok(sig[:32]):
        raise Rejected("Ed25519 signature R is non-canonical or of small order")
    if int.from_bytes(sig[32:], "little") >= ED_L:
        raise Rejected("Ed25519 signature S is not canonical (S >= L)")
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, message)
        return True
    except InvalidSignature:
        return False


def check_path(p):
    if not isinstance(p, str):
        return False
    b = p.encode("utf-8")
    if not 1 <= len(b) <= 4096 or p.startswith("/") or "\0" in p or "\\" in p:
        return False
    return all(c not in ("", ".", "..") for c in p.split("/"))


def check_manifest(m):
    closed(m, MANIFEST_FIELDS, "manifest")
    if m.get("format") != "trackshift.manifest.v1":
        raise Rejected("not a trackshift.manifest.v1")
    if not m["job_id"] or not m["tenant"]:
        raise Rejected("empty job_id or tenant")
    paths = []
    for f in m["files"]:
        closed(f, FILE_FIELDS, "file")
        if not check_path(f["path"]):
            raise Rejected(f"unsafe path {f['path']!r}")
        paths.append(f["path"])
        cs, size = f["chunk_size"], f["size"]
        u64(cs), u64(size)
        if cs < 1024 or cs > 2**30 or cs & (cs - 1):
            raise Rejected(f"{f['path']}: bad chunk size")
        n = max(1, -(-size // cs))
        if len(f["chunks"]) != n:
            raise Rejected(f"{f['path']}: {len(f['chunks'])} chunk hashes, expected {n}")
        chunks = [hsh(c) for c in f["chunks"]]
        whole = hsh(f["blake3"])
        if (chunks[0] if n == 1 else merge_to_root(chunks)) != whole:
            raise Rejected(f"{f['path']}: chunk hashes do not merge to the file hash")
    encoded = [p.encode("utf-8") for p in paths]
    if encoded != sorted(encoded) or len(set(encoded)) != len(encoded):
        raise Rejected("paths not sorted or not unique")
    as_dirs = {p + b"/" for p in encoded}
    for p in encoded:
        for i in range(len(p)):
            if p[i:i + 1] == b"/" and p[:i + 1] in as_dirs:
                raise Rejected("a path is also a directory of another")
    root = blake3.blake3(s("trackshift.manifest.files.v1") + lst(m["files"], file_entry)).digest()
    if root != hsh(m["root_hash"]):
        raise Rejected("root_hash mismatch")


def check_receipt(r):
    closed(r, RECEIPT_FIELDS, "receipt")
    closed(r["confirmation"], CONFIRMATION_FIELDS, "confirmation")
    if r.get("format") != "trackshift.receipt.v1":
        raise Rejected("not a trackshift.receipt.v1")
    if not r["job_id"] or not r["tenant"] or not r["destination"]:
        raise Rejected("empty job_id, tenant or destination")
    if r["status"] not in ("confirmed", "unconfirmed", "failed"):
        raise Rejected("unknown status")
    if r["status"] == "failed" and r.get("detail") is None:
        raise Rejected("failed receipt without detail")
    if r["status"] == "confirmed" and r["confirmation"]["size"] != r["bytes"]:
        raise Rejected("confirmed size differs from bytes")


def check_binding(r, m):
    if document_hash(m, manifest_body(m)).hex() != r["manifest_hash"]:
        raise Rejected("manifest_hash does not match the manifest")
    if r["job_id"] != m["job_id"] or r["tenant"] != m["tenant"]:
        raise Rejected("job or tenant differs from the manifest")
    if r["status"] == "confirmed":
        if r["bytes"] != sum(f["size"] for f in m["files"]):
            raise Rejected("bytes differ from the manifest")
        b3 = r["confirmation"].get("blake3")
        if b3 is not None and b3 != m["root_hash"]:
            raise Rejected("confirmation.blake3 differs from root_hash")


def check_data(m, root):
    for f in m["files"]:
        path = os.path.join(root, *f["path"].split("/"))
        with open(path, "rb") as fh:
            data = fh.read()
        if len(data) != f["size"]:
            raise Rejected(f"{f['path']}: size {len(data)}, expected {f['size']}")
        if blake3.blake3(data).hexdigest() != f["blake3"]:
            raise Rejected(f"{f['path']}: BLAKE3 mismatch")
        cs = f["chunk_size"]
        if len(f["chunks"]) > 1:
            for i, expected in enumerate(f["chunks"]):
                cv = to_bytes(subtree_cv(data[i * cs:(i + 1) * cs], i * cs))
                if cv.hex() != expected:
                    raise Rejected(f"{f['path']}: chunk {i} mismatch")


def verify_file(path, keys, manifest_path, data_dir):
    doc = load_json(path)
    kind = doc.get("format") if isinstance(doc, dict) else None
    if kind == "trackshift.manifest.v1":
        check_signature(doc, manifest_body(doc), "manifest", keys)
        check_manifest(doc)
        if data_dir:
            check_data(doc, data_dir)
        return "manifest", document_hash(doc, manifest_body(doc)).hex()
    if kind == "trackshift.receipt.v1":
        check_signature(doc, receipt_body(doc), "receipt", keys)
        check_receipt(doc)
        kind = "receipt"
        if doc.get("ledger_proof") is not None:
            index, size = verify_ledger_proof(
                doc["ledger_proof"], signed_bytes(doc, receipt_body(doc)), LEDGER_KEYS)
            kind = f"receipt (ledger entry {index} of {size})"
        elif LEDGER_KEYS is not None:
            # FORMATS.md 5.3: a key file that names a ledger vouches only for logged receipts.
            raise Rejected("lacks its ledger proof, but the key file names a ledger")
        if manifest_path:
            m = load_json(manifest_path)
            check_signature(m, manifest_body(m), "manifest", keys)
            check_manifest(m)
            check_binding(doc, m)
        return kind, document_hash(doc, receipt_body(doc)).hex()
    raise Rejected(f"unknown format {kind!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--public-keys", required=True)
    ap.add_argument("--manifest")
    ap.add_argument("--data")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    try:
        keys = load_keys(args.public_keys)
    except Exception as e:  # noqa: BLE001 - any failure rejects the key file
        print(f"REJECTED {args.public_keys}: {type(e).__name__}: {e}")
        return 1
    bad = 0
    for path in args.files:
        try:
            kind, doc_hash = verify_file(path, keys, args.manifest, args.data)
            print(f"OK {path}: {kind} verified, document_hash {doc_hash}")
        except Exception as e:  # noqa: BLE001 - KeyError: missing field; TypeError: wrong type; ...
            print(f"REJECTED {path}: {type(e).__name__}: {e}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
