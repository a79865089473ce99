//! The scripts' in-memory forms: each of the limiter's atomic steps
//! ([`super::ops`]) as a Rust twin that the in-memory store runs under the
//! lock of the keys' shard, on its one bounded map ([`Entries`]): the
//! arithmetic of [`window`] on the values the scripts write, read and written
//! by the same rules (a value that is not the policy's is deleted or
//! replaced, one out of range brought in range).
//!
//! Values, as the scripts write them: the sliding window
//! `index:current:previous`, GCRA the TAT in µs, a fixed window
//! `count:end` (end in ms since the epoch). One difference: in memory the
//! fixed window is `count:end` for a one-policy layer too, where
//! `single.lua` keeps a bare count whose window ends with the key's
//! expiry. The store's expiries run on the process' monotonic clock, the
//! limiter's windows on its [`Clock`](crate::Clock) (a
//! [`ManualClock`](crate::ManualClock) moved by a test ends a window at
//! once), so the window's end goes in the value; a bare count found (written
//! by `INCR` + `PEXPIRE`, `Cache::incr_window`, [`counter`]) is read with
//! its TTL as its end, as the scripts read `PEXPIRETIME`, and rewritten.
//! A concurrency limit's lease set (a sorted set on Redis) is the byte `z`,
//! then per lease its id and its expiry (ms since the epoch), 8 bytes each,
//! big-endian.
//!
//! Each key's TTL in the store is how long its state counts from the
//! operation's "now", or until its end on the system clock when that is
//! later (what the store's sweeps and bound go by); the verdicts go by the
//! value alone. The keys are bounded by the store
//! (`CacheBuilder::max_entries`): when it is full the oldest keys go first,
//! and a client whose key went starts afresh.

use std::time::Duration;

use cache_core::{Entries, Error, Result};

use crate::clock::{SystemClock, now_micros};
use crate::quota::{Algorithm, MAX_CONCURRENT, MAX_LIMIT, MAX_WINDOW, Quota};
use crate::window::{self, State};

/// The largest integer the scripts count exactly (Lua numbers): 2^53.
const MAX: u64 = 1 << 53;

/// The first byte of a lease set's value.
const LEASES: u8 = b'z';

/// A concurrency limit's leases under one key: (lease id, expiry in ms
/// since the epoch), a Redis sorted set's members and scores.
type LeaseSet = Vec<(i64, u64)>;

fn invalid(reason: &str) -> Error {
    Error::InvalidArgument {
        argument: "rate-limit operation",
        reason: reason.to_string(),
    }
}

/// "now" as the scripts take it: the time sent, or (negative) the store's
/// own clock, which in memory is the system clock.
fn now_us(arg: i64) -> u64 {
    u64::try_from(arg).unwrap_or_else(|_| now_micros(&SystemClock))
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn arg(args: &[i64], at: usize) -> Result<i64> {
    args.get(at)
        .copied()
        .ok_or_else(|| invalid("too few arguments"))
}

fn count_arg(args: &[i64], at: usize) -> Result<u64> {
    u64::try_from(arg(args, at)?).map_err(|_| invalid("a negative count"))
}

/// A policy as the scripts get it: algorithm code, limit, window ms.
fn quota(code: i64, limit: i64, window_ms: i64) -> Result<Quota> {
    let algorithm = match code {
        0 => Algorithm::FixedWindow,
        1 => Algorithm::SlidingWindow,
        2 => Algorithm::Gcra,
        3 => Algorithm::Concurrent,
        _ => return Err(invalid("an unknown algorithm")),
    };
    let largest = if algorithm == Algorithm::Concurrent {
        MAX_CONCURRENT
    } else {
        MAX_LIMIT
    };
    let limit = u64::try_from(limit)
        .ok()
        .filter(|limit| (1..=largest).contains(limit))
        .ok_or_else(|| invalid("a limit out of range"))?;
    let window_ms = u64::try_from(window_ms)
        .ok()
        .filter(|ms| *ms >= 1 && u128::from(*ms) <= MAX_WINDOW.as_millis())
        .ok_or_else(|| invalid("a window out of range"))?;
    Ok(Quota::new(limit, Duration::from_millis(window_ms)).algorithm(algorithm))
}

/// Digits only (Lua's `%d+`), below [`MAX`].
fn digits(text: &[u8]) -> Option<u64> {
    parts::<1>(text).map(|[n]| n)
}

/// `a:b` and `a:b:c` of digits (each below [`MAX`]), read in one pass.
fn parts<const N: usize>(value: &[u8]) -> Option<[u64; N]> {
    let mut out = [0; N];
    let mut rest = value;
    for (i, slot) in out.iter_mut().enumerate() {
        let mut len = 0;
        while let [digit @ b'0'..=b'9', tail @ ..] = rest {
            len += 1;
            if len > 16 {
                return None;
            }
            *slot = *slot * 10 + u64::from(digit - b'0');
            rest = tail;
        }
        if len == 0 || *slot >= MAX {
            return None;
        }
        rest = match rest {
            [] if i + 1 == N => rest,
            [b':', tail @ ..] if i + 1 < N => tail,
            _ => return None,
        };
    }
    Some(out)
}

/// What a read leaves to write back (the scripts' `act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Nothing (the value holds its own end).
    Keep,
    /// The state, rewritten.
    Set,
    /// The key: its value is not this policy's.
    Delete,
}

