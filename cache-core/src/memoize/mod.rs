//! Memoization: the one engine behind `#[cached]` and
//! [`Cache::get_or_set`](crate::Cache::get_or_set) /
//! [`Cache::try_get_or_set`](crate::Cache::try_get_or_set), and what the
//! generated code calls.
//!
//! The generated code builds the key and the [`EntryOptions`] and hands the
//! function body to [`memoize`] ([`engine`]); the function API hands it the
//! caller's closure ([`function`]). Everything else is here, as ordinary
//! testable Rust, written once for both:
//!
//! - **Fail-open**: any cache error (unreachable, timeout, breaker open, value
//!   that does not decode, failed write) runs the body and returns its result.
//! - **Single-flight**: in one process, concurrent calls with the same key
//!   (on one handle and its clones) share one flight: the leader reads the
//!   cache and, on a miss, runs the body; followers wait and decode the
//!   leader's encoded result. A leader that panics or is cancelled abandons
//!   the flight and a follower takes over, so nobody waits forever. Outcomes
//!   that are not cached (`Err`, `None`) are not shared either: followers
//!   then run the body themselves ([`flight`]).
//! - **One failure budget per call tree**: a memoized call and the memoized
//!   calls its body makes one after another (in the same task) lose at most
//!   the outermost handle's call timeout in all to cache operations that
//!   fail, whatever the options (reads, tag versions, leases, writes); once
//!   it is spent they skip the cache. Successful operations cost nothing
//!   from the budget. (Calls run concurrently within one task, as with
//!   `join!`, can each spend what is left.)
//! - **Stored-value options** (`stale`, `compress`, `encrypt`, `tags`) and
//!   the cross-instance **lock** go through the same pipeline; see
//!   [`EntryOptions`].
//! - No lock is held across an `.await`, so recursion over other keys (`fib`)
//!   cannot deadlock.

mod body;
mod budget;
mod decoded;
mod engine;
pub(crate) mod flight;
mod function;
mod key;
mod lock;
mod options;
mod target;

use std::fmt::Display;

use serde::Serialize;

use crate::cache::Cache;
use crate::error::{EncodeError, Result};
pub use body::{Body, Detached, Inline, OwnedArg};
pub use decoded::{Keep, KeepBytes, KeepClone, Probe, probe};
pub use engine::{Call, memoize};
pub use key::{CallKey, call_key};
pub use options::{DEFAULT_COMPRESS_THRESHOLD, DEFAULT_LABEL, DEFAULT_REFRESH_LEASE, EntryOptions};

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

/// A handle the call borrows (an argument of type `&Cache`, `&self.cache`
/// on a `&self` method): no clone.
pub fn handle_ref(cache: &Cache) -> Option<std::borrow::Cow<'_, Cache>> {
    Some(std::borrow::Cow::Borrowed(cache))
}

/// The default handle (see [`set_default`]).
pub fn default_handle() -> Option<Cache> {
    default_cache()
}

/// Read on every call of a memoized function without a `cache = ...`: a
/// lock-free load, where a lock would make every core write one shared line.
static DEFAULT: arc_swap::ArcSwapOption<Cache> = arc_swap::ArcSwapOption::const_empty();

/// Makes `cache` the handle that `#[cached]` functions use unless told otherwise.
/// May be called again (in tests, say) to replace it.
pub fn set_default(cache: Cache) {
    DEFAULT.store(Some(std::sync::Arc::new(cache)));
}

/// The handle set with [`set_default`], if any.
pub fn default_cache() -> Option<Cache> {
    DEFAULT.load().as_deref().cloned()
}

/// The documented key: `{prefix}:{sha256 of the canonical JSON of the argument tuple}`.
pub fn key<A: Serialize + ?Sized>(prefix: &str, args: &A) -> Result<String> {
    crate::key::key_for(prefix, args)
}

/// A `key = ...` key: `{prefix}:{suffix}`.
pub fn custom_key<S: Display>(prefix: &str, suffix: S) -> Result<String> {
    let suffix = suffix.to_string();
    if suffix.is_empty() {
        return Err(EncodeError::EmptyKey.into());
    }
    Ok(format!("{prefix}:{suffix}"))
}

/// A `key = ...` key as the engine takes it.
pub fn custom_call_key<S: Display>(prefix: &str, suffix: S) -> Result<CallKey<'static>> {
    custom_key(prefix, suffix).map(|key| CallKey::Stored(std::borrow::Cow::Owned(key)))
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
    cache.delete(&crate::key::key_for(prefix, args)?).await
}
