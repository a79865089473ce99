//! Stored-value options of `#[cached]`: stale-while-revalidate and
//! fail-safe (`stale`, `timeout`), compression (`compress`), encryption at
//! rest (`encrypt`) and tags (`tags`), and the envelope they share.
//!
//! A plain entry is the codec's bytes; an entry written with any of these
//! options is an [`envelope`]: a small versioned header, then the payload.

mod entry;
pub mod envelope;
mod keys;
mod lease;
mod memoize;
mod tags;

use std::time::Duration;

pub use keys::EncryptionKeys;
pub use memoize::{DEFAULT_REFRESH_LEASE, memoize_stale, memoize_stored};

/// Values of at least this many bytes are compressed under a bare `compress`.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 1024;

/// The stored-value options of one memoized function, as `#[cached]` gives
/// them. Not a stable API: use the attribute.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct StoredOptions {
    /// `stale = ...`: how long past `ttl` a value may still be served.
    pub stale: Option<Duration>,
    /// `timeout = ...`: the bound of a background refresh.
    pub timeout: Option<Duration>,
    /// `compress` / `compress = bytes`: compress values from this size.
    pub compress_from: Option<usize>,
    /// `encrypt`: Fernet with the handle's keys.
    pub encrypt: bool,
    /// `tags = [...]`: evaluated over the arguments.
    pub tags: Vec<String>,
}