/// A rate policy's state under `key` at `now_us`, as `limits.lua`'s
/// `read` finds it, brought in range ([`window::repaired`]), and what to
/// write back.
fn read_rate(entries: &mut Entries<'_>, key: &str, quota: &Quota, now_us: u64) -> (State, Act) {
    match entries.get_mut(key) {
        Some(entry) => decode_rate(entry.value(), || entry.ttl(), quota, now_us),
        None => (State::Empty, Act::Keep),
    }
}

/// [`read_rate`] of `value`, whose key expires after `ttl()`.
fn decode_rate(
    value: &[u8],
    ttl: impl FnOnce() -> Option<Duration>,
    quota: &Quota,
    now_us: u64,
) -> (State, Act) {
    let now = now_us / 1000;
    let (limit, window) = (quota.limit(), quota.window_ms());
    let (state, act) = match quota.enforced_by() {
        Algorithm::FixedWindow => match parts::<2>(value) {
            Some([count, expires_ms]) => (State::Fixed { count, expires_ms }, Act::Keep),
            None => match digits(value) {
                // A bare count: the window's end in the key's expiry. Above
                // the limit, a full window (below `TAT_FLOOR`, see `window`).
                Some(count) if count <= limit || count < window::TAT_FLOOR => {
                    let expires_ms = ttl().map_or(now + window, |left| now + millis(left));
                    (State::Fixed { count, expires_ms }, Act::Set)
                }
                _ => (State::Empty, Act::Delete),
            },
        },
        Algorithm::SlidingWindow => match parts::<3>(value) {
            Some([index, current, previous]) => (
                State::Sliding {
                    index,
                    current,
                    previous,
                },
                Act::Keep,
            ),
            None => (State::Empty, Act::Delete),
        },
        Algorithm::Gcra | Algorithm::Concurrent => match digits(value) {
            Some(tat_us) => (State::Gcra { tat_us }, Act::Keep),
            None => (State::Empty, Act::Delete),
        },
    };
    // Above the limit and at or above `TAT_FLOOR`: not this policy's count
    // but another algorithm's state (a count above the limit below it is a
    // full window, which the arithmetic reads as such).
    if let State::Fixed { count, .. } = state
        && count > limit
        && count >= window::TAT_FLOOR
    {
        return (State::Empty, Act::Delete);
    }
    let repaired = window::repaired(quota, state, now_us);
    if repaired != state {
        return (repaired, Act::Set);
    }
    (state, act)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Writes the value of a rate policy's state to `value` (replacing what
/// it held); `false` for a state that has none.
fn encode(state: State, value: &mut Vec<u8>) -> bool {
    value.clear();
    let mut digits = itoa::Buffer::new();
    let mut parts = |numbers: &[u64]| {
        for (i, &n) in numbers.iter().enumerate() {
            if i > 0 {
                value.push(b':');
            }
            value.extend_from_slice(digits.format(n).as_bytes());
        }
    };
    match state {
        State::Fixed { count, expires_ms } => parts(&[count, expires_ms]),
        State::Sliding {
            index,
            current,
            previous,
        } => parts(&[index, current, previous]),
        State::Gcra { tat_us } => parts(&[tat_us]),
        State::Empty | State::Leases { .. } => return false,
    }
    true
}

/// How long the store keeps a state that stops counting at `end_ms`;
/// `None` when it is over (deleted, as Redis deletes a key set to expire
/// in the past). Until `end_ms` on the operation's clock or on the system
/// clock, whichever comes later: a clock ahead of the system's (a test's)
/// keeps keys as Redis would, at their `PXAT` on its own clock, and one
/// behind it keeps them their whole life.
fn ttl_until(end_ms: u64, now_ms: u64) -> Option<Duration> {
    if end_ms <= now_ms {
        return None;
    }
    let system_ms = now_micros(&SystemClock) / 1000;
    let left = (end_ms - now_ms).max(end_ms.saturating_sub(system_ms));
    Some(Duration::from_millis(left))
}

/// Sets `key` to `value` until `end_ms` ([`ttl_until`]).
fn set_until(entries: &mut Entries<'_>, key: &str, value: &[u8], end_ms: u64, now_ms: u64) {
    match ttl_until(end_ms, now_ms) {
        Some(ttl) => entries.set(key, value, Some(ttl)),
        None => {
            entries.delete(key);
        }
    }
}

/// Writes a rate policy's state back as `act` says (`limits.lua`'s
/// `write`): set until it stops counting, or the key deleted.
fn write_rate(
    entries: &mut Entries<'_>,
    key: &str,
    quota: &Quota,
    state: State,
    act: Act,
    now_ms: u64,
) {
    match (state, act) {
        (State::Empty, Act::Delete) => {
            entries.delete(key);
        }
        (_, Act::Set) => {
            let mut value = Vec::new();
            if encode(state, &mut value) {
                let end = window::expires_ms(quota, state).max(1);
                set_until(entries, key, &value, end, now_ms);
            }
        }
        _ => {}
    }
}

fn decode_leases(value: &[u8]) -> Option<LeaseSet> {
    let (&first, rest) = value.split_first()?;
    if first != LEASES || rest.len() % 16 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(16)
            .map(|lease| {
                let (id, expiry) = lease.split_at(8);
                (
                    i64::from_be_bytes(id.try_into().unwrap_or_default()),
                    u64::from_be_bytes(expiry.try_into().unwrap_or_default()),
                )
            })
            .collect(),
    )
}

