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
    /// Builds a handle from the environment (see the README's configuration
    /// table): `REDIS_CLUSTER_URLS`, else `REDIS_URL`, else `REDIS_HOST`...,
    /// else the in-memory store.
    ///
    /// Fails only on bad configuration. When Redis is unreachable the handle is
    /// still returned: calls fail (and `#[cached]` functions run uncached) until
    /// the connection comes up by itself.
    pub async fn from_env() -> Result<Cache> {
        CacheBuilder::from_env()?.build().await
    }

    /// A builder for every setting.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// An embedded in-memory store with default settings: for development,
    /// tests and single-process services. Needs no runtime.
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
    /// there the answer is a clone sharing the data.
    pub fn dedicated(&self) -> Cache {
        if self.inner.backend == Backend::Memory {
            return self.clone();
        }
        match Self::from_config(self.inner.config.clone()) {
            Ok(cache) => cache,
            // The same configuration built this handle; should the client still
            // refuse it, sharing the connection is the safe fallback.
            Err(err) => {
                tracing::warn!(%err, "could not open a dedicated cache connection; sharing the handle's");
                self.clone()
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
    /// integers. Never retried unless the connection was refused (the script
    /// surely did not run), so a script that counts counts once. The
    /// in-memory store runs no scripts: [`ErrorKind::InvalidArgument`].
    pub async fn eval_script_within(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[i64],
        timeout: Duration,
    ) -> Result<Vec<i64>> {
        let keys: Vec<String> = keys
            .iter()
            .map(|key| self.full_key(key).into_owned())
            .collect();
        self.run_within(Idempotence::CountsOnce, timeout, |s| {
            s.eval(script, &keys, args)
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
    /// For this workspace's crates (the rate limiter's batched script call);
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
    pub fn stats(&self) -> Stats {
        let mut stats = self
            .inner
            .counters
            .snapshot(self.inner.resilience.breaker.state());
        stats.events = self.shared_state::<crate::events::BusState>().stats();
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
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let started = tokio::time::Instant::now();
        let bytes = self.get_bytes(key).await?;
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
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        let started = tokio::time::Instant::now();
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k).into_owned()).collect();
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
        self.run(Idempotence::Idempotent, |s| s.set_many(&encoded, ttl))
            .await
    }

    /// Removes a key; `true` if it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.full_key(key);
        self.run(Idempotence::Idempotent, |s| s.delete(&key)).await
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
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        validate_ttl("ttl", ttl)?;
        if ttl.as_millis() == 0 {
            return self.delete(key).await;
        }
        let key = self.full_key(key);
        self.run(Idempotence::Idempotent, |s| s.expire(&key, ttl))
            .await
    }

    /// A key's remaining time to live (Redis `PTTL`).
    pub async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let key = self.full_key(key);
        self.run(Idempotence::Idempotent, |s| s.ttl(&key)).await
    }

    /// Adds `by` to an integer counter (created at 0) and returns the new value.
    /// A key holding something else than an integer is an [`Error::Command`].
    /// Not retried after an ambiguous failure, so it never counts twice.
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        let key = self.full_key(key);
        self.run(Idempotence::CountsOnce, |s| s.incr(&key, by))
            .await
    }

    /// A fixed-window counter: adds `by` and, when the counter is new (or has no
    /// expiry), makes it expire after `window`, all in one atomic step (a Lua
    /// script on Redis). Returns the count and the time until the window resets.
    /// This is what the rate limiter counts with. A window outside 1 ms to
    /// [`MAX_WINDOW`](crate::MAX_WINDOW), or `by` over 2^53, is an
    /// [`ErrorKind::InvalidArgument`].
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
        self.run_within(Idempotence::CountsOnce, timeout, |s| {
            s.incr_window(&key, by, window)
        })
        .await
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
    pub async fn invalidate_all(&self) -> Result<u64> {
        let prefix = match &self.inner.namespace {
            Some(ns) => format!("{ns}:"),
            None => String::new(),
        };
        self.delete_by_prefix(&prefix).await
    }

    /// The walk of [`invalidate_prefix`](Self::invalidate_prefix) over full keys.
    async fn delete_by_prefix(&self, prefix: &str) -> Result<u64> {
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
