//! Where the policies' states live: Redis (one Lua script call per request,
//! see [`redis`]), or, for the in-memory cache, a map of this crate shared
//! by every layer built from one in-memory handle.

pub(crate) mod memory;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::Duration;

use cache_core::Cache;

use crate::quota::Quota;
use crate::window::State;

/// The in-memory state behind `cache` and `keys` as it names them (the
/// namespace in front), or `None` when Redis backs `cache`.
fn in_memory(cache: &Cache, keys: &[&str]) -> Option<(Arc<memory::MemoryLimits>, Vec<String>)> {
    (*cache.backend() == cache_core::Backend::Memory).then(|| {
        let full = keys
            .iter()
            .map(|k| cache.full_key(k).into_owned())
            .collect();
        (cache.shared_state::<memory::MemoryLimits>(), full)
    })
}

/// For tests: the raw rows (per request: admitted, then per policy
/// remaining, reset, retry and blocked ms) of requests of `costs` at `now_us`
/// on `keys` (one per quota, one hash tag), from the in-memory arithmetic or
/// the Redis script, whichever backs `cache`. Not a stable API.
#[doc(hidden)]
pub async fn evaluate_raw(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: u64,
    costs: &[u64],
) -> cache_core::Result<Vec<i64>> {
    if let Some((memory, full)) = in_memory(cache, keys) {
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        return Ok(memory.evaluate(&full, quotas, now_us, costs));
    }
    // The client's keys once per request: its requests sent together.
    let all: Vec<&str> = costs.iter().flat_map(|_| keys.iter().copied()).collect();
    redis::evaluate(
        cache,
        &all,
        quotas,
        Some(now_us),
        costs,
        Duration::from_secs(5),
    )
    .await
    .map_err(raw_error)
}

/// For tests: the row of one request of `cost` at `now_us` on `keys` (one
/// per quota, one hash tag), concurrency limits among the quotas, taking
/// lease `lease` if admitted: from the in-memory arithmetic or
/// `limits.lua`, whichever backs `cache`. Not a stable API.
#[doc(hidden)]
pub async fn acquire_raw(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: u64,
    cost: u64,
    lease: i64,
) -> cache_core::Result<Vec<i64>> {
    if let Some((memory, full)) = in_memory(cache, keys) {
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        return Ok(memory.evaluate_leased(&full, quotas, now_us, cost, lease as u64));
    }
    let timeout = Duration::from_secs(5);
    redis::acquire(cache, keys, quotas, Some(now_us), cost, lease, timeout)
        .await
        .map_err(raw_error)
}

/// For tests: releases lease `lease` of `key`; whether it was still held.
/// Not a stable API.
#[doc(hidden)]
pub async fn release_raw(cache: &Cache, key: &str, lease: i64) -> cache_core::Result<bool> {
    if *cache.backend() == cache_core::Backend::Memory {
        let memory = cache.shared_state::<memory::MemoryLimits>();
        return Ok(memory.release(&cache.full_key(key), lease as u64));
    }
    redis::release(cache, &[key.to_string()], lease, Duration::from_secs(5))
        .await
        .map_err(raw_error)
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

/// For tests: the state the in-memory backend of `cache` holds under `key`
/// (namespace included), rendered as Redis stores it (a fixed window: the
/// bare count under a one-policy key, without a hash tag; `count:end` under
/// a key of several policies), and the time until it expires (on the system
/// clock). Not a stable API.
#[doc(hidden)]
pub fn stored_in_memory(cache: &Cache, key: &str) -> Option<(String, Duration)> {
    let now_ms = crate::clock::now_micros(&crate::clock::SystemClock) / 1000;
    let memory = cache.shared_state::<memory::MemoryLimits>();
    let (state, expires) = memory.peek(key, now_ms)?;
    let text = match state {
        State::Empty => return None,
        State::Fixed { count, .. } if !key.contains('{') => count.to_string(),
        State::Fixed { count, expires_ms } => format!("{count}:{expires_ms}"),
        State::Sliding {
            index,
            current,
            previous,
        } => format!("{index}:{current}:{previous}"),
        State::Gcra { tat_us } => tat_us.to_string(),
        State::Leases { held, .. } => held.to_string(),
    };
    Some((text, Duration::from_millis(expires - now_ms)))
}

/// For tests: gives back `cost` units on `keys` (one per quota, one hash
/// tag) of a request charged at `at_us` whose row said `resets` (each
/// policy's reset ms), at `now_us`, through the in-memory arithmetic or
/// `refund.lua`, whichever backs `cache`; per policy 1 if it gave back.
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
    if let Some((memory, full)) = in_memory(cache, keys) {
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        return Ok(memory.refund(&full, quotas, now_us, at_us, resets, cost));
    }
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
