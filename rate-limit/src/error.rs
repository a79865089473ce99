//! [`Error`], the crate's one error type, and its [`ErrorKind`]: what
//! [`build`](crate::RateLimitLayerBuilder::build) refuses
//! ([`ErrorKind::Config`]) and why an extractor found no key for a request
//! (the other kinds). [`ConfigError`] and [`KeyError`] are its names where
//! only those arise.

use std::sync::Arc;
use std::time::Duration;

/// What an [`Error`] is about; match it with a `_` arm (kinds may be added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration the layer refuses, reported when it is built (or
    /// by [`TrustedProxies::parse`](crate::TrustedProxies::parse)).
    Config,
    /// No peer address in the request ([`Error::MissingConnectInfo`]).
    MissingConnectInfo,
    /// A trusted proxy did not give its client's address
    /// ([`Error::UnidentifiedClient`]).
    UnidentifiedClient,
    /// A custom extractor's own reason ([`Error::Other`]).
    Extractor,
}

/// The errors of this crate: a refused configuration, or no key for a
/// request. Branch on [`kind`](Error::kind); the variants carry the details.
///
/// `PartialEq` compares the variants' fields; two [`Error::Other`] are
/// equal when they hold the same error (one `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    /// A live layer of this process counts under this prefix on the same
    /// store with other policies: the two would share their counters (a
    /// `/login` limit of 5 beside a global one of 20 would let 2 through).
    /// Give each layer its own [`prefix`](crate::RateLimitLayerBuilder::prefix).
    #[error(
        "a live rate-limit layer counts under the prefix {0:?} on this store with other policies; \
         give each layer its own prefix"
    )]
    PrefixInUse(String),
    /// The quota is too fine for exact arithmetic: a sliding window's
    /// limit × window in ms over 2^52, or a GCRA limit over the window in µs
    /// (an emission interval under 1 µs).
    #[error("the quota {0:?} is too fine to count exactly")]
    QuotaTooFine(crate::quota::Quota),
    /// A [concurrency limit](crate::Quota::concurrent) is over
    /// [`MAX_CONCURRENT`](crate::MAX_CONCURRENT) (10 000 in flight).
    #[error("the concurrency limit {0} is over the maximum of 10000 requests in flight")]
    ConcurrencyTooLarge(u64),
    /// A [concurrency limit](crate::Quota::concurrent)'s lease TTL is not
    /// within [`MIN_LEASE_TTL`](crate::MIN_LEASE_TTL) (1 s) and
    /// [`MAX_LEASE_TTL`](crate::MAX_LEASE_TTL) (24 h).
    #[error("the lease TTL of {0:?} is not within 1 s to 24 h")]
    LeaseTtl(Duration),
    /// A [`lease_wait`](crate::RateLimitLayerBuilder::lease_wait) over
    /// [`MAX_LEASE_WAIT`](crate::MAX_LEASE_WAIT) (60 s), or in a layer
    /// without a concurrency limit.
    #[error("a lease wait of {0:?} needs a concurrency limit and at most 60 s")]
    LeaseWait(Duration),
    /// A [concurrency limit](crate::Quota::concurrent) with
    /// [shared counting](crate::SharedCounting), which counts requests
    /// locally and cannot hold leases across instances.
    #[error("shared counting cannot hold a concurrency limit; use the exact mode")]
    SharedConcurrency,
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
    /// The [shared counting](crate::SharedCounting)'s flush interval is under
    /// 1 ms or over [`MAX_FLUSH_INTERVAL`](crate::SharedCounting::MAX_FLUSH_INTERVAL).
    #[error("the shared counting's flush interval of {0:?} is not within 1 ms to 10 s")]
    FlushInterval(Duration),
    /// The [shared counting](crate::SharedCounting)'s local share is not
    /// above 0 and at most 1.
    #[error("the shared counting's local share must be above 0 and at most 1")]
    LocalShare,
    /// A policy's algorithm cannot be counted by the
    /// [shared counting](crate::SharedCounting): it holds the fixed and the
    /// sliding window (counts that add up across instances), not GCRA.
    #[error("shared counting holds the fixed and the sliding window, not {0:?}")]
    SharedAlgorithm(crate::quota::Algorithm),
    /// A plan's name cannot go into a key and a header, or is
    /// [`DEFAULT_PLAN`](crate::DEFAULT_PLAN), the name of the layer's own policies.
    #[error("the plan name must be 1 to 64 of A-Z a-z 0-9 . _ -, and not \"default\"")]
    PlanName,
    /// Two plans have the same name.
    #[error("two plans are named {0:?}")]
    DuplicatePlan(String),
    /// A plan declares no policy.
    #[error("the plan {0:?} has no policy")]
    EmptyPlan(String),
    /// Plans without `plan_for` (nothing would choose them), or `plan_for`
    /// without plans.
    #[error("plans need plan_for to choose among them, and plan_for needs plans")]
    PlanSelector,
    /// Charging by outcome with the [shared counting](crate::SharedCounting):
    /// its counts are this instance's own until they are flushed, and take
    /// no refunds.
    #[error("charge_if / charge_by_response need the exact counting, not shared_counting")]
    ChargeWithSharedCounting,
    /// The peer address is not in the request (see [`peer_addr`](crate::peer_addr)):
    /// an axum app not served with
    /// `into_make_service_with_connect_info::<SocketAddr>()`, a tonic server
    /// without the crate's `tonic` feature, a hyper server that inserts no
    /// `SocketAddr`.
    #[error(
        "the peer address is missing: serve the app with \
         `app.into_make_service_with_connect_info::<SocketAddr>()` (axum), enable the rate limiter's \
         `tonic` feature (tonic), or insert the peer's `SocketAddr` as a request extension (hyper), \
         so the rate limiter can key by client IP"
    )]
    MissingConnectInfo,
    /// The request came through a trusted proxy, but the proxy header does not
    /// give its client's address: the element the nearest untrusted hop
    /// would be is `unknown`, obfuscated (`for=_hidden`), not an address, or
    /// the single-address header holds several. Such a request counts
    /// against [`UNIDENTIFIED_KEY`](crate::UNIDENTIFIED_KEY): [`PeerIp`](crate::PeerIp)'s
    /// key for it, and the layer's when a custom extractor returns this error.
    #[error("the trusted proxy header does not give the client's address")]
    UnidentifiedClient,
    /// Any other reason, from a custom extractor: its own error, kept as
    /// the source. Build it with [`Error::other`].
    #[error(transparent)]
    Other(Arc<dyn std::error::Error + Send + Sync>),
}

