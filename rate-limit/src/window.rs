//! Fixed-window arithmetic: from the store's count to a per-request
//! [`Decision`]. Pure functions, testable without a store.

use std::time::Duration;

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request is within the limit.
    pub allowed: bool,
    /// The limit per window.
    pub limit: u64,
    /// Requests left in this window after this one.
    pub remaining: u64,
    /// Time until the window ends.
    pub reset_after: Duration,
}

impl Decision {
    /// The decision for the request that brought the window's count to `count`.
    pub fn for_count(count: u64, limit: u64, reset_after: Duration) -> Decision {
        Decision {
            allowed: count <= limit,
            limit,
            remaining: limit.saturating_sub(count),
            reset_after,
        }
    }

    /// Seconds until the window ends, rounded up (what the headers carry).
    pub fn reset_seconds(&self) -> u64 {
        ceil_seconds(self.reset_after)
    }

    /// `Retry-After`: whole seconds, rounded up, never 0.
    pub fn retry_after_seconds(&self) -> u64 {
        self.reset_seconds().max(1)
    }
}

/// Whole seconds, rounded up.
pub fn ceil_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        seconds + 1
    } else {
        seconds
    }
}

/// Splits one coalesced increment among its requests: `n` requests added `n`
/// at once and the window's count became `total`, so request `i` (0-based,
/// in arrival order) is the one that brought it to `total - n + i + 1`.
/// Admission stays exact: exactly as many are allowed as if each had been
/// counted alone.
pub fn count_of(total: u64, n: u64, i: u64) -> u64 {
    total.saturating_sub(n) + i + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_up_to_the_limit_pass_with_decreasing_remaining() {
        let reset = Duration::from_secs(60);
        let remaining: Vec<u64> = (1..=5)
            .map(|count| Decision::for_count(count, 5, reset))
            .inspect(|d| assert!(d.allowed))
            .map(|d| d.remaining)
            .collect();
        assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
        let over = Decision::for_count(6, 5, reset);
        assert!(!over.allowed);
        assert_eq!(over.remaining, 0);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let d = |ms| Decision::for_count(9, 5, Duration::from_millis(ms));
        assert_eq!(d(1500).retry_after_seconds(), 2);
        assert_eq!(d(2000).retry_after_seconds(), 2);
        assert_eq!(d(1).retry_after_seconds(), 1);
        assert_eq!(d(0).retry_after_seconds(), 1);
        assert_eq!(d(0).reset_seconds(), 0);
    }

    #[test]
    fn a_coalesced_batch_admits_exactly_up_to_the_limit() {
        // 10 requests folded into one INCRBY 10 on a window that already had 45, limit 50.
        let total = 55;
        let allowed = (0..10)
            .filter(|&i| Decision::for_count(count_of(total, 10, i), 50, Duration::ZERO).allowed)
            .count();
        assert_eq!(allowed, 5);
        assert_eq!(count_of(total, 10, 0), 46);
        assert_eq!(count_of(total, 10, 9), 55);
    }
}
