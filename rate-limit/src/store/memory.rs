//! The in-memory backend's states: the arithmetic of `window.rs` on a map
//! shared through [`Cache::shared_state`](cache_core::Cache::shared_state),
//! so every layer built from one in-memory handle counts in the same place.
//!
//! Bounded: each shard holds at most [`MAX_KEYS`]` / SHARDS` keys; a full
//! shard first drops the keys whose state expired, then, if still over
//! three quarters full, forgets arbitrary clients (which then start afresh:
//! a bounded memory costs exactness only past that many clients at once).
//!
//! A concurrency limit's leases live beside the states, in a set per key
//! ([`LeaseSet`]) sharded the same way and locked with its client's states
//! (one atomic step, as `limits.lua` is on Redis): at most the limit
//! ([`MAX_CONCURRENT`](crate::MAX_CONCURRENT)) leases per set, at most
//! [`MAX_KEYS`]` / SHARDS` sets per shard (expired ones dropped first).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use crate::quota::Quota;
use crate::window::{self, State};

/// Keys held at most (one per client and policy).
pub(crate) const MAX_KEYS: usize = 1_000_000;
const SHARDS: usize = 16;

/// A concurrency limit's leases under one key: (lease id, expiry in ms
/// since the epoch); a Redis sorted set's members and scores.
type LeaseSet = Vec<(u64, u64)>;

pub(crate) struct MemoryLimits {
    shards: Vec<Mutex<HashMap<String, (State, u64)>>>,
    /// The lease sets, in the shard of their client's states.
    lease_shards: Vec<Mutex<HashMap<String, LeaseSet>>>,
    hasher: RandomState,
    /// Keys per shard, at most.
    shard_capacity: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits::with_capacity(MAX_KEYS)
    }
}

impl MemoryLimits {
    fn with_capacity(keys: usize) -> Self {
        MemoryLimits {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            lease_shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_capacity: (keys / SHARDS).max(4),
        }
    }

    /// The shard of `key`: by its hash tag (`{...}`), as Redis Cluster picks
    /// a slot, so that the keys of one client share one lock.
    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, (State, u64)>> {
        // Every critical section leaves the map whole: a poisoned one is usable.
        cache_core::sync::lock(&self.shards[self.shard_index(key)])
    }

    fn shard_index(&self, key: &str) -> usize {
        (self.hasher.hash_one(hash_tag(key)) as usize) % SHARDS
    }

    /// [`window::evaluate`] of one request of `cost` on the states of
    /// `keys`, concurrency limits among the quotas: their lease sets
    /// trimmed of expired leases, and, if the request is admitted (and
    /// costs anything), lease `lease` added to each, expiring a lease TTL
    /// from now; all in one critical section.
    pub(crate) fn evaluate_leased(
        &self,
        keys: &[&str],
        quotas: &[Quota],
        now_us: u64,
        cost: u64,
        lease: u64,
    ) -> Vec<i64> {
        let now_ms = now_us / 1000;
        let Some(first) = keys.first() else {
            return Vec::new();
        };
        let index = self.shard_index(first);
        // Lock order: the states, then the leases (a release takes only those).
        let mut shard = cache_core::sync::lock(&self.shards[index]);
        let mut sets = cache_core::sync::lock(&self.lease_shards[index]);
        let (before, mut states): (Vec<State>, Vec<State>) = keys
            .iter()
            .zip(quotas)
            .map(|(key, quota)| {
                if quota.is_concurrent() {
                    let state = trimmed(&mut sets, key, now_ms);
                    return (state, state);
                }
                let state = match shard.get(*key) {
                    Some((state, expires)) if *expires > now_ms => *state,
                    _ => State::Empty,
                };
                (state, window::repaired(quota, state, now_us))
            })
            .unzip();
        let rows = window::evaluate(quotas, &mut states, now_us, &[cost]);
        let granted = rows.first() == Some(&1) && cost > 0;
        for (((key, quota), state), old) in keys.iter().zip(quotas).zip(states).zip(before) {
            if !quota.is_concurrent() {
                self.write(&mut shard, key, quota, state, old, now_ms);
            } else if granted {
                let expires = now_ms.saturating_add(quota.window_ms());
                if let Some(set) = sets.get_mut(*key) {
                    set.push((lease, expires));
                    continue;
                }
                if sets.len() >= self.shard_capacity {
                    make_room_for_leases(&mut sets, now_ms, self.shard_capacity);
                }
                sets.insert(key.to_string(), vec![(lease, expires)]);
            }
        }
        rows
    }

