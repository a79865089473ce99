//! [`RateLimitLayer`] (configuration, `impl Layer`) and [`RateLimit`] (the service).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cache_core::Cache;
use cache_core::sync::StateFlag;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use crate::clock::Clock;
use crate::future::ResponseFuture;
use crate::headers::{HeaderSets, HeaderTemplate, ResetFormat};
use crate::key::{
    ForwardedHeader, KeyError, KeyExtractor, PeerIp, RequestInfo, TrustedProxies, UNIDENTIFIED_KEY,
    sanitize,
};
use crate::limiter::{Limiter, LimiterConfig, Policy, RateLimitStats, Verdict};
use crate::quota::Quota;
use crate::response::{self, ResponseBody};
use crate::window::Decision;

/// Default Redis key prefix: keys are `rate:{client key}`.
pub const DEFAULT_PREFIX: &str = "rate";
/// Default bound on one store call; past it the request is let through (or 503).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// The largest limit: 2^52 units per window. Counters travel through
/// Redis' Lua as doubles, exact below 2^53: a count at the limit plus a cost
/// up to the limit stays exact.
pub const MAX_LIMIT: u64 = 1 << 52;
/// The longest window: [`cache_core::MAX_WINDOW`], 366 days (a yearly quota
/// in a leap year). Longer is almost surely a unit mistake (milliseconds read
/// as seconds), and the store refuses it too.
pub const MAX_WINDOW: Duration = cache_core::MAX_WINDOW;

/// A configuration the layer refuses, reported when it is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `limit` is 0: every request would be rejected.
    #[error("the limit must be at least 1 request per window")]
    ZeroLimit,
    /// `limit` is over [`MAX_LIMIT`] (2^52).
    #[error("the limit {0} is over the largest window count (at most 2^52)")]
    LimitTooLarge(u64),
    /// The window is shorter than Redis' 1 ms expiry resolution.
    #[error("the window must be at least 1 ms")]
    WindowTooShort,
    /// The window is longer than [`MAX_WINDOW`] (366 days).
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
    /// [`key_extractor`](RateLimitLayerBuilder::key_extractor) was set
    /// together with a setting of the default extractor
    /// ([`trusted_proxies`](RateLimitLayerBuilder::trusted_proxies),
    /// [`forwarded_header`](RateLimitLayerBuilder::forwarded_header),
    /// [`ipv6_prefix`](RateLimitLayerBuilder::ipv6_prefix)), which would be ignored.
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
        /// The handle's [`timeout`](Cache::timeout).
        handle_timeout: Duration,
    },
    /// The policy name cannot go into a header.
    #[error("the policy name must be 1 to 64 of A-Z a-z 0-9 . _ -")]
    PolicyName,
}

/// What to do when the store cannot count a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Let the request through (the default): an outage of the store does not
    /// become an outage of the service.
    #[default]
    Open,
    /// Reject with `503 Service Unavailable` (problem+json).
    Closed,
}

