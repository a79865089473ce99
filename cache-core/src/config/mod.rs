//! Configuration: the defaults, the settings a handle is built from, and
//! where each comes from. One file per concept:
//!
//! - [`secret`]: [`Secret`], a string that never prints itself;
//! - [`endpoint`]: [`RedisEndpoint`], one server parsed from a URL;
//! - [`backend`]: [`Backend`], which store a handle talks to;
//! - [`env`]: [`CacheBuilder::from_env`], the environment variables;
//! - [`builder`]: [`CacheBuilder`], the same settings in code;
//! - [`validation`]: what is refused before a handle exists, and the TTL bound.

mod backend;
mod builder;
mod endpoint;
mod env;
mod secret;
mod validation;

use std::time::Duration;

pub use backend::Backend;
pub use builder::CacheBuilder;
pub use endpoint::RedisEndpoint;
pub use secret::Secret;
pub use validation::{MAX_TTL, validate_ttl};

/// Default timeout of one cache call, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Default timeout of one connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of tries of a call that fails with a transient error.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default first backoff between tries; it doubles on each further try.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Default number of consecutive failures that opens the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default time the breaker stays open before it lets one probe through.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default bound on the number of entries of the in-memory store.
pub const DEFAULT_MEMORY_MAX_ENTRIES: usize = 100_000;
/// Default cap on the size of a value the library reads or writes: 4 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Default bound on a whole [`invalidate_prefix`](crate::Cache::invalidate_prefix)
/// or [`invalidate_all`](crate::Cache::invalidate_all) call.
pub const DEFAULT_INVALIDATE_BUDGET: Duration = Duration::from_secs(30);
/// Default bound on the life of a local-tier entry (`CACHE_LOCAL_TTL_MS`).
pub const DEFAULT_LOCAL_TTL: Duration = Duration::from_secs(30);
/// Default of [`CacheBuilder::encryption_max_skew`]: how far in the future
/// an encrypted entry's timestamp may be (`CACHE_ENCRYPTION_MAX_SKEW_MS`).
pub const DEFAULT_ENCRYPTION_MAX_SKEW: Duration = Duration::from_secs(5 * 60);
/// The largest [`CacheBuilder::encryption_max_skew`] accepted: one day.
pub const MAX_ENCRYPTION_SKEW: Duration = Duration::from_secs(24 * 60 * 60);

/// Everything a [`Cache`](crate::Cache) is built from. Filled by
/// [`CacheBuilder`] or by [`Cache::from_env`](crate::Cache::from_env); kept
/// by the handle for [`Cache::dedicated`](crate::Cache::dedicated).
#[derive(Clone, Debug)]
pub(crate) struct CacheConfig {
    pub(crate) backend: Backend,
    pub(crate) namespace: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) retry_backoff: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) memory_max_entries: usize,
    pub(crate) bypass: bool,
    /// PEM root certificate(s) for `rediss://` instead of the system's trust store.
    pub(crate) tls_ca_cert: Option<Vec<u8>>,
    pub(crate) codec: crate::codec::Codec,
    pub(crate) max_value_bytes: usize,
    pub(crate) invalidate_budget: Duration,
    /// Fernet keys for `encrypt` entries (`Debug` hides them).
    pub(crate) encryption_keys: Option<crate::encryption::EncryptionKeys>,
    /// How far ahead of this clock an encrypted entry's timestamp may be.
    pub(crate) encryption_max_skew: Duration,
    /// The local tier: (max entries, max TTL); `None` when off.
    pub(crate) local_tier: Option<(usize, Duration)>,
    /// Serve local entries when Redis fails (opt-in).
    pub(crate) local_serve_stale: bool,
    /// A handle for counters ([`Cache::dedicated_counter`](crate::Cache::dedicated_counter)):
    /// its cluster client never sends a command again after it may have
    /// reached a node.
    pub(crate) counter: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: Backend::Memory,
            namespace: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            memory_max_entries: DEFAULT_MEMORY_MAX_ENTRIES,
            bypass: false,
            tls_ca_cert: None,
            codec: crate::codec::Codec::Json,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            invalidate_budget: DEFAULT_INVALIDATE_BUDGET,
            encryption_keys: None,
            encryption_max_skew: DEFAULT_ENCRYPTION_MAX_SKEW,
            local_tier: None,
            local_serve_stale: false,
            counter: false,
        }
    }
}
