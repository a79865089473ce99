#!/usr/bin/env bash
# Every benchmark, each beside its baseline in the same run, on loopback only
# (about twelve minutes on 2 cores): cache hit and miss paths; HTTP with and
# without rate limiters (about 3.5 minutes: many clients through a trusted
# proxy, one hot client, a flood of one client; throughput, CPU per request of
# the service process and redis-server, Redis commands per request, latency at
# a fixed rate); invalidate_prefix over 1 M keys; the event bus beside raw
# redis-rs pub/sub; the local tier beside moka and the cached crate; and the fault runs
# of search-service (standalone Redis, Redis Cluster failovers). Installs redis-server like the test script when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq redis-server >/dev/null
fi
cargo build --release -p benches --features compare,charts --bins -p examples --bin search-service
# The run's log and the fault runs' samples go to target/bench; the log and
# the charts drawn from it and the samples (the same run as the tables) to docs/bench.
mkdir -p target/bench
export BENCH_SAMPLES_DIR=target/bench
{
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(redis-server --version | cut -d' ' -f3)"
target/release/cache-hit
target/release/http
target/release/invalidate
target/release/events
target/release/local-tier
target/release/fault-run --scenario standalone target/release/search-service
target/release/fault-run --scenario cluster target/release/search-service
} 2>&1 | tee target/bench/bench.log
mkdir -p docs/bench
cp target/bench/bench.log docs/bench/bench.log
target/release/charts target/bench/bench.log target/bench docs/bench
