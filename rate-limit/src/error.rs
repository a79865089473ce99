//! [`ConfigError`]: what [`build`](crate::RateLimitLayerBuilder::build)
//! refuses. (Per-request key failures are [`KeyError`](crate::KeyError), beside
//! the extractors.)

use std::time::Duration;

/// A configuration the layer refuses, reported when it is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `limit` is 0: every request would be rejected.
    #[error("the limit must be at least 1 request per window")]
    ZeroLimit,
    /// `limit` is over [`MAX_LIMIT`](crate::MAX_LIMIT) (2^52).
    #[error("the limit {0} is over the largest window count (at most 2^52)")]
    LimitTooLarge(u64),
    /// The window is shorter than Redis' 1 ms expiry resolution.
    #[error("the window must be at least 1 ms")]
    WindowTooShort,
    /// The window is longer than [`MAX_WINDOW`](crate::MAX_WINDOW) (366 days).
    #[error("the window of {0:?} is longer than the maximum of 366 days")]
    WindowTooLong(Duration),
    /// The store timeout is zero.
    #[error("the store timeout must be greater than zero")]
    ZeroStoreTimeout,
    /// A trusted proxy entry is not a CIDR or an address.
    #[error("invalid trusted proxy `{entry}`: not a CIDR or an IP address")]
    TrustedProxy {
        /// The entry, as given (trimmed).
        entry: String,
        /// Why it is not a CIDR.
        #[source]
        source: ipnet::AddrParseError,
    },
    /// A trusted proxy entry is empty.
    #[error("a trusted proxy entry is empty")]
    EmptyTrustedProxy,
    /// The IPv6 grouping prefix is over 128 bits.
    #[error("the IPv6 prefix length must be 0 to 128, got {0}")]
    Ipv6Prefix(u8),
    /// The key prefix is empty or has characters that could reach other keys.
    #[error("the key prefix must be 1 to 64 of A-Z a-z 0-9 : . _ -")]
    Prefix,
    /// The quota is too fine for exact arithmetic: a sliding window's
    /// limit × window in ms over 2^52, or a GCRA limit over the window in µs
    /// (an emission interval under 1 µs).
    #[error("the quota {0:?} is too fine to count exactly")]
    QuotaTooFine(crate::quota::Quota),
    /// Two policies have the same name.
    #[error("two policies are named {0:?}")]
    DuplicatePolicy(String),
    /// `limit`/`window` and `policy` were both given.
    #[error("use either limit/window or policy, not both")]
    PolicyAndLimit,
    /// [`key_extractor`](crate::RateLimitLayerBuilder::key_extractor) was set
    /// together with a setting of the default extractor
    /// ([`trusted_proxies`](crate::RateLimitLayerBuilder::trusted_proxies),
    /// [`forwarded_header`](crate::RateLimitLayerBuilder::forwarded_header),
    /// [`ipv6_prefix`](crate::RateLimitLayerBuilder::ipv6_prefix)), which would be ignored.
    #[error(
        "trusted_proxies, forwarded_header and ipv6_prefix configure the default extractor; \
         with a custom key_extractor, configure it instead"
    )]
    ExtractorSettings,
    /// The store timeout is longer than the cache handle's timeout, which
    /// bounds every call of the handle.
    #[error(
        "the store timeout {store_timeout:?} is longer than the cache handle's timeout {handle_timeout:?}"
    )]
    StoreTimeoutOverHandle {
        /// The layer's store timeout.
        store_timeout: Duration,
        /// The handle's [`timeout`](cache_core::Cache::timeout).
        handle_timeout: Duration,
    },
    /// The policy name cannot go into a header.
    #[error("the policy name must be 1 to 64 of A-Z a-z 0-9 . _ -")]
    PolicyName,
}
