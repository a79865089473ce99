//! The local deny cache: client keys known to be rejected until a time (µs
//! of the limiter's [monotonic](crate::Clock::monotonic) clock, so that a
//! wall clock stepped back does not stretch a rejection), and the policy
//! that rejects them.
//!
//! Bounded, with O(1) amortized work per insert however full it is: entries
//! sit in a [`cache_sync::InsertionOrderedMap`]. An insert first drops
//! the expired entries at the front of the queue, then, if the map is still
//! full, evicts the oldest entry (the one whose window started first, so
//! usually the nearest to its end); every queue item is popped at most once.
//! Evicting a live entry costs correctness nothing: that client's next
//! request is counted at the store, which rejects it and puts it back.

use std::sync::atomic::Ordering;

use cache_sync::InsertionOrderedMap;

// shuttle's primitives under `--cfg shuttle` (see the tests at the end).
use crate::sync::{AtomicUsize, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Keys remembered as over their limit, at most, by default.
pub(crate) const DEFAULT_CAPACITY: usize = 100_000;

pub(crate) struct DenyCache {
    capacity: usize,
    /// The map's length, readable without the lock: no request takes the
    /// lock while nobody is over the limit.
    len: AtomicUsize,
    /// In insertion order, so nearly in expiry order (every deny lasts at
    /// most one window).
    entries: RwLock<InsertionOrderedMap<Denied>>,
}

struct Denied {
    until: u64,
    policy: usize,
}

impl DenyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        DenyCache {
            capacity: capacity.max(1),
            len: AtomicUsize::new(0),
            entries: RwLock::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, InsertionOrderedMap<Denied>> {
        // Every update is a few map/queue operations that leave both consistent.
        crate::sync::read(&self.entries)
    }

    fn write(&self) -> RwLockWriteGuard<'_, InsertionOrderedMap<Denied>> {
        crate::sync::write(&self.entries)
    }

    /// Remembers `key` as denied by `policy` until `until`.
    pub(crate) fn insert(&self, key: &str, until: u64, policy: usize, now: u64) {
        let mut entries = self.write();
        entries.pop_oldest_while(|denied| denied.until <= now);
        // A key denied again (a new window) moves to the back of the queue.
        if entries.remove(key).is_none() && entries.len() >= self.capacity {
            entries.pop_oldest();
        }
        entries.insert(key, Denied { until, policy });
        self.len.store(entries.len(), Ordering::Relaxed);
    }

    /// Until when `key` is denied and by which policy, if until after `now`.
    pub(crate) fn get(&self, key: &str, now: u64) -> Option<(u64, usize)> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        // Readers do not block each other: a flood from one client is answered
        // from here on every worker thread at once.
        let (until, policy) = {
            let entries = self.read();
            let denied = entries.get(key)?;
            (denied.until, denied.policy)
        };
        if until > now {
            return Some((until, policy));
        }
        let mut entries = self.write();
        if entries.get(key).is_some_and(|denied| denied.until <= now) {
            entries.remove(key);
        }
        self.len.store(entries.len(), Ordering::Relaxed);
        None
    }

    /// Forgets `key`: its charge was given back, so the store decides again.
    pub(crate) fn remove(&self, key: &str) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut entries = self.write();
        if entries.remove(key).is_some() {
            self.len.store(entries.len(), Ordering::Relaxed);
        }
    }

    /// Entries held, expired ones not yet dropped included.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_evicts_the_oldest_and_still_takes_new_keys() {
        let cache = DenyCache::new(DEFAULT_CAPACITY);
        let now = 1_000_000_000u64;
        let until = now + 60_000_000;
        for i in 0..DEFAULT_CAPACITY {
            cache.insert(&format!("ip:{i}"), until, 0, now);
        }
        assert_eq!(cache.len(), DEFAULT_CAPACITY);
        // Every entry is live: the newcomer takes the oldest one's place.
        cache.insert("ip:new", until, 0, now);
        assert_eq!(cache.get("ip:new", now), Some((until, 0)));
        assert_eq!(cache.get("ip:0", now), None, "the oldest went");
        assert_eq!(cache.get("ip:1", now), Some((until, 0)));
        assert_eq!(cache.len(), DEFAULT_CAPACITY);
    }

    #[test]
    fn expired_entries_go_first_and_the_queue_stays_bounded() {
        let cache = DenyCache::new(100);
        let start = 1_000_000_000u64;
        for round in 0..1000u32 {
            let now = start + u64::from(round) * 1_000_000;
            for i in 0..50 {
                cache.insert(&format!("ip:{round}:{i}"), now + 500_000, 0, now);
            }
            // Half are looked up after their end: removed on lookup.
            let later = now + 1_000_000;
            for i in 0..25 {
                assert_eq!(cache.get(&format!("ip:{round}:{i}"), later), None);
            }
        }
        let entries = cache.read();
        assert!(entries.len() <= 100);
        assert!(entries.queued() <= 2 * 100 + 64 + 1, "{}", entries.queued());
    }

    #[test]
    fn a_key_denied_again_moves_to_the_back() {
        let cache = DenyCache::new(2);
        let now = 1_000_000_000u64;
        let until = now + 60_000_000;
        cache.insert("ip:a", until, 0, now);
        cache.insert("ip:b", until, 0, now);
        cache.insert("ip:a", until, 0, now);
        cache.insert("ip:c", until, 0, now);
        assert_eq!(cache.get("ip:b", now), None, "b was the oldest");
        assert_eq!(cache.get("ip:a", now), Some((until, 0)));
        assert_eq!(cache.get("ip:c", now), Some((until, 0)));
    }

    #[test]
    fn an_expired_entry_is_not_returned_and_is_removed() {
        let cache = DenyCache::new(10);
        let now = 1_000_000_000u64;
        cache.insert("ip:1", now + 10_000, 0, now);
        assert!(cache.get("ip:1", now).is_some());
        assert_eq!(cache.get("ip:1", now + 10_000), None);
        assert_eq!(cache.len(), 0);
    }
}

/// The deny cache under shuttle's scheduler (`--cfg shuttle`, run by
/// `scripts/test.sh`): requests that insert, look up and expire entries of
/// a cache of 2 at once. Under every schedule tried, the length readable
/// without the lock is the map's, nothing is over the bound, and a live
/// entry is found by whoever looks after its insert.
#[cfg(all(test, shuttle))]
mod interleavings {
    use super::*;
    use crate::sync::explore;
    use std::sync::Arc;

    const NOW: u64 = 1_000_000;

    #[test]
    fn inserts_lookups_and_expiries_at_once() {
        explore(|| {
            let cache = Arc::new(DenyCache::new(2));
            // An entry that is over by the time the others look it up.
            cache.insert("ip:old", NOW + 1, 0, NOW);
            let requests: Vec<_> = (0..3)
                .map(|i| {
                    let cache = cache.clone();
                    shuttle::thread::spawn(move || {
                        let key = format!("ip:{i}");
                        let later = NOW + 10;
                        cache.insert(&key, later + 1_000, i, later);
                        let found = cache.get(&key, later);
                        assert_eq!(cache.get("ip:old", later), None, "expired");
                        found
                    })
                })
                .collect();
            let found: Vec<_> = requests
                .into_iter()
                .map(|request| request.join().expect("no request panics"))
                .collect();
            let entries = cache.read();
            assert_eq!(
                cache.len(),
                entries.len(),
                "the lock-free length is the map's"
            );
            assert!(entries.len() <= 2);
            // The last insert is never evicted before its own lookup's end.
            assert!(found.iter().any(Option::is_some), "{found:?}");
        });
    }
}
