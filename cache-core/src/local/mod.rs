//! The local tier: an optional in-process cache in front of Redis
//! ([`CacheBuilder::local_tier`](crate::CacheBuilder::local_tier)), kept
//! coherent by Redis server-assisted client-side caching.
//!
//! - **Where the invalidations come from**: [`tracking`] keeps one RESP3
//!   connection per Redis primary with `CLIENT TRACKING ON BCAST PREFIX
//!   {namespace}:`. Redis pushes the name of every key written, deleted,
//!   expired or evicted under the prefix, by any client, and a null key for
//!   `FLUSHDB`/`FLUSHALL`; the pushes are applied to the tier in the
//!   connection's read loop, in order with that connection's replies.
//! - **What is not announced**: `SWAPDB` changes every key of the tracked
//!   database without a push. On a standalone server the tracking
//!   connection's heartbeat reads a marker of the database's identity, and
//!   a change empties the tier within one heartbeat (see [`tracking`]).
//! - **Never read without tracking**: the tier is only read while every
//!   tracking connection is up. Losing one empties the tier and closes it;
//!   it opens again (empty) once tracking is re-established, so nothing
//!   stored before an outage, when invalidations may have been missed, is
//!   served after it.
//! - **No stale fill**: a value read from Redis is kept only if no
//!   invalidation of its key (and no flush or reconnect, counted by the
//!   epoch) arrived since before the read was sent: see [`Watch`]. It
//!   lives no longer than the key's TTL in Redis, read beside the value
//!   (Redis tells of an expiry only when it deletes the key, which a local
//!   hit never makes it do).
//! - **Own writes**: a write through the handle evicts its local copy at
//!   once; `#[cached]` keeps the value it stored, after a round trip on the
//!   tracking connections proved that the only invalidation of the key since
//!   the write was sent is the write's own.
//! - **Memoized calls without SHA-256**: a `#[cached]` call's entry is kept
//!   under its [`ArgsKey`](crate::memoize::ArgsKey) (the prefix and the
//!   canonical JSON of its arguments), so that a local hit needs no hash of
//!   them; the key as stored (their SHA-256) names the entry to Redis, whose
//!   invalidations evict it through an alias (see [`Aliases`]).
//!
//! The in-memory store has no local tier: it already is in-process.

mod tracking;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::sync::StripedCounters;
pub(crate) use tracking::{TrackedStore, start};

/// A value decoded once, kept beside its bytes: `#[cached]` functions
/// whose type is `Clone` are served a clone of it, without decoding.
pub(crate) type Decoded = Arc<dyn std::any::Any + Send + Sync>;

/// One local entry, shared: a hit clones one `Arc`.
pub(crate) type Entry = Arc<Kept>;

/// What a local entry holds: the encoded bytes, shared, perhaps the
/// decoded value, and their own bound on life.
pub(crate) struct Kept {
    pub(crate) bytes: Arc<[u8]>,
    pub(crate) decoded: Option<Decoded>,
    /// When the entry stops being served: the tier's `max_ttl` after the
    /// fill, or sooner, the TTL the value was written with, when this
    /// handle wrote it, or the key's remaining life in Redis when it was
    /// read. Checked by the tier on each read rather than by moka's
    /// per-entry expiry, which cost a hit more than the check (its timer
    /// wheel's clock conversions on every read): an expired entry is a miss
    /// and is dropped then, or by the tier's size bound.
    expires_at: Instant,
}

