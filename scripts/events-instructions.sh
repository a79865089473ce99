#!/usr/bin/env bash
# Instructions per message of the event bus, one in flight (publish, then
# receive), in memory and on a loopback redis-server, counted by callgrind in
# the client process (redis-server is not counted), set-up subtracted.
# Deterministic where the `events` bench's latencies on a shared VM are not.
# Installs valgrind and redis-server when missing.
#   ./scripts/events-instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release -p benches --bin events-instructions
bin="${CARGO_TARGET_DIR:-target}/release/events-instructions"
messages=20000
count() { # variant messages -> instructions
  local n
  n=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  [ -n "$n" ] || { echo "callgrind run of $bin $1 $2 failed" >&2; exit 1; }
  echo "$n"
}
echo "instructions per message, one in flight ($messages messages, set-up subtracted)"
echo "| variant | instructions per message |"
echo "| --- | ---: |"
for variant in memory redis; do
  all=$(count "$variant" "$messages")
  setup=$(count "$variant" 0)
  echo "| $variant | $(( (all - setup) / messages )) |"
done
