//! The small concurrency tools of the workspace's two libraries,
//! [redis-cache-core](https://crates.io/crates/redis-cache-core) and
//! [tower-redis-rate-limit](https://crates.io/crates/tower-redis-rate-limit),
//! written once: locks that survive a panic ([`lock`], [`read`], [`write()`]),
//! a flag that tells when a state changes ([`StateFlag`]), counters that many
//! threads add to without sharing a cache line ([`StripedCounters`]), and the
//! insertion-ordered map that bounded caches evict from
//! ([`InsertionOrderedMap`]).
//!
//! A crate of its own so that neither library has to publish these tools as
//! part of its API. Its API follows what those two crates need, and changes
//! when they do: it is not meant for other users, and makes them no promise
//! beyond the version rules of Cargo.
//!
//! ```
//! use std::sync::Mutex;
//! use cache_sync::{StateFlag, lock};
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

#![warn(missing_docs)]

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
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
/// use cache_sync::StripedCounters;
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
    #[inline]
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

/// A map that remembers the order its keys were inserted in, for caches
/// bounded by evicting the oldest entry: each key sits in the map and, with
/// a generation number, in a queue; an item whose generation no longer
/// matches the map (its key was removed, or inserted again) is skipped and
/// dropped. Every queue item is popped at most once, and the queue is
/// rebuilt when stale items dominate, so all operations are O(1) amortized
/// however full the map is.
#[derive(Debug)]
pub struct InsertionOrderedMap<V> {
    /// Hashed with foldhash seeded at random per map, as the single-flight
    /// map and the local tier are: keys that come from clients (a rate
    /// limiter's deny cache, the in-memory store) are not hashed with a
    /// function they can know, at a tenth of SipHash's cost on short keys.
    map: HashMap<String, (V, u64), foldhash::quality::RandomState>,
    order: VecDeque<(String, u64)>,
    next_generation: u64,
}

impl<V> Default for InsertionOrderedMap<V> {
    fn default() -> Self {
        InsertionOrderedMap {
            map: HashMap::default(),
            order: VecDeque::new(),
            next_generation: 0,
        }
    }
}

impl<V> InsertionOrderedMap<V> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `true` when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Items in the eviction queue, stale ones included (for tests of the bound).
    pub fn queued(&self) -> usize {
        self.order.len()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|(value, _)| value)
    }

    /// The value of `key`, to change in place (its place in the order stays).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.map.get_mut(key).map(|(value, _)| value)
    }

    /// Removes `key`; its queue item goes stale.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.map.remove(key).map(|(value, _)| value)
    }

    /// Inserts `key` as the newest entry (a key already there moves to the back).
    pub fn insert(&mut self, key: &str, value: V) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.map.insert(key.to_string(), (value, generation));
        self.order.push_back((key.to_string(), generation));
        // Removals leave stale items behind: rebuild when they dominate
        // (amortized O(1): the rebuild follows at least as many removals).
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(key, generation)| map.get(key).is_some_and(|(_, g)| g == generation));
        }
    }

    /// Removes the oldest entry.
    pub fn pop_oldest(&mut self) -> Option<V> {
        while let Some((key, generation)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|(_, g)| *g == generation) {
                return self.map.remove(&key).map(|(value, _)| value);
            }
        }
        None
    }

    /// Removes the oldest entries while `expired` says so of them, stopping at
    /// the first that is not (for entries inserted in expiry order).
    pub fn pop_oldest_while(&mut self, mut expired: impl FnMut(&V) -> bool) {
        while let Some((key, generation)) = self.order.front() {
            match self.map.get(key.as_str()) {
                Some((value, g)) if g == generation && !expired(value) => return,
                _ => {}
            }
            if let Some((key, generation)) = self.order.pop_front()
                && self.map.get(&key).is_some_and(|(_, g)| *g == generation)
            {
                self.map.remove(&key);
            }
        }
    }

    /// Keeps the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        self.map.retain(|key, (value, _)| keep(key, value));
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

    #[test]
    fn the_map_gives_up_its_entries_oldest_first() {
        let mut map = InsertionOrderedMap::default();
        map.insert("a", 1);
        map.insert("b", 2);
        map.insert("c", 3);
        map.insert("a", 4);
        assert_eq!(map.remove("b"), Some(2));
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.pop_oldest(),
            Some(3),
            "`a` moved to the back when inserted again"
        );
        assert_eq!(map.pop_oldest(), Some(4));
        assert_eq!(map.pop_oldest(), None);
        assert!(map.is_empty());
    }

    #[test]
    fn the_map_drops_its_expired_entries_up_to_the_first_live_one() {
        let mut map = InsertionOrderedMap::default();
        for (key, expiry) in [("a", 1), ("b", 2), ("c", 5), ("d", 3)] {
            map.insert(key, expiry);
        }
        map.pop_oldest_while(|expiry| *expiry <= 3);
        assert_eq!((map.get("a"), map.get("b")), (None, None));
        assert_eq!(map.get("d"), Some(&3), "behind a live entry, not reached");
        if let Some(expiry) = map.get_mut("c") {
            *expiry = 9;
        }
        map.retain(|key, _| key != "d");
        assert_eq!((map.len(), map.get("c")), (1, Some(&9)));
    }

    #[test]
    fn the_queue_stays_bounded_however_many_keys_come_and_go() {
        let mut map = InsertionOrderedMap::default();
        for round in 0..10_000u64 {
            map.insert(&format!("key {}", round % 100), round);
            map.remove(&format!("key {}", (round + 50) % 100));
        }
        assert!(map.len() <= 100);
        assert!(map.queued() <= 2 * map.len() + 64 + 1, "{}", map.queued());
    }
}
