//! The [`Cache`] handle: how it is built and what it holds (here), every
//! store call under the resilience wrapper ([`call`]), the byte-level paths
//! the engines use ([`bytes`]), the typed API ([`typed`]) and the
//! invalidation walks ([`invalidate`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::Codec;
use crate::config::{Backend, CacheBuilder, CacheConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::resilience::{CircuitBreaker, Idempotence, Resilience};
use crate::stats::{BreakerState, Counters};
use crate::store::identity::{StoreId, StoredKey};
use crate::store::{AtomicOp, Reach, Store};
use crate::sync::StateFlag;

mod bytes;
mod call;
mod invalidate;
mod typed;

/// A handle to one cache: Redis, Redis Cluster or the embedded in-memory store.
///
/// Cheap to clone (one `Arc`); clones share the connection, the circuit breaker
/// and the counters. Values are JSON. Every call is bounded by the handle's
/// timeout, transient failures are retried, and a breaker stops calling a store
/// that keeps failing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// let cache = cache_core::Cache::in_memory();
/// cache.set("asset:42:current_price", &72000.0, Some(Duration::from_secs(60))).await?;
/// let price: Option<f64> = cache.get("asset:42:current_price").await?;
/// assert_eq!(price, Some(72000.0));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Box<dyn Store>,
    /// The store's answer to where its data is, kept: asked on every call.
    reach: Reach,
    /// Which store it is, the same for every handle on its data.
    store_id: StoreId,
    backend: Backend,
    namespace: Option<String>,
    resilience: Resilience,
    counters: Counters,
    bypass: bool,
    codec: Codec,
    /// Whether memoized calls are currently falling back to their bodies; for
    /// logging once per change, not once per call.
    memo_failing: StateFlag,
    /// Whether the store is refusing the credentials; for logging once per change.
    auth_failing: StateFlag,
    max_value_bytes: usize,
    invalidate_budget: Duration,
    /// The in-process tier in front of the store, when on.
    local: Option<Arc<crate::local::LocalTier>>,
    /// What the handle was built from, for [`Cache::dedicated`]. Not shown
    /// in `Debug` (its endpoint holds the password, though as a `Secret`).
    config: CacheConfig,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Backend's Display hides passwords.
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend.to_string())
            .field("namespace", &self.inner.namespace)
            .field("timeout", &self.inner.resilience.timeout)
            .field("breaker", &self.inner.resilience.breaker.state())
            .finish()
    }
}

impl Cache {
    /// Builds a handle from the environment (see the guide's configuration
    /// page, docs/configuration.md): `REDIS_CLUSTER_URLS`, else `REDIS_URL`, else `REDIS_HOST`...,
    /// else the in-memory store.
    ///
    /// Fails only on bad configuration. When Redis is unreachable the handle is
    /// still returned: calls fail (and `#[cached]` functions run uncached) until
    /// the connection comes up by itself.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// // With none of REDIS_CLUSTER_URLS, REDIS_URL, REDIS_HOST set: the in-memory store.
    /// let cache = cache_core::Cache::from_env().await?;
    /// println!("caching in {}", cache.backend()); // the password, if any, hidden
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Cache> {
        CacheBuilder::from_env()?.build().await
    }

    /// A builder for every setting.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// An embedded in-memory store with default settings: for development,
    /// tests and single-process services. Needs no runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(*cache.backend(), cache_core::Backend::Memory);
    /// cache.set("greeting", "hello", None).await?;
    /// assert_eq!(cache.get::<String>("greeting").await?.as_deref(), Some("hello"));
    /// # Ok(()) }
    /// ```
    pub fn in_memory() -> Cache {
        Self::with_store(
            CacheConfig::default(),
            crate::store::in_memory(crate::config::DEFAULT_MEMORY_MAX_ENTRIES),
        )
    }

    pub(crate) fn from_config(config: CacheConfig) -> Result<Cache> {
        let store = crate::store::open(&config)?;
        Ok(Self::with_store(config, store))
    }

