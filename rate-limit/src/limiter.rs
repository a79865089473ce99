//! The counting engine: at most one store call per request, evaluating
//! every policy, and an in-process memory of clients known to be rejected.
//!
//! **How a request is counted** is decided in one place, [`Counting`]:
//!
//! - **Exact, on Redis** ([`Counting::Exact`], [`crate::exact`]): a request
//!   that finds none of the limiter's calls in flight makes its own script
//!   call, sent at once on the limiter's multiplexed connection (which
//!   pipelines concurrent calls); requests that find the connection busy
//!   are gathered during one yield of the task that found it so and go as
//!   one call (flat combining). One policy takes `single.lua`, the fewest
//!   commands each algorithm allows (the fixed window on Redis' clock: no
//!   script for requests of cost 1, `INCRBY` + `PEXPIRE ... LT` pipelined,
//!   with a `PTTL` for a window whose end it does not know yet
//!   ([`crate::ends`]); `counter.lua` for other costs); several take `limits.lua`,
//!   all-or-nothing. Admission is exact across instances, for every
//!   algorithm: each call is one atomic step on its clients' keys (the
//!   pipelined fixed window: one atomic `INCRBY` per key, see
//!   `store::redis`).
//! - **In memory** ([`Counting::Memory`]): the same calls, whose atomic
//!   steps the in-process store runs as the scripts' Rust twins
//!   ([`crate::store::memory`], the arithmetic of [`window`]) on its entries,
//!   "now" taken from the limiter's clock; chosen whenever the store is in
//!   the process ([`Reach::InProcess`]), shared counting or not.
//! - **With a concurrency limit** ([`Limiter::acquire_charged`]): each request makes
//!   its own call of `limits.lua` (it carries the request's lease id), sent
//!   at once on the multiplexed connection, never grouped; or the in-memory
//!   twin. Its lease goes back with [`Limiter::release`].
//!
//! - **Shared, at in-process cost** ([`Counting::Shared`], opt-in through
//!   the builder's `shared_counting`): each request is decided on this
//!   instance's own counts and the totals last read from Redis, and a
//!   background task exchanges them ([`crate::shared`]); over-admission
//!   across instances is bounded by a share of the quota. Redis only: on
//!   the in-memory store the counts are in the process already, and a
//!   layer with shared counting counts as [`Counting::Memory`] does.
//!
//! The layer, the deny cache, the headers and the fail mode are the same
//! for every mode.
//!
//! **Local deny cache.** The store says how long a client is sure to be
//! rejected (until a request of cost 1 would pass every policy: the window's
//! end for the fixed window, when enough of the previous window slid out
//! for the sliding one, when the TAT allows for GCRA). States only fill up
//! through admissions, and none happens in that time, so those requests are
//! rejected without a store call. The time is measured on the clock's
//! [monotonic](crate::Clock::monotonic) reading: a wall clock stepped back
//! does not make a rejection last longer.
//!
//! **Bounded by design.** At most [`IN_FLIGHT`] requests are at the store at
//! once (a request past that is a store failure, under the layer's fail
//! mode), each for at most the store timeout; the deny cache holds at most
//! its capacity ([`crate::deny`]), and the known window ends as many keys
//! ([`crate::ends`]). A cancelled request leaves nothing behind.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cache_core::{Cache, Reach};
use cache_sync::{StateFlag, StripedCounters};

// shuttle's under `--cfg shuttle` (the count of requests at the store).
use crate::sync::AtomicUsize;
use serde::Serialize;

use crate::clock::{Clock, monotonic_micros, now_micros};
use crate::deny::{DEFAULT_CAPACITY, DenyCache};
use crate::exact::{Call, Exact};
use crate::quota::Quota;
use crate::shared::{Answer, RedisSide, SharedCounting, SharedLimits};
use crate::store;
use crate::telemetry;
use crate::window::{self, Decision, Outcome};

/// Requests at the store at once, at most.
pub(crate) const IN_FLIGHT: usize = 4096;

/// The longest one-policy key the in-memory counting writes on the stack
/// (prefix, `:`, client key: an address or a hashed key fits); a longer one
/// is allocated.
const KEY_ON_STACK: usize = 128;

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
    /// Store calls made: at most one per request counted at the store
    /// (requests arriving while the connection is busy share one).
    pub store_calls: u64,
    /// Requests whose plan the layer's `plan_for` named but the layer does
    /// not declare: counted under the default plan.
    pub unknown_plans: u64,
    /// Admitted requests given back (all or part of their cost) because
    /// their response was not charged (`charge_if`, `charge_by_response`).
    pub refunded: u64,
    /// Refunds the store did not take (failed, timed out, or no runtime to
    /// run them on): those charges stand until their windows end.
    pub refund_errors: u64,
    /// Leases taken by admitted requests ([concurrency limits](crate::Quota::concurrent)).
    pub leases_granted: u64,
    /// Requests refused because their client had every slot of a
    /// concurrency limit taken (also counted in `limited`).
    pub leases_refused: u64,
    /// Leases renewed by a response still streaming past half its TTL.
    pub leases_renewed: u64,
    /// Leases found expired when their response ended: the response
    /// outlasted the lease TTL (its slot had been freed before).
    pub leases_expired: u64,
}

