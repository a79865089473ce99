//! The stores behind a [`Cache`](crate::Cache): one trait, three backends.
//!
//! A store speaks bytes and full keys (namespace already applied); the handle
//! adds the codec, the namespace, timeouts, retries, the breaker and counters.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Backend, CacheConfig};
use crate::error::{Error, Result};
use crate::stats::EventStats;
pub(crate) use atomic::AtomicOp;
use pubsub::{Listener, Topic};

pub(crate) mod atomic;
pub(crate) mod connect;
pub(crate) mod identity;
pub(crate) mod memory;
pub(crate) mod pubsub;
pub(crate) mod redis;

/// A boxed store future; one allocation per call is noise next to a network round trip.
pub(crate) type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A value read and the key's remaining life then, when it has one.
pub(crate) type Expiring = (Option<Vec<u8>>, Option<Duration>);

/// The remaining life of a key, as Redis `PTTL` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyTtl {
    /// No such key (or it has expired).
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key expires after this long.
    Expires(Duration),
}

/// A fixed-window counter after an increment: see [`Cache::incr_window`](crate::Cache::incr_window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WindowCount {
    /// The count in the current window, this increment included.
    pub count: u64,
    /// Time until the window ends and the counter disappears.
    pub reset_after: Duration,
}

/// What [`Cache::incr_windows_within`](crate::Cache::incr_windows_within)
/// found at one key.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowIncr {
    /// A counter: its count after the increment (at least the increment,
    /// at most 2^53), and the time until its window ends (zero: it ended
    /// meanwhile).
    Counted {
        /// The count, this increment included.
        count: u64,
        /// Milliseconds until the window ends; `None` when it was not read
        /// (asked without, on Redis: no `PTTL` sent) and this increment
        /// did not start the window (its `PEXPIRE` set no expiry).
        left_ms: Option<u64>,
    },
    /// No counter: a value of another type or not an integer (left as it
    /// was), or an integer that was below zero or ends above 2^53 (the
    /// increment was added to it). The caller replaces it, with a script
    /// that reads it.
    NotACounter,
}

/// The longest window [`Cache::incr_window`](crate::Cache::incr_window)
/// accepts: 366 days, a yearly quota in a leap year. Far below what any
/// backend can represent (Redis' `PEXPIRE` takes up to about 2^63 ms,
/// `Instant` arithmetic overflows somewhere past that), so a window within
/// it always gets its TTL and never overflows a clock; a longer one is a
/// configuration mistake (a value in ms read as seconds, say) and is refused
/// with the same [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument)
/// error on every backend.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// A counter value above this is not one the library wrote: the window
/// scripts replace it as they replace a non-integer. 2^53, since Redis' Lua
/// sees integers as doubles, exact up to there (and rate-limit's limits stop
/// there too).
pub(crate) const MAX_COUNT: u64 = 1 << 53;

/// Checks an `incr_window` window: 1 ms to [`MAX_WINDOW`]; its milliseconds.
pub(crate) fn window_millis(window: Duration) -> Result<u64> {
    if window < Duration::from_millis(1) {
        return Err(Error::invalid("window", "must be at least one millisecond"));
    }
    if window > MAX_WINDOW {
        return Err(Error::invalid(
            "window",
            "must be at most the maximum window, 366 days (cache_core::MAX_WINDOW)",
        ));
    }
    Ok(millis(window))
}

/// Checks an `incr_window` increment: at most [`MAX_COUNT`].
pub(crate) fn check_increment(by: u64) -> Result<()> {
    if by > MAX_COUNT {
        return Err(Error::invalid(
            "by",
            format!("{by} is over the largest window count (2^53)"),
        ));
    }
    Ok(())
}

/// The Redis form of an [`AtomicOp`](crate::AtomicOp): a Lua script,
/// sent as `EVALSHA`, then as `EVAL` when the server answers
/// `NOSCRIPT` (nothing ran then, so nothing runs twice). Cheap to clone.
#[derive(Clone)]
pub struct Script(std::sync::Arc<(::redis::Script, Box<str>)>);

impl Script {
    /// A script of this Lua source.
    pub fn new(source: &str) -> Script {
        Script(std::sync::Arc::new((
            ::redis::Script::new(source),
            source.into(),
        )))
    }

    /// The SHA-1 of the source, as `EVALSHA` names it.
    pub fn hash(&self) -> &str {
        self.0.0.get_hash()
    }

    /// The Lua source.
    pub(crate) fn source(&self) -> &str {
        &self.0.1
    }
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Script").field(&self.hash()).finish()
    }
}

/// Where one walk of [`Store::delete_prefix_page`] runs: SCAN cursors belong to one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanNode {
    /// The only server (standalone Redis, the in-memory store).
    Only,
    /// One primary of a cluster.
    Primary { host: String, port: u16 },
}

