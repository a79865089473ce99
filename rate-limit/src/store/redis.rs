//! The Redis side: one call for one request or for a group of them (see
//! [`crate::exact`]), sent at once on the limiter's multiplexed connection
//! (which pipelines concurrent calls). A layer of one fixed-window policy
//! on Redis' clock, the common case, counts requests of cost 1 without a
//! script ([`count_pipelined`]: `INCRBY`, `PEXPIRE ... LT` per key, and
//! `PTTL` for a key whose window's end this instance does not know
//! ([`crate::ends`]) when the caller reads resets, pipelined), and others
//! with [`counter.lua`](COUNTER_LUA) (`INCRBY` and
//! `PTTL`, taking rejected requests back);
//! [`single.lua`](SINGLE_LUA) for one policy of another algorithm (or given
//! "now", or a key `counter.lua` finds holding no count of its own);
//! [`limits.lua`](LIMITS_LUA) for several policies, evaluated all-or-nothing.
//! Each script is an atomic step of the store ([`super::ops`]): the same
//! calls run its in-memory twin on the in-memory store, given "now".

use std::sync::LazyLock;
use std::time::Duration;

use cache_core::{Cache, KeyTtl, Script, WindowIncr};

use super::ops;
use crate::ends::{Known, WindowEnds};
use crate::quota::{Algorithm, Quota};
use crate::window::TAT_FLOOR;

/// One fixed-window policy on Redis' clock: a count and its key's expiry.
pub(crate) const COUNTER_LUA: &str = include_str!("counter.lua");
/// One policy: `window.rs`'s `check` in Lua, for one request.
pub(crate) const SINGLE_LUA: &str = include_str!("single.lua");
/// Several policies: `window.rs`'s `evaluate` in Lua.
pub(crate) const LIMITS_LUA: &str = include_str!("limits.lua");

pub(super) static COUNTER: LazyLock<Script> = LazyLock::new(|| Script::new(COUNTER_LUA));
pub(super) static SINGLE: LazyLock<Script> = LazyLock::new(|| Script::new(SINGLE_LUA));
pub(super) static LIMITS: LazyLock<Script> = LazyLock::new(|| Script::new(LIMITS_LUA));

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How the scripts name an algorithm.
fn code(algorithm: Algorithm) -> i64 {
    match algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => 1,
        Algorithm::Gcra => 2,
        Algorithm::Concurrent => 3,
    }
}

/// `single.lua`'s first arguments: `now_us` (`None`: Redis' own clock) and
/// the quota; the requests' costs follow.
fn single_args(now_us: Option<u64>, quota: &Quota) -> [i64; 4] {
    [
        now_us.map_or(-1, int),
        code(quota.enforced_by()),
        int(quota.limit()),
        int(quota.window_ms()),
    ]
}

/// `single.lua`'s arguments for one request of `cost`: no `Vec`.
fn one_request_args(now_us: Option<u64>, quota: &Quota, cost: u64) -> [i64; 5] {
    let [now, algorithm, limit, window] = single_args(now_us, quota);
    [now, algorithm, limit, window, int(cost)]
}

/// `limits.lua`'s first arguments: `now_us` (`None`: Redis' own clock) and
/// the quotas; each client's requests follow.
fn args(now_us: Option<u64>, quotas: &[Quota]) -> Vec<i64> {
    let mut args = Vec::with_capacity(4 + 3 * quotas.len());
    args.push(now_us.map_or(-1, int));
    args.push(int(quotas.len() as u64));
    for quota in quotas {
        args.extend([
            code(quota.enforced_by()),
            int(quota.limit()),
            int(quota.window_ms()),
        ]);
    }
    args
}

