//! The [`Clock`] the limiter reads: the system clock, or a [`ManualClock`]
//! that tests move by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the limiter takes "now" from: for the in-memory store and, for a
/// clock that [asks for it](Clock::is_authoritative), the Redis scripts too
/// (which otherwise read Redis' own `TIME`, so instances with skewed clocks
/// agree); and how it measures how long the local deny cache keeps a client
/// ([`monotonic`](Clock::monotonic)).
pub trait Clock: Send + Sync + 'static {
    /// The time since the Unix epoch.
    fn now(&self) -> Duration;

    /// A reading of a clock that never goes back, for durations: the local
    /// deny cache remembers a rejected client for as long as the store said,
    /// measured on it, so that a wall clock stepped back (NTP, a VM resumed)
    /// does not keep clients rejected in-process while the store would admit
    /// them. Default: the process' monotonic clock ([`Instant`]), whatever
    /// [`now`](Clock::now) says; [`ManualClock`] answers its own time, so a
    /// test that moves it moves the deny cache too (a custom clock that
    /// moves time for tests overrides this the same way).
    fn monotonic(&self) -> Duration {
        process_monotonic()
    }

    /// Whether the Redis scripts take "now" from this clock instead of
    /// Redis' `TIME` (default `false`; [`ManualClock`] says `true`). Only for
    /// a clock that is the time of every instance and of Redis (a test's):
    /// Redis still expires keys on its own clock, so a clock behind it by
    /// more than a window would let every request through.
    fn is_authoritative(&self) -> bool {
        false
    }
}

/// The system clock (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that moves only when told: for tests that cross a window without
/// sleeping. Clones share the time. It starts at the current system time and
/// only moves forward (Redis expires keys on its own clock: a manual clock
/// behind it would see keys vanish early).
#[derive(Debug, Clone)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl ManualClock {
    /// A clock at the current system time.
    pub fn new() -> Self {
        let now = u64::try_from(SystemClock.now().as_micros()).unwrap_or(u64::MAX);
        ManualClock {
            micros: Arc::new(AtomicU64::new(now)),
        }
    }

    /// Moves the clock forward by `by` (whole microseconds), at most to the
    /// largest time it can hold.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// let before = clock.now();
    /// clock.clone().advance(Duration::from_secs(60)); // clones share the time
    /// assert_eq!(clock.now() - before, Duration::from_secs(60));
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    /// Its own time: it only moves forward.
    fn monotonic(&self) -> Duration {
        self.now()
    }

    /// The scripts use it: tests move Redis' time with it.
    fn is_authoritative(&self) -> bool {
        true
    }
}

/// Microseconds since the epoch from `clock`.
pub(crate) fn now_micros(clock: &dyn Clock) -> u64 {
    u64::try_from(clock.now().as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds of `clock`'s [monotonic](Clock::monotonic) reading.
pub(crate) fn monotonic_micros(clock: &dyn Clock) -> u64 {
    u64::try_from(clock.monotonic().as_micros()).unwrap_or(u64::MAX)
}

/// The time since the process' first reading of its monotonic clock.
fn process_monotonic() -> Duration {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_saturates_instead_of_wrapping() {
        let clock = ManualClock::new();
        let start = clock.now();
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), start + Duration::from_secs(1));
        clock.advance(Duration::MAX);
        clock.advance(Duration::from_secs(1));
        assert_eq!(now_micros(&clock), u64::MAX);
    }
}
