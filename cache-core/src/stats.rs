//! Counters of one handle, readable at any time through [`Cache::stats`](crate::Cache::stats).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::resilience::BreakerState;

/// A snapshot of a handle's counters since it was built. Clones of a handle share them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// The circuit breaker's state now.
    pub breaker: BreakerState,
}

impl Stats {
    /// Hits over reads, between 0 and 1 (0 before the first read).
    pub fn hit_rate(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    breaker_rejections: AtomicU64,
    retries: AtomicU64,
    decode_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn record_hit(&self) {
        bump(&self.hits);
    }
    pub(crate) fn record_miss(&self) {
        bump(&self.misses);
    }
    pub(crate) fn record_error(&self) {
        bump(&self.errors);
    }
    pub(crate) fn record_timeout(&self) {
        bump(&self.timeouts);
        bump(&self.errors);
    }
    pub(crate) fn record_breaker_rejection(&self) {
        bump(&self.breaker_rejections);
        bump(&self.errors);
    }
    pub(crate) fn record_retry(&self) {
        bump(&self.retries);
    }
    pub(crate) fn record_decode_error(&self) {
        bump(&self.decode_errors);
    }

    pub(crate) fn snapshot(&self, breaker: BreakerState) -> Stats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            hits: load(&self.hits),
            misses: load(&self.misses),
            errors: load(&self.errors),
            timeouts: load(&self.timeouts),
            breaker_rejections: load(&self.breaker_rejections),
            retries: load(&self.retries),
            decode_errors: load(&self.decode_errors),
            breaker,
        }
    }
}