    /// Renews lease `lease` of `key`, if it is still held at `now_ms`: it
    /// expires `ttl_ms` from now.
    pub(crate) fn renew(&self, key: &str, lease: u64, now_ms: u64, ttl_ms: u64) -> bool {
        let mut sets = cache_core::sync::lock(&self.lease_shards[self.shard_index(key)]);
        let held = sets
            .get_mut(key)
            .and_then(|set| set.iter_mut().find(|(id, _)| *id == lease))
            .filter(|(_, expires)| *expires > now_ms);
        match held {
            Some((_, expires)) => {
                *expires = now_ms.saturating_add(ttl_ms);
                true
            }
            None => false,
        }
    }

    /// Releases lease `lease` of `key`: `false` if it was no longer held
    /// (it expired, and was trimmed or made room for others).
    pub(crate) fn release(&self, key: &str, lease: u64) -> bool {
        let mut sets = cache_core::sync::lock(&self.lease_shards[self.shard_index(key)]);
        let Some(set) = sets.get_mut(key) else {
            return false;
        };
        let Some(at) = set.iter().position(|(id, _)| *id == lease) else {
            return false;
        };
        set.swap_remove(at);
        if set.is_empty() {
            sets.remove(key);
        }
        true
    }

    /// [`window::evaluate`] on the states of `keys` (one key, or keys with
    /// one hash tag), atomically.
    pub(crate) fn evaluate(
        &self,
        keys: &[&str],
        quotas: &[Quota],
        now_us: u64,
        costs: &[u64],
    ) -> Vec<i64> {
        let now_ms = now_us / 1000;
        let Some(first) = keys.first() else {
            return Vec::new();
        };
        let mut shard = self.shard(first);
        let read = |shard: &HashMap<String, (State, u64)>, key: &str, quota: &Quota| {
            let state = match shard.get(key) {
                Some((state, expires)) if *expires > now_ms => *state,
                _ => State::Empty,
            };
            (state, window::repaired(quota, state, now_us))
        };
        // One policy (the common case): no lists, and a known key is read
        // and updated through one lookup.
        if let ([key], [quota]) = (keys, quotas) {
            if let Some(entry) = shard.get_mut(*key) {
                let old = match *entry {
                    (state, expires) if expires > now_ms => state,
                    _ => State::Empty,
                };
                let mut states = [window::repaired(quota, old, now_us)];
                let rows = window::evaluate(quotas, &mut states, now_us, costs);
                if states[0] != old {
                    *entry = (states[0], window::expires_ms(quota, states[0]));
                }
                return rows;
            }
            let mut states = [State::Empty];
            let rows = window::evaluate(quotas, &mut states, now_us, costs);
            self.write(&mut shard, key, quota, states[0], State::Empty, now_ms);
            return rows;
        }
        let (before, mut states): (Vec<State>, Vec<State>) = keys
            .iter()
            .zip(quotas)
            .map(|(key, quota)| read(&shard, key, quota))
            .unzip();
        let rows = window::evaluate(quotas, &mut states, now_us, costs);
        for (((key, quota), state), old) in keys.iter().zip(quotas).zip(states).zip(before) {
            self.write(&mut shard, key, quota, state, old, now_ms);
        }
        rows
    }

