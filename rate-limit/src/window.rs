//! The arithmetic of every [`Algorithm`]: from a client's stored state, the
//! time and a request's cost to the verdict of each policy and the next
//! state. Pure functions, testable without a store; the in-memory backend
//! runs them as they are and the Redis script (`store/redis.lua`) is their
//! line-by-line transcription (tested against them on the same sequences).
//! [`Decision`]s are built here only.
//!
//! Times are microseconds since the Unix epoch; the fixed and sliding
//! windows count in whole milliseconds, GCRA in microseconds.

use std::time::Duration;

use crate::quota::{Algorithm, Quota};

/// The verdict for one request, reported for one policy of the layer: the
/// one closest to its limit (for a rejected request, the one that makes it
/// wait longest).
///
/// Built by the layer only; new fields may be added: read it, do not build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Every policy admits the request.
    pub allowed: bool,
    /// The reported policy's limit per window.
    pub limit: u64,
    /// Units left under the reported policy after this request.
    pub remaining: u64,
    /// Time until the reported policy's window ends (fixed and sliding
    /// windows) or its quota is whole again (GCRA).
    pub reset_after: Duration,
    /// For a rejected request: the time until a request like it would pass
    /// under every policy (never zero). Zero for an allowed one.
    pub retry_after: Duration,
    /// Which policy is reported: its index in the order the layer's
    /// policies were given.
    pub policy: usize,
}

impl Decision {
    /// The fixed-window decision for the request that brought the window's
    /// count to `count` (rejected ones counted too).
    #[cfg(test)]
    pub(crate) fn for_count(count: u64, limit: u64, reset_after: Duration) -> Decision {
        let allowed = count <= limit;
        Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(count),
            reset_after,
            retry_after: if allowed { Duration::ZERO } else { reset_after },
            policy: 0,
        }
    }

    /// A rejection from the local deny cache: policy `policy` (of `limit`)
    /// admits nothing for `left`.
    pub(crate) fn denied_for(limit: u64, policy: usize, left: Duration) -> Decision {
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_after: left,
            retry_after: left,
            policy,
        }
    }

    /// Seconds until the window ends, rounded up (what the headers carry).
    pub fn reset_seconds(&self) -> u64 {
        ceil_seconds(self.reset_after)
    }

    /// `Retry-After`: whole seconds, rounded up, never 0.
    pub fn retry_after_seconds(&self) -> u64 {
        let wait = if self.retry_after.is_zero() {
            self.reset_after
        } else {
            self.retry_after
        };
        ceil_seconds(wait).max(1)
    }
}

/// Whole seconds, rounded up.
pub fn ceil_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        seconds.saturating_add(1)
    } else {
        seconds
    }
}

/// A wait that never ends: the request costs more than the whole quota.
pub(crate) const NEVER: u64 = u64::MAX;

/// One client's state under one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Nothing stored (or nothing that still counts).
    Empty,
    /// `count` units in the window that ends at `expires_ms`.
    Fixed { count: u64, expires_ms: u64 },
    /// Units in the aligned window number `index` (of `window` ms since the
    /// epoch) and in the one before it.
    Sliding {
        index: u64,
        current: u64,
        previous: u64,
    },
    /// The theoretical arrival time of the next unit, in microseconds.
    Gcra { tat_us: u64 },
    /// A concurrency limit's live leases (expired ones trimmed) and when
    /// the first of them expires (ms since the epoch; 0: none held).
    Leases { held: u64, first_expiry_ms: u64 },
}

/// One policy's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Check {
    /// The policy has room for the request.
    pub(crate) admits: bool,
    /// Units left, after the request if it is admitted.
    pub(crate) remaining: u64,
    /// Milliseconds until the window ends / the quota is whole.
    pub(crate) reset_ms: u64,
    /// Milliseconds until this request would be admitted (0: now; [`NEVER`]).
    pub(crate) retry_ms: u64,
    /// Milliseconds until a request of cost 1 would be admitted, after this
    /// one (what the local deny cache may remember).
    pub(crate) blocked_ms: u64,
    /// The state after the request, if it is admitted.
    pub(crate) next: State,
}