impl Kept {
    fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

/// Which entries are kept under another key than the key as stored (a
/// memoized call's [`ArgsKey`](crate::memoize::ArgsKey)): Redis names the
/// key as stored when it changes, and that must evict them.
///
/// An entry under an alias is never in the tier without its alias here:
/// a fill adds the alias and inserts the entry under this lock, and
/// removing an alias (an eviction, a sweep) happens under it too, a sweep
/// only for aliases whose entry is gone. Aliases of entries the tier
/// dropped by itself (size, expiry) stay until the next sweep, which runs
/// once the map has doubled since the last one.
#[derive(Default)]
struct Aliases {
    /// Key as stored (full key) -> the key its entry is kept under.
    by_key: HashMap<String, Box<[u8]>>,
    /// Sweep when the map reaches this size.
    sweep_at: usize,
}

/// The local tier of one handle (shared by its clones, not by
/// [`Cache::dedicated`](crate::Cache::dedicated) handles, which are other instances).
pub(crate) struct LocalTier {
    /// By full key (the key as stored, as UTF-8), or by alias.
    entries: moka::sync::Cache<Box<[u8]>, Entry, foldhash::quality::RandomState>,
    /// The longest an entry is kept.
    max_ttl: Duration,
    /// The aliases of entries kept under another key; see [`Aliases`].
    aliases: Mutex<Aliases>,
    /// The tier's capacity, which bounds the aliases too.
    max_entries: usize,
    /// Bumped by everything that may have made any entry stale without
    /// naming it: a flush, a lost or a re-established tracking connection.
    epoch: AtomicU64,
    /// Every tracking connection is up: the tier may be read and filled.
    tracking: AtomicBool,
    /// Keys being read or written, with the invalidations seen for each.
    watches: Mutex<HashMap<String, Watched>>,
    /// Hits, misses, invalidations received.
    counters: StripedCounters<3>,
    /// The tracking connections, for [`barrier`](Self::barrier).
    connections: Mutex<Vec<MultiplexedConnection>>,
    /// The generation of tracking connections whose loss may close the
    /// tier: the set being established or open; 0 once it failed. An older
    /// set's late disconnection (a heartbeat gave up on it while it was
    /// still connected) must not close the tier its successor opened.
    live: Mutex<u64>,
    /// The bound of one barrier round trip.
    timeout: Duration,
    /// Entries stay while tracking is down, for reads whose store call
    /// failed ([`CacheBuilder::local_tier_serve_stale`](crate::CacheBuilder::local_tier_serve_stale)).
    serve_stale: bool,
}

const HITS: usize = 0;
const MISSES: usize = 1;
const INVALIDATIONS: usize = 2;

#[derive(Default)]
struct Watched {
    watchers: usize,
    /// Invalidations of the key since the first watcher registered.
    seen: u64,
}

/// A key under watch while its value is read from, or written to, Redis:
/// what was seen of it before, to tell what arrived since.
pub(crate) struct Watch<'t> {
    tier: &'t LocalTier,
    key: String,
    seen: u64,
    epoch: u64,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut watches = crate::sync::lock(&self.tier.watches);
        if let Some(watched) = watches.get_mut(&self.key) {
            watched.watchers -= 1;
            if watched.watchers == 0 {
                watches.remove(&self.key);
            }
        }
    }
}

/// The local tier's part of [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LocalStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) invalidations: u64,
    pub(crate) tracking: bool,
}

impl LocalStats {
    /// Writes these counters into a handle's `stats`.
    pub(crate) fn fill(self, stats: &mut crate::stats::Stats) {
        stats.local_hits = self.hits;
        stats.local_misses = self.misses;
        stats.local_invalidations = self.invalidations;
        stats.local_tracking = self.tracking;
    }
}

impl LocalTier {
    pub(crate) fn new(max_entries: usize, max_ttl: Duration, timeout: Duration) -> LocalTier {
        LocalTier {
            // moka's default policy: TinyLFU admission, LRU eviction.
            entries: moka::sync::Cache::builder()
                .max_capacity(u64::try_from(max_entries).unwrap_or(u64::MAX))
                // Seeded per tier; cheaper than SipHash on the 70-odd bytes
                // of a memoized key, which is most of a hit's lookup.
                .build_with_hasher(foldhash::quality::RandomState::default()),
            max_ttl,
            aliases: Mutex::new(Aliases {
                by_key: HashMap::new(),
                sweep_at: sweep_threshold(max_entries),
            }),
            max_entries,
            epoch: AtomicU64::new(0),
            tracking: AtomicBool::new(false),
            watches: Mutex::default(),
            counters: StripedCounters::default(),
            connections: Mutex::default(),
            live: Mutex::new(0),
            timeout,
            serve_stale: false,
        }
    }

