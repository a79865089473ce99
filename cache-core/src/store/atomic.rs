//! Atomic operations: one behaviour over keys of one hash slot, defined once
//! with its Redis form (a Lua script) and its in-memory form (a Rust twin
//! that the in-memory store runs under the lock of the keys' shard, on its
//! one bounded map). Both read and write the same bytes under the same keys,
//! so a key written by one form reads the same by the other, and a feature
//! built on them has no engine of its own for the in-memory store.

use std::time::Duration;

use super::Script;
pub use super::memory::{Entries, EntryMut};
use crate::error::{Error, Result};

/// An atomic operation over keys of one hash slot, run by
/// [`Cache::run_atomic`](crate::Cache::run_atomic): on Redis its
/// [`script`](AtomicOp::script), in memory its [`twin`](AtomicOp::twin).
/// The two must agree: give them a test that runs both on the same inputs.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::Error> {
/// use std::sync::LazyLock;
/// use std::time::Duration;
/// use cache_core::{AtomicOp, Cache, Entries, Script};
///
/// /// `SET key value NX`: 1 when it was set, 0 when the key existed.
/// struct SetIfAbsent;
///
/// static SET_NX: LazyLock<Script> = LazyLock::new(|| {
///     Script::new("if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return {1} end return {0}")
/// });
///
/// impl AtomicOp for SetIfAbsent {
///     fn script(&self) -> &Script {
///         &SET_NX
///     }
///     fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> cache_core::Result<Vec<i64>> {
///         if entries.get(keys[0]).is_some() {
///             return Ok(vec![0]);
///         }
///         entries.set(keys[0], args[0].to_string().as_bytes(), None);
///         Ok(vec![1])
///     }
/// }
///
/// let cache = Cache::in_memory();
/// let timeout = Duration::from_millis(100);
/// assert_eq!(cache.run_atomic(&SetIfAbsent, &["k"], &[7], timeout).await?, [1]);
/// assert_eq!(cache.run_atomic(&SetIfAbsent, &["k"], &[8], timeout).await?, [0]);
/// assert_eq!(cache.get::<i64>("k").await?, Some(7));
/// # Ok(()) }
/// ```
pub trait AtomicOp: Send + Sync {
    /// The Redis form: a Lua script over `KEYS` and integer `ARGV`, whose
    /// reply is an array of integers.
    fn script(&self) -> &Script;

    /// The in-memory form: the same step on the in-memory store's entries,
    /// `keys` as the script gets them (the namespace in front), under one
    /// lock. Its `Err` is the call's error.
    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>>;

    /// The `operation` label of its calls in the crate's metrics: `eval`
    /// but for this crate's own documented operations.
    #[doc(hidden)]
    fn operation(&self) -> &'static str {
        "eval"
    }
}

/// The fixed-window counter of [`Cache::incr_window`](crate::Cache::incr_window).
pub(crate) struct IncrWindow;

/// The fixed-window counter in one script, so no counter can live without a
/// TTL and no foreign value can switch limiting off: INCRBY, then PEXPIRE when
/// the key is new, has no expiry (left by a crash between two commands of an
/// older client) or one longer than the window (someone else's). A value that
/// is not a counter this library writes (another type, not an integer, one
/// that would overflow, negative, above 2^53) is replaced by the increment
/// with a fresh window instead of failing the script before its PEXPIRE.
/// `redis.pcall` keeps the INCRBY error (WRONGTYPE, not an integer, overflow)
/// inside the script; it changed nothing, so the SET starts over cleanly.
/// ARGV: increment, window ms, largest count. Returns {count, pttl ms}.
const INCR_WINDOW_LUA: &str = r"
local by = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local count = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(count) ~= 'number' or count < by or count > tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {by, window}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > window then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = window
end
return {count, ttl}
";

static INCR_WINDOW: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(INCR_WINDOW_LUA));

impl AtomicOp for IncrWindow {
    fn script(&self) -> &Script {
        &INCR_WINDOW
    }

    fn operation(&self) -> &'static str {
        "incr_window"
    }

    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        let (&[key], &[by, window_ms, max]) = (keys, args) else {
            return Err(Error::invalid("incr_window", "one key and three arguments"));
        };
        // The same rules as the script: a value that is not a counter this
        // library writes starts a new window; a counter without expiry, or
        // with one past this window's end, gets the window.
        let window = Duration::from_millis(u64::try_from(window_ms).unwrap_or(0));
        let counted = entries
            .get(key)
            .and_then(|value| std::str::from_utf8(value).ok()?.parse::<i64>().ok())
            .and_then(|current| current.checked_add(by))
            .filter(|count| *count >= by && *count <= max);
        let Some(count) = counted else {
            entries.set(key, by.to_string().as_bytes(), Some(window));
            return Ok(vec![by, window_ms]);
        };
        let left = match entries.ttl(key) {
            Some(left) if left <= window => left,
            _ => window,
        };
        entries.set(key, count.to_string().as_bytes(), Some(left));
        Ok(vec![
            count,
            i64::try_from(left.as_millis()).unwrap_or(i64::MAX),
        ])
    }
}