type OnLimited = dyn Fn(&Decision) -> Response<Bytes> + Send + Sync;
type CostFn = dyn Fn(&RequestInfo<'_>) -> u64 + Send + Sync;

struct Shared {
    limiter: Limiter,
    extractor: Box<dyn KeyExtractor>,
    cost: Option<Box<CostFn>>,
    headers: HeaderTemplate,
    /// The default 429 body per policy, rendered once (the wait is in `Retry-After`).
    limited_bodies: Vec<Bytes>,
    fail_mode: FailMode,
    shadow: bool,
    on_limited: Option<Box<OnLimited>>,
    /// Logged once: a misconfiguration, not an outage to follow.
    missing_key_logged: StateFlag,
}

/// Rate limiting for any Tower service over `http::Request`: one or more
/// policies ([`Quota`]s, each with its [`Algorithm`](crate::Algorithm)),
/// all checked in one store call per request (or batch of one client's
/// requests).
///
/// Cheap to clone (one `Arc`). Layers also stack, each with its own key
/// prefix; the outermost layer's headers are the ones the client sees.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use cache_core::Cache;
/// use rate_limit::RateLimitLayer;
///
/// let cache = Cache::in_memory();
/// let app: Router = Router::new()
///     .route("/search", get(|| async { "results" }))
///     .layer(RateLimitLayer::new(cache, 100, Duration::from_secs(60)));
/// // serve with app.into_make_service_with_connect_info::<std::net::SocketAddr>()
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limiter = &self.shared.limiter;
        f.debug_struct("RateLimitLayer")
            .field("prefix", &limiter.prefix)
            .field("policies", &limiter.policies)
            .field("fail_mode", &self.shared.fail_mode)
            .field("shadow", &self.shared.shadow)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// `limit` requests per `window` per client IP, counted in `cache` with
    /// the fixed window.
    ///
    /// # Panics
    ///
    /// If `limit` is 0 or over 2^52, or `window` is under 1 ms or over
    /// [`MAX_WINDOW`] (366 days): mistakes in code, found at start-up. [`RateLimitLayer::builder`] reports them as a
    /// [`ConfigError`] instead.
    pub fn new(cache: Cache, limit: u64, window: Duration) -> Self {
        match Self::builder(cache).limit(limit).window(window).build() {
            Ok(layer) => layer,
            Err(err) => panic!("invalid RateLimitLayer: {err}"),
        }
    }

    /// A builder for every setting.
    pub fn builder(cache: Cache) -> RateLimitLayerBuilder {
        RateLimitLayerBuilder::new(cache)
    }

    /// The counters since the layer was built (shared by its clones).
    pub fn stats(&self) -> RateLimitStats {
        self.shared.limiter.counters.snapshot()
    }

    /// Clients held in memory: (requests waiting for the store, deny cache entries). For
    /// tests that check both stay bounded; not a stable API.
    #[doc(hidden)]
    pub fn tracked_clients(&self) -> (usize, usize) {
        self.shared.limiter.tracked_clients()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Configures a [`RateLimitLayer`].
#[must_use]
pub struct RateLimitLayerBuilder {
    cache: Cache,
    limit: Option<u64>,
    window: Option<Duration>,
    policies: Vec<(String, Quota)>,
    cost: Option<Box<CostFn>>,
    clock: Option<Arc<dyn Clock>>,
    prefix: String,
    extractor: Option<Box<dyn KeyExtractor>>,
    /// The default extractor's settings: `None` when not set, so that
    /// setting them beside a custom extractor is caught.
    trusted_proxies: Option<Vec<String>>,
    forwarded_header: Option<ForwardedHeader>,
    ipv6_prefix: Option<u8>,
    headers: HeaderSets,
    reset_format: ResetFormat,
    policy_name: Option<String>,
    fail_mode: FailMode,
    shadow: bool,
    /// `None`: the default, capped at the handle's timeout.
    store_timeout: Option<Duration>,
    local_deny: bool,
    coalesce: Option<bool>,
    on_limited: Option<Box<OnLimited>>,
}

impl RateLimitLayerBuilder {
    fn new(cache: Cache) -> Self {
        RateLimitLayerBuilder {
            // A connection of its own: counting never queues behind a slow or
            // large cache read on the shared one (same settings, same server).
            cache: cache.dedicated(),
            limit: None,
            window: None,
            policies: Vec::new(),
            cost: None,
            clock: None,
            prefix: DEFAULT_PREFIX.to_string(),
            extractor: None,
            trusted_proxies: None,
            forwarded_header: None,
            ipv6_prefix: None,
            headers: HeaderSets::default(),
            reset_format: ResetFormat::default(),
            policy_name: None,
            fail_mode: FailMode::Open,
            shadow: false,
            store_timeout: None,
            local_deny: true,
            coalesce: None,
            on_limited: None,
        }
    }

    /// Requests per window and client (default 100), with the fixed window:
    /// the layer's one policy, unless [`policy`](Self::policy) is used.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The window, starting at a client's first request (default 60 s; 1 ms
    /// to [`MAX_WINDOW`]), of the [`limit`](Self::limit).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// Adds a policy: `quota` per client, named `name` in the headers (1 to
    /// 64 of `A-Z a-z 0-9 . _ -`) and in the Redis key. Repeatable; every
    /// policy is checked in the same store call, and a request passes only
    /// if every policy admits it: it is then charged to all of them, and a
    /// rejected request is charged to none. Not together with
    /// [`limit`](Self::limit)/[`window`](Self::window).
    pub fn policy(mut self, name: impl Into<String>, quota: Quota) -> Self {
        self.policies.push((name.into(), quota));
        self
    }

    /// What a request costs, in the quotas' units (default 1): a search
    /// costing 5, a health check 0. A request costing more than a policy's
    /// whole limit is rejected at once (429, problem+json saying so) and
    /// charged nothing.
    pub fn cost(mut self, cost: impl Fn(&RequestInfo<'_>) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Box::new(cost));
        self
    }

    /// The clock the limiter reads (default: the system clock). The Redis
    /// scripts keep Redis' own `TIME` unless the clock
    /// [is authoritative](Clock::is_authoritative), as a
    /// [`ManualClock`](crate::ManualClock) is: for tests that move time.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Redis keys are `{prefix}:{client}` (default `rate`); give stacked layers their own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Who requests count against (default: [`PeerIp`] with the proxy
    /// settings below). Not together with those settings
    /// ([`ConfigError::ExtractorSettings`]): configure your extractor itself.
    pub fn key_extractor(mut self, extractor: impl KeyExtractor) -> Self {
        self.extractor = Some(Box::new(extractor));
        self
    }

    /// Proxies (CIDRs or addresses) whose [`forwarded_header`](Self::forwarded_header)
    /// is believed by the default extractor. None by default.
    pub fn trusted_proxies<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.trusted_proxies = Some(cidrs.into_iter().map(Into::into).collect());
        self
    }

    /// The one header trusted proxies give the client's address in, for the
    /// default extractor (default [`ForwardedHeader::XForwardedFor`]): set it
    /// to what your proxy writes (`Forwarded` for HAProxy's `option
    /// forwarded`, `CF-Connecting-IP` behind Cloudflare). No other is read,
    /// so a client cannot pick its bucket through a header the proxy leaves
    /// alone. See [`PeerIp`] for what happens when it gives no address.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.forwarded_header = Some(header);
        self
    }

    /// IPv6 clients are grouped by this prefix in the default extractor (default 56).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = Some(bits);
        self
    }

    /// Which header sets responses carry (default: both).
    pub fn headers(mut self, headers: HeaderSets) -> Self {
        self.headers = headers;
        self
    }

    /// What `X-RateLimit-Reset` carries (default
    /// [`ResetFormat::SecondsUntilReset`]; [`ResetFormat::EpochSeconds`] is
    /// GitHub's convention). `RateLimit`'s `t=` is always seconds until reset.
    pub fn reset_header(mut self, format: ResetFormat) -> Self {
        self.reset_format = format;
        self
    }

    /// The name in `RateLimit-Policy` / `RateLimit` of the
    /// [`limit`](Self::limit) policy (default: the prefix).
    pub fn policy_name(mut self, name: impl Into<String>) -> Self {
        self.policy_name = Some(name.into());
        self
    }

    /// What happens when the store fails (default [`FailMode::Open`]).
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// Counts and sets headers, but never rejects: to roll out a new limit safely.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Bound on one store call (default 100 ms, or the handle's
    /// [`timeout`](Cache::timeout) if that is shorter). A request whose count
    /// is batched behind another one at the store waits for that one first,
    /// so a hung Redis adds at most twice this to a request; the timeouts
    /// count as failures for the handle's circuit breaker, which then stops
    /// the calls. Longer than the handle's timeout is a
    /// [`ConfigError::StoreTimeoutOverHandle`]: the handle bounds every call.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = Some(timeout);
        self
    }

    /// Reject clients known to be over the limit without a store call (default on).
    pub fn local_deny_cache(mut self, enabled: bool) -> Self {
        self.local_deny = enabled;
        self
    }

    /// Fold concurrent requests, of one client or many, into one store call
    /// (default on; only Redis batches: an in-memory check is already a
    /// function call). Off: one Redis call per request.
    pub fn coalesce(mut self, enabled: bool) -> Self {
        self.coalesce = Some(enabled);
        self
    }

    /// Builds the 429 response yourself; the layer still adds the rate-limit
    /// headers and `Retry-After`.
    pub fn on_limited(
        mut self,
        respond: impl Fn(&Decision) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_limited = Some(Box::new(respond));
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(mut self) -> Result<RateLimitLayer, ConfigError> {
        let store_timeout = self.checked_store_timeout()?;
        if !is_token(&self.prefix, b":") {
            return Err(ConfigError::Prefix);
        }
        let policies = self.checked_policies()?;
        let extractor = self.checked_extractor()?;
        let coalesce = self
            .coalesce
            .unwrap_or(*self.cache.backend() != cache_core::Backend::Memory);
        let (headers, limited_bodies) = self.rendered_responses(&policies);
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                limiter: Limiter::new(LimiterConfig {
                    cache: self.cache,
                    prefix: self.prefix,
                    policies,
                    store_timeout,
                    local_deny: self.local_deny,
                    coalesce,
                    clock: self.clock,
                }),
                extractor,
                cost: self.cost,
                headers,
                limited_bodies,
                fail_mode: self.fail_mode,
                shadow: self.shadow,
                on_limited: self.on_limited,
                missing_key_logged: StateFlag::new(),
            }),
        })
    }

    /// The store timeout: the one set, within the handle's, or the default
    /// capped at the handle's.
    fn checked_store_timeout(&self) -> Result<Duration, ConfigError> {
        let handle_timeout = self.cache.timeout();
        match self.store_timeout {
            None => Ok(DEFAULT_STORE_TIMEOUT.min(handle_timeout)),
            Some(timeout) if timeout.is_zero() => Err(ConfigError::ZeroStoreTimeout),
            Some(store_timeout) if store_timeout > handle_timeout => {
                Err(ConfigError::StoreTimeoutOverHandle {
                    store_timeout,
                    handle_timeout,
                })
            }
            Some(timeout) => Ok(timeout),
        }
    }

    /// The policies: the ones added, or the one of `limit`/`window`; named
    /// uniquely, each quota valid.
    fn checked_policies(&mut self) -> Result<Vec<Policy>, ConfigError> {
        let policies = if self.policies.is_empty() {
            let name = self
                .policy_name
                .take()
                .unwrap_or_else(|| self.prefix.replace(':', "-"));
            let quota = Quota::new(
                self.limit.unwrap_or(100),
                self.window.unwrap_or(Duration::from_secs(60)),
            );
            vec![(name, quota)]
        } else if self.limit.is_some() || self.window.is_some() {
            return Err(ConfigError::PolicyAndLimit);
        } else {
            std::mem::take(&mut self.policies)
        };
        for (i, (name, quota)) in policies.iter().enumerate() {
            if !is_token(name, b"") {
                return Err(ConfigError::PolicyName);
            }
            if policies[..i].iter().any(|(other, _)| other == name) {
                return Err(ConfigError::DuplicatePolicy(name.clone()));
            }
            quota.validate()?;
        }
        Ok(policies
            .into_iter()
            .map(|(name, quota)| Policy { name, quota })
            .collect())
    }

    /// The custom extractor, or [`PeerIp`] with the proxy settings: never
    /// both, since the settings would be silently ignored.
    fn checked_extractor(&mut self) -> Result<Box<dyn KeyExtractor>, ConfigError> {
        let proxy_settings = self.trusted_proxies.is_some()
            || self.forwarded_header.is_some()
            || self.ipv6_prefix.is_some();
        if let Some(extractor) = self.extractor.take() {
            if proxy_settings {
                return Err(ConfigError::ExtractorSettings);
            }
            return Ok(extractor);
        }
        let ipv6_prefix = self.ipv6_prefix.unwrap_or(56);
        if ipv6_prefix > 128 {
            return Err(ConfigError::Ipv6Prefix(ipv6_prefix));
        }
        let trusted = TrustedProxies::parse(self.trusted_proxies.iter().flatten())?;
        Ok(Box::new(
            PeerIp::new()
                .trusted_proxies(trusted)
                .forwarded_header(self.forwarded_header.take().unwrap_or_default())
                .ipv6_prefix(ipv6_prefix),
        ))
    }

    /// The rate-limit headers and the default 429 body of each policy,
    /// rendered once.
    fn rendered_responses(&self, policies: &[Policy]) -> (HeaderTemplate, Vec<Bytes>) {
        let described: Vec<(&str, u64, Duration)> = policies
            .iter()
            .map(|p| (p.name.as_str(), p.quota.limit(), p.quota.window()))
            .collect();
        let headers = HeaderTemplate::new(self.headers, self.reset_format, &described);
        let limited_bodies = policies
            .iter()
            .map(|p| response::too_many_requests_body(p.quota.limit(), p.quota.window()))
            .collect();
        (headers, limited_bodies)
    }
}

