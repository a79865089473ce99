//! The local deny cache: client keys known to be rejected until a time (µs
//! since the epoch, on the limiter's clock), and the policy that rejects them.
//!
//! Bounded, with O(1) amortized work per insert however full it is: entries
//! sit in a map and, in insertion order, in a queue. An insert first drops
//! the expired entries at the front of the queue, then, if the map is still
//! full, evicts the oldest entry (the one whose window started first, so
//! usually the nearest to its end); every queue item is popped at most once.
//! Evicting a live entry costs correctness nothing: that client's next
//! request is counted at the store, which rejects it and puts it back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Keys remembered as over their limit, at most, by default.
pub(crate) const DEFAULT_CAPACITY: usize = 100_000;

pub(crate) struct DenyCache {
    capacity: usize,
    /// The map's length, readable without the lock: no request takes the
    /// lock while nobody is over the limit.
    len: AtomicUsize,
    entries: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Denied>,
    /// Keys in insertion order; items whose generation no longer matches the
    /// map's (the key was removed, or removed and inserted again) are skipped.
    order: VecDeque<(String, u64)>,
    next_generation: u64,
}

struct Denied {
    until: u64,
    policy: usize,
    generation: u64,
}

impl Entries {
    /// `true` when the queue item is the map's current entry for its key.
    fn is_current(&self, key: &str, generation: u64) -> bool {
        self.map
            .get(key)
            .is_some_and(|denied| denied.generation == generation)
    }

    /// Drops the stale and expired items at the front of the queue.
    fn expire_front(&mut self, now: u64) {
        while let Some((key, generation)) = self.order.front() {
            let expired = match self.map.get(key.as_str()) {
                Some(denied) if denied.generation == *generation => denied.until <= now,
                _ => true,
            };
            if !expired {
                break;
            }
            if let Some((key, generation)) = self.order.pop_front()
                && self.is_current(&key, generation)
            {
                self.map.remove(&key);
            }
        }
    }

    /// Removes the oldest current entry.
    fn evict_oldest(&mut self) {
        while let Some((key, generation)) = self.order.pop_front() {
            if self.is_current(&key, generation) {
                self.map.remove(&key);
                return;
            }
        }
    }
}

impl DenyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        DenyCache {
            capacity: capacity.max(1),
            len: AtomicUsize::new(0),
            entries: RwLock::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        // Every update is a few map/queue operations that leave both consistent.
        cache_core::sync::read(&self.entries)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        cache_core::sync::write(&self.entries)
    }

    /// Remembers `key` as denied by `policy` until `until`.
    pub(crate) fn insert(&self, key: &str, until: u64, policy: usize, now: u64) {
        let mut entries = self.write();
        entries.expire_front(now);
        // A key denied again (a new window) moves to the back of the queue:
        // its old item becomes stale.
        if entries.map.remove(key).is_none() && entries.map.len() >= self.capacity {
            entries.evict_oldest();
        }
        let generation = entries.next_generation;
        entries.next_generation += 1;
        entries.map.insert(
            key.to_string(),
            Denied {
                until,
                policy,
                generation,
            },
        );
        entries.order.push_back((key.to_string(), generation));
        // Items left behind by removals on lookup: rebuild when they dominate
        // (amortized O(1): the rebuild follows at least as many removals).
        if entries.order.len() > 2 * entries.map.len() + 64 {
            let Entries { map, order, .. } = &mut *entries;
            order.retain(|(key, generation)| {
                map.get(key.as_str())
                    .is_some_and(|denied| denied.generation == *generation)
            });
        }
        self.len.store(entries.map.len(), Ordering::Relaxed);
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
            let denied = entries.map.get(key)?;
            (denied.until, denied.policy)
        };
        if until > now {
            return Some((until, policy));
        }
        let mut entries = self.write();
        if entries
            .map
            .get(key)
            .is_some_and(|denied| denied.until <= now)
        {
            entries.map.remove(key);
        }
        self.len.store(entries.map.len(), Ordering::Relaxed);
        None
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
        assert!(entries.map.len() <= 100);
        assert!(
            entries.order.len() <= 2 * 100 + 64 + 1,
            "{}",
            entries.order.len()
        );
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
