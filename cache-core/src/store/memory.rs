//! The embedded store: a sharded map with Redis semantics for TTLs and
//! counters, and pub/sub in process.
//!
//! Expired entries are never returned (checked on every read) and are swept
//! every few writes; the number of entries is bounded, the oldest going
//! first. Pub/sub is the store's [`Hub`]: a publish delivers into the
//! listeners' queues at once, as Redis would to its subscribers.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::atomic::AtomicOp;
use super::pubsub::{Hub, Listener, Topic};
use super::{Expiring, KeyTtl, ScanNode, Store, StoreFuture};
use crate::error::{CommandError, Error, Result};
use crate::stats::EventStats;
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
        // A missing key costs one lookup (a key seen for the first time).
        if !self.map.get(key)?.is_live(now) {
            self.map.remove(key);
            return None;
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

/// The part of a key that picks its shard: what is between the first `{`
/// and the next `}`, if not empty (Redis Cluster's hash tag); else the key.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The in-memory store's entries as an atomic operation's twin sees them
/// (see [`AtomicOp`]): the values and expiries Redis would hold under the
/// same keys, all within one lock for the operation's length.
pub struct Entries<'a> {
    shard: &'a mut Shard,
    capacity: usize,
    now: Instant,
}

impl Entries<'_> {
    /// The value of `key`, as `GET` reads it; `None` when it is missing or expired.
    pub fn get(&mut self, key: &str) -> Option<&[u8]> {
        self.shard.live(key, self.now).map(|entry| &entry.value[..])
    }

    /// Sets `key` to `value`, expiring after `ttl` (`SET key value PX ms`),
    /// or never (`SET key value`). The store's bound applies: the oldest
    /// entries go first when it is full.
    pub fn set(&mut self, key: &str, value: &[u8], ttl: Option<Duration>) {
        let expires_at = ttl.map(|ttl| expiry(self.now, ttl));
        self.shard
            .put(key, value.to_vec(), expires_at, self.capacity);
    }

    /// The live entry of `key`, to read and change in place through one
    /// lookup (`None` when it is missing or expired): what a twin that
    /// rewrites a key it finds uses, without the copies and lookups of
    /// [`get`](Self::get) then [`set`](Self::set).
    pub fn get_mut(&mut self, key: &str) -> Option<EntryMut<'_>> {
        let now = self.now;
        self.shard
            .map
            .get_mut(key)
            .filter(|entry| entry.is_live(now))
            .map(|entry| EntryMut { entry, now })
    }

    /// Removes `key` (`DEL`); `true` when it was there.
    pub fn delete(&mut self, key: &str) -> bool {
        self.shard.live(key, self.now).is_some() && self.shard.map.remove(key).is_some()
    }

    /// How long `key` has to live (`PTTL`); `None` when it is missing or
    /// never expires.
    pub fn ttl(&mut self, key: &str) -> Option<Duration> {
        let now = self.now;
        self.shard
            .live(key, now)
            .and_then(|entry| entry.expires_at)
            .map(|at| at.saturating_duration_since(now))
    }
}

/// A live entry of [`Entries`] ([`Entries::get_mut`]), read and changed in
/// place; it keeps its place in the store's eviction order.
pub struct EntryMut<'a> {
    entry: &'a mut Entry,
    now: Instant,
}

impl EntryMut<'_> {
    /// Its value.
    pub fn value(&self) -> &[u8] {
        &self.entry.value
    }

    /// Its value, to rewrite in place (`SET key value KEEPTTL`).
    pub fn value_mut(&mut self) -> &mut Vec<u8> {
        &mut self.entry.value
    }

    /// How long it has to live (`PTTL`); `None` when it never expires.
    pub fn ttl(&self) -> Option<Duration> {
        self.entry
            .expires_at
            .map(|at| at.saturating_duration_since(self.now))
    }

    /// Whether it expires at all (what [`ttl`](Self::ttl) says without
    /// reading the clock).
    pub fn expires(&self) -> bool {
        self.entry.expires_at.is_some()
    }

    /// Expires after `ttl` (`PEXPIRE`), or never (`PERSIST`).
    pub fn set_ttl(&mut self, ttl: Option<Duration>) {
        self.entry.expires_at = ttl.map(|ttl| expiry(self.now, ttl));
    }
}

/// The in-memory store. Cheap to share behind the handle's `Arc`.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    /// Picks a key's shard: foldhash seeded at random per store, as the
    /// shards' maps hash (keys from clients are not hashed with a function
    /// they can know), at a fraction of SipHash's cost on short keys.
    hasher: foldhash::quality::RandomState,
    shard_capacity: usize,
    /// Pub/sub: every listener of the store, shared by the handle's clones
    /// (and its dedicated handles, which are clones in process).
    hub: Arc<Hub>,
}