fn encode_leases(set: &LeaseSet) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + 16 * set.len());
    value.push(LEASES);
    for (id, expiry) in set {
        value.extend_from_slice(&id.to_be_bytes());
        value.extend_from_slice(&expiry.to_be_bytes());
    }
    value
}

/// Writes a lease set back, the key living as long as its last lease
/// (and at least until `at_least_ms`); an empty one is deleted.
fn write_leases(
    entries: &mut Entries<'_>,
    key: &str,
    set: &LeaseSet,
    at_least_ms: u64,
    now_ms: u64,
) {
    let Some(last) = set.iter().map(|(_, expiry)| *expiry).max() else {
        entries.delete(key);
        return;
    };
    set_until(
        entries,
        key,
        &encode_leases(set),
        last.max(at_least_ms),
        now_ms,
    );
}

/// A concurrency limit's lease set under `key`, its expired leases
/// trimmed (written back when that changed it), as a state.
fn read_leases(entries: &mut Entries<'_>, key: &str, now_ms: u64) -> (LeaseSet, State) {
    let Some(value) = entries.get(key) else {
        return (Vec::new(), State::Empty);
    };
    let Some(mut set) = decode_leases(value) else {
        // Not a lease set: not this policy's, replaced.
        entries.delete(key);
        return (Vec::new(), State::Empty);
    };
    let held = set.len();
    set.retain(|(_, expiry)| *expiry > now_ms);
    if set.len() != held {
        write_leases(entries, key, &set, 0, now_ms);
    }
    match set.iter().map(|(_, expiry)| *expiry).min() {
        Some(first_expiry_ms) => {
            let held = set.len() as u64;
            (
                set,
                State::Leases {
                    held,
                    first_expiry_ms,
                },
            )
        }
        None => (set, State::Empty),
    }
}

