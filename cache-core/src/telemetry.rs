//! Metrics and tracing: every name the crate reports, and the probes the
//! rest of the crate calls (one line at each call site).
//!
//! Metrics go through the [`metrics`](https://docs.rs/metrics) facade and
//! exist only with the cargo feature `metrics`: without it every probe here
//! is an empty inline function, and no clock is read for them. Spans go
//! through `tracing` and cost one level check while their level is off:
//! `cache.memoized` (debug) around each memoized call, `cache.store` (trace)
//! around each store operation. The guide's docs/metrics.md lists
//! every metric with its labels.
//!
//! Labels are low-cardinality by construction: operation names, results and
//! tiers are `&'static str` constants of this module, and the only
//! user-given label is a memoized function's `prefix` (a literal of its
//! `#[cached]` attribute). Keys, arguments and values never become labels or
//! span fields.

use std::future::Future;
use std::time::Instant;

use futures_util::future::Either;
use tracing::field::Empty;
use tracing::{Instrument, instrument::Instrumented};

use crate::store::{KeyTtl, Reach, ScanNode, Script, Store, StoreFuture};

/// `tier` of a handle on the in-memory store.
pub(crate) const TIER_MEMORY: &str = "memory";
/// `tier` of a handle on Redis, standalone or cluster.
pub(crate) const TIER_REDIS: &str = "redis";
/// `tier` of a value served from the handle's local tier (in process, in
/// front of Redis).
pub(crate) const TIER_LOCAL: &str = "local";

/// The `tier` label of a store that is where `reach` says.
pub(crate) fn tier(reach: Reach) -> &'static str {
    if reach.in_process() {
        TIER_MEMORY
    } else {
        TIER_REDIS
    }
}

/// How a memoized call was served: the `result` label of `cache.memoized.calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// From the cache (or from a concurrent call's read of it).
    Hit,
    /// Not in the cache: the body ran.
    Miss,
    /// A value past its TTL, within `stale` (a refresh runs in the background).
    Stale,
    /// The cache failed (unreachable, slow, breaker open): the body ran.
    Error,
    /// The cache was not asked: bypassed handle, no handle, or a key that
    /// could not be built.
    Bypass,
}

impl Served {
    fn as_str(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Miss => "miss",
            Served::Stale => "stale",
            Served::Error => "error",
            Served::Bypass => "bypass",
        }
    }
}

/// The span of one memoized call: `cache.memoized` at debug level, with the
/// prefix; [`MemoizedCall::finish`] fills in tier, outcome and duration.
#[cold]
fn memoized_span(prefix: &'static str) -> tracing::Span {
    tracing::debug_span!(
        target: "cache_core::memoize",
        "cache.memoized",
        prefix,
        tier = Empty,
        outcome = Empty,
        duration_us = Empty,
    )
}

/// One memoized call being served: started where the call starts, finished
/// once with how it was served. Reads the clock only when a metric or the
/// call's span will use it.
///
/// The call's awaits run in its span through [`traced`](Self::traced),
/// rather than the whole call in a wrapper future: a wrapper would move the
/// call's future (the function body's included) once more per call, which
/// is most of what a hit costs beyond the store's round trip.
pub(crate) struct MemoizedCall {
    #[cfg(feature = "metrics")]
    prefix: &'static str,
    started: Option<Instant>,
    /// `None` while the level is off: nothing to build or drop then (a
    /// disabled `Span` still costs its drop on every local hit).
    span: Option<tracing::Span>,
}

impl MemoizedCall {
    #[inline]
    pub(crate) fn start(prefix: &'static str) -> MemoizedCall {
        let span = if tracing::enabled!(target: "cache_core::memoize", tracing::Level::DEBUG) {
            Some(memoized_span(prefix)).filter(|span| !span.is_disabled())
        } else {
            None
        };
        let timed = cfg!(feature = "metrics") || span.is_some();
        MemoizedCall {
            #[cfg(feature = "metrics")]
            prefix,
            started: timed.then(Instant::now),
            span,
        }
    }

