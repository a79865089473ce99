#!/usr/bin/env bash
# The checks well-kept crates run before a release, on the published crates
# (redis-cache-sync, redis-cache-macros, redis-cache-core,
# tower-redis-rate-limit; the unpublished examples, tests and benches are left
# out). Each is named on the
# command line; with none, all run:
#
#   package   `cargo package` of every library crate, each built from its
#             packaged files alone (a file the package leaves out fails it)
#   features  clippy (warnings denied) of every library crate with no
#             features, each feature alone and all (`cargo hack --each-feature`)
#   deny      `cargo deny check licenses bans sources` (deny.toml); also
#             `advisories` when the RustSec database (on GitHub) can be fetched
#   semver    `cargo semver-checks` against the last release on crates.io, or
#             against the git revision SEMVER_BASELINE_REV
#   docsrs    the docs as docs.rs builds them (nightly, `--cfg docsrs`, every
#             feature, warnings denied), and a feature shown on an item
#
# scripts/test.sh runs `package features deny`. Installs what it needs when
# missing, like test.sh installs redis-server: cargo-hack, cargo-deny and
# cargo-semver-checks at the versions below (`cargo install --locked`, once,
# into ~/.cargo/bin), and the nightly toolchain for `docsrs` (rustup).
#
# A check that cannot run (its tool cannot be installed) fails, unless
# TEST_ALLOW_SKIP names it (`package`, `features`, `deny`, `semver`,
# `docsrs`). Two things are reported rather than failed, because they depend
# on the world and not on this machine: advisories when the database cannot
# be fetched, and semver before the first release (nothing to compare with).
# Both are listed at the end, and in test.sh's list of skipped checks.
#
# What each check costs (CPU time, cold and after the rest of test.sh; the
# tools' installs once per machine): "Release checks" in docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_hack_version=0.6.46
cargo_deny_version=0.20.2
cargo_semver_checks_version=0.51.0
# The published crates: every workspace member but these.
unpublished=(examples tests benches)
# ... in the order a release publishes them (`cargo publish -p` each in turn),
# every crate after those it depends on: redis-cache-sync (the libraries'
# concurrency tools) first. `package` checks that this list is the workspace's.
publish_order=(redis-cache-sync redis-cache-macros redis-cache-core tower-redis-rate-limit)

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"
mkdir -p "$target_dir"
# test.sh exports TEST_SKIP_RECORD and lists it at its end; run alone, this
# script keeps its own list.
own_record=false
if [ -z "${TEST_SKIP_RECORD:-}" ]; then
  export TEST_SKIP_RECORD="$target_dir/release-check-skips.txt"
  : >"$TEST_SKIP_RECORD"
  own_record=true
fi
not_checked=()
report() {
  if [ "${#not_checked[@]}" -gt 0 ]; then
    echo "==> not checked"
    printf '    %s\n' "${not_checked[@]}"
  fi
  if $own_record; then
    echo "==> skipped checks"
    if [ -s "$TEST_SKIP_RECORD" ]; then sort -u "$TEST_SKIP_RECORD" | sed 's/^/    /'; else echo "    none"; fi
  fi
}
trap report EXIT

skip_allowed() {
  local allowed="${TEST_ALLOW_SKIP:-}"
  [[ ",${allowed// /}," == *",$1,"* ]]
}
# The check $1 cannot run, because of $2: recorded if TEST_ALLOW_SKIP names
# it, otherwise the run fails.
skip_or_fail() {
  if skip_allowed "$1"; then
    echo "==> skipping $1 (TEST_ALLOW_SKIP names it): $2"
    echo "$1: $2" >>"$TEST_SKIP_RECORD"
  else
    echo "error: $1 cannot run: $2; set TEST_ALLOW_SKIP=$1 to skip it instead" >&2
    exit 1
  fi
}
# Outside state kept the check $1 from running all the way ($2): said now,
# listed at the end, recorded; not a failure.
not_checked() {
  echo "    NOT CHECKED: $1: $2"
  not_checked+=("$1: $2")
  echo "$1 (not checked): $2" >>"$TEST_SKIP_RECORD"
}

