//! Counters of one handle, readable at any time through [`Cache::stats`](crate::Cache::stats).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

use crate::resilience::BreakerState;

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

/// The handle's counters, in stripes: each thread adds to one stripe of its
/// own cache line, so that calls on different cores do not pass one line
/// back and forth on every hit; a snapshot adds the stripes up.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    stripes: [Stripe; STRIPES],
}

const STRIPES: usize = 8;

#[repr(align(128))]
#[derive(Debug, Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    breaker_rejections: AtomicU64,
    retries: AtomicU64,
    decode_errors: AtomicU64,
    uncacheable: AtomicU64,
    oversized: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// This thread's stripe (below `STRIPES`): threads take stripes in turn as they first count.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        if index.get() == usize::MAX {
            index.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        index.get()
    })
}

impl Counters {
    fn mine(&self) -> &Stripe {
        &self.stripes[stripe_index()]
    }
    pub(crate) fn record_hit(&self) {
        bump(&self.mine().hits);
    }
    pub(crate) fn record_miss(&self) {
        bump(&self.mine().misses);
    }
    pub(crate) fn record_error(&self) {
        bump(&self.mine().errors);
    }
    pub(crate) fn record_timeout(&self) {
        let stripe = self.mine();
        bump(&stripe.timeouts);
        bump(&stripe.errors);
    }
    pub(crate) fn record_breaker_rejection(&self) {
        let stripe = self.mine();
        bump(&stripe.breaker_rejections);
        bump(&stripe.errors);
    }
    pub(crate) fn record_retry(&self) {
        bump(&self.mine().retries);
    }
    pub(crate) fn record_decode_error(&self) {
        bump(&self.mine().decode_errors);
    }
    pub(crate) fn record_uncacheable(&self) {
        bump(&self.mine().uncacheable);
    }

    pub(crate) fn record_oversized(&self) {
        bump(&self.mine().oversized);
    }

    pub(crate) fn snapshot(&self, breaker: BreakerState) -> Stats {
        let sum = |counter: fn(&Stripe) -> &AtomicU64| {
            self.stripes
                .iter()
                .map(|stripe| counter(stripe).load(Ordering::Relaxed))
                .sum()
        };
        Stats {
            hits: sum(|s| &s.hits),
            misses: sum(|s| &s.misses),
            errors: sum(|s| &s.errors),
            timeouts: sum(|s| &s.timeouts),
            breaker_rejections: sum(|s| &s.breaker_rejections),
            retries: sum(|s| &s.retries),
            decode_errors: sum(|s| &s.decode_errors),
            uncacheable: sum(|s| &s.uncacheable),
            oversized: sum(|s| &s.oversized),
            breaker,
        }
    }
}