    /// Keeps the entries while tracking is down, for
    /// [`get_stale`](Self::get_stale).
    pub(crate) fn serving_stale(mut self, serve_stale: bool) -> LocalTier {
        self.serve_stale = serve_stale;
        self
    }

    /// The entry of `key` for a read whose store call failed, when the user
    /// opted in to stale entries: younger than `max_ttl`, perhaps changed in
    /// Redis since tracking went down. Never one from before tracking came
    /// back: opening the tier empties it.
    pub(crate) fn get_stale(&self, key: &[u8]) -> Option<Entry> {
        if !self.serve_stale || self.tracking.load(Ordering::Acquire) {
            return None;
        }
        let entry = self.live_entry(key)?;
        self.counters.add(HITS);
        Some(entry)
    }

    /// The entry of `key` unless it expired (then it is dropped).
    #[inline]
    fn live_entry(&self, key: &[u8]) -> Option<Entry> {
        let entry = self.entries.get(key)?;
        if entry.is_live(Instant::now()) {
            return Some(entry);
        }
        // A fill that replaced it since is dropped too: a miss, never a
        // wrong value.
        self.entries.invalidate(key);
        None
    }

    /// The local copy of `key` (a full key), when tracking is up and the
    /// tier holds one.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        self.entry(key.as_bytes()).map(|entry| entry.bytes.clone())
    }

    /// [`get`](Self::get) by full key or alias, with the decoded value when
    /// there is one.
    pub(crate) fn entry(&self, key: &[u8]) -> Option<Entry> {
        if !self.tracking.load(Ordering::Acquire) {
            return None;
        }
        match self.live_entry(key) {
            Some(entry) => {
                self.counters.add(HITS);
                Some(entry)
            }
            None => {
                self.counters.add(MISSES);
                None
            }
        }
    }

    /// When an entry filled now stops being served: at `expires` (no
    /// expiry: `None`), and at most the tier's `max_ttl` from now; `None`
    /// when that is past already (nothing to keep).
    fn expiry(&self, expires: Option<Instant>) -> Option<Instant> {
        let now = Instant::now();
        // Past the representable (a max_ttl of centuries): a century.
        let longest = now.checked_add(self.max_ttl).unwrap_or_else(far_future);
        let at = expires.map_or(longest, |at| at.min(longest));
        (at > now).then_some(at)
    }

    /// Starts watching `key`, before its read or write is sent.
    pub(crate) fn watch(&self, key: &str) -> Watch<'_> {
        // The epoch first: a flush between the two only makes the fill fail.
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut watches = crate::sync::lock(&self.watches);
        let watched = watches.entry(key.to_string()).or_default();
        watched.watchers += 1;
        Watch {
            tier: self,
            key: key.to_string(),
            seen: watched.seen,
            epoch,
        }
    }

    /// Invalidations of the watched key since the watch began.
    fn seen_since(&self, watch: &Watch<'_>) -> u64 {
        let watches = crate::sync::lock(&self.watches);
        watches
            .get(&watch.key)
            .map_or(0, |watched| watched.seen - watch.seen)
    }

    /// Whether `watch`'s key may take a value: tracking up, no flush or
    /// reconnect since, and exactly `expected` invalidations of the key.
    fn still_valid(&self, watch: &Watch<'_>, expected: u64) -> bool {
        self.tracking.load(Ordering::Acquire)
            && self.epoch.load(Ordering::Acquire) == watch.epoch
            && self.seen_since(watch) == expected
    }

    /// Keeps `bytes`, read from Redis under `watch`, unless the key was
    /// invalidated since the read was sent (then the value may be older),
    /// until `expires`, when the key expires in Redis: Redis tells of an
    /// expiry only when it deletes the key, which a local hit never makes it
    /// do, and its active expiry cycle may lag.
    pub(crate) fn fill(
        &self,
        watch: Watch<'_>,
        bytes: &[u8],
        decoded: Option<Decoded>,
        expires: Option<Instant>,
    ) {
        let Some(expires_at) = self.expiry(expires) else {
            return;
        };
        self.fill_checked(watch, None, bytes, decoded, expires_at, 0);
    }

    /// [`fill`](Self::fill), keeping the entry under `alias` rather than
    /// under the watched key (which names it to Redis).
    pub(crate) fn fill_as(
        &self,
        watch: Watch<'_>,
        alias: &[u8],
        bytes: &[u8],
        decoded: Option<Decoded>,
        expires: Option<Instant>,
    ) {
        let Some(expires_at) = self.expiry(expires) else {
            return;
        };
        self.fill_checked(watch, Some(alias), bytes, decoded, expires_at, 0);
    }

    /// Keeps `bytes`, which this handle wrote under `watch` with `ttl`, if
    /// the only invalidation of the key since is the write's own, under
    /// `alias` if given (as [`fill_as`](Self::fill_as)). Call after
    /// [`barrier`](Self::barrier) succeeded: the write's own invalidation has
    /// then been applied.
    pub(crate) fn fill_own(
        &self,
        watch: Watch<'_>,
        bytes: &[u8],
        decoded: Option<Decoded>,
        alias: Option<&[u8]>,
        ttl: Option<Duration>,
    ) {
        let expires = ttl.map(|ttl| Instant::now().checked_add(ttl).unwrap_or_else(far_future));
        let Some(expires_at) = self.expiry(expires) else {
            return;
        };
        self.fill_checked(watch, alias, bytes, decoded, expires_at, 1);
    }

    fn fill_checked(
        &self,
        watch: Watch<'_>,
        alias: Option<&[u8]>,
        bytes: &[u8],
        decoded: Option<Decoded>,
        expires_at: Instant,
        expected: u64,
    ) {
        let key = alias.unwrap_or(watch.key.as_bytes());
        if !self.still_valid(&watch, expected) {
            // An older copy may be there (an own write's); the watchers
            // were told of the change by the invalidation itself.
            self.entries.invalidate(key);
            return;
        }
        let entry = Arc::new(Kept {
            bytes: Arc::from(bytes),
            decoded,
            expires_at,
        });
        match alias {
            None => self.entries.insert(Box::from(key), entry),
            Some(alias) => self.insert_aliased(&watch.key, alias, entry),
        }
        // An invalidation applied between the check and the insert found
        // nothing to evict: look again, now that the entry is visible.
        if !self.still_valid(&watch, expected) {
            self.entries.invalidate(key);
        }
    }

    /// Inserts `entry` under `alias`, named `key` to Redis: the alias
    /// first, both under the aliases' lock (see [`Aliases`]).
    fn insert_aliased(&self, key: &str, alias: &[u8], entry: Entry) {
        let mut aliases = crate::sync::lock(&self.aliases);
        if aliases.by_key.len() >= aliases.sweep_at {
            // Under the lock, so that no fill is between its alias and its entry.
            let entries = &self.entries;
            aliases
                .by_key
                .retain(|_, alias| entries.contains_key(&alias[..]));
            aliases.sweep_at = sweep_threshold(self.max_entries).max(aliases.by_key.len() * 2);
        }
        aliases.by_key.insert(key.to_owned(), Box::from(alias));
        self.entries.insert(Box::from(alias), entry);
    }

    /// Drops the local copy of `key`: it changed (or may have). Counted by
    /// the watches first, so that a read in flight does not put it back.
    pub(crate) fn evict(&self, key: &str) {
        {
            let mut watches = crate::sync::lock(&self.watches);
            if let Some(watched) = watches.get_mut(key) {
                watched.seen += 1;
            }
        }
        self.entries.invalidate(key.as_bytes());
        let mut aliases = crate::sync::lock(&self.aliases);
        if let Some(alias) = aliases.by_key.remove(key) {
            self.entries.invalidate(&alias[..]);
        }
    }

    /// Drops the local copies of every key starting with `prefix`.
    pub(crate) fn evict_prefix(&self, prefix: &str) {
        if prefix.is_empty() {
            return self.flush();
        }
        {
            let mut watches = crate::sync::lock(&self.watches);
            for (_, watched) in watches
                .iter_mut()
                .filter(|(key, _)| key.starts_with(prefix))
            {
                watched.seen += 1;
            }
        }
        {
            let mut aliases = crate::sync::lock(&self.aliases);
            let entries = &self.entries;
            aliases.by_key.retain(|key, alias| {
                let keep = !key.starts_with(prefix);
                if !keep {
                    entries.invalidate(&alias[..]);
                }
                keep
            });
        }
        // A walk, not moka's invalidation closures: those cost every read
        // a check of the predicates registered.
        let prefix = prefix.as_bytes();
        for (key, _) in self.entries.iter() {
            if key.starts_with(prefix) {
                self.entries.invalidate(&key[..]);
            }
        }
    }

    /// An invalidation pushed by Redis for `key`.
    fn invalidated(&self, key: &str) {
        self.counters.add(INVALIDATIONS);
        self.evict(key);
    }

    /// Drops every entry: the keyspace was flushed, or may have changed unseen.
    pub(crate) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
        crate::sync::lock(&self.aliases).by_key.clear();
    }

    /// Tracking is up on every primary: open the tier, empty.
    fn open(&self, connections: Vec<MultiplexedConnection>) {
        *crate::sync::lock(&self.connections) = connections;
        self.flush();
        self.tracking.store(true, Ordering::Release);
    }

    /// Connections of `generation` are being established: from now on only
    /// their loss closes the tier.
    fn begin(&self, generation: u64) {
        *crate::sync::lock(&self.live) = generation;
    }

    /// [`open`](Self::open) with the connections of `generation`, unless
    /// one of them was lost meanwhile (or a newer set began): `false` then.
    fn open_generation(&self, generation: u64, connections: Vec<MultiplexedConnection>) -> bool {
        let live = crate::sync::lock(&self.live);
        if *live != generation {
            return false;
        }
        self.open(connections);
        true
    }

    /// A connection of `generation` is lost: [`close`](Self::close) the tier
    /// if that set is the live one; an older set's loss is no news.
    fn close_from(&self, generation: u64) {
        let mut live = crate::sync::lock(&self.live);
        if *live == generation {
            *live = 0;
            self.close();
        }
    }

    /// A tracking connection is lost: invalidations may be missed from now
    /// on, so nothing local may be served until it is back.
    fn close(&self) {
        self.tracking.store(false, Ordering::Release);
        if self.serve_stale {
            // Kept for get_stale; fills in flight are dropped.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        } else {
            self.flush();
        }
    }

    /// A round trip on every tracking connection: once it is back, every
    /// invalidation Redis sent before it has been applied (pushes and
    /// replies share the connection, in order). `false` if any failed.
    pub(crate) async fn barrier(&self) -> bool {
        let connections = crate::sync::lock(&self.connections).clone();
        if connections.is_empty() {
            return false;
        }
        let pings = connections
            .into_iter()
            .map(|conn| tracking::ping(conn, self.timeout));
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .all(|ok| ok)
    }

    pub(crate) fn stats(&self) -> LocalStats {
        LocalStats {
            hits: self.counters.sum(HITS),
            misses: self.counters.sum(MISSES),
            invalidations: self.counters.sum(INVALIDATIONS),
            tracking: self.tracking.load(Ordering::Acquire),
        }
    }
}

