//! The instance's counts: per client and policy, the counts of the current
//! aligned window and the one before it, each split into what Redis last
//! said (`seen`), what this instance admitted and has not sent (`pending`)
//! and what it sent in a flush not yet answered (`in_flight`).
//!
//! A request is decided on `seen + pending + in_flight` with
//! [`window`](crate::window)'s arithmetic, under one shard lock; the
//! flusher drains the clients with pending counts ([`Table::drain`]) and
//! hands back Redis' totals ([`Table::acknowledge`]).
//!
//! Bounded: each shard holds at most its share of the table's capacity;
//! a full shard first drops clients with nothing to send whose windows
//! ended, then clients with nothing to send, and only then (more clients
//! with unsent counts than the capacity: Redis unreachable for long) some
//! with unsent counts, which are lost as an instance's are when it is killed.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::{HashTable, hash_table};

use crate::quota::{Algorithm, Quota};
use crate::window::{self, Outcome, State};

const SHARDS: usize = 16;

/// The shard of a client's hash: its top bits (the table uses the low
/// ones for the slot).
fn shard_of(hash: u64) -> usize {
    (hash >> 60) as usize % SHARDS
}

/// One window's count of one client under one policy, as this instance
/// knows it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count {
    /// The total at Redis (every instance's flushed counts, this one's
    /// included), as last read.
    pub(crate) seen: u64,
    /// Admitted here, not yet sent.
    pub(crate) pending: u64,
    /// Sent in a flush not yet answered.
    pub(crate) in_flight: u64,
    /// This instance has sent this window's count before (so its key's
    /// expiry is set).
    pub(crate) sent_before: bool,
}

impl Count {
    /// Everything this instance knows of: a lower bound of the window's
    /// true count while Redis is reachable.
    fn total(&self) -> u64 {
        self.seen
            .saturating_add(self.pending)
            .saturating_add(self.in_flight)
    }

    /// Admitted here and not yet in a total Redis returned.
    pub(crate) fn unflushed(&self) -> u64 {
        self.pending.saturating_add(self.in_flight)
    }
}

/// One client's counts under one policy: the window numbered `index`
/// (`index × window` ms since the epoch is its start) and the one before.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) index: u64,
    pub(crate) current: Count,
    pub(crate) previous: Count,
}

impl Tally {
    /// Moves to window `index`: the current window becomes the previous one
    /// if it is just before, counts older than that are dropped (nothing
    /// reads them: a fixed window reads its own window, a sliding one the
    /// one before too). An index behind the held one (a clock stepped
    /// back) counts in the held window.
    fn roll(&mut self, index: u64) {
        if index <= self.index {
            return;
        }
        self.previous = if index == self.index + 1 {
            self.current
        } else {
            Count::default()
        };
        self.current = Count::default();
        self.index = index;
    }

    /// The count of window `index`, if held.
    pub(crate) fn window_mut(&mut self, index: u64) -> Option<&mut Count> {
        if index == self.index {
            Some(&mut self.current)
        } else if index.checked_add(1) == Some(self.index) {
            Some(&mut self.previous)
        } else {
            None
        }
    }

    /// What window.rs reads: the fixed window's count of the current
    /// aligned window (at most the limit: the arithmetic takes a count
    /// above it for another policy's), or the sliding window's two counts.
    fn state(&self, quota: &Quota) -> State {
        match quota.enforced_by() {
            Algorithm::SlidingWindow => State::Sliding {
                index: self.index,
                current: self.current.total(),
                previous: self.previous.total(),
            },
            // Checked by the builder: the shared mode holds only the fixed
            // and the sliding window.
            _ => State::Fixed {
                count: self.current.total().min(quota.limit()),
                expires_ms: self
                    .index
                    .saturating_add(1)
                    .saturating_mul(quota.window_ms()),
            },
        }
    }

    /// Counted here and not yet in Redis' totals, in the windows read.
    fn unflushed(&self) -> u64 {
        self.current.unflushed() + self.previous.unflushed()
    }

    /// Nothing to send or to hear back about.
    fn settled(&self) -> bool {
        self.unflushed() == 0
    }
}

