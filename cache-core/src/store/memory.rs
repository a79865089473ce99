//! The embedded store: a sharded map with Redis semantics for TTLs and counters.
//!
//! Expired entries are never returned (checked on every read) and are swept
//! every few writes; the number of entries is bounded, the oldest going first.

use std::hash::{BuildHasher, RandomState};
use std::io::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    Expiring, KeyTtl, MAX_COUNT, ScanNode, Store, StoreFuture, WindowCount, check_increment,
    window_millis,
};
use crate::error::{CommandError, Error, Result};
use crate::sync::InsertionOrderedMap;

const SHARDS: usize = 16;
/// A shard sweeps expired entries after this many writes.
const SWEEP_EVERY: u32 = 1024;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires_at: Option<Instant>,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// In insertion order: the oldest go first when the shard is full.
    map: InsertionOrderedMap<Entry>,
    writes: u32,
}

impl Shard {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.map.get(key).is_some_and(|e| !e.is_live(now)) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    /// Inserts or replaces, then keeps the shard within `capacity`.
    fn put(&mut self, key: &str, value: Vec<u8>, expires_at: Option<Instant>, capacity: usize) {
        let now = Instant::now();
        if let Some(entry) = self.live(key, now) {
            entry.value = value;
            entry.expires_at = expires_at;
            return;
        }
        self.map.insert(key, Entry { value, expires_at });
        self.after_write(now, capacity);
    }

    fn after_write(&mut self, now: Instant, capacity: usize) {
        self.writes += 1;
        if self.writes >= SWEEP_EVERY {
            self.writes = 0;
            self.map.retain(|_, e| e.is_live(now));
        }
        while self.map.len() > capacity && self.map.pop_oldest().is_some() {}
    }
}

/// The in-memory store. Cheap to share behind the handle's `Arc`.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    shard_capacity: usize,
}

impl MemoryStore {
    pub(crate) fn new(max_entries: usize) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            shard_capacity: max_entries.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding a shard cannot leave an entry half-written
        // (every update is one assignment), so a poisoned lock is still usable.
        crate::sync::lock(&self.shards[index])
    }

    /// At most `max_len + 1` bytes, as Redis `GETRANGE key 0 max_len` gives.
    fn get_now(&self, key: &str, max_len: usize) -> Option<Vec<u8>> {
        self.shard(key)
            .live(key, Instant::now())
            .filter(|e| !e.value.is_empty())
            .map(|e| e.value[..e.value.len().min(max_len.saturating_add(1))].to_vec())
    }

    fn set_now(&self, key: &str, value: &[u8], ttl: Option<Duration>) {
        let expires_at = ttl.map(|ttl| expiry(Instant::now(), ttl));
        self.shard(key)
            .put(key, value.to_vec(), expires_at, self.shard_capacity);
    }

    fn incr_now(&self, key: &str, by: i64) -> Result<i64> {
        let mut shard = self.shard(key);
        let now = Instant::now();
        let (current, expires_at) = match shard.live(key, now) {
            Some(entry) => (parse_integer(&entry.value)?, entry.expires_at),
            None => (0, None),
        };
        let next = current.checked_add(by).ok_or(CommandError::Overflow)?;
        shard.put(
            key,
            next.to_string().into_bytes(),
            expires_at,
            self.shard_capacity,
        );
        Ok(next)
    }

    fn incr_window_now(&self, key: &str, by: u64, window: Duration) -> Result<WindowCount> {
        window_millis(window)?;
        check_increment(by)?;
        let mut shard = self.shard(key);
        let now = Instant::now();
        // Within MAX_WINDOW: far from where `Instant` arithmetic overflows.
        let window_end = now
            .checked_add(window)
            .ok_or_else(|| Error::invalid("window", "too long for this clock"))?;
        // The same rules as the Redis script: a value that is not a counter
        // this library writes starts a new window; a counter without expiry,
        // or with one past this window's end, gets the window.
        let counted = shard.live(key, now).and_then(|entry| {
            let next = parse_integer(&entry.value)
                .ok()
                .and_then(|current| u64::try_from(current).ok())
                .and_then(|current| current.checked_add(by))
                .filter(|next| *next <= MAX_COUNT)?;
            let expires_at = match entry.expires_at {
                Some(at) if at <= window_end => at,
                _ => window_end,
            };
            entry.expires_at = Some(expires_at);
            entry.value.clear();
            // Writing into a Vec cannot fail.
            let _ = write!(entry.value, "{next}");
            Some((next, expires_at))
        });
        let (count, expires_at) = match counted {
            Some(counted) => counted,
            None => {
                shard.put(
                    key,
                    by.to_string().into_bytes(),
                    Some(window_end),
                    self.shard_capacity,
                );
                (by, window_end)
            }
        };
        Ok(WindowCount {
            count,
            reset_after: expires_at.saturating_duration_since(now),
        })
    }

    /// Removes every key with the prefix at once: the in-memory walk is one step.
    fn delete_prefix_now(&self, prefix: &str) -> u64 {
        let now = Instant::now();
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = crate::sync::lock(shard);
            shard.map.retain(|key, entry| {
                let doomed = key.starts_with(prefix);
                if doomed && entry.is_live(now) {
                    removed += 1;
                }
                !doomed
            });
        }
        removed
    }
}

/// `now + ttl`, saturating far in the future instead of panicking: the handle
/// refuses TTLs over [`MAX_TTL`](crate::config::MAX_TTL), so this is a last guard.
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .or_else(|| now.checked_add(crate::config::MAX_TTL))
        .unwrap_or(now)
}

fn parse_integer(bytes: &[u8]) -> Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(CommandError::NotAnInteger.into())
}

