//! The counting engine: one atomic store call per batch of concurrent
//! requests, evaluating every policy, and an in-process memory of clients
//! known to be rejected.
//!
//! **Batching (Redis).** A request to count goes into the limiter's queue; a
//! task of the limiter (the batcher) takes whatever has queued up, at most
//! [`MAX_BATCH`] requests, and sends it as one script call carrying every
//! client's keys and costs ("group commit"). Nothing waits for a timer: a
//! request arriving while no call is in flight and nothing is queued makes
//! its call itself, at once (no hop through the batcher); those arriving
//! while one is in flight go together in the next, as soon as it returns.
//! One call of a limiter is in flight at a time: measured with 10 000
//! clients, two in flight made smaller batches and woke the batcher for
//! every arriving request, for more CPU per request. The script evaluates each client's
//! requests in order, exactly as if each had come alone
//! ([`window::evaluate`]), and answers per request: admission stays exact
//! across instances, for every algorithm, and concurrent requests of one
//! client fold into one evaluation of its keys for free. On a Redis Cluster,
//! keys of different clients live on different slots: the batcher makes one
//! call per client of a batch, concurrently.
//!
//! **In-memory store.** No queue: a check is a function call on the
//! in-process states.
//!
//! **Local deny cache.** The store says how long a client is sure to be
//! rejected (until a request of cost 1 would pass every policy: the window's
//! end for the fixed window, when enough of the previous window slid out
//! for the sliding one, when the TAT allows for GCRA). States only fill up
//! through admissions, and none happens in that time, so those requests are
//! rejected without a store call.
//!
//! **Bounded by design.** The queue holds at most [`QUEUE`] requests (a
//! request finding it full is a store failure, under the layer's fail mode),
//! one call is at the store at a time, for at most the store timeout, and the deny cache holds at most its capacity
//! ([`crate::deny`]). A request cancelled before its batch is sent is not
//! sent.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cache_core::Cache;
use cache_core::sync::{StateFlag, StripedCounters};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, now_micros};
use crate::deny::{DEFAULT_CAPACITY, DenyCache};
use crate::quota::Quota;
use crate::store::memory::MemoryLimits;
use crate::telemetry;
use crate::window::{self, Decision, Outcome};

/// Requests in one script call, at most.
pub(crate) const MAX_BATCH: usize = 128;
/// Requests waiting for a batch, at most.
pub(crate) const QUEUE: usize = 4096;

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

/// A snapshot of a layer's counters.
///
/// New counters may be added: read it, do not build it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
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
    /// Store calls made (each may count many batched requests).
    pub store_calls: u64,
}

/// The layer's counters: every request writes one, so they are striped
/// per thread as the cache's are.
#[derive(Debug, Default)]
pub(crate) struct Counters(StripedCounters<{ Count::StoreCalls as usize + 1 }>);

/// One of the layer's counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Allowed,
    Limited,
    LimitedLocally,
    ShadowLimited,
    StoreErrors,
    StoreCalls,
}

impl Counters {
    pub(crate) fn add(&self, count: Count) {
        self.0.add(count as usize);
    }