# cargo-$1 at version $2, installed when missing or at another version.
# Returns non-zero when it cannot be installed.
ensure_tool() {
  local tool="cargo-$1" version="$2"
  if cargo "$1" --version 2>/dev/null | grep -qw "$version"; then
    return 0
  fi
  echo "==> installing $tool $version (cargo install --locked; once per machine)"
  cargo install --locked --quiet "$tool@$version"
}

exclude_unpublished=()
for crate in "${unpublished[@]}"; do exclude_unpublished+=(--exclude "$crate"); done

# The workspace members a release publishes, one a line.
published_crates() {
  cargo metadata --no-deps --format-version 1 --locked |
    grep -o '"name":"[^"]*","version":"[^"]*","id":"path+[^"]*"' | sed 's/"name":"\([^"]*\)".*/\1/' |
    grep -vxF -f <(printf '%s\n' "${unpublished[@]}")
}

# publish_order names every published crate, each after the workspace crates
# it depends on (crates.io refuses a crate whose dependency is not there yet).
check_publish_order() {
  if [ "$(published_crates | sort)" != "$(printf '%s\n' "${publish_order[@]}" | sort)" ]; then
    echo "error: publish_order (${publish_order[*]}) is not the published crates ($(published_crates | tr '\n' ' '))" >&2
    exit 1
  fi
  local i dep
  for i in "${!publish_order[@]}"; do
    # The crate's direct dependencies (the first line is the crate itself).
    while read -r dep _; do
      if printf '%s\n' "${publish_order[@]:i+1}" | grep -qxF "$dep"; then
        echo "error: ${publish_order[i]} depends on $dep, which publish_order puts after it" >&2
        exit 1
      fi
    done < <(cargo tree -p "${publish_order[i]}" -e normal,build --depth 1 --prefix none --locked | tail -n +2)
  done
}

