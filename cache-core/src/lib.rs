//! Redis-backed caching for async Rust services.
//!
//! A [`Cache`] is a cheap, cloneable handle over Redis (standalone, TLS,
//! Cluster) or an embedded in-memory store. Values are JSON with optional
//! TTLs. Every call has a timeout, transient failures are retried, a circuit
//! breaker stops calling a Redis that keeps failing, and the connection comes
//! back by itself. On top of the handle: memoization ([`cached`]), tags,
//! stale-while-revalidate, compression and encryption of stored values, an
//! in-process local tier and a typed event bus ([`events`]).
//!
//! The sections below follow the order a new user needs them. Every example
//! runs on the in-memory store, so it needs no Redis.
//!
//! # 1. Build a handle
//!
//! - [`Cache::from_env`]: Redis when `REDIS_CLUSTER_URLS`, `REDIS_URL` or
//!   `REDIS_HOST` is set, else the in-memory store; what services call at
//!   start-up (see [Configuration](#10-configuration-from-the-environment)).
//! - [`Cache::builder`]: every setting in code ([`CacheBuilder`]).
//! - [`Cache::in_memory`]: the embedded store, for tests and single-process
//!   services; it needs no runtime.
//!
//! A handle is built even when Redis is unreachable: calls fail (fast) until
//! the connection is up. Only bad configuration is an error. Hand the handle
//! to [`set_default`] to make it the one `#[cached]` functions use.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! use cache_core::Cache;
//!
//! let cache = Cache::builder()
//!     .in_memory() // or .redis_url("redis://cache:6379/0")?, .cluster_urls([...])?
//!     .namespace("billing") // keys become `billing:...`
//!     .timeout(Duration::from_millis(100))
//!     .build()
//!     .await?;
//! assert_eq!(cache.namespace(), Some("billing"));
//! cache_core::set_default(cache.clone()); // the handle `#[cached]` functions use
//! # Ok(()) }
//! ```
//!
//! # 2. Get and set with a TTL
//!
//! [`Cache::get`] and [`Cache::set`] take any serde type; a missing,
//! expired, corrupt or foreign value is `Ok(None)`, never a panic. A TTL is
//! at most [`MAX_TTL`]; `None` means no expiry. Also: [`Cache::get_many`] /
//! [`Cache::set_many`] (one round trip), [`Cache::delete`],
//! [`Cache::exists`], [`Cache::expire`], [`Cache::ttl`], [`Cache::incr`] and
//! [`Cache::incr_window`] (a counter with a window, as rate limiters use).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! use cache_core::{Cache, KeyTtl};
//!
//! let cache = Cache::in_memory();
//! let minute = Some(Duration::from_secs(60));
//! cache.set("asset:42:current_price", &72000.5, minute).await?;
//! let price: Option<f64> = cache.get("asset:42:current_price").await?;
//! assert_eq!(price, Some(72000.5));
//!
//! let prices: Vec<Option<f64>> = cache.get_many(&["asset:42:current_price", "asset:7:current_price"]).await?;
//! assert_eq!(prices, [Some(72000.5), None]);
//! assert!(matches!(cache.ttl("asset:42:current_price").await?, KeyTtl::Expires(_)));
//! assert_eq!(cache.incr("visits", 1).await?, 1);
//! # Ok(()) }
//! ```
//!
//! # 3. Memoize with `#[cached]`
//!
//! [`macro@cached`] stores an async function's result under
//! `{prefix}:{sha256 of the canonical JSON of its arguments}` ([`key_for`]).
//! `Result` functions cache `Ok` only, `Option` functions `Some` only;
//! concurrent calls with one key run the body once. The attribute's own
//! page lists every option (`ttl`, `skip`, `cache = ...`, `key = ...`,
//! `codec`, `local`, `stale`, `timeout`, `compress`, `encrypt`, `tags`,
//! `lock`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use cache_core::{Cache, cached};
//!
//! static CALLS: AtomicUsize = AtomicUsize::new(0);
//!
//! #[cached(prefix = "embedding", ttl = 86400)]
//! async fn embed(text: &str) -> Vec<f32> {
//!     CALLS.fetch_add(1, Ordering::Relaxed);
//!     vec![text.len() as f32]
//! }
//!
//! cache_core::set_default(Cache::in_memory());
//! assert_eq!(embed("hello").await, [5.0]);
//! assert_eq!(embed("hello").await, [5.0]); // a hit: the body did not run again
//! assert_eq!(CALLS.load(Ordering::Relaxed), 1);
//! # }
//! ```
//!
//! **The function API.** [`Cache::get_or_set`] and [`Cache::try_get_or_set`]
//! do for a key and a closure what `#[cached]` does for a function (the
//! attribute is sugar over the same engine): single-flight, fail-open,
//! stale-while-revalidate, tags, compression, encryption, the local tier
//! and, with [`EntryOptions::lock`], one computation per key across
//! instances. The key is used as given; [`key_for`] builds the hashed one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use cache_core::{Cache, EntryOptions};
//!
//! let cache = Cache::in_memory();
//! let options = EntryOptions::ttl(Duration::from_secs(60))
//!     .stale(Duration::from_secs(300))
//!     .tags(["user:42"])
//!     .lock(Duration::from_secs(5));
//! let name: String = cache
//!     .get_or_set("user:42:name", &options, || async { "Ada".to_string() })
//!     .await;
//! assert_eq!(name, "Ada");
//! let rate: Result<u64, String> = cache
//!     .try_get_or_set("rate:EUR", &options, || async { Err("upstream down".into()) })
//!     .await;
//! assert!(rate.is_err()); // returned, never stored
//! # }
//! ```
//!
//! # 4. Invalidation
//!
//! | to drop | call | cost |
//! | --- | --- | --- |
//! | one key | [`Cache::delete`] | one `DEL` |
//! | one memoized call | `{name}_invalidate(&cache, args…)`, written by `#[cached]` beside the function (`{name}_key(args…)` gives the key) | one `DEL` |
//! | every key under a prefix | [`Cache::invalidate_prefix`] | `SCAN` + `UNLINK` in bounded steps |
//! | everything tagged `t` | [`Cache::invalidate_tag`] (entries from `tags = [...]` or [`Cache::set_tagged`]) | one `SET`, any number of entries |
//! | the namespace | [`Cache::invalidate_all`] | as a prefix |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! use cache_core::Cache;
//!
//! let cache = Cache::in_memory();
//! let ttl = Some(Duration::from_secs(300));
//! cache.set("user:7:summary:balance", &1250, ttl).await?;
//! cache.set("user:7:summary:orders", &3, ttl).await?;
//! assert_eq!(cache.invalidate_prefix("user:7:summary:").await?, 2);
//!
//! cache.set_tagged("report:q3", &"…", &["team:1"], ttl).await?;
//! cache.invalidate_tag("team:1").await?;
//! assert_eq!(cache.get::<String>("report:q3").await?, None);
//!
//! // The entry `#[cached(prefix = "embedding")] async fn embed(text: &str)` stored for "hello":
//! cache.set(&cache_core::key_for("embedding", &("hello",))?, &[5.0], ttl).await?;
//! assert!(cache_core::invalidate_memoized(&cache, "embedding", &("hello",)).await?);
//! # Ok(()) }
//! ```
//!
//! The functions `#[cached]` writes beside a memoized one build its key as
//! it does, `key = ...`, `skip` and all ([`invalidate_memoized`] only hashes
//! the arguments it is given):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! use cache_core::{Cache, cached};
//!
//! #[cached(prefix = "profile", ttl = 300, key = user_id, skip(request_id), cache = cache)]
//! async fn profile(cache: &Cache, user_id: u64, request_id: &str) -> String {
//!     format!("user {user_id}")
//! }
//!
//! let cache = Cache::in_memory();
//! profile(&cache, 7, "req-1").await;
//! assert_eq!(profile_key(7)?, "profile:7");
//! assert!(profile_invalidate(&cache, 7).await?);
//! # Ok(()) }
//! ```
//!
//! # 5. Stored-value options
//!
//! `#[cached]` options that wrap an entry in a small versioned header (the
//! [`envelope`], documented for readers in other languages):
//!
//! - `stale = secs`: serve a value up to `stale` past its `ttl` while one
//!   background refresh runs (one per key across instances), and keep
//!   serving it while the refresh fails; `timeout = secs` bounds a refresh.
//!   The refresh gets owned copies of borrowed arguments (`&str`, `&T` for
//!   `T: Clone`, `&self` for `Self: Clone`).
//! - `compress` / `compress = bytes`: lz4 from [`DEFAULT_COMPRESS_THRESHOLD`]
//!   bytes (or the given size).
//! - `encrypt`: a Fernet token of the value, with the handle's
//!   [`EncryptionKeys`]; also [`Cache::set_encrypted`] /
//!   [`Cache::get_encrypted`].
//! - `tags = [expr, ...]`: tags computed from the arguments, dropped
//!   together by [`Cache::invalidate_tag`]; also [`Cache::set_tagged`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! use cache_core::{Cache, EncryptionKeys, cached};
//!
//! let keys = EncryptionKeys::parse("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=")?;
//! let cache = Cache::builder().encryption_keys(keys).build().await?;
//!
//! #[cached(prefix = "summary", ttl = 300, tags = [format!("user:{user_id}")], compress, encrypt,
//!          cache = cache, skip(cache))]
//! async fn summary(cache: &Cache, user_id: u64) -> String {
//!     format!("summary of {user_id}")
//! }
//!
//! assert_eq!(summary(&cache, 7).await, "summary of 7");
//! cache.invalidate_tag("user:7").await?; // every entry tagged user:7, on every instance
//! # Ok(()) }
//! ```
//!
//! # 6. Local tier
//!
//! [`CacheBuilder::local_tier`] puts a bounded in-process cache in front of
//! Redis: a hit makes no Redis call, and Redis' `CLIENT TRACKING` pushes
//! drop a local copy as soon as anyone changes the key. While tracking is
//! down the tier is not read ([`CacheBuilder::local_tier_serve_stale`] opts
//! into serving it on failure). `#[cached(local = false)]` keeps a function
//! out of it. The in-memory store has no local tier (it is in-process
//! already); `CACHE_LOCAL_MAX_ENTRIES` turns it on from the environment.
//!
//! # 7. Event bus
//!
//! [`Cache::events`] gives an [`events::EventBus`]: typed JSON messages
//! over Redis pub/sub (sharded on a cluster, in process on the in-memory
//! store), at most once, with an [`events::EventError::Gap`] item wherever
//! messages may have been missed. See [`events`].
//!
//! # 8. When the store fails
//!
//! Each call is bounded by the handle's timeout ([`DEFAULT_TIMEOUT`], retries
//! included), retried up to [`DEFAULT_MAX_ATTEMPTS`] times on transient
//! errors, and refused at once while the circuit breaker is open
//! ([`DEFAULT_BREAKER_THRESHOLD`] failures in a row open it for
//! [`DEFAULT_BREAKER_COOLDOWN`]). Direct calls return an [`Error`]: branch on
//! [`Error::kind`] or [`Error::is_unavailable`]. **`#[cached]` functions
//! fail open**: any cache failure runs the body, and a memoized call loses
//! at most one call timeout to a failing cache, nested calls included.
//! `CACHE_BYPASS=true` ([`CacheBuilder::bypass`]) skips memoization
//! altogether.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! use cache_core::{Cache, ErrorKind, cached};
//!
//! // Nothing listens on port 1: every call fails fast.
//! let cache = Cache::builder()
//!     .redis_url("redis://127.0.0.1:1")?
//!     .timeout(Duration::from_millis(50))
//!     .build()
//!     .await?;
//! let err = cache.get::<i64>("k").await.unwrap_err();
//! assert!(err.is_unavailable());
//! assert!(matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout));
//!
//! #[cached(prefix = "double", ttl = 60, cache = cache, skip(cache))]
//! async fn double(cache: &Cache, n: u64) -> u64 {
//!     n * 2
//! }
//! assert_eq!(double(&cache, 21).await, 42); // the cache is down: the body ran
//! # Ok(()) }
//! ```
//!
//! # 9. Stats and health
//!
//! [`Cache::stats`] is a snapshot of the handle's counters ([`Stats`]: hits,
//! misses, errors, timeouts, breaker state, local tier, event bus), shared
//! by its clones; [`Stats::hit_rate`] is what a dashboard shows.
//! [`Cache::health`] pings the store within the timeout ([`Health`]), for a
//! readiness probe.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! let cache = cache_core::Cache::in_memory();
//! cache.set("k", &1, None).await?;
//! let _: Option<i32> = cache.get("k").await?; // a hit
//! let _: Option<i32> = cache.get("other").await?; // a miss
//! assert_eq!(cache.stats().hit_rate(), 0.5);
//! assert!(cache.health().await.healthy);
//! # Ok(()) }
//! ```
//!
//! # 10. Configuration from the environment
//!
//! [`Cache::from_env`] (or [`CacheBuilder::from_env`], to adjust the result
//! in code) reads `REDIS_CLUSTER_URLS`, `REDIS_URL`, `REDIS_HOST`/`PORT`/`DB`/`TLS`,
//! `REDIS_USERNAME`, `REDIS_PASSWORD`, `CACHE_NAMESPACE`, `CACHE_TIMEOUT_MS`,
//! `CACHE_MAX_ATTEMPTS`, `CACHE_BREAKER_*`, `CACHE_MAX_VALUE_BYTES`,
//! `CACHE_ENCRYPTION_KEYS`, `CACHE_LOCAL_*`, `CACHE_BYPASS` and more: the
//! guide's docs/configuration.md lists them with their defaults. An error
//! names the variable, never its value; passwords never appear in `Debug`,
//! logs or errors ([`Secret`]). [`CacheBuilder::from_vars`] reads them from
//! any source:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! use std::collections::HashMap;
//! use cache_core::{Backend, CacheBuilder};
//!
//! let vars = HashMap::from([("CACHE_NAMESPACE", "billing"), ("CACHE_TIMEOUT_MS", "100")]);
//! let cache = CacheBuilder::from_vars(|name| vars.get(name).map(|v| v.to_string()))?
//!     .build()
//!     .await?;
//! assert_eq!(*cache.backend(), Backend::Memory); // no Redis variable set
//! assert_eq!(cache.namespace(), Some("billing"));
//! assert_eq!(cache.timeout().as_millis(), 100);
//!
//! let bad = CacheBuilder::from_vars(|name| (name == "CACHE_TIMEOUT_MS").then(|| "soon".into()));
//! assert_eq!(bad.unwrap_err().kind(), cache_core::ErrorKind::Config);
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! - `tls`: `rediss://` URLs (rustls with the platform's roots, or
//!   [`CacheBuilder::tls_ca_cert_pem`]).
//! - `msgpack`: `Codec::MessagePack` values (`codec = "msgpack"`).
#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly) marks each item with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod codec;
mod config;
mod encryption;
pub mod envelope;
mod error;
pub mod events;
mod health;
mod jcs;
mod key;
mod local;
mod memoize;
mod resilience;
mod stats;
mod store;
mod stored;
mod sync;
mod telemetry;

pub use cache::Cache;
pub use codec::Codec;
pub use config::{
    Backend, CacheBuilder, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_ENCRYPTION_MAX_SKEW, DEFAULT_INVALIDATE_BUDGET,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_VALUE_BYTES, DEFAULT_MEMORY_MAX_ENTRIES,
    DEFAULT_RETRY_BACKOFF, DEFAULT_TIMEOUT, MAX_ENCRYPTION_SKEW, MAX_TTL, RedisEndpoint, Secret,
    validate_ttl,
};
pub use encryption::EncryptionKeys;
pub use error::{CommandError, DecodeError, EncodeError, Error, ErrorKind, Result, StoreError};
pub use health::Health;
pub use key::{key_for, sha256_hex};
pub use stats::{BreakerState, Stats};
pub use store::atomic::{AtomicOp, Entries, EntryMut};
pub use store::identity::{StoreId, StoredKey};
pub use store::{KeyTtl, MAX_WINDOW, Reach, Script, WindowCount, WindowIncr};

pub use cache_macros::cached;
pub use memoize::{
    DEFAULT_COMPRESS_THRESHOLD, DEFAULT_LABEL, DEFAULT_REFRESH_LEASE, EntryOptions, default_cache,
    invalidate_memoized, set_default,
};

/// What `#[cached]` expands to. Not a stable API: use the attribute.
#[doc(hidden)]
pub mod __private {
    pub use crate::Codec;
    pub use crate::memoize::{
        Body, Call, Detached, EntryOptions, Inline, IntoCache, Keep, KeepBytes, KeepClone,
        OwnedArg, Probe, assert_serialize, call_key, custom_call_key, custom_key, default_handle,
        handle, handle_ref, invalidate, key, memoize, probe, restore_always, restore_ok,
        restore_some, stored_always, stored_ok, stored_some,
    };
    pub use std::borrow::Cow;
    pub use std::time::Duration;
}

// Lets this crate's own tests and doc tests use the macro's `::cache_core` paths.
extern crate self as cache_core;