/// `limits.lua`: ARGV now µs, the number of policies P, per policy
/// algorithm, limit and window ms, then per client (P keys each) its
/// number of requests and their costs (each followed by its lease id when
/// a concurrency limit is among the policies). A row per request.
pub(crate) fn limits(entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
    let now_us = now_us(arg(args, 0)?);
    let p = usize::try_from(arg(args, 1)?)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| invalid("no policies"))?;
    let quotas = (0..p)
        .map(|i| {
            quota(
                arg(args, 2 + 3 * i)?,
                arg(args, 3 + 3 * i)?,
                arg(args, 4 + 3 * i)?,
            )
        })
        .collect::<Result<Vec<Quota>>>()?;
    let step = if quotas.iter().any(Quota::is_concurrent) {
        2
    } else {
        1
    };
    let mut out = Vec::new();
    let (mut at, mut base) = (2 + 3 * p, 0);
    while at < args.len() {
        let n = usize::try_from(count_arg(args, at)?).map_err(|_| invalid("too many requests"))?;
        let end = n
            .checked_mul(step)
            .and_then(|len| (at + 1).checked_add(len))
            .ok_or_else(|| invalid("too many requests"))?;
        let requests = args
            .get(at + 1..end)
            .ok_or_else(|| invalid("too few arguments"))?;
        let own = keys
            .get(base..base + p)
            .ok_or_else(|| invalid("too few keys"))?;
        client(entries, own, &quotas, now_us, requests, step, &mut out)?;
        at = end;
        base += p;
    }
    Ok(out)
}

/// One client's requests under every policy, in order, on one read of its
/// keys and one write (`limits.lua`'s `client`).
fn client(
    entries: &mut Entries<'_>,
    keys: &[&str],
    quotas: &[Quota],
    now_us: u64,
    requests: &[i64],
    step: usize,
    out: &mut Vec<i64>,
) -> Result<()> {
    let now_ms = now_us / 1000;
    let mut states = Vec::with_capacity(quotas.len());
    let mut acts = Vec::with_capacity(quotas.len());
    let mut sets: Vec<Option<LeaseSet>> = Vec::with_capacity(quotas.len());
    for (key, quota) in keys.iter().zip(quotas) {
        if quota.is_concurrent() {
            let (set, state) = read_leases(entries, key, now_ms);
            states.push(state);
            acts.push(Act::Keep);
            sets.push(Some(set));
        } else {
            let (state, act) = read_rate(entries, key, quota, now_us);
            states.push(state);
            acts.push(act);
            sets.push(None);
        }
    }
    let mut granted = vec![false; quotas.len()];
    for request in requests.chunks(step) {
        let cost = u64::try_from(request[0]).map_err(|_| invalid("a negative cost"))?;
        let at = out.len();
        window::evaluate_into(quotas, &mut states, now_us, &[cost], out);
        if out.get(at) == Some(&1) {
            for (i, quota) in quotas.iter().enumerate() {
                acts[i] = Act::Set;
                if let (Some(set), Some(&id), true) = (&mut sets[i], request.get(1), cost > 0) {
                    // ZADD: a lease id given again is renewed.
                    let expiry = now_ms.saturating_add(quota.window_ms());
                    match set.iter_mut().find(|(held, _)| *held == id) {
                        Some(lease) => lease.1 = expiry,
                        None => set.push((id, expiry)),
                    }
                    granted[i] = true;
                }
            }
        }
    }
    for (i, (key, quota)) in keys.iter().zip(quotas).enumerate() {
        match &sets[i] {
            Some(set) if granted[i] => {
                let expiry = now_ms.saturating_add(quota.window_ms());
                write_leases(entries, key, set, expiry, now_ms);
            }
            Some(_) => {}
            None => write_rate(entries, key, quota, states[i], acts[i], now_ms),
        }
    }
    Ok(())
}

