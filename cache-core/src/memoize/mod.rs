//! What `#[cached]` expands to: fail-open, single-flight memoization.
//!
//! The generated code only builds the key and hands the function body to
//! [`memoize`]; everything else is here, as ordinary testable Rust.
//!
//! - **Fail-open**: any cache error (unreachable, timeout, breaker open, value
//!   that does not decode, failed write) runs the body and returns its result.
//! - **Single-flight**: in one process, concurrent calls with the same key
//!   share one flight: the leader reads the cache and, on a miss, runs the
//!   body; followers wait and decode the leader's encoded result. A leader that
//!   panics or is cancelled abandons the flight and a follower takes over, so
//!   nobody waits forever. Outcomes that are not cached (`Err`, `None`) are
//!   not shared either: followers then run the body themselves.
//! - **One failure budget per call tree**: a memoized call and the memoized
//!   calls its body makes one after another (in the same task) lose at most
//!   the outermost handle's call timeout in all to cache operations that
//!   fail; once it is spent they skip the cache. Nested memoization while the
//!   store hangs adds one timeout to a request, not one per level; successful
//!   operations cost nothing from the budget. (Calls run concurrently within
//!   one task, as with `join!`, can each spend what is left.)
//! - No lock is held across an `.await`, so recursion over other keys (`fib`)
//!   cannot deadlock.
//!
//! The budget is [`budget`]'s, the flights [`flight`]'s; this module puts
//! them together in [`memoize`] and holds what the generated code calls.

mod budget;
mod decoded;
pub(crate) mod flight;

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::codec::Codec;
use crate::error::{EncodeError, Error, Result};
use crate::telemetry::{self, MemoizedCall, Served};
use budget::Budget;
pub use decoded::{Keep, KeepBytes, KeepClone, Probe, probe};
use flight::{FlightKey, Leader, Outcome, Role, join};

/// Everything about one memoized call except its body.
#[derive(Debug)]
pub struct Call {
    /// The handle, or `None` when there is none (then the body just runs).
    /// A clone: a borrow would outlive the body's move of the arguments
    /// (`&mut self`, `self: Arc<Self>`, a `Cache` argument).
    pub cache: Option<Cache>,
    /// The key without namespace, or why it could not be built.
    pub key: Result<String>,
    /// Lifetime of the entry.
    pub ttl: Duration,
    /// Encoding of the entry; `None` takes the handle's.
    pub codec: Option<Codec>,
    /// Served from, and kept in, the handle's local tier when it has one
    /// (`false` for `#[cached(..., local = false)]`).
    pub local: bool,
    /// The function's name, for logs.
    pub function: &'static str,
    /// The attribute's `prefix`: the `prefix` label of the call's metrics and span.
    pub prefix: &'static str,
}

