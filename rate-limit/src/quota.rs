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
/// The largest [concurrency limit](Quota::concurrent): 10 000 requests of
/// one client in flight. Each is a lease in the store (a member of a Redis
/// sorted set, an entry of the in-memory set), so the bound is on memory.
pub const MAX_CONCURRENT: u64 = 10_000;
/// The lease TTL of a [concurrency limit](Quota::concurrent) unless
/// [`lease_ttl`](Quota::lease_ttl) says otherwise: 60 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// The shortest lease TTL: 1 s (a lease shorter than a response would stop
/// counting before it is released).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// The longest lease TTL: 24 h. A lease of an instance that dies without
/// releasing it holds a slot of its client until then, at most.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

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
    /// A concurrency limit ([`Quota::concurrent`]): at most `limit` requests
    /// of a client in flight at once, across every instance. Each admitted
    /// request holds a lease, released when its response body ends (or is
    /// dropped); the quota's window is the lease's TTL, the longest a lease
    /// of an instance that died can hold a slot.
    Concurrent,
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

    /// At most `limit` requests of a client in flight at once, across every
    /// instance sharing the store (an expensive export, a stream): each
    /// admitted request takes a lease, checked and taken in the same store
    /// call as the layer's rate policies (all or nothing), and released
    /// when its response body ends, fails or is dropped, not when the
    /// response head is sent. A request over the limit gets a 429 with
    /// `Retry-After: 1` (a slot frees whenever a response ends). A request
    /// of [cost](crate::RateLimitLayerBuilder::cost) 0 takes no lease.
    ///
    /// A lease carries an expiry, the [lease TTL](Self::lease_ttl) (default
    /// [`DEFAULT_LEASE_TTL`], 60 s): an instance that dies holding leases
    /// frees its slots by then. A response still streaming renews its lease
    /// when it sends a frame past half the TTL, so a long stream keeps its
    /// slot as long as it sends something at least once per TTL (a
    /// Server-Sent Events keep-alive does); one silent for a whole TTL
    /// stops counting. Limits: 1 to [`MAX_CONCURRENT`]; TTL
    /// [`MIN_LEASE_TTL`] to [`MAX_LEASE_TTL`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit::{Algorithm, Quota};
    ///
    /// let exports = Quota::concurrent(2).lease_ttl(Duration::from_secs(300));
    /// assert_eq!(exports.enforced_by(), Algorithm::Concurrent);
    /// assert_eq!((exports.limit(), exports.window()), (2, Duration::from_secs(300)));
    /// ```
    pub const fn concurrent(limit: u64) -> Quota {
        Quota::new(limit, DEFAULT_LEASE_TTL).algorithm(Algorithm::Concurrent)
    }

    /// The lease TTL of a [concurrency limit](Self::concurrent) (its
    /// window): how long a lease counts at most if it is never released.
    #[must_use]
    pub const fn lease_ttl(mut self, ttl: Duration) -> Quota {
        self.window = ttl;
        self
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
        if self.algorithm == Algorithm::Concurrent {
            return self.validate_concurrent();
        }
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
            Algorithm::Concurrent => {}
        }
        Ok(())
    }

    /// A concurrency limit: leases held at most, and their TTL.
    fn validate_concurrent(&self) -> Result<(), ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        if self.limit > MAX_CONCURRENT {
            return Err(ConfigError::ConcurrencyTooLarge(self.limit));
        }
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&self.window) {
            return Err(ConfigError::LeaseTtl(self.window));
        }
        Ok(())
    }

    /// A concurrency limit: leases, not units per window.
    pub(crate) fn is_concurrent(&self) -> bool {
        self.algorithm == Algorithm::Concurrent
    }
}