    /// Stores `state` under `key` if it differs from `old`, what was read.
    fn write(
        &self,
        shard: &mut HashMap<String, (State, u64)>,
        key: &str,
        quota: &Quota,
        state: State,
        old: State,
        now_ms: u64,
    ) {
        if state == old {
            return;
        }
        let expires = window::expires_ms(quota, state);
        // A known key is updated in place: no copy of it.
        if let Some(entry) = shard.get_mut(key) {
            *entry = (state, expires);
            return;
        }
        if shard.len() >= self.shard_capacity {
            make_room(shard, now_ms, self.shard_capacity);
        }
        shard.insert(key.to_string(), (state, expires));
    }
}

impl MemoryLimits {
    /// The live state of `key` and its expiry (ms), for tests.
    pub(crate) fn peek(&self, key: &str, now_ms: u64) -> Option<(State, u64)> {
        self.shard(key)
            .get(key)
            .filter(|(_, expires)| *expires > now_ms)
            .copied()
    }
}

impl MemoryLimits {
    /// [`window::refunded`] on the states of `keys` (one per policy, one
    /// hash tag), atomically: gives back `cost` units of a request charged
    /// at `at_us` whose row said `resets`. Per policy 1 if it gave back,
    /// else 0, as `refund.lua` answers. A GCRA state moved back to `now_us`
    /// is removed (it holds nothing), as the script deletes the key.
    pub(crate) fn refund(
        &self,
        keys: &[&str],
        quotas: &[Quota],
        now_us: u64,
        at_us: u64,
        resets: &[u64],
        cost: u64,
    ) -> Vec<i64> {
        let now_ms = now_us / 1000;
        let Some(first) = keys.first() else {
            return Vec::new();
        };
        let mut shard = self.shard(first);
        let mut out = Vec::with_capacity(keys.len());
        for ((key, quota), &reset_ms) in keys.iter().zip(quotas).zip(resets) {
            let Some(entry) = shard.get_mut(*key).filter(|(_, expires)| *expires > now_ms) else {
                out.push(0);
                continue;
            };
            match window::refunded(quota, entry.0, now_us, at_us, reset_ms, cost) {
                Some(State::Gcra { tat_us }) if tat_us <= now_us => {
                    shard.remove(*key);
                    out.push(1);
                }
                Some(state) => {
                    *entry = (state, window::expires_ms(quota, state));
                    out.push(1);
                }
                None => out.push(0),
            }
        }
        out
    }
}

/// What Redis Cluster hashes: the text between the first `{` and the next
/// `}` when not empty, else the whole key.
fn hash_tag(key: &str) -> &str {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag)
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key)
}

/// The live leases of `key` (its expired ones dropped) as a state.
fn trimmed(sets: &mut HashMap<String, LeaseSet>, key: &str, now_ms: u64) -> State {
    let Some(set) = sets.get_mut(key) else {
        return State::Empty;
    };
    set.retain(|(_, expires)| *expires > now_ms);
    match set.iter().map(|(_, expires)| *expires).min() {
        Some(first_expiry_ms) => State::Leases {
            held: set.len() as u64,
            first_expiry_ms,
        },
        None => {
            sets.remove(key);
            State::Empty
        }
    }
}

/// Room in a full shard of lease sets: the sets whose leases all expired
/// go first; then, past three quarters full, arbitrary ones (their clients'
/// requests in flight stop counting: a bounded memory costs exactness only
/// past that many clients holding leases at once).
fn make_room_for_leases(sets: &mut HashMap<String, LeaseSet>, now_ms: u64, capacity: usize) {
    sets.retain(|_, set| set.iter().any(|(_, expires)| *expires > now_ms));
    let keep = capacity * 3 / 4;
    if sets.len() > keep {
        let excess: Vec<String> = sets.keys().take(sets.len() - keep).cloned().collect();
        for key in excess {
            sets.remove(&key);
        }
    }
}

