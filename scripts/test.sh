#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every crate's tests, and the
# independent auditor check (a Python verifier written from docs/FORMATS.md alone).
# Needs: the Rust toolchain and python3 with venv (PyPI reachable for the auditor check).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked

step "independent auditor verification (tests/independent)"
cargo build --locked --bin trackshift
bash tests/independent/run.sh target/debug/trackshift
