//! [`RateLimitLayerBuilder`]: every setting of a [`RateLimitLayer`], checked
//! once by [`build`](RateLimitLayerBuilder::build).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_core::Cache;
use cache_sync::StateFlag;
use http::Response;

use crate::clock::Clock;
use crate::error::ConfigError;
use crate::headers::{HeaderSets, HeaderTemplate, ResetFormat};
use crate::key::{ForwardedHeader, KeyExtractor, PeerIp, RequestInfo, TrustedProxies};
use crate::layer::{CostFn, FailMode, OnLimited, RateLimitLayer, Shared};
use crate::limiter::{Limiter, LimiterConfig, Policy};
use crate::outcome::{ResponseInfo, SettleFn};
use crate::plan::{self, DEFAULT_PLAN, Plan, Plans, SelectFn};
use crate::prefix::PrefixClaim;
use crate::quota::Quota;
use crate::response;
use crate::shared::SharedCounting;
use crate::window::Decision;

/// Default Redis key prefix: keys are `rate:{client key}`.
pub const DEFAULT_PREFIX: &str = "rate";
/// Default bound on one store call; past it the request is let through (or 503).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest [`lease_wait`](RateLimitLayerBuilder::lease_wait): 60 s.
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(60);
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
    on_limited: Option<Box<OnLimited>>,
    shared: Option<SharedCounting>,
    /// Declared plans: name and policies.
    plans: Vec<(String, Vec<(String, Quota)>)>,
    plan_for: Option<Box<SelectFn>>,
    settle: Option<Box<SettleFn>>,
    lease_wait: Duration,
}

impl RateLimitLayerBuilder {
    pub(crate) fn new(cache: Cache) -> Self {
        RateLimitLayerBuilder {
            // A connection of its own: counting never queues behind a slow or
            // large cache read on the shared one (same settings, same server).
            cache: cache.dedicated_counter(),
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
            on_limited: None,
            shared: None,
            plans: Vec::new(),
            plan_for: None,
            settle: None,
            lease_wait: Duration::ZERO,
        }
    }

    /// Requests per window and client (default 100), with the fixed window:
    /// the layer's one policy, unless [`policy`](Self::policy) is used.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The window, starting at a client's first request (default 60 s; 1 ms
    /// to [`MAX_WINDOW`](crate::MAX_WINDOW)), of the [`limit`](Self::limit).
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use http::StatusCode;
    /// use rate_limit::{ManualClock, Quota, RateLimitLayer};
    ///
    /// let clock = ManualClock::new();
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .policy("burst", Quota::per_second(2))
    ///     .policy("hourly", Quota::per_hour(3))
    ///     .clock(clock.clone())
    ///     .build()?;
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// let status = || async { app.clone().oneshot(request("/", [203, 0, 113, 9])).await.map(|r| r.status()) };
    ///
    /// assert_eq!(status().await?, StatusCode::OK);
    /// assert_eq!(status().await?, StatusCode::OK);
    /// assert_eq!(status().await?, StatusCode::TOO_MANY_REQUESTS); // burst: charged to neither
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(status().await?, StatusCode::OK); // the third of the hour
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(status().await?, StatusCode::TOO_MANY_REQUESTS); // hourly
    /// # Ok(()) }
    /// ```
    pub fn policy(mut self, name: impl Into<String>, quota: Quota) -> Self {
        self.policies.push((name.into(), quota));
        self
    }

