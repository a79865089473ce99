//! The counting engine: one atomic store call per batch of concurrent
//! requests of one client, evaluating every policy, and an in-process memory
//! of clients known to be rejected.
//!
//! **Coalescing.** While a store call for a client is in flight, its
//! requests that arrive meanwhile join one batch; when the call returns, the
//! batch goes to the store as one call carrying each request's cost. The
//! store evaluates them in order, exactly as if each had come alone
//! ([`window::evaluate`]), and answers per request: a burst from one client
//! costs one round trip per batch, and admission stays exact across
//! instances, for every algorithm.
//!
//! **Local deny cache.** The store says how long a client is sure to be
//! rejected (until a request of cost 1 would pass every policy: the window's
//! end for the fixed window, when enough of the previous window slid out
//! for the sliding one, when the TAT allows for GCRA). States only fill up
//! through admissions, and none happens in that time, so those requests are
//! rejected without a store call.
//!
//! **Bounded by design.** Both maps keyed by client are bounded: a slot lives
//! only while a request of its key is between joining and finishing its
//! batch (the last executor to leave removes it, cancelled or not), and the
//! deny cache holds at most its capacity ([`crate::deny`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cache_core::Cache;
use serde::Serialize;
use tokio::sync::watch;

use crate::clock::{Clock, now_micros};
use crate::deny::{DEFAULT_CAPACITY, DenyCache};
use crate::quota::Quota;
use crate::store::memory::MemoryLimits;
use crate::window::{self, Decision, Outcome};

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Counted: allowed or not.
    Decided(Decision),
    /// The request costs more than the whole quota of this policy: it can
    /// never pass, and was not sent to the store.
    TooCostly { policy: usize },
    /// The store failed or timed out: the request was not counted.
    StoreFailed,
}

#[derive(Debug, Clone)]
enum BatchState {
    Pending,
    Counted(Arc<[Outcome]>),
    Failed,
    Abandoned,
}

struct OpenBatch {
    id: u64,
    costs: Vec<u64>,
    sender: Arc<watch::Sender<BatchState>>,
}

struct Slot {
    /// The batch still taking requests, if any.
    open: Option<OpenBatch>,
    /// Held while a batch of this key is at the store: one call per key at a time.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Executors that enlisted here and have not finished (or been dropped):
    /// the slot is removed when the last one leaves with no batch open.
    executors: usize,
}

/// A snapshot of a layer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RateLimitStats {
    /// Requests let through within the limit.
    pub allowed: u64,
    /// Requests rejected (429), the locally rejected ones included.
    pub limited: u64,
    /// Rejected from the local deny cache, without a store call.
    pub limited_locally: u64,
    /// Over the limit in shadow mode: counted, let through.
    pub shadow_limited: u64,
    /// Requests whose count failed (store down, slow or breaker open).
    pub store_errors: u64,
    /// Store calls made (each may count many coalesced requests).
    pub store_calls: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) allowed: AtomicU64,
    pub(crate) limited: AtomicU64,
    pub(crate) limited_locally: AtomicU64,
    pub(crate) shadow_limited: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) store_calls: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RateLimitStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RateLimitStats {
            allowed: load(&self.allowed),
            limited: load(&self.limited),
            limited_locally: load(&self.limited_locally),
            shadow_limited: load(&self.shadow_limited),
            store_errors: load(&self.store_errors),
            store_calls: load(&self.store_calls),
        }
    }
}

/// A named [`Quota`] of a layer.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) name: String,
    pub(crate) quota: Quota,
}

/// How the limiter counts; settled by the builder.
pub(crate) struct LimiterConfig {
    pub(crate) cache: Cache,
    pub(crate) prefix: String,
    pub(crate) policies: Vec<Policy>,
    pub(crate) store_timeout: Duration,
    pub(crate) local_deny: bool,
    pub(crate) coalesce: bool,
    /// The clock given to the builder, if any: then the Redis scripts take
    /// "now" from it too, instead of Redis' `TIME`, if it
    /// [is authoritative](Clock::is_authoritative).
    pub(crate) clock: Option<Arc<dyn Clock>>,
}

