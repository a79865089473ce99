//! How a handle is doing: its counters ([`Cache::stats`]) and a probe of
//! its store ([`Cache::health`]). Above the features, whose counters it reads.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cache::Cache;
use crate::error::{Error, ErrorKind};
use crate::resilience::Idempotence;
use crate::stats::{BreakerState, Stats};

/// The answer of [`Cache::health`].
///
/// New fields may be added: read it, do not build it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// The store answered a PING within the timeout.
    pub healthy: bool,
    /// Which store, with the password hidden.
    pub backend: String,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// Round trip of the PING, when it answered.
    pub latency: Option<Duration>,
    /// Why it is unhealthy.
    pub error: Option<String>,
    /// The kind of that error: [`ErrorKind::Auth`](crate::ErrorKind::Auth) when the store refuses the
    /// credentials, [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when it is slow, and so on.
    pub error_kind: Option<ErrorKind>,
}

impl Cache {
    /// Counters since the handle was built, and the breaker's state.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let _: Option<i32> = cache.get("missing").await?;
    /// let stats = cache.stats();
    /// assert_eq!((stats.hits, stats.misses), (0, 1));
    /// assert_eq!(stats.breaker, cache_core::BreakerState::Closed);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Stats {
        let mut stats = self.counters().snapshot(self.breaker_state());
        stats.events = self.pubsub_stats();
        if let Some(local) = self.local_tier() {
            local.stats().fill(&mut stats);
        }
        stats
    }

    /// PINGs the store within the timeout; never fails, reports instead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let health = cache_core::Cache::in_memory().health().await;
    /// assert!(health.healthy);
    /// assert_eq!(health.breaker, cache_core::BreakerState::Closed);
    /// assert_eq!(health.error_kind, None);
    /// # Ok(()) }
    /// ```
    pub async fn health(&self) -> Health {
        let started = Instant::now();
        let result = self.run(Idempotence::Idempotent, |s| s.ping()).await;
        Health {
            healthy: result.is_ok(),
            backend: self.backend().to_string(),
            breaker: self.breaker_state(),
            latency: result.is_ok().then(|| started.elapsed()),
            error_kind: result.as_ref().err().map(Error::kind),
            error: result.err().map(|err| err.to_string()),
        }
    }
}