/// `single.lua`: ARGV now µs, algorithm, limit, window ms, then each
/// request's cost; a key per request (one may come again: its requests in
/// order, each as if alone). A row per request.
pub(crate) fn single(entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
    let now_us = now_us(arg(args, 0)?);
    let quota = quota(arg(args, 1)?, arg(args, 2)?, arg(args, 3)?)?;
    if quota.is_concurrent() {
        return Err(invalid("a concurrency limit goes through limits"));
    }
    let costs = &args[4.min(args.len())..];
    if costs.len() != keys.len() {
        return Err(invalid("one cost per key"));
    }
    let quotas = [quota];
    let mut out = Vec::with_capacity(window::row_len(1) * keys.len());
    let now_ms = now_us / 1000;
    for (key, &cost) in keys.iter().zip(costs) {
        let cost = u64::try_from(cost).map_err(|_| invalid("a negative cost"))?;
        let at = out.len();
        let Some(mut entry) = entries.get_mut(key) else {
            // A new key: written if the request is admitted.
            let mut states = [State::Empty];
            window::evaluate_into(&quotas, &mut states, now_us, &[cost], &mut out);
            if out[at] == 1 {
                write_rate(entries, key, &quota, states[0], Act::Set, now_ms);
            }
            continue;
        };
        // A key found: read and rewritten in place, one lookup.
        let (read, act) = decode_rate(entry.value(), || entry.ttl(), &quota, now_us);
        let mut states = [read];
        window::evaluate_into(&quotas, &mut states, now_us, &[cost], &mut out);
        let act = if out[at] == 1 { Act::Set } else { act };
        let (state, end) = (states[0], window::expires_ms(&quota, states[0]).max(1));
        match act {
            Act::Keep => {}
            Act::Set if end > now_ms && encode(state, entry.value_mut()) => {
                // A state ending when the one read did (a fixed window's
                // count) keeps the key's expiry.
                if end != window::expires_ms(&quota, read) || !entry.expires() {
                    entry.set_ttl(ttl_until(end, now_ms));
                }
            }
            Act::Set | Act::Delete => {
                entries.delete(key);
            }
        }
    }
    Ok(out)
}

/// `counter.lua`: ARGV the limit, the window ms, then per entry (a key
/// each) the total of its requests and the cost of each. Per entry the
/// requests admitted, the count after them and the ms left; `-1, 0, 0`
/// when the key holds no bare count of this policy (then [`single`] reads
/// it). On the store's own clock: the window's end is the key's expiry.
pub(crate) fn counter(entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
    let (limit, window) = (arg(args, 0)?, arg(args, 1)?);
    if args.len() != 2 + 2 * keys.len() {
        return Err(invalid("two arguments per key"));
    }
    let mut out = Vec::with_capacity(3 * keys.len());
    for (i, key) in keys.iter().enumerate() {
        let (total, cost) = (args[2 + 2 * i], args[3 + 2 * i]);
        if cost <= 0 || total < 0 {
            return Err(invalid("a cost out of range"));
        }
        // INCRBY: a missing key counts from 0; a value that is not an
        // integer (or would overflow) is an error, which changes nothing.
        let current = match entries.get(key) {
            None => Some(0),
            Some(value) => std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse::<i64>().ok()),
        };
        let Some(count) = current.and_then(|current| current.checked_add(total)) else {
            out.extend([-1, 0, 0]);
            continue;
        };
        let ttl = entries.ttl(key);
        entries.set(key, count.to_string().as_bytes(), ttl);
        let before = count - total;
        if before < 0 || (before > limit && before >= window::TAT_FLOOR as i64) {
            out.extend([-1, 0, 0]);
            continue;
        }
        let fresh = ttl.is_none();
        let mut left = ttl.map_or(-1, |left| int(millis(left)));
        if fresh || left > window {
            left = window;
        }
        let window_ttl = Some(Duration::from_millis(u64::try_from(window).unwrap_or(0)));
        let n = total / cost;
        let (mut m, mut count) = (n, count);
        if count > limit {
            // In order, each as if alone: the first m fit.
            // Already full (a count above the limit): none fits.
            m = ((limit - before) / cost).max(0);
            count = before + m * cost;
            if count == 0 && fresh {
                entries.delete(key);
            } else {
                let ttl = if left == window { window_ttl } else { ttl };
                entries.set(key, count.to_string().as_bytes(), ttl);
            }
        } else if left == window {
            entries.set(key, count.to_string().as_bytes(), window_ttl);
        }
        out.extend([m, count.min(limit), left]);
    }
    Ok(out)
}

