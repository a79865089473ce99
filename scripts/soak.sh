#!/usr/bin/env bash
# The soak: search-service and portfolio (release builds) on one redis-server
# behind a noxious fault proxy, mixed traffic, a fault every minute from a
# seeded schedule (latency, bandwidth, blackhole, partition, a close after N
# bytes, slow close, refused connections, CLIENT PAUSE, a Redis restart),
# for MINUTES minutes (default 30). Prints a table per minute (requests,
# failed, p50/p99/slowest, and each service's resident memory, open
# descriptors and live Tokio tasks) and draws target/soak/soak.svg.
#   ./scripts/soak.sh 30          # SOAK_SEED=N replays a schedule
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
out="${SOAK_OUT:-target/soak}"
cargo build --release --locked -p examples --bin search-service --bin portfolio
cargo build --release --locked -p benches --bin soak
cargo build --release --locked -p benches --features charts --bin charts
mkdir -p "$out"
echo "==> machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the soak"
target/release/soak "$minutes" target/release/search-service target/release/portfolio "$out" ${SOAK_SEED:+"$SOAK_SEED"}
echo "==> load average after the soak: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$out/empty.log"
target/release/charts "$out/empty.log" "$out" "$out"