    /// What a request costs, in the quotas' units (default 1): a search
    /// costing 5, a health check 0. A request costing more than a policy's
    /// whole limit is rejected at once (429, problem+json saying so) and
    /// charged nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use axum::{Router, routing::get};
    /// use http::StatusCode;
    /// use rate_limit::{Quota, RateLimitLayer, RequestInfo};
    ///
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .policy("units", Quota::per_minute(10))
    ///     .cost(|req: &RequestInfo<'_>| match req.uri.path() {
    ///         "/health" => 0,  // free
    ///         "/export" => 10, // the whole budget
    ///         _ => 1,
    ///     })
    ///     .build()?;
    /// let app = Router::new()
    ///     .route("/export", get(|| async { "csv" }))
    ///     .route("/health", get(|| async { "ok" }))
    ///     .layer(layer);
    /// assert_eq!(app.clone().oneshot(request("/export", [203, 0, 113, 9])).await?.status(), StatusCode::OK);
    /// assert_eq!(app.clone().oneshot(request("/export", [203, 0, 113, 9])).await?.status(), StatusCode::TOO_MANY_REQUESTS);
    /// assert_eq!(app.oneshot(request("/health", [203, 0, 113, 9])).await?.status(), StatusCode::OK);
    /// # Ok(()) }
    /// ```
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
    /// A prefix that a live layer of this process uses on the same store
    /// with other policies is refused by [`build`](Self::build)
    /// ([`ConfigError::PrefixInUse`]): the two would share their counters.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Who requests count against (default: [`PeerIp`] with the proxy
    /// settings below). Not together with those settings
    /// ([`ConfigError::ExtractorSettings`]): configure your extractor itself.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use http::StatusCode;
    /// use rate_limit::{Error, RateLimitLayer, RequestInfo};
    ///
    /// // Per tenant, from a header an authentication layer in front has checked.
    /// let by_tenant = |req: &RequestInfo<'_>| -> Result<String, Error> {
    ///     let tenant = req.headers.get("x-tenant").ok_or_else(|| Error::other("no tenant"))?;
    ///     Ok(tenant.to_str().map_err(Error::other)?.to_owned())
    /// };
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .limit(1)
    ///     .window(Duration::from_secs(60))
    ///     .key_extractor(by_tenant)
    ///     .build()?;
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// let mut first = request("/", [203, 0, 113, 9]);
    /// first.headers_mut().insert("x-tenant", "acme".parse()?);
    /// assert_eq!(app.clone().oneshot(first).await?.status(), StatusCode::OK);
    /// let mut other_ip_same_tenant = request("/", [198, 51, 100, 4]);
    /// other_ip_same_tenant.headers_mut().insert("x-tenant", "acme".parse()?);
    /// assert_eq!(app.oneshot(other_ip_same_tenant).await?.status(), StatusCode::TOO_MANY_REQUESTS);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use http::StatusCode;
    /// use rate_limit::{ForwardedHeader, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .limit(1)
    ///     .window(Duration::from_secs(60))
    ///     .trusted_proxies(["10.0.0.0/8"])
    ///     .forwarded_header(ForwardedHeader::XForwardedFor)
    ///     .build()?;
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// let via_proxy = |client: &str| {
    ///     let mut request = request("/", [10, 0, 0, 5]); // the load balancer
    ///     request.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
    ///     request
    /// };
    /// assert_eq!(app.clone().oneshot(via_proxy("203.0.113.9")).await?.status(), StatusCode::OK);
    /// // Another client behind the same proxy has a budget of its own.
    /// assert_eq!(app.clone().oneshot(via_proxy("198.51.100.4")).await?.status(), StatusCode::OK);
    /// assert_eq!(app.oneshot(via_proxy("203.0.113.9")).await?.status(), StatusCode::TOO_MANY_REQUESTS);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use rate_limit::{HeaderSets, RateLimitLayer, ResetFormat};
    ///
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .limit(10)
    ///     .window(Duration::from_secs(60))
    ///     .reset_header(ResetFormat::EpochSeconds) // as GitHub's API
    ///     .headers(HeaderSets { legacy: true, ietf: false }) // X-RateLimit-* only
    ///     .build()?;
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// let response = app.oneshot(request("/", [203, 0, 113, 9])).await?;
    /// let reset: u64 = response.headers()["x-ratelimit-reset"].to_str()?.parse()?;
    /// assert!(reset > 1_700_000_000); // a Unix time, not a delay
    /// assert!(response.headers().get("ratelimit").is_none());
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use cache_core::Cache;
    /// use http::StatusCode;
    /// use rate_limit::{FailMode, RateLimitLayer};
    ///
    /// // A Redis that is down: nothing listens on port 1.
    /// let down = Cache::builder().redis_url("redis://127.0.0.1:1")?.timeout(Duration::from_millis(50)).build().await?;
    /// let app = |mode| -> Result<Router, rate_limit::Error> {
    ///     let layer = RateLimitLayer::builder(down.clone()).fail_mode(mode).build()?;
    ///     Ok(Router::new().route("/", get(|| async { "hi" })).layer(layer))
    /// };
    /// let open = app(FailMode::Open)?.oneshot(request("/", [203, 0, 113, 9])).await?;
    /// assert_eq!(open.status(), StatusCode::OK); // let through, logged once, counted
    /// let closed = app(FailMode::Closed)?.oneshot(request("/", [203, 0, 113, 9])).await?;
    /// assert_eq!(closed.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// # Ok(()) }
    /// ```
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// Counts and sets headers, but never rejects: to roll out a new limit safely.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use http::StatusCode;
    /// use rate_limit::RateLimitLayer;
    ///
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .limit(1)
    ///     .window(Duration::from_secs(60))
    ///     .shadow(true)
    ///     .build()?;
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer.clone());
    /// for _ in 0..3 {
    ///     let response = app.clone().oneshot(request("/", [203, 0, 113, 9])).await?;
    ///     assert_eq!(response.status(), StatusCode::OK); // never rejected
    /// }
    /// assert_eq!(layer.stats().shadow_limited, 2); // what the limit would have rejected
    /// # Ok(()) }
    /// ```
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Bound on one store call (default 100 ms, or the handle's
    /// [`timeout`](Cache::timeout) if that is shorter): a hung Redis adds at
    /// most this to a request; the timeouts count as failures for the
    /// handle's circuit breaker, which then stops the calls. Longer than the
    /// handle's timeout is a
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

    /// No effect: every request is counted in its own store call, sent at
    /// once on the limiter's multiplexed connection, which pipelines
    /// concurrent calls (folding them into batches cost more CPU and latency
    /// than it saved; see BENCHMARKS.md, "Issue 21: the exact path").
    #[deprecated(
        since = "0.1.0",
        note = "requests are no longer batched: each is sent at once, pipelined on the connection"
    )]
    pub fn coalesce(self, enabled: bool) -> Self {
        let _ = enabled;
        self
    }

    /// Builds the response to a rejected request yourself. The status you set
    /// stands (a `503`, a `403`), except `200 OK`, which is what
    /// `Response::new` gives: that one becomes `429 Too Many Requests`, since
    /// a rejection answered `200` would tell the client it was served. The
    /// layer adds `Retry-After` and the rate-limit headers, except those your
    /// response has already.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use bytes::Bytes;
    /// use http::{Response, StatusCode};
    /// use rate_limit::{Decision, ManualClock, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .limit(1)
    ///     .window(Duration::from_secs(60))
    ///     .clock(ManualClock::new()) // time stands still: the wait is exactly 60 s
    ///     .on_limited(|decision: &Decision| {
    ///         let body = format!("{{\"error\":\"slow down\",\"retry_in\":{}}}", decision.retry_after_seconds());
    ///         Response::new(Bytes::from(body)) // no status set: 429
    ///     })
    ///     .build()?;
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// app.clone().oneshot(request("/", [203, 0, 113, 9])).await?;
    /// let limited = app.oneshot(request("/", [203, 0, 113, 9])).await?;
    /// assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    /// assert_eq!(limited.headers()["retry-after"], "60"); // added by the layer
    /// let body = axum::body::to_bytes(axum::body::Body::new(limited.into_body()), 1024).await?;
    /// assert_eq!(body, r#"{"error":"slow down","retry_in":60}"#);
    /// # Ok(()) }
    /// ```
    pub fn on_limited(
        mut self,
        respond: impl Fn(&Decision) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_limited = Some(Box::new(respond));
        self
    }

    /// Opt-in: count at in-process cost, sharing the limits with the other
    /// instances through Redis in the background ([`SharedCounting`]).
    /// Each request is answered from this instance's own counts and the
    /// totals it last read, with no Redis call; every flush interval the
    /// instance sends what it admitted (one script call) and reads the
    /// totals back. A client may be admitted past its limit by at most
    /// `(N − 1) × max(1, ⌊share × limit⌋)` per window with `N` instances
    /// ([`SharedCounting::over_admission_bound`]); no request the limit
    /// admits is rejected. Holds the fixed window (aligned to Redis' clock,
    /// not started by a client's first request) and the sliding window, not
    /// GCRA ([`ConfigError::SharedAlgorithm`]).
    ///
    /// **When to choose which.** The default, exact mode counts every
    /// request in Redis: exact across instances for every algorithm, at a
    /// round trip and a script call per request. Choose shared counting
    /// when that round trip is the cost you cannot pay (many requests per
    /// client, latency budgets of microseconds, a Redis you want to spare)
    /// and a client getting a few percent more than its limit across
    /// instances is acceptable: per-IP abuse protection, fair use. Keep the
    /// exact mode for limits that are promises (billing, quotas sold per
    /// unit), for small limits (a share of 10 is still one request per
    /// instance), for GCRA, and for a single instance that restarts often.
    ///
    /// **On the in-memory store** there is nothing to share: the counts are
    /// in the process already, exact at in-process cost, so the layer counts
    /// as it does without shared counting (every algorithm's windows as the
    /// exact mode has them: the fixed window starts at a client's first
    /// request), one count with every layer of that store and prefix.
    /// The settings are checked all the same ([`ConfigError::SharedAlgorithm`],
    /// a concurrency limit, charging by outcome), so that a configuration
    /// that builds in development builds against Redis.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// # fn request(path: &str, peer: [u8; 4]) -> http::Request<Body> {
    /// #     let mut request = http::Request::get(path).body(Body::empty()).unwrap();
    /// #     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    /// #     request
    /// # }
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use http::StatusCode;
    /// use rate_limit::{ManualClock, RateLimitLayer, SharedCounting};
    ///
    /// let cache = cache_core::Cache::in_memory(); // on Redis: Cache::from_env().await?
    /// let layer = RateLimitLayer::builder(cache)
    ///     .limit(2)
    ///     .window(Duration::from_secs(60))
    ///     .shared_counting(SharedCounting::new().flush_interval(Duration::from_millis(10)))
    ///     .clock(ManualClock::new())
    ///     .build()?;
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// let status = || async { app.clone().oneshot(request("/", [203, 0, 113, 9])).await.map(|r| r.status()) };
    /// assert_eq!(status().await?, StatusCode::OK);
    /// assert_eq!(status().await?, StatusCode::OK);
    /// assert_eq!(status().await?, StatusCode::TOO_MANY_REQUESTS);
    /// # Ok(()) }
    /// ```
    pub fn shared_counting(mut self, shared: SharedCounting) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Declares a plan: named policies a request is counted under instead
    /// of the layer's own when [`plan_for`](Self::plan_for) names it (an
    /// API's free and paid clients, from one layer). The name (1 to 64 of
    /// `A-Z a-z 0-9 . _ -`, not [`DEFAULT_PLAN`]) goes into the keys,
    /// `{prefix}@{plan}:{client}`, so no plan shares state with another or
    /// with the layer's own policies (the default plan, keys as without
    /// plans); each policy is checked as [`policy`](Self::policy)'s are.
    /// Responses carry the chosen plan's headers. A client that changes plan
    /// starts a fresh count under the new plan; its count under the old one
    /// stays until that window ends. A plan may hold a
    /// [concurrency limit](Quota::concurrent): its leases are under the
    /// plan's keys, released through the plan (a client changing plan holds
    /// its old plan's leases until those responses end).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// use axum::{Router, routing::get};
    /// use http::{Request, StatusCode};
    /// use rate_limit::{Quota, RateLimitLayer, RequestInfo};
    ///
    /// /// What the authentication layer puts into the request.
    /// #[derive(Clone)]
    /// struct Paid;
    ///
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .policy("free", Quota::per_minute(1))
    ///     .plan("paid", [("paid", Quota::per_minute(100))])
    ///     .plan_for(|req: &RequestInfo<'_>| req.extensions.get::<Paid>().map(|_| "paid"))
    ///     .build()?;
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer);
    /// let request = |paid: bool| {
    ///     let mut request = Request::get("/").body(Body::empty()).unwrap();
    ///     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([203, 0, 113, 9], 50000))));
    ///     if paid {
    ///         request.extensions_mut().insert(Paid);
    ///     }
    ///     request
    /// };
    /// assert_eq!(app.clone().oneshot(request(false)).await?.status(), StatusCode::OK);
    /// assert_eq!(app.clone().oneshot(request(false)).await?.status(), StatusCode::TOO_MANY_REQUESTS);
    /// let paid = app.oneshot(request(true)).await?; // the paid plan counts apart
    /// assert_eq!(paid.status(), StatusCode::OK);
    /// assert_eq!(paid.headers()["ratelimit-policy"], r#""paid";q=100;w=60"#);
    /// # Ok(()) }
    /// ```
    pub fn plan<I, P>(mut self, name: impl Into<String>, policies: I) -> Self
    where
        I: IntoIterator<Item = (P, Quota)>,
        P: Into<String>,
    {
        let policies = policies
            .into_iter()
            .map(|(name, quota)| (name.into(), quota))
            .collect();
        self.plans.push((name.into(), policies));
        self
    }

    /// Chooses each request's plan: the name of a declared
    /// [`plan`](Self::plan) (`&'static str` or `String`), or `None` for the
    /// layer's own policies (the default plan, also chosen by the name
    /// [`DEFAULT_PLAN`]). Typically it reads what an authentication layer
    /// put into the request's extensions. A name the layer does not declare
    /// counts under the default plan: logged once, counted in
    /// [`RateLimitStats::unknown_plans`](crate::RateLimitStats::unknown_plans).
    pub fn plan_for<F, N>(mut self, select: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<N> + Send + Sync + 'static,
        N: AsRef<str>,
    {
        self.plan_for = Some(plan::selector(select));
        self
    }

    /// Charges only the requests whose response `charged` selects (failed
    /// logins: `401`/`403`; an upstream's `5xx`). Exact under concurrency: a
    /// request is charged when it is admitted, so 100 concurrent wrong
    /// passwords against a limit of 5 admit 5, and given back when its
    /// response is not selected, when the inner service fails, or when the
    /// response future is dropped (the client went away): once, on a task
    /// of its own. The refund goes to the window the request was charged in
    /// (fixed and sliding windows; one that has rolled over gets nothing
    /// back, or its previous-window count for the sliding window); GCRA's
    /// TAT moves back, never before now. A refund the store does not take
    /// leaves the charge until its window ends, whatever the fail mode:
    /// counted in [`RateLimitStats::refund_errors`](crate::RateLimitStats::refund_errors),
    /// never an error to the client; so does an instance that dies
    /// mid-request. A request let through because the store failed is never
    /// charged. Not with [`shared_counting`](Self::shared_counting)
    /// ([`ConfigError::ChargeWithSharedCounting`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use axum::{body::Body, extract::ConnectInfo};
    /// # use tower::ServiceExt;
    /// use axum::{Router, routing::post};
    /// use http::{Request, StatusCode};
    /// use rate_limit::{Quota, RateLimitLayer, ResponseInfo};
    ///
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .policy("login-failures", Quota::per_minute(2))
    ///     .charge_if(|res: &ResponseInfo<'_>| res.status == StatusCode::UNAUTHORIZED)
    ///     .build()?;
    /// let app = Router::new()
    ///     .route("/login", post(|body: String| async move {
    ///         if body == "secret" { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
    ///     }))
    ///     .layer(layer);
    /// let login = |password: &'static str| {
    ///     let mut request = Request::post("/login").body(Body::from(password)).unwrap();
    ///     request.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([203, 0, 113, 9], 50000))));
    ///     request
    /// };
    /// for _ in 0..5 {
    ///     // Successful logins are given back.
    ///     assert_eq!(app.clone().oneshot(login("secret")).await?.status(), StatusCode::OK);
    /// }
    /// for _ in 0..2 {
    ///     assert_eq!(app.clone().oneshot(login("guess")).await?.status(), StatusCode::UNAUTHORIZED);
    /// }
    /// assert_eq!(app.oneshot(login("secret")).await?.status(), StatusCode::TOO_MANY_REQUESTS);
    /// # Ok(()) }
    /// ```
    pub fn charge_if(
        mut self,
        charged: impl Fn(&ResponseInfo<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settle = Some(Box::new(
            move |response: &ResponseInfo<'_>, cost: u64| {
                if charged(response) { cost } else { 0 }
            },
        ));
        self
    }

    /// Charges each request what its response says it cost (a unit count
    /// in a header or an extension the handler set), at most its
    /// [`cost`](Self::cost): a request is admitted at its cost, the most it
    /// may use, and the difference is given back as with
    /// [`charge_if`](Self::charge_if) (same refunds, same guarantees).
    pub fn charge_by_response(
        mut self,
        cost: impl Fn(&ResponseInfo<'_>) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.settle = Some(Box::new(
            move |response: &ResponseInfo<'_>, charged: u64| cost(response).min(charged),
        ));
        self
    }

    /// A request refused only by a [concurrency limit](Quota::concurrent)
    /// (every rate policy admits it) waits up to `wait` for a slot before
    /// its 429, asking the store again after 5 ms, then twice as long each
    /// time up to 100 ms (a store call each). Not a queue: a slot goes to
    /// whichever request asks first once it is free. Default: no wait. At
    /// most [`MAX_LEASE_WAIT`] (60 s), and only with a concurrency limit
    /// (among the layer's own policies or a [plan](Self::plan)'s; it applies
    /// to each): else [`ConfigError::LeaseWait`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit::{Quota, RateLimitLayer};
    ///
    /// let exports = RateLimitLayer::builder(cache_core::Cache::in_memory())
    ///     .policy("in-flight", Quota::concurrent(2))
    ///     .lease_wait(Duration::from_secs(5))
    ///     .build()?;
    /// # let _ = exports;
    /// # Ok::<(), rate_limit::Error>(())
    /// ```
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// Whether the layer reads the reset of an admitted request: a header
    /// field carries it (`X-RateLimit-Reset`, `RateLimit`'s `t=`), or a
    /// refund finds the window it gives back to by it.
    fn reads_resets(&self) -> bool {
        self.headers.legacy || self.headers.ietf || self.settle.is_some()
    }

    /// Checks the configuration and builds the layer.
    pub fn build(mut self) -> Result<RateLimitLayer, ConfigError> {
        let store_timeout = self.checked_store_timeout()?;
        if !is_token(&self.prefix, b":") {
            return Err(ConfigError::Prefix);
        }
        let policies = self.checked_policies()?;
        if let Some(shared) = &self.shared {
            let quotas: Vec<Quota> = policies.iter().map(|p| p.quota).collect();
            shared.validate(&quotas)?;
        }
        if self.settle.is_some() && self.shared.is_some() {
            return Err(ConfigError::ChargeWithSharedCounting);
        }
        // A concurrency limit of the layer's own policies or of a plan's.
        let leases = policies.iter().any(|p| p.quota.is_concurrent())
            || self
                .plans
                .iter()
                .any(|(_, plan)| plan.iter().any(|(_, quota)| quota.is_concurrent()));
        if !self.lease_wait.is_zero() && (self.lease_wait > MAX_LEASE_WAIT || !leases) {
            return Err(ConfigError::LeaseWait(self.lease_wait));
        }
        let plans = self.checked_plans(store_timeout)?;
        let extractor = self.checked_extractor()?;
        let prefix_claim = PrefixClaim::take(&self.cache, &self.prefix, &policies)?;
        let (headers, limited_bodies) = self.rendered_responses(&policies);
        let resets = self.reads_resets();
        let mut limiter = Limiter::new(LimiterConfig {
            cache: self.cache,
            prefix: self.prefix,
            policies,
            store_timeout,
            local_deny: self.local_deny,
            clock: self.clock,
            shared: self.shared,
            fail_open: self.fail_mode == FailMode::Open,
        })
        .with_lease_wait(self.lease_wait)
        .with_resets(resets);
        if plans.is_some() {
            limiter = limiter.with_plan(DEFAULT_PLAN);
        }
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                limiter,
                extractor,
                cost: self.cost,
                headers,
                limited_bodies,
                fail_mode: self.fail_mode,
                shadow: self.shadow,
                on_limited: self.on_limited,
                missing_key_logged: StateFlag::new(),
                _prefix_claim: prefix_claim,
                plans,
                settle: self.settle,
                refunds: Default::default(),
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
        validated(policies)
    }

    /// The declared plans, each with its own limiter under
    /// `{prefix}@{plan}`, and `plan_for`: both or neither.
    fn checked_plans(
        &mut self,
        store_timeout: Duration,
    ) -> Result<Option<Box<Plans>>, ConfigError> {
        let select = match (self.plan_for.take(), self.plans.is_empty()) {
            (None, true) => return Ok(None),
            (Some(select), false) => select,
            _ => return Err(ConfigError::PlanSelector),
        };
        let declared = std::mem::take(&mut self.plans);
        for (i, (name, policies)) in declared.iter().enumerate() {
            if !is_token(name, b"") || name == DEFAULT_PLAN {
                return Err(ConfigError::PlanName);
            }
            if declared[..i].iter().any(|(other, _)| other == name) {
                return Err(ConfigError::DuplicatePlan(name.clone()));
            }
            if policies.is_empty() {
                return Err(ConfigError::EmptyPlan(name.clone()));
            }
        }
        let mut list = Vec::with_capacity(declared.len());
        for (name, policies) in declared {
            let policies = validated(policies)?;
            if let Some(shared) = &self.shared {
                let quotas: Vec<Quota> = policies.iter().map(|p| p.quota).collect();
                shared.validate(&quotas)?;
            }
            // `@` is in no prefix, plan name or sanitized client key: no
            // plan's keys are another's.
            let prefix = format!("{}@{name}", self.prefix);
            let claim = PrefixClaim::take(&self.cache, &prefix, &policies)?;
            let (headers, limited_bodies) = self.rendered_responses(&policies);
            let limiter = Limiter::new(LimiterConfig {
                cache: self.cache.clone(),
                prefix,
                policies,
                store_timeout,
                local_deny: self.local_deny,
                clock: self.clock.clone(),
                shared: self.shared,
                fail_open: self.fail_mode == FailMode::Open,
            })
            .with_lease_wait(self.lease_wait)
            .with_resets(self.reads_resets())
            .with_plan(&name);
            list.push(Plan {
                name,
                limiter,
                headers,
                limited_bodies,
                _prefix_claim: claim,
            });
        }
        Ok(Some(Box::new(Plans {
            select,
            list,
            unknown: Default::default(),
            unknown_logged: StateFlag::new(),
        })))
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
        let concurrent: Vec<usize> = (0..policies.len())
            .filter(|&i| policies[i].quota.is_concurrent())
            .collect();
        let headers = HeaderTemplate::new(self.headers, self.reset_format, &described)
            .with_concurrency(&described, &concurrent);
        let limited_bodies = policies
            .iter()
            .map(|p| match p.quota.is_concurrent() {
                true => response::too_many_in_flight_body(p.quota.limit()),
                false => response::too_many_requests_body(p.quota.limit(), p.quota.window()),
            })
            .collect();
        (headers, limited_bodies)
    }
}

/// Policies named uniquely, each quota valid.
fn validated(policies: Vec<(String, Quota)>) -> Result<Vec<Policy>, ConfigError> {
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

/// A name that can go into a Redis key and a header: 1 to 64 of
/// `A-Z a-z 0-9 . _ -` and the `extra` bytes.
fn is_token(text: &str, extra: &[u8]) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}