/// Requests sent together: request `r` has the keys
/// `keys[r * P .. (r + 1) * P]` (one per quota, one hash tag) and costs
/// `costs[r]`; the requests of one client (the same keys) are evaluated in
/// the order given, each as if it came alone. Their rows (see
/// `window::row_len`), in the order of `costs`, from one script call (a
/// second one only for fixed-window keys `counter.lua` finds holding no
/// count of their own). On a cluster the caller sends one client per call.
///
/// `resets`: whether the caller reads the reset of a request the window
/// still admits after it (a rate-limit header carries it, a refund finds
/// its window by it). Without, such a row may say 0 for it; the rows of a
/// full window (rejected requests, and the one that fills it) always
/// carry theirs (`Retry-After`, the deny cache's hold).
///
/// `ends`: the window ends the caller knows, which the pipelined fixed
/// window reads and learns (see [`count_pipelined`]); `None`: none known.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn evaluate(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: Option<u64>,
    costs: &[u64],
    resets: bool,
    ends: Option<&WindowEnds>,
    timeout: Duration,
) -> Result<Vec<i64>, CallError> {
    match (quotas, costs) {
        ([quota], _) if now_us.is_none() && quota.enforced_by() == Algorithm::FixedWindow => {
            let pipelined = Pipelined {
                cache,
                ends,
                limit: quota.limit(),
                window: Duration::from_millis(quota.window_ms()),
                resets,
                timeout,
            };
            count_fixed(&pipelined, keys, quota, costs).await
        }
        // One request (the layer's call): its script here, one async layer
        // fewer than through `single` (on the in-memory path the call
        // completes at once, and the layers are its cost).
        ([quota], &[cost]) => {
            let args = one_request_args(now_us, quota, cost);
            Ok(cache.run_atomic(&ops::Single, keys, &args, timeout).await?)
        }
        ([quota], _) => single(cache, keys, quota, now_us, costs, timeout).await,
        _ => several(cache, keys, quotas, now_us, costs, timeout).await,
    }
}

/// `single.lua` on `keys` (one per request) and `costs`.
async fn single(
    cache: &Cache,
    keys: &[&str],
    quota: &Quota,
    now_us: Option<u64>,
    costs: &[u64],
    timeout: Duration,
) -> Result<Vec<i64>, CallError> {
    if let &[cost] = costs {
        let args = one_request_args(now_us, quota, cost);
        return Ok(cache.run_atomic(&ops::Single, keys, &args, timeout).await?);
    }
    let head = single_args(now_us, quota);
    let mut args = Vec::with_capacity(head.len() + costs.len());
    args.extend(head);
    args.extend(costs.iter().map(|&cost| int(cost)));
    Ok(cache.run_atomic(&ops::Single, keys, &args, timeout).await?)
}

/// One fixed-window policy on Redis' clock: `counter.lua`, the requests of
/// one client and one cost folded into one entry (one `INCRBY` of their
/// total); the keys it finds holding no count of their own go through
/// `single.lua`, which reads and replaces them.
async fn count_fixed(
    pipelined: &Pipelined<'_>,
    keys: &[&str],
    quota: &Quota,
    costs: &[u64],
) -> Result<Vec<i64>, CallError> {
    let (cache, timeout) = (pipelined.cache, pipelined.timeout);
    if quota.limit() < TAT_FLOOR && costs.iter().all(|&cost| cost == 1) {
        // `None`: a server before Redis 7.0, counted by the script below.
        if let Some(rows) = count_pipelined(pipelined, keys, quota).await? {
            return Ok(rows);
        }
    }
    if let (&[key], &[cost]) = (keys, costs) {
        let args = [
            int(quota.limit()),
            int(quota.window_ms()),
            int(cost),
            int(cost),
        ];
        let reply = cache
            .run_atomic(&ops::Counter, &[key], &args, timeout)
            .await?;
        if let Some(row) = counter_row(quota, cost, &reply, 0, 1) {
            return Ok(row.to_vec());
        }
        return single(cache, keys, quota, None, costs, timeout).await;
    }
    let entries = Entries::fold(keys, costs);
    let mut args = Vec::with_capacity(2 + 2 * entries.list.len());
    args.extend([int(quota.limit()), int(quota.window_ms())]);
    let mut entry_keys = Vec::with_capacity(entries.list.len());
    for entry in &entries.list {
        entry_keys.push(entry.key);
        args.extend([int(entry.cost * entry.n), int(entry.cost)]);
    }
    let reply = cache
        .run_atomic(&ops::Counter, &entry_keys, &args, timeout)
        .await?;
    if reply.len() != 3 * entries.list.len() {
        return Err(malformed(reply.len(), costs.len()));
    }
    let mut rows = vec![0; ROW * costs.len()];
    let mut unknown: Vec<usize> = Vec::new();
    for (r, &(e, j)) in entries.of_request.iter().enumerate() {
        let entry = &entries.list[e];
        match counter_row(quota, entry.cost, &reply[3 * e..3 * e + 3], j, entry.n) {
            Some(row) => rows[ROW * r..ROW * (r + 1)].copy_from_slice(&row),
            None => unknown.push(r),
        }
    }
    if !unknown.is_empty() {
        // Keys with no count of this policy: read and replaced by the
        // general script, their requests in the order they came.
        let keys: Vec<&str> = unknown.iter().map(|&r| keys[r]).collect();
        let costs: Vec<u64> = unknown.iter().map(|&r| costs[r]).collect();
        let answers = single(cache, &keys, quota, None, &costs, timeout).await?;
        for (i, &r) in unknown.iter().enumerate() {
            let answer = answers
                .get(ROW * i..ROW * (i + 1))
                .ok_or_else(|| malformed(answers.len(), unknown.len()))?;
            rows[ROW * r..ROW * (r + 1)].copy_from_slice(answer);
        }
    }
    Ok(rows)
}