/// Where a handle's store keeps its data ([`Cache::reach`](crate::Cache::reach)):
/// what a library built on a [`Cache`](crate::Cache) may need to know of
/// the backend, answered by the store, so that nothing above it matches on
/// [`Backend`].
///
/// ```
/// use cache_core::{Cache, Reach};
///
/// let cache = Cache::in_memory();
/// assert_eq!(cache.reach(), Reach::InProcess);
/// assert!(cache.reach().in_process());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reach {
    /// In this process (the in-memory store): a call has no network to
    /// wait for or fail on, so the handle puts no deadline, retry or
    /// breaker around it; every handle on the data is a clone of one
    /// handle ([`dedicated`](crate::Cache::dedicated) included), so state
    /// kept beside it is seen by all of them; an atomic operation runs as
    /// its in-memory twin, exactly and at in-process cost; pub/sub is the
    /// store's own hub; no local tier goes in front of it.
    InProcess,
    /// One server (standalone Redis): every key on it, a keyspace walk
    /// visits it alone; other processes may share the data.
    Server,
    /// Several servers (Redis Cluster): keys are spread over slots, so the
    /// keys of one atomic operation share a hash tag, and a keyspace walk
    /// visits every primary; other processes may share the data.
    Cluster,
}

impl Reach {
    /// Whether the data lives in this process ([`Reach::InProcess`]).
    pub fn in_process(self) -> bool {
        self == Reach::InProcess
    }
}

