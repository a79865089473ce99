//! The two small concurrency tools of the workspace, written once: locks
//! that survive a panic, and a flag that tells when a state changes.
//!
//! Public but hidden: for this workspace's crates (the rate limiter), not a
//! promise to other users.
//!
//! ```
//! use std::sync::Mutex;
//! use cache_core::sync::{StateFlag, lock};
//!
//! let seen = Mutex::new(Vec::new());
//! lock(&seen).push(1);
//!
//! // Logs "down" once when an outage starts and "up" once when it ends,
//! // however many calls see it.
//! static FAILING: StateFlag = StateFlag::new();
//! assert!(FAILING.raise(), "the first failure is a change");
//! assert!(!FAILING.raise(), "the next ones are not");
//! assert!(FAILING.lower(), "the first success after them is");
//! assert!(!FAILING.lower());
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, taking the data even when a thread panicked while holding
/// it. For data that every critical section leaves consistent (one map
/// operation, one assignment): then a poisoned lock holds whole data, and
/// refusing it would turn one panic into a failure of every later call.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for the readers of an `RwLock`.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for the writer of an `RwLock`.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A condition that is either on or off (a store failing, credentials
/// refused), to log once per change rather than once per call: the caller
/// logs when [`raise`](Self::raise) or [`lower`](Self::lower) answers `true`.
#[derive(Debug, Default)]
pub struct StateFlag(AtomicBool);

impl StateFlag {
    /// A flag that is off.
    pub const fn new() -> StateFlag {
        StateFlag(AtomicBool::new(false))
    }

    /// Turns the flag on; `true` when it was off (this call saw the change).
    pub fn raise(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }

    /// Turns the flag off; `true` when it was on. Only reads while it is
    /// off, so the common case (all well) writes no shared cache line.
    pub fn lower(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Relaxed)
    }

    /// Whether the flag is on.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let mutex = std::sync::Arc::new(Mutex::new(7));
        let poisoner = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 7);
    }

    #[test]
    fn a_flag_reports_each_change_once() {
        let flag = StateFlag::new();
        assert!(!flag.lower(), "off already");
        assert!(flag.raise());
        assert!(!flag.raise());
        assert!(flag.is_raised());
        assert!(flag.lower());
        assert!(!flag.lower());
        assert!(flag.raise(), "a new outage is a new change");
    }
}