impl MemoryStore {
    pub(crate) fn new(max_entries: usize) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: foldhash::quality::RandomState::default(),
            shard_capacity: max_entries.div_ceil(SHARDS).max(1),
            hub: Arc::default(),
        }
    }

    /// The shard of `key`: by its hash tag, as Redis Cluster picks a slot,
    /// so that the keys of one atomic operation share one lock.
    fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(hash_tag(key)) as usize) % SHARDS
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave an entry half-written
        // (every update is one assignment), so a poisoned lock is still usable.
        crate::sync::lock(&self.shards[self.shard_index(key)])
    }

    /// Runs `op`'s twin under the lock of its keys' shard.
    fn run_atomic_now(&self, op: &dyn AtomicOp, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        let index = keys.first().map_or(0, |key| self.shard_index(key));
        if keys
            .iter()
            .skip(1)
            .any(|key| self.shard_index(key) != index)
        {
            // Redis Cluster says CROSSSLOT; here the lock would not cover them.
            return Err(Error::invalid(
                "keys",
                "the keys of one atomic operation must share a hash tag ({...})",
            ));
        }
        let mut shard = crate::sync::lock(&self.shards[index]);
        let mut entries = Entries {
            shard: &mut shard,
            capacity: self.shard_capacity,
            now: Instant::now(),
        };
        op.twin(&mut entries, keys, args)
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
    fn reach(&self) -> super::Reach {
        super::Reach::InProcess
    }

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

    fn run_atomic<'a>(
        &'a self,
        op: &'a dyn AtomicOp,
        keys: &'a [&'a str],
        args: &'a [i64],
    ) -> StoreFuture<'a, Vec<i64>> {
        ready(self.run_atomic_now(op, keys, args))
    }

    fn run_atomic_at_once(
        &self,
        op: &dyn AtomicOp,
        keys: &[&str],
        args: &[i64],
    ) -> Option<Result<Vec<i64>>> {
        Some(self.run_atomic_now(op, keys, args))
    }

    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, u64> {
        ready(Ok(self.hub.publish(channel, payload)))
    }

    fn publish_at_once(&self, channel: &str, payload: &[u8]) -> Option<u64> {
        Some(self.hub.publish(channel, payload))
    }

    fn subscribe(&self, topics: Vec<Topic>, capacity: usize) -> StoreFuture<'_, Listener> {
        // Nothing to confirm: the publishers are in this process.
        let (listener, _) = Listener::register(self.hub.clone(), topics, capacity);
        ready(Ok(listener))
    }

    fn subscribes_patterns(&self) -> bool {
        true
    }

    fn pubsub_stats(&self) -> EventStats {
        self.hub.stats()
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

    /// An entry changed in place keeps its place and reads back changed;
    /// an expired one is not handed out.
    #[test]
    fn an_entry_changes_in_place() {
        let store = MemoryStore::new(100);
        store.set_now("k", b"1", Some(Duration::from_secs(60)));
        store.set_now("gone", b"1", Some(Duration::ZERO));
        let twin = |entries: &mut Entries<'_>| {
            assert!(entries.get_mut("gone").is_none());
            let mut entry = entries.get_mut("k").unwrap();
            assert_eq!(entry.value(), b"1");
            assert!(
                entry
                    .ttl()
                    .is_some_and(|left| left <= Duration::from_secs(60))
            );
            entry.value_mut().extend_from_slice(b"23");
            entry.set_ttl(None);
        };
        let mut shard = store.shard("k");
        twin(&mut Entries {
            shard: &mut shard,
            capacity: 100,
            now: Instant::now(),
        });
        drop(shard);
        assert_eq!(store.get_now("k", usize::MAX).as_deref(), Some(&b"123"[..]));
        assert!(
            store
                .shard("k")
                .live("k", Instant::now())
                .unwrap()
                .expires_at
                .is_none()
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

    /// `incr_window`'s twin, as the handle runs it (checked arguments).
    fn incr_window(store: &MemoryStore, key: &str, by: u64, window: Duration) -> (i64, i64) {
        let window_ms = i64::try_from(window.as_millis()).unwrap();
        let args = [i64::try_from(by).unwrap(), window_ms, 1 << 53];
        let reply = store
            .run_atomic_now(&crate::store::atomic::IncrWindow, &[key], &args)
            .unwrap();
        (reply[0], reply[1])
    }

    #[test]
    fn a_foreign_or_out_of_range_counter_starts_a_new_window() {
        let store = MemoryStore::new(100);
        let window = Duration::from_secs(60);
        let max = (1u64 << 53).to_string();
        let near_max = (i64::MAX - 1).to_string();
        for bad in ["abc", "-5", "\"12\"", max.as_str(), near_max.as_str()] {
            store.set_now("k", bad.as_bytes(), None);
            assert_eq!(incr_window(&store, "k", 1, window).0, 1, "{bad} replaced");
            assert_eq!(incr_window(&store, "k", 1, window).0, 2);
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
        let (count, left_ms) = incr_window(&store, "k", 1, window);
        assert_eq!(count, 4);
        assert!(left_ms <= 60_000);
    }

    #[test]
    fn the_keys_of_one_atomic_operation_share_a_shard_by_hash_tag() {
        let store = MemoryStore::new(100);
        for n in 0..100 {
            let (a, b) = (format!("rl:{{client{n}}}:a"), format!("rl:{{client{n}}}:b"));
            assert_eq!(store.shard_index(&a), store.shard_index(&b));
        }
        assert_eq!(hash_tag("a{}b"), "a{}b", "an empty tag is no tag");
        assert_eq!(hash_tag("{x}y{z}"), "x");
        // Keys without a common tag fall in different shards sooner or later.
        let keys: Vec<String> = (0..64).map(|n| format!("k{n}")).collect();
        let refused = keys.windows(2).any(|pair| {
            let pair = [pair[0].as_str(), pair[1].as_str()];
            store
                .run_atomic_now(&crate::store::atomic::IncrWindow, &pair, &[1, 1000, 10])
                .is_err_and(|err| err.kind() == crate::error::ErrorKind::InvalidArgument)
        });
        assert!(refused);
    }
}
