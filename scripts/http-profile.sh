#!/usr/bin/env bash
# Where one HTTP benchmark row spends its CPU: runs `http` with only that row
# (BENCH_ONLY, default "RateLimitLayer`, Redis") of one scenario (default
# "many": 10 000 clients through a trusted proxy), and samples the service
# process and redis-server with `perf record` while it runs. Prints the
# hottest symbols of each process (self time). About a minute after the build.
#
#   ./scripts/http-profile.sh                 # RateLimitLayer on Redis, many clients
#   ./scripts/http-profile.sh 'EVALSHA' many  # the raw EVALSHA baseline
#   ./scripts/http-profile.sh 'bare' hot      # bare axum, one hot client
#   ./scripts/http-profile.sh '' hot          # RateLimitLayer on Redis, one hot client
#
# Needs perf (Debian: linux-perf) and kernel.perf_event_paranoid <= 1 (or root).
set -euo pipefail
cd "$(dirname "$0")/.."
only="${1:-\`RateLimitLayer\`, Redis}"
scenario="${2:-many}"
rounds="${ROUNDS:-12}"
cargo build --release -p benches --features compare --bin http
bin="${CARGO_TARGET_DIR:-target}/release/http"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
BENCH_ONLY="!$only" BENCH_SCENARIOS="$scenario" BENCH_ROUNDS="$rounds" BENCH_LATENCY=0 BENCH_ACCURACY=0 \
  "$bin" >"$out/bench.txt" 2>"$out/pids.txt" &
bench=$!
pids=""
for _ in $(seq 100); do
  pids=$(sed -n 's/service process pid \([0-9]*\), redis-server pid \([0-9]*\)/\1 \2/p' "$out/pids.txt")
  [ -n "$pids" ] && break
  sleep 0.1
done
read -r service redis <<<"$pids"
# Skip the first second (connections opening), sample most of the rest.
sleep 1
perf record -q -F 1999 -p "$service,$redis" -o "$out/perf.data" -- sleep $((rounds - 2)) 2>/dev/null
wait "$bench"
cat "$out/bench.txt"
# Self time per component, from the symbol of each sample (a sample counts
# where the CPU was, not who called it: malloc called by the limiter counts
# as "libc malloc/free").
components() {
  awk '
    { pct = $1; sub(/%/, "", pct); dso = $2; sym = $0; sub(/^[^]]*\] /, "", sym) }
    dso ~ /kernel/ {
      if (sym ~ /tcp|^ip_|_ip_|inet|sock|skb|net|napi|loopback|bbr|__dev|dev_|^sk_|__sk_|copy_(to|from)_iter|_copy_|csum|nf_|ep_|epoll/) c = "kernel: TCP, sockets, epoll"
      else if (sym ~ /sched|switch|futex|wake|ttwu|enqueue|dequeue|spin|pick_next|update_|idle|psi|cpuacct|hrtimer|rcu/) c = "kernel: scheduling, futex, wake-ups"
      else c = "kernel: syscalls, other"
    }
    dso !~ /kernel/ {
      if (sym ~ /malloc|free|_int_|realloc|unlink_chunk|tcache/) c = "libc malloc/free"
      else if (dso ~ /libc|vdso/) c = "libc other, vdso"
      else if (sym ~ /rate_limit/) c = "rate_limit"
      else if (sym ~ /cache_core/) c = "cache_core"
      else if (sym ~ /redis::|combine::/) c = "redis crate"
      else if (sym ~ /hyper|httparse|axum|tower|http::|matchit/) c = "hyper, axum, http"
      else if (sym ~ /tokio|mio|futures/) c = "tokio, futures"
      else if (sym ~ /lua/) c = "Lua"
      else if (dso ~ /redis/) c = "redis-server itself (commands, dict, networking)"
      else c = "other: " dso
    }
    { sum[c] += pct; total += pct }
    END { for (c in sum) printf "%6.2f%%  %s\n", sum[c], c; printf "%6.2f%%  all\n", total }
  ' | sort -rn
}
for who in "service process:$service" "redis-server:$redis"; do
  pid="${who##*:}"
  echo
  echo "## ${who%:*}: self time per component (% of all samples of both processes)"
  perf report -q -i "$out/perf.data" --pid "$pid" --no-children --sort dso,sym 2>/dev/null \
    | components || true
  echo
  echo "## ${who%:*}: hottest symbols"
  perf report -q -i "$out/perf.data" --pid "$pid" --no-children --sort dso,sym 2>/dev/null \
    | head -25 || true
done