/// `refund.lua`: ARGV now µs, when the request was charged µs (negative:
/// now less the elapsed time), the elapsed µs, the units to give back, then
/// per key algorithm, limit, window ms and the reset ms of the admission's
/// row. Per key 1 if it gave back. Values are written back in the form
/// they were found, until when their state stops counting.
pub(crate) fn refund(entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
    let now_us = now_us(arg(args, 0)?);
    let at_us = u64::try_from(arg(args, 1)?)
        .unwrap_or_else(|_| now_us.saturating_sub(u64::try_from(args[2]).unwrap_or(0)));
    let cost = count_arg(args, 3)?;
    if args.len() != 4 + 4 * keys.len() {
        return Err(invalid("four arguments per key"));
    }
    let now_ms = now_us / 1000;
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let at = 4 + 4 * i;
        let quota = quota(args[at], args[at + 1], args[at + 2])?;
        let reset = u64::try_from(args[at + 3]).unwrap_or(0);
        let Some(value) = entries.get(key) else {
            out.push(0);
            continue;
        };
        let found = match quota.enforced_by() {
            Algorithm::FixedWindow => match parts::<2>(value) {
                Some([count, expires_ms]) => Some((State::Fixed { count, expires_ms }, false)),
                None => digits(value).and_then(|count| {
                    // A bare count: its window ends with the key's expiry.
                    let expires_ms = now_ms + millis(entries.ttl(key)?);
                    Some((State::Fixed { count, expires_ms }, true))
                }),
            },
            Algorithm::SlidingWindow => parts::<3>(value).map(|[index, current, previous]| {
                let state = State::Sliding {
                    index,
                    current,
                    previous,
                };
                (state, false)
            }),
            Algorithm::Gcra | Algorithm::Concurrent => {
                digits(value).map(|tat_us| (State::Gcra { tat_us }, false))
            }
        };
        let given = found.and_then(|(state, bare)| {
            Some((
                window::refunded(&quota, state, now_us, at_us, reset, cost)?,
                bare,
            ))
        });
        match given {
            Some((State::Gcra { tat_us }, _)) if tat_us <= now_us => {
                entries.delete(key);
            }
            Some((State::Fixed { count, expires_ms }, true)) => {
                set_until(
                    entries,
                    key,
                    count.to_string().as_bytes(),
                    expires_ms,
                    now_ms,
                );
            }
            Some((state, _)) => {
                let mut value = Vec::new();
                if encode(state, &mut value) {
                    let end = window::expires_ms(&quota, state).max(1);
                    set_until(entries, key, &value, end, now_ms);
                }
            }
            None => {
                out.push(0);
                continue;
            }
        }
        out.push(1);
    }
    Ok(out)
}

