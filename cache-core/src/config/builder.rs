//! [`CacheBuilder`]: every setting of a handle, in code.

use std::time::Duration;

use super::{Backend, CacheConfig, RedisEndpoint};
use crate::error::{Error, Result};

/// Builds a [`Cache`](crate::Cache) in code, with the same settings as the
/// environment variables (see the guide's docs/configuration.md).
///
/// ```
/// # async fn run() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// let cache = cache_core::Cache::builder()
///     .redis_url("redis://127.0.0.1:6379/0")?
///     .namespace("billing")
///     .timeout(Duration::from_millis(100))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct CacheBuilder {
    pub(super) config: CacheConfig,
}

impl CacheBuilder {
    /// A builder for the in-memory store with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses one Redis server given as `redis://` or `rediss://` URL.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, ErrorKind};
    ///
    /// let builder = Cache::builder().redis_url("redis://app:s3cret@cache.internal:6380/2")?;
    /// // Building connects in the background; nothing is sent here.
    /// let err = Cache::builder().redis_url("redis://app:s3cret@cache.internal/zero").unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Config); // the path must be a database number
    /// assert!(!err.to_string().contains("s3cret")); // errors never show the URL
    /// # let _ = builder;
    /// # Ok(()) }
    /// ```
    pub fn redis_url(mut self, url: &str) -> Result<Self> {
        self.config.backend = Backend::Redis(RedisEndpoint::parse("redis_url", url)?);
        Ok(self)
    }

    /// Uses one Redis server.
    pub fn redis(mut self, endpoint: RedisEndpoint) -> Self {
        self.config.backend = Backend::Redis(endpoint);
        self
    }

    /// Uses Redis Cluster, discovered from these seed node URLs.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// let builder = cache_core::Cache::builder()
    ///     .cluster_urls(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])?;
    /// assert!(cache_core::Cache::builder().cluster_urls(Vec::<String>::new()).is_err());
    /// # let _ = builder;
    /// # Ok(()) }
    /// ```
    pub fn cluster_urls<I, S>(mut self, urls: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = urls
            .into_iter()
            .map(|url| RedisEndpoint::parse("cluster_urls", url.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if nodes.is_empty() {
            return Err(Error::config("cluster_urls", "lists no node"));
        }
        self.config.backend = Backend::Cluster(nodes);
        Ok(self)
    }

    /// Uses the embedded in-memory store.
    pub fn in_memory(mut self) -> Self {
        self.config.backend = Backend::Memory;
        self
    }

    /// Puts `{namespace}:` in front of every key, so that services sharing a
    /// Redis do not collide. Trailing colons are ignored.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().namespace("billing:").build().await?;
    /// assert_eq!(cache.namespace(), Some("billing")); // stored keys are `billing:{key}`
    /// # Ok(()) }
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        let namespace = namespace.trim_end_matches(':');
        self.config.namespace = (!namespace.is_empty()).then(|| namespace.to_string());
        self
    }

    /// The deadline of each call, from its start until the store's reply is
    /// in, retries included (default 250 ms); see [`Cache::timeout`](crate::Cache::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Bounds each connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Tries of a call failing with a transient error, the first included (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The first backoff between tries; it doubles each time (default 10 ms).
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.config.retry_backoff = backoff;
        self
    }