    fn with_store(config: CacheConfig, store: Box<dyn Store>) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                reach: store.reach(),
                store_id: StoreId::of_new_store(&config.backend),
                store: crate::telemetry::observe(store),
                resilience: Resilience {
                    timeout: config.timeout,
                    max_attempts: config.max_attempts,
                    retry_backoff: config.retry_backoff,
                    breaker: CircuitBreaker::new(config.breaker_threshold, config.breaker_cooldown),
                },
                backend: config.backend.clone(),
                namespace: config.namespace.clone(),
                counters: Counters::default(),
                bypass: config.bypass,
                codec: config.codec,
                memo_failing: StateFlag::new(),
                auth_failing: StateFlag::new(),
                max_value_bytes: config.max_value_bytes,
                invalidate_budget: config.invalidate_budget,
                local: crate::local::for_config(&config),
                config,
            }),
        }
    }

    /// A handle to the same store with the same settings but a connection
    /// of its own (and its own breaker and counters), so that its calls
    /// never queue behind this handle's: one slow or large reply on a
    /// multiplexed connection delays every call sent after it. The rate
    /// limiter takes one by default. The in-memory store has no connection:
    /// there the answer is a clone sharing the data. It has no local tier
    /// (its own would cost a tracking connection and its pushes, and the
    /// limiter reads no values): build another handle for a second one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let counters = cache.dedicated(); // in memory: the same data
    /// cache.set("k", &1, None).await?;
    /// assert_eq!(counters.get::<i32>("k").await?, Some(1));
    /// # Ok(()) }
    /// ```
    pub fn dedicated(&self) -> Cache {
        if self.inner.reach.in_process() {
            return self.clone();
        }
        let mut config = self.inner.config.clone();
        config.local_tier = None;
        match Self::from_config(config) {
            Ok(cache) => cache,
            // The same configuration built this handle; should the client still
            // refuse it, sharing the connection is the safe fallback.
            Err(err) => {
                tracing::warn!(%err, "could not open a dedicated cache connection; sharing the handle's");
                self.clone()
            }
        }
    }

    /// A [`dedicated`](Self::dedicated) handle for counters: on a Redis
    /// Cluster, its client never sends a command again once it may have
    /// reached a node. The cluster driver's own retries (after a broken
    /// connection the command may have run before the break) are off, so a
    /// counting script or `INCR` runs at most once per call; a call the
    /// node answered without running it (`MOVED`, `ASK`, `TRYAGAIN`,
    /// `CLUSTERDOWN`, `LOADING`, `MASTERDOWN`, `READONLY`, `BUSY`) or that
    /// found no connection is sent again by the handle, within its timeout
    /// and retries, and a broken connection is the call's error (the rate
    /// limiter's fail mode decides). A standalone handle never resends such
    /// calls anyway: this is [`dedicated`](Self::dedicated) there. The rate
    /// limiter takes one.
    pub fn dedicated_counter(&self) -> Cache {
        if self.inner.reach.in_process() {
            return self.clone();
        }
        let mut config = self.inner.config.clone();
        config.local_tier = None;
        config.counter = true;
        match Self::from_config(config) {
            Ok(cache) => cache,
            Err(err) => {
                tracing::warn!(%err, "could not open a dedicated counter connection; using a dedicated one");
                self.dedicated()
            }
        }
    }

    /// Runs the atomic operation `op` ([`AtomicOp`]) on `keys` (namespaced
    /// like every key; they must share one hash tag, `{...}`: one slot on
    /// a cluster, one lock in memory) with integer `args`, within `timeout`
    /// (at most the handle's), under the handle's circuit breaker: its Lua
    /// script on Redis, its twin in memory. Never sent again once it may
    /// have run (only when the connection was refused or missing, or the
    /// server refused it without running it: `MOVED`, `TRYAGAIN`,
    /// `LOADING`, ...), so an operation that counts counts once; on a
    /// cluster, only a [`dedicated_counter`](Self::dedicated_counter)
    /// handle also keeps the cluster driver from sending it again after a
    /// broken connection.
    pub async fn run_atomic(
        &self,
        op: &dyn AtomicOp,
        keys: &[&str],
        args: &[i64],
        timeout: Duration,
    ) -> Result<Vec<i64>> {
        let owned = self.full_keys(keys);
        let named: Vec<&str>;
        let keys = match &owned {
            None => keys,
            Some(owned) => {
                named = owned.iter().map(String::as_str).collect();
                &named
            }
        };
        // In process: at once, no future to allocate, nothing to time out.
        if self.inner.reach.in_process()
            && let Some(result) = self.inner.store.run_atomic_at_once(op, keys, args)
        {
            if result.is_err() {
                self.inner.counters.record_error();
            }
            return result;
        }
        self.run_within(Idempotence::CountsOnce, timeout, |s| {
            s.run_atomic(op, keys, args)
        })
        .await
    }

    /// Which store this handle talks to (its `Display` hides the password).
    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// The namespace put in front of every key, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    /// The timeout of one call: the time from the call until the store's
    /// reply is received in full, connecting and retries included. A reply
    /// that completes after it is an [`Error::Timeout`](crate::Error::Timeout), never a late `Ok`.
    /// [`get`](Self::get) and [`get_many`](Self::get_many) also count the
    /// decoding in it; decoding is bounded by
    /// [`max_value_bytes`](Self::max_value_bytes), not interrupted.
    pub fn timeout(&self) -> Duration {
        self.inner.resilience.timeout
    }

    /// The cap on the size of a value read or written (see
    /// [`CacheBuilder::max_value_bytes`](crate::CacheBuilder::max_value_bytes)).
    pub fn max_value_bytes(&self) -> usize {
        self.inner.max_value_bytes
    }

    /// `true` when memoization is switched off for this handle (`CACHE_BYPASS`).
    pub fn is_bypassed(&self) -> bool {
        self.inner.bypass
    }

    /// The handle's value encoding.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// Records whether memoization is failing open, logging only changes.
    pub(crate) fn note_memo_failure(&self, error: Option<&Error>) {
        match error {
            // A result over the size cap (or a TTL over the maximum) is this
            // call's, not the store's: not cached, and not an outage to report.
            Some(error) if error.kind() == ErrorKind::InvalidArgument => {
                tracing::debug!(%error, "memoized result not cached");
            }
            Some(error) => {
                if self.inner.memo_failing.raise() {
                    tracing::warn!(
                        backend = %self.inner.backend,
                        %error,
                        "cache unavailable: memoized functions run uncached until it recovers"
                    );
                }
            }
            None => {
                if self.inner.memo_failing.lower() {
                    tracing::info!(backend = %self.inner.backend, "cache available again for memoized functions");
                }
            }
        }
    }

    /// Counts a memoized call that runs uncached because its key could not be built.
    pub(crate) fn note_uncacheable(&self) {
        self.inner.counters.record_uncacheable();
    }

    /// The key as stored: `{namespace}:{key}`, or `key` without a namespace
    /// ([`stored_key`](Self::stored_key) is its public form).
    pub(crate) fn full_key<'k>(&self, key: &'k str) -> Cow<'k, str> {
        match &self.inner.namespace {
            Some(ns) => Cow::Owned(format!("{ns}:{key}")),
            None => Cow::Borrowed(key),
        }
    }

    /// [`full_key`](Self::full_key) of each of `keys`, or `None` without a
    /// namespace: then the keys go as they are, no copy per call.
    pub(crate) fn full_keys(&self, keys: &[&str]) -> Option<Vec<String>> {
        self.inner.namespace.as_ref()?;
        Some(
            keys.iter()
                .map(|key| self.full_key(key).into_owned())
                .collect(),
        )
    }

    /// [`full_key`](Self::full_key) of an owned key: no copy without a namespace.
    pub(crate) fn owned_full_key(&self, key: String) -> String {
        match &self.inner.namespace {
            Some(ns) => format!("{ns}:{key}"),
            None => key,
        }
    }

    /// Where the handle's store keeps its data ([`Reach`]): in this
    /// process, on one Redis server, or on a cluster. For libraries built
    /// on the handle that must count or coordinate differently there (the
    /// rate limiter counts in process, exactly, on the in-memory store, and
    /// gives a cluster's keys one hash tag); ask this rather than matching
    /// on [`backend`](Self::backend).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, Reach};
    ///
    /// assert_eq!(Cache::in_memory().reach(), Reach::InProcess);
    /// let redis = Cache::builder().redis_url("redis://127.0.0.1:1")?.build().await?;
    /// assert_eq!(redis.reach(), Reach::Server);
    /// # Ok(()) }
    /// ```
    pub fn reach(&self) -> Reach {
        self.inner.reach
    }

    /// Which store this handle reads and writes ([`StoreId`]): equal for
    /// every handle on the same data (clones and
    /// [`dedicated`](Self::dedicated) handles of one in-memory store, Redis
    /// handles on one host, port and database), whatever their namespaces.
    /// For state a library keeps per store beside the handle.
    ///
    /// ```
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.store_id(), cache.dedicated().store_id());
    /// assert_ne!(cache.store_id(), cache_core::Cache::in_memory().store_id());
    /// ```
    pub fn store_id(&self) -> &StoreId {
        &self.inner.store_id
    }

    /// Where `key` of this handle lives ([`StoredKey`]): the store and the
    /// key there, this handle's namespace in front (`{namespace}:{key}`).
    /// Equal for two handles' keys exactly when they name one entry.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().in_memory().namespace("limits").build().await?;
    /// let rate = cache.stored_key("rate");
    /// assert_eq!(rate.key(), "limits:rate");
    /// assert_eq!(rate.store(), cache.store_id());
    /// assert_eq!(rate, cache.dedicated().stored_key("rate"));
    /// # Ok(()) }
    /// ```
    pub fn stored_key(&self, key: &str) -> StoredKey {
        StoredKey::new(
            self.inner.store_id.clone(),
            self.owned_full_key(key.to_string()),
        )
    }

    /// What the handle was built from.
    pub(crate) fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// What tells this handle (and its clones) from any other live handle:
    /// the flights of memoized calls are per handle.
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner).addr()
    }

    /// The handle's local tier, when it has one.
    #[inline]
    pub(crate) fn local_tier(&self) -> Option<&crate::local::LocalTier> {
        self.inner.local.as_deref()
    }

    /// Counts a hit served without decoding (a local tier's decoded value).
    #[inline]
    pub(crate) fn record_hit(&self) {
        self.inner.counters.record_hit();
    }

    /// The Fernet keys of encrypted entries, if configured.
    pub(crate) fn encryption_keys(&self) -> Option<&crate::encryption::EncryptionKeys> {
        self.inner.config.encryption_keys.as_ref()
    }

    /// The handle's counters, for the stored-value paths.
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The circuit breaker's state now.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.inner.resilience.breaker.state()
    }
}

