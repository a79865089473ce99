//! What is refused before a handle exists, and the bound on TTLs that
//! every call checks.

use std::time::Duration;

use super::{Backend, CacheConfig};
use crate::error::{Error, Result};

/// The longest TTL (and rate-limit window) any call accepts: 100 years of
/// 365 days. Longer ones are an [`ErrorKind::InvalidArgument`](crate::ErrorKind)
/// on every backend, never a panic (the in-memory store adds TTLs to
/// `Instant`s) nor a key left without expiry; for a key that never expires,
/// pass no TTL.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Checks a TTL or window against [`MAX_TTL`]; `argument` names it in the error.
/// What [`Cache::set`](crate::Cache::set), `expire` and `incr_window` call
/// before sending anything, for callers that validate at start-up.
///
/// ```
/// use std::time::Duration;
/// assert!(cache_core::validate_ttl("window", Duration::from_secs(60)).is_ok());
/// let err = cache_core::validate_ttl("window", Duration::MAX).unwrap_err();
/// assert_eq!(err.kind(), cache_core::ErrorKind::InvalidArgument);
/// ```
pub fn validate_ttl(argument: &'static str, ttl: Duration) -> Result<()> {
    if ttl > MAX_TTL {
        return Err(Error::invalid(
            argument,
            format!(
                "{} s is over the maximum of {} s (100 years); pass no TTL for a key that never expires",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Redis's own limit on a string value (`proto-max-bulk-len`'s default).
const MAX_VALUE_BYTES_LIMIT: usize = 512 * 1024 * 1024;

impl CacheConfig {
    /// Refuses settings that cannot be right, naming the setting.
    pub(super) fn validate(&self) -> Result<()> {
        let c = self;
        if c.timeout.is_zero() {
            return Err(Error::config("timeout", "must be greater than zero"));
        }
        if c.connect_timeout.is_zero() {
            return Err(Error::config(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if c.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if c.breaker_threshold == 0 {
            return Err(Error::config("breaker_threshold", "must be at least 1"));
        }
        let uses_tls = match &c.backend {
            Backend::Memory => false,
            Backend::Redis(endpoint) => endpoint.tls,
            Backend::Cluster(nodes) => nodes.iter().any(|n| n.tls),
        };
        if uses_tls && !cfg!(feature = "tls") {
            return Err(Error::config(
                "rediss",
                "TLS needs the `tls` feature of redis-cache-core (redis-cache-core = { version = \"0.1\", features = [\"tls\"] })",
            ));
        }
        if c.max_value_bytes == 0 || c.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
            return Err(Error::config(
                "max_value_bytes",
                "must be between 1 and 512 MiB (Redis's own limit for a string)",
            ));
        }
        if let Some((entries, ttl)) = c.local_tier
            && (entries == 0 || ttl.is_zero() || ttl > MAX_TTL)
        {
            return Err(Error::config(
                "local_tier",
                "needs at least 1 entry and a max TTL between 1 ms and MAX_TTL",
            ));
        }
        if c.invalidate_budget.is_zero() {
            return Err(Error::config(
                "invalidate_budget",
                "must be greater than zero",
            ));
        }
        // The handle adds these to `Instant`s: past MAX_TTL (100 years) is a
        // mistake, and far enough past it a panic at the first call.
        for (setting, duration) in [
            ("timeout", c.timeout),
            ("connect_timeout", c.connect_timeout),
            ("retry_backoff", c.retry_backoff),
            ("invalidate_budget", c.invalidate_budget),
        ] {
            if duration > MAX_TTL {
                return Err(Error::config(
                    setting,
                    "must be at most 100 years (cache_core::MAX_TTL)",
                ));
            }
        }
        if c.encryption_max_skew > super::MAX_ENCRYPTION_SKEW {
            return Err(Error::config(
                "encryption_max_skew",
                "must be at most one day (cache_core::MAX_ENCRYPTION_SKEW)",
            ));
        }
        if c.memory_max_entries == 0 {
            return Err(Error::config("memory_max_entries", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::CacheBuilder;

    /// Durations the handle adds to `Instant`s: an absurd one must be a
    /// configuration error at build time, never a panic at the first call.
    #[tokio::test]
    async fn durations_that_would_overflow_a_clock_are_refused_at_build() {
        type Set = fn(CacheBuilder, Duration) -> CacheBuilder;
        let setters: [(&str, Set); 4] = [
            ("timeout", CacheBuilder::timeout),
            ("connect_timeout", CacheBuilder::connect_timeout),
            ("retry_backoff", CacheBuilder::retry_backoff),
            ("invalidate_budget", CacheBuilder::invalidate_budget),
        ];
        for (name, set) in setters {
            for huge in [Duration::MAX, MAX_TTL + Duration::from_secs(1)] {
                let err = set(crate::Cache::builder(), huge)
                    .build()
                    .await
                    .expect_err(name);
                assert_eq!(err.kind(), crate::error::ErrorKind::Config, "{name}: {err}");
                assert!(err.to_string().contains(name), "{name}: {err}");
            }
            // The largest accepted value works, without a panic.
            let cache = set(crate::Cache::builder(), MAX_TTL).build().await.unwrap();
            cache.set("k", &1, None).await.unwrap();
            assert_eq!(cache.invalidate_prefix("k").await.unwrap(), 1);
        }
    }
}
