//! [`Quota`] (a limit per window, and how it is enforced) and [`Algorithm`].

use std::time::Duration;

use crate::error::ConfigError;

/// The largest limit: 2^52 units per window. Counters travel through
/// Redis' Lua as doubles, exact below 2^53: a count at the limit plus a cost
/// up to the limit stays exact.
pub const MAX_LIMIT: u64 = 1 << 52;
/// The longest window: [`cache_core::MAX_WINDOW`], 366 days (a yearly quota
/// in a leap year). Longer is almost surely a unit mistake (milliseconds read
/// as seconds), and the store refuses it too.
pub const MAX_WINDOW: Duration = cache_core::MAX_WINDOW;

/// How a [`Quota`] is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// A counter per client that lives one window from the client's first
    /// request (Redis key TTL). Cheapest; a client can send twice the limit
    /// across a window's end (the limit at its end, the limit again at the
    /// start of the next one).
    #[default]
    FixedWindow,
    /// Cloudflare's sliding-window counter: windows aligned to the clock,
    /// the previous window's count weighted by how much of it is still
    /// inside the sliding window. No burst of twice the limit across a
    /// window edge; the limit on any span of one window holds exactly when
    /// the previous window's requests were spread evenly (at worst the
    /// span starting at fraction f of a window admits `limit × (1 + f)`).
    SlidingWindow,
    /// The generic cell rate algorithm (GCRA, as redis-cell, `redis_rate` and
    /// governor): one emission every `window / limit`, bursts of up to
    /// `limit`; one timestamp per client. Smooth: a client that used its
    /// burst gets one request back every `window / limit`.
    Gcra,
}

/// A limit per window and the [`Algorithm`] enforcing it; checked when the
/// layer is built ([`ConfigError`]).
///
/// ```
/// use std::time::Duration;
/// use rate_limit::{Algorithm, Quota};
/// let burst = Quota::per_second(10);
/// let hourly = Quota::new(1000, Duration::from_secs(3600)).algorithm(Algorithm::SlidingWindow);
/// assert_eq!(hourly.limit(), 1000);
/// # let _ = burst;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    limit: u64,
    window: Duration,
    algorithm: Algorithm,
}

impl Quota {
    /// `limit` units (requests, or their [cost](crate::RateLimitLayerBuilder::cost))
    /// per `window`, with the fixed window. The window counts in whole
    /// milliseconds (a fraction of one is dropped).
    pub const fn new(limit: u64, window: Duration) -> Quota {
        Quota {
            limit,
            window,
            algorithm: Algorithm::FixedWindow,
        }
    }

    /// `limit` per second.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit::Quota;
    ///
    /// assert_eq!(Quota::per_second(10), Quota::new(10, Duration::from_secs(1)));
    /// assert_eq!(Quota::per_minute(100).window(), Duration::from_secs(60));
    /// assert_eq!(Quota::per_hour(1000).limit(), 1000);
    /// ```
    pub const fn per_second(limit: u64) -> Quota {
        Quota::new(limit, Duration::from_secs(1))
    }

    /// `limit` per minute.
    pub const fn per_minute(limit: u64) -> Quota {
        Quota::new(limit, Duration::from_secs(60))
    }

    /// `limit` per hour.
    pub const fn per_hour(limit: u64) -> Quota {
        Quota::new(limit, Duration::from_secs(3600))
    }

    /// The same quota enforced by `algorithm`.
    ///
    /// ```
    /// use rate_limit::{Algorithm, Quota};
    ///
    /// // 100 a minute, as a steady flow: one request back every 600 ms once the burst is spent.
    /// let smooth = Quota::per_minute(100).algorithm(Algorithm::Gcra);
    /// assert_eq!(smooth.enforced_by(), Algorithm::Gcra);
    /// assert_eq!(Quota::per_minute(100).enforced_by(), Algorithm::FixedWindow);
    /// ```
    #[must_use]
    pub const fn algorithm(mut self, algorithm: Algorithm) -> Quota {
        self.algorithm = algorithm;
        self
    }

    /// Units per window.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The window.
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// The algorithm.
    pub const fn enforced_by(&self) -> Algorithm {
        self.algorithm
    }

    /// The window in whole milliseconds.
    pub(crate) fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Checks the quota: the limits every backend can hold exactly.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        if self.limit > MAX_LIMIT {
            return Err(ConfigError::LimitTooLarge(self.limit));
        }
        if self.window < Duration::from_millis(1) {
            return Err(ConfigError::WindowTooShort);
        }
        if self.window > MAX_WINDOW {
            return Err(ConfigError::WindowTooLong(self.window));
        }
        match self.algorithm {
            Algorithm::FixedWindow => {}
            // The weighting multiplies a count by a window in ms: exact in
            // Redis' Lua (doubles) only up to 2^53: at most [`MAX_LIMIT`].
            Algorithm::SlidingWindow => {
                if u128::from(self.limit) * u128::from(self.window_ms()) > u128::from(MAX_LIMIT) {
                    return Err(ConfigError::QuotaTooFine(*self));
                }
            }
            // The emission interval is a whole number of microseconds, at least one.
            Algorithm::Gcra => {
                if u128::from(self.limit) > u128::from(self.window_ms()) * 1000 {
                    return Err(ConfigError::QuotaTooFine(*self));
                }
            }
        }
        Ok(())
    }
}