pub(crate) struct Limiter {
    pub(crate) cache: Cache,
    pub(crate) prefix: String,
    pub(crate) policies: Vec<Policy>,
    quotas: Vec<Quota>,
    pub(crate) store_timeout: Duration,
    pub(crate) local_deny: bool,
    /// Batch concurrent requests per key.
    coalesce: bool,
    clock: Arc<dyn Clock>,
    /// Send the clock's time to Redis (an authoritative clock was set).
    send_now: bool,
    /// The in-memory backend's states; `None` on Redis.
    memory: Option<Arc<MemoryLimits>>,
    pub(crate) counters: Counters,
    slots: Mutex<HashMap<String, Slot>>,
    /// Client keys known to be rejected, until when, and by which policy.
    denied: DenyCache,
    next_batch: AtomicU64,
    failing: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single map operations: a poisoned map is consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The executor's claim on its batch and its slot. If dropped before
/// publishing (the request was cancelled), the batch is closed and its
/// joiners start over. Published or not, dropping it releases the slot: the
/// last executor of a key removes it, so cancelled requests leave nothing.
struct Executor<'a> {
    limiter: &'a Limiter,
    key: &'a str,
    id: u64,
    sender: Arc<watch::Sender<BatchState>>,
    published: bool,
}

impl Executor<'_> {
    fn publish(mut self, state: BatchState) {
        self.published = true;
        let _ = self.sender.send(state);
    }
}

impl Drop for Executor<'_> {
    fn drop(&mut self) {
        let mut slots = lock(&self.limiter.slots);
        if let Some(slot) = slots.get_mut(self.key) {
            if !self.published && slot.open.as_ref().is_some_and(|open| open.id == self.id) {
                slot.open = None;
            }
            slot.executors = slot.executors.saturating_sub(1);
            // Enlisting happens under this lock too: nobody can be joining
            // between this check and the removal.
            if slot.executors == 0 && slot.open.is_none() {
                slots.remove(self.key);
            }
        }
        drop(slots);
        if !self.published {
            let _ = self.sender.send(BatchState::Abandoned);
        }
    }
}

enum Role {
    Executor {
        id: u64,
        sender: Arc<watch::Sender<BatchState>>,
        gate: Arc<tokio::sync::Mutex<()>>,
    },
    Joiner {
        receiver: watch::Receiver<BatchState>,
        position: usize,
    },
}