/// A name that can go into a Redis key and a header: 1 to 64 of
/// `A-Z a-z 0-9 . _ -` and the `extra` bytes.
fn is_token(text: &str, extra: &[u8]) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}

/// The service [`RateLimitLayer`] wraps around `S`.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The response to a request over the limit (not in shadow mode).
    fn limited<B>(&self, decision: &Decision) -> Response<ResponseBody<B>> {
        self.limiter.counters.record_limited();
        let mut limited = match &self.on_limited {
            Some(respond) => respond(decision).map(ResponseBody::full),
            None => response::too_many_requests(
                self.limited_bodies
                    .get(decision.policy)
                    .cloned()
                    .unwrap_or_default(),
            ),
        };
        *limited.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        limited.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(decision.retry_after_seconds()),
        );
        self.headers.write(limited.headers_mut(), decision);
        limited
    }

    /// The response to a request that costs more than a policy's whole quota.
    fn too_costly<B>(&self, cost: u64, policy: usize) -> Response<ResponseBody<B>> {
        self.limiter.counters.record_limited();
        let detail = match self.limiter.policies.get(policy) {
            Some(p) => format!(
                "This request costs {cost} units, more than the whole quota of policy \"{}\" ({} per {} s): it can never pass.",
                p.name,
                p.quota.limit(),
                crate::window::ceil_seconds(p.quota.window())
            ),
            None => {
                format!("This request costs {cost} units, more than the quota: it can never pass.")
            }
        };
        response::problem(StatusCode::TOO_MANY_REQUESTS, "Request Too Costly", &detail)
    }

    /// The response to a request the extractor cannot key: a misconfiguration.
    fn unkeyed<B>(&self, err: &KeyError) -> Response<ResponseBody<B>> {
        if self.missing_key_logged.raise() {
            tracing::error!(error = %err, "rate limiter cannot identify the client");
        }
        response::problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Rate limiter misconfigured",
            &err.to_string(),
        )
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let info = RequestInfo {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        };
        let key = shared.extractor.extract(&info);
        let cost = shared.cost.as_ref().map_or(1, |cost| cost(&info));
        let key = match key {
            Ok(key) => sanitize(key),
            // A custom extractor built on `PeerIp::client_ip`: the same shared
            // bucket `PeerIp` itself uses.
            Err(KeyError::UnidentifiedClient) => UNIDENTIFIED_KEY.to_string(),
            Err(err) => return ResponseFuture::ready(shared.unkeyed(&err)),
        };
        // A request that can never pass, whoever sends it.
        if !shared.shadow
            && let Some(policy) = shared.limiter.too_costly(cost)
        {
            return ResponseFuture::ready(shared.too_costly(cost, policy));
        }
        // A client known to be over its limit is answered here: no store
        // call, no allocation for a future, the inner service untouched.
        // Not a free request (cost 0): it passes even a client at its limit.
        let known = if cost == 0 {
            None
        } else {
            shared.limiter.check_locally(&key)
        };
        if let Some(decision) = &known
            && !shared.shadow
        {
            return ResponseFuture::ready(shared.limited(decision));
        }
        // The clone is not ready; the instance that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = shared.clone();
        let future = async move {
            let decision = match known {
                Some(decision) => decision,
                None => match shared.limiter.check(key, cost).await {
                    Verdict::Decided(decision) => decision,
                    Verdict::TooCostly { policy } => {
                        if !shared.shadow {
                            return Ok(shared.too_costly(cost, policy));
                        }
                        // Shadow mode never rejects: noted, let through, uncounted.
                        shared.limiter.counters.record_shadow_limited();
                        return Ok(inner.call(request).await?.map(ResponseBody::inner));
                    }
                    Verdict::StoreFailed => {
                        return match shared.fail_mode {
                            FailMode::Open => {
                                Ok(inner.call(request).await?.map(ResponseBody::inner))
                            }
                            FailMode::Closed => Ok(response::store_unavailable()),
                        };
                    }
                },
            };
            let counters = &shared.limiter.counters;
            if !decision.allowed && !shared.shadow {
                return Ok(shared.limited(&decision));
            }
            if decision.allowed {
                counters.record_allowed();
            } else {
                counters.record_shadow_limited();
            }
            let mut response = inner.call(request).await?.map(ResponseBody::inner);
            shared.headers.write(response.headers_mut(), &decision);
            Ok(response)
        };
        ResponseFuture::pending(future)
    }
}