/// An instant no entry reaches: about a century from now.
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(100 * 365 * 24 * 60 * 60))
        .unwrap_or(now)
}

/// The size of the alias map that starts a sweep: twice the tier's capacity.
fn sweep_threshold(max_entries: usize) -> usize {
    max_entries.saturating_mul(2).max(64)
}

/// The local tier `config` asks for, its tracking started; `None` when off,
/// and on the in-memory store (already in-process: a copy in front of it
/// would only cost memory).
pub(crate) fn for_config(config: &crate::config::CacheConfig) -> Option<Arc<LocalTier>> {
    use crate::store::connect::Servers;
    let (max_entries, max_ttl) = config.local_tier?;
    let serve_stale = config.local_serve_stale;
    let store = match crate::store::connect::servers(config)? {
        Ok(Servers::Standalone(client)) => TrackedStore::Standalone(client),
        Ok(Servers::Cluster(clients)) => TrackedStore::Cluster(clients),
        // The store was built from the same endpoints: not expected.
        Err(err) => {
            tracing::warn!(%err, "local tier off: no tracking client");
            return None;
        }
    };
    let tier =
        Arc::new(LocalTier::new(max_entries, max_ttl, config.timeout).serving_stale(serve_stale));
    let prefix = config.namespace.as_ref().map(|ns| format!("{ns}:"));
    start(&tier, store, prefix, config.connect_timeout);
    Some(tier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_tier() -> LocalTier {
        let tier = LocalTier::new(100, Duration::from_secs(60), Duration::from_secs(1));
        tier.open(Vec::new());
        tier
    }

    #[test]
    fn a_fill_is_served_until_the_key_is_invalidated() {
        let tier = open_tier();
        tier.fill(tier.watch("k"), b"1", None, None);
        assert_eq!(tier.get("k").as_deref(), Some(&b"1"[..]));
        tier.invalidated("k");
        assert_eq!(tier.get("k"), None);
        assert_eq!(tier.stats().invalidations, 1);
    }

    #[test]
    fn a_read_invalidated_while_in_flight_is_not_kept() {
        let tier = open_tier();
        let watch = tier.watch("k");
        tier.invalidated("k");
        tier.fill(watch, b"old", None, None);
        assert_eq!(tier.get("k"), None);
    }

    #[test]
    fn a_flush_while_in_flight_drops_the_fill() {
        let tier = open_tier();
        let watch = tier.watch("k");
        tier.flush();
        tier.fill(watch, b"old", None, None);
        assert_eq!(tier.get("k"), None);
    }

    #[test]
    fn an_own_write_is_kept_only_when_its_own_invalidation_is_the_only_one() {
        let tier = open_tier();
        let watch = tier.watch("k");
        tier.invalidated("k");
        tier.fill_own(watch, b"mine", None, None, None);
        assert_eq!(tier.get("k").as_deref(), Some(&b"mine"[..]));

        let watch = tier.watch("k");
        tier.invalidated("k");
        tier.invalidated("k");
        tier.fill_own(watch, b"mine", None, None, None);
        assert_eq!(tier.get("k"), None, "another client wrote after us");
    }

    #[test]
    fn a_closed_tier_is_neither_read_nor_filled() {
        let tier = open_tier();
        tier.fill(tier.watch("k"), b"1", None, None);
        tier.close();
        assert_eq!(tier.get("k"), None);
        tier.fill(tier.watch("k"), b"1", None, None);
        tier.open(Vec::new());
        assert_eq!(tier.get("k"), None, "nothing from before the outage");
    }

    #[test]
    fn stale_entries_are_served_only_when_opted_in_and_only_until_tracking_is_back() {
        let tier = open_tier();
        tier.fill(tier.watch("k"), b"1", None, None);
        tier.close();
        assert!(tier.get_stale(b"k").is_none(), "off by default");

        let tier = open_tier().serving_stale(true);
        tier.fill(tier.watch("k"), b"1", None, None);
        assert!(tier.get_stale(b"k").is_none(), "not while tracking is up");
        tier.close();
        assert_eq!(tier.get("k"), None, "never as a plain read");
        assert_eq!(
            tier.get_stale(b"k").map(|e| e.bytes.clone()).as_deref(),
            Some(&b"1"[..])
        );
        tier.open(Vec::new());
        tier.close();
        assert!(
            tier.get_stale(b"k").is_none(),
            "nothing from before reconnecting"
        );
    }

    #[test]
    fn a_fill_lives_no_longer_than_the_key_in_redis() {
        let tier = open_tier();
        let past = Instant::now();
        tier.fill(tier.watch("gone"), b"1", None, Some(past));
        assert_eq!(tier.get("gone"), None, "expired before the fill");
        let later = Instant::now() + Duration::from_secs(30);
        tier.fill(tier.watch("k"), b"1", None, Some(later));
        assert!(tier.get("k").is_some());
        let expires_at = tier.entries.get(&b"k"[..]).map(|entry| entry.expires_at);
        assert!(expires_at.is_some_and(|at| at <= later));
    }

    #[test]
    fn an_entry_past_its_ttl_is_a_miss_and_dropped() {
        let tier = open_tier();
        let soon = Instant::now() + Duration::from_millis(1);
        tier.fill(tier.watch("k"), b"1", None, Some(soon));
        let expires_at = tier.entries.get(&b"k"[..]).map(|entry| entry.expires_at);
        let expires_at = expires_at.expect("kept");
        while Instant::now() <= expires_at {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(tier.get("k"), None);
        assert!(!tier.entries.contains_key(&b"k"[..]), "dropped on the read");
    }

    #[test]
    fn an_aliased_entry_is_served_under_its_alias_and_evicted_by_its_key() {
        let tier = open_tier();
        tier.fill_as(tier.watch("ns:p:hash1"), b"\xffp\xff[1]", b"1", None, None);
        assert!(tier.entry(b"\xffp\xff[1]").is_some());
        assert!(
            tier.get("ns:p:hash1").is_none(),
            "kept under its alias only"
        );
        tier.invalidated("ns:p:hash1");
        assert!(tier.entry(b"\xffp\xff[1]").is_none());

        // A read in flight when its key changed is not kept.
        let watch = tier.watch("ns:p:hash2");
        tier.invalidated("ns:p:hash2");
        tier.fill_as(watch, b"\xffp\xff[2]", b"2", None, None);
        assert!(tier.entry(b"\xffp\xff[2]").is_none());

        // invalidate_prefix reaches aliased entries through their keys.
        tier.fill_as(tier.watch("ns:p:hash3"), b"\xffp\xff[3]", b"3", None, None);
        tier.fill_as(tier.watch("ns:q:hash4"), b"\xffq\xff[4]", b"4", None, None);
        tier.evict_prefix("ns:p:");
        assert!(tier.entry(b"\xffp\xff[3]").is_none());
        assert!(tier.entry(b"\xffq\xff[4]").is_some());
        tier.flush();
        assert!(tier.entry(b"\xffq\xff[4]").is_none());
    }

    #[test]
    fn aliases_stay_bounded_and_live_entries_keep_theirs() {
        let tier = LocalTier::new(10, Duration::from_secs(60), Duration::from_secs(1));
        tier.open(Vec::new());
        for n in 0..1_000 {
            let alias = format!("\u{1}{n}").into_bytes();
            tier.fill_as(tier.watch(&format!("k{n}")), &alias, b"v", None, None);
            tier.entries.run_pending_tasks();
        }
        let aliases = crate::sync::lock(&tier.aliases).by_key.len();
        assert!(aliases <= 2 * sweep_threshold(10), "{aliases} aliases");
        // Whatever the tier still holds is evicted by its key.
        for n in 0..1_000 {
            let alias = format!("\u{1}{n}").into_bytes();
            tier.invalidated(&format!("k{n}"));
            assert!(tier.entry(&alias).is_none(), "k{n}");
        }
    }

    #[test]
    fn evict_prefix_drops_exactly_the_prefix() {
        let tier = open_tier();
        tier.fill(tier.watch("a:1"), b"1", None, None);
        tier.fill(tier.watch("b:1"), b"1", None, None);
        tier.evict_prefix("a:");
        assert_eq!(tier.get("a:1"), None);
        assert!(tier.get("b:1").is_some());
    }
}