impl Limiter {
    pub(crate) fn new(config: LimiterConfig) -> Self {
        let memory = (*config.cache.backend() == cache_core::Backend::Memory)
            .then(|| config.cache.shared_state::<MemoryLimits>());
        Limiter {
            quotas: config.policies.iter().map(|p| p.quota).collect(),
            send_now: config.clock.as_ref().is_some_and(|c| c.is_authoritative()),
            clock: config
                .clock
                .unwrap_or_else(|| Arc::new(crate::clock::SystemClock)),
            memory,
            coalesce: config.coalesce,
            cache: config.cache,
            prefix: config.prefix,
            policies: config.policies,
            store_timeout: config.store_timeout,
            local_deny: config.local_deny,
            counters: Counters::default(),
            slots: Mutex::default(),
            denied: DenyCache::new(DEFAULT_CAPACITY),
            next_batch: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// The store keys of `client`: `{prefix}:{client}` for one policy; with
    /// several, `{prefix}:{{client}}:{policy}`, one hash tag so that a
    /// cluster keeps them on one slot (one script call reads them all).
    pub(crate) fn keys(&self, client: &str) -> Vec<String> {
        if let [_] = self.policies.as_slice() {
            return vec![format!("{}:{client}", self.prefix)];
        }
        self.policies
            .iter()
            .map(|policy| format!("{}:{{{client}}}:{}", self.prefix, policy.name))
            .collect()
    }

    /// The first policy whose whole limit is below `cost`: a request that
    /// can never pass.
    pub(crate) fn too_costly(&self, cost: u64) -> Option<usize> {
        self.quotas.iter().position(|q| cost > q.limit())
    }

    /// The decision for `client` when the local deny cache already has it
    /// (rejected for a while yet): no store call needed.
    pub(crate) fn check_locally(&self, client: &str) -> Option<Decision> {
        let decision = self.denied_locally(client)?;
        bump(&self.counters.limited_locally);
        Some(decision)
    }

    /// Counts one request of `client` (an already sanitized key) costing
    /// `cost` at the store; [`check_locally`](Self::check_locally) comes first.
    pub(crate) async fn check(&self, client: &str, cost: u64) -> Verdict {
        if let Some(policy) = self.too_costly(cost) {
            return Verdict::TooCostly { policy };
        }
        let keys = self.keys(client);
        if !self.coalesce {
            let sent = now_micros(self.clock.as_ref());
            return match self.count(&keys, &[cost]).await {
                Some(outcomes) => self.decide(client, &outcomes, 0, sent),
                None => Verdict::StoreFailed,
            };
        }
        // A batch waits for the one at the store (at most one store timeout),
        // then makes its own call (another): the bound on any request's wait,
        // even when executors keep being cancelled and batches start over.
        // Saturating: `store_timeout(Duration::MAX)` must not panic every request.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(self.store_timeout.saturating_mul(2))
            .unwrap_or_else(|| now + cache_core::MAX_WINDOW);
        let slot_key = &keys[0];
        loop {
            // Before the batch goes to the store (it closes when sent).
            let joined = now_micros(self.clock.as_ref());
            match self.join(slot_key, cost) {
                Role::Executor { id, sender, gate } => {
                    // Made before any await: the slot's count of executors
                    // is given back however this request ends.
                    let executor = Executor {
                        limiter: self,
                        key: slot_key,
                        id,
                        sender,
                        published: false,
                    };
                    return self.execute(client, &keys, executor, gate).await;
                }
                Role::Joiner {
                    mut receiver,
                    position,
                } => {
                    let settled = receiver.wait_for(|s| !matches!(s, BatchState::Pending));
                    let state = match tokio::time::timeout_at(deadline, settled).await {
                        Ok(Ok(state)) => state.clone(),
                        Ok(Err(_)) => BatchState::Abandoned,
                        Err(_) => return Verdict::StoreFailed,
                    };
                    match state {
                        BatchState::Counted(outcomes) => {
                            return self.decide(client, &outcomes, position, joined);
                        }
                        BatchState::Failed => return Verdict::StoreFailed,
                        // The executor was cancelled before counting: start over.
                        BatchState::Abandoned | BatchState::Pending => continue,
                    }
                }
            }
        }
    }

    fn join(&self, key: &str, cost: u64) -> Role {
        let mut slots = lock(&self.slots);
        // Look up before inserting: the key is copied only for a new slot.
        if let Some(slot) = slots.get_mut(key) {
            return self.enlist(slot, cost);
        }
        let slot = slots.entry(key.to_string()).or_insert_with(|| Slot {
            open: None,
            gate: Arc::default(),
            executors: 0,
        });
        self.enlist(slot, cost)
    }

    /// Joins the open batch of `slot`, or opens one and becomes its executor.
    fn enlist(&self, slot: &mut Slot, cost: u64) -> Role {
        if let Some(open) = &mut slot.open {
            let position = open.costs.len();
            open.costs.push(cost);
            return Role::Joiner {
                receiver: open.sender.subscribe(),
                position,
            };
        }
        let id = self.next_batch.fetch_add(1, Ordering::Relaxed);
        let sender = Arc::new(watch::channel(BatchState::Pending).0);
        // Given back by the `Executor` that `check` makes of this role.
        slot.executors += 1;
        slot.open = Some(OpenBatch {
            id,
            costs: vec![cost],
            sender: sender.clone(),
        });
        Role::Executor {
            id,
            sender,
            gate: slot.gate.clone(),
        }
    }

    async fn execute(
        &self,
        client: &str,
        keys: &[String],
        executor: Executor<'_>,
        gate: Arc<tokio::sync::Mutex<()>>,
    ) -> Verdict {
        let (key, id) = (executor.key, executor.id);
        // Held by the batch at the store, for at most its store timeout.
        let permit = gate.lock().await;
        // Close the batch: later arrivals start the next one.
        let costs = self.close_batch(key, id);
        let sent = now_micros(self.clock.as_ref());
        let verdict = match self.count(keys, &costs).await {
            Some(outcomes) => {
                let outcomes: Arc<[Outcome]> = outcomes.into();
                executor.publish(BatchState::Counted(outcomes.clone()));
                self.decide(client, &outcomes, 0, sent)
            }
            None => {
                executor.publish(BatchState::Failed);
                Verdict::StoreFailed
            }
        };
        drop(permit);
        verdict
    }

    /// Takes batch `id` of `key` out of the slot, so later arrivals start the
    /// next one; returns its costs, in arrival order.
    fn close_batch(&self, key: &str, id: u64) -> Vec<u64> {
        let mut slots = lock(&self.slots);
        slots
            .get_mut(key)
            .and_then(|slot| slot.open.take_if(|open| open.id == id))
            .map_or_else(|| vec![1], |open| open.costs)
    }

    /// One store call evaluating requests of `costs` against every policy;
    /// `None` when it failed or timed out.
    async fn count(&self, keys: &[String], costs: &[u64]) -> Option<Vec<Outcome>> {
        bump(&self.counters.store_calls);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let rows = match &self.memory {
            Some(memory) => {
                let now = now_micros(self.clock.as_ref());
                // The namespace keeps handles with different ones apart, as on Redis.
                let full: Vec<String> = keys
                    .iter()
                    .map(|k| self.cache.full_key(k).into_owned())
                    .collect();
                let full: Vec<&str> = full.iter().map(String::as_str).collect();
                Ok(memory.evaluate(&full, &self.quotas, now, costs))
            }
            None => {
                // The handle enforces the timeout: a hanging store then
                // counts as failing for its circuit breaker, which stops calling it.
                let now = self.send_now.then(|| now_micros(self.clock.as_ref()));
                crate::store::redis::evaluate(
                    &self.cache,
                    &keys,
                    now,
                    &self.quotas,
                    costs,
                    self.store_timeout,
                )
                .await
            }
        };
        let outcomes = rows.map_err(|err| err.to_string()).and_then(|rows| {
            let len = window::row_len(self.quotas.len());
            if rows.len() != len * costs.len() {
                return Err(format!(
                    "the store answered {} numbers for {} requests",
                    rows.len(),
                    costs.len()
                ));
            }
            rows.chunks(len)
                .map(|row| window::outcome(&self.quotas, row))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| "the store's answer is malformed".to_string())
        });
        match outcomes {
            Ok(outcomes) => {
                self.note_store(None);
                Some(outcomes)
            }
            Err(err) => {
                self.note_store(Some(&err));
                None
            }
        }
    }

    /// The verdict for the request at `position` of a batch sent to the store
    /// at `sent` (µs, or earlier): the local deny cache counts the store's
    /// "blocked" from then, so it never outlasts the store's own verdict.
    fn decide(&self, client: &str, outcomes: &[Outcome], position: usize, sent: u64) -> Verdict {
        let Some(outcome) = outcomes.get(position) else {
            return Verdict::StoreFailed;
        };
        // The last of a batch knows the state after all of them.
        if self.local_deny
            && let Some(last) = outcomes.last()
            && !last.blocked.is_zero()
            && last.blocked != Duration::MAX
        {
            let now = now_micros(self.clock.as_ref());
            let blocked = u64::try_from(last.blocked.as_micros()).unwrap_or(u64::MAX);
            let policy = last.decision.policy;
            self.denied
                .insert(client, sent.saturating_add(blocked), policy, now);
        }
        Verdict::Decided(outcome.decision)
    }

    fn denied_locally(&self, key: &str) -> Option<Decision> {
        if !self.local_deny {
            return None;
        }
        let now = now_micros(self.clock.as_ref());
        let (until, policy) = self.denied.get(key, now)?;
        let limit = self.quotas.get(policy).map_or(0, Quota::limit);
        Some(Decision::denied_for(
            limit,
            policy,
            Duration::from_micros(until - now),
        ))
    }

    /// Clients tracked in memory: (coalescing slots, deny cache entries).
    pub(crate) fn tracked_clients(&self) -> (usize, usize) {
        (lock(&self.slots).len(), self.denied.len())
    }

    /// Logs once per change between a working and a failing store.
    fn note_store(&self, error: Option<&str>) {
        match error {
            Some(error) => {
                bump(&self.counters.store_errors);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(prefix = %self.prefix, error, "rate limiter store unavailable");
                }
            }
            None => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(prefix = %self.prefix, "rate limiter store available again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: u64) -> Limiter {
        Limiter::new(LimiterConfig {
            cache: Cache::in_memory(),
            prefix: "test".into(),
            policies: vec![Policy {
                name: "test".into(),
                quota: Quota::new(limit, Duration::from_secs(60)),
            }],
            store_timeout: Duration::from_secs(1),
            local_deny: true,
            coalesce: true,
            clock: None,
        })
    }

    /// What the layer does: the local deny cache, then the store.
    async fn decide(limiter: &Limiter, client: &str) -> Verdict {
        match limiter.check_locally(client) {
            Some(decision) => Verdict::Decided(decision),
            None => limiter.check(client, 1).await,
        }
    }

    #[tokio::test]
    async fn counts_up_to_the_limit_then_denies_locally() {
        let limiter = limiter(3);
        for remaining in [2, 1, 0] {
            let Verdict::Decided(d) = decide(&limiter, "ip:1").await else {
                panic!("store failed");
            };
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
        }
        let Verdict::Decided(d) = decide(&limiter, "ip:1").await else {
            panic!("store failed");
        };
        assert!(!d.allowed);
        assert!(d.reset_after > Duration::from_secs(58));
        let stats = limiter.counters.snapshot();
        assert_eq!(stats.store_calls, 3, "the fourth was denied locally");
        assert_eq!(stats.limited_locally, 1);
    }

    /// A clock that moves 5 ms after every read while armed: time passes
    /// during the store call.
    struct Ticking {
        manual: crate::ManualClock,
        armed: Arc<AtomicBool>,
    }

    impl Clock for Ticking {
        fn now(&self) -> Duration {
            let now = self.manual.now();
            if self.armed.load(Ordering::Relaxed) {
                self.manual.advance(Duration::from_millis(5));
            }
            now
        }
    }

    /// The deny cache counts the store's "blocked" from before the call:
    /// at the window's end (the store admits again) it no longer rejects.
    #[tokio::test]
    async fn the_deny_cache_ends_no_later_than_the_stores_verdict() {
        for coalesce in [false, true] {
            let manual = crate::ManualClock::new();
            let armed = Arc::new(AtomicBool::new(true));
            let limiter = Limiter::new(LimiterConfig {
                cache: Cache::in_memory(),
                prefix: "test".into(),
                policies: vec![Policy {
                    name: "test".into(),
                    quota: Quota::new(1, Duration::from_secs(60)),
                }],
                store_timeout: Duration::from_secs(1),
                local_deny: true,
                coalesce,
                clock: Some(Arc::new(Ticking {
                    manual: manual.clone(),
                    armed: armed.clone(),
                })),
            });
            let Verdict::Decided(first) = limiter.check("ip:1", 1).await else {
                panic!("store failed");
            };
            assert!(first.allowed);
            armed.store(false, Ordering::Relaxed);
            let key = limiter.cache.full_key("test:ip:1").into_owned();
            let memory = limiter.memory.clone().unwrap();
            let now_ms = now_micros(&manual) / 1000;
            let (_, window_end_ms) = memory.peek(&key, now_ms).unwrap();
            manual.advance(Duration::from_millis(window_end_ms) - manual.now());
            assert_eq!(limiter.check_locally("ip:1"), None, "coalesce {coalesce}");
            let Verdict::Decided(again) = limiter.check("ip:1", 1).await else {
                panic!("store failed");
            };
            assert!(again.allowed, "the store admits at the window's end");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_are_coalesced_and_admission_is_exact() {
        let limiter = Arc::new(limiter(50));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { decide(&limiter, "ip:2").await })
            })
            .collect();
        let mut allowed = 0;
        for task in tasks {
            if let Verdict::Decided(d) = task.await.unwrap()
                && d.allowed
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 50);
        assert!(
            limiter.slots.lock().unwrap().is_empty(),
            "slots are cleaned up"
        );
    }
}
