#!/bin/sh
# The gateway's init container: copies its secrets out of Kubernetes Secret volumes into a
# memory-backed volume, owned by the gateway's user, files 0400 and directories 0700.
#
# Why: the gateway refuses every secret file that is not owner-only (any of the bits 0o077,
# like OpenSSH). A Secret volume's files belong to root (unreadable to a non-root user at
# 0400), or, with the pod's fsGroup, to root and that group with the group's read bit added
# (0440, refused). A copy made by the gateway's own user is both readable and owner-only.
#
# Input: one directory per Secret under $SECRETS_IN (default /secrets), by role:
#   tenants/tenants.json  service-key/service.key  operator-key/operator.key
#   tls/tls.crt tls/tls.key [tls/ca.crt]  (a kubernetes.io/tls Secret, e.g. from cert-manager)
#   signing-keys/keyring.json + signing-keys/<key id>.json  (DATA/keys of a gateway)
#   ledger-keys/log-ed25519.key ledger-keys/cosigner-mldsa44.key
#   credentials/*  (tenants' credentials files, SSH keys, known_hosts)
# Output under $SECRETS_OUT (default /run/trackshift), in the layout the gateway reads:
#   tenants.json service.key operator.key tls/ keys/keyring.json keys/secret/ ledger-keys/
#   credentials/
# With $DATA_DIR set, also prepares the data directory: the directories that other volumes
# are mounted in are created here, owned by the gateway's user (not by root, as the
# container runtime would create them), and empty files left on the data volume by an
# earlier mount of a secret that now comes from the gateway itself are removed (a real
# key or tenant file is never empty).
set -eu
umask 077
in=${SECRETS_IN:-/secrets}
out=${SECRETS_OUT:-/run/trackshift}
data=${DATA_DIR:-}

fail() {
    echo "copy-secrets: $*" >&2
    exit 1
}

# put SRC DST: one file, owner-only; a missing key of a Secret stops the pod here, by name.
put() {
    [ -f "$1" ] || fail "$1 is missing: the Secret mounted at ${1%/*} has no key ${1##*/}"
    mkdir -p "${2%/*}"
    cp "$1" "$2.tmp"
    chmod 0400 "$2.tmp"
    mv -f "$2.tmp" "$2"
    echo "copy-secrets: ${2#"$out"/}"
}

# all SRC-DIR DST-DIR [EXCEPT]: every key of a Secret (the glob skips the volume's ..data
# entries; the links are followed to the files).
all() {
    n=0
    for f in "$1"/*; do
        [ -f "$f" ] || continue
        [ "${f##*/}" = "${3:-}" ] && continue
        put "$f" "$2/${f##*/}"
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || fail "the Secret mounted at $1 has no keys"
}

mkdir -p "$out"
if [ -d "$in/tenants" ]; then put "$in/tenants/tenants.json" "$out/tenants.json"; fi
if [ -d "$in/service-key" ]; then put "$in/service-key/service.key" "$out/service.key"; fi
if [ -d "$in/operator-key" ]; then put "$in/operator-key/operator.key" "$out/operator.key"; fi
if [ -d "$in/tls" ]; then
    put "$in/tls/tls.crt" "$out/tls/cert.pem"
    put "$in/tls/tls.key" "$out/tls/key.pem"
    if [ -f "$in/tls/ca.crt" ]; then put "$in/tls/ca.crt" "$out/tls/ca.pem"; fi
fi
if [ -d "$in/signing-keys" ]; then
    put "$in/signing-keys/keyring.json" "$out/keys/keyring.json"
    all "$in/signing-keys" "$out/keys/secret" keyring.json
fi
if [ -d "$in/ledger-keys" ]; then
    put "$in/ledger-keys/log-ed25519.key" "$out/ledger-keys/log-ed25519.key"
    put "$in/ledger-keys/cosigner-mldsa44.key" "$out/ledger-keys/cosigner-mldsa44.key"
fi
if [ -d "$in/credentials" ]; then all "$in/credentials" "$out/credentials"; fi

if [ -n "$data" ]; then
    [ -d "$data" ] && [ -w "$data" ] || fail "the data directory $data is not writable by uid $(id -u)"
    mkdir -p "$data/keys" "$data/tls" "$data/ledger"
    for name in tenants.json service.key operator.key; do
        if [ -f "$data/$name" ] && [ ! -s "$data/$name" ] && [ ! -e "$out/$name" ]; then
            rm -f "$data/$name"
            echo "copy-secrets: removed the empty placeholder $data/$name"
        fi
    done
fi