/// Runs `body` memoized as `call` says. `stored` picks the part of the result
/// to cache (`Ok`, `Some`, or everything) and `restore` rebuilds a result from it;
/// `keep` says how a local tier keeps values decoded (`None`: as bytes).
pub async fn memoize<R, V, F>(
    call: Call,
    body: F,
    stored: fn(&R) -> Option<&V>,
    restore: fn(V) -> R,
    keep: Option<Keep<V>>,
) -> R
where
    F: Future<Output = R>,
    V: Serialize + DeserializeOwned,
{
    let Call {
        cache,
        key,
        ttl,
        codec,
        local,
        function,
        prefix,
    } = call;
    let report = MemoizedCall::start(prefix);
    let Some(cache) = cache.filter(|cache| !cache.is_bypassed()) else {
        report.finish("none", Served::Bypass);
        return report.traced(body).await;
    };
    let cache = &cache;
    let store_tier = telemetry::tier(cache.backend());
    let mut budget = Budget::for_this_task(cache);
    let key = match key {
        Ok(key) => cache.owned_full_key(key),
        Err(err) => {
            cache.note_uncacheable();
            warn_uncacheable(function, &err);
            report.finish(store_tier, Served::Bypass);
            return report.traced(budget.run(body)).await;
        }
    };
    let codec = codec.unwrap_or(cache.codec());
    let tier = cache.local_tier().filter(|_| local);
    // Before the flights: a local hit costs a lookup and a clone, or the decoding.
    if let Some(entry) = tier.and_then(|tier| tier.entry(&key)) {
        if let (Some(keep), Some(decoded)) = (&keep, &entry.decoded)
            && let Some(value) = keep.take(decoded)
        {
            cache.record_hit();
            report.finish(telemetry::TIER_LOCAL, Served::Hit);
            return restore(value);
        }
        if let Some(value) = cache.decode_with::<V>(codec, &key, Some(&entry.bytes)) {
            report.finish(telemetry::TIER_LOCAL, Served::Hit);
            return restore(value);
        }
    }
    let mut leader = match wait_for_turn(FlightKey::new(key), codec).await {
        Turn::Lead(leader) => leader,
        Turn::Served(value) => {
            report.joined(store_tier, Served::Hit);
            return restore(value);
        }
        Turn::RunAlone => {
            report.joined(store_tier, Served::Miss);
            return report.traced(budget.run(body)).await;
        }
    };
    // Before the read is sent: an invalidation arriving meanwhile keeps
    // what it read out of the tier.
    let watch = tier.map(|tier| tier.watch(leader.key()));
    let read = report
        .traced(read_entry(cache, &mut budget, &leader, tier.is_some()))
        .await;
    let (read, expires) = match read {
        Ok((bytes, expires)) => (Ok(bytes), expires),
        Err(err) => (Err(err), None),
    };
    if let Ok(Some(bytes)) = &read
        && let Some(value) = cache.decode_with::<V>(codec, leader.key(), Some(bytes))
    {
        if let (Some(tier), Some(watch)) = (tier, watch) {
            let decoded = keep.as_ref().map(|keep| keep.decoded(&value));
            tier.fill(watch, bytes, decoded, expires);
        }
        leader.finish_with_hit(bytes);
        report.finish(store_tier, Served::Hit);
        return restore(value);
    }
    drop(watch);
    // The store failed: an entry kept while tracking is down, if the user
    // opted in to those.
    if read.is_err()
        && let Some(entry) = tier.and_then(|tier| tier.get_stale(leader.key()))
    {
        let value = match (&keep, &entry.decoded) {
            (Some(keep), Some(decoded)) => keep.take(decoded),
            _ => None,
        };
        if value.is_some() {
            cache.record_hit();
        }
        if let Some(value) =
            value.or_else(|| cache.decode_with::<V>(codec, leader.key(), Some(&entry.bytes)))
        {
            leader.finish_with_hit(&entry.bytes);
            report.finish(telemetry::TIER_LOCAL, Served::Stale);
            return restore(value);
        }
    }
    if let Ok(None) = &read {
        // Counted here; an undecodable entry was counted by decode_with.
        let _ = cache.decode_with::<V>(codec, leader.key(), None);
    }
    report.finish(
        store_tier,
        if read.is_ok() {
            Served::Miss
        } else {
            Served::Error
        },
    );
    let result = report.traced(budget.run(body)).await;
    let decoded = match (tier, &keep, stored(&result)) {
        (Some(_), Some(keep), Some(value)) => Some(keep.decoded(value)),
        _ => None,
    };
    let encoded = encode_result(stored(&result), codec, function);
    // Moved, not copied: the encoded bytes serve followers and the write.
    let shared: Option<Arc<Vec<u8>>> = encoded.map(Arc::new);
    leader.publish(shared.clone());
    // A store that just failed the read is not waited on a second time.
    if let (Some(bytes), true) = (shared, read.is_ok()) {
        let local = tier.is_some().then_some(decoded);
        report
            .traced(write_entry(cache, &mut budget, &leader, &bytes, ttl, local))
            .await;
    }
    leader.finish();
    result
}

/// Where a call stands once the flights of its key are sorted out.
pub(crate) enum Turn<V> {
    /// It leads the flight: read the cache, run the body on a miss.
    Lead(Leader),
    /// A leader's encoded result, decoded.
    Served(V),
    /// The leader's outcome is not shared (`Err`, `None`, undecodable):
    /// run the body alone.
    RunAlone,
}

/// Joins the flight of `key` and, as a follower, waits for its outcome,
/// joining again (and perhaps leading) when its leader vanished.
pub(crate) async fn wait_for_turn<V: DeserializeOwned>(key: FlightKey, codec: Codec) -> Turn<V> {
    let mut role = join(key);
    loop {
        let flight = match role {
            Role::Leader(leader) => return Turn::Lead(leader),
            Role::Follower(flight) => flight,
        };
        match flight.outcome().await {
            Outcome::Done(Some(bytes)) => {
                return match codec.decode::<V>(&bytes) {
                    Ok(value) => Turn::Served(value),
                    Err(_) => Turn::RunAlone,
                };
            }
            Outcome::Done(None) => return Turn::RunAlone,
            Outcome::Abandoned => role = join(flight.key.clone()),
        }
    }
}