/// One fixed-window policy on Redis' clock, every request of cost 1 (and a
/// limit below [`TAT_FLOOR`]): no script, per key `INCRBY` of its
/// requests, `PEXPIRE ... LT` and, for a key whose window's end the caller
/// knows nothing of, `PTTL`, pipelined in one write
/// ([`Cache::incr_windows_within`]); the count after them decides, each
/// request in order as if alone. `Ok(None)`: the server takes no `PEXPIRE`
/// options (before Redis 7.0), nothing sent.
///
/// **The window's end** (the reset of a request's row) comes from what
/// this instance knows ([`crate::ends`]), learned from the replies: a
/// `PEXPIRE` that answers 1 started the window (it ends a window after
/// the call was sent), a `PTTL` reads it. So a `PTTL` goes in the pipeline
/// only for a key with no known end at all, when the caller reads resets;
/// a key whose known end is ahead has it (the end less now), and one whose
/// known end has passed is most likely starting its next window (the
/// `PEXPIRE`'s 1 tells it). An end still missing after the reply (the
/// `PEXPIRE` found a window running that this instance knows no live end
/// of: started by another instance, or within a round trip of its known
/// end) is read by a `PTTL` of its own, a second round trip, when the row
/// needs it.
///
/// Without `resets` nothing is looked up before the call: a request the
/// window still admits needs no end, and only a key whose window is full
/// (a rejected request, or the one that fills it: `Retry-After` and the
/// deny cache's hold need the end) needs it, known or read by a `PTTL` of
/// its own. Those are few: the deny cache answers the rest of a full
/// window in process. An increment another client makes in between only
/// makes the end read the same or closer, as in the pipeline.
///
/// Exact as `counter.lua` is, because:
/// - a rejected request's increment is not taken back, and need not be: at
///   cost 1 a request is rejected only when the count is already at the
///   limit, where it stays for the rest of the window whatever is added, so
///   no later request is rejected that the limit would admit. (At a cost
///   above 1 it would be: 8 of 10 counted, a rejected request of cost 3
///   leaves 11, and one of cost 1 that fits would be rejected; those go
///   through `counter.lua`, which takes the rejected back.) Every script
///   reads a count above the limit as a full window, never as foreign
///   state to replace (that would restart the window: an over-admission);
///   `a_count_above_the_limit_is_a_full_window_on_every_path` in
///   tests/tests/rate_limit.rs holds them to it;
/// - no counter lives without a TTL: see `incr_windows_within`, every
///   increment is followed by the `PEXPIRE` that sets one when missing;
/// - a value that is no count of this policy (another type, not an
///   integer, negative, above 2^53: [`WindowIncr::NotACounter`]; or above
///   the limit and at or above [`TAT_FLOOR`], a GCRA TAT) is never taken
///   for a count: its requests go through `single.lua`, which reads it and
///   replaces it (the pipeline's increment added to an integer keeps it out
///   of range, so the script still replaces it).
///
/// The known ends decide no count: only the resets reported.
async fn count_pipelined(
    pipelined: &Pipelined<'_>,
    keys: &[&str],
    quota: &Quota,
) -> Result<Option<Vec<i64>>, CallError> {
    let limit = pipelined.limit;
    if let &[key] = keys {
        let (mut known, mut read_ttl) = ([Known::Unknown], [false]);
        let Some(found) = pipelined
            .count(&[key], &[1], &mut known, &mut read_ttl)
            .await?
        else {
            return Ok(None);
        };
        if let Some(row) = found
            .first()
            .and_then(|&found| pipelined_row(limit, found, 0, 1))
        {
            return Ok(Some(row.to_vec()));
        }
        let (cache, timeout) = (pipelined.cache, pipelined.timeout);
        return Ok(Some(single(cache, keys, quota, None, &[1], timeout).await?));
    }
    let costs = vec![1; keys.len()];
    let entries = Entries::fold(keys, &costs);
    let entry_keys: Vec<&str> = entries.list.iter().map(|entry| entry.key).collect();
    let by: Vec<u64> = entries.list.iter().map(|entry| entry.n).collect();
    let mut known = vec![Known::Unknown; entry_keys.len()];
    let mut read_ttl = vec![false; entry_keys.len()];
    let Some(found) = pipelined
        .count(&entry_keys, &by, &mut known, &mut read_ttl)
        .await?
    else {
        return Ok(None);
    };
    if found.len() != entries.list.len() {
        return Err(malformed(found.len(), keys.len()));
    }
    let mut rows = vec![0; ROW * keys.len()];
    let mut unknown: Vec<usize> = Vec::new();
    for (r, &(e, j)) in entries.of_request.iter().enumerate() {
        match pipelined_row(limit, found[e], j, entries.list[e].n) {
            Some(row) => rows[ROW * r..ROW * (r + 1)].copy_from_slice(&row),
            None => unknown.push(r),
        }
    }
    if !unknown.is_empty() {
        // Values that are no count: read and replaced by the general
        // script, their requests in the order they came.
        let keys: Vec<&str> = unknown.iter().map(|&r| keys[r]).collect();
        let costs = vec![1; unknown.len()];
        let (cache, timeout) = (pipelined.cache, pipelined.timeout);
        let answers = single(cache, &keys, quota, None, &costs, timeout).await?;
        for (i, &r) in unknown.iter().enumerate() {
            let answer = answers
                .get(ROW * i..ROW * (i + 1))
                .ok_or_else(|| malformed(answers.len(), unknown.len()))?;
            rows[ROW * r..ROW * (r + 1)].copy_from_slice(answer);
        }
    }
    Ok(Some(rows))
}

