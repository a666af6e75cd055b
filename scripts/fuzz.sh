#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ with libFuzzer and runs each for a few seconds, starting
# from its committed corpus (fuzz/corpus/<target>/); fails on the first crash, leaving the
# input in fuzz/artifacts/<target>/.
#
# Works on stable Rust: it builds the way `cargo fuzz build -s none` does (coverage
# instrumentation, no sanitizer; debug assertions and overflow checks on), so neither
# nightly nor cargo-fuzz is needed. For longer runs with AddressSanitizer use cargo-fuzz
# on nightly: `cargo +nightly fuzz run TARGET`.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]   (default: 5 s, every target)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-5}
shift || true
triple=$(rustc -vV | sed -n 's/^host: //p')
# An explicit --target keeps these flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --locked --release --target "$triple" --bins

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | tail -n +2)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "$scratch/$t"
    printf '%s: ' "$t"
    # New inputs go to the scratch directory (the first one): the committed corpus is read only.
    if ! "${CARGO_TARGET_DIR:-target}/$triple/release/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        "$scratch/$t" "corpus/$t" >"$scratch/$t.log" 2>&1; then
        echo "CRASH"
        tail -n 40 "$scratch/$t.log"
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log" | tr -d '\n'
    echo " runs, no crash"
done
