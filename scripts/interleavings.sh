#!/usr/bin/env bash
# The concurrent pieces (single-flight, the event bus's queues, the breaker's
# probe, the limiter's deny cache, its count of requests at the store and the
# exact path's flat-combining groups) under
# shuttle's randomized scheduler: each library's own `interleavings` tests,
# built with `--cfg shuttle` for that crate alone (its dependencies are the
# normal test build's, so only the two crates are compiled again).
#   SHUTTLE_ITERATIONS  schedules per test (default 2 000)
#   SHUTTLE_SEED        where the random schedules start (default 24)
# A failure prints the schedule that broke it, for `shuttle::replay`.
#   ./scripts/interleavings.sh
#   SHUTTLE_SEED=7 SHUTTLE_ITERATIONS=100000 ./scripts/interleavings.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for package in redis-cache-core tower-redis-rate-limit; do
  binary=$(cargo rustc -p "$package" --lib --profile test --locked --message-format json -- --cfg shuttle |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
  [ -n "$binary" ] || { echo "error: no test binary for $package under --cfg shuttle" >&2; exit 1; }
  "$binary" interleavings
done