/// One client under every policy of the layer.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The keyed hash of `key` ([`Table::hash`]): its shard and its slot,
    /// found again (drained, acknowledged, rehashed) without hashing.
    hash: u64,
    key: Arc<str>,
    pub(crate) tallies: Box<[Tally]>,
    /// Listed in its shard's dirty list, to be drained.
    dirty: bool,
}

/// A shard: clients, and the ones with pending counts (keys may repeat or
/// be stale: [`Entry::dirty`] says whether a listed one still is), listed
/// with their hashes.
#[derive(Default)]
pub(crate) struct Shard {
    clients: HashTable<Entry>,
    dirty: Vec<(u64, Arc<str>)>,
}

impl Shard {
    /// The entry of `client`, whose hash is `hash`.
    pub(crate) fn get_mut(&mut self, hash: u64, client: &str) -> Option<&mut Entry> {
        self.clients.find_mut(hash, |entry| &*entry.key == client)
    }
}

/// What a request's check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Decided on this instance's counts; an admitted request is counted.
    Decided(Outcome),
    /// The counts admit the request, but counting it would take this
    /// instance's unflushed count of the client past its allowance under
    /// some policy: it needs a flush first.
    OverAllowance,
}

/// One count [`Table::drain`] took into flight.
pub(crate) struct Drained<'a> {
    /// The client's shard ([`Table::shard_at`]).
    pub(crate) shard: usize,
    /// The client's hash ([`Table::hash`]).
    pub(crate) hash: u64,
    pub(crate) client: &'a Arc<str>,
    pub(crate) policy: usize,
    /// The window's number.
    pub(crate) index: u64,
    pub(crate) delta: u64,
    /// This instance sent this window's count before.
    pub(crate) sent_before: bool,
    /// The window's total at Redis, as last read.
    pub(crate) seen: u64,
}

/// The counts of one layer (on Redis: of one instance), by client.
pub(crate) struct Table {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    shard_capacity: usize,
    /// The flusher waits for work: the first client to become dirty wakes it.
    pub(crate) idle: AtomicBool,
    /// Clients dropped with counts not yet sent (the table was full of them).
    pub(crate) lost: AtomicU64,
}