/// The release script (`ZREM`): ARGV the lease id; 1 if the set held it.
pub(crate) fn release(entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
    let (&[key], &[id]) = (keys, args) else {
        return Err(invalid("one key and a lease id"));
    };
    let Some(mut set) = entries.get(key).and_then(decode_leases) else {
        return Ok(vec![0]);
    };
    let Some(at) = set.iter().position(|(held, _)| *held == id) else {
        return Ok(vec![0]);
    };
    set.swap_remove(at);
    if set.is_empty() {
        entries.delete(key);
    } else {
        // The key keeps its expiry.
        let ttl = entries.ttl(key);
        entries.set(key, &encode_leases(&set), ttl);
    }
    Ok(vec![1])
}

/// The renewal script: ARGV now ms (negative: the store's clock), the
/// lease TTL ms, the lease id; 1 if the lease was still held, now
/// expiring a TTL from now.
pub(crate) fn renew(entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
    let (&[key], &[now, ttl_ms, id]) = (keys, args) else {
        return Err(invalid("one key and three arguments"));
    };
    let now_ms = u64::try_from(now).unwrap_or_else(|_| now_micros(&SystemClock) / 1000);
    let ttl_ms = u64::try_from(ttl_ms).map_err(|_| invalid("a negative TTL"))?;
    let Some(mut set) = entries.get(key).and_then(decode_leases) else {
        return Ok(vec![0]);
    };
    let Some(lease) = set
        .iter_mut()
        .find(|(held, expiry)| *held == id && *expiry > now_ms)
    else {
        return Ok(vec![0]);
    };
    let expiry = now_ms.saturating_add(ttl_ms);
    lease.1 = expiry;
    write_leases(entries, key, &set, expiry, now_ms);
    Ok(vec![1])
}