/// [`Error`] where it is a refused configuration
/// ([`ErrorKind::Config`]): from [`build`](crate::RateLimitLayerBuilder::build)
/// and [`TrustedProxies::parse`](crate::TrustedProxies::parse).
pub type ConfigError = Error;

/// [`Error`] where it says why a [`KeyExtractor`](crate::KeyExtractor)
/// found no key for a request.
pub type KeyError = Error;

impl Error {
    /// What the error is about.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit::{Error, ErrorKind, RateLimitLayer};
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// let err = RateLimitLayer::builder(cache).limit(10).window(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err, Error::WindowTooShort);
    /// assert_eq!(err.kind(), ErrorKind::Config);
    /// assert_eq!(Error::MissingConnectInfo.kind(), ErrorKind::MissingConnectInfo);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::MissingConnectInfo => ErrorKind::MissingConnectInfo,
            Error::UnidentifiedClient => ErrorKind::UnidentifiedClient,
            Error::Other(_) => ErrorKind::Extractor,
            // Listed one by one: a new variant has to say its kind.
            Error::ZeroLimit
            | Error::LimitTooLarge(_)
            | Error::WindowTooShort
            | Error::WindowTooLong(_)
            | Error::ZeroStoreTimeout
            | Error::TrustedProxy { .. }
            | Error::EmptyTrustedProxy
            | Error::Ipv6Prefix(_)
            | Error::Prefix
            | Error::PrefixInUse(_)
            | Error::QuotaTooFine(_)
            | Error::ConcurrencyTooLarge(_)
            | Error::LeaseTtl(_)
            | Error::SharedConcurrency
            | Error::LeaseWait(_)
            | Error::DuplicatePolicy(_)
            | Error::PolicyAndLimit
            | Error::ExtractorSettings
            | Error::StoreTimeoutOverHandle { .. }
            | Error::PolicyName
            | Error::FlushInterval(_)
            | Error::LocalShare
            | Error::SharedAlgorithm(_)
            | Error::PlanName
            | Error::DuplicatePlan(_)
            | Error::EmptyPlan(_)
            | Error::PlanSelector
            | Error::ChargeWithSharedCounting => ErrorKind::Config,
        }
    }

    /// A custom extractor's own reason: any error, or a message.
    ///
    /// ```
    /// use rate_limit::{Error, ErrorKind};
    ///
    /// let err = Error::other("no tenant header");
    /// assert_eq!(err.to_string(), "no tenant header");
    /// assert_eq!(err.kind(), ErrorKind::Extractor);
    /// ```
    pub fn other(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Other(reason.into().into())
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        use Error::*;
        match (self, other) {
            (LimitTooLarge(a), LimitTooLarge(b)) => a == b,
            (WindowTooLong(a), WindowTooLong(b)) => a == b,
            (
                TrustedProxy { entry, source },
                TrustedProxy {
                    entry: other_entry,
                    source: other_source,
                },
            ) => entry == other_entry && source == other_source,
            (Ipv6Prefix(a), Ipv6Prefix(b)) => a == b,
            (QuotaTooFine(a), QuotaTooFine(b)) => a == b,
            (DuplicatePolicy(a), DuplicatePolicy(b)) => a == b,
            (PrefixInUse(a), PrefixInUse(b)) => a == b,
            (
                StoreTimeoutOverHandle {
                    store_timeout,
                    handle_timeout,
                },
                StoreTimeoutOverHandle {
                    store_timeout: other_store,
                    handle_timeout: other_handle,
                },
            ) => store_timeout == other_store && handle_timeout == other_handle,
            (FlushInterval(a), FlushInterval(b)) => a == b,
            (SharedAlgorithm(a), SharedAlgorithm(b)) => a == b,
            (DuplicatePlan(a), DuplicatePlan(b)) => a == b,
            (EmptyPlan(a), EmptyPlan(b)) => a == b,
            (Other(a), Other(b)) => Arc::ptr_eq(a, b),
            // The variants without fields.
            (a, b) => {
                std::mem::discriminant(a) == std::mem::discriminant(b)
                    && matches!(
                        a,
                        ZeroLimit
                            | WindowTooShort
                            | ZeroStoreTimeout
                            | EmptyTrustedProxy
                            | Prefix
                            | PolicyAndLimit
                            | ExtractorSettings
                            | PolicyName
                            | LocalShare
                            | PlanName
                            | PlanSelector
                            | ChargeWithSharedCounting
                            | MissingConnectInfo
                            | UnidentifiedClient
                    )
            }
        }
    }
}

impl Eq for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_kind() {
        assert_eq!(Error::ZeroLimit.kind(), ErrorKind::Config);
        assert_eq!(Error::EmptyTrustedProxy.kind(), ErrorKind::Config);
        assert_eq!(
            Error::MissingConnectInfo.kind(),
            ErrorKind::MissingConnectInfo
        );
        assert_eq!(
            Error::UnidentifiedClient.kind(),
            ErrorKind::UnidentifiedClient
        );
        assert_eq!(Error::other("x").kind(), ErrorKind::Extractor);
        let other = Error::other("x");
        assert_eq!(other, other.clone());
        assert_ne!(other, Error::other("x"), "another error");
        assert_ne!(Error::ZeroLimit, Error::Prefix);
        assert_eq!(Error::LimitTooLarge(3), Error::LimitTooLarge(3));
    }
}
