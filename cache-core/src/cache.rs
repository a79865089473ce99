//! The [`Cache`] handle.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::config::{Backend, CacheBuilder, CacheConfig, validate_ttl};
use crate::error::{Error, ErrorKind, Result};
use crate::resilience::{BreakerState, CircuitBreaker, Idempotence, Resilience};
use crate::stats::{Counters, Stats};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{KeyTtl, ScanNode, Script, Store, WindowCount};
use crate::sync::StateFlag;

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
    /// [`Cache::shared_state`]: one value per type, shared by the clones.
    shared: std::sync::Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
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
    /// The kind of that error: [`ErrorKind::Auth`] when the store refuses the
    /// credentials, [`ErrorKind::Timeout`] when it is slow, and so on.
    pub error_kind: Option<ErrorKind>,
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
            Box::new(MemoryStore::new(crate::config::DEFAULT_MEMORY_MAX_ENTRIES)),
        )
    }

    pub(crate) fn from_config(config: CacheConfig) -> Result<Cache> {
        let store: Box<dyn Store> = match &config.backend {
            Backend::Memory => Box::new(MemoryStore::new(config.memory_max_entries)),
            Backend::Redis(endpoint) => Box::new(RedisStore::standalone(endpoint, &config)?),
            Backend::Cluster(nodes) => Box::new(RedisStore::cluster(nodes, &config)?),
        };
        Ok(Self::with_store(config, store))
    }

    fn with_store(config: CacheConfig, store: Box<dyn Store>) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                store: crate::telemetry::observe(store, &config.backend),
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
                shared: std::sync::Mutex::default(),
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
        if self.inner.backend == Backend::Memory {
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
        if self.inner.backend == Backend::Memory {
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

    /// A value of type `T` shared by this handle and its clones (and, for
    /// the in-memory store, by [`dedicated`](Self::dedicated) handles, which
    /// are clones there): made with `T::default()` on first use. For
    /// libraries that keep state beside the store, such as the rate
    /// limiter's in-memory counters, which must be the same for every layer
    /// built from one in-memory handle.
    pub fn shared_state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        // Only pushes happen under the lock: a poisoned list is whole.
        let mut shared = crate::sync::lock(&self.inner.shared);
        if let Some(found) = shared
            .iter()
            .find_map(|value| Arc::clone(value).downcast::<T>().ok())
        {
            return found;
        }
        let value = Arc::new(T::default());
        shared.push(value.clone());
        value
    }

    /// Runs a Lua `script` on the store, with `keys` (namespaced like every
    /// key; on a cluster they must share one hash slot: give them one hash
    /// tag) and integer `args`, within `timeout` (at most the handle's),
    /// under the handle's circuit breaker. Its reply must be an array of
    /// integers. Sent again only when it surely did not run (the connection
    /// was refused or missing, or the server refused it without running it:
    /// `MOVED`, `TRYAGAIN`, `LOADING`, ...), so a script that counts counts
    /// once; on a cluster, only a [`dedicated_counter`](Self::dedicated_counter)
    /// handle also keeps the cluster driver from sending it again after a
    /// broken connection. The in-memory store runs no scripts:
    /// [`ErrorKind::InvalidArgument`].
    pub async fn eval_script_within(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[i64],
        timeout: Duration,
    ) -> Result<Vec<i64>> {
        // Without a namespace the keys go as they are: no copy per call.
        let owned: Vec<String>;
        let named: Vec<&str>;
        let keys = match self.inner.namespace {
            None => keys,
            Some(_) => {
                owned = keys
                    .iter()
                    .map(|key| self.full_key(key).into_owned())
                    .collect();
                named = owned.iter().map(String::as_str).collect();
                &named
            }
        };
        self.run_within(Idempotence::CountsOnce, timeout, |s| {
            s.eval(script, keys, args)
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
    /// that completes after it is an [`Error::Timeout`], never a late `Ok`.
    /// [`get`](Self::get) and [`get_many`](Self::get_many) also count the
    /// decoding in it; decoding is bounded by
    /// [`max_value_bytes`](Self::max_value_bytes), not interrupted.
    pub fn timeout(&self) -> Duration {
        self.inner.resilience.timeout
    }

    /// The cap on the size of a value read or written (see
    /// [`CacheBuilder::max_value_bytes`]).
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

    /// The key as stored: `{namespace}:{key}`, or `key` without a namespace.
    /// For this workspace's crates (the rate limiter's in-memory keys and tests);
    /// not part of the promised API.
    #[doc(hidden)]
    pub fn full_key<'k>(&self, key: &'k str) -> Cow<'k, str> {
        match &self.inner.namespace {
            Some(ns) => Cow::Owned(format!("{ns}:{key}")),
            None => Cow::Borrowed(key),
        }
    }

    /// [`full_key`](Self::full_key) of an owned key: no copy without a namespace.
    pub(crate) fn owned_full_key(&self, key: String) -> String {
        match &self.inner.namespace {
            Some(ns) => format!("{ns}:{key}"),
            None => key,
        }
    }

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
        let mut stats = self
            .inner
            .counters
            .snapshot(self.inner.resilience.breaker.state());
        stats.events = self.shared_state::<crate::events::BusState>().stats();
        if let Some(local) = &self.inner.local {
            stats.set_local(local.stats());
        }
        stats
    }

    /// The handle's typed event bus (Redis pub/sub, or in process on the
    /// in-memory backend): see [`events`](crate::events).
    pub fn events(&self) -> crate::events::EventBus {
        crate::events::EventBus::new(self.clone())
    }

    /// What the handle was built from.
    pub(crate) fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// `PUBLISH` (`SPUBLISH` on a cluster) of raw bytes; sent once, never retried.
    pub(crate) async fn publish_bytes(&self, channel: &str, payload: &[u8]) -> Result<u64> {
        self.run(Idempotence::CountsOnce, |s| s.publish(channel, payload))
            .await
    }

    /// What tells this handle (and its clones) from any other live handle:
    /// the flights of memoized calls are per handle.
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner).addr()
    }

    /// The handle's local tier, when it has one.
    pub(crate) fn local_tier(&self) -> Option<&crate::local::LocalTier> {
        self.inner.local.as_deref()
    }

    /// Counts a hit served without decoding (a local tier's decoded value).
    pub(crate) fn record_hit(&self) {
        self.inner.counters.record_hit();
    }

    /// [`get_full_within`](Self::get_full_within), keeping what it read in
    /// the local tier unless the key changed meanwhile.
    pub(crate) async fn get_full_filling(
        &self,
        full_key: &str,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>> {
        let Some(local) = &self.inner.local else {
            return self.get_full_within(full_key, timeout).await;
        };
        let watch = local.watch(full_key);
        let (bytes, expires) = self.get_full_expiring(full_key, timeout).await?;
        if let Some(bytes) = &bytes {
            local.fill(watch, bytes, None, expires);
        }
        Ok(bytes)
    }

    /// [`get_full_within`](Self::get_full_within) and the instant the key
    /// expires in Redis, if it has a TTL, in the same round trip: a local
    /// copy must not outlive the key. Counted from before the read was sent,
    /// so never later than the real expiry.
    pub(crate) async fn get_full_expiring(
        &self,
        full_key: &str,
        timeout: Duration,
    ) -> Result<(Option<Vec<u8>>, Option<std::time::Instant>)> {
        let sent = std::time::Instant::now();
        let cap = self.inner.max_value_bytes;
        let (bytes, left) = self
            .run_within(Idempotence::Idempotent, timeout, |s| {
                s.get_expiring(full_key, cap)
            })
            .await?;
        Ok((self.within_cap(full_key, bytes), expiry(sent, left)))
    }

    /// [`set_full_within`](Self::set_full_within), keeping the value in the
    /// local tier (under `alias`, if given) once Redis's invalidation of this
    /// very write has come back, and no other one (see [`crate::local`]).
    pub(crate) async fn set_full_filling(
        &self,
        full_key: &str,
        alias: Option<&[u8]>,
        value: &[u8],
        decoded: Option<crate::local::Decoded>,
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<()> {
        // A zero TTL deletes the key: nothing to keep.
        let deletes = ttl.is_some_and(|ttl| ttl.as_millis() == 0);
        let Some(local) = self.inner.local.as_ref().filter(|_| !deletes) else {
            return self.set_full_within(full_key, value, ttl, timeout).await;
        };
        let watch = local.watch(full_key);
        let written = self.write_full_within(full_key, value, ttl, timeout).await;
        if written.is_ok() && local.barrier().await {
            local.fill_own(watch, value, decoded, alias, ttl);
        } else {
            drop(watch);
            local.evict(full_key);
        }
        written
    }

    /// Drops the local copy of a key this handle just changed.
    fn local_evict(&self, full_key: &str) {
        if let Some(local) = &self.inner.local {
            local.evict(full_key);
        }
    }

    async fn run<'a, T, F>(&'a self, idempotence: Idempotence, call: F) -> Result<T>
    where
        F: FnMut(&'a dyn Store) -> crate::store::StoreFuture<'a, T>,
    {
        self.run_within(idempotence, self.timeout(), call).await
    }

    /// [`run`](Self::run) with a deadline of its own, at most the handle's
    /// timeout; a zero one fails at once as a timeout, without a store call.
    async fn run_within<'a, T, F>(
        &'a self,
        idempotence: Idempotence,
        timeout: Duration,
        call: F,
    ) -> Result<T>
    where
        F: FnMut(&'a dyn Store) -> crate::store::StoreFuture<'a, T>,
    {
        let mut call = call;
        let store: &'a dyn Store = self.inner.store.as_ref();
        if self.inner.backend == Backend::Memory {
            // No network: nothing to time out, retry or break.
            let result = call(store).await;
            if result.is_err() {
                self.inner.counters.record_error();
            }
            return result;
        }
        let timeout = timeout.min(self.timeout());
        let started = tokio::time::Instant::now();
        let mut result = self
            .inner
            .resilience
            .run(&self.inner.counters, idempotence, timeout, || call(store))
            .await;
        if let Err(Error::Connection(cause)) = &result
            && cause.kind() == redis::ErrorKind::ClusterConnectionNotFound
        {
            // The cluster client does not say why it has no connection: a
            // refused password must not pass for an outage. Within what is
            // left of the deadline.
            let left = timeout.saturating_sub(started.elapsed());
            if let Ok(Ok(Some(reply))) = tokio::time::timeout(left, store.refused_login()).await {
                result = Err(Error::Auth(reply));
            }
        }
        self.note_auth(&result);
        result
    }

    /// Logs a refusal of the credentials once per change, at error level, with
    /// the user name (never the password): unlike a slow store, it will not
    /// get better by itself.
    fn note_auth<T>(&self, result: &Result<T>) {
        let failing = &self.inner.auth_failing;
        match result {
            Err(Error::Auth(reply)) => {
                if failing.raise() {
                    tracing::error!(
                        backend = %self.inner.backend,
                        user = self.user_name(),
                        reply = %reply,
                        "the cache store refused the credentials: check REDIS_USERNAME / REDIS_PASSWORD and the user's ACL"
                    );
                }
            }
            Ok(_) => {
                if failing.lower() {
                    tracing::info!(backend = %self.inner.backend, "the cache store accepts the credentials again");
                }
            }
            Err(_) => {}
        }
    }

    /// The ACL user the handle logs in as (`default` when none is configured).
    fn user_name(&self) -> &str {
        let endpoint = match &self.inner.backend {
            Backend::Redis(endpoint) => Some(endpoint),
            Backend::Cluster(nodes) => nodes.first(),
            Backend::Memory => None,
        };
        endpoint
            .and_then(|e| e.username.as_deref())
            .unwrap_or("default")
    }

    /// The Fernet keys of encrypted entries, if configured.
    pub(crate) fn encryption_keys(&self) -> Option<&crate::EncryptionKeys> {
        self.inner.config.encryption_keys.as_ref()
    }

    /// The handle's counters, for the stored-value paths.
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Raw values of full keys in one round trip, within `timeout`; each
    /// over the cap is `None`.
    pub(crate) async fn get_many_full_within(
        &self,
        full_keys: &[String],
        timeout: Duration,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let cap = self.inner.max_value_bytes;
        let values = self
            .run_within(Idempotence::Idempotent, timeout, |s| {
                s.get_many(full_keys, cap)
            })
            .await?;
        Ok(full_keys
            .iter()
            .zip(values)
            .map(|(key, bytes)| self.within_cap(key, bytes))
            .collect())
    }

    /// Reads raw bytes. No codec, no hit/miss counting.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("price", &72000.5, None).await?;
    /// // Values are plain JSON: what any other Redis client reads.
    /// assert_eq!(cache.get_bytes("price").await?.as_deref(), Some(&b"72000.5"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_full_within(&self.full_key(key), self.timeout())
            .await
    }

    /// Reads a key that already has the namespace in front, within `timeout`
    /// (at most the handle's).
    ///
    /// A value over [`max_value_bytes`](Self::max_value_bytes) is `None` (a
    /// miss, counted as oversized); at most the cap plus one byte is read.
    pub(crate) async fn get_full_within(
        &self,
        full_key: &str,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>> {
        let cap = self.inner.max_value_bytes;
        let bytes = self
            .run_within(Idempotence::Idempotent, timeout, |s| s.get(full_key, cap))
            .await?;
        Ok(self.within_cap(full_key, bytes))
    }

    /// `bytes` if within the cap; else `None`, counted and logged.
    fn within_cap(&self, full_key: &str, bytes: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match bytes {
            Some(bytes) if bytes.len() > self.inner.max_value_bytes => {
                self.inner.counters.record_oversized();
                tracing::debug!(
                    key = full_key,
                    max_value_bytes = self.inner.max_value_bytes,
                    "cache entry is over max_value_bytes; treated as a miss"
                );
                None
            }
            bytes => bytes,
        }
    }

    /// Refuses a value the handle would never read back.
    fn check_size(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.inner.max_value_bytes {
            return Err(Error::invalid(
                "value",
                format!(
                    "{} bytes, over the handle's max_value_bytes of {}",
                    value.len(),
                    self.inner.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Writes raw bytes, with an optional TTL (zero removes the key, as Redis does).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set_bytes("written-by-python", br#"{"a": 1}"#, None).await?;
    /// let value: Option<std::collections::HashMap<String, i32>> = cache.get("written-by-python").await?;
    /// assert_eq!(value.map(|map| map["a"]), Some(1));
    /// # Ok(()) }
    /// ```
    pub async fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.set_full_within(&self.full_key(key), value, ttl, self.timeout())
            .await
    }

    /// Writes a key that already has the namespace in front, within `timeout`
    /// (at most the handle's).
    pub(crate) async fn set_full_within(
        &self,
        full_key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<()> {
        let written = self.write_full_within(full_key, value, ttl, timeout).await;
        self.local_evict(full_key);
        written
    }

    /// [`set_full_within`](Self::set_full_within) without the local tier.
    async fn write_full_within(
        &self,
        full_key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<()> {
        if let Some(ttl) = ttl {
            validate_ttl("ttl", ttl)?;
        }
        self.check_size(value)?;
        if ttl.is_some_and(|ttl| ttl.as_millis() == 0) {
            return self
                .run_within(Idempotence::Idempotent, timeout, |s| s.delete(full_key))
                .await
                .map(drop);
        }
        self.run_within(Idempotence::Idempotent, timeout, |s| {
            s.set(full_key, value, ttl)
        })
        .await
    }

    /// Reads and decodes a JSON value. A missing key, or a value that does not
    /// decode as `T` (corrupt, foreign, old schema), is `Ok(None)`: a miss.
    ///
    /// The handle's timeout bounds the whole call, decoding included: a value
    /// that is only decoded after it is an [`Error::Timeout`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("user:7:name", "Ada", None).await?;
    /// assert_eq!(cache.get::<String>("user:7:name").await?.as_deref(), Some("Ada"));
    /// // A value that does not decode as the type asked for is a miss, not an error.
    /// assert_eq!(cache.get::<u64>("user:7:name").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let started = tokio::time::Instant::now();
        let full_key = self.full_key(key);
        let bytes = if let Some(bytes) = self.local_tier().and_then(|local| local.get(&full_key)) {
            Some(bytes.to_vec())
        } else {
            match self.get_full_filling(&full_key, self.timeout()).await {
                Ok(bytes) => bytes,
                Err(err) => match self
                    .local_tier()
                    .and_then(|l| l.get_stale(full_key.as_bytes()))
                {
                    Some(entry) => Some(entry.bytes.to_vec()),
                    None => return Err(err),
                },
            }
        };
        let value = match bytes {
            // Written with a stored-value option (tags, encryption, ...).
            Some(bytes) if crate::stored::envelope::is_envelope(&bytes) => {
                self.decode_enveloped(key, bytes, false).await?
            }
            bytes => self.decode(key, bytes.as_deref()),
        };
        self.check_deadline(started)?;
        Ok(value)
    }

    /// A timeout when a call that started at `started` is past the handle's
    /// deadline (never on the in-memory store, which has none).
    fn check_deadline(&self, started: tokio::time::Instant) -> Result<()> {
        if self.inner.backend != Backend::Memory && started.elapsed() > self.timeout() {
            self.inner.counters.record_timeout();
            return Err(Error::Timeout(self.timeout()));
        }
        Ok(())
    }

    /// Decodes `bytes` read under `key` with the handle's codec, counting the
    /// hit or miss. Undecodable bytes are a miss, logged without their content.
    pub(crate) fn decode<T: DeserializeOwned>(&self, key: &str, bytes: Option<&[u8]>) -> Option<T> {
        self.decode_with(self.inner.codec, key, bytes)
    }

    /// [`decode`](Self::decode) with a given codec.
    pub(crate) fn decode_with<T: DeserializeOwned>(
        &self,
        codec: Codec,
        key: &str,
        bytes: Option<&[u8]>,
    ) -> Option<T> {
        let counters = &self.inner.counters;
        let Some(bytes) = bytes else {
            counters.record_miss();
            return None;
        };
        match codec.decode(bytes) {
            Ok(value) => {
                counters.record_hit();
                Some(value)
            }
            Err(err) => {
                counters.record_decode_error();
                counters.record_miss();
                tracing::debug!(key, error = %err, "cache entry did not decode; treated as a miss");
                None
            }
        }
    }

    /// Encodes `value` (JSON unless the handle says otherwise) and stores it,
    /// with an optional TTL. A TTL over [`MAX_TTL`](crate::MAX_TTL) or an
    /// encoding over [`max_value_bytes`](Self::max_value_bytes) is an
    /// [`ErrorKind::InvalidArgument`], and nothing is sent.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{ErrorKind, MAX_TTL};
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("session:1", &["read", "write"], Some(Duration::from_secs(1800))).await?;
    /// let too_long = cache.set("session:1", &1, Some(MAX_TTL * 2)).await.unwrap_err();
    /// assert_eq!(too_long.kind(), ErrorKind::InvalidArgument); // and nothing was written
    /// # Ok(()) }
    /// ```
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = self.inner.codec.encode(value)?;
        self.set_bytes(key, &bytes, ttl).await
    }

    /// Reads several keys in one round trip (MGET); the answer is in key order.
    /// Values over [`max_value_bytes`](Self::max_value_bytes) are misses, as
    /// with [`get`](Self::get), and the timeout includes decoding.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set_many(&[("price:1", 10.5), ("price:2", 20.0)], None).await?;
    /// let prices: Vec<Option<f64>> = cache.get_many(&["price:1", "price:3", "price:2"]).await?;
    /// assert_eq!(prices, [Some(10.5), None, Some(20.0)]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        let started = tokio::time::Instant::now();
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k).into_owned()).collect();
        if let Some(local) = &self.inner.local {
            return self.get_many_through(local, keys, &full, started).await;
        }
        let cap = self.inner.max_value_bytes;
        let values = self
            .run(Idempotence::Idempotent, |s| s.get_many(&full, cap))
            .await?;
        let decoded = full
            .iter()
            .zip(keys)
            .zip(values)
            .map(|((full_key, key), bytes)| {
                let bytes = self.within_cap(full_key, bytes);
                self.decode(key, bytes.as_deref())
            })
            .collect();
        self.check_deadline(started)?;
        Ok(decoded)
    }

    /// [`get_many`](Self::get_many) through the local tier: the keys it
    /// holds are not asked for; the others are read in one round trip and
    /// kept, unless changed meanwhile.
    async fn get_many_through<T: DeserializeOwned>(
        &self,
        local: &crate::local::LocalTier,
        keys: &[&str],
        full: &[String],
        started: tokio::time::Instant,
    ) -> Result<Vec<Option<T>>> {
        let mut found: Vec<Option<Arc<[u8]>>> = full.iter().map(|k| local.get(k)).collect();
        let missing: Vec<String> = full
            .iter()
            .zip(&found)
            .filter(|(_, found)| found.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if !missing.is_empty() {
            let watches: Vec<_> = missing.iter().map(|key| local.watch(key)).collect();
            let cap = self.inner.max_value_bytes;
            let sent = std::time::Instant::now();
            let values = self
                .run(Idempotence::Idempotent, |s| {
                    s.get_many_expiring(&missing, cap)
                })
                .await?;
            let mut read = missing.iter().zip(values).zip(watches);
            for slot in found.iter_mut().filter(|slot| slot.is_none()) {
                let Some(((full_key, (bytes, left)), watch)) = read.next() else {
                    break;
                };
                let Some(bytes) = self.within_cap(full_key, bytes) else {
                    continue;
                };
                local.fill(watch, &bytes, None, expiry(sent, left));
                *slot = Some(Arc::from(bytes));
            }
        }
        let decoded = found
            .iter()
            .zip(keys)
            .map(|(bytes, key)| self.decode(key, bytes.as_deref()))
            .collect();
        self.check_deadline(started)?;
        Ok(decoded)
    }

    /// Writes several values, all with the same optional TTL, pipelined.
    pub async fn set_many<T: Serialize>(
        &self,
        entries: &[(&str, T)],
        ttl: Option<Duration>,
    ) -> Result<()> {
        if let Some(ttl) = ttl {
            validate_ttl("ttl", ttl)?;
        }
        if ttl.is_some_and(|ttl| ttl.as_millis() == 0) {
            for (key, _) in entries {
                self.delete(key).await?;
            }
            return Ok(());
        }
        let encoded = entries
            .iter()
            .map(|(key, value)| {
                let bytes = self.inner.codec.encode(value)?;
                self.check_size(&bytes)?;
                Ok((self.full_key(key).into_owned(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let written = self
            .run(Idempotence::Idempotent, |s| s.set_many(&encoded, ttl))
            .await;
        for (key, _) in &encoded {
            self.local_evict(key);
        }
        written
    }

    /// Removes a key; `true` if it existed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &1, None).await?;
    /// assert!(cache.exists("k").await?);
    /// assert!(cache.delete("k").await?);
    /// assert!(!cache.delete("k").await?); // already gone
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.full_key(key);
        let deleted = self.run(Idempotence::Idempotent, |s| s.delete(&key)).await;
        self.local_evict(&key);
        deleted
    }

    /// `true` if the key exists (and has not expired).
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let key = self.full_key(key);
        self.run(Idempotence::Idempotent, |s| s.exists(&key)).await
    }

    /// Sets a key's time to live; `false` if there is no such key. A zero TTL
    /// removes the key, as Redis does.
    /// A TTL over [`MAX_TTL`](crate::MAX_TTL) is an
    /// [`ErrorKind::InvalidArgument`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::KeyTtl;
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &1, None).await?;
    /// assert_eq!(cache.ttl("k").await?, KeyTtl::Persistent);
    /// assert!(cache.expire("k", Duration::from_secs(60)).await?);
    /// assert!(matches!(cache.ttl("k").await?, KeyTtl::Expires(left) if left <= Duration::from_secs(60)));
    /// assert_eq!(cache.ttl("other").await?, KeyTtl::Missing);
    /// # Ok(()) }
    /// ```
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        validate_ttl("ttl", ttl)?;
        if ttl.as_millis() == 0 {
            return self.delete(key).await;
        }
        let key = self.full_key(key);
        let expiring = self
            .run(Idempotence::Idempotent, |s| s.expire(&key, ttl))
            .await;
        self.local_evict(&key);
        expiring
    }

    /// A key's remaining time to live (Redis `PTTL`).
    pub async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let key = self.full_key(key);
        self.run(Idempotence::Idempotent, |s| s.ttl(&key)).await
    }

    /// Adds `by` to an integer counter (created at 0) and returns the new value.
    /// A key holding something else than an integer is an [`Error::Command`].
    /// Not retried after an ambiguous failure, so it never counts twice.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.incr("visits", 1).await?, 1);
    /// assert_eq!(cache.incr("visits", 10).await?, 11);
    /// cache.set("name", "Ada", None).await?;
    /// assert_eq!(cache.incr("name", 1).await.unwrap_err().kind(), cache_core::ErrorKind::Command);
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        let key = self.full_key(key);
        let count = self
            .run(Idempotence::CountsOnce, |s| s.incr(&key, by))
            .await;
        self.local_evict(&key);
        count
    }

    /// A fixed-window counter: adds `by` and, when the counter is new (or has no
    /// expiry), makes it expire after `window`, all in one atomic step (a Lua
    /// script on Redis). Returns the count and the time until the window resets.
    /// This is what the rate limiter counts with. A window outside 1 ms to
    /// [`MAX_WINDOW`](crate::MAX_WINDOW), or `by` over 2^53, is an
    /// [`ErrorKind::InvalidArgument`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// let window = Duration::from_secs(60);
    /// cache.incr_window("logins:ada", 1, window).await?;
    /// let now = cache.incr_window("logins:ada", 1, window).await?;
    /// assert_eq!(now.count, 2);
    /// assert!(now.reset_after <= window);
    /// # Ok(()) }
    /// ```
    pub async fn incr_window(&self, key: &str, by: u64, window: Duration) -> Result<WindowCount> {
        self.incr_window_within(key, by, window, self.timeout())
            .await
    }

    /// [`incr_window`](Self::incr_window) within `timeout` (at most the
    /// handle's): a caller with a tighter deadline, such as the rate limiter,
    /// gets it enforced here, where running out of time counts as a failure
    /// for the circuit breaker like any other timeout.
    pub async fn incr_window_within(
        &self,
        key: &str,
        by: u64,
        window: Duration,
        timeout: Duration,
    ) -> Result<WindowCount> {
        // 1 ms to MAX_WINDOW, checked before anything is sent: the same
        // InvalidArgument on every backend.
        crate::store::window_millis(window)?;
        crate::store::check_increment(by)?;
        let key = self.full_key(key);
        let count = self
            .run_within(Idempotence::CountsOnce, timeout, |s| {
                s.incr_window(&key, by, window)
            })
            .await;
        self.local_evict(&key);
        count
    }

    /// Removes every key starting with `prefix` (within the namespace) and
    /// returns how many. Walks the keyspace with SCAN and removes in batches
    /// with UNLINK, on every primary of a cluster; never KEYS. Glob characters
    /// in `prefix` are literal.
    ///
    /// Each SCAN + UNLINK step is one call under the handle's timeout, retries
    /// and circuit breaker, and the whole walk is bounded by the handle's
    /// [`invalidate_budget`](CacheBuilder::invalidate_budget) (30 s by
    /// default): past it the call is an [`Error::Timeout`]. Keys removed
    /// before an error stay removed; calling again finishes the job.
    ///
    /// An empty `prefix` is an [`ErrorKind::InvalidArgument`]: it would
    /// match every key. Say [`invalidate_all`](Self::invalidate_all) for that.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("user:7:summary:balance", &1250, None).await?;
    /// cache.set("user:7:summary:orders", &3, None).await?;
    /// cache.set("user:70:summary:orders", &1, None).await?;
    /// assert_eq!(cache.invalidate_prefix("user:7:summary:").await?, 2);
    /// assert!(cache.exists("user:70:summary:orders").await?);
    /// assert!(cache.invalidate_prefix("").await.is_err()); // say invalidate_all()
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        if prefix.is_empty() {
            return Err(Error::invalid(
                "prefix",
                "empty: it matches every key; call invalidate_all() to remove them all",
            ));
        }
        self.delete_by_prefix(&self.full_key(prefix)).await
    }

    /// Removes every key of this handle: with a namespace, every key under
    /// `{namespace}:` and nothing else; without one, every key of the database
    /// (of every primary of a cluster), other services' and rate-limit
    /// counters included. Same walk and bounds as
    /// [`invalidate_prefix`](Self::invalidate_prefix).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().namespace("billing").build().await?;
    /// cache.set("a", &1, None).await?;
    /// cache.set("b", &2, None).await?;
    /// assert_eq!(cache.invalidate_all().await?, 2);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_all(&self) -> Result<u64> {
        let prefix = match &self.inner.namespace {
            Some(ns) => format!("{ns}:"),
            None => String::new(),
        };
        self.delete_by_prefix(&prefix).await
    }

    /// The walk of [`invalidate_prefix`](Self::invalidate_prefix) over full keys.
    async fn delete_by_prefix(&self, prefix: &str) -> Result<u64> {
        let removed = self.unlink_by_prefix(prefix).await;
        if let Some(local) = &self.inner.local {
            local.evict_prefix(prefix);
        }
        removed
    }

    /// [`delete_by_prefix`](Self::delete_by_prefix) without the local tier.
    async fn unlink_by_prefix(&self, prefix: &str) -> Result<u64> {
        let budget = self.inner.invalidate_budget;
        let deadline = tokio::time::Instant::now() + budget;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        // A step cut short by the budget rather than by the handle's timeout
        // reports the budget.
        let over_budget = |err: Error| match err {
            Error::Timeout(_) if left().is_zero() => Error::Timeout(budget),
            err => err,
        };
        let nodes: Vec<ScanNode> = match self.inner.backend {
            // A call of its own only where it asks the store (CLUSTER NODES):
            // a local answer must not count as a success for the breaker.
            Backend::Cluster(_) => self
                .run_within(Idempotence::Idempotent, left(), |s| s.scan_nodes())
                .await
                .map_err(over_budget)?,
            Backend::Redis(_) | Backend::Memory => vec![ScanNode::Only],
        };
        let mut removed = 0u64;
        for node in &nodes {
            let mut cursor = 0u64;
            loop {
                // Repeating a step after a failure only rescans a page: idempotent.
                let (next, n) = self
                    .run_within(Idempotence::Idempotent, left(), |s| {
                        s.delete_prefix_page(node, cursor, prefix)
                    })
                    .await
                    .map_err(over_budget)?;
                removed += n;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
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
            backend: self.inner.backend.to_string(),
            breaker: self.inner.resilience.breaker.state(),
            latency: result.is_ok().then(|| started.elapsed()),
            error_kind: result.as_ref().err().map(Error::kind),
            error: result.err().map(|err| err.to_string()),
        }
    }
}

/// When a key read at `sent` with `left` to live expires; `None`: no expiry.
fn expiry(sent: std::time::Instant, left: Option<Duration>) -> Option<std::time::Instant> {
    // Past what an Instant holds: as good as never.
    left.and_then(|left| sent.checked_add(left))
}

#[cfg(test)]
mod shared_state_tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicU64);

    #[test]
    fn clones_share_one_value_per_type() {
        let cache = Cache::in_memory();
        let clone = cache.clone();
        cache
            .shared_state::<Counter>()
            .0
            .fetch_add(3, Ordering::Relaxed);
        assert_eq!(clone.shared_state::<Counter>().0.load(Ordering::Relaxed), 3);
        assert_eq!(*clone.dedicated().shared_state::<u64>(), 0);
        assert_eq!(
            Cache::in_memory()
                .shared_state::<Counter>()
                .0
                .load(Ordering::Relaxed),
            0,
            "another handle, another value"
        );
    }
}