impl RateLimitStats {
    /// The sum of two snapshots (a layer's plans count apart).
    pub(crate) fn plus(self, other: RateLimitStats) -> RateLimitStats {
        RateLimitStats {
            allowed: self.allowed + other.allowed,
            limited: self.limited + other.limited,
            limited_locally: self.limited_locally + other.limited_locally,
            shadow_limited: self.shadow_limited + other.shadow_limited,
            store_errors: self.store_errors + other.store_errors,
            store_calls: self.store_calls + other.store_calls,
            unknown_plans: self.unknown_plans + other.unknown_plans,
            refunded: self.refunded + other.refunded,
            refund_errors: self.refund_errors + other.refund_errors,
            leases_granted: self.leases_granted + other.leases_granted,
            leases_refused: self.leases_refused + other.leases_refused,
            leases_renewed: self.leases_renewed + other.leases_renewed,
            leases_expired: self.leases_expired + other.leases_expired,
        }
    }
}

/// The layer's counters: every request writes one, so they are striped
/// per thread as the cache's are.
#[derive(Debug, Default)]
pub(crate) struct Counters(StripedCounters<{ Count::LeasesRenewed as usize + 1 }>);

/// One of the layer's counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Allowed,
    Limited,
    LimitedLocally,
    ShadowLimited,
    StoreErrors,
    StoreCalls,
    LeasesGranted,
    LeasesRefused,
    LeasesExpired,
    LeasesRenewed,
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
            leases_granted: sum(Count::LeasesGranted),
            leases_refused: sum(Count::LeasesRefused),
            leases_expired: sum(Count::LeasesExpired),
            leases_renewed: sum(Count::LeasesRenewed),
            ..RateLimitStats::default()
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
    /// The clock given to the builder, if any: then the Redis scripts take
    /// "now" from it too, instead of Redis' `TIME`, if it
    /// [is authoritative](Clock::is_authoritative).
    pub(crate) clock: Option<Arc<dyn Clock>>,
    /// The opt-in shared mode, if chosen.
    pub(crate) shared: Option<SharedCounting>,
    /// The layer lets through a request that cannot be counted (the shared
    /// mode counts it locally then).
    pub(crate) fail_open: bool,
}

/// How requests are counted: the one place that decides it (see the
/// module's documentation).
enum Counting {
    /// Exactly, in script calls on the handle's Redis ([`crate::exact`]).
    Exact(Exact),
    /// In process: the in-memory store's twins of the scripts, on the
    /// entries every layer of one in-memory handle shares.
    Memory,
    /// On this instance's counts, exchanged with the store in the background.
    Shared(Box<SharedLimits>),
}

pub(crate) struct Limiter {
    pub(crate) cache: Cache,
    pub(crate) prefix: String,
    pub(crate) policies: Vec<Policy>,
    quotas: Vec<Quota>,
    pub(crate) store_timeout: Duration,
    pub(crate) local_deny: bool,
    clock: Arc<dyn Clock>,
    /// Send the clock's time to Redis (an authoritative clock was set).
    send_now: bool,
    counting: Counting,
    pub(crate) counters: Counters,
    /// Client keys known to be rejected, until when, and by which policy.
    denied: DenyCache,
    /// Requests at the store.
    in_flight: AtomicUsize,
    /// The store is failing: logged once per change.
    failing: StateFlag,
    /// The indices of the concurrency limits among the policies (none: the
    /// layer takes no leases).
    concurrent: Vec<usize>,
    /// Where lease ids come from.
    lease_ids: LeaseIds,
    /// How long a request refused only by a concurrency limit waits for a
    /// slot (zero: not at all).
    lease_wait: Duration,
    /// The plan this limiter counts, on a layer with plans (the
    /// `ratelimit.leases` metric's `plan` label).
    plan: Option<Box<str>>,
    /// Its callers read the reset of every admitted request (a header
    /// carries it, a refund finds its window by it); without, the store
    /// may leave it unread (see `store::redis::evaluate`).
    resets: bool,
}

/// What [`Limiter::acquire_charged`] answers: the verdict, the lease of an
/// admitted request and, if asked for, its charge.
pub(crate) type Acquired = (Verdict, Option<Lease>, Option<Charge>);

/// Whether a concurrency limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No (admitted, or refused by rate policies only).
    None,
    /// Yes, and the rate policies too.
    Leases,
    /// Yes, and only it: the request may wait for a slot.
    LeasesOnly,
}

/// The first wait of a request waiting for a slot; each next one doubles,
/// up to [`LEASE_WAIT_MAX_BACKOFF`].
const LEASE_WAIT_FIRST_BACKOFF: Duration = Duration::from_millis(5);
const LEASE_WAIT_MAX_BACKOFF: Duration = Duration::from_millis(100);

/// The leases one admitted request holds, one per concurrency limit of the
/// layer (one id in each of its client's lease sets), until released.
#[derive(Debug)]
pub(crate) struct Lease {
    keys: Vec<String>,
    id: i64,
}

