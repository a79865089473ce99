#!/usr/bin/env bash
# Instructions per call of the 64-task MessagePack hit, #[cached] against raw
# GET + rmp_serde, counted by callgrind in the client process (redis-server is
# not counted); then of the local tier's hit, #[cached] and get_or_set
# against a plain moka get + clone. Deterministic where throughput on a shared VM is not; about a
# minute after the build. Installs valgrind and redis-server when missing.
#
# Callgrind's CPU has no SHA extensions, so SHA-256 runs in software here
# (about 3 500 instructions per key); natively sha2 uses SHA-NI when the CPU
# has it. The script prints the figures with and without that part.
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
# HIT_FEATURES=metrics: with the libraries' metrics on (a Prometheus recorder installed).
cargo build --release -p benches --bin hit-instructions --bin local-hit-instructions ${HIT_FEATURES:+--features "$HIT_FEATURES"}
bin="${CARGO_TARGET_DIR:-target}/release/hit-instructions"
local_bin="${CARGO_TARGET_DIR:-target}/release/local-hit-instructions"
calls=6400
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

count() { # variant calls -> instructions (and a profile in $out/variant-calls)
  local n
  n=$(valgrind --tool=callgrind --callgrind-out-file="$out/$1-$2" "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  [ -n "$n" ] || { echo "callgrind run of $bin $1 $2 failed" >&2; exit 1; }
  echo "$n"
}
sha() { # profile -> instructions in software SHA-256
  callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null \
    | awk '/sha2::sha256::soft|sha2::sha256::compress256/ { gsub(",", "", $1); s += $1 } END { print s + 0 }'
}
raw_all=$(count raw "$calls")
raw_setup=$(count raw 0)
per_call() { # variant -> instructions of its calls, set-up subtracted
  echo $(( $(count "$1" "$calls") - $(count "$1" 0) ))
}
range=$(per_call raw-getrange)
strlen=$(per_call raw-strlen)
lua=$(per_call raw-lua)
macro_all=$(count macro "$calls")
macro_setup=$(count macro 0)
raw=$((raw_all - raw_setup))
macro=$((macro_all - macro_setup))
macro_sha=$(( $(sha "$out/macro-$calls") - $(sha "$out/macro-0") ))
# The local tier's hit, one task: the floor (moka get + clone), #[cached], get_or_set.
local_calls=20000
local_count() { # variant calls -> instructions
  local n
  n=$(valgrind --tool=callgrind --callgrind-out-file="$out/local-$1-$2" "$local_bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  [ -n "$n" ] || { echo "callgrind run of $local_bin $1 $2 failed" >&2; exit 1; }
  echo "$n"
}
local_per_call() { # variant -> instructions of its calls, set-up subtracted
  echo $(( $(local_count "$1" "$local_calls") - $(local_count "$1" 0) ))
}
local_floor=$(local_per_call floor)
local_macro=$(local_per_call macro)
local_function=$(local_per_call function)
awk -v raw="$raw" -v range="$range" -v strlen="$strlen" -v lua="$lua" -v mac="$macro" -v sha="$macro_sha" -v calls="$calls" 'BEGIN {
  printf "instructions per call, 64 tasks, MessagePack hit (%d calls, set-up subtracted)\n", calls
  printf "| variant | instructions per call | ratio to raw |\n| --- | ---: | ---: |\n"
  printf "| raw GET + rmp_serde (baseline) | %.0f | 1.00 |\n", raw / calls
  printf "| raw GETRANGE key 0 cap + rmp_serde | %.0f | %.3f |\n", range / calls, range / raw
  printf "| raw STRLEN, then GET + rmp_serde | %.0f | %.3f |\n", strlen / calls, strlen / raw
  printf "| raw EVALSHA (STRLEN + GET in Lua) + rmp_serde | %.0f | %.3f |\n", lua / calls, lua / raw
  printf "| #[cached(codec = \"msgpack\")] | %.0f | %.3f |\n", mac / calls, mac / raw
  printf "| the same without software SHA-256 | %.0f | %.3f |\n", (mac - sha) / calls, (mac - sha) / raw
}'
awk -v floor="$local_floor" -v mac="$local_macro" -v fn="$local_function" -v calls="$local_calls" 'BEGIN {
  printf "\ninstructions per local-tier hit of the 384-float embedding, 1 task (%d calls, set-up subtracted)\n", calls
  printf "| variant | instructions per call | ratio to the floor |\n| --- | ---: | ---: |\n"
  printf "| moka get + clone (floor) | %.0f | 1.00 |\n", floor / calls
  printf "| #[cached] local hit, JSON | %.0f | %.3f |\n", mac / calls, mac / floor
  printf "| get_or_set local hit | %.0f | %.3f |\n", fn / calls, fn / floor
}'