    pub(crate) fn snapshot(&self) -> RateLimitStats {
        let sum = |count: Count| self.0.sum(count as usize);
        RateLimitStats {
            allowed: sum(Count::Allowed),
            limited: sum(Count::Limited),
            limited_locally: sum(Count::LimitedLocally),
            shadow_limited: sum(Count::ShadowLimited),
            store_errors: sum(Count::StoreErrors),
            store_calls: sum(Count::StoreCalls),
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
    core: Arc<Core>,
    /// Batch concurrent requests (Redis only).
    coalesce: bool,
    /// The batcher's queue, made by the first request to be batched.
    batcher: OnceLock<mpsc::Sender<Request>>,
}

/// What the limiter and its batcher share.
pub(crate) struct Core {
    pub(crate) cache: Cache,
    pub(crate) prefix: String,
    /// What the store keys start with: the prefix, on the in-memory store
    /// behind the handle's namespace (Redis handles add it themselves).
    key_prefix: String,
    pub(crate) policies: Vec<Policy>,
    quotas: Vec<Quota>,
    pub(crate) store_timeout: Duration,
    pub(crate) local_deny: bool,
    clock: Arc<dyn Clock>,
    /// Send the clock's time to Redis (an authoritative clock was set).
    send_now: bool,
    /// The in-memory backend's states; `None` on Redis.
    memory: Option<Arc<MemoryLimits>>,
    /// Keys of different clients cannot share a script call.
    cluster: bool,
    pub(crate) counters: Counters,
    /// Client keys known to be rejected, until when, and by which policy.
    denied: DenyCache,
    /// Requests between entering the queue and getting (or giving up) their answer.
    waiting: AtomicUsize,
    /// A call of this limiter is at Redis: the next waits, batched.
    busy: AtomicBool,
    /// Signalled when `busy` is released.
    idle: tokio::sync::Notify,
    /// The store is failing: logged once per change.
    failing: StateFlag,
}

impl Deref for Limiter {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// One request for the batcher.
struct Request {
    client: String,
    cost: u64,
    reply: oneshot::Sender<Verdict>,
}

/// Counts a request as waiting for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Counts one more, and says whether it is the only one.
    fn enter(count: &'a AtomicUsize) -> (Self, bool) {
        let before = count.fetch_add(1, Ordering::Relaxed);
        (Waiting(count), before == 0)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    pub(crate) fn new(config: LimiterConfig) -> Self {
        let backend = config.cache.backend();
        let memory = (*backend == cache_core::Backend::Memory)
            .then(|| config.cache.shared_state::<MemoryLimits>());
        let cluster = matches!(backend, cache_core::Backend::Cluster(_));
        Limiter {
            core: Arc::new(Core {
                quotas: config.policies.iter().map(|p| p.quota).collect(),
                send_now: config.clock.as_ref().is_some_and(|c| c.is_authoritative()),
                clock: config
                    .clock
                    .unwrap_or_else(|| Arc::new(crate::clock::SystemClock)),
                key_prefix: match memory {
                    Some(_) => config.cache.full_key(&config.prefix).into_owned(),
                    None => config.prefix.clone(),
                },
                memory,
                cluster,
                cache: config.cache,
                prefix: config.prefix,
                policies: config.policies,
                store_timeout: config.store_timeout,
                local_deny: config.local_deny,
                counters: Counters::default(),
                denied: DenyCache::new(DEFAULT_CAPACITY),
                waiting: AtomicUsize::new(0),
                busy: AtomicBool::new(false),
                idle: tokio::sync::Notify::new(),
                failing: StateFlag::new(),
            }),
            coalesce: config.coalesce,
            batcher: OnceLock::new(),
        }
    }

    /// Counts one request of `client` (an already sanitized key) costing
    /// `cost` at the store; [`check_locally`](Core::check_locally) comes first.
    pub(crate) async fn check(&self, client: String, cost: u64) -> Verdict {
        if let Some(policy) = self.too_costly(cost) {
            return Verdict::TooCostly { policy };
        }
        let queue = match self.queue() {
            Some(queue) => queue,
            None => return self.core.count_one(&client, cost).await,
        };
        let (_waiting, alone) = Waiting::enter(&self.waiting);
        // No other request waiting (none queued, none held by the batcher,
        // none in flight): nothing to fold with, and nobody overtaken.
        if alone && let Some(busy) = self.try_acquire() {
            let verdict = self.core.count_one(&client, cost).await;
            drop(busy);
            return verdict;
        }
        // Its batch waits for a call at the store to end (at most one store
        // timeout), then makes its own (another): the bound on the wait.
        // Saturating: `store_timeout(Duration::MAX)` must not panic every request.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(self.store_timeout.saturating_mul(2))
            .unwrap_or_else(|| now + cache_core::MAX_WINDOW);
        let (reply, answer) = oneshot::channel();
        match queue.try_send(Request {
            client,
            cost,
            reply,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.note_store(Some("too many requests waiting for the store"));
                return Verdict::StoreFailed;
            }
            // The batcher's runtime is gone: count this one alone.
            Err(mpsc::error::TrySendError::Closed(request)) => {
                return self.core.count_one(&request.client, request.cost).await;
            }
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(verdict)) => verdict,
            _ => Verdict::StoreFailed,
        }
    }

    /// The batcher's queue, the batcher started by the first call; `None`
    /// when requests are not batched (in-memory store, coalescing off, no
    /// Tokio runtime to run the batcher on).
    fn queue(&self) -> Option<&mpsc::Sender<Request>> {
        if !self.coalesce || self.memory.is_some() {
            return None;
        }
        if let Some(queue) = self.batcher.get() {
            return Some(queue);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.batcher.get_or_init(|| {
            let (queue, requests) = mpsc::channel(QUEUE);
            runtime.spawn(batcher(self.core.clone(), requests));
            queue
        }))
    }

    /// Clients tracked in memory: (requests waiting for the store, deny
    /// cache entries).
    pub(crate) fn tracked_clients(&self) -> (usize, usize) {
        (self.waiting.load(Ordering::Relaxed), self.denied.len())
    }
}

/// Sends what queued up as one batch once no call of the limiter is in
/// flight, until the limiter is dropped.
async fn batcher(core: Arc<Core>, mut requests: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let busy = core.acquire().await;
        // What arrived while the call in flight was at the store.
        while batch.len() < MAX_BATCH
            && let Ok(request) = requests.try_recv()
        {
            batch.push(request);
        }
        core.send(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH)))
            .await;
        drop(busy);
    }
}