fn ready<'a, T: Send + 'a>(value: Result<T>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Option<Vec<u8>>> {
        ready(Ok(self.get_now(key, max_len)))
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
        max_len: usize,
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        ready(Ok(keys
            .iter()
            .map(|key| self.get_now(key, max_len))
            .collect()))
    }

    // No local tier in front of the in-memory store: no expiry to tell.
    fn get_expiring<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Expiring> {
        ready(Ok((self.get_now(key, max_len), None)))
    }

    fn get_many_expiring<'a>(
        &'a self,
        keys: &'a [String],
        max_len: usize,
    ) -> StoreFuture<'a, Vec<Expiring>> {
        ready(Ok(keys
            .iter()
            .map(|key| (self.get_now(key, max_len), None))
            .collect()))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.set_now(key, value, ttl);
        ready(Ok(()))
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(String, Vec<u8>)],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        for (key, value) in entries {
            self.set_now(key, value, ttl);
        }
        ready(Ok(()))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        let mut shard = self.shard(key);
        let existed = shard.live(key, Instant::now()).is_some();
        shard.map.remove(key);
        ready(Ok(existed))
    }

    fn exists<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        ready(Ok(self.shard(key).live(key, Instant::now()).is_some()))
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let updated = match self.shard(key).live(key, now) {
            Some(entry) => {
                entry.expires_at = Some(expiry(now, ttl));
                true
            }
            None => false,
        };
        ready(Ok(updated))
    }

    fn ttl<'a>(&'a self, key: &'a str) -> StoreFuture<'a, KeyTtl> {
        let now = Instant::now();
        let ttl = match self.shard(key).live(key, now) {
            None => KeyTtl::Missing,
            Some(Entry {
                expires_at: None, ..
            }) => KeyTtl::Persistent,
            Some(Entry {
                expires_at: Some(at),
                ..
            }) => KeyTtl::Expires(at.saturating_duration_since(now)),
        };
        ready(Ok(ttl))
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64) -> StoreFuture<'a, i64> {
        ready(self.incr_now(key, by))
    }

    fn incr_window<'a>(
        &'a self,
        key: &'a str,
        by: u64,
        window: Duration,
    ) -> StoreFuture<'a, WindowCount> {
        ready(self.incr_window_now(key, by, window))
    }

    fn scan_nodes(&self) -> StoreFuture<'_, Vec<ScanNode>> {
        ready(Ok(vec![ScanNode::Only]))
    }

    fn delete_prefix_page<'a>(
        &'a self,
        _node: &'a ScanNode,
        _cursor: u64,
        prefix: &'a str,
    ) -> StoreFuture<'a, (u64, u64)> {
        ready(Ok((0, self.delete_prefix_now(prefix))))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_WINDOW;

    #[test]
    fn entries_beyond_capacity_evict_the_oldest() {
        let store = MemoryStore::new(SHARDS);
        for i in 0..SHARDS * 50 {
            store.set_now(&format!("k{i}"), b"v", None);
        }
        let live: usize = store
            .shards
            .iter()
            .map(|s| s.lock().unwrap().map.len())
            .sum();
        assert!(live <= SHARDS, "{live} entries kept");
        assert!(
            store
                .get_now(&format!("k{}", SHARDS * 50 - 1), usize::MAX)
                .is_some()
        );
    }

    #[test]
    fn expired_entries_are_not_returned() {
        let store = MemoryStore::new(100);
        store.set_now("k", b"v", Some(Duration::ZERO));
        assert_eq!(store.get_now("k", usize::MAX), None);
    }

    #[test]
    fn deleted_keys_do_not_grow_the_eviction_queue_without_bound() {
        let store = MemoryStore::new(1000);
        for i in 0..100_000 {
            let key = format!("k{i}");
            store.set_now(&key, b"v", None);
            store.shard(&key).map.remove(&key);
        }
        let queued: usize = store
            .shards
            .iter()
            .map(|s| s.lock().unwrap().map.queued())
            .sum();
        assert!(queued < 100_000 / 4, "{queued} stale queue items");
    }

    #[test]
    fn a_foreign_or_out_of_range_counter_starts_a_new_window() {
        let store = MemoryStore::new(100);
        let window = Duration::from_secs(60);
        let max = MAX_COUNT.to_string();
        let near_max = (i64::MAX - 1).to_string();
        for bad in ["abc", "-5", "\"12\"", max.as_str(), near_max.as_str()] {
            store.set_now("k", bad.as_bytes(), None);
            let first = store.incr_window_now("k", 1, window).unwrap();
            assert_eq!(first.count, 1, "{bad} replaced");
            assert_eq!(store.incr_window_now("k", 1, window).unwrap().count, 2);
            let Some(entry) = store
                .shard("k")
                .live("k", Instant::now())
                .map(|e| e.expires_at)
            else {
                panic!("counter missing");
            };
            assert!(entry.is_some(), "{bad}: the counter has a TTL");
        }
        // A counter with a TTL past the window gets the window.
        store.set_now("k", b"3", Some(Duration::from_secs(1_000_000)));
        let count = store.incr_window_now("k", 1, window).unwrap();
        assert_eq!(count.count, 4);
        assert!(count.reset_after <= window);
    }

    #[test]
    fn a_window_beyond_the_maximum_is_an_error_not_a_panic() {
        let store = MemoryStore::new(100);
        for window in [
            Duration::from_secs(u64::MAX),
            MAX_WINDOW + Duration::from_millis(1),
        ] {
            let err = store.incr_window_now("k", 1, window).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::error::ErrorKind::InvalidArgument,
                "{err}"
            );
        }
        assert!(store.incr_window_now("k", 1, MAX_WINDOW).is_ok());
        assert!(store.incr_window_now("k", u64::MAX, MAX_WINDOW).is_err());
    }
}
