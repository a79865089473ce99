//! The counting engine: one atomic store call per batch of concurrent
//! requests with the same key, and an in-process memory of keys already over
//! their limit.
//!
//! **Coalescing.** While a store call for a key is in flight, requests for
//! the same key that arrive meanwhile join one batch; when the call returns,
//! the batch goes to the store as one `incr_window(key, n)`. The total the
//! store returns says exactly which of the n are within the limit
//! ([`count_of`]), so a burst from one client costs one round trip per batch
//! instead of one per request, and admission stays exact across instances.
//!
//! **Local deny cache.** Counts never go down within a window, so once a key
//! reached its limit, every further request in that window is over it: those
//! are rejected without a store call until the window's end.
//!
//! **Bounded by design.** Both maps keyed by client are bounded: a slot lives
//! only while a request of its key is between joining and finishing its
//! batch (the last executor to leave removes it, cancelled or not), and the
//! deny cache holds at most its capacity ([`crate::deny`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cache_core::{Cache, WindowCount};
use serde::Serialize;
use tokio::sync::watch;

use crate::deny::{DEFAULT_CAPACITY, DenyCache};
use crate::window::{Decision, count_of};

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Counted: allowed or not.
    Decided(Decision),
    /// The store failed or timed out: the request was not counted.
    StoreFailed,
}

#[derive(Debug, Clone, Copy)]
enum BatchState {
    Pending,
    Counted { count: WindowCount, size: u64 },
    Failed,
    Abandoned,
}

struct OpenBatch {
    id: u64,
    size: u64,
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

pub(crate) struct Limiter {
    pub(crate) cache: Cache,
    pub(crate) prefix: String,
    pub(crate) limit: u64,
    pub(crate) window: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) local_deny: bool,
    /// Batch concurrent requests per key.
    coalesce: bool,
    pub(crate) counters: Counters,
    slots: Mutex<HashMap<String, Slot>>,
    /// Client keys over their limit, and when their window ends.
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
        position: u64,
    },
}

impl Limiter {
    pub(crate) fn new(
        cache: Cache,
        prefix: String,
        limit: u64,
        window: Duration,
        store_timeout: Duration,
        local_deny: bool,
        coalesce: bool,
    ) -> Self {
        Limiter {
            coalesce,
            cache,
            prefix,
            limit,
            window,
            store_timeout,
            local_deny,
            counters: Counters::default(),
            slots: Mutex::default(),
            denied: DenyCache::new(DEFAULT_CAPACITY),
            next_batch: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// The decision for `client` when the local deny cache already has it
    /// (over its limit for the rest of the window): no store call needed.
    pub(crate) fn check_locally(&self, client: &str) -> Option<Decision> {
        let decision = self.denied_locally(client)?;
        bump(&self.counters.limited_locally);
        Some(decision)
    }

    /// Counts one request of `client` (an already sanitized key) at the store;
    /// [`check_locally`](Self::check_locally) comes first.
    pub(crate) async fn check(&self, client: &str) -> Verdict {
        let key = format!("{}:{client}", self.prefix);
        if !self.coalesce {
            return match self.count(&key, 1).await {
                Some(count) => self.decide(client, count, 1, 0),
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
        loop {
            match self.join(&key) {
                Role::Executor { id, sender, gate } => {
                    // Made before any await: the slot's count of executors
                    // is given back however this request ends.
                    let executor = Executor {
                        limiter: self,
                        key: &key,
                        id,
                        sender,
                        published: false,
                    };
                    return self.execute(client, executor, gate).await;
                }
                Role::Joiner {
                    mut receiver,
                    position,
                } => {
                    let settled = receiver.wait_for(|s| !matches!(s, BatchState::Pending));
                    let state = match tokio::time::timeout_at(deadline, settled).await {
                        Ok(Ok(state)) => *state,
                        Ok(Err(_)) => BatchState::Abandoned,
                        Err(_) => return Verdict::StoreFailed,
                    };
                    match state {
                        BatchState::Counted { count, size } => {
                            return self.decide(client, count, size, position);
                        }
                        BatchState::Failed => return Verdict::StoreFailed,
                        // The executor was cancelled before counting: start over.
                        BatchState::Abandoned | BatchState::Pending => continue,
                    }
                }
            }
        }
    }

    fn join(&self, key: &str) -> Role {
        let mut slots = lock(&self.slots);
        // Look up before inserting: the key is copied only for a new slot.
        if let Some(slot) = slots.get_mut(key) {
            return self.enlist(slot);
        }
        let slot = slots.entry(key.to_string()).or_insert_with(|| Slot {
            open: None,
            gate: Arc::default(),
            executors: 0,
        });
        self.enlist(slot)
    }

    /// Joins the open batch of `slot`, or opens one and becomes its executor.
    fn enlist(&self, slot: &mut Slot) -> Role {
        if let Some(open) = &mut slot.open {
            let position = open.size;
            open.size += 1;
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
            size: 1,
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
        executor: Executor<'_>,
        gate: Arc<tokio::sync::Mutex<()>>,
    ) -> Verdict {
        let (key, id) = (executor.key, executor.id);
        // Held by the batch at the store, for at most its store timeout.
        let permit = gate.lock().await;
        // Close the batch: later arrivals start the next one.
        let size = self.close_batch(key, id);
        let verdict = match self.count(key, size).await {
            Some(count) => {
                executor.publish(BatchState::Counted { count, size });
                self.decide(client, count, size, 0)
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
    /// next one; returns its size.
    fn close_batch(&self, key: &str, id: u64) -> u64 {
        let mut slots = lock(&self.slots);
        slots
            .get_mut(key)
            .and_then(|slot| slot.open.take_if(|open| open.id == id))
            .map_or(1, |open| open.size)
    }

    /// One store call adding `size` to `key`, within the store timeout;
    /// `None` when it failed or timed out.
    async fn count(&self, key: &str, size: u64) -> Option<WindowCount> {
        bump(&self.counters.store_calls);
        // The handle enforces the timeout: a hanging store then counts as
        // failing for its circuit breaker, which stops calling it.
        match self
            .cache
            .incr_window_within(key, size, self.window, self.store_timeout)
            .await
        {
            Ok(count) => {
                self.note_store(None);
                Some(count)
            }
            Err(err) => {
                self.note_store(Some(&err.to_string()));
                None
            }
        }
    }

    fn decide(&self, client: &str, count: WindowCount, size: u64, position: u64) -> Verdict {
        let decision = Decision::for_count(
            count_of(count.count, size, position),
            self.limit,
            count.reset_after,
        );
        if decision.remaining == 0 && self.local_deny {
            self.remember_denied(client, count.reset_after);
        }
        Verdict::Decided(decision)
    }

    fn remember_denied(&self, key: &str, reset_after: Duration) {
        let now = Instant::now();
        self.denied.insert(key, now + reset_after, now);
    }

    fn denied_locally(&self, key: &str) -> Option<Decision> {
        if !self.local_deny {
            return None;
        }
        let now = Instant::now();
        let until = self.denied.get(key, now)?;
        Some(Decision {
            allowed: false,
            limit: self.limit,
            remaining: 0,
            reset_after: until - now,
        })
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
        Limiter::new(
            Cache::in_memory(),
            "test".into(),
            limit,
            Duration::from_secs(60),
            Duration::from_secs(1),
            true,
            true,
        )
    }

    /// What the layer does: the local deny cache, then the store.
    async fn decide(limiter: &Limiter, client: &str) -> Verdict {
        match limiter.check_locally(client) {
            Some(decision) => Verdict::Decided(decision),
            None => limiter.check(client).await,
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
