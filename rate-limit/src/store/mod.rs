//! Where the policies' states live: the store of the limiter's handle,
//! through its atomic steps ([`ops`]): one Lua script call per request on
//! Redis (see [`redis`]), their Rust twins on the in-memory store
//! ([`memory`]), which every layer built from one in-memory handle shares.

pub(crate) mod memory;
pub(crate) mod ops;
pub(crate) mod redis;

use std::time::Duration;

use cache_core::Cache;

use crate::quota::Quota;

/// For tests: the raw rows (per request: admitted, then per policy
/// remaining, reset, retry and blocked ms) of requests of `costs` at `now_us`
/// on `keys` (one per quota, one hash tag), from the script or its
/// in-memory twin, whichever backs `cache`. Not a stable API.
#[doc(hidden)]
pub async fn evaluate_raw(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: u64,
    costs: &[u64],
) -> cache_core::Result<Vec<i64>> {
    // The client's keys once per request: its requests sent together.
    let all: Vec<&str> = costs.iter().flat_map(|_| keys.iter().copied()).collect();
    redis::evaluate(
        cache,
        &all,
        quotas,
        Some(now_us),
        costs,
        true,
        None,
        Duration::from_secs(5),
    )
    .await
    .map_err(raw_error)
}

/// For tests: the row of one request of `cost` at `now_us` on `keys` (one
/// per quota, one hash tag), concurrency limits among the quotas, taking
/// lease `lease` if admitted: from `limits.lua` or its in-memory
/// twin, whichever backs `cache`. Not a stable API.
#[doc(hidden)]
pub async fn acquire_raw(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: u64,
    cost: u64,
    lease: i64,
) -> cache_core::Result<Vec<i64>> {
    let timeout = Duration::from_secs(5);
    redis::acquire(cache, keys, quotas, Some(now_us), cost, lease, timeout)
        .await
        .map_err(raw_error)
}

/// For tests: releases lease `lease` of `key`; whether it was still held.
/// Not a stable API.
#[doc(hidden)]
pub async fn release_raw(cache: &Cache, key: &str, lease: i64) -> cache_core::Result<bool> {
    redis::release(cache, &[key.to_string()], lease, Duration::from_secs(5))
        .await
        .map_err(raw_error)
}

/// For tests: which of the limiter's atomic steps [`atomic_raw`] runs.
/// Not a stable API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOp {
    /// `limits.lua`.
    Limits,
    /// `single.lua`.
    Single,
    /// `counter.lua`.
    Counter,
    /// `refund.lua`.
    Refund,
    /// The release script (`ZREM`).
    Release,
    /// The renewal script.
    Renew,
}

/// For tests: runs one of the limiter's atomic steps on `keys` with `args`
/// as its script takes them: the script on Redis, its twin on the
/// in-memory store. Not a stable API.
#[doc(hidden)]
pub async fn atomic_raw(
    cache: &Cache,
    op: RawOp,
    keys: &[&str],
    args: &[i64],
) -> cache_core::Result<Vec<i64>> {
    let op: &dyn cache_core::AtomicOp = match op {
        RawOp::Limits => &ops::Limits,
        RawOp::Single => &ops::Single,
        RawOp::Counter => &ops::Counter,
        RawOp::Refund => &ops::Refund,
        RawOp::Release => &ops::Release,
        RawOp::Renew => &ops::Renew,
    };
    cache
        .run_atomic(op, keys, args, Duration::from_secs(5))
        .await
}

/// A raw call's error as the cache's: a store failure as it came, a
/// reply the scripts should not give as an invalid argument.
fn raw_error(err: redis::CallError) -> cache_core::Error {
    match err {
        redis::CallError::Store(err) => err,
        malformed => cache_core::Error::InvalidArgument {
            argument: "script reply",
            reason: malformed.to_string(),
        },
    }
}

/// For tests: the value the in-memory store of `cache` holds under `key`
/// (as the handle names it), rendered as Redis stores it (a fixed window:
/// the bare count under a one-policy key, without a hash tag; `count:end`
/// under a key of several policies; a lease set: its number of leases),
/// and the time until it expires. Not a stable API.
#[doc(hidden)]
pub async fn stored_in_memory(cache: &Cache, key: &str) -> Option<(String, Duration)> {
    let value = cache.get_bytes(key).await.ok()??;
    match cache.ttl(key).await.ok()? {
        cache_core::KeyTtl::Expires(left) => Some((memory::rendered(key, &value), left)),
        _ => None,
    }
}

/// For tests: gives back `cost` units on `keys` (one per quota, one hash
/// tag) of a request charged at `at_us` whose row said `resets` (each
/// policy's reset ms), at `now_us`, through `refund.lua` or its
/// in-memory twin, whichever backs `cache`; per policy 1 if it gave back.
/// Not a stable API.
#[doc(hidden)]
pub async fn refund_raw(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: u64,
    at_us: u64,
    resets: &[u64],
    cost: u64,
) -> cache_core::Result<Vec<i64>> {
    let at = redis::ChargedAt {
        now_us: Some(now_us),
        at_us: Some(at_us),
        elapsed_us: now_us.saturating_sub(at_us),
    };
    redis::refund(
        cache,
        keys,
        quotas,
        at,
        resets,
        cost,
        Duration::from_secs(5),
    )
    .await
    .map_err(raw_error)
}