/// What every backend does. Methods take full keys and raw bytes.
pub(crate) trait Store: Send + Sync + 'static {
    /// Where the data is; see [`Reach`].
    fn reach(&self) -> Reach;
    /// Reads at most `max_len + 1` bytes of the value, so that the handle can
    /// tell a value over its cap without transferring it. An empty value is
    /// `None`, as a missing key is (Redis `GETRANGE` cannot tell them apart).
    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Option<Vec<u8>>>;
    /// [`get`](Self::get) of several keys, in key order.
    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
        max_len: usize,
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>>;
    /// [`get`](Self::get) and the key's remaining life in the same round
    /// trip (`PTTL` pipelined beside the read, same key so same slot), for
    /// the local tier, whose copies must not outlive the key: `None` when
    /// the key has no expiry (or the store has no local tier), zero when it
    /// is gone.
    fn get_expiring<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Expiring>;
    /// [`get_expiring`](Self::get_expiring) of several keys, in key order.
    fn get_many_expiring<'a>(
        &'a self,
        keys: &'a [String],
        max_len: usize,
    ) -> StoreFuture<'a, Vec<Expiring>>;
    /// `ttl` is at least one millisecond when given.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()>;
    fn set_many<'a>(
        &'a self,
        entries: &'a [(String, Vec<u8>)],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()>;
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;
    fn exists<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;
    /// `ttl` is at least one millisecond.
    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> StoreFuture<'a, bool>;
    fn ttl<'a>(&'a self, key: &'a str) -> StoreFuture<'a, KeyTtl>;
    fn incr<'a>(&'a self, key: &'a str, by: i64) -> StoreFuture<'a, i64>;
    /// Runs `script` with `keys` (full keys, one hash slot on a cluster) and
    /// integer `args`; its reply must be an array of integers. The
    /// in-memory store runs no scripts: an [`Error::InvalidArgument`].
    fn eval<'a>(
        &'a self,
        script: &'a Script,
        keys: &'a [&'a str],
        args: &'a [i64],
    ) -> StoreFuture<'a, Vec<i64>> {
        let _ = (script, keys, args);
        Box::pin(std::future::ready(Err(Error::invalid(
            "script",
            "the in-memory store runs no Lua scripts",
        ))))
    }
    /// Runs `op` with `keys` (full keys, one hash slot) and integer `args`:
    /// its script on Redis, its twin in memory.
    fn run_atomic<'a>(
        &'a self,
        op: &'a dyn AtomicOp,
        keys: &'a [&'a str],
        args: &'a [i64],
    ) -> StoreFuture<'a, Vec<i64>> {
        self.eval(op.script(), keys, args)
    }
    /// Fixed-window counters without a script: per key, `INCRBY key by`
    /// (`INCR key` for 1), `PEXPIRE key window_ms LT` and, if its
    /// `read_ttl` (one per key),
    /// `PTTL key`, every key's commands in one pipelined write (one slot
    /// on a cluster); without the `PTTL`, the end of a window the
    /// `PEXPIRE` started (its reply 1) is `window_ms`. A store that reads
    /// the TTL anyway (the in-memory one, the script) answers it whatever
    /// `read_ttl`. `None` when the server
    /// takes no `PEXPIRE` options (Redis before 7.0): then nothing was sent,
    /// and the caller counts with a script. The in-memory store runs
    /// [`IncrWindow`](atomic::IncrWindow)'s twin per key, which replaces a
    /// foreign value itself.
    fn incr_windows<'a>(
        &'a self,
        keys: &'a [&'a str],
        by: &'a [i64],
        window_ms: i64,
        _read_ttl: &'a [bool],
    ) -> StoreFuture<'a, Option<Vec<WindowIncr>>> {
        Box::pin(async move {
            let mut counted = Vec::with_capacity(keys.len());
            for (&key, &by) in keys.iter().zip(by) {
                let args = [by, window_ms, MAX_COUNT as i64];
                let reply = self.run_atomic(&atomic::IncrWindow, &[key], &args).await?;
                counted.push(match reply[..] {
                    [count, left_ms] => WindowIncr::Counted {
                        count: u64::try_from(count).unwrap_or(0),
                        left_ms: Some(u64::try_from(left_ms).unwrap_or(0)),
                    },
                    _ => WindowIncr::NotACounter,
                });
            }
            Ok(Some(counted))
        })
    }
    /// Runs `op` at once, without a future, when the store answers
    /// without waiting (in process); `None` when the call goes through
    /// [`run_atomic`](Store::run_atomic). An in-process atomic step then
    /// allocates no future.
    fn run_atomic_at_once(
        &self,
        op: &dyn AtomicOp,
        keys: &[&str],
        args: &[i64],
    ) -> Option<Result<Vec<i64>>> {
        let _ = (op, keys, args);
        None
    }
    /// Publishes `payload` on `channel` (`PUBLISH`, `SPUBLISH` on a
    /// cluster; in process, into the store's hub): the receivers it reached,
    /// connections on Redis, listeners in process. Counted as published.
    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, u64>;
    /// [`publish`](Self::publish) at once, without a future, when the
    /// store delivers without waiting (in process); `None` when the call
    /// goes through `publish`. An in-process publish then allocates no
    /// future, as [`run_atomic_at_once`](Self::run_atomic_at_once).
    fn publish_at_once(&self, channel: &str, payload: &[u8]) -> Option<u64> {
        let _ = (channel, payload);
        None
    }
    /// A listener to `topics` with a queue of `capacity` messages, once the
    /// server has confirmed them (within the handle's timeout, or the
    /// connect timeout when longer: the first subscribe connects), so that
    /// what is published afterwards reaches it. Dropping it unsubscribes.
    /// Payloads over the handle's size cap are dropped as they arrive.
    fn subscribe(&self, topics: Vec<Topic>, capacity: usize) -> StoreFuture<'_, Listener>;
    /// Whether [`subscribe`](Self::subscribe) takes patterns: not on a
    /// cluster, whose sharded pub/sub has none.
    fn subscribes_patterns(&self) -> bool;
    /// The counters and the connection state of the store's pub/sub.
    fn pubsub_stats(&self) -> EventStats;
    /// The servers a prefix walk must visit: every primary of a cluster.
    fn scan_nodes(&self) -> StoreFuture<'_, Vec<ScanNode>>;
    /// One bounded step of removing every key that starts with `prefix` (a
    /// literal, not a pattern) on `node`: one SCAN page from `cursor` and the
    /// removal of what it found. Returns the next cursor (0: done) and how
    /// many keys were removed. Repeating a step is harmless.
    fn delete_prefix_page<'a>(
        &'a self,
        node: &'a ScanNode,
        cursor: u64,
        prefix: &'a str,
    ) -> StoreFuture<'a, (u64, u64)>;
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// The server's refusal of this store's login, found out on a connection
    /// of its own, for a failure the driver reports without its cause (the
    /// cluster client says only that it has no connection); `None` when the
    /// login is not what fails, or it cannot tell. At most one try a second.
    fn refused_login(&self) -> StoreFuture<'_, Option<::redis::RedisError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// The store `config` names. Lazily connected: only a configuration the
/// client refuses fails here, never an unreachable Redis.
pub(crate) fn open(config: &CacheConfig) -> Result<Box<dyn Store>> {
    Ok(match &config.backend {
        Backend::Memory => in_memory(config.memory_max_entries),
        Backend::Redis(endpoint) => Box::new(redis::RedisStore::standalone(endpoint, config)?),
        Backend::Cluster(nodes) => Box::new(redis::RedisStore::cluster(nodes, config)?),
    })
}

/// The embedded store, bounded to `max_entries`.
pub(crate) fn in_memory(max_entries: usize) -> Box<dyn Store> {
    Box::new(memory::MemoryStore::new(max_entries))
}

/// Milliseconds for Redis, at least 1 (a zero TTL is handled before the store).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