/// The limiter's one call in flight; released when dropped.
struct Busy<'a>(&'a Core);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
        self.0.idle.notify_one();
    }
}

impl Core {
    fn try_acquire(&self) -> Option<Busy<'_>> {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Busy(self))
    }

    /// Waits until no call of the limiter is in flight, and claims the next.
    async fn acquire(&self) -> Busy<'_> {
        loop {
            if let Some(busy) = self.try_acquire() {
                return busy;
            }
            // A release before this wait leaves a permit: no lost wake-up.
            self.idle.notified().await;
        }
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
        self.counters.add(Count::LimitedLocally);
        Some(decision)
    }

    /// Appends the store keys of `client` to `text`, and where each ends to
    /// `ends`: `{prefix}:{client}` for one policy; with several,
    /// `{prefix}:{{client}}:{policy}`, one hash tag so that a cluster keeps
    /// them on one slot (one script call reads them all). One string for
    /// every key of a call: no allocation per key.
    fn push_keys(&self, client: &str, text: &mut String, ends: &mut Vec<usize>) {
        let prefix = self.key_prefix.as_str();
        if let [_] = self.policies.as_slice() {
            text.extend([prefix, ":", client]);
            ends.push(text.len());
            return;
        }
        for policy in &self.policies {
            text.extend([prefix, ":{", client, "}:", policy.name.as_str()]);
            ends.push(text.len());
        }
    }

    /// One request counted alone.
    async fn count_one(&self, client: &str, cost: u64) -> Verdict {
        let mut text = String::with_capacity(
            (self.key_prefix.len() + client.len() + 16) * self.policies.len(),
        );
        // One policy (the common case): one key, no list of them.
        let mut ends = Vec::new();
        if let [_] = self.policies.as_slice() {
            text.extend([self.key_prefix.as_str(), ":", client]);
        } else {
            self.push_keys(client, &mut text, &mut ends);
        }
        let one = [text.as_str()];
        let many;
        let keys: &[&str] = if ends.is_empty() {
            &one
        } else {
            many = split_keys(&text, &ends);
            &many
        };
        let sent = now_micros(self.clock.as_ref());
        let call = telemetry::StoreCall::start();
        let rows = match &self.memory {
            Some(memory) => {
                self.counters.add(Count::StoreCalls);
                Ok(memory.evaluate(keys, &self.quotas, sent, &[cost]))
            }
            None => {
                let mut args = self.script_args();
                args.extend([1, int(cost)]);
                self.counters.add(Count::StoreCalls);
                crate::store::redis::evaluate(&self.cache, keys, &args, self.store_timeout).await
            }
        };
        let rows = call.finish(rows);
        match self.outcome(rows) {
            Some(outcome) => {
                self.note_denied(client, std::slice::from_ref(&outcome), sent);
                Verdict::Decided(outcome.decision)
            }
            None => Verdict::StoreFailed,
        }
    }

    /// The script's arguments before the clients'.
    fn script_args(&self) -> Vec<i64> {
        let now = self.send_now.then(|| now_micros(self.clock.as_ref()));
        crate::store::redis::args(now, &self.quotas, &[])
    }

    /// Counts a batch: one script call (one per client on a cluster).
    async fn send(&self, mut batch: Vec<Request>) {
        // Cancelled before being sent: not counted.
        batch.retain(|request| !request.reply.is_closed());
        // Each client's requests together, in arrival order (a stable sort).
        batch.sort_by(|a, b| a.client.cmp(&b.client));
        if !self.cluster {
            return self.send_clients(batch).await;
        }
        let mut calls = FuturesUnordered::new();
        while !batch.is_empty() {
            let same = batch
                .iter()
                .skip(1)
                .take_while(|request| request.client == batch[0].client)
                .count();
            let rest = batch.split_off(same + 1);
            calls.push(self.send_clients(std::mem::replace(&mut batch, rest)));
        }
        while calls.next().await.is_some() {}
    }

    /// One script call for `batch` (sorted by client), and the answers.
    async fn send_clients(&self, batch: Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        let mut text = String::with_capacity(batch.len() * (self.key_prefix.len() + 24));
        let mut ends = Vec::with_capacity(batch.len() * self.policies.len());
        let mut args = self.script_args();
        args.reserve(2 * batch.len());
        for run in client_runs(&batch) {
            self.push_keys(&batch[run.start].client, &mut text, &mut ends);
            args.push(int(run.len() as u64));
            args.extend(batch[run].iter().map(|request| int(request.cost)));
        }
        let sent = now_micros(self.clock.as_ref());
        let keys = split_keys(&text, &ends);
        let Some(outcomes) = self.count(&keys, &args, batch.len()).await else {
            for request in batch {
                let _ = request.reply.send(Verdict::StoreFailed);
            }
            return;
        };
        for run in client_runs(&batch) {
            self.note_denied(&batch[run.start].client, &outcomes[run], sent);
        }
        for (request, outcome) in batch.into_iter().zip(outcomes) {
            let _ = request.reply.send(Verdict::Decided(outcome.decision));
        }
    }

    /// One script call on Redis; the outcome of each of its `requests`
    /// requests, `None` when it failed or timed out.
    async fn count(&self, keys: &[&str], args: &[i64], requests: usize) -> Option<Vec<Outcome>> {
        self.counters.add(Count::StoreCalls);
        // The handle enforces the timeout: a hanging store then counts as
        // failing for its circuit breaker, which stops calling it.
        let call = telemetry::StoreCall::start();
        let rows = crate::store::redis::evaluate(&self.cache, keys, args, self.store_timeout).await;
        let rows = call.finish(rows);
        self.outcomes(rows, requests)
    }

    /// Reads the store's answer for one request.
    fn outcome(&self, rows: cache_core::Result<Vec<i64>>) -> Option<Outcome> {
        let outcome = rows.map_err(|err| err.to_string()).and_then(|rows| {
            window::outcome(&self.quotas, &rows).ok_or_else(|| {
                format!(
                    "the store's answer is malformed: {} numbers for one request",
                    rows.len()
                )
            })
        });
        self.noted(outcome)
    }

    /// Notes whether the store answered, and passes its answer on.
    fn noted<T>(&self, answer: Result<T, String>) -> Option<T> {
        match answer {
            Ok(answer) => {
                self.note_store(None);
                Some(answer)
            }
            Err(err) => {
                self.note_store(Some(&err));
                None
            }
        }
    }

    /// Reads the store's answer for `requests` requests.
    fn outcomes(
        &self,
        rows: cache_core::Result<Vec<i64>>,
        requests: usize,
    ) -> Option<Vec<Outcome>> {
        let outcomes = rows.map_err(|err| err.to_string()).and_then(|rows| {
            let len = window::row_len(self.quotas.len());
            if rows.len() != len * requests {
                return Err(format!(
                    "the store answered {} numbers for {requests} requests",
                    rows.len(),
                ));
            }
            rows.chunks(len)
                .map(|row| window::outcome(&self.quotas, row))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| "the store's answer is malformed".to_string())
        });
        self.noted(outcomes)
    }

    /// Remembers `client` as rejected if the last of its `outcomes` (which
    /// knows the state after all of them) says it is for a while, counted
    /// from `sent` (µs, taken before the store call) rounded down to the ms
    /// (the store's windows end on whole ms, counted from its ms): the local
    /// deny cache then never outlasts the store's own verdict.
    fn note_denied(&self, client: &str, outcomes: &[Outcome], sent: u64) {
        if self.local_deny
            && let Some(last) = outcomes.last()
            && !last.blocked.is_zero()
            && last.blocked != Duration::MAX
        {
            let now = now_micros(self.clock.as_ref());
            let blocked = u64::try_from(last.blocked.as_micros()).unwrap_or(u64::MAX);
            let policy = last.decision.policy;
            self.denied.insert(
                client,
                (sent - sent % 1000).saturating_add(blocked),
                policy,
                now,
            );
        }
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

    /// Logs once per change between a working and a failing store.
    fn note_store(&self, error: Option<&str>) {
        match error {
            Some(error) => {
                self.counters.add(Count::StoreErrors);
                if self.failing.raise() {
                    tracing::warn!(prefix = %self.prefix, error, "rate limiter store unavailable");
                }
            }
            None => {
                if self.failing.lower() {
                    tracing::info!(prefix = %self.prefix, "rate limiter store available again");
                }
            }
        }
    }
}

/// The ranges of `batch` (sorted by client) that hold one client's requests each.
fn client_runs(batch: &[Request]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let client = &batch.get(start)?.client;
        let end = start
            + batch[start..]
                .iter()
                .take_while(|request| request.client == *client)
                .count();
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// The keys [`Core::push_keys`] wrote to `text`, ending at `ends`.
fn split_keys<'a>(text: &'a str, ends: &[usize]) -> Vec<&'a str> {
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let key = text.get(start..end).unwrap_or_default();
            start = end;
            key
        })
        .collect()
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
            None => limiter.check(client.to_string(), 1).await,
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
            let Verdict::Decided(first) = limiter.check("ip:1".to_string(), 1).await else {
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
            let Verdict::Decided(again) = limiter.check("ip:1".to_string(), 1).await else {
                panic!("store failed");
            };
            assert!(again.allowed, "the store admits at the window's end");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_are_counted_exactly() {
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
        assert_eq!(limiter.tracked_clients().0, 0, "nobody is left waiting");
    }
}