impl Table {
    pub(crate) fn new(capacity: usize) -> Self {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_capacity: (capacity / SHARDS).max(4),
            idle: AtomicBool::new(false),
            lost: AtomicU64::new(0),
        }
    }

    /// The keyed hash of `client`: its shard and its slot in the shard.
    pub(crate) fn hash(&self, client: &str) -> u64 {
        self.hasher.hash_one(client)
    }

    /// The shard of `client`.
    #[cfg(test)]
    pub(crate) fn shard(&self, client: &str) -> MutexGuard<'_, Shard> {
        self.shard_at(shard_of(self.hash(client)))
    }

    /// The shard numbered `index` (as [`Table::drain`] names them).
    pub(crate) fn shard_at(&self, index: usize) -> MutexGuard<'_, Shard> {
        // Every critical section leaves the shard whole: a poisoned one is usable.
        cache_sync::lock(&self.shards[index % SHARDS])
    }

    /// Decides a request of `client` costing `cost` at `now_us` (the
    /// windows' clock) under `quotas`; counts it if admitted, as pending.
    /// `allowance`: per policy, the most this instance may hold unflushed
    /// for one client. Returns whether the client became dirty (the flusher
    /// may need waking) with the answer.
    pub(crate) fn check(
        &self,
        client: &str,
        quotas: &[Quota],
        allowance: &[u64],
        now_us: u64,
        cost: u64,
    ) -> (Checked, bool) {
        let now_ms = now_us / 1000;
        let hash = self.hash(client);
        let mut shard = self.shard_at(shard_of(hash));
        let shard = &mut *shard;
        if shard.clients.len() >= self.shard_capacity && shard.get_mut(hash, client).is_none() {
            self.make_room(shard, quotas, now_ms);
        }
        let entry =
            match shard
                .clients
                .entry(hash, |entry| &*entry.key == client, |entry| entry.hash)
            {
                hash_table::Entry::Occupied(found) => found.into_mut(),
                hash_table::Entry::Vacant(free) => {
                    let tallies = quotas
                        .iter()
                        .map(|quota| Tally {
                            index: now_ms / quota.window_ms().max(1),
                            ..Tally::default()
                        })
                        .collect();
                    free.insert(Entry {
                        hash,
                        key: Arc::from(client),
                        tallies,
                        dirty: false,
                    })
                    .into_mut()
                }
            };
        let mut states = [State::Empty; 4];
        let mut many = Vec::new();
        let states: &mut [State] = if quotas.len() <= states.len() {
            &mut states[..quotas.len()]
        } else {
            many.resize(quotas.len(), State::Empty);
            &mut many
        };
        for ((tally, quota), state) in entry.tallies.iter_mut().zip(quotas).zip(states.iter_mut()) {
            tally.roll(now_ms / quota.window_ms().max(1));
            *state = tally.state(quota);
        }
        let row = window::evaluate(quotas, states, now_us, &[cost]);
        let Some(outcome) = window::outcome(quotas, &row) else {
            // Unreachable: evaluate writes one whole row per request.
            return (Checked::OverAllowance, false);
        };
        if !outcome.decision.allowed || cost == 0 {
            return (Checked::Decided(outcome), false);
        }
        // Past the allowance only when something is unflushed already: a
        // request costing more than the allowance passes alone.
        let over = entry.tallies.iter().zip(allowance).any(|(tally, &most)| {
            let held = tally.unflushed();
            held > 0 && held.saturating_add(cost) > most
        });
        if over {
            return (Checked::OverAllowance, false);
        }
        for tally in entry.tallies.iter_mut() {
            tally.current.pending = tally.current.pending.saturating_add(cost);
        }
        let became_dirty = !entry.dirty;
        if became_dirty {
            entry.dirty = true;
            let key = entry.key.clone();
            shard.dirty.push((hash, key));
        }
        (Checked::Decided(outcome), became_dirty)
    }

    /// Counts `cost` for `client` without deciding anything: a request the
    /// fail mode let through while the store could not be reached, sent
    /// when it can be.
    pub(crate) fn force(&self, client: &str, quotas: &[Quota], now_us: u64, cost: u64) -> bool {
        let now_ms = now_us / 1000;
        let hash = self.hash(client);
        let mut shard = self.shard_at(shard_of(hash));
        let shard = &mut *shard;
        let Some(entry) = shard.clients.find_mut(hash, |entry| &*entry.key == client) else {
            return false;
        };
        for (tally, quota) in entry.tallies.iter_mut().zip(quotas) {
            tally.roll(now_ms / quota.window_ms().max(1));
            tally.current.pending = tally.current.pending.saturating_add(cost);
        }
        let became_dirty = !entry.dirty;
        if became_dirty {
            entry.dirty = true;
            let key = entry.key.clone();
            shard.dirty.push((hash, key));
        }
        became_dirty
    }

    /// Whether some client has counts to send.
    pub(crate) fn has_dirty(&self) -> bool {
        self.shards
            .iter()
            .any(|shard| !cache_sync::lock(shard).dirty.is_empty())
    }

    /// Takes the pending counts of dirty clients into flight, for those
    /// `accept` takes (by client; one it refuses stays dirty), handing each
    /// non-zero count to `sink`, shard by shard. A client whose counts did
    /// not change since the last drain is not handed.
    pub(crate) fn drain(
        &self,
        mut accept: impl FnMut(&str) -> bool,
        mut sink: impl FnMut(Drained<'_>),
    ) {
        for (number, shard) in self.shards.iter().enumerate() {
            let mut shard = cache_sync::lock(shard);
            let listed = std::mem::take(&mut shard.dirty);
            let mut kept = Vec::new();
            for (hash, key) in listed {
                let Some(entry) = shard.get_mut(hash, &key) else {
                    continue;
                };
                if !entry.dirty {
                    continue;
                }
                if !accept(&key) {
                    kept.push((hash, key));
                    continue;
                }
                entry.dirty = false;
                for (policy, tally) in entry.tallies.iter_mut().enumerate() {
                    let index = tally.index;
                    for (count, window) in [
                        (&mut tally.current, Some(index)),
                        (&mut tally.previous, index.checked_sub(1)),
                    ] {
                        let (Some(window), delta @ 1..) = (window, count.pending) else {
                            continue;
                        };
                        sink(Drained {
                            shard: number,
                            hash,
                            client: &key,
                            policy,
                            index: window,
                            delta,
                            sent_before: count.sent_before,
                            seen: count.seen,
                        });
                        count.in_flight = count.in_flight.saturating_add(delta);
                        count.pending = 0;
                        count.sent_before = true;
                    }
                }
            }
            shard.dirty.extend(kept);
        }
    }

    /// A flush was answered: `delta` of `client`'s count of window `index`
    /// under `policy` is in Redis' total, which is `total`.
    pub(crate) fn acknowledge(
        &self,
        shard: &mut Shard,
        (hash, client): (u64, &str),
        policy: usize,
        index: u64,
        delta: u64,
        total: u64,
    ) {
        let count = shard
            .get_mut(hash, client)
            .and_then(|entry| entry.tallies.get_mut(policy))
            .and_then(|tally| tally.window_mut(index));
        if let Some(count) = count {
            count.in_flight = count.in_flight.saturating_sub(delta);
            // Totals only grow within a window; a smaller one (the key
            // expired early, or was reset by hand) does not undo what was seen.
            count.seen = count.seen.max(total);
        }
    }

    /// Clients held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| cache_sync::lock(shard).clients.len())
            .sum()
    }

    /// Frees a quarter of a full shard: clients with nothing unsent whose
    /// windows ended first, then other settled clients, then (the shard is
    /// full of unsent counts) any, counted as lost.
    fn make_room(&self, shard: &mut Shard, quotas: &[Quota], now_ms: u64) {
        let ended = |entry: &Entry| {
            entry.tallies.iter().zip(quotas).all(|(tally, quota)| {
                // The previous window still counts for a sliding window.
                tally.index.saturating_add(2) <= now_ms / quota.window_ms().max(1)
            })
        };
        shard
            .clients
            .retain(|entry| !(ended(entry) && entry.tallies.iter().all(Tally::settled)));
        let keep = self.shard_capacity * 3 / 4;
        if shard.clients.len() > keep {
            let mut excess = shard.clients.len() - keep;
            shard.clients.retain(|entry| {
                if excess > 0 && entry.tallies.iter().all(Tally::settled) {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        if shard.clients.len() > keep {
            let mut excess = shard.clients.len() - keep;
            self.lost.fetch_add(excess as u64, Ordering::Relaxed);
            shard.clients.retain(|_| {
                if excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const START_US: u64 = 1_700_000_000_000_000;

    fn fixed(limit: u64) -> [Quota; 1] {
        [Quota::new(limit, Duration::from_secs(1))]
    }

    fn allowed(checked: Checked) -> bool {
        matches!(checked, Checked::Decided(outcome) if outcome.decision.allowed)
    }

    /// An allowance that never binds: one instance alone.
    const UNBOUND: [u64; 1] = [u64::MAX];

    /// Sends `client`'s pending counts and hands back the totals Redis
    /// would with no other instance: the client is settled.
    fn flush(table: &Table, client: &str) {
        let mut sent = Vec::new();
        table.drain(
            |c| c == client,
            |count| sent.push((count.policy, count.index, count.delta)),
        );
        let hash = table.hash(client);
        let mut shard = table.shard(client);
        for (policy, index, delta) in sent {
            let seen = shard.get_mut(hash, client).unwrap().tallies[policy]
                .window_mut(index)
                .unwrap()
                .seen;
            table.acknowledge(
                &mut shard,
                (hash, client),
                policy,
                index,
                delta,
                seen + delta,
            );
        }
    }

    #[test]
    fn alone_the_limit_is_exact_per_aligned_window() {
        let table = Table::new(1000);
        let quotas = fixed(3);
        // 100 ms into an aligned second.
        let now = START_US + 100_000;
        let passed = (0..5)
            .filter(|_| allowed(table.check("ip:1", &quotas, &UNBOUND, now, 1).0))
            .count();
        assert_eq!(passed, 3);
        // The window ends on the whole second, not a second after the first request.
        let Checked::Decided(denied) = table.check("ip:1", &quotas, &UNBOUND, now, 1).0 else {
            panic!("decided");
        };
        assert_eq!(denied.decision.reset_after, Duration::from_millis(900));
        assert!(allowed(
            table
                .check("ip:1", &quotas, &UNBOUND, START_US + 1_000_000, 1)
                .0
        ));
    }

    #[test]
    fn the_allowance_holds_unflushed_counts_until_a_flush_answers() {
        let table = Table::new(1000);
        let quotas = fixed(100);
        let allowance = [2];
        let check = || table.check("ip:1", &quotas, &allowance, START_US, 1).0;
        assert!(allowed(check()));
        assert!(allowed(check()));
        assert_eq!(check(), Checked::OverAllowance);
        let mut sent = Vec::new();
        table.drain(
            |_| true,
            |count| {
                sent.push((
                    count.client.to_string(),
                    count.policy,
                    count.index,
                    count.delta,
                    count.sent_before,
                ))
            },
        );
        let index = START_US / 1000 / 1000;
        assert_eq!(sent, [("ip:1".to_string(), 0, index, 2, false)]);
        // In flight still counts against the allowance...
        assert_eq!(check(), Checked::OverAllowance);
        // ...until Redis answers with the total (another instance's 40 in it).
        let hash = table.hash("ip:1");
        table.acknowledge(&mut table.shard("ip:1"), (hash, "ip:1"), 0, index, 2, 42);
        let Checked::Decided(outcome) = check() else {
            panic!("decided");
        };
        assert_eq!(outcome.decision.remaining, 100 - 43);
    }

    #[test]
    fn a_request_costing_more_than_the_allowance_passes_alone() {
        let table = Table::new(1000);
        let quotas = fixed(100);
        let allowance = [2];
        assert!(allowed(
            table.check("ip:1", &quotas, &allowance, START_US, 10).0
        ));
        assert_eq!(
            table.check("ip:1", &quotas, &allowance, START_US, 1).0,
            Checked::OverAllowance
        );
    }

    #[test]
    fn a_sliding_window_reads_the_previous_windows_count() {
        let table = Table::new(1000);
        let quotas = [Quota::new(10, Duration::from_secs(1)).algorithm(Algorithm::SlidingWindow)];
        let start = START_US - START_US % 1_000_000;
        for _ in 0..10 {
            assert!(allowed(table.check("ip:1", &quotas, &UNBOUND, start, 1).0));
        }
        // A quarter into the next window, three quarters of the previous
        // one's 10 still weigh: 8 (rounded up), so 2 pass.
        let later = start + 1_250_000;
        let passed = (0..5)
            .filter(|_| allowed(table.check("ip:1", &quotas, &UNBOUND, later, 1).0))
            .count();
        assert_eq!(passed, 2);
    }

    #[test]
    fn a_full_table_drops_settled_clients_first() {
        let table = Table::new(SHARDS * 8);
        let quotas = fixed(100);
        let allowance = [100];
        // A client with unsent counts...
        assert!(allowed(
            table.check("ip:kept", &quotas, &allowance, START_US, 1).0
        ));
        // ...survives a crowd of settled ones.
        for i in 0..10_000 {
            let client = format!("ip:{i}");
            assert!(allowed(
                table.check(&client, &quotas, &allowance, START_US, 1).0
            ));
            flush(&table, &client);
        }
        assert!(table.len() <= SHARDS * 8);
        let mut sent = 0;
        table.drain(|_| true, |count| sent += count.delta);
        assert_eq!(sent, 1, "the unsent count is still there to send");
        assert_eq!(table.lost.load(Ordering::Relaxed), 0);
    }
}
