#!/usr/bin/env bash
# Longer fault schedules than scripts/test.sh runs (issue 24):
#   - the rate limiter's history checker (tests/tests/limiter_history.rs) on
#     standalone Redis and on a cluster, exact and with shared counting,
#     ROUNDS rounds (2 s each) per seed;
#   - the local tier's coherence checker with each network fault held
#     FAULT_MS (benches local-tier-faults);
#   - the concurrent pieces under shuttle's scheduler, SHUTTLE_ITERATIONS
#     schedules (default 50 000) from each seed (scripts/interleavings.sh).
# A violation prints its seed; HISTORY_SEED=N with the same ROUNDS replays it.
#   ./scripts/fault-schedules.sh                 # 3 random seeds, 60 rounds
#   ./scripts/fault-schedules.sh 120 7 8 9       # 120 rounds, seeds 7, 8 and 9
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-60}"
shift || true
seeds=("$@")
if [ ${#seeds[@]} -eq 0 ]; then
  seeds=("$RANDOM$RANDOM" "$RANDOM$RANDOM" "$RANDOM$RANDOM")
fi
for seed in "${seeds[@]}"; do
  echo "==> limiter history: seed $seed, $rounds rounds"
  HISTORY_SEED="$seed" HISTORY_ROUNDS="$rounds" \
    cargo test --locked -p tests --test limiter_history -- --nocapture --test-threads 1
done
echo "==> local tier coherence, each fault held ${FAULT_MS:-3000} ms"
cargo build --release --locked -p benches --bin local-tier-faults
LOCAL_TIER_FAULT_MS="${FAULT_MS:-3000}" target/release/local-tier-faults
for seed in "${seeds[@]}"; do
  echo "==> interleavings: seed $seed, ${SHUTTLE_ITERATIONS:-50000} schedules"
  SHUTTLE_SEED="$seed" SHUTTLE_ITERATIONS="${SHUTTLE_ITERATIONS:-50000}" ./scripts/interleavings.sh
done
