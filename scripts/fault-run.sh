#!/usr/bin/env bash
# Fault runs of search-service under load (loopback only, 10 to 15 s each):
#   standalone: Redis killed, restarted on the same port, then paused with CLIENT PAUSE;
#   cluster:    a primary of a 3+3 Redis Cluster killed (its replica takes over),
#               then a planned CLUSTER FAILOVER of another primary.
# ./scripts/fault-run.sh runs both; ./scripts/fault-run.sh cluster runs one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p examples --bin search-service -p benches --bin fault-run
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(standalone cluster)
for scenario in "${scenarios[@]}"; do
  target/release/fault-run --scenario "$scenario" target/release/search-service
done