impl Lease {
    /// Its keys, each with its concurrency limit's lease TTL (ms), and its id:
    /// what a renewal sends.
    pub(crate) fn renewal(&self, limiter: &Limiter) -> (Vec<(String, u64)>, i64) {
        let ttls = limiter
            .concurrent
            .iter()
            .map(|&i| limiter.quotas[i].window_ms());
        (self.keys.iter().cloned().zip(ttls).collect(), self.id)
    }
}

/// Lease ids: unique within a limiter (a count), unpredictable and
/// independent across instances (hashed with keys random per limiter), 63
/// bits: an id two instances give one client at once collides with odds
/// of about `held² / 2^64`.
struct LeaseIds {
    hasher: std::hash::RandomState,
    next: std::sync::atomic::AtomicU64,
}

impl LeaseIds {
    fn next(&self) -> i64 {
        use std::hash::BuildHasher;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (self.hasher.hash_one(n) >> 1) as i64
    }
}

/// Counts a request as at the store for as long as it lives (a cancelled
/// request too).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// Counts one more; `None` (and nothing counted) past [`IN_FLIGHT`].
    fn enter(count: &'a AtomicUsize) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::Relaxed);
        let entered = InFlight(count);
        (before < IN_FLIGHT).then_some(entered)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a request was sent to the store.
#[derive(Clone, Copy)]
struct Sent {
    /// The clock's monotonic reading, µs.
    monotonic: u64,
    /// Its wall time, µs since the epoch, when it was read.
    wall: Option<u64>,
}

/// The store keys of one client: `{prefix}:{client}` for one policy; with
/// several, `{prefix}:{{client}}:{policy}`, one hash tag so that a cluster
/// keeps them on one slot (one script call reads them all).
pub(crate) enum Keys {
    One(String),
    Several(Vec<String>),
}

impl Keys {
    /// The first key (the only one with one policy): which client and slot.
    pub(crate) fn first(&self) -> &str {
        match self {
            Keys::One(key) => key,
            Keys::Several(keys) => keys.first().map_or("", String::as_str),
        }
    }

    /// The keys of the policies at `indices`.
    pub(crate) fn of(&self, indices: &[usize]) -> Vec<String> {
        match self {
            Keys::One(key) => vec![key.clone()],
            Keys::Several(keys) => indices
                .iter()
                .filter_map(|&i| keys.get(i).cloned())
                .collect(),
        }
    }

    /// Appends every key to `out`.
    pub(crate) fn push_into<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Keys::One(key) => out.push(key),
            Keys::Several(keys) => out.extend(keys.iter().map(String::as_str)),
        }
    }

    /// The keys as the store takes them; one key (one policy: the hot
    /// path) without an allocation.
    pub(crate) fn strs(&self) -> KeyStrs<'_> {
        match self {
            Keys::One(key) => KeyStrs::One([key]),
            Keys::Several(keys) => KeyStrs::Several(keys.iter().map(String::as_str).collect()),
        }
    }
}

