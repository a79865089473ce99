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

use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::codec::Codec;
use crate::error::{EncodeError, Error, Result};
// Every critical section on a flight map is a single map operation: a
// poisoned map is consistent.
use crate::sync::lock;

tokio::task_local! {
    /// How much longer the memoized calls in the body of the outermost one
    /// may wait on cache operations that fail; set while that body runs.
    static BUDGET: Cell<Duration>;
}

/// The failure budget one memoized call spends from.
enum Budget {
    /// The outermost memoized call of the task keeps its own, and lends what
    /// is left to its body (for the memoized calls the body makes) while the
    /// body runs. A hit never runs a body, so it never enters a task-local scope.
    Own(Duration),
    /// A call inside such a body spends the task's.
    Task,
}

impl Budget {
    fn for_this_task(cache: &Cache) -> Budget {
        if BUDGET.try_with(|_| ()).is_ok() {
            Budget::Task
        } else {
            Budget::Own(cache.timeout())
        }
    }

    fn left(&self) -> Duration {
        match self {
            Budget::Own(left) => *left,
            Budget::Task => BUDGET.try_with(Cell::get).unwrap_or(Duration::MAX),
        }
    }

    fn charge(&mut self, spent: Duration) {
        match self {
            Budget::Own(left) => *left = left.saturating_sub(spent),
            Budget::Task => {
                let _ = BUDGET.try_with(|budget| budget.set(budget.get().saturating_sub(spent)));
            }
        }
    }

    /// Runs one cache operation within what is left, and charges the budget
    /// with the time it took if it failed.
    async fn spend<T, F, Fut>(&mut self, op: F) -> Result<T>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // Tokio's clock, as the handle's timeouts use it.
        let started = tokio::time::Instant::now();
        let result = op(self.left()).await;
        if result.is_err() {
            self.charge(started.elapsed());
        }
        result
    }

    /// Runs the function's body, lending it the budget if it is this call's own.
    async fn run<F: Future>(&mut self, body: F) -> F::Output {
        let Budget::Own(left) = self else {
            return body.await;
        };
        let mut scoped = std::pin::pin!(BUDGET.scope(Cell::new(*left), body));
        let output = scoped.as_mut().await;
        if let Some(rest) = scoped.as_mut().take_value() {
            *left = rest.get();
        }
        output
    }
}

/// How a flight ended, as followers see it.
#[derive(Clone)]
enum Outcome {
    /// The encoded value, or `None` when the outcome is not cached.
    Done(Option<Arc<Vec<u8>>>),
    /// The leader vanished (panic, cancellation): start over.
    Abandoned,
}

/// One flight: the full key it reads, its outcome once there is one, and
/// followers waiting for it.
struct Flight {
    key: FlightKey,
    outcome: OnceLock<Outcome>,
    settled: tokio::sync::Notify,
}

impl Flight {
    fn settle(&self, outcome: Outcome) {
        let _ = self.outcome.set(outcome);
        self.settled.notify_waiters();
    }

    async fn outcome(&self) -> Outcome {
        loop {
            // Created before the check, so a settle in between still wakes it.
            let settled = self.settled.notified();
            if let Some(outcome) = self.outcome.get() {
                return outcome.clone();
            }
            settled.await;
        }
    }
}

/// A full key and its hash, taken once per call: the hash picks the shard
/// and is all the shard's map hashes. foldhash, seeded once per process.
#[derive(Clone, PartialEq, Eq)]
struct FlightKey {
    hash: u64,
    key: String,
}

impl FlightKey {
    fn new(key: String) -> FlightKey {
        static SEED: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
        let hash = SEED.get_or_init(Default::default).hash_one(key.as_str());
        FlightKey { hash, key }
    }
}

impl Hash for FlightKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A flight in the map, found by its key.
struct InFlight(Arc<Flight>);

impl Borrow<FlightKey> for InFlight {
    fn borrow(&self) -> &FlightKey {
        &self.0.key
    }
}

impl Hash for InFlight {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for InFlight {}

type FlightMap = HashSet<InFlight, foldhash::fast::RandomState>;

/// Flights in progress by full key, in shards so that unrelated keys seldom
/// contend for a lock. Each shard has a cache line of its own, so that calls
/// on different cores do not pass lines back and forth for neighbouring shards.
const SHARD_BITS: u32 = 6;
const FLIGHT_SHARDS: usize = 1 << SHARD_BITS;

#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<FlightMap>);

fn shard_of(key: &FlightKey) -> &'static Mutex<FlightMap> {
    static SHARDS: OnceLock<Vec<Shard>> = OnceLock::new();
    let shards = SHARDS.get_or_init(|| (0..FLIGHT_SHARDS).map(|_| Shard::default()).collect());
    // The top bits pick the shard; the map inside uses the low ones.
    let index = usize::try_from(key.hash >> (u64::BITS - SHARD_BITS)).unwrap_or_default();
    &shards[index].0
}

/// The leader's side of a flight. Dropping it before [`publish`](Self::publish)
/// (panic, cancellation) tells followers to start over; the flight stays
/// joinable until [`finish`](Self::finish), so a caller arriving while the
/// leader writes the entry gets the published value instead of a miss.
struct Leader {
    flight: Arc<Flight>,
    in_map: bool,
    published: bool,
}

impl Leader {
    fn key(&self) -> &str {
        &self.flight.key.key
    }