/// `quota`'s answer to a request of `cost` at `now_us` on `state`.
pub(crate) fn check(quota: &Quota, state: State, now_us: u64, cost: u64) -> Check {
    let (limit, window_ms) = (quota.limit(), quota.window_ms());
    match quota.enforced_by() {
        Algorithm::FixedWindow => fixed(limit, window_ms, state, now_us, cost),
        Algorithm::SlidingWindow => sliding(limit, window_ms, state, now_us, cost),
        Algorithm::Gcra => gcra(limit, window_ms, state, now_us, cost),
        Algorithm::Concurrent => leases(limit, window_ms, state, now_us, cost),
    }
}

/// The longest `Retry-After` of a request over a concurrency limit: 1 s. A
/// slot frees whenever a response of the client ends, which no store knows
/// in advance; the first lease's expiry is only the latest it can happen.
pub(crate) const LEASE_RETRY_MS: u64 = 1000;

/// A concurrency limit: a request (of any cost but 0, which takes no lease)
/// is admitted while fewer than `limit` leases are held, and then holds one
/// more, expiring a lease TTL (`ttl` ms) from now. Never "blocked" for the
/// deny cache: a slot frees whenever a response ends.
fn leases(limit: u64, ttl: u64, state: State, now_us: u64, cost: u64) -> Check {
    let now = now_us / 1000;
    let (held, first) = match state {
        State::Leases {
            held,
            first_expiry_ms,
        } if held > 0 => (held, first_expiry_ms),
        _ => (0, 0),
    };
    let need = cost.min(1);
    let admits = held + need <= limit;
    let after = if admits { held + need } else { held };
    let first = if held == 0 && after > 0 {
        now + ttl
    } else {
        first
    };
    let reset = first.saturating_sub(now);
    Check {
        admits,
        remaining: limit.saturating_sub(after),
        reset_ms: reset,
        retry_ms: if admits {
            0
        } else {
            reset.clamp(1, LEASE_RETRY_MS)
        },
        blocked_ms: 0,
        next: State::Leases {
            held: after,
            first_expiry_ms: first,
        },
    }
}

/// A bare integer at or above this, and above the limit, is no fixed-window
/// count but another algorithm's state (a GCRA TAT in µs is above it since
/// 2005): replaced, where a count above the limit is a full window. 2^50:
/// no window sees that many requests.
pub(crate) const TAT_FLOOR: u64 = 1 << 50;

/// A fixed-window count above the limit as a full window (the limit);
/// another algorithm's state (at or above [`TAT_FLOOR`]) stays above it.
fn full(count: u64, limit: u64) -> u64 {
    if count > limit && count < TAT_FLOOR {
        limit
    } else {
        count
    }
}

fn fixed(limit: u64, window: u64, state: State, now_us: u64, cost: u64) -> Check {
    let now = now_us / 1000;
    // A count above the limit is a full window, as the scripts read it: the
    // pipelined counter on Redis leaves rejected requests of cost 1 counted
    // (see `store::redis`), and a higher limit's count is a full window of
    // the lower one (as the sliding window and GCRA read theirs). One at or
    // above `TAT_FLOOR` is another algorithm's state, replaced. One
    // expiring past a window from now (a longer window's) is counted on, in
    // a window from now, as the script does.
    let (count, expires) = match state {
        State::Fixed { count, expires_ms } if full(count, limit) <= limit && expires_ms > now => {
            (full(count, limit), expires_ms.min(now + window))
        }
        _ => (0, now + window),
    };
    let admits = cost <= limit && count + cost <= limit;
    let after = if admits { count + cost } else { count };
    let left = expires - now;
    Check {
        admits,
        remaining: limit.saturating_sub(after),
        reset_ms: left,
        retry_ms: if admits {
            0
        } else if cost > limit {
            NEVER
        } else {
            left
        },
        blocked_ms: if after < limit { 0 } else { left },
        next: State::Fixed {
            count: after,
            expires_ms: expires,
        },
    }
}