    /// `fut` in the call's span, or `fut` itself while the span is off.
    #[inline]
    pub(crate) fn traced<F: Future>(&self, fut: F) -> Either<Instrumented<F>, F> {
        match &self.span {
            None => Either::Right(fut),
            Some(span) => Either::Left(fut.instrument(span.clone())),
        }
    }

    /// Records how the call was served, from the handle's `tier`.
    #[inline]
    pub(crate) fn finish(&self, tier: &'static str, served: Served) {
        if let Some(started) = self.started {
            self.record(tier, served, started);
        }
    }

    /// [`finish`](Self::finish) for a call that joined another's flight
    /// (single-flight) instead of asking the store itself.
    #[inline]
    pub(crate) fn joined(&self, tier: &'static str, served: Served) {
        #[cfg(feature = "metrics")]
        metrics::counter!("cache.singleflight.joins", "prefix" => self.prefix).increment(1);
        self.finish(tier, served);
    }

    #[cold]
    fn record(&self, tier: &'static str, served: Served, started: Instant) {
        let elapsed = started.elapsed();
        if let Some(span) = &self.span {
            span.record("tier", tier);
            span.record("outcome", served.as_str());
            span.record("duration_us", micros(elapsed));
        }
        #[cfg(feature = "metrics")]
        {
            let (prefix, result) = (self.prefix, served.as_str());
            metrics::counter!("cache.memoized.calls", "prefix" => prefix, "result" => result, "tier" => tier)
                .increment(1);
            metrics::histogram!("cache.memoized.duration", "prefix" => prefix, "result" => result)
                .record(elapsed.as_secs_f64());
        }
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The circuit breaker of a handle changed state (`cache.breaker.transitions`).
#[inline]
pub(crate) fn breaker_changed(state: crate::stats::BreakerState) {
    #[cfg(feature = "metrics")]
    {
        let state = match state {
            crate::stats::BreakerState::Closed => "closed",
            crate::stats::BreakerState::Open => "open",
            crate::stats::BreakerState::HalfOpen => "half_open",
        };
        metrics::counter!("cache.breaker.transitions", "state" => state).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = state;
}

/// A tag was invalidated (`cache.tag.invalidations`).
#[inline]
pub(crate) fn tag_invalidated() {
    #[cfg(feature = "metrics")]
    metrics::counter!("cache.tag.invalidations").increment(1);
}

/// A subscriber was told it may have missed messages (`cache.events.gaps`):
/// after a lost connection, or because its queue overflowed.
#[inline]
pub(crate) fn event_gap(disconnected: bool) {
    #[cfg(feature = "metrics")]
    {
        let reason = if disconnected {
            "reconnect"
        } else {
            "overflow"
        };
        metrics::counter!("cache.events.gaps", "reason" => reason).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = disconnected;
}

/// A store that reports each operation: a `cache.store` span (trace
/// level) and, with the feature, `cache.operations` and
/// `cache.operation.duration`. While neither is wanted it hands the
/// inner store's future back untouched.
pub(crate) struct Observed {
    inner: Box<dyn Store>,
    tier: &'static str,
    /// The handles of `cache.operations` and `cache.operation.duration`,
    /// registered on first use: a registration hashes the labels and looks
    /// them up in the recorder, several times the cost of an increment.
    #[cfg(feature = "metrics")]
    handles: [OperationHandles; OPERATIONS.len()],
}

/// Every `operation` label of `cache.operations`.
#[cfg(feature = "metrics")]
const OPERATIONS: [&str; 15] = [
    "get",
    "get_many",
    "set",
    "set_many",
    "delete",
    "exists",
    "expire",
    "ttl",
    "incr",
    "incr_window",
    "eval",
    "publish",
    "scan_nodes",
    "invalidate_prefix",
    "ping",
];

/// Every `result` label of `cache.operations`.
#[cfg(feature = "metrics")]
const RESULTS: [&str; 4] = ["hit", "miss", "ok", "error"];

/// One operation's metric handles on one handle's store.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct OperationHandles {
    results: [std::sync::OnceLock<metrics::Counter>; RESULTS.len()],
    duration: std::sync::OnceLock<metrics::Histogram>,
}

#[cfg(feature = "metrics")]
impl Observed {
    fn record(&self, operation: &'static str, result: &'static str, elapsed: std::time::Duration) {
        let (Some(op), Some(res)) = (
            OPERATIONS.iter().position(|o| *o == operation),
            RESULTS.iter().position(|r| *r == result),
        ) else {
            return;
        };
        let tier = self.tier;
        let handles = &self.handles[op];
        handles.results[res]
            .get_or_init(|| {
                metrics::counter!("cache.operations", "operation" => operation, "result" => result, "tier" => tier)
            })
            .increment(1);
        handles
            .duration
            .get_or_init(|| {
                metrics::histogram!("cache.operation.duration", "operation" => operation, "tier" => tier)
            })
            .record(elapsed.as_secs_f64());
    }
}

/// Wraps the store of a handle on `backend`.
pub(crate) fn observe(inner: Box<dyn Store>) -> Box<dyn Store> {
    Box::new(Observed {
        tier: tier(inner.reach()),
        inner,
        #[cfg(feature = "metrics")]
        handles: Default::default(),
    })
}

/// The `result` of an operation that found or did not find its key.
fn found<T>(answer: &crate::error::Result<Option<T>>) -> &'static str {
    match answer {
        Ok(Some(_)) => "hit",
        Ok(None) => "miss",
        Err(_) => "error",
    }
}

/// The `result` of any other operation.
/// [`found`] of a value read beside something else.
fn found_first<T, U>(answer: &crate::error::Result<(Option<T>, U)>) -> &'static str {
    match answer {
        Ok((Some(_), _)) => "hit",
        Ok((None, _)) => "miss",
        Err(_) => "error",
    }
}

fn done<T>(answer: &crate::error::Result<T>) -> &'static str {
    match answer {
        Ok(_) => "ok",
        Err(_) => "error",
    }
}

