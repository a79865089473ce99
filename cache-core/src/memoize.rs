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

use std::cell::Cell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::codec::Codec;
use crate::error::{Error, Result};

tokio::task_local! {
    /// How much longer the memoized calls of this task's call tree may wait on
    /// cache operations that fail; set by the outermost one.
    static BUDGET: Cell<Duration>;
}

/// Runs one cache operation within what is left of the budget, and charges
/// the budget with the time it took if it failed.
async fn within_budget<T, F, Fut>(op: F) -> Result<T>
where
    F: FnOnce(Duration) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let Ok(left) = BUDGET.try_with(Cell::get) else {
        return op(Duration::MAX).await;
    };
    // Tokio's clock, as the handle's timeouts use it.
    let started = tokio::time::Instant::now();
    let result = op(left).await;
    if result.is_err() {
        let spent = started.elapsed();
        let _ = BUDGET.try_with(|budget| budget.set(budget.get().saturating_sub(spent)));
    }
    result
}

/// How a flight ended, as followers see it.
#[derive(Clone)]
enum Outcome {
    /// The encoded value, or `None` when the outcome is not cached.
    Done(Option<Arc<Vec<u8>>>),
    /// The leader vanished (panic, cancellation): start over.
    Abandoned,
}

/// One flight: its outcome once there is one, and followers waiting for it.
#[derive(Default)]
struct Flight {
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

type FlightMap = HashMap<Arc<str>, Arc<Flight>>;

/// Flights in progress by full key, in shards so that unrelated keys seldom
/// contend for a lock. Each shard has a cache line of its own, so that calls
/// on different cores do not pass lines back and forth for neighbouring shards.
const FLIGHT_SHARDS: usize = 64;

#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<FlightMap>);

fn shard_of(key: &str) -> &'static Mutex<FlightMap> {
    static SHARDS: OnceLock<Vec<Shard>> = OnceLock::new();
    let shards = SHARDS.get_or_init(|| (0..FLIGHT_SHARDS).map(|_| Shard::default()).collect());
    // Keys end in a hex SHA-256 (or a caller's suffix): their last bytes spread well.
    let index = key.bytes().rev().take(8).fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    &shards[index % FLIGHT_SHARDS].0
}

fn lock(shard: &Mutex<FlightMap>) -> std::sync::MutexGuard<'_, FlightMap> {
    // Every critical section is a single map operation: a poisoned map is consistent.
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The leader's side of a flight. Dropping it before [`publish`](Self::publish)
/// (panic, cancellation) tells followers to start over; the flight stays
/// joinable until [`finish`](Self::finish), so a caller arriving while the
/// leader writes the entry gets the published value instead of a miss.
struct Leader {
    key: Arc<str>,
    flight: Arc<Flight>,
    in_map: bool,
    published: bool,
}

impl Leader {
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
        let mut map = lock(shard_of(&self.key));
        // One lookup: put back the rare later flight that is not this one.
        if let Some((key, flight)) = map.remove_entry(&*self.key)
            && !Arc::ptr_eq(&flight, &self.flight)
        {
            map.insert(key, flight);
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

fn join(key: &Arc<str>) -> Role {
    let mut map = lock(shard_of(key));
    match map.entry(key.clone()) {
        Entry::Occupied(entry) => Role::Follower(entry.get().clone()),
        Entry::Vacant(entry) => {
            let flight = Arc::new(Flight::default());
            entry.insert(flight.clone());
            Role::Leader(Leader {
                key: key.clone(),
                flight,
                in_map: true,
                published: false,
            })
        }
    }
}

/// Everything about one memoized call except its body.
#[derive(Debug)]
pub struct Call {
    /// The handle, or `None` when there is none (then the body just runs).
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
    let mut call = call;
    let Some(cache) = call.cache.take().filter(|cache| !cache.is_bypassed()) else {
        return body.await;
    };
    if BUDGET.try_with(|_| ()).is_err() {
        let budget = Cell::new(cache.timeout());
        return BUDGET
            .scope(budget, memoize_with(cache, call, body, stored, restore))
            .await;
    }
    memoize_with(cache, call, body, stored, restore).await
}

async fn memoize_with<R, V, F>(
    cache: Cache,
    call: Call,
    body: F,
    stored: fn(&R) -> Option<&V>,
    restore: fn(V) -> R,
) -> R
where
    F: Future<Output = R>,
    V: Serialize + DeserializeOwned,
{
    let key = match call.key {
        Ok(key) => key,
        Err(err) => {
            tracing::warn!(function = call.function, error = %err, "memoization key could not be built; running uncached");
            return body.await;
        }
    };
    let codec = call.codec.unwrap_or(cache.codec());
    let flight_key: Arc<str> = Arc::from(cache.full_key(&key).as_ref());
    loop {
        match join(&flight_key) {
            Role::Follower(flight) => match flight.outcome().await {
                Outcome::Done(Some(bytes)) => {
                    if let Ok(value) = codec.decode::<V>(&bytes) {
                        return restore(value);
                    }
                    return body.await;
                }
                // Outcomes that are not shared: followers run the body themselves.
                Outcome::Done(None) => return body.await,
                Outcome::Abandoned => continue,
            },
            Role::Leader(mut leader) => {
                let read = within_budget(|left| cache.get_bytes_within(&key, left)).await;
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
                    && let Some(value) = cache.decode_with::<V>(codec, &key, Some(bytes))
                {
                    leader.finish_with_hit(bytes);
                    return restore(value);
                }
                if let Ok(None) = &read {
                    // Counted here; an undecodable entry was counted by decode_with.
                    let _ = cache.decode_with::<V>(codec, &key, None);
                }
                let result = body.await;
                let encoded = stored(&result).and_then(|value| match codec.encode(value) {
                    Ok(bytes) => Some(bytes),
                    Err(err) => {
                        tracing::warn!(function = call.function, error = %err, "result could not be encoded; not cached");
                        None
                    }
                });
                // Moved, not copied: the encoded bytes serve followers and the write.
                let shared: Option<Arc<Vec<u8>>> = encoded.map(Arc::new);
                leader.publish(shared.clone());
                // A store that just failed the read is not waited on a second time.
                if let (Some(bytes), true) = (shared, cache_is_up) {
                    let write = within_budget(|left| {
                        cache.set_bytes_within(&key, &bytes, Some(call.ttl), left)
                    })
                    .await;
                    if let Err(err) = write {
                        cache.note_memo_failure(Some(&err));
                    }
                }
                leader.finish();
                return result;
            }
        }
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

/// The handle for a call: `explicit` if given, else the default one.
pub fn handle<C: IntoCache>(explicit: C) -> Option<Cache> {
    explicit.into_cache()
}

/// The default handle (see [`set_default`](crate::set_default)).
pub fn default_handle() -> Option<Cache> {
    crate::default_cache()
}

/// The documented key: `{prefix}:{sha256 of the JSON of the argument tuple}`.
pub fn key<A: Serialize + ?Sized>(prefix: &str, args: &A) -> Result<String> {
    crate::key_for(prefix, args)
}

/// A `key = ...` key: `{prefix}:{suffix}`.
pub fn custom_key<S: Display>(prefix: &str, suffix: S) -> Result<String> {
    let suffix = suffix.to_string();
    if suffix.is_empty() {
        return Err(Error::Encode("the custom key is empty".into()));
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
