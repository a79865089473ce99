//! The Redis side: one script call evaluates every policy of every client of
//! a batch of requests.

use std::sync::LazyLock;
use std::time::Duration;

use cache_core::{Cache, Script};

use crate::quota::{Algorithm, Quota};

/// The script's source: `window.rs` in Lua.
pub(crate) const LIMITS_LUA: &str = include_str!("limits.lua");

static LIMITS: LazyLock<Script> = LazyLock::new(|| Script::new(LIMITS_LUA));

/// The script's arguments for one client: `now_us` (`None`: Redis' own
/// clock), the quotas, the costs of its requests (none: the arguments
/// before the clients').
pub(crate) fn args(now_us: Option<u64>, quotas: &[Quota], costs: &[u64]) -> Vec<i64> {
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut args = Vec::with_capacity(3 + 3 * quotas.len() + costs.len());
    args.push(now_us.map_or(-1, int));
    args.push(int(quotas.len() as u64));
    for quota in quotas {
        args.push(match quota.enforced_by() {
            Algorithm::FixedWindow => 0,
            Algorithm::SlidingWindow => 1,
            Algorithm::Gcra => 2,
        });
        args.push(int(quota.limit()));
        args.push(int(quota.window_ms()));
    }
    if !costs.is_empty() {
        args.push(int(costs.len() as u64));
        args.extend(costs.iter().map(|&cost| int(cost)));
    }
    args
}

/// One script call of `args` (see `limits.lua`) over `keys`.
pub(crate) async fn evaluate(
    cache: &Cache,
    keys: &[&str],
    args: &[i64],
    timeout: Duration,
) -> cache_core::Result<Vec<i64>> {
    cache.eval_script_within(&LIMITS, keys, args, timeout).await
}