    fn publish(&mut self, value: Option<Arc<Vec<u8>>>) {
        self.published = true;
        self.flight.settle(Outcome::Done(value));
    }

    fn finish(self) {
        // Drop does the rest: the flight leaves the map.
    }

    /// Ends a flight that found the entry in the cache. The entry's bytes are
    /// copied for followers only when there are any (checked once the flight
    /// has left the map, so none can join after the check).
    fn finish_with_hit(mut self, bytes: &[u8]) {
        self.leave_map();
        self.published = true;
        if Arc::strong_count(&self.flight) > 1 {
            self.flight
                .settle(Outcome::Done(Some(Arc::new(bytes.to_vec()))));
        }
    }

    /// Removes this flight from the map (never a later flight of the same key).
    fn leave_map(&mut self) {
        if !std::mem::take(&mut self.in_map) {
            return;
        }
        let mut map = lock(shard_of(&self.flight.key));
        // One lookup: put back the rare later flight that is not this one.
        if let Some(found) = map.take(&self.flight.key)
            && !Arc::ptr_eq(&found.0, &self.flight)
        {
            map.insert(found);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.leave_map();
        if !self.published {
            self.flight.settle(Outcome::Abandoned);
        }
    }
}

enum Role {
    Leader(Leader),
    Follower(Arc<Flight>),
}

/// Joins the flight of `key` (a full key), or starts one; the key moves into
/// a new flight, so it is not copied.
fn join(key: FlightKey) -> Role {
    let mut map = lock(shard_of(&key));
    if let Some(found) = map.get(&key) {
        return Role::Follower(found.0.clone());
    }
    let flight = Arc::new(Flight {
        key,
        outcome: OnceLock::new(),
        settled: tokio::sync::Notify::new(),
    });
    map.insert(InFlight(flight.clone()));
    Role::Leader(Leader {
        flight,
        in_map: true,
        published: false,
    })
}

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
    /// The function's name, for logs.
    pub function: &'static str,
}

/// Runs `body` memoized as `call` says. `stored` picks the part of the result
/// to cache (`Ok`, `Some`, or everything) and `restore` rebuilds a result from it.
pub async fn memoize<R, V, F>(
    call: Call,
    body: F,
    stored: fn(&R) -> Option<&V>,
    restore: fn(V) -> R,
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
        function,
    } = call;
    let Some(cache) = cache.filter(|cache| !cache.is_bypassed()) else {
        return body.await;
    };
    let cache = &cache;
    let mut budget = Budget::for_this_task(cache);
    let key = match key {
        Ok(key) => cache.owned_full_key(key),
        Err(err) => {
            cache.note_uncacheable();
            warn_uncacheable(function, &err);
            return budget.run(body).await;
        }
    };
    let codec = codec.unwrap_or(cache.codec());
    let mut role = join(FlightKey::new(key));
    loop {
        let mut leader = match role {
            Role::Leader(leader) => leader,
            Role::Follower(flight) => match flight.outcome().await {
                Outcome::Done(Some(bytes)) => {
                    if let Ok(value) = codec.decode::<V>(&bytes) {
                        return restore(value);
                    }
                    return budget.run(body).await;
                }
                // Outcomes that are not shared: followers run the body themselves.
                Outcome::Done(None) => return budget.run(body).await,
                Outcome::Abandoned => {
                    role = join(flight.key.clone());
                    continue;
                }
            },
        };
        let read = budget
            .spend(|left| cache.get_full_within(leader.key(), left))
            .await;
        let cache_is_up = match &read {
            Ok(_) => {
                cache.note_memo_failure(None);
                true
            }
            Err(err) => {
                cache.note_memo_failure(Some(err));
                false
            }
        };
        if let Ok(Some(bytes)) = &read
            && let Some(value) = cache.decode_with::<V>(codec, leader.key(), Some(bytes))
        {
            leader.finish_with_hit(bytes);
            return restore(value);
        }
        if let Ok(None) = &read {
            // Counted here; an undecodable entry was counted by decode_with.
            let _ = cache.decode_with::<V>(codec, leader.key(), None);
        }
        let result = budget.run(body).await;
        let encoded = stored(&result).and_then(|value| match codec.encode(value) {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                tracing::warn!(function, error = %err, "result could not be encoded; not cached");
                None
            }
        });
        // Moved, not copied: the encoded bytes serve followers and the write.
        let shared: Option<Arc<Vec<u8>>> = encoded.map(Arc::new);
        leader.publish(shared.clone());
        // A store that just failed the read is not waited on a second time.
        if let (Some(bytes), true) = (shared, cache_is_up) {
            let write = budget
                .spend(|left| cache.set_full_within(leader.key(), &bytes, Some(ttl), left))
                .await;
            if let Err(err) = write {
                cache.note_memo_failure(Some(&err));
            }
        }
        leader.finish();
        return result;
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

/// Drops the entry a memoized function stored for these arguments, so the
/// next call runs the body. `args` is the tuple of the key arguments (those
/// not in `skip(...)`, in declaration order, `self` excluded), as for
/// [`key_for`](crate::key_for); `&str` and `String` give the same key.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::Error> {
/// let cache = cache_core::Cache::in_memory();
/// // after `#[cached(prefix = "embedding", ttl = 86400)] async fn embed(text: &str)`:
/// let removed = cache_core::invalidate_memoized(&cache, "embedding", &("hello",)).await?;
/// assert!(!removed);
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