/// A pipelined fixed-window call: where it goes, the policy's limit and
/// window, and the ends it knows (see [`count_pipelined`]).
struct Pipelined<'a> {
    cache: &'a Cache,
    ends: Option<&'a WindowEnds>,
    limit: u64,
    window: Duration,
    resets: bool,
    timeout: Duration,
}

impl Pipelined<'_> {
    /// Counts `by` on `keys` in one pipeline and gives each count the end
    /// of its window where its row needs it (see [`count_pipelined`]);
    /// `known` and `read_ttl` (one per key) are room for what is known of
    /// each key before the call and whether it reads the TTL.
    async fn count(
        &self,
        keys: &[&str],
        by: &[u64],
        known: &mut [Known],
        read_ttl: &mut [bool],
    ) -> Result<Option<Vec<WindowIncr>>, CallError> {
        let sent = self.ends.map(WindowEnds::now);
        if let (true, Some(ends), Some(sent)) = (self.resets, self.ends, sent) {
            ends.lookup(keys, sent, known);
        }
        for (read_ttl, known) in read_ttl.iter_mut().zip(&*known) {
            *read_ttl = self.resets && *known == Known::Unknown;
        }
        let Some(mut found) = self
            .cache
            .incr_windows_within(keys, by, self.window, read_ttl, self.timeout)
            .await?
        else {
            return Ok(None);
        };
        let (Some(ends), Some(sent)) = (self.ends, sent) else {
            // No ends kept: a full window's end is read now.
            for (found, &key) in found.iter_mut().zip(keys) {
                self.read_missing_end(None, key, found).await?;
            }
            return Ok(Some(found));
        };
        let mut now = None;
        for (i, (found, &key)) in found.iter_mut().zip(keys).enumerate() {
            let WindowIncr::Counted { count, left_ms } = found else {
                continue;
            };
            match *left_ms {
                // Read by the `PTTL`, or the window started (`PEXPIRE`'s 1).
                Some(left) => {
                    let end = sent.saturating_add(left.saturating_mul(1000));
                    ends.insert(key, end, sent);
                }
                None if !self.resets && *count < self.limit => continue,
                None => {
                    if !self.resets {
                        ends.lookup(&[key], sent, &mut known[i..=i]);
                    }
                    if let Known::Ahead(end) = known[i] {
                        let now = *now.get_or_insert_with(|| ends.now());
                        let left = end.saturating_sub(now) / 1000;
                        if left > 0 {
                            *left_ms = Some(left);
                        }
                    }
                }
            }
            self.read_missing_end(Some(ends), key, found).await?;
        }
        Ok(Some(found))
    }

    /// Reads the end of `key`'s window into `found` when it is missing and
    /// its row needs it (the caller reads resets, or the window is full:
    /// its count at or past the limit): a `PTTL` of its own, read as the
    /// pipeline reads it (gone: ended meanwhile; no expiry: a window from
    /// now, the next increment gives it one), learned into `ends`.
    async fn read_missing_end(
        &self,
        ends: Option<&WindowEnds>,
        key: &str,
        found: &mut WindowIncr,
    ) -> Result<(), CallError> {
        let WindowIncr::Counted {
            count,
            left_ms: left_ms @ None,
        } = found
        else {
            return Ok(());
        };
        if !self.resets && *count < self.limit {
            return Ok(());
        }
        let sent = ends.map(WindowEnds::now);
        let left = match self.cache.ttl_within(key, self.timeout).await? {
            KeyTtl::Missing => Duration::ZERO,
            KeyTtl::Persistent => self.window,
            KeyTtl::Expires(left) => left,
        };
        let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        *left_ms = Some(left);
        if let (Some(ends), Some(sent)) = (ends, sent) {
            ends.insert(key, sent.saturating_add(left.saturating_mul(1000)), sent);
        }
        Ok(())
    }
}

