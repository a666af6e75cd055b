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

step "test servers (S3: moto, Azure Blob: Azurite, SFTP: sshd, FTPS: vsftpd, PostgreSQL; Prometheus and Alertmanager binaries) on 127.0.0.1"
scripts/test-servers.sh stop
trap 'scripts/test-servers.sh stop' EXIT
scripts/test-servers.sh start s3 azure sftp ftps postgres softhsm tsa promtool alerting
# shellcheck disable=SC1090
source <(scripts/test-servers.sh env)

# The large-object cases hold about a GiB at a time on this disk (they write one server's
# object at a time and give the space back); a full disk shows up as server errors.
RUN_DIR=${TRACKSHIFT_SERVERS_RUN:-/tmp/trackshift-test-servers}
free_kib=$(df -Pk "$RUN_DIR" | awk 'NR == 2 { print $4 }')
echo "free space for the test servers' data: $((free_kib / 1024)) MiB"
[ "$free_kib" -ge $((3 * 1024 * 1024)) ] ||
    echo "WARNING: less than 3 GiB free under $RUN_DIR: the large-object tests may fail" >&2

step "cargo test (workspace, including the connector conformance suite)"
RESULTS=$(mktemp)
finish() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        # What the servers said, before their directory goes.
        for log in "$RUN_DIR"/*/server.log "$RUN_DIR"/postgres.log; do
            [ -s "$log" ] && { echo "--- last lines of $log"; tail -n 15 "$log"; }
        done
        df -h "$RUN_DIR" . || true
    fi
    scripts/test-servers.sh stop
    rm -f "$RESULTS"
}
trap finish EXIT
cargo test --workspace --locked 2>&1 | tee "$RESULTS"

step "fuzz targets (every target 5 s from its committed corpus; stable Rust, no cargo-fuzz)"
# The instrumented dependencies are kept between runs on this machine (a fresh clone would
# otherwise build them again: about 4 minutes on 2 cores; the runs take about 1 minute).
CARGO_TARGET_DIR=${TRACKSHIFT_FUZZ_TARGET_DIR:-$HOME/.cache/trackshift-fuzz-target} scripts/fuzz.sh 5

step "independent auditor verification (tests/independent)"
cargo build --locked --bin trackshift
bash tests/independent/run.sh target/debug/trackshift 2>&1 | tee -a "$RESULTS"

step "deployment files (Dockerfile, Helm chart, systemd unit, log config: deploy/)"
bash scripts/check-deploy.sh target/debug/trackshift

step "job API fuzzing (Schemathesis against the served OpenAPI document; tests/api-fuzz)"
bash tests/api-fuzz/run.sh target/debug/trackshift 60

# One closing line for the whole run: every Rust test and every independent-verifier case.
passed=$(grep -Eo '[0-9]+ passed' "$RESULTS" | awk '{ s += $1 } END { print s + 0 }')
failed=$(grep -Eo '[0-9]+ failed' "$RESULTS" | awk '{ s += $1 } END { print s + 0 }')
echo
echo "total: ${passed:-0} passed, ${failed:-0} failed"