fn sliding(limit: u64, window: u64, state: State, now_us: u64, cost: u64) -> Check {
    let now = now_us / 1000;
    let index = now / window;
    let elapsed = now - index * window;
    // A window in the future (the clock stepped back) is the current one.
    let (current, previous) = match state {
        State::Sliding {
            index: stored,
            current,
            previous,
        } if stored >= index => (current, previous),
        State::Sliding {
            index: stored,
            current,
            ..
        } if stored + 1 == index => (0, current),
        _ => (0, 0),
    };
    // A count over the limit (the quota was lowered) weighs as the limit.
    let (current, previous) = (current.min(limit), previous.min(limit));
    // Rounded up: the estimate never undercounts.
    let weighted = (previous * (window - elapsed)).div_ceil(window);
    let admits = cost <= limit && weighted + current + cost <= limit;
    let after = if admits { current + cost } else { current };
    // When a request of cost `c` passes, with `after` in this window.
    let wait = |c: u64| -> u64 {
        if c > limit {
            return NEVER;
        }
        if weighted + after + c <= limit {
            return 0;
        }
        if after + c <= limit {
            // Later in this window, once enough of the previous one slid out:
            // ceil(previous × (window − e) / window) ≤ room.
            let room = limit - after - c;
            let pass_at =
                window.saturating_sub((room * window).checked_div(previous).unwrap_or(window));
            pass_at.saturating_sub(elapsed)
        } else {
            // In the next window, where this one's count is the previous one.
            let room = limit - c;
            let pass_at =
                window.saturating_sub((room * window).checked_div(after).unwrap_or(window));
            window - elapsed + pass_at
        }
    };
    Check {
        admits,
        remaining: limit.saturating_sub(weighted + after),
        reset_ms: window - elapsed,
        retry_ms: if admits { 0 } else { wait(cost) },
        blocked_ms: wait(1),
        next: State::Sliding {
            index,
            current: after,
            previous,
        },
    }
}

/// GCRA's emission interval and tolerance, in microseconds: one unit every
/// `window / limit` (rounded up to a whole µs), `limit` units at once.
pub(crate) fn gcra_params(limit: u64, window_ms: u64) -> (u64, u64) {
    let interval = (window_ms * 1000).div_ceil(limit).max(1);
    (interval, limit * interval)
}

fn gcra(limit: u64, window: u64, state: State, now_us: u64, cost: u64) -> Check {
    let (interval, tolerance) = gcra_params(limit, window);
    let tat = match state {
        State::Gcra { tat_us } => tat_us,
        _ => 0,
    };
    // A TAT beyond a full bucket (the quota was lowered) counts as full.
    // Saturating: a custom clock may be near the end of time.
    let tat = tat.max(now_us).min(now_us.saturating_add(tolerance));
    let admits = cost <= limit && tat - now_us + cost * interval <= tolerance;
    let after = if admits {
        tat.saturating_add(cost * interval)
    } else {
        tat
    };
    let wait = |c: u64| -> u64 {
        if c > limit {
            NEVER
        } else {
            (after - now_us + c * interval)
                .saturating_sub(tolerance)
                .div_ceil(1000)
        }
    };
    Check {
        admits,
        remaining: (tolerance - (after - now_us)) / interval,
        reset_ms: (after - now_us).div_ceil(1000),
        retry_ms: if admits { 0 } else { wait(cost) },
        blocked_ms: wait(1),
        next: State::Gcra { tat_us: after },
    }
}

/// `state` as the script reads it at `now_us`, out-of-range parts brought
/// in range (the script rewrites the key so, even when the request is
/// rejected): a fixed-window count ending more than a window from now ends
/// a window from now; a sliding window in the future (the clock stepped
/// back) is the current one, its counts at most the limit; a GCRA TAT past
/// the tolerance is at the tolerance.
pub(crate) fn repaired(quota: &Quota, state: State, now_us: u64) -> State {
    let (limit, window_ms) = (quota.limit(), quota.window_ms().max(1));
    let now_ms = now_us / 1000;
    match (quota.enforced_by(), state) {
        (
            Algorithm::SlidingWindow,
            State::Sliding {
                index,
                current,
                previous,
            },
        ) => State::Sliding {
            index: index.min(now_ms / window_ms),
            current: current.min(limit),
            previous: previous.min(limit),
        },
        (Algorithm::FixedWindow, State::Fixed { count, expires_ms }) => State::Fixed {
            count,
            expires_ms: expires_ms.min(now_ms.saturating_add(window_ms)),
        },
        (Algorithm::Gcra, State::Gcra { tat_us }) => {
            let (_, tolerance) = gcra_params(limit, window_ms);
            State::Gcra {
                tat_us: tat_us.min(now_us.saturating_add(tolerance)),
            }
        }
        (_, other) => other,
    }
}

