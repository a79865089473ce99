#!/usr/bin/env bash
# Fault runs under load (loopback only, 10 to 15 s each):
#   standalone: search-service; Redis killed, restarted on the same port, then paused with CLIENT PAUSE;
#   cluster:    search-service; a primary of a 3+3 Redis Cluster killed (its replica takes over),
#               then a planned CLUSTER FAILOVER of another primary;
#   local-tier: two instances with local tiers, one writing a hot key, the other reading it
#               through a fault proxy; each network fault, then Redis killed, restarted, paused:
#               zero stale reads past 100 ms, zero failed requests.
# ./scripts/fault-run.sh runs all three; ./scripts/fault-run.sh cluster runs one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p examples --bin search-service -p benches --bin fault-run --bin local-tier-faults
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(standalone cluster local-tier)
for scenario in "${scenarios[@]}"; do
  if [ "$scenario" = local-tier ]; then
    target/release/local-tier-faults
  else
    target/release/fault-run --scenario "$scenario" target/release/search-service
  fi
done