/// The leader's read of the entry, within the budget, and when `local` the
/// instant the key expires in Redis; notes whether the
/// store is failing (logged once per change).
async fn read_entry(
    cache: &Cache,
    budget: &mut Budget,
    leader: &Leader,
    local: bool,
) -> Result<(Option<Vec<u8>>, Option<std::time::Instant>)> {
    let read = budget
        .spend(|left| async move {
            if local {
                // The key's expiry too: the local copy must not outlive it.
                cache.get_full_expiring(leader.key(), left).await
            } else {
                Ok((cache.get_full_within(leader.key(), left).await?, None))
            }
        })
        .await;
    cache.note_memo_failure(read.as_ref().err());
    read
}

/// The part of the result to cache, encoded; `None` when there is none or
/// it does not encode (logged: a type the codec cannot write is a bug).
fn encode_result<V: Serialize>(
    value: Option<&V>,
    codec: Codec,
    function: &'static str,
) -> Option<Vec<u8>> {
    match codec.encode(value?) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            tracing::warn!(function, error = %err, "result could not be encoded; not cached");
            None
        }
    }
}

/// The leader's write of the entry, within the budget; a failure is noted,
/// never returned (the caller has its result already). `local`: keep the
/// entry in the local tier too, with its decoded value if any.
async fn write_entry(
    cache: &Cache,
    budget: &mut Budget,
    leader: &Leader,
    bytes: &[u8],
    ttl: Duration,
    local: Option<Option<crate::local::Decoded>>,
) {
    let write = budget
        .spend(|left| async move {
            if let Some(decoded) = local {
                cache
                    .set_full_filling(leader.key(), bytes, decoded, Some(ttl), left)
                    .await
            } else {
                cache
                    .set_full_within(leader.key(), bytes, Some(ttl), left)
                    .await
            }
        })
        .await;
    if let Err(err) = write {
        cache.note_memo_failure(Some(&err));
    }
}

/// Logs a call whose key could not be built (NaN argument, say) at warn
/// level at most once a minute per process, with the number of such calls
/// since the last warning, and at debug level otherwise: one bad argument in
/// a hot loop must not flood the log. Every such call is counted in
/// [`Stats::uncacheable`](crate::Stats::uncacheable).
fn warn_uncacheable(function: &'static str, error: &Error) {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    static LIMITER: WarnLimiter = WarnLimiter::new(Duration::from_secs(60));
    let now = EPOCH.get_or_init(std::time::Instant::now).elapsed();
    match LIMITER.tick(now) {
        Some(calls) => tracing::warn!(
            function,
            %error,
            calls,
            "memoized calls ran uncached: their key could not be built (counted in Stats::uncacheable; logged at most once a minute)"
        ),
        None => {
            tracing::debug!(function, %error, "memoized call ran uncached: its key could not be built");
        }
    }
}

/// At most one warning per period, and how many events it stands for.
struct WarnLimiter {
    period_ms: u64,
    /// Milliseconds (since the caller's epoch) before which nothing is logged.
    quiet_until: AtomicU64,
    /// Events since the last warning.
    unlogged: AtomicU64,
}