/// When `state` stops mattering (ms since the epoch): the key's expiry.
pub(crate) fn expires_ms(quota: &Quota, state: State) -> u64 {
    match state {
        State::Empty => 0,
        State::Fixed { expires_ms, .. } => expires_ms,
        State::Sliding { index, .. } => (index + 2) * quota.window_ms(),
        State::Gcra { tat_us } => tat_us.div_ceil(1000),
        // The lease set's own expiries count (see `store::memory`).
        State::Leases {
            first_expiry_ms, ..
        } => first_expiry_ms,
    }
}

/// Numbers per request in an evaluation: admitted, then per policy
/// remaining, reset, retry and blocked (ms; [`NEVER`] as -1).
pub(crate) fn row_len(policies: usize) -> usize {
    1 + 4 * policies
}

/// Checks requests of `costs`, in order, at `now_us` against every policy
/// (`quotas[i]` on `states[i]`): a request is admitted only if every policy
/// admits it, and then charged to every policy; a rejected one is charged
/// to none. Returns [`row_len`] numbers per request, as the Redis script does.
pub(crate) fn evaluate(
    quotas: &[Quota],
    states: &mut [State],
    now_us: u64,
    costs: &[u64],
) -> Vec<i64> {
    let mut out = Vec::with_capacity(costs.len() * row_len(quotas.len()));
    for &cost in costs {
        // Each check twice (its arithmetic costs less than a list of them).
        let admitted = quotas
            .iter()
            .zip(states.iter())
            .all(|(quota, state)| check(quota, *state, now_us, cost).admits);
        out.push(i64::from(admitted));
        for (quota, state) in quotas.iter().zip(states.iter_mut()) {
            let check_ = &check(quota, *state, now_us, cost);
            let shown = if admitted {
                *state = check_.next;
                *check_
            } else if check_.admits {
                // Not charged: this policy's view without the request.
                check(quota, *state, now_us, 0)
            } else {
                *check_
            };
            let wire = |ms: u64| {
                if ms == NEVER {
                    -1
                } else {
                    i64::try_from(ms).unwrap_or(-1)
                }
            };
            out.extend([
                i64::try_from(shown.remaining).unwrap_or(i64::MAX),
                wire(shown.reset_ms),
                if check_.admits {
                    0
                } else {
                    wire(shown.retry_ms)
                },
                wire(shown.blocked_ms),
            ]);
        }
    }
    out
}

/// What one request's row means for the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) decision: Decision,
    /// How long the client is sure to be rejected (cost 1) from now: what
    /// the local deny cache may remember. Zero: not known to be blocked.
    pub(crate) blocked: Duration,
}

