//! Single-flight: in one process, concurrent calls with the same key on
//! the same handle (or its clones) share one flight. The first to [`join`] leads: it reads the cache and, on a
//! miss, runs the body; the others follow and wait for the leader's
//! [`Outcome`].
//!
//! The guarantees, each proven by a test below:
//! - a leader that panics or is cancelled (its [`Leader`] dropped before it
//!   publishes) settles the flight as [`Outcome::Abandoned`], and a follower
//!   joins again and leads: nobody waits forever;
//! - a flight leaves the map when its leader finishes or vanishes, never a
//!   later flight of the same key;
//! - no lock is held across an `.await`, so recursion over other keys
//!   (`fib`) cannot deadlock.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

// Every critical section on a flight map is a single map operation: a
// poisoned map is consistent. (shuttle's primitives under `--cfg shuttle`.)
use crate::sync::primitives::{Mutex, OnceLock, lock};

/// How a flight ended, as followers see it.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// The encoded value, or `None` when the outcome is not cached.
    Done(Option<Arc<Vec<u8>>>),
    /// The leader vanished (panic, cancellation): start over.
    Abandoned,
}

/// One flight: the full key it reads, its outcome once there is one, and
/// followers waiting for it.
pub(crate) struct Flight {
    pub(crate) key: FlightKey,
    outcome: OnceLock<Outcome>,
    settled: tokio::sync::Notify,
}

impl Flight {
    fn settle(&self, outcome: Outcome) {
        let _ = self.outcome.set(outcome);
        self.settled.notify_waiters();
    }

    pub(crate) async fn outcome(&self) -> Outcome {
        loop {
            // Created before the check, so a settle in between still wakes it.
            let settled = self.settled.notified();
            if let Some(outcome) = self.outcome.get() {
                return outcome.clone();
            }
            settled.await;
        }
    }
}

/// A handle and a full key, and their hash, taken once per call: the hash
/// picks the shard and is all the shard's map hashes. foldhash, seeded once
/// per process.
///
/// The handle is part of the key: two handles are two instances (two
/// stores, perhaps, under the same namespace), and one must never be served
/// what the other read. Clones of a handle share its flights.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct FlightKey {
    hash: u64,
    handle: usize,
    key: String,
}

impl FlightKey {
    /// The flight of `key` on the handle whose [`Cache::id`](crate::Cache) is `handle`.
    pub(crate) fn new(handle: usize, key: String) -> FlightKey {
        static SEED: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
        let hash = SEED
            .get_or_init(Default::default)
            .hash_one((handle, key.as_str()));
        FlightKey { hash, handle, key }
    }
}

impl Hash for FlightKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A flight in the map, found by its key.
struct InFlight(Arc<Flight>);

impl Borrow<FlightKey> for InFlight {
    fn borrow(&self) -> &FlightKey {
        &self.0.key
    }
}

impl Hash for InFlight {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for InFlight {}

type FlightMap = HashSet<InFlight, foldhash::fast::RandomState>;

/// Flights in progress by full key, in shards so that unrelated keys seldom
/// contend for a lock. Each shard has a cache line of its own, so that calls
/// on different cores do not pass lines back and forth for neighbouring shards.
const SHARD_BITS: u32 = 6;
const FLIGHT_SHARDS: usize = 1 << SHARD_BITS;

#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<FlightMap>);

fn new_shards() -> Vec<Shard> {
    (0..FLIGHT_SHARDS).map(|_| Shard::default()).collect()
}

#[cfg(not(all(test, shuttle)))]
fn shards() -> &'static [Shard] {
    static SHARDS: std::sync::OnceLock<Vec<Shard>> = std::sync::OnceLock::new();
    SHARDS.get_or_init(new_shards)
}

/// shuttle's locks live as long as one explored execution: so do the shards.
#[cfg(all(test, shuttle))]
fn shards() -> &'static [Shard] {
    shuttle::lazy_static! {
        static ref SHARDS: Vec<Shard> = new_shards();
    }
    &SHARDS
}

fn shard_of(key: &FlightKey) -> &'static Mutex<FlightMap> {
    let shards = shards();
    // The top bits pick the shard; the map inside uses the low ones.
    let index = usize::try_from(key.hash >> (u64::BITS - SHARD_BITS)).unwrap_or_default();
    &shards[index].0
}

