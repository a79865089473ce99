//! Checks that cannot run here fail, unless skipping them is allowed.
//!
//! A test whose tool is missing (headless Chromium, say) must not pass
//! quietly: `cargo test` hides what a passing test prints, so a "skipped"
//! line would go unseen and the check would look done. [`skip_or_fail`]
//! fails the test instead, unless the environment variable
//! [`ALLOW_SKIP_VAR`] (`TEST_ALLOW_SKIP=chromium,msrv`) names the check;
//! then the skip is recorded (a line in [`record_path`]) and
//! `scripts/test.sh` lists it at its end.
//!
//! ```no_run
//! fn chromium_installed() -> bool { false }
//!
//! if !chromium_installed() {
//!     // Panics unless TEST_ALLOW_SKIP names `chromium`.
//!     tests::skip::skip_or_fail("chromium", "chromium is not installed");
//!     return;
//! }
//! ```

use std::io::Write;
use std::path::PathBuf;

/// The environment variable naming the checks that may be skipped where
/// they cannot run: comma-separated names, e.g. `chromium,msrv`.
pub const ALLOW_SKIP_VAR: &str = "TEST_ALLOW_SKIP";

/// The environment variable that sets the file skips are recorded in
/// (`scripts/test.sh` sets it); by default `skipped-checks.txt` in the
/// target directory.
pub const RECORD_VAR: &str = "TEST_SKIP_RECORD";

/// Whether `allowed` (the value of [`ALLOW_SKIP_VAR`]) names `check`.
pub fn is_allowed(allowed: &str, check: &str) -> bool {
    allowed.split(',').any(|name| name.trim() == check)
}

/// Where skips are recorded: [`RECORD_VAR`], or `skipped-checks.txt` in the
/// target directory (the one holding the running test binary, found by its
/// `CACHEDIR.TAG`).
pub fn record_path() -> PathBuf {
    if let Some(path) = std::env::var_os(RECORD_VAR).filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no target directory above {}: set {RECORD_VAR}",
                exe.display()
            )
        });
    target.join("skipped-checks.txt")
}

/// The check `check` cannot run here, because of `reason` (what is missing
/// and how to get it). Panics, failing the test, unless [`ALLOW_SKIP_VAR`]
/// names `check`; then records `check: reason` in [`record_path`], says so
/// on stderr and returns: the caller returns too.
pub fn skip_or_fail(check: &str, reason: &str) {
    let allowed = std::env::var(ALLOW_SKIP_VAR).unwrap_or_default();
    if !is_allowed(&allowed, check) {
        panic!(
            "{check} cannot run: {reason}. \
             Set {ALLOW_SKIP_VAR}={check} to skip it instead (recorded, and listed by scripts/test.sh)"
        );
    }
    let path = record_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the skip record's directory");
    }
    let mut record = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|err| panic!("record the skip of {check} in {}: {err}", path.display()));
    writeln!(record, "{check}: {reason}").expect("record the skip");
    eprintln!("skipped ({ALLOW_SKIP_VAR} names it): {check}: {reason}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_checks_named_may_be_skipped() {
        assert!(is_allowed("chromium", "chromium"));
        assert!(is_allowed("msrv, chromium", "chromium"));
        assert!(!is_allowed("", "chromium"));
        assert!(!is_allowed("chromium-headless,msrv", "chromium"));
        assert!(
            !is_allowed("all", "chromium"),
            "no wildcard: each skip is named"
        );
    }
}