impl CacheBuilder {
    /// Builds the handle. Never fails because Redis is unreachable: the
    /// connection is made in the background and calls fail (fast) until it is up.
    /// Must run inside a Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_core::Cache::builder().timeout(Duration::from_millis(50)).build().await?;
    /// assert_eq!(cache.timeout(), Duration::from_millis(50));
    /// // Settings that cannot be right are refused here.
    /// let err = cache_core::Cache::builder().timeout(Duration::ZERO).build().await.unwrap_err();
    /// assert_eq!(err.kind(), cache_core::ErrorKind::Config);
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Cache> {
        Cache::from_config(self.into_config()?)
    }
}

#[cfg(test)]
mod store_identity_tests {
    use super::*;

    #[tokio::test]
    async fn handles_on_one_redis_database_share_its_id_and_reach() {
        // Nothing listens on port 1: the handles are built all the same.
        let build = |url: &'static str, namespace: &'static str| async move {
            Cache::builder()
                .redis_url(url)
                .unwrap()
                .namespace(namespace)
                .build()
                .await
                .unwrap()
        };
        let a = build("redis://:pw@127.0.0.1:1/4", "a").await;
        let b = build("redis://127.0.0.1:1/4", "b").await;
        assert_eq!(a.reach(), Reach::Server);
        assert_eq!(a.store_id(), b.store_id());
        assert_eq!(a.store_id(), a.dedicated().store_id());
        assert_eq!(a.store_id(), a.dedicated_counter().store_id());
        assert_ne!(
            a.store_id(),
            build("redis://127.0.0.1:1/5", "a").await.store_id()
        );
        // Namespaces part the entries, not the store.
        assert_ne!(a.stored_key("k"), b.stored_key("k"));
        // And one entry is one stored key, however the namespace and the key split it.
        let nested = build("redis://127.0.0.1:1/4", "a:x").await;
        assert_eq!(a.stored_key("x:k"), nested.stored_key("k"));
        assert_eq!(nested.stored_key("k").key(), "a:x:k");
    }

    #[test]
    fn a_stored_key_is_the_namespaced_key_on_the_store() {
        let cache = Cache::in_memory();
        assert_eq!(cache.reach(), Reach::InProcess);
        assert_eq!(cache.stored_key("rate").key(), "rate");
        assert_eq!(
            cache.stored_key("rate"),
            cache.dedicated().stored_key("rate")
        );
        assert_ne!(
            cache.stored_key("rate"),
            Cache::in_memory().stored_key("rate")
        );
    }
}