    /// Consecutive failures that open the circuit breaker (default 5).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{BreakerState, Cache, ErrorKind};
    ///
    /// // A Redis that is down: nothing listens on port 1.
    /// let cache = Cache::builder()
    ///     .redis_url("redis://127.0.0.1:1")?
    ///     .timeout(Duration::from_millis(50))
    ///     .max_attempts(1)
    ///     .breaker_threshold(2)
    ///     .breaker_cooldown(Duration::from_secs(60))
    ///     .build()
    ///     .await?;
    /// for _ in 0..2 {
    ///     assert!(cache.get::<i64>("k").await.unwrap_err().is_unavailable()); // tried, failed
    /// }
    /// // Open: calls fail at once, without touching the store, until the cooldown is over.
    /// assert_eq!(cache.get::<i64>("k").await.unwrap_err().kind(), ErrorKind::CircuitOpen);
    /// assert_eq!(cache.stats().breaker, BreakerState::Open);
    /// assert_eq!(cache.stats().breaker_rejections, 1);
    /// # Ok(()) }
    /// ```
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.config.breaker_threshold = failures;
        self
    }

    /// How long the breaker stays open before one probe call (default 1 s).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.breaker_cooldown = cooldown;
        self
    }

    /// Bound on the in-memory store's entries (default 100 000), kept per
    /// shard: the store has 16 shards of `entries / 16` entries each
    /// (rounded up, at least 1), and a full shard drops its oldest entry. So
    /// a small bound is approximate: `memory_max_entries(2)` holds up to 16.
    pub fn memory_max_entries(mut self, entries: usize) -> Self {
        self.config.memory_max_entries = entries;
        self
    }

    /// Cap on the size of a stored value, in bytes (default 4 MiB). A read
    /// transfers at most this much plus one byte: a larger value is a miss
    /// (counted in [`Stats::oversized`](crate::Stats::oversized)), which
    /// `#[cached]` overwrites; a write of a larger value is an
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind) and sends nothing.
    /// It also bounds the time spent decoding a value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().max_value_bytes(16).build().await?;
    /// let err = cache.set("big", &"x".repeat(100), None).await.unwrap_err();
    /// assert_eq!(err.kind(), cache_core::ErrorKind::InvalidArgument);
    /// # Ok(()) }
    /// ```
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.config.max_value_bytes = bytes;
        self
    }

    /// Bound on a whole [`invalidate_prefix`](crate::Cache::invalidate_prefix)
    /// or [`invalidate_all`](crate::Cache::invalidate_all) call (default 30 s);
    /// each of its SCAN + UNLINK steps is also bounded by the call timeout.
    pub fn invalidate_budget(mut self, budget: Duration) -> Self {
        self.config.invalidate_budget = budget;
        self
    }

    /// Puts an in-process tier of at most `max_entries` values, each kept
    /// at most `max_ttl`, in front of Redis (off by default; the in-memory
    /// store has none). `get`, `get_many` and `#[cached]` functions (unless
    /// `local = false`) read it first, and a hit makes no Redis call. Redis
    /// tells the handle of every change to a key under the namespace, by
    /// anyone (`CLIENT TRACKING`), and the local copy is dropped; while that
    /// channel is down the tier is empty and unused. See the guide's
    /// docs/local-tier.md.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_core::Cache::builder()
    ///     .redis_url("redis://127.0.0.1:6379")?
    ///     .namespace("pricing") // tracking follows `pricing:`: give the service a namespace
    ///     .local_tier(10_000, Duration::from_secs(30))
    ///     .build()
    ///     .await?;
    /// let _: Option<f64> = cache.get("asset:42:current_price").await?; // from Redis, kept locally
    /// let _: Option<f64> = cache.get("asset:42:current_price").await?; // local: no Redis call
    /// # Ok(()) }
    /// ```
    pub fn local_tier(mut self, max_entries: usize, max_ttl: Duration) -> Self {
        self.config.local_tier = Some((max_entries, max_ttl));
        self
    }

    /// With a [`local_tier`](Self::local_tier): when a read's Redis call
    /// fails (Redis unreachable, timing out, the breaker open) and tracking
    /// is down, serve the local entry if there is one younger than the
    /// tier's `max_ttl`, instead of the error (or, for `#[cached]`, the
    /// body). Off by default: such an entry may have changed in Redis after
    /// tracking went down. Entries from before tracking came back are never
    /// served: reconnecting empties the tier.
    pub fn local_tier_serve_stale(mut self, serve_stale: bool) -> Self {
        self.config.local_serve_stale = serve_stale;
        self
    }

    /// Trusts these PEM root certificates for `rediss://` (a private CA)
    /// instead of the system's trust store. Needs the `tls` feature.
    pub fn tls_ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.config.tls_ca_cert = Some(pem.into());
        self
    }

    /// The encoding of values written and read through this handle (default JSON).
    pub fn codec(mut self, codec: crate::codec::Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// The Fernet keys of entries encrypted at rest (`encrypt`,
    /// [`Cache::set_encrypted`](crate::Cache::set_encrypted)); as
    /// `CACHE_ENCRYPTION_KEYS`: the first encrypts, all decrypt.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKeys};
    ///
    /// // Python: cryptography.fernet.Fernet.generate_key()
    /// let keys = EncryptionKeys::parse("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=")?;
    /// let cache = Cache::builder().encryption_keys(keys).build().await?;
    /// cache.set_encrypted("balance", &1250, None).await?;
    /// assert_eq!(cache.get_encrypted::<i64>("balance").await?, Some(1250));
    /// # Ok(()) }
    /// ```
    pub fn encryption_keys(mut self, keys: crate::encryption::EncryptionKeys) -> Self {
        self.config.encryption_keys = Some(keys);
        self
    }

    /// How far in the future an encrypted entry's Fernet timestamp may be
    /// and still be read (default 5 minutes, at most one day; whole
    /// seconds, as Fernet stamps them). Instances whose clocks disagree by
    /// less read each other's entries; an entry stamped further ahead is a
    /// miss counted in [`Stats::clock_skew_misses`](crate::Stats::clock_skew_misses)
    /// (its writer's clock runs ahead: fix the clocks), not a decryption
    /// failure. Entries from the past are read however old they are.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, EncryptionKeys, ErrorKind};
    ///
    /// let keys = EncryptionKeys::parse("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=")?;
    /// let cache = Cache::builder()
    ///     .encryption_keys(keys)
    ///     .encryption_max_skew(Duration::from_secs(30))
    ///     .build()
    ///     .await?;
    /// # let _ = cache;
    /// let err = Cache::builder().encryption_max_skew(Duration::from_secs(7 * 86_400)).build().await.unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Config);
    /// # Ok(()) }
    /// ```
    pub fn encryption_max_skew(mut self, skew: Duration) -> Self {
        self.config.encryption_max_skew = skew;
        self
    }

    /// Turns memoization off: `#[cached]` functions always run their body.
    /// Direct `Cache` calls are unaffected.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, cached};
    ///
    /// #[cached(prefix = "now", ttl = 60, cache = cache, skip(cache))]
    /// async fn calls(cache: &Cache) -> u64 {
    ///     static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    ///     CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    /// }
    ///
    /// let cache = Cache::builder().bypass(true).build().await?;
    /// assert!(cache.is_bypassed());
    /// assert_eq!(calls(&cache).await, 1);
    /// assert_eq!(calls(&cache).await, 2); // the body ran again: nothing was cached
    /// # Ok(()) }
    /// ```
    pub fn bypass(mut self, bypass: bool) -> Self {
        self.config.bypass = bypass;
        self
    }

    /// The settings gathered so far.
    #[cfg(test)]
    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The settings, checked: what [`build`](Self::build) builds from.
    pub(crate) fn into_config(self) -> Result<CacheConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}