impl WarnLimiter {
    const fn new(period: Duration) -> WarnLimiter {
        WarnLimiter {
            // Whole milliseconds of any sane period fit a u64.
            period_ms: period.as_millis() as u64,
            quiet_until: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Records one event at `now`; `Some(events since the last warning)`
    /// when this one is to be logged.
    fn tick(&self, now: Duration) -> Option<u64> {
        let now = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let quiet_until = self.quiet_until.load(Ordering::Relaxed);
        // One caller wins the window; the others only count.
        (now >= quiet_until
            && self
                .quiet_until
                .compare_exchange(
                    quiet_until,
                    now.saturating_add(self.period_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok())
        .then(|| self.unlogged.swap(0, Ordering::Relaxed))
    }
}

/// Compile-time check that a key argument is `Serialize`; the generated call
/// is spanned at the argument, so the error points there.
#[inline(always)]
pub fn assert_serialize<T: Serialize + ?Sized>(_: &T) {}

/// Which handle a memoized function uses: `cache = ...` or the default one.
pub trait IntoCache {
    /// The handle, if any.
    fn into_cache(self) -> Option<Cache>;
}

impl IntoCache for Cache {
    fn into_cache(self) -> Option<Cache> {
        Some(self)
    }
}

impl IntoCache for &Cache {
    fn into_cache(self) -> Option<Cache> {
        Some(self.clone())
    }
}

impl IntoCache for Option<Cache> {
    fn into_cache(self) -> Option<Cache> {
        self
    }
}

impl IntoCache for Option<&Cache> {
    fn into_cache(self) -> Option<Cache> {
        self.cloned()
    }
}

/// The handle for a call: `explicit` if given, else the default one.
pub fn handle<C: IntoCache>(explicit: C) -> Option<Cache> {
    explicit.into_cache()
}

/// The default handle (see [`set_default`](crate::set_default)).
pub fn default_handle() -> Option<Cache> {
    crate::default_cache()
}

/// The documented key: `{prefix}:{sha256 of the canonical JSON of the argument tuple}`.
pub fn key<A: Serialize + ?Sized>(prefix: &str, args: &A) -> Result<String> {
    crate::key_for(prefix, args)
}

/// A `key = ...` key: `{prefix}:{suffix}`.
pub fn custom_key<S: Display>(prefix: &str, suffix: S) -> Result<String> {
    let suffix = suffix.to_string();
    if suffix.is_empty() {
        return Err(EncodeError::EmptyKey.into());
    }
    Ok(format!("{prefix}:{suffix}"))
}

/// `Result`: only `Ok` is cached.
pub fn stored_ok<T, E>(result: &std::result::Result<T, E>) -> Option<&T> {
    result.as_ref().ok()
}

/// `Result`: a cached value is an `Ok`.
pub fn restore_ok<T, E>(value: T) -> std::result::Result<T, E> {
    Ok(value)
}

/// `Option`: only `Some` is cached.
pub fn stored_some<T>(option: &Option<T>) -> Option<&T> {
    option.as_ref()
}

/// `Option`: a cached value is a `Some`.
pub fn restore_some<T>(value: T) -> Option<T> {
    Some(value)
}

/// Any other type: always cached.
pub fn stored_always<T>(value: &T) -> Option<&T> {
    Some(value)
}

/// Any other type: the cached value is the result.
pub fn restore_always<T>(value: T) -> T {
    value
}

/// What `{name}_invalidate` does with the key `{name}_key` built: drops it.
pub async fn invalidate(cache: &Cache, key: Result<String>) -> Result<bool> {
    cache.delete(&key?).await
}

/// Drops the entry stored under `{prefix}:{hash of args}`, the key of a
/// memoized function without `key = ...`, so the next call runs the body.
/// `args` is the tuple of the key arguments (those not in `skip(...)` and not
/// the `cache = ...` handle, in declaration order, `self` excluded), as for
/// [`key_for`](crate::key_for); `&str` and `String` give the same key.
///
/// Prefer the `{name}_invalidate` function `#[cached]` writes beside each
/// memoized function: it builds the key the function uses whatever its
/// options (`key = ...`, `skip`, a generic function's type names), where
/// this function only hashes what it is given: for a `key = ...` function
/// it drops nothing (`Ok(false)`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::Error> {
/// use cache_core::{Cache, cached};
///
/// #[cached(prefix = "balance", ttl = 60, cache = cache, skip(cache))]
/// async fn balance(cache: &Cache, user: u64, currency: &str) -> i64 {
///     1250
/// }
///
/// let cache = Cache::in_memory();
/// balance(&cache, 7, "EUR").await;
/// // The key arguments, `cache` skipped: (7, "EUR").
/// assert!(cache_core::invalidate_memoized(&cache, "balance", &(7, "EUR")).await?);
/// assert!(!cache_core::invalidate_memoized(&cache, "balance", &(7, "EUR")).await?); // gone
/// // The same, written by the attribute:
/// balance(&cache, 7, "EUR").await;
/// assert!(balance_invalidate(&cache, 7, "EUR").await?);
/// # Ok(()) }
/// ```
pub async fn invalidate_memoized<A: Serialize + ?Sized>(
    cache: &Cache,
    prefix: &str,
    args: &A,
) -> Result<bool> {
    cache.delete(&crate::key_for(prefix, args)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncacheable_calls_are_warned_about_at_most_once_a_period() {
        let limiter = WarnLimiter::new(Duration::from_secs(60));
        let at = Duration::from_secs;
        assert_eq!(limiter.tick(at(0)), Some(1), "the first one is logged");
        for second in 1..60 {
            assert_eq!(limiter.tick(at(second)), None, "then quiet for a minute");
        }
        assert_eq!(
            limiter.tick(at(60)),
            Some(60),
            "then one warning for all 60"
        );
        assert_eq!(limiter.tick(at(61)), None);
        assert_eq!(limiter.tick(at(500)), Some(2));
    }
}
