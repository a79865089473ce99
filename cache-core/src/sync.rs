//! The small concurrency tools of the workspace, written once: locks that
//! survive a panic, a flag that tells when a state changes, and counters
//! that many threads add to without sharing a cache line.
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

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// `N` counters, in stripes: each thread adds to one stripe of its own cache
/// line, so that calls on different cores do not pass one line back and
/// forth on every count; a read adds the stripes up. Counters are named by
/// the caller's index constants (below `N`).
///
/// ```
/// use cache_core::sync::StripedCounters;
///
/// const HITS: usize = 0;
/// const MISSES: usize = 1;
/// let counters = StripedCounters::<2>::default();
/// counters.add(HITS);
/// counters.add(HITS);
/// assert_eq!((counters.sum(HITS), counters.sum(MISSES)), (2, 0));
/// ```
#[derive(Debug)]
pub struct StripedCounters<const N: usize> {
    stripes: [Stripe<N>; STRIPES],
}

const STRIPES: usize = 8;

#[repr(align(128))]
#[derive(Debug)]
struct Stripe<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for StripedCounters<N> {
    fn default() -> Self {
        StripedCounters {
            stripes: std::array::from_fn(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0)))),
        }
    }
}

impl<const N: usize> StripedCounters<N> {
    /// Adds one to `counter` (an index below `N`; others are ignored).
    pub fn add(&self, counter: usize) {
        if let Some(count) = self.stripes[stripe_index()].0.get(counter) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The total of `counter` over all threads (0 for an index not below `N`).
    pub fn sum(&self, counter: usize) -> u64 {
        self.stripes
            .iter()
            .filter_map(|stripe| stripe.0.get(counter))
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }
}

/// This thread's stripe (below `STRIPES`): threads take stripes in turn as they first count.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        if index.get() == usize::MAX {
            index.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        index.get()
    })
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
    fn striped_counters_add_up_over_threads() {
        let counters = std::sync::Arc::new(StripedCounters::<2>::default());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        counters.add(1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!((counters.sum(0), counters.sum(1)), (0, 1600));
        counters.add(7);
        assert_eq!(counters.sum(7), 0, "an index out of range is ignored");
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
