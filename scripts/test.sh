#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every crate's tests, and the
# independent auditor check (a Python verifier written from docs/FORMATS.md alone).
# Needs: the Rust toolchain, python3 with venv, curl, and Node.js with npm (PyPI and the npm
# registry reachable: the auditor check and the test servers install from them).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "test servers (S3: moto, Azure Blob: Azurite, SFTP: sshd, FTPS: vsftpd, PostgreSQL) on 127.0.0.1"
scripts/test-servers.sh stop
trap 'scripts/test-servers.sh stop' EXIT
scripts/test-servers.sh start s3 azure sftp ftps postgres
# shellcheck disable=SC1090
source <(scripts/test-servers.sh env)

step "cargo test (workspace, including the connector conformance suite)"
RESULTS=$(mktemp)
trap 'scripts/test-servers.sh stop; rm -f "$RESULTS"' EXIT
cargo test --workspace --locked 2>&1 | tee "$RESULTS"

step "independent auditor verification (tests/independent)"
cargo build --locked --bin trackshift
bash tests/independent/run.sh target/debug/trackshift 2>&1 | tee -a "$RESULTS"

step "job API fuzzing (Schemathesis against the served OpenAPI document; tests/api-fuzz)"
bash tests/api-fuzz/run.sh target/debug/trackshift 60

# One closing line for the whole run: every Rust test and every independent-verifier case.
passed=$(grep -Eo '[0-9]+ passed' "$RESULTS" | awk '{ s += $1 } END { print s + 0 }')
failed=$(grep -Eo '[0-9]+ failed' "$RESULTS" | awk '{ s += $1 } END { print s + 0 }')
echo
echo "total: ${passed:-0} passed, ${failed:-0} failed"