/// The leader's side of a flight. Dropping it before [`publish`](Self::publish)
/// (panic, cancellation) tells followers to start over; the flight stays
/// joinable until [`finish`](Self::finish), so a caller arriving while the
/// leader writes the entry gets the published value instead of a miss.
pub(crate) struct Leader {
    flight: Arc<Flight>,
    in_map: bool,
    /// A `Cell`: publishing while the key is lent out (as the call's key).
    published: std::cell::Cell<bool>,
}

impl Leader {
    pub(crate) fn key(&self) -> &str {
        &self.flight.key.key
    }

    pub(crate) fn publish(&self, value: Option<Arc<Vec<u8>>>) {
        self.published.set(true);
        self.flight.settle(Outcome::Done(value));
    }

    pub(crate) fn finish(self) {
        // Drop does the rest: the flight leaves the map.
    }

    /// Ends a flight that found the entry in the cache. The entry's bytes are
    /// copied for followers only when there are any (checked once the flight
    /// has left the map, so none can join after the check).
    pub(crate) fn finish_with_hit(mut self, bytes: &[u8]) {
        self.leave_map();
        self.published.set(true);
        if Arc::strong_count(&self.flight) > 1 {
            self.flight
                .settle(Outcome::Done(Some(Arc::new(bytes.to_vec()))));
        }
    }