impl Observed {
    #[inline]
    fn op<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        result: fn(&crate::error::Result<T>) -> &'static str,
        future: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        if !self.observes() {
            return future;
        }
        self.observed(operation, result, future)
    }

    /// Whether calls are measured (metrics) or traced.
    fn observes(&self) -> bool {
        cfg!(feature = "metrics")
            || tracing::enabled!(target: "cache_core::store", tracing::Level::TRACE)
    }

    #[cold]
    fn observed<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        result: fn(&crate::error::Result<T>) -> &'static str,
        future: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let span = tracing::trace_span!(
                target: "cache_core::store",
                "cache.store",
                operation,
                tier = self.tier,
                result = Empty,
                duration_us = Empty,
            );
            let started = Instant::now();
            let answer = future.instrument(span.clone()).await;
            let elapsed = started.elapsed();
            let result = result(&answer);
            span.record("result", result);
            span.record("duration_us", micros(elapsed));
            #[cfg(feature = "metrics")]
            self.record(operation, result, elapsed);
            answer
        })
    }
}

impl Store for Observed {
    fn reach(&self) -> Reach {
        self.inner.reach()
    }
    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.op("get", found, self.inner.get(key, max_len))
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
        max_len: usize,
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        self.op("get_many", done, self.inner.get_many(keys, max_len))
    }
    fn get_expiring<'a>(
        &'a self,
        key: &'a str,
        max_len: usize,
    ) -> StoreFuture<'a, crate::store::Expiring> {
        self.op("get", found_first, self.inner.get_expiring(key, max_len))
    }
    fn get_many_expiring<'a>(
        &'a self,
        keys: &'a [String],
        max_len: usize,
    ) -> StoreFuture<'a, Vec<crate::store::Expiring>> {
        let read = self.inner.get_many_expiring(keys, max_len);
        self.op("get_many", done, read)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<std::time::Duration>,
    ) -> StoreFuture<'a, ()> {
        self.op("set", done, self.inner.set(key, value, ttl))
    }
    fn set_many<'a>(
        &'a self,
        entries: &'a [(String, Vec<u8>)],
        ttl: Option<std::time::Duration>,
    ) -> StoreFuture<'a, ()> {
        self.op("set_many", done, self.inner.set_many(entries, ttl))
    }
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        self.op("delete", done, self.inner.delete(key))
    }
    fn exists<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        self.op("exists", done, self.inner.exists(key))
    }
    fn expire<'a>(&'a self, key: &'a str, ttl: std::time::Duration) -> StoreFuture<'a, bool> {
        self.op("expire", done, self.inner.expire(key, ttl))
    }
    fn ttl<'a>(&'a self, key: &'a str) -> StoreFuture<'a, KeyTtl> {
        self.op("ttl", done, self.inner.ttl(key))
    }
    fn incr<'a>(&'a self, key: &'a str, by: i64) -> StoreFuture<'a, i64> {
        self.op("incr", done, self.inner.incr(key, by))
    }
    fn eval<'a>(
        &'a self,
        script: &'a Script,
        keys: &'a [&'a str],
        args: &'a [i64],
    ) -> StoreFuture<'a, Vec<i64>> {
        self.op("eval", done, self.inner.eval(script, keys, args))
    }
    fn run_atomic<'a>(
        &'a self,
        op: &'a dyn crate::store::AtomicOp,
        keys: &'a [&'a str],
        args: &'a [i64],
    ) -> StoreFuture<'a, Vec<i64>> {
        self.op(op.operation(), done, self.inner.run_atomic(op, keys, args))
    }
    fn incr_windows<'a>(
        &'a self,
        keys: &'a [&'a str],
        by: &'a [i64],
        window_ms: i64,
        read_ttl: &'a [bool],
    ) -> StoreFuture<'a, Option<Vec<crate::store::WindowIncr>>> {
        self.op(
            "incr_window",
            done,
            self.inner.incr_windows(keys, by, window_ms, read_ttl),
        )
    }
    fn run_atomic_at_once(
        &self,
        op: &dyn crate::store::AtomicOp,
        keys: &[&str],
        args: &[i64],
    ) -> Option<crate::error::Result<Vec<i64>>> {
        // An observed call is measured around its future.
        if self.observes() {
            return None;
        }
        self.inner.run_atomic_at_once(op, keys, args)
    }
    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, u64> {
        self.op("publish", done, self.inner.publish(channel, payload))
    }
    fn publish_at_once(&self, channel: &str, payload: &[u8]) -> Option<u64> {
        // An observed call is measured around its future.
        if self.observes() {
            return None;
        }
        self.inner.publish_at_once(channel, payload)
    }
    fn subscribe(
        &self,
        topics: Vec<crate::store::pubsub::Topic>,
        capacity: usize,
    ) -> StoreFuture<'_, crate::store::pubsub::Listener> {
        self.inner.subscribe(topics, capacity)
    }
    fn subscribes_patterns(&self) -> bool {
        self.inner.subscribes_patterns()
    }
    fn pubsub_stats(&self) -> crate::stats::EventStats {
        self.inner.pubsub_stats()
    }
    fn scan_nodes(&self) -> StoreFuture<'_, Vec<ScanNode>> {
        self.op("scan_nodes", done, self.inner.scan_nodes())
    }
    fn delete_prefix_page<'a>(
        &'a self,
        node: &'a ScanNode,
        cursor: u64,
        prefix: &'a str,
    ) -> StoreFuture<'a, (u64, u64)> {
        self.op(
            "invalidate_prefix",
            done,
            self.inner.delete_prefix_page(node, cursor, prefix),
        )
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.op("ping", done, self.inner.ping())
    }
    fn refused_login(&self) -> StoreFuture<'_, Option<::redis::RedisError>> {
        self.inner.refused_login()
    }
}
