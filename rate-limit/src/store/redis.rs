//! The Redis side: one script call per request, sent at once on the
//! limiter's multiplexed connection (which pipelines concurrent calls):
//! [`counter.lua`](COUNTER_LUA) for a layer of one fixed-window policy on
//! Redis' clock, the common case (`INCRBY` and `PTTL`);
//! [`single.lua`](SINGLE_LUA) for one policy of another algorithm (or given
//! "now", or a key `counter.lua` finds holding no count of its own);
//! [`limits.lua`](LIMITS_LUA) for several policies, evaluated all-or-nothing.

use std::sync::LazyLock;
use std::time::Duration;

use cache_core::{Cache, Script};

use crate::quota::{Algorithm, Quota};

/// One fixed-window policy on Redis' clock: a count and its key's expiry.
pub(crate) const COUNTER_LUA: &str = include_str!("counter.lua");
/// One policy: `window.rs`'s `check` in Lua, for one request.
pub(crate) const SINGLE_LUA: &str = include_str!("single.lua");
/// Several policies: `window.rs`'s `evaluate` in Lua.
pub(crate) const LIMITS_LUA: &str = include_str!("limits.lua");

static COUNTER: LazyLock<Script> = LazyLock::new(|| Script::new(COUNTER_LUA));
static SINGLE: LazyLock<Script> = LazyLock::new(|| Script::new(SINGLE_LUA));
static LIMITS: LazyLock<Script> = LazyLock::new(|| Script::new(LIMITS_LUA));

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How the scripts name an algorithm.
fn code(algorithm: Algorithm) -> i64 {
    match algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => 1,
        Algorithm::Gcra => 2,
    }
}

/// `single.lua`'s arguments: `now_us` (`None`: Redis' own clock), the
/// quota, the request's cost.
pub(crate) fn single_args(now_us: Option<u64>, quota: &Quota, cost: u64) -> [i64; 5] {
    [
        now_us.map_or(-1, int),
        code(quota.enforced_by()),
        int(quota.limit()),
        int(quota.window_ms()),
        int(cost),
    ]
}

/// `limits.lua`'s arguments for one client: `now_us` (`None`: Redis' own
/// clock), the quotas, the costs of its requests, evaluated in order.
pub(crate) fn args(now_us: Option<u64>, quotas: &[Quota], costs: &[u64]) -> Vec<i64> {
    let mut args = Vec::with_capacity(3 + 3 * quotas.len() + costs.len());
    args.push(now_us.map_or(-1, int));
    args.push(int(quotas.len() as u64));
    for quota in quotas {
        args.extend([
            code(quota.enforced_by()),
            int(quota.limit()),
            int(quota.window_ms()),
        ]);
    }
    args.push(int(costs.len() as u64));
    args.extend(costs.iter().map(|&cost| int(cost)));
    args
}

/// One request of `cost` at `now_us` (`None`: Redis' clock) on `keys` (one
/// per quota, one hash tag): one script call, its row (see `window::row_len`).
pub(crate) async fn evaluate(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: Option<u64>,
    cost: u64,
    timeout: Duration,
) -> cache_core::Result<Vec<i64>> {
    if let [quota] = quotas {
        if now_us.is_none() && quota.enforced_by() == Algorithm::FixedWindow {
            let args = [int(cost), int(quota.limit()), int(quota.window_ms())];
            let reply = cache
                .eval_script_within(&COUNTER, keys, &args, timeout)
                .await?;
            if let Some(row) = counter_row(quota, cost, &reply) {
                return Ok(row.to_vec());
            }
            // No count of its own under the key (a foreign value, an earlier
            // version's form): read and replaced by the general script.
        }
        let args = single_args(now_us, quota, cost);
        return cache
            .eval_script_within(&SINGLE, keys, &args, timeout)
            .await;
    }
    let args = args(now_us, quotas, &[cost]);
    cache
        .eval_script_within(&LIMITS, keys, &args, timeout)
        .await
}

/// `counter.lua`'s answer (admitted, count after, ms left) as the row of
/// the general scripts (`window.rs`'s fixed window on that count and window
/// end); `None` for its "no count of mine" (or anything malformed).
fn counter_row(quota: &Quota, cost: u64, reply: &[i64]) -> Option<[i64; 5]> {
    let &[admitted @ (0 | 1), count, left] = reply else {
        return None;
    };
    let (limit, count, left) = (int(quota.limit()), count, left.max(0));
    if !(0..=limit).contains(&count) {
        return None;
    }
    let retry = match admitted {
        1 => 0,
        _ if cost > quota.limit() => -1,
        _ => left,
    };
    let blocked = if count >= limit { left } else { 0 };
    Some([admitted, limit - count, left, retry, blocked])
}

/// Requests of `costs`, in order, at `now_us` on `keys`: their rows. Several
/// policies go in one call; one policy takes one call per request.
pub(crate) async fn evaluate_many(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: Option<u64>,
    costs: &[u64],
    timeout: Duration,
) -> cache_core::Result<Vec<i64>> {
    if quotas.len() > 1 {
        let args = args(now_us, quotas, costs);
        return cache
            .eval_script_within(&LIMITS, keys, &args, timeout)
            .await;
    }
    let mut rows = Vec::new();
    for &cost in costs {
        rows.extend(evaluate(cache, keys, quotas, now_us, cost, timeout).await?);
    }
    Ok(rows)
}
