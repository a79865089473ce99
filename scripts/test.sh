#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need
# (redis-server and redis-cli, from Debian's packages) when missing, then
# format check, clippy with warnings as errors, and every test of the workspace.
#
# A check that cannot run here (its tool missing) fails, unless TEST_ALLOW_SKIP
# names it: comma-separated, from `chromium` (the browser test), `grpcio` (the
# gRPC interop test, which needs Python's venv and PyPI) and `msrv` (the
# minimum Rust version check, which needs rustup). Each skip is recorded, and
# the list is printed at the end ("none" when nothing was skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"
# The tests record their skips here too (tests::skip).
export TEST_SKIP_RECORD="$target_dir/skipped-checks.txt"
mkdir -p "$target_dir"
: >"$TEST_SKIP_RECORD"
report_skips() {
  echo "==> skipped checks"
  if [ -s "$TEST_SKIP_RECORD" ]; then
    sort -u "$TEST_SKIP_RECORD" | sed 's/^/    /'
  else
    echo "    none"
  fi
}
trap report_skips EXIT
skip_allowed() {
  local allowed="${TEST_ALLOW_SKIP:-}"
  [[ ",${allowed// /}," == *",$1,"* ]]
}
# A check named $1 cannot run, because of $2: recorded if its skip is allowed,
# otherwise the run fails.
skip_or_fail() {
  if skip_allowed "$1"; then
    echo "==> skipping $1 (TEST_ALLOW_SKIP names it): $2"
    echo "$1: $2" >>"$TEST_SKIP_RECORD"
  else
    echo "error: $1 cannot run: $2; set TEST_ALLOW_SKIP=$1 to skip it instead" >&2
    exit 1
  fi
}

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "==> installing redis-server and redis-cli"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq redis-server >/dev/null
fi
# The Debian package starts a system service on 6379; the tests never use it
# (they start their own servers on free ports), so it is left alone.
# openssl makes the throwaway CA of the TLS test.
if ! command -v openssl >/dev/null 2>&1; then
  echo "==> installing openssl"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq openssl >/dev/null
fi
# Headless Chromium drives the portfolio's live page (without it the browser
# test fails, unless TEST_ALLOW_SKIP names chromium).
if ! command -v chromium >/dev/null 2>&1; then
  echo "==> installing chromium"
  if ! { "${sudo_cmd[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq chromium >/dev/null; }; then
    echo "    chromium could not be installed: the browser test fails unless TEST_ALLOW_SKIP names chromium"
  fi
fi
redis-server --version
# Python's grpcio, the second gRPC implementation tests/tests/grpc.rs calls the
# rate limiter with, in a venv of its own under the target directory (without
# it the grpcio test fails, unless TEST_ALLOW_SKIP names grpcio).
grpcio_venv="$target_dir/grpcio-venv"
if ! "$grpcio_venv/bin/python" -c 'import grpc, grpc_health' >/dev/null 2>&1; then
  echo "==> installing grpcio in $grpcio_venv"
  if ! { python3 -m venv "$grpcio_venv" &&
    "$grpcio_venv/bin/pip" install -q grpcio==1.85.4 grpcio-health-checking==1.85.1; }; then
    echo "    grpcio could not be installed: the grpcio test fails unless TEST_ALLOW_SKIP names grpcio"
  fi
fi
if "$grpcio_venv/bin/python" -c 'import grpc, grpc_health' >/dev/null 2>&1; then
  export TEST_GRPCIO_PYTHON="$grpcio_venv/bin/python"
fi

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The benches' comparisons with other libraries are behind a feature the
# tests do not build; lint them too, so that the benchmark keeps compiling.
cargo clippy -p benches --all-targets --features compare,charts --locked -- -D warnings
# The test crate turns on the `metrics` feature (feature unification): lint
# the libraries without it too, and check it adds no dependency when off.
cargo clippy -p redis-cache-core -p tower-redis-rate-limit --lib --locked -- -D warnings
echo "==> no metrics dependency without the feature (cargo tree -e normal)"
for crate in redis-cache-core tower-redis-rate-limit; do
  if cargo tree -p "$crate" -e normal --prefix none --locked | grep -q '^metrics '; then
    echo "$crate depends on metrics without its feature" >&2
    exit 1
  fi
done

echo "==> cargo doc (broken intra-doc links and other doc warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# The rust-version stated in Cargo.toml is checked, not just claimed: the
# library crates must build with that toolchain (rustup installs it once).
msrv="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
# The README states it with the policy for raising it; keep the two in step.
grep -qE "Minimum supported Rust version: ${msrv//./\\.}([^0-9.]|$)" README.md || {
  echo "README.md does not state the minimum Rust version $msrv of Cargo.toml (\"Minimum supported Rust version: $msrv\")" >&2
  exit 1
}
[[ "$msrv" == *.*.* ]] || msrv="$msrv.0"
if command -v rustup >/dev/null 2>&1; then
  echo "==> cargo +$msrv check (the stated minimum Rust version)"
  rustup toolchain list | grep -q "^$msrv-" || rustup toolchain install "$msrv" --profile minimal
  cargo "+$msrv" check --workspace --lib --locked --target-dir target/msrv
else
  skip_or_fail msrv "rustup is not installed, so rust-version $msrv cannot be checked"
fi

# What a release needs of the published crates: they package and build from
# their packaged files, build with each feature alone, and pass cargo deny
# (scripts/release-check.sh says what each check does and installs its tools;
# its `semver` and `docsrs` checks run only before a release).
./scripts/release-check.sh package features deny

# Also the doc tests: those of the examples crate compile every Rust block of
# README.md and the guide (docs/), and tests/tests/doc_links.rs fails on a
# link of theirs that points nowhere (external links are not fetched).
echo "==> cargo test"
cargo test --workspace --locked

# The concurrent pieces under shuttle's randomized scheduler (2 000 schedules
# each; scripts/interleavings.sh says how to run more).
echo "==> concurrency under shuttle's scheduler"
./scripts/interleavings.sh