fn make_room(shard: &mut HashMap<String, (State, u64)>, now_ms: u64, capacity: usize) {
    shard.retain(|_, (_, expires)| *expires > now_ms);
    let keep = capacity * 3 / 4;
    if shard.len() > keep {
        let excess: Vec<String> = shard.keys().take(shard.len() - keep).cloned().collect();
        for key in excess {
            shard.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_map_stays_bounded_and_drops_expired_keys_first() {
        let limits = MemoryLimits::with_capacity(SHARDS * 100);
        let quota = [Quota::new(5, Duration::from_millis(10))];
        let start = 1_700_000_000_000_000;
        for i in 0..50_000u64 {
            let key = format!("rate:ip:{i}");
            let rows = limits.evaluate(&[&key], &quota, start + i * 1000, &[1]);
            assert_eq!(rows[0], 1);
        }
        let held: usize = limits.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * 100, "{held}");
        // A live key written just now is still there: the expired ones went.
        assert!(
            limits
                .peek("rate:ip:49999", start / 1000 + 49_999)
                .is_some()
        );
    }

    /// A count under a longer window, read with a shorter one: kept for one
    /// (shorter) window from the first read, as the script repairs the
    /// key's expiry, even though that request is rejected.
    #[test]
    fn a_count_expiring_past_the_window_lasts_one_window_from_its_first_read() {
        let limits = MemoryLimits::default();
        let start = 1_700_000_000_000_000;
        let long = [Quota::new(5, Duration::from_secs(10))];
        let short = [Quota::new(5, Duration::from_secs(1))];
        assert_eq!(limits.evaluate(&["k"], &long, start, &[1; 5])[4 * 5 + 1], 0);
        assert_eq!(limits.evaluate(&["k"], &short, start + 1000, &[1])[0], 0);
        assert_eq!(limits.evaluate(&["k"], &short, start + 500_000, &[1])[0], 0);
        assert_eq!(
            limits.evaluate(&["k"], &short, start + 1_001_000, &[1])[0],
            1
        );
    }

    /// A concurrency limit: at most the limit of leases, a released or
    /// expired one frees its slot, a renewed one lasts a TTL from its
    /// renewal; the sets of many clients stay within the shard bound.
    #[test]
    fn lease_sets_hold_the_limit_expire_and_stay_bounded() {
        let limits = MemoryLimits::with_capacity(SHARDS * 100);
        let quota = [Quota::concurrent(2).lease_ttl(Duration::from_secs(1))];
        let start = 1_700_000_000_000_000;
        let acquire = |at: u64, lease: u64| limits.evaluate_leased(&["k"], &quota, at, 1, lease)[0];
        assert_eq!(
            (acquire(start, 1), acquire(start, 2), acquire(start, 3)),
            (1, 1, 0)
        );
        assert!(limits.release("k", 1));
        assert!(!limits.release("k", 1), "released once");
        assert_eq!(acquire(start + 1, 4), 1);
        // Lease 2 renewed at 0.5 s: it outlives lease 4 (expiring at 1 s).
        assert!(limits.renew("k", 2, start / 1000 + 500, 1000));
        assert_eq!(acquire(start + 999_000, 5), 0);
        assert_eq!(acquire(start + 1_000_000, 6), 1, "lease 4 expired");
        assert_eq!(acquire(start + 1_000_000, 7), 0, "lease 2 renewed");
        assert!(!limits.release("k", 4), "expired");
        for i in 0..50_000u64 {
            let key = format!("rate:ip:{i}");
            let rows = limits.evaluate_leased(&[&key], &quota, start + i * 1000, 1, i);
            assert_eq!(rows[0], 1);
        }
        let held: usize = limits
            .lease_shards
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert!(held <= SHARDS * 100, "{held}");
    }

    #[test]
    fn hash_tags_pick_the_shard_as_redis_cluster_does() {
        assert_eq!(hash_tag("rate:{ip:1.2.3.4}:burst"), "ip:1.2.3.4");
        assert_eq!(hash_tag("rate:ip:1.2.3.4"), "rate:ip:1.2.3.4");
        assert_eq!(hash_tag("a{}b"), "a{}b");
    }
}
