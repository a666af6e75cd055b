#!/usr/bin/env bash
# Trackshift's QUIC transport on long fat links, simulated (issue 15): builds the
# deterministic simulator `engine/examples/long_link.rs` (quinn-proto's two endpoints in
# virtual time over a drop-tail bottleneck with propagation delay and seeded random loss;
# Trackshift's TLS, transport settings and chunk/ack workload) in release and prints the
# whole table: RTT {50, 200} ms × loss {0, 0.1, 1} % × NewReno, CUBIC and BBR, goodput,
# % of the link, the share of the bandwidth-delay product kept in flight, CPU seconds.
#
#   scripts/long-link.sh [OPTIONS]
#
# Options go to `long_link table` (defaults: --rate-mbit 1000 --seconds 20
# --in-flight-mib 256 --queue-bdp 1 --seeds 3 --seed 1); for example
# `scripts/long-link.sh --seconds 10 --seeds 1` for a quicker look. Single-threaded and
# deterministic: the same options print the same table (CPU times aside). About five CPU
# minutes with the defaults.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet -p trackshift-engine --example long_link
target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/examples/long_link" table "$@"