/// The row (see `counter_row`) of request number `j` of `n` requests of
/// cost 1 counted together on one key that `found` answers; `None` when it
/// holds no count of this policy. A window end not read (the caller needs
/// none below a full window) is 0 in the row.
fn pipelined_row(limit: u64, found: WindowIncr, j: u64, n: u64) -> Option<[i64; ROW]> {
    let WindowIncr::Counted { count, left_ms } = found else {
        return None;
    };
    // At least `n`, at most 2^53 (the store's promise).
    let before = count.checked_sub(n)?;
    if count > limit && before >= TAT_FLOOR {
        return None;
    }
    // In order, each as if alone: request j saw the count before it plus
    // its own unit; past the limit it is rejected, and sees a full window.
    let admitted = before + j < limit;
    let seen = if admitted { before + j + 1 } else { limit };
    let left = int(left_ms.unwrap_or(0));
    let blocked = if seen >= limit { left } else { 0 };
    Some([
        i64::from(admitted),
        int(limit - seen),
        left,
        if admitted { 0 } else { left },
        blocked,
    ])
}

/// Releases a lease: removes it from its concurrency limit's sorted set.
/// Its reply: 1, or 0 if the lease was no longer there (it expired and an
/// acquire trimmed it, or the key expired).
const RELEASE_LUA: &str = "return {redis.call('ZREM', KEYS[1], ARGV[1])}";

pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Renews a lease still held: its expiry (and its key's) set a lease TTL
/// from now. ARGV: now ms (-1: Redis' `TIME`), the TTL ms, the lease id.
/// Its reply: 1, or 0 if the lease had expired (or was gone).
const RENEW_LUA: &str = r"
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not score or tonumber(score) <= now then
  return {0}
end
local exp = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%d', exp), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', math.max(tonumber(last[2]), exp)))
return {1}
";

pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));