/// Reads one request's row ([`row_len`] numbers); `None` if malformed.
pub(crate) fn outcome(quotas: &[Quota], row: &[i64]) -> Option<Outcome> {
    if row.len() != row_len(quotas.len()) || quotas.is_empty() {
        return None;
    }
    let allowed = row[0] == 1;
    let ms = |v: i64| u64::try_from(v).unwrap_or(NEVER);
    let mut reported = 0;
    let mut best: Option<(u64, u64, u64, u64)> = None; // (limit, remaining, reset, retry)
    let mut retry = 0u64;
    let mut blocked = 0u64;
    for (i, quota) in quotas.iter().enumerate() {
        let cells = &row[1 + 4 * i..5 + 4 * i];
        let remaining = u64::try_from(cells[0]).unwrap_or(0);
        let (reset, this_retry, this_blocked) = (ms(cells[1]), ms(cells[2]), ms(cells[3]));
        retry = retry.max(this_retry);
        if this_blocked != NEVER {
            blocked = blocked.max(this_blocked);
        }
        let limit = quota.limit();
        let better = match best {
            None => true,
            Some((best_limit, best_remaining, best_reset, best_retry)) => {
                if !allowed {
                    this_retry > best_retry
                } else {
                    // The smallest fraction left; on a tie the longest reset.
                    let this = u128::from(remaining) * u128::from(best_limit);
                    let other = u128::from(best_remaining) * u128::from(limit);
                    this < other || (this == other && reset > best_reset)
                }
            }
        };
        if better {
            best = Some((limit, remaining, reset, this_retry));
            reported = i;
        }
    }
    let (limit, remaining, reset, _) = best?;
    let duration = |ms: u64| {
        if ms == NEVER {
            Duration::MAX
        } else {
            Duration::from_millis(ms)
        }
    };
    Some(Outcome {
        decision: Decision {
            allowed,
            limit,
            remaining,
            reset_after: duration(reset),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                duration(retry.max(1))
            },
            policy: reported,
        },
        blocked: duration(blocked),
    })
}

/// Each policy's reset (ms) in one request's row: when, from the store's
/// "now", the window it was charged in ends (fixed and sliding windows);
/// what a refund goes by. `None` if the row is malformed.
pub(crate) fn resets(quotas: &[Quota], row: &[i64]) -> Option<Vec<u64>> {
    if row.len() != row_len(quotas.len()) {
        return None;
    }
    (0..quotas.len())
        .map(|i| u64::try_from(row[2 + 4 * i]).ok())
        .collect()
}

/// `state` after giving back `cost` units of a request charged at `at_us`
/// (the store's "now" then) whose row said `reset_ms` for this policy, at
/// `now_us`; `None` when nothing is given back. `store/refund.lua` is its
/// transcription.
///
/// - Fixed window: to the window the request was charged in, recognised by
///   its end (`at + reset`, within half a window: one key's windows end at
///   least a window apart); a window that has rolled over since gets
///   nothing back.
/// - Sliding window: to the aligned window it was charged in, the current
///   one or, once it has rolled over, the previous one (whose count still
///   weighs); two windows later nothing counts any more.
/// - GCRA: the TAT moves back by the units' emission intervals, never below
///   `now_us`.
///
/// Counts never go below zero.
pub(crate) fn refunded(
    quota: &Quota,
    state: State,
    now_us: u64,
    at_us: u64,
    reset_ms: u64,
    cost: u64,
) -> Option<State> {
    let (limit, window) = (quota.limit(), quota.window_ms().max(1));
    let end_ms = (at_us / 1000).saturating_add(reset_ms);
    match (quota.enforced_by(), state) {
        (Algorithm::FixedWindow, State::Fixed { count, expires_ms })
            if count > 0
                && expires_ms > now_us / 1000
                && expires_ms.abs_diff(end_ms).saturating_mul(2) < window =>
        {
            // A count above the limit is a full window (see `fixed`): the
            // refund frees a unit of it.
            Some(State::Fixed {
                count: full(count, limit).saturating_sub(cost),
                expires_ms,
            })
        }
        (
            Algorithm::SlidingWindow,
            State::Sliding {
                index,
                current,
                previous,
            },
        ) => {
            // The aligned window whose end is nearest `end_ms`.
            let charged = (end_ms.saturating_add(window / 2) / window).checked_sub(1)?;
            // Two windows on, its count weighs nothing any more.
            if charged.saturating_add(1) < now_us / 1000 / window {
                return None;
            }
            if index == charged && current > 0 {
                Some(State::Sliding {
                    index,
                    current: current.saturating_sub(cost),
                    previous,
                })
            } else if index == charged.saturating_add(1) && previous > 0 {
                Some(State::Sliding {
                    index,
                    current,
                    previous: previous.saturating_sub(cost),
                })
            } else {
                None
            }
        }
        (Algorithm::Gcra, State::Gcra { tat_us }) if tat_us > now_us => {
            let (interval, _) = gcra_params(limit, window);
            Some(State::Gcra {
                tat_us: tat_us
                    .saturating_sub(cost.saturating_mul(interval))
                    .max(now_us),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
