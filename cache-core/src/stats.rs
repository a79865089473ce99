//! Counters of one handle, readable at any time through [`Cache::stats`](crate::Cache::stats).

use serde::Serialize;

use crate::sync::StripedCounters;

/// A snapshot of a handle's counters since it was built. Clones of a handle share them.
///
/// New counters may be added: read it, do not build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Reads that found a value that decoded.
    pub hits: u64,
    /// Reads that found nothing, or a value that did not decode.
    pub misses: u64,
    /// Failed calls of any kind (timeouts and breaker refusals included).
    pub errors: u64,
    /// Calls that ran out of time.
    pub timeouts: u64,
    /// Calls refused without an attempt because the breaker was open.
    pub breaker_rejections: u64,
    /// Extra tries after transient failures.
    pub retries: u64,
    /// Stored values that could not be decoded (corrupt, foreign or old schema), counted as misses.
    pub decode_errors: u64,
    /// Memoized calls that ran uncached because their key could not be built:
    /// an argument with no canonical JSON form (NaN, infinity, a map key that
    /// is not a string or an integer), or an empty custom key. Not reads, so
    /// neither hits nor misses.
    pub uncacheable: u64,
    /// Stored values over the handle's `max_value_bytes`, counted as misses
    /// (not read past the cap, not decoded).
    pub oversized: u64,
    /// Values returned past their `ttl` (within `ttl + stale`): while one
    /// refresh runs in the background, or because it failed or timed out.
    pub stale_served: u64,
    /// Encrypted entries that no key authenticates (wrong key, tampered),
    /// counted as misses.
    pub decrypt_failures: u64,
    /// Encrypted entries that authenticate but are stamped further in the
    /// future than [`encryption_max_skew`](crate::CacheBuilder::encryption_max_skew)
    /// (their writer's clock runs ahead of this one), counted as misses;
    /// not in `decrypt_failures`.
    pub clock_skew_misses: u64,
    /// The circuit breaker's state now.
    pub breaker: BreakerState,
    /// The event bus of the handle ([`Cache::events`](crate::Cache::events)).
    pub events: EventStats,
    /// Reads served by the local tier (also counted in `hits`): no Redis call.
    pub local_hits: u64,
    /// Reads the local tier could not serve while open (they went to Redis).
    pub local_misses: u64,
    /// Invalidations Redis pushed to the local tier (keys changed by anyone,
    /// flushes).
    pub local_invalidations: u64,
    /// The local tier is on and tracking is up on every primary: it is being
    /// read. `false` without a local tier, and while tracking is down.
    pub local_tracking: bool,
}

impl Stats {
    /// Hits over reads, between 0 and 1 (0 before the first read).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.stats().hit_rate(), 0.0); // no read yet
    /// cache.set("k", &1, None).await?;
    /// for _ in 0..3 {
    ///     let _: Option<i32> = cache.get("k").await?;
    /// }
    /// let _: Option<i32> = cache.get("missing").await?;
    /// assert_eq!(cache.stats().hit_rate(), 0.75);
    /// # Ok(()) }
    /// ```
    pub fn hit_rate(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// The store kept failing: calls fail at once without touching it.
    Open,
    /// The cooldown is over and one probe call is finding out whether the store is back.
    HalfOpen,
}

/// The state of a handle's pub/sub connection, in [`EventStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventConnection {
    /// No subscription was made yet (or the backend is in-memory).
    #[default]
    Idle,
    /// Subscribed and connected.
    Connected,
    /// Lost; subscriptions come back by themselves when Redis does.
    Disconnected,
}

/// The event bus's counters, in [`Stats::events`](crate::Stats::events).
///
/// New counters may be added: read it, do not build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct EventStats {
    /// Live [`Subscription`](crate::events::Subscription) streams.
    pub subscriptions: u64,
    /// The pub/sub connection's state.
    pub connection: EventConnection,
    /// Events published through this handle.
    pub published: u64,
    /// Messages put into subscription buffers (one per subscription reached).
    pub received: u64,
    /// Messages dropped from full buffers.
    pub dropped: u64,
    /// [`EventError::Gap`](crate::events::EventError::Gap) items yielded.
    pub gaps: u64,
    /// Messages that are not events of the subscription's type: those that
    /// do not decode, counted as their [`EventError::Malformed`](crate::events::EventError::Malformed) item is
    /// yielded, and those over the size cap, counted as they arrive (once
    /// per subscription reached), since their bytes are dropped there.
    pub malformed: u64,
    /// Times the pub/sub connection came back after a loss.
    pub reconnects: u64,
}

/// The handle's counters, in stripes (see [`StripedCounters`]).
#[derive(Debug, Default)]
pub(crate) struct Counters(StripedCounters<12>);

const HITS: usize = 0;
const MISSES: usize = 1;
const ERRORS: usize = 2;
const TIMEOUTS: usize = 3;
const BREAKER_REJECTIONS: usize = 4;
const RETRIES: usize = 5;
const DECODE_ERRORS: usize = 6;
const UNCACHEABLE: usize = 7;
const OVERSIZED: usize = 8;
const STALE_SERVED: usize = 9;
const DECRYPT_FAILURES: usize = 10;
const CLOCK_SKEW_MISSES: usize = 11;

impl Counters {
    #[inline]
    pub(crate) fn record_hit(&self) {
        self.0.add(HITS);
    }
    pub(crate) fn record_miss(&self) {
        self.0.add(MISSES);
    }
    pub(crate) fn record_error(&self) {
        self.0.add(ERRORS);
    }
    pub(crate) fn record_timeout(&self) {
        self.0.add(TIMEOUTS);
        self.0.add(ERRORS);
    }
    pub(crate) fn record_breaker_rejection(&self) {
        self.0.add(BREAKER_REJECTIONS);
        self.0.add(ERRORS);
    }
    pub(crate) fn record_retry(&self) {
        self.0.add(RETRIES);
    }
    pub(crate) fn record_decode_error(&self) {
        self.0.add(DECODE_ERRORS);
    }
    pub(crate) fn record_uncacheable(&self) {
        self.0.add(UNCACHEABLE);
    }
    pub(crate) fn record_oversized(&self) {
        self.0.add(OVERSIZED);
    }

    pub(crate) fn record_stale_served(&self) {
        self.0.add(STALE_SERVED);
    }
    pub(crate) fn record_decrypt_failure(&self) {
        self.0.add(DECRYPT_FAILURES);
    }
    pub(crate) fn record_clock_skew_miss(&self) {
        self.0.add(CLOCK_SKEW_MISSES);
    }

    pub(crate) fn snapshot(&self, breaker: BreakerState) -> Stats {
        Stats {
            hits: self.0.sum(HITS),
            misses: self.0.sum(MISSES),
            errors: self.0.sum(ERRORS),
            timeouts: self.0.sum(TIMEOUTS),
            breaker_rejections: self.0.sum(BREAKER_REJECTIONS),
            retries: self.0.sum(RETRIES),
            decode_errors: self.0.sum(DECODE_ERRORS),
            uncacheable: self.0.sum(UNCACHEABLE),
            oversized: self.0.sum(OVERSIZED),
            stale_served: self.0.sum(STALE_SERVED),
            decrypt_failures: self.0.sum(DECRYPT_FAILURES),
            clock_skew_misses: self.0.sum(CLOCK_SKEW_MISSES),
            breaker,
            events: EventStats::default(),
            local_hits: 0,
            local_misses: 0,
            local_invalidations: 0,
            local_tracking: false,
        }
    }
}