/// Renews lease `lease` in each of `keys` (with the TTL beside it), at
/// `now_us` (`None`: Redis' clock): `true` if each still held it.
pub(crate) async fn renew(
    cache: &Cache,
    keys: &[(String, u64)],
    lease: i64,
    now_us: Option<u64>,
    timeout: Duration,
) -> Result<bool, CallError> {
    let now_ms = now_us.map_or(-1, |now| int(now / 1000));
    let mut held = true;
    for (key, ttl_ms) in keys {
        let renewed = cache
            .run_atomic(
                &ops::Renew,
                &[key.as_str()],
                &[now_ms, int(*ttl_ms), lease],
                timeout,
            )
            .await?;
        held &= renewed.first() == Some(&1);
    }
    Ok(held)
}

/// One request of `cost` on `keys` (one per quota, one hash tag), some of
/// the quotas concurrency limits: `limits.lua` checks every policy and, if
/// all admit, charges the rate policies and adds lease `lease` to each
/// concurrency limit's set, in one atomic step. Its row (`window::row_len`).
pub(crate) async fn acquire(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: Option<u64>,
    cost: u64,
    lease: i64,
    timeout: Duration,
) -> Result<Vec<i64>, CallError> {
    let mut args = args(now_us, quotas);
    // One client, one request: its cost and its lease id.
    args.extend([1, int(cost), lease]);
    let reply = cache.run_atomic(&ops::Limits, keys, &args, timeout).await?;
    if reply.len() != crate::window::row_len(quotas.len()) {
        return Err(malformed(reply.len(), 1));
    }
    Ok(reply)
}

/// Releases lease `lease` of every key in `keys` (the concurrency limits'
/// sets of one client): `true` if each still held it.
pub(crate) async fn release(
    cache: &Cache,
    keys: &[String],
    lease: i64,
    timeout: Duration,
) -> Result<bool, CallError> {
    let mut held = true;
    for key in keys {
        let removed = cache
            .run_atomic(&ops::Release, &[key.as_str()], &[lease], timeout)
            .await?;
        held &= removed.first() == Some(&1);
    }
    Ok(held)
}

/// A row of one policy: admitted, remaining, reset, retry, blocked.
const ROW: usize = 5;

/// Why a call of the limiter gave no rows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The store failed, or timed out.
    #[error(transparent)]
    Store(#[from] cache_core::Error),
    /// The reply does not fit the requests sent.
    #[error("the store's answer is malformed: {numbers} numbers for {requests} requests")]
    Malformed { numbers: usize, requests: usize },
}

fn malformed(numbers: usize, requests: usize) -> CallError {
    CallError::Malformed { numbers, requests }
}

/// The requests of one fixed-window call, folded: those of one key and one
/// cost are one entry, one `INCRBY` of their total.
struct Entries<'a> {
    list: Vec<Entry<'a>>,
    /// Per request: its entry, and its place among the entry's requests.
    of_request: Vec<(usize, u64)>,
}

struct Entry<'a> {
    key: &'a str,
    cost: u64,
    /// Its requests.
    n: u64,
}

