//! The workspace's concurrency tools (the `cache-sync` crate) as this
//! crate uses them, and the primitives its concurrent pieces are built on,
//! which its `--cfg shuttle` tests swap for shuttle's.

pub(crate) use cache_sync::{InsertionOrderedMap, StateFlag, StripedCounters, lock};

/// The primitives the concurrent pieces (the single-flight map, the event
/// bus's registry and queues, the circuit breaker) are built on: std's
/// own, or, in this crate's tests built with `--cfg shuttle`
/// (`scripts/test.sh`), shuttle's, whose scheduler runs those pieces under
/// many interleavings. Any other build uses std's types themselves, so it
/// pays nothing.
#[cfg(not(all(test, shuttle)))]
pub(crate) mod primitives {
    pub(crate) use super::lock;
    pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};
    pub(crate) use std::sync::{Mutex, OnceLock};
}

/// shuttle's `Mutex`, and a `OnceLock` (shuttle has none) whose reads and
/// writes are points where the scheduler may switch tasks: a follower
/// that checks for the outcome and a leader that settles it interleave.
#[cfg(all(test, shuttle))]
pub(crate) mod primitives {
    pub(crate) use shuttle::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};
    pub(crate) use shuttle::sync::{Mutex, MutexGuard};

    /// [`cache_sync::lock`] for shuttle's mutex.
    pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `std::sync::OnceLock`, with scheduling points around each access.
    pub(crate) struct OnceLock<T>(std::sync::OnceLock<T>);

    impl<T> OnceLock<T> {
        pub(crate) const fn new() -> Self {
            OnceLock(std::sync::OnceLock::new())
        }

        pub(crate) fn get(&self) -> Option<&T> {
            shuttle::thread::yield_now();
            let value = self.0.get();
            shuttle::thread::yield_now();
            value
        }

        pub(crate) fn set(&self, value: T) -> Result<(), T> {
            shuttle::thread::yield_now();
            let set = self.0.set(value);
            shuttle::thread::yield_now();
            set
        }
    }

    /// Runs `test` under shuttle's random scheduler: `SHUTTLE_ITERATIONS`
    /// schedules (default 2 000) drawn from `SHUTTLE_SEED` (default 24).
    /// A failure prints the schedule that broke, for `shuttle::replay`.
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
}