/// For tests: a value the in-memory store holds for the limiter, as Redis
/// stores it: a fixed window's bare count under a key of one policy
/// (without a hash tag), `count:end` under a key of several; a lease set
/// as the number of leases; any other as it is.
pub(crate) fn rendered(key: &str, value: &[u8]) -> String {
    if let Some(set) = decode_leases(value) {
        return set.len().to_string();
    }
    match parts::<2>(value) {
        Some([count, _]) if !key.contains('{') => count.to_string(),
        _ => String::from_utf8_lossy(value).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{acquire_raw, evaluate_raw, release_raw};
    use cache_core::Cache;

    const START: u64 = 1_800_000_000_000_000;

    #[test]
    fn values_are_read_as_lua_reads_digits() {
        assert_eq!(parts::<2>(b"12:34"), Some([12, 34]));
        assert_eq!(parts::<3>(b"0:1:2"), Some([0, 1, 2]));
        assert_eq!(digits(b"9007199254740991"), Some(MAX - 1));
        for bad in [
            &b""[..],
            b":",
            b"1:",
            b":1",
            b"1::2",
            b"+1",
            b" 1",
            b"1a",
            b"9007199254740992",
        ] {
            assert_eq!(parts::<2>(bad), None, "{}", String::from_utf8_lossy(bad));
            assert_eq!(digits(bad), None);
        }
        assert_eq!(parts::<2>(b"1:2:3"), None);
        assert_eq!(digits(b"12345678901234567"), None, "17 digits");
    }

    /// A count under a longer window, read with a shorter one: kept for one
    /// (shorter) window from the first read, as the script repairs the
    /// key's expiry, even though that request is rejected.
    #[tokio::test]
    async fn a_count_expiring_past_the_window_lasts_one_window_from_its_first_read() {
        let cache = Cache::in_memory();
        let long = [Quota::new(5, Duration::from_secs(10))];
        let short = [Quota::new(5, Duration::from_secs(1))];
        let admitted = async |quotas: &[Quota], at: u64, costs: &[u64]| {
            let rows = evaluate_raw(&cache, &["k"], quotas, at, costs)
                .await
                .unwrap();
            rows[rows.len() - 5]
        };
        assert_eq!(admitted(&long, START, &[1; 5]).await, 1);
        assert_eq!(admitted(&short, START + 1000, &[1]).await, 0);
        assert_eq!(admitted(&short, START + 500_000, &[1]).await, 0);
        assert_eq!(admitted(&short, START + 1_001_000, &[1]).await, 1);
    }

    /// A concurrency limit: at most the limit of leases, a released or
    /// expired one frees its slot, a renewed one lasts a TTL from its
    /// renewal.
    #[tokio::test]
    async fn lease_sets_hold_the_limit_expire_and_renew() {
        let cache = Cache::in_memory();
        let quota = [Quota::concurrent(2).lease_ttl(Duration::from_secs(1))];
        let acquire = async |at: u64, lease: i64| {
            acquire_raw(&cache, &["k"], &quota, at, 1, lease)
                .await
                .unwrap()[0]
        };
        assert_eq!(
            (
                acquire(START, 1).await,
                acquire(START, 2).await,
                acquire(START, 3).await
            ),
            (1, 1, 0)
        );
        assert!(release_raw(&cache, "k", 1).await.unwrap());
        assert!(!release_raw(&cache, "k", 1).await.unwrap(), "released once");
        assert_eq!(acquire(START + 1, 4).await, 1);
        // Lease 2 renewed at 0.5 s: it outlives lease 4 (expiring at 1 s).
        let keys = [("k".to_string(), 1000)];
        let timeout = Duration::from_secs(1);
        let renewed = crate::store::redis::renew(&cache, &keys, 2, Some(START + 500_000), timeout);
        assert!(renewed.await.unwrap());
        assert_eq!(acquire(START + 999_000, 5).await, 0);
        assert_eq!(acquire(START + 1_000_000, 6).await, 1, "lease 4 expired");
        assert_eq!(acquire(START + 1_000_000, 7).await, 0, "lease 2 renewed");
        assert!(!release_raw(&cache, "k", 4).await.unwrap(), "expired");
    }

    /// The limiter's keys are the store's: within its bound, the oldest
    /// going first, a live key written just now still there.
    #[tokio::test]
    async fn the_store_bounds_the_keys_the_oldest_going_first() {
        let cache = Cache::builder()
            .in_memory()
            .memory_max_entries(1000)
            .build()
            .await
            .unwrap();
        let quota = [Quota::new(5, Duration::from_secs(60))];
        for i in 0..20_000u64 {
            let key = format!("rate:ip:{i}");
            let rows = evaluate_raw(&cache, &[&key], &quota, START + i, &[1]).await;
            assert_eq!(rows.unwrap()[0], 1);
        }
        assert_eq!(cache.get_bytes("rate:ip:0").await.unwrap(), None);
        let last = cache.get_bytes("rate:ip:19999").await.unwrap();
        let end = (START + 19_999) / 1000 + 60_000;
        assert_eq!(last, Some(format!("1:{end}").into_bytes()));
    }

    /// What the scripts would not write is not this policy's: a value of
    /// another form is replaced, a lease set under a rate key too, and so is
    /// an integer from `TAT_FLOOR` up (another algorithm's state); a count
    /// above the limit below it is a full window, as the scripts read it.
    #[tokio::test]
    async fn foreign_values_are_replaced() {
        let cache = Cache::in_memory();
        let quota = [Quota::new(2, Duration::from_secs(1))];
        let admitted = async |value: &[u8]| {
            cache.set_bytes("k", value, None).await.unwrap();
            let rows = evaluate_raw(&cache, &["k"], &quota, START, &[1; 3]).await;
            let rows = rows.unwrap();
            [rows[0], rows[5], rows[10]]
        };
        for foreign in [
            &b"abc"[..],
            b"1125899906842624",
            b"z",
            b"1:2:3",
            b"-1",
            b"1:99999999999999999",
        ] {
            let shown = String::from_utf8_lossy(foreign);
            assert_eq!(admitted(foreign).await, [1, 1, 0], "{shown}");
        }
        // A bare count (an `INCR` writer's) is counted on, one above the
        // limit (the pipelined counter's rejected requests) is full.
        assert_eq!(admitted(b"1").await, [1, 0, 0]);
        assert_eq!(admitted(b"3").await, [0, 0, 0]);
    }
}