impl<'a> Entries<'a> {
    fn fold(keys: &[&'a str], costs: &[u64]) -> Self {
        let mut list: Vec<Entry<'a>> = Vec::with_capacity(keys.len());
        let mut of_request = Vec::with_capacity(keys.len());
        for (&key, &cost) in keys.iter().zip(costs) {
            // Totals stay within what Lua and INCRBY count exactly.
            let found = list.iter().rposition(|entry| {
                entry.cost == cost && entry.key == key && (entry.n + 1) * cost <= MAX_TOTAL
            });
            let e = match found {
                Some(e) => e,
                None => {
                    list.push(Entry { key, cost, n: 0 });
                    list.len() - 1
                }
            };
            of_request.push((e, list[e].n));
            list[e].n += 1;
        }
        Entries { list, of_request }
    }
}

/// The largest total one entry counts at once: 2^52, so that the count
/// after it stays under 2^53 (limits are at most 2^52).
const MAX_TOTAL: u64 = 1 << 52;

/// `counter.lua`'s answer for an entry of `n` requests of `cost` (admitted
/// m of them, count after, ms left) as the row of its request number `j`
/// (the general scripts' row: `window.rs`'s fixed window on that count and
/// window end); `None` for its "no count of mine" (or anything malformed).
fn counter_row(quota: &Quota, cost: u64, reply: &[i64], j: u64, n: u64) -> Option<[i64; 5]> {
    let &[m, count, left] = reply else {
        return None;
    };
    let (limit, left, j, cost) = (int(quota.limit()), left.max(0), int(j), int(cost));
    if !(0..=int(n)).contains(&m) || !(0..=limit).contains(&count) {
        return None;
    }
    let admitted = j < m;
    // An admitted request saw the count its own increment made; a rejected
    // one, the count the admitted ones left.
    let seen = if admitted {
        count - (m - j - 1) * cost
    } else {
        count
    };
    if !(0..=limit).contains(&seen) {
        return None;
    }
    let retry = match admitted {
        true => 0,
        _ if cost > limit => -1,
        _ => left,
    };
    let blocked = if seen >= limit { left } else { 0 };
    Some([i64::from(admitted), limit - seen, left, retry, blocked])
}

/// Several policies: `limits.lua`, the requests of one client (the same
/// keys) evaluated together, in order, on one read of its keys.
async fn several(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    now_us: Option<u64>,
    costs: &[u64],
    timeout: Duration,
) -> Result<Vec<i64>, CallError> {
    let p = quotas.len();
    let row = 1 + 4 * p;
    // The clients, in the order they first came: their first request, and
    // their requests in order.
    let mut clients: Vec<(usize, Vec<usize>)> = Vec::new();
    for r in 0..costs.len() {
        let own = &keys[p * r..p * (r + 1)];
        match clients
            .iter_mut()
            .find(|(first, _)| keys[p * first..p * (first + 1)] == *own)
        {
            Some((_, requests)) => requests.push(r),
            None => clients.push((r, vec![r])),
        }
    }
    let mut args = args(now_us, quotas);
    let mut client_keys = Vec::with_capacity(p * clients.len());
    for (first, requests) in &clients {
        client_keys.extend_from_slice(&keys[p * first..p * (first + 1)]);
        args.push(int(requests.len() as u64));
        args.extend(requests.iter().map(|&r| int(costs[r])));
    }
    let reply = cache
        .run_atomic(&ops::Limits, &client_keys, &args, timeout)
        .await?;
    if reply.len() != row * costs.len() {
        return Err(malformed(reply.len(), costs.len()));
    }
    if let [(_, requests)] = clients.as_slice()
        && requests.iter().enumerate().all(|(i, &r)| i == r)
    {
        return Ok(reply);
    }
    let mut rows = vec![0; reply.len()];
    let order = clients.iter().flat_map(|(_, requests)| requests);
    for (at, &r) in order.enumerate() {
        rows[row * r..row * (r + 1)].copy_from_slice(&reply[row * at..row * (at + 1)]);
    }
    Ok(rows)
}

/// Gives back a charge (see `window::refunded`): what [`refund`] sends.
pub(crate) const REFUND_LUA: &str = include_str!("refund.lua");

pub(super) static REFUND: LazyLock<Script> = LazyLock::new(|| Script::new(REFUND_LUA));

/// When a refunded request was charged: at a time sent with it (an
/// authoritative clock), or `elapsed_us` before now on Redis' clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChargedAt {
    pub(crate) now_us: Option<u64>,
    pub(crate) at_us: Option<u64>,
    pub(crate) elapsed_us: u64,
}

/// `refund.lua`: gives back `cost` units on `keys` (one per quota, one
/// client) of a request charged at `at` whose row said `resets`; per policy
/// 1 if it gave back.
pub(crate) async fn refund(
    cache: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    at: ChargedAt,
    resets: &[u64],
    cost: u64,
    timeout: Duration,
) -> Result<Vec<i64>, CallError> {
    let mut args = Vec::with_capacity(4 + 4 * quotas.len());
    args.extend([
        at.now_us.map_or(-1, int),
        at.at_us.map_or(-1, int),
        int(at.elapsed_us),
        int(cost),
    ]);
    for (quota, &reset) in quotas.iter().zip(resets) {
        args.extend([
            code(quota.enforced_by()),
            int(quota.limit()),
            int(quota.window_ms()),
            int(reset),
        ]);
    }
    let reply = cache.run_atomic(&ops::Refund, keys, &args, timeout).await?;
    if reply.len() != keys.len() {
        return Err(malformed(reply.len(), 1));
    }
    Ok(reply)
}
