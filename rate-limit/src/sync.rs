//! The primitives the limiter's shared state (the deny cache, the count of
//! requests at the store) is built on: std's own, or, in a build with
//! `--cfg shuttle` (`scripts/test.sh`), shuttle's, whose scheduler runs that
//! state under many interleavings (this crate's tests only). Any other
//! build uses std's types themselves, so it pays nothing.

#[cfg(not(all(test, shuttle)))]
pub(crate) use cache_core::sync::{read, write};
#[cfg(not(all(test, shuttle)))]
pub(crate) use std::sync::atomic::AtomicUsize;
#[cfg(not(all(test, shuttle)))]
pub(crate) use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(all(test, shuttle))]
pub(crate) use shuttle::sync::atomic::AtomicUsize;
#[cfg(all(test, shuttle))]
pub(crate) use shuttle::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `cache_core::sync::read` for shuttle's lock.
#[cfg(all(test, shuttle))]
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `cache_core::sync::write` for shuttle's lock.
#[cfg(all(test, shuttle))]
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `test` under shuttle's random scheduler: `SHUTTLE_ITERATIONS`
/// schedules (default 2 000) drawn from `SHUTTLE_SEED` (default 24).
/// A failure prints the schedule that broke, for `shuttle::replay`.
#[cfg(all(test, shuttle))]
pub(crate) fn explore(test: impl Fn() + Send + Sync + 'static) {
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let iterations = usize::try_from(setting("SHUTTLE_ITERATIONS", 2_000)).unwrap_or(2_000);
    shuttle::check_random_with_seed(test, setting("SHUTTLE_SEED", 24), iterations);
}