check_package() {
  check_publish_order
  # The crates depend on each other at the same version; `--workspace`
  # packages them together (a local registry stands in for crates.io), so
  # each one builds from its .crate before any is published.
  # No debug info in these builds (nothing runs them): 12 % less CPU time.
  # Cargo unpacks the stand-in registry's crates under ~/.cargo/registry/src
  # once per version and reuses them: an unpacking left by an earlier run (of
  # another commit, the same version) would be built instead of this tree's.
  local cargo_home="${CARGO_HOME:-$HOME/.cargo}" version
  version="$(workspace_version)"
  local crate
  for crate in "${publish_order[@]}"; do
    rm -rf "$cargo_home"/registry/src/-*/"$crate-$version"
  done
  # And cargo takes a registry crate's build as final (registry sources never
  # change), so the crates are built in a target directory of this check's
  # own, from which their earlier builds are removed first; the dependencies'
  # builds stay.
  local build=target/package-check/debug
  for crate in "${publish_order[@]}"; do
    rm -rf "$build"/.fingerprint/"$crate"-*
  done
  rm -rf "$build"/deps/*{cache_sync,cache_core,cache_macros,rate_limit}-*
  CARGO_PROFILE_DEV_DEBUG=false cargo package --workspace "${exclude_unpublished[@]}" --locked --allow-dirty \
    --target-dir target/package-check
  # "MIT OR Apache-2.0" obliges every copy to carry both texts.
  local crate_file listing
  for crate_file in target/package-check/package/*-"$version".crate; do
    listing="$(tar -tzf "$crate_file")"
    for licence in LICENSE-MIT LICENSE-APACHE; do
      if ! grep -q "/$licence\$" <<<"$listing"; then
        echo "error: $crate_file does not carry $licence" >&2
        exit 1
      fi
    done
  done
}

workspace_version() {
  sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1
}

check_features() {
  if ! ensure_tool hack "$cargo_hack_version"; then
    skip_or_fail features "cargo-hack $cargo_hack_version could not be installed"
    return
  fi
  # `--lib`: the libraries as a user builds them, without the dev-dependencies
  # (whose features would otherwise be unified in).
  cargo hack clippy --workspace --ignore-private --each-feature --lib --locked -- -D warnings
}

check_deny() {
  if ! ensure_tool deny "$cargo_deny_version"; then
    skip_or_fail deny "cargo-deny $cargo_deny_version could not be installed"
    return
  fi
  cargo deny --locked check licenses bans sources
  if GIT_TERMINAL_PROMPT=0 timeout 60 git ls-remote --exit-code https://github.com/RustSec/advisory-db HEAD >/dev/null 2>&1; then
    cargo deny --locked check advisories
  else
    not_checked advisories "the RustSec advisory database (github.com/RustSec/advisory-db) cannot be fetched from this machine"
  fi
}

# Whether crate $1 has a release on crates.io (its sparse index file exists).
published() {
  local name="$1" path
  case ${#name} in
    1) path="1/$name" ;;
    2) path="2/$name" ;;
    3) path="3/${name:0:1}/$name" ;;
    *) path="${name:0:2}/${name:2:2}/$name" ;;
  esac
  [ "$(curl -s -o /dev/null -w '%{http_code}' "https://index.crates.io/$path")" = 200 ]
}

check_semver() {
  if ! ensure_tool semver-checks "$cargo_semver_checks_version"; then
    skip_or_fail semver "cargo-semver-checks $cargo_semver_checks_version could not be installed"
    return
  fi
  if [ -n "${SEMVER_BASELINE_REV:-}" ]; then
    cargo semver-checks --workspace --baseline-rev "$SEMVER_BASELINE_REV"
    return
  fi
  if ! command -v curl >/dev/null 2>&1; then
    skip_or_fail semver "curl is needed to look the crates up on crates.io"
    return
  fi
  local crates=() released=()
  mapfile -t crates < <(published_crates)
  for crate in "${crates[@]}"; do
    if published "$crate"; then released+=(-p "$crate"); fi
  done
  if [ "${#released[@]}" -eq 0 ]; then
    not_checked semver "no release of ${crates[*]} on crates.io yet, so nothing to compare with (after 0.1.0 the last release is the baseline; SEMVER_BASELINE_REV=<git revision> compares with a revision instead)"
    return
  fi
  cargo semver-checks "${released[@]}"
}

check_docsrs() {
  if ! command -v rustup >/dev/null 2>&1; then
    skip_or_fail docsrs "rustup is not installed, so the nightly toolchain docs.rs uses cannot be"
    return
  fi
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "==> installing the nightly toolchain (rustup)"
    if ! rustup toolchain install nightly --profile minimal; then
      skip_or_fail docsrs "the nightly toolchain could not be installed"
      return
    fi
  fi
  # What docs.rs runs ([package.metadata.docs.rs] in each Cargo.toml), in a
  # target directory of its own so that the stable builds stay warm.
  RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo +nightly doc --workspace "${exclude_unpublished[@]}" \
    --all-features --no-deps --locked --target-dir "$target_dir/docsrs"
  # `doc_cfg` at work: an item behind a feature says so.
  local page="$target_dir/docsrs/doc/cache_core/enum.Codec.html"
  if ! grep -q 'crate feature <code>msgpack</code>' "$page"; then
    echo "error: $page does not say that Codec::MessagePack needs the msgpack feature" >&2
    exit 1
  fi
}

checks=("$@")
[ ${#checks[@]} -gt 0 ] || checks=(package features deny semver docsrs)
for check in "${checks[@]}"; do
  case "$check" in
    package | features | deny | semver | docsrs) ;;
    *) echo "error: unknown check '$check' (package, features, deny, semver, docsrs)" >&2; exit 2 ;;
  esac
done
for check in "${checks[@]}"; do
  echo "==> release check: $check"
  started=$SECONDS
  "check_$check"
  echo "    $check took $((SECONDS - started)) s"
done
