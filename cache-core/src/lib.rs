//! Redis-backed caching for async Rust services.
//!
//! A [`Cache`] is a cheap, cloneable handle over Redis (standalone, TLS, Cluster)
//! or an embedded in-memory store. Values are JSON with optional TTLs. Every
//! call has a timeout, transient failures are retried, a circuit breaker stops
//! calling a Redis that keeps failing, and the connection comes back by itself.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! use std::time::Duration;
//! use cache_core::Cache;
//!
//! // Redis when REDIS_URL / REDIS_CLUSTER_URLS / REDIS_HOST is set, else in-memory.
//! let cache = Cache::from_env().await?;
//! cache_core::set_default(cache.clone());
//!
//! cache.set("user:7:summary:balance", &1250_i64, Some(Duration::from_secs(60))).await?;
//! let balance: Option<i64> = cache.get("user:7:summary:balance").await?;
//! assert_eq!(balance, Some(1250));
//! assert_eq!(cache.invalidate_prefix("user:7:summary:").await?, 1);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod cache;
mod codec;
mod config;
mod error;
pub mod events;
mod jcs;
mod key;
mod memoize;
mod resilience;
mod stats;
mod store;
mod stored;
#[doc(hidden)]
pub mod sync;
mod telemetry;

use std::sync::Arc;

use arc_swap::ArcSwapOption;

pub use cache::{Cache, Health};
pub use codec::Codec;
pub use config::{
    Backend, CacheBuilder, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_INVALIDATE_BUDGET, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_VALUE_BYTES, DEFAULT_MEMORY_MAX_ENTRIES, DEFAULT_RETRY_BACKOFF, DEFAULT_TIMEOUT,
    MAX_TTL, RedisEndpoint, Secret, validate_ttl,
};
pub use error::{CommandError, DecodeError, EncodeError, Error, ErrorKind, Result};
pub use key::{key_for, sha256_hex};
pub use resilience::BreakerState;
pub use stats::Stats;
pub use store::{KeyTtl, MAX_WINDOW, Script, WindowCount};
pub use stored::envelope;
pub use stored::{DEFAULT_COMPRESS_THRESHOLD, DEFAULT_REFRESH_LEASE, EncryptionKeys};

pub use cache_macros::cached;
pub use memoize::invalidate_memoized;

/// What `#[cached]` expands to. Not a stable API: use the attribute.
#[doc(hidden)]
pub mod __private {
    pub use crate::Codec;
    pub use crate::memoize::{
        Call, IntoCache, assert_serialize, custom_key, default_handle, handle, key, memoize,
        restore_always, restore_ok, restore_some, stored_always, stored_ok, stored_some,
    };
    pub use crate::stored::{StoredOptions, memoize_stale, memoize_stored};
    pub use std::time::Duration;
}

// Lets this crate's own tests and doc tests use the macro's `::cache_core` paths.
extern crate self as cache_core;

/// Read on every call of a memoized function without a `cache = ...`: a
/// lock-free load, where a lock would make every core write one shared line.
static DEFAULT: ArcSwapOption<Cache> = ArcSwapOption::const_empty();

/// Makes `cache` the handle that `#[cached]` functions use unless told otherwise.
/// May be called again (in tests, say) to replace it.
pub fn set_default(cache: Cache) {
    DEFAULT.store(Some(Arc::new(cache)));
}

/// The handle set with [`set_default`], if any.
pub fn default_cache() -> Option<Cache> {
    DEFAULT.load().as_deref().cloned()
}