/// A request's keys borrowed as `&str`s for one store call (see
/// [`Keys::strs`]).
pub(crate) enum KeyStrs<'a> {
    One([&'a str; 1]),
    Several(Vec<&'a str>),
}

impl<'a> KeyStrs<'a> {
    pub(crate) fn as_slice(&self) -> &[&'a str] {
        match self {
            KeyStrs::One(one) => one,
            KeyStrs::Several(several) => several,
        }
    }
}

/// An admitted request's charge, kept until its response says whether it
/// stands (see [`Limiter::refund`]).
#[derive(Debug)]
pub(crate) struct Charge {
    client: String,
    cost: u64,
    /// Each policy's reset (ms) in its admission's row: which window it was
    /// charged in.
    resets: Vec<u64>,
    /// The clock's monotonic reading when it was sent, µs.
    sent_monotonic: u64,
    /// The arithmetic's "now" then, µs, when the limiter chose it (the
    /// in-memory store, an authoritative clock); else Redis' clock.
    at_us: Option<u64>,
}

impl Charge {
    /// The units charged.
    pub(crate) fn cost(&self) -> u64 {
        self.cost
    }
}

impl Limiter {
    pub(crate) fn new(config: LimiterConfig) -> Self {
        let clock = config
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(crate::clock::SystemClock));
        let quotas: Vec<Quota> = config.policies.iter().map(|p| p.quota).collect();
        let names: Vec<String> = config.policies.iter().map(|p| p.name.clone()).collect();
        let counting = match (config.cache.reach(), config.shared) {
            // The store is in this process: its counts are exact at
            // in-process cost already, so shared counting counts there too.
            (Reach::InProcess, _) => Counting::Memory,
            (_, Some(settings)) => Counting::Shared(Box::new(SharedLimits::on_redis(
                settings,
                RedisSide {
                    cache: config.cache.clone(),
                    prefix: config.prefix.clone(),
                    fail_open: config.fail_open,
                    store_timeout: config.store_timeout,
                },
                &quotas,
                &names,
                clock.clone(),
            ))),
            (reach, None) => Counting::Exact(Exact::new(reach == Reach::Cluster, clock.clone())),
        };
        Limiter {
            concurrent: quotas
                .iter()
                .enumerate()
                .filter(|(_, q)| q.is_concurrent())
                .map(|(i, _)| i)
                .collect(),
            quotas,
            send_now: config.clock.as_ref().is_some_and(|c| c.is_authoritative()),
            clock,
            counting,
            cache: config.cache,
            prefix: config.prefix,
            policies: config.policies,
            store_timeout: config.store_timeout,
            local_deny: config.local_deny,
            counters: Counters::default(),
            denied: DenyCache::new(DEFAULT_CAPACITY),
            in_flight: AtomicUsize::new(0),
            failing: StateFlag::new(),
            lease_wait: Duration::ZERO,
            plan: None,
            resets: true,
            lease_ids: LeaseIds {
                hasher: std::hash::RandomState::new(),
                next: std::sync::atomic::AtomicU64::new(0),
            },
        }
    }

    /// The layer has a concurrency limit: its admitted requests take leases
    /// ([`acquire_charged`](Self::acquire_charged) instead of [`check`](Self::check)).
    pub(crate) fn takes_leases(&self) -> bool {
        !self.concurrent.is_empty()
    }

    /// [`acquire_charged`](Self::acquire_charged) without a charge (the
    /// unit tests').
    #[cfg(test)]
    pub(crate) async fn acquire(&self, client: String, cost: u64) -> (Verdict, Option<Lease>) {
        let (verdict, lease, _) = self.acquire_charged(client, cost, false).await;
        (verdict, lease)
    }

    /// [`check`](Self::check) for a layer with concurrency limits: one
    /// store call checks every policy and, if all admit, charges the rate
    /// policies and takes a lease in each concurrency limit (none for a
    /// request of cost 0). The lease, if taken, goes back with
    /// [`release`](Self::release); one not released expires after its TTL.
    /// If `charged`, also the charge of an admitted request on the rate
    /// policies, to give back with [`refund`](Self::refund) as
    /// [`check_charged`](Self::check_charged)'s: the lease and the charge
    /// are given back apart, each once.
    pub(crate) async fn acquire_charged(
        &self,
        client: String,
        cost: u64,
        charged: bool,
    ) -> Acquired {
        if let Some(policy) = self.too_costly(cost) {
            return (Verdict::TooCostly { policy }, None, None);
        }
        let keys = self.keys(&client);
        let deadline = tokio::time::Instant::now() + self.lease_wait;
        let mut backoff = LEASE_WAIT_FIRST_BACKOFF;
        loop {
            let (acquired, refused) = self.acquire_once(&client, &keys, cost, charged).await;
            match refused {
                Refusal::None => return acquired,
                // Only a slot missing: ask again, until the wait is over.
                Refusal::LeasesOnly if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff.min(deadline - tokio::time::Instant::now())).await;
                    backoff = (backoff * 2).min(LEASE_WAIT_MAX_BACKOFF);
                }
                Refusal::LeasesOnly | Refusal::Leases => {
                    self.counters.add(Count::LeasesRefused);
                    telemetry::lease(self.plan.as_deref(), telemetry::LeaseEvent::Refused);
                    return acquired;
                }
            }
        }
    }

    /// One store call of [`acquire_charged`](Self::acquire_charged), and whether a
    /// concurrency limit refused the request.
    async fn acquire_once(
        &self,
        client: &str,
        keys: &Keys,
        cost: u64,
        charged: bool,
    ) -> (Acquired, Refusal) {
        let id = self.lease_ids.next();
        let sent = self.sent_now();
        let call = telemetry::StoreCall::start();
        self.counters.add(Count::StoreCalls);
        let row = match &self.counting {
            Counting::Memory => {
                let mut strs = Vec::with_capacity(self.quotas.len());
                keys.push_into(&mut strs);
                store::redis::acquire(
                    &self.cache,
                    &strs,
                    &self.quotas,
                    sent.wall,
                    cost,
                    id,
                    self.store_timeout,
                )
                .await
                .map_err(|err| err.to_string())
            }
            // Refused by the builder.
            Counting::Shared(_) => return ((Verdict::StoreFailed, None, None), Refusal::None),
            Counting::Exact(_) => {
                let Some(_in_flight) = InFlight::enter(&self.in_flight) else {
                    self.note_store(Some("too many requests at the store at once"));
                    return ((Verdict::StoreFailed, None, None), Refusal::None);
                };
                let strs = keys.strs();
                store::redis::acquire(
                    &self.cache,
                    strs.as_slice(),
                    &self.quotas,
                    sent.wall,
                    cost,
                    id,
                    self.store_timeout,
                )
                .await
                .map_err(|err| err.to_string())
            }
        };
        let row = call.finish(row);
        // Refused by a concurrency limit: its retry cell is set; by it only
        // when every other policy's is not.
        let refused = match &row {
            Ok(row) if row.first() == Some(&0) => {
                let refuses = |i: usize| row.get(3 + 4 * i).is_some_and(|&retry| retry != 0);
                let policies = 0..self.quotas.len();
                if !self.concurrent.iter().any(|&i| refuses(i)) {
                    Refusal::None
                } else if policies
                    .filter(|i| !self.concurrent.contains(i))
                    .any(refuses)
                {
                    Refusal::Leases
                } else {
                    Refusal::LeasesOnly
                }
            }
            _ => Refusal::None,
        };
        let resets = match &row {
            Ok(row) if charged => window::resets(&self.quotas, row),
            _ => None,
        };
        let Some(outcome) = self.outcome(row) else {
            return ((Verdict::StoreFailed, None, None), Refusal::None);
        };
        self.note_denied(client, &outcome, sent);
        let lease = (outcome.decision.allowed && cost > 0).then(|| {
            self.counters.add(Count::LeasesGranted);
            telemetry::lease(self.plan.as_deref(), telemetry::LeaseEvent::Granted);
            Lease {
                keys: keys.of(&self.concurrent),
                id,
            }
        });
        let charge = match resets {
            Some(resets) if outcome.decision.allowed && cost > 0 => Some(Charge {
                client: client.to_string(),
                cost,
                resets,
                sent_monotonic: sent.monotonic,
                at_us: sent.wall,
            }),
            _ => None,
        };
        ((Verdict::Decided(outcome.decision), lease, charge), refused)
    }

    /// The plan this limiter counts (on a layer with plans): labels its
    /// lease metrics.
    pub(crate) fn with_plan(mut self, plan: &str) -> Self {
        self.plan = Some(plan.into());
        self
    }

    /// How long a request refused only by a concurrency limit waits for a
    /// slot before its 429 (see the builder's `lease_wait`).
    pub(crate) fn with_lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// Whether its callers read the reset of every admitted request (by
    /// default they do).
    pub(crate) fn with_resets(mut self, resets: bool) -> Self {
        self.resets = resets;
        self
    }

    /// Gives `lease` back: one store call per concurrency limit (see
    /// [`Lease`]). A lease found gone had expired.
    pub(crate) async fn release(&self, lease: Lease) {
        let released =
            store::redis::release(&self.cache, &lease.keys, lease.id, self.store_timeout).await;
        self.released(released);
    }

    /// Counts what a release found: a lease gone had expired; a store
    /// failure leaves it to expire with its TTL.
    fn released(&self, released: Result<bool, store::redis::CallError>) {
        match released {
            Ok(true) => {}
            Ok(false) => {
                self.counters.add(Count::LeasesExpired);
                telemetry::lease(self.plan.as_deref(), telemetry::LeaseEvent::Expired);
            }
            Err(err) => self.note_store(Some(&err.to_string())),
        }
    }

    /// Half the shortest lease TTL of the layer, µs: how often a streaming
    /// response renews its lease.
    pub(crate) fn renewal_interval_us(&self) -> u64 {
        let shortest = self
            .concurrent
            .iter()
            .map(|&i| self.quotas[i].window_ms())
            .min();
        shortest.unwrap_or(0).saturating_mul(500)
    }

    /// The clock's monotonic reading, µs (when a lease is due for renewal).
    pub(crate) fn monotonic_now(&self) -> u64 {
        monotonic_micros(self.clock.as_ref())
    }

    /// Renews a lease (see [`Lease::renewal`]) a lease TTL from now, if it
    /// is still held; at once in memory, else a store call.
    pub(crate) async fn renew(&self, keys: &[(String, u64)], id: i64) {
        let now = self.clocked().then(|| now_micros(self.clock.as_ref()));
        let renewed =
            match store::redis::renew(&self.cache, keys, id, now, self.store_timeout).await {
                Ok(renewed) => renewed,
                Err(err) => {
                    self.note_store(Some(&err.to_string()));
                    return;
                }
            };
        if renewed {
            self.counters.add(Count::LeasesRenewed);
        }
    }

    /// Releases `lease` where no task can wait for the store: in memory at
    /// once (the in-process store answers on the call's first poll);
    /// `Some(lease)` back when it needs a task to wait for the store.
    pub(crate) fn release_now(&self, lease: Lease) -> Option<Lease> {
        if !matches!(self.counting, Counting::Memory) {
            return Some(lease);
        }
        let polled = {
            let call = std::pin::pin!(store::redis::release(
                &self.cache,
                &lease.keys,
                lease.id,
                self.store_timeout
            ));
            call.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        };
        match polled {
            std::task::Poll::Ready(released) => {
                self.released(released);
                None
            }
            std::task::Poll::Pending => Some(lease),
        }
    }

    /// Counts one request of `client` (an already sanitized key) costing
    /// `cost` at the store; [`check_locally`](Self::check_locally) comes first.
    pub(crate) async fn check(&self, client: String, cost: u64) -> Verdict {
        self.count(client, cost, false).await.0
    }

    /// [`check`](Self::check), and the charge of an admitted request (of a
    /// cost above 0), to give back with [`refund`](Self::refund) if its
    /// response is not charged.
    pub(crate) async fn check_charged(
        &self,
        client: String,
        cost: u64,
    ) -> (Verdict, Option<Charge>) {
        self.count(client, cost, true).await
    }

    async fn count(&self, client: String, cost: u64, charged: bool) -> (Verdict, Option<Charge>) {
        if let Some(policy) = self.too_costly(cost) {
            return (Verdict::TooCostly { policy }, None);
        }
        if let Counting::Shared(shared) = &self.counting {
            return (self.check_shared(shared, client, cost).await, None);
        }
        // Read before the call: the deny cache counts from it (see
        // `note_denied`).
        let sent = self.sent_now();
        let call = telemetry::StoreCall::start();
        let row = match &self.counting {
            Counting::Memory => {
                self.counters.add(Count::StoreCalls);
                // The store only reads the keys during the call: a short
                // one-policy key is written on the stack, not allocated.
                let mut on_stack = [0; KEY_ON_STACK];
                let keys: Keys;
                let strs = match self.key_on_stack(&client, &mut on_stack) {
                    Some(key) => KeyStrs::One([key]),
                    None => {
                        keys = self.keys(&client);
                        keys.strs()
                    }
                };
                store::redis::evaluate(
                    &self.cache,
                    strs.as_slice(),
                    &self.quotas,
                    sent.wall,
                    &[cost],
                    self.resets || charged,
                    None,
                    self.store_timeout,
                )
                .await
                .map_err(|err| err.to_string())
            }
            // Answered before (`check_shared`).
            Counting::Shared(_) => return (Verdict::StoreFailed, None),
            Counting::Exact(exact) => {
                let Some(_in_flight) = InFlight::enter(&self.in_flight) else {
                    self.note_store(Some("too many requests at the store at once"));
                    return (Verdict::StoreFailed, None);
                };
                let at = Call {
                    cache: &self.cache,
                    quotas: &self.quotas,
                    timeout: self.store_timeout,
                    clock: self.send_now.then_some(self.clock.as_ref()),
                    counters: &self.counters,
                    resets: self.resets || charged,
                };
                exact.count(&at, self.keys(&client), cost).await
            }
        };
        let row = call.finish(row);
        let resets = match &row {
            Ok(row) if charged => window::resets(&self.quotas, row),
            _ => None,
        };
        match self.outcome(row) {
            Some(outcome) => {
                self.note_denied(&client, &outcome, sent);
                let charge = match resets {
                    Some(resets) if outcome.decision.allowed && cost > 0 => Some(Charge {
                        client,
                        cost,
                        resets,
                        sent_monotonic: sent.monotonic,
                        at_us: sent.wall,
                    }),
                    _ => None,
                };
                (Verdict::Decided(outcome.decision), charge)
            }
            None => (Verdict::StoreFailed, None),
        }
    }

    /// Gives back `units` (at most the charge's cost) of an admitted
    /// request's charge, on the store it was counted in; `false` if the
    /// store failed (the charge then stands until its window ends). The
    /// client is no longer remembered as rejected: the store decides its
    /// next request.
    pub(crate) async fn refund(&self, charge: &Charge, units: u64) -> bool {
        let units = units.min(charge.cost);
        if units == 0 {
            return true;
        }
        self.denied.remove(&charge.client);
        let keys = self.keys(&charge.client);
        // The rate policies only: a concurrency limit's lease goes back with
        // its response body (`release`), whatever the response is charged.
        let (keys, quotas, resets) = if self.concurrent.is_empty() {
            (
                keys,
                Cow::Borrowed(&self.quotas[..]),
                Cow::Borrowed(&charge.resets[..]),
            )
        } else {
            let rate: Vec<usize> = (0..self.quotas.len())
                .filter(|i| !self.concurrent.contains(i))
                .collect();
            if rate.is_empty() {
                return true;
            }
            (
                Keys::Several(keys.of(&rate)),
                rate.iter().map(|&i| self.quotas[i]).collect(),
                rate.iter()
                    .map(|&i| charge.resets.get(i).copied().unwrap_or_default())
                    .collect(),
            )
        };
        let elapsed_us =
            monotonic_micros(self.clock.as_ref()).saturating_sub(charge.sent_monotonic);
        let answer = match &self.counting {
            Counting::Memory | Counting::Exact(_) => {
                let clocked = self.clocked();
                let at = crate::store::redis::ChargedAt {
                    now_us: clocked.then(|| now_micros(self.clock.as_ref())),
                    at_us: if clocked { charge.at_us } else { None },
                    elapsed_us,
                };
                let mut strs = Vec::with_capacity(quotas.len());
                keys.push_into(&mut strs);
                let call = telemetry::StoreCall::start();
                let answer = crate::store::redis::refund(
                    &self.cache,
                    &strs,
                    &quotas,
                    at,
                    &resets,
                    units,
                    self.store_timeout,
                )
                .await;
                call.finish(answer).map(drop).map_err(|err| err.to_string())
            }
            // Refused at build time: the shared counting keeps no charge.
            Counting::Shared(_) => Err("the shared counting gives no refunds".to_string()),
        };
        match answer {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(prefix = %self.prefix, error, "rate limiter refund failed");
                false
            }
        }
    }

    /// Now, as a request sent to the store reads it: the monotonic clock,
    /// and the wall clock only where it is "now" for the arithmetic (the
    /// in-memory store, a clock sent to the scripts).
    fn sent_now(&self) -> Sent {
        Sent {
            monotonic: monotonic_micros(self.clock.as_ref()),
            wall: self.clocked().then(|| now_micros(self.clock.as_ref())),
        }
    }

    /// Whether the store's atomic steps take "now" from the limiter's
    /// clock: always in memory (the limiter's clock is the store's time
    /// there), on Redis for an authoritative clock.
    fn clocked(&self) -> bool {
        self.send_now || matches!(self.counting, Counting::Memory)
    }

    /// The shared mode's answer: from this instance's counts; a request past
    /// its allowance while Redis does not answer is a store failure (the
    /// fail mode decides; counted locally when it lets it through).
    async fn check_shared(&self, shared: &SharedLimits, client: String, cost: u64) -> Verdict {
        let monotonic = monotonic_micros(self.clock.as_ref());
        match shared.check(&client, &self.quotas, cost).await {
            Answer::Decided { outcome, now_us } => {
                let sent = Sent {
                    monotonic,
                    wall: Some(now_us),
                };
                self.note_denied(&client, &outcome, sent);
                Verdict::Decided(outcome.decision)
            }
            Answer::Unknown => {
                self.counters.add(Count::StoreErrors);
                Verdict::StoreFailed
            }
        }
    }

    /// The layer's counters; in the shared mode, its flush calls as store
    /// calls (and their failures as store errors).
    pub(crate) fn stats(&self) -> RateLimitStats {
        let mut stats = self.counters.snapshot();
        if let Counting::Shared(shared) = &self.counting {
            let (calls, errors) = shared.calls();
            stats.store_calls += calls;
            stats.store_errors += errors;
        }
        stats
    }

    /// Requests at the store, and deny cache entries: what the limiter holds
    /// in memory.
    pub(crate) fn tracked_clients(&self) -> (usize, usize) {
        (self.in_flight.load(Ordering::Relaxed), self.denied.len())
    }

    /// The first policy whose whole limit is below `cost`: a request that
    /// can never pass.
    pub(crate) fn too_costly(&self, cost: u64) -> Option<usize> {
        // A concurrency limit counts a lease per request, whatever its cost.
        self.quotas
            .iter()
            .position(|q| cost > q.limit() && !q.is_concurrent())
    }

    /// The decision for `client` when the local deny cache already has it
    /// (rejected for a while yet): no store call needed.
    pub(crate) fn check_locally(&self, client: &str) -> Option<Decision> {
        let decision = self.denied_locally(client)?;
        self.counters.add(Count::LimitedLocally);
        Some(decision)
    }

    /// The key of `client` under a one-policy limiter (as [`keys`](Self::keys)
    /// makes it), written into `buf`; `None` with several policies or when
    /// it does not fit.
    fn key_on_stack<'b>(&self, client: &str, buf: &'b mut [u8; KEY_ON_STACK]) -> Option<&'b str> {
        let [_] = self.policies.as_slice() else {
            return None;
        };
        let prefix = self.prefix.as_bytes();
        let key = buf.get_mut(..prefix.len() + 1 + client.len())?;
        let (head, tail) = key.split_at_mut(prefix.len());
        head.copy_from_slice(prefix);
        let (colon, rest) = tail.split_first_mut()?;
        *colon = b':';
        rest.copy_from_slice(client.as_bytes());
        std::str::from_utf8(key).ok()
    }

    /// The store keys of `client`.
    fn keys(&self, client: &str) -> Keys {
        let prefix = self.prefix.as_str();
        if let [_] = self.policies.as_slice() {
            let mut key = String::with_capacity(prefix.len() + 1 + client.len());
            key.extend([prefix, ":", client]);
            return Keys::One(key);
        }
        Keys::Several(
            self.policies
                .iter()
                .map(|policy| [prefix, ":{", client, "}:", policy.name.as_str()].concat())
                .collect(),
        )
    }

    /// Reads the store's answer for one request.
    fn outcome(&self, row: Result<Vec<i64>, impl std::fmt::Display>) -> Option<Outcome> {
        let outcome = row.map_err(|err| err.to_string()).and_then(|row| {
            window::outcome(&self.quotas, &row).ok_or_else(|| {
                format!(
                    "the store's answer is malformed: {} numbers for one request",
                    row.len()
                )
            })
        });
        match outcome {
            Ok(outcome) => {
                self.note_store(None);
                Some(outcome)
            }
            Err(err) => {
                self.note_store(Some(&err));
                None
            }
        }
    }

    /// Remembers `client` as rejected if `outcome` says it is for a while,
    /// counted from `sent` (read before the store call) rounded down to the
    /// ms of the wall clock (the store's windows end on whole ms, counted
    /// from its ms): the local deny cache then never outlasts the store's own
    /// verdict. Kept on the monotonic clock.
    fn note_denied(&self, client: &str, outcome: &Outcome, sent: Sent) {
        if self.local_deny && !outcome.blocked.is_zero() && outcome.blocked != Duration::MAX {
            let now = monotonic_micros(self.clock.as_ref());
            // The wall clock's µs within its ms at `sent`: read then, or now
            // less the time since (only rejections get here).
            let wall = sent.wall.unwrap_or_else(|| {
                now_micros(self.clock.as_ref()).saturating_sub(now.saturating_sub(sent.monotonic))
            });
            let blocked = u64::try_from(outcome.blocked.as_micros()).unwrap_or(u64::MAX);
            let start = sent.monotonic.saturating_sub(wall % 1000);
            self.denied.insert(
                client,
                start.saturating_add(blocked),
                outcome.decision.policy,
                now,
            );
        }
    }

    fn denied_locally(&self, key: &str) -> Option<Decision> {
        // Nobody denied (the common case): no clock read.
        if !self.local_deny || self.denied.len() == 0 {
            return None;
        }
        let now = monotonic_micros(self.clock.as_ref());
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

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
            clock: None,
            shared: None,
            fail_open: true,
        })
    }

    /// What the layer does: the local deny cache, then the store.
    async fn decide(limiter: &Limiter, client: &str) -> Verdict {
        match limiter.check_locally(client) {
            Some(decision) => Verdict::Decided(decision),
            None => limiter.check(client.to_string(), 1).await,
        }
    }

    #[test]
    fn a_key_on_the_stack_is_the_key_the_store_is_given_otherwise() {
        let limiter = limiter(3);
        let mut buf = [0; KEY_ON_STACK];
        let client = "ip:203.0.113.7";
        let on_stack = limiter.key_on_stack(client, &mut buf).map(str::to_owned);
        assert!(matches!(limiter.keys(client), Keys::One(key) if Some(&key) == on_stack.as_ref()));
        let long = "k".repeat(KEY_ON_STACK);
        assert_eq!(limiter.key_on_stack(&long, &mut buf), None, "too long");
    }

    #[tokio::test]
    async fn a_client_key_too_long_for_the_stack_counts_the_same() {
        let limiter = limiter(2);
        let long = "k".repeat(KEY_ON_STACK);
        for (allowed, remaining) in [(true, 1), (true, 0), (false, 0)] {
            let Verdict::Decided(d) = limiter.check(long.clone(), 1).await else {
                panic!("store failed");
            };
            assert_eq!((d.allowed, d.remaining), (allowed, remaining));
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

        fn monotonic(&self) -> Duration {
            self.manual.now()
        }
    }

    /// The deny cache counts the store's "blocked" from before the call:
    /// at the window's end (the store admits again) it no longer rejects.
    #[tokio::test]
    async fn the_deny_cache_ends_no_later_than_the_stores_verdict() {
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
            clock: Some(Arc::new(Ticking {
                manual: manual.clone(),
                armed: armed.clone(),
            })),
            shared: None,
            fail_open: true,
        });
        let Verdict::Decided(first) = limiter.check("ip:1".to_string(), 1).await else {
            panic!("store failed");
        };
        assert!(first.allowed);
        armed.store(false, Ordering::Relaxed);
        assert!(matches!(limiter.counting, Counting::Memory));
        // The fixed window in memory: `count:end`, the end on the clock.
        let value = limiter.cache.get_bytes("test:ip:1").await.unwrap().unwrap();
        let value = String::from_utf8(value).unwrap();
        let (_, window_end_ms) = value.split_once(':').unwrap();
        let window_end_ms: u64 = window_end_ms.parse().unwrap();
        manual.advance(Duration::from_millis(window_end_ms) - manual.now());
        assert_eq!(limiter.check_locally("ip:1"), None);
        let Verdict::Decided(again) = limiter.check("ip:1".to_string(), 1).await else {
            panic!("store failed");
        };
        assert!(again.allowed, "the store admits at the window's end");
    }

    /// A lease in two concurrency limits: each released, even when the
    /// first one's set no longer held it (it expired there).
    #[tokio::test]
    async fn a_release_frees_every_concurrency_limit_of_the_lease() {
        let clock = crate::ManualClock::new();
        let limiter = Limiter::new(LimiterConfig {
            cache: Cache::in_memory(),
            prefix: "leases".into(),
            policies: vec![
                Policy {
                    name: "short".into(),
                    quota: Quota::concurrent(1).lease_ttl(Duration::from_secs(1)),
                },
                Policy {
                    name: "long".into(),
                    quota: Quota::concurrent(1).lease_ttl(Duration::from_secs(60)),
                },
            ],
            store_timeout: Duration::from_secs(1),
            local_deny: true,
            clock: Some(Arc::new(clock.clone())),
            shared: None,
            fail_open: true,
        });
        let admitted = |verdict: &Verdict| matches!(verdict, Verdict::Decided(d) if d.allowed);
        let (first, lease) = limiter.acquire("ip:1".into(), 1).await;
        assert!(admitted(&first));
        assert!(!admitted(&limiter.acquire("ip:1".into(), 1).await.0));
        // The short lease expired: the next request trims it, and is still
        // refused by the long one.
        clock.advance(Duration::from_secs(1));
        assert!(!admitted(&limiter.acquire("ip:1".into(), 1).await.0));
        limiter.release(lease.unwrap()).await;
        assert_eq!(limiter.stats().leases_expired, 1, "gone from the short set");
        let (again, _) = limiter.acquire("ip:1".into(), 1).await;
        assert!(admitted(&again), "released from the long set too");
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

#[cfg(all(test, shuttle))]
#[path = "limiter/interleavings.rs"]
mod interleavings;
