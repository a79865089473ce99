#!/usr/bin/env bash
# Fault run of search-service under load (loopback only, about 10 s):
# Redis killed, restarted on the same port, then paused with CLIENT PAUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p examples --bin search-service -p benches --bin fault-run
target/release/fault-run target/release/search-service
