#!/usr/bin/env bash
# Instructions per request on the service side of the HTTP many-clients row
# (10 000 clients through a trusted proxy), counted by callgrind in the
# service process: bare axum, the hand-written INCR + EXPIRE NX middleware,
# RateLimitLayer on Redis, in memory and with shared counting (redis-server
# is another process, not counted). Deterministic where CPU time on a shared VM is not; prints
# each variant's instructions per request, the share in malloc/free, and the
# hottest functions of the layer's run. Installs valgrind and redis-server
# when missing.
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
cargo build --release -p benches --bin rl-instructions
bin="${CARGO_TARGET_DIR:-target}/release/rl-instructions"
requests="${REQUESTS:-6400}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

count() { # variant requests -> instructions (and a profile in $out/variant-requests)
  local n
  n=$(valgrind --tool=callgrind --callgrind-out-file="$out/$1-$2" "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  [ -n "$n" ] || { echo "callgrind run of $bin $1 $2 failed" >&2; exit 1; }
  echo "$n"
}
alloc() { # profile -> instructions in malloc/free/realloc (self)
  callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null \
    | awk '/malloc|free|realloc|_int_|tcache|unlink_chunk/ { gsub(",", "", $1); s += $1 } END { print s + 0 }'
}
echo "instructions per request, service side, $requests requests of 10 000 clients (set-up subtracted)"
echo "| variant | instructions per request | of which malloc/free | ratio to bare |"
echo "| --- | ---: | ---: | ---: |"
bare=""
for variant in bare naive layer layer-memory layer-shared; do
  all=$(count "$variant" "$requests")
  setup=$(count "$variant" 0)
  per=$(( (all - setup) / requests ))
  mem=$(( ($(alloc "$out/$variant-$requests") - $(alloc "$out/$variant-0")) / requests ))
  [ -n "$bare" ] || bare=$per
  awk -v v="$variant" -v p="$per" -v m="$mem" -v b="$bare" \
    'BEGIN { printf "| %s | %d | %d | %.2f |\n", v, p, m, p / b }'
done
echo
echo "## layer on Redis: hottest functions (self, whole run)"
callgrind_annotate --auto=no "$out/layer-$requests" 2>/dev/null | sed -n '1,60p' | tail -45