    /// Removes this flight from the map (never a later flight of the same key).
    fn leave_map(&mut self) {
        if !std::mem::take(&mut self.in_map) {
            return;
        }
        let mut map = lock(shard_of(&self.flight.key));
        // One lookup: put back the rare later flight that is not this one.
        if let Some(found) = map.take(&self.flight.key)
            && !Arc::ptr_eq(&found.0, &self.flight)
        {
            map.insert(found);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.leave_map();
        if !self.published.get() {
            self.flight.settle(Outcome::Abandoned);
        }
    }
}

/// What [`join`] makes a caller.
pub(crate) enum Role {
    /// The first caller of the key: reads, runs, publishes.
    Leader(Leader),
    /// A later caller: waits for the leader's outcome.
    Follower(Arc<Flight>),
}

/// Joins the flight of `key` (a full key), or starts one; the key moves into
/// a new flight, so it is not copied.
pub(crate) fn join(key: FlightKey) -> Role {
    let mut map = lock(shard_of(&key));
    if let Some(found) = map.get(&key) {
        return Role::Follower(found.0.clone());
    }
    let flight = Arc::new(Flight {
        key,
        outcome: OnceLock::new(),
        settled: tokio::sync::Notify::new(),
    });
    map.insert(InFlight(flight.clone()));
    Role::Leader(Leader {
        flight,
        in_map: true,
        published: std::cell::Cell::new(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The outcome is read without waiting: a flight that was never settled
    // fails the test instead of hanging it.

    /// The flights of one test: keys no other test uses (the map is global).
    fn key(name: &str) -> FlightKey {
        FlightKey::new(0, format!("flight-test:{name}"))
    }

    fn lead(name: &str) -> Leader {
        match join(key(name)) {
            Role::Leader(leader) => leader,
            Role::Follower(_) => panic!("{name}: expected to lead"),
        }
    }

    fn follow(name: &str) -> Arc<Flight> {
        match join(key(name)) {
            Role::Follower(flight) => flight,
            Role::Leader(_) => panic!("{name}: expected to follow"),
        }
    }

    #[test]
    fn followers_get_what_the_leader_publishes() {
        let leader = lead("published");
        let flight = follow("published");
        leader.publish(Some(Arc::new(b"42".to_vec())));
        leader.finish();
        assert!(
            matches!(flight.outcome.get(), Some(Outcome::Done(Some(bytes))) if **bytes == b"42")
        );
        drop(lead("published"));
    }

    #[test]
    fn a_cancelled_leader_abandons_the_flight_and_a_follower_leads() {
        let leader = lead("cancelled");
        let flight = follow("cancelled");
        // What a cancelled call does: its future, and the leader in it, is dropped.
        drop(leader);
        assert!(matches!(flight.outcome.get(), Some(Outcome::Abandoned)));
        drop(lead("cancelled"));
    }

    #[test]
    fn a_leader_that_panics_abandons_the_flight() {
        let leader = lead("panicked");
        let flight = follow("panicked");
        let panicked = std::thread::spawn(move || {
            let _leader = leader;
            panic!("the body panicked");
        })
        .join();
        assert!(panicked.is_err());
        assert!(matches!(flight.outcome.get(), Some(Outcome::Abandoned)));
        drop(lead("panicked"));
    }

    #[test]
    fn two_handles_fly_apart() {
        let leader = lead("handles");
        let other = FlightKey::new(1, "flight-test:handles".to_owned());
        assert!(
            matches!(join(other), Role::Leader(_)),
            "another handle leads its own"
        );
        drop(leader);
    }

    #[test]
    fn a_flight_that_found_a_hit_serves_its_followers_and_leaves() {
        let leader = lead("hit");
        let flight = follow("hit");
        leader.finish_with_hit(b"7");
        assert!(
            matches!(flight.outcome.get(), Some(Outcome::Done(Some(bytes))) if **bytes == b"7")
        );
        drop(lead("hit"));
    }
}

/// The flights under shuttle's scheduler (`--cfg shuttle`, run by
/// `scripts/test.sh`): callers of one key, in the engine's own loop
/// ([`wait_for_turn`](super::engine::wait_for_turn)), one of them perhaps
/// cancelled while it leads. Under every schedule tried: every caller that
/// was not cancelled gets the value (a follower never sleeps through the
/// outcome: shuttle fails a run where every task waits), the body runs
/// once, and the key's flight has left the map at the end.
#[cfg(all(test, shuttle))]
mod interleavings {
    use super::*;
    use crate::codec::Codec;
    use crate::memoize::engine::{Turn, wait_for_turn};
    use crate::sync::primitives::explore;
    use shuttle::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const VALUE: u64 = 42;

    /// One call as the engine makes it: read the store when leading, run
    /// the body on a miss, publish, write the entry, finish.
    async fn call(
        key: FlightKey,
        stored: Arc<Mutex<Option<Vec<u8>>>>,
        runs: Arc<AtomicUsize>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Option<u64> {
        let codec = Codec::default();
        match wait_for_turn::<u64>(key, codec).await {
            Turn::Served(value) => Some(value),
            Turn::RunAlone => panic!("every outcome here is shared"),
            Turn::Lead(leader) => {
                if let Some(cancel) = cancel
                    && !cancel.swap(true, Ordering::SeqCst)
                {
                    // Cancelled while leading: its future, and the leader, dropped.
                    drop(leader);
                    return None;
                }
                let hit = lock(&stored).clone();
                if let Some(bytes) = hit {
                    leader.finish_with_hit(&bytes);
                    return Some(codec.decode(&bytes).expect("what the leader wrote"));
                }
                runs.fetch_add(1, Ordering::SeqCst);
                let bytes = codec.encode(&VALUE).expect("a number encodes");
                leader.publish(Some(Arc::new(bytes.clone())));
                *lock(&stored) = Some(bytes);
                leader.finish();
                Some(VALUE)
            }
        }
    }

    fn callers(count: usize, cancel_one: bool) {
        explore(move || {
            shuttle::future::block_on(async move {
                let key = FlightKey::new(0, "interleavings".to_owned());
                let stored = Arc::new(Mutex::new(None));
                let runs = Arc::new(AtomicUsize::new(0));
                let cancel = cancel_one.then(|| Arc::new(AtomicBool::new(false)));
                let calls: Vec<_> = (0..count)
                    .map(|i| {
                        let cancel = cancel.clone().filter(|_| i == 0);
                        shuttle::future::spawn(call(
                            key.clone(),
                            stored.clone(),
                            runs.clone(),
                            cancel,
                        ))
                    })
                    .collect();
                let mut served = 0;
                for (i, handle) in calls.into_iter().enumerate() {
                    match handle.await.expect("no call panics") {
                        Some(value) => {
                            assert_eq!(value, VALUE);
                            served += 1;
                        }
                        None => {
                            assert!(cancel_one && i == 0, "only the cancelled call has no value")
                        }
                    }
                }
                assert!(served >= count - usize::from(cancel_one));
                assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");
                assert!(
                    lock(shard_of(&key)).get(&key).is_none(),
                    "the flight left the map"
                );
            });
        });
    }

    #[test]
    fn three_callers_share_one_run() {
        callers(3, false);
    }

    #[test]
    fn a_cancelled_leader_hands_the_flight_on() {
        callers(3, true);
    }
}
