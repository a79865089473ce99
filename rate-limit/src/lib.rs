//! Rate limiting for axum and any Tower service, counted in Redis (or the
//! in-memory store) through a `cache_core::Cache`: fixed window, sliding
//! window or GCRA ([`Algorithm`]), several policies per layer ([`Quota`]s,
//! checked in one store call), and a cost per request.
//!
//! The sections below follow the order a new user needs them. The examples
//! run on the in-memory store and call the service directly
//! ([`tower::ServiceExt::oneshot`]), with the peer address a server would
//! put in the request.
//!
//! # 1. One line: `RateLimitLayer::new`
//!
//! [`RateLimitLayer::new`]`(cache, limit, window)` allows `limit` requests
//! per `window` per client IP, with the fixed window. The client IP is
//! axum's `ConnectInfo`, so serve the app with
//! `into_make_service_with_connect_info::<SocketAddr>()`:
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use cache_core::Cache;
//! use rate_limit::RateLimitLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::from_env().await?; // Redis from REDIS_URL, shared by every instance
//! let app: Router = Router::new()
//!     .route("/search", get(|| async { "results" }))
//!     // 100 requests per minute per client IP.
//!     .layer(RateLimitLayer::new(cache, 100, Duration::from_secs(60)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! Past the limit a client gets `429 Too Many Requests` with `Retry-After`:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
//! use http::{Request, StatusCode};
//! use rate_limit::RateLimitLayer;
//! use tower::ServiceExt;
//!
//! let cache = cache_core::Cache::in_memory();
//! let app = Router::new()
//!     .route("/search", get(|| async { "results" }))
//!     .layer(RateLimitLayer::new(cache, 2, Duration::from_secs(60)));
//!
//! // What `into_make_service_with_connect_info` puts in each request:
//! let request = || {
//!     let mut request = Request::get("/search").body(Body::empty()).unwrap();
//!     request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 9], 50000))));
//!     request
//! };
//! assert_eq!(app.clone().oneshot(request()).await?.status(), StatusCode::OK);
//! let second = app.clone().oneshot(request()).await?;
//! assert_eq!(second.headers()["x-ratelimit-remaining"], "0");
//! let third = app.oneshot(request()).await?;
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! let retry_after: u64 = third.headers()["retry-after"].to_str()?.parse()?;
//! assert!((1..=60).contains(&retry_after)); // seconds until the window ends
//! # Ok(()) }
//! ```
//!
//! # 2. The builder
//!
//! [`RateLimitLayer::builder`] gives a [`RateLimitLayerBuilder`] with every
//! setting; [`build`](RateLimitLayerBuilder::build) checks them and returns
//! a [`ConfigError`] where [`RateLimitLayer::new`] would panic. Stacked
//! layers each need their own [`prefix`](RateLimitLayerBuilder::prefix).
//!
//! ```
//! use std::time::Duration;
//! use rate_limit::{FailMode, RateLimitLayer};
//!
//! # fn main() -> Result<(), rate_limit::Error> {
//! let cache = cache_core::Cache::in_memory();
//! // 10 per second, behind a load balancer in 10.0.0.0/8, failing closed.
//! let burst = RateLimitLayer::builder(cache)
//!     .limit(10)
//!     .window(Duration::from_secs(1))
//!     .prefix("rate-burst")
//!     .trusted_proxies(["10.0.0.0/8"])
//!     .fail_mode(FailMode::Closed)
//!     .build()?;
//! # let _ = burst;
//! # Ok(()) }
//! ```
//!
//! # 3. Quotas, algorithms, policies and cost
//!
//! A [`Quota`] is a limit per window ([`Quota::per_second`],
//! [`Quota::per_minute`], [`Quota::per_hour`], [`Quota::new`]) enforced by
//! an [`Algorithm`]: [`FixedWindow`](Algorithm::FixedWindow) (the default,
//! cheapest), [`SlidingWindow`](Algorithm::SlidingWindow) (no burst across
//! a window's edge) or [`Gcra`](Algorithm::Gcra) (smooth: one unit back
//! every `window / limit`). [`policy`](RateLimitLayerBuilder::policy) adds
//! named quotas; all of a request's policies are checked in **one** store
//! call, a request passes only if every one admits it, and only then is it
//! charged to all of them. [`cost`](RateLimitLayerBuilder::cost) charges a
//! request more than one unit (or nothing). [`Quota::concurrent`] is a
//! policy of another kind: at most N requests of a client in flight across
//! instances, a lease per request released when its response body ends
//! ([`LeaseGuard`]). A [`ManualClock`] moves time in tests, without
//! sleeping:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
//! use http::{Request, StatusCode};
//! use rate_limit::{Algorithm, ManualClock, Quota, RateLimitLayer, RequestInfo};
//! use tower::ServiceExt;
//!
//! let clock = ManualClock::new();
//! let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
//!     .policy("burst", Quota::per_second(10))
//!     .policy("hourly", Quota::per_hour(1000).algorithm(Algorithm::SlidingWindow))
//!     .cost(|req: &RequestInfo<'_>| if req.uri.path() == "/search" { 5 } else { 1 })
//!     .clock(clock.clone())
//!     .build()?;
//! let app = Router::new().route("/search", get(|| async { "results" })).layer(layer);
//! # let request = || {
//! #     let mut request = Request::get("/search").body(Body::empty()).unwrap();
//! #     request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 9], 50000))));
//! #     request
//! # };
//!
//! // A search costs 5 of the burst policy's 10 per second: two pass.
//! for _ in 0..2 {
//!     assert_eq!(app.clone().oneshot(request()).await?.status(), StatusCode::OK);
//! }
//! let limited = app.clone().oneshot(request()).await?;
//! assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(limited.headers()["ratelimit-policy"], r#""burst";q=10;w=1, "hourly";q=1000;w=3600"#);
//!
//! clock.advance(Duration::from_secs(1)); // the next second: the burst window is new
//! assert_eq!(app.oneshot(request()).await?.status(), StatusCode::OK);
//! # Ok(()) }
//! ```
//!
//! # 4. Who a request counts against
//!
//! - **Client IP** (the default, [`PeerIp`]): the TCP peer from
//!   `ConnectInfo`; IPv6 grouped by /56
//!   ([`ipv6_prefix`](RateLimitLayerBuilder::ipv6_prefix)). A request
//!   without `ConnectInfo` is a `500` saying how to serve the app, never a
//!   shared bucket.
//! - **Behind proxies**: only requests from
//!   [`trusted_proxies`](RateLimitLayerBuilder::trusted_proxies) are read
//!   for a client address, and only from the one header
//!   [`forwarded_header`](RateLimitLayerBuilder::forwarded_header) names
//!   ([`ForwardedHeader`]: `X-Forwarded-For`, `Forwarded`, or a single
//!   address such as `CF-Connecting-IP`). A proxy that gives no usable
//!   address puts the request in the shared [`UNIDENTIFIED_KEY`] bucket.
//! - **Per route**: [`RouteAndIp`] keys by method, axum's route template
//!   (`MatchedPath`) and client IP, so the layer must sit inside the
//!   `Router` (`Router::route_layer` or `Router::layer`).
//! - **Anything else**: a [`KeyExtractor`] (a closure
//!   `Fn(&RequestInfo) -> Result<String, KeyError>` is one), or
//!   [`HeaderKey`] for an API key header (hashed; it trusts an
//!   unauthenticated header). Keys longer than [`MAX_KEY_LEN`] or with odd
//!   characters are hashed, so no client steers the Redis key.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
//! use http::{Request, StatusCode};
//! use rate_limit::{PeerIp, RateLimitLayer, RouteAndIp};
//! use tower::ServiceExt;
//!
//! let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
//!     .limit(1)
//!     .window(Duration::from_secs(60))
//!     .key_extractor(RouteAndIp::new(PeerIp::new()))
//!     .build()?;
//! let app = Router::new()
//!     .route("/users/{id}", get(|| async { "user" }))
//!     .route("/orders", get(|| async { "orders" }))
//!     .route_layer(layer);
//! let get = |path: &str| {
//!     let mut request = Request::get(path).body(Body::empty()).unwrap();
//!     request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 9], 50000))));
//!     request
//! };
//! assert_eq!(app.clone().oneshot(get("/users/1")).await?.status(), StatusCode::OK);
//! // `/users/2` is the same route, `/users/{id}`: its budget is spent.
//! assert_eq!(app.clone().oneshot(get("/users/2")).await?.status(), StatusCode::TOO_MANY_REQUESTS);
//! // Another route has its own.
//! assert_eq!(app.oneshot(get("/orders")).await?.status(), StatusCode::OK);
//! # Ok(()) }
//! ```
//!
//! # 5. Headers and the 429
//!
//! Every counted response carries `X-RateLimit-Limit`, `-Remaining` and
//! `-Reset` (seconds until the window ends, or the Unix time with
//! [`ResetFormat::EpochSeconds`]) and the IETF draft's `RateLimit-Policy`
//! and `RateLimit` ([`HeaderSets`] picks the sets). A rejected request gets
//! `429`, `Retry-After` (seconds, never 0) and an `application/problem+json`
//! body; [`on_limited`](RateLimitLayerBuilder::on_limited) builds your own
//! response from the [`Decision`]: its status stands (`200`, what
//! `Response::new` gives, becomes `429`), and the headers it does not set
//! are still added.
//!
//! # 6. When the store fails
//!
//! Each store call is bounded by [`DEFAULT_STORE_TIMEOUT`] (or
//! [`store_timeout`](RateLimitLayerBuilder::store_timeout), at most the
//! handle's timeout) and goes through the handle's circuit breaker. A
//! request that cannot be counted passes ([`FailMode::Open`], the default:
//! logged once, counted in [`RateLimitStats::store_errors`]) or gets `503`
//! ([`FailMode::Closed`]). [`shadow`](RateLimitLayerBuilder::shadow) counts
//! and sets headers without ever rejecting: a new limit can be watched
//! before it is enforced.
//!
//! # 7. In-memory or Redis
//!
//! The layer counts in whatever the `Cache` is. On Redis (standalone or
//! Cluster, ≥ 7.0) one atomic Lua script per request evaluates every
//! policy, so instances sharing a Redis share the limits exactly; the layer
//! takes its own connection ([`cache_core::Cache::dedicated_counter`]),
//! sends each request's call at once (the connection pipelines concurrent
//! calls), and answers clients known to be over the limit in-process
//! ([`local_deny_cache`](RateLimitLayerBuilder::local_deny_cache)). Keys
//! are `{prefix}:{client}` for one policy (the fixed window: a bare count
//! expiring with its window), `{prefix}:{{client}}:{policy}` for several,
//! and every key written expires. The in-memory store runs the
//! same arithmetic in process, shared by the layers built from clones of
//! one in-memory `Cache`: for tests and single-instance services.
//!
//! **Which handle and namespace.** Pass the service's handle (or any handle
//! on the same Redis): the layer takes `dedicated_counter()` of it by
//! itself. [`Cache::dedicated`](cache_core::Cache::dedicated) and
//! [`Cache::dedicated_counter`](cache_core::Cache::dedicated_counter) give
//! a connection of their own with the same settings, namespace included,
//! and no local tier: they change the connection, never the keys, so the
//! limiter's keys are `{namespace}:{prefix}:{client}` of the handle passed.
//! Beside a local tier, pass a handle with a namespace of its own: the
//! tier's tracking connections get a push for every key written under the
//! tier's namespace (every key, when the tiered handle has none), and the
//! limiter writes one per request counted.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use cache_core::Cache;
//! use rate_limit::RateLimitLayer;
//!
//! let url = std::env::var("REDIS_URL")?;
//! // The values, with the local tier: it tracks `pricing:` only.
//! let cache = Cache::builder().redis_url(&url)?.namespace("pricing")
//!     .local_tier(10_000, Duration::from_secs(30)).build().await?;
//! // The counters, under another namespace: `limits:rate:ip:203.0.113.9`.
//! let limits = Cache::builder().redis_url(&url)?.namespace("limits").build().await?;
//! let layer = RateLimitLayer::new(limits, 100, Duration::from_secs(60));
//! # let _ = (cache, layer);
//! # Ok(()) }
//! ```
//!
//! # 8. Stats
//!
//! [`RateLimitLayer::stats`] reads the layer's counters ([`RateLimitStats`]:
//! allowed, limited, limited locally, shadow, store errors, store calls),
//! shared by its clones.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::net::SocketAddr;
//! # use std::time::Duration;
//! # use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
//! # use http::Request;
//! # use tower::ServiceExt;
//! use rate_limit::RateLimitLayer;
//!
//! let layer = RateLimitLayer::new(cache_core::Cache::in_memory(), 1, Duration::from_secs(60));
//! let app = Router::new().route("/", get(|| async { "hi" })).layer(layer.clone());
//! # let request = || {
//! #     let mut request = Request::get("/").body(Body::empty()).unwrap();
//! #     request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 9], 50000))));
//! #     request
//! # };
//! app.clone().oneshot(request()).await?;
//! app.oneshot(request()).await?;
//! let stats = layer.stats();
//! assert_eq!((stats.allowed, stats.limited), (1, 1));
//! # Ok(()) }
//! ```
//!
//! # 9. Errors
//!
//! One type, [`Error`], with [`Error::kind`] to branch on ([`ErrorKind`]):
//! [`Config`](ErrorKind::Config) from [`build`](RateLimitLayerBuilder::build)
//! and [`TrustedProxies::parse`]; [`MissingConnectInfo`](ErrorKind::MissingConnectInfo),
//! [`UnidentifiedClient`](ErrorKind::UnidentifiedClient) and
//! [`Extractor`](ErrorKind::Extractor) from key extractors
//! ([`Error::other`] wraps a custom extractor's reason). [`ConfigError`]
//! and [`KeyError`] are its names where only those arise.
//!
//! ```
//! use std::time::Duration;
//! use rate_limit::{Error, ErrorKind, Quota, RateLimitLayer};
//!
//! let cache = cache_core::Cache::in_memory();
//! let err = RateLimitLayer::builder(cache).policy("burst", Quota::per_second(0)).build().unwrap_err();
//! assert_eq!(err, Error::ZeroLimit);
//! assert_eq!(err.kind(), ErrorKind::Config);
//! ```
#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly) marks each item with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod clock;
mod deny;
mod ends;
mod error;
mod exact;
mod future;
mod headers;
mod key;
mod layer;
mod lease;
mod limiter;
mod outcome;
mod peer;
mod plan;
mod prefix;
mod quota;
mod response;
mod shared;
mod store;
mod sync;
mod telemetry;
mod window;

pub use builder::{DEFAULT_PREFIX, DEFAULT_STORE_TIMEOUT, MAX_LEASE_WAIT, RateLimitLayerBuilder};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ConfigError, Error, ErrorKind, KeyError};
pub use future::ResponseFuture;
pub use headers::{
    HeaderSets, RATELIMIT, RATELIMIT_POLICY, ResetFormat, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
};
pub use key::{
    ForwardedHeader, HeaderKey, KeyExtractor, MAX_KEY_LEN, PeerIp, RequestInfo, RouteAndIp,
    TrustedProxies, UNIDENTIFIED_KEY, UNMATCHED_ROUTE,
};
pub use layer::{FailMode, RateLimit, RateLimitLayer};
pub use lease::LeaseGuard;
pub use limiter::RateLimitStats;
pub use outcome::ResponseInfo;
pub use peer::peer_addr;
pub use plan::DEFAULT_PLAN;
pub use quota::{
    Algorithm, DEFAULT_LEASE_TTL, MAX_CONCURRENT, MAX_LEASE_TTL, MAX_LIMIT, MAX_WINDOW,
    MIN_LEASE_TTL, Quota,
};
pub use response::ResponseBody;
/// The layer's default 429 body, for the benchmarks' baseline that answers
/// the same 429 itself: not part of the API.
#[doc(hidden)]
pub use response::too_many_requests_body;
pub use shared::SharedCounting;
/// One shared-mode flush call, for the script-and-twin agreement test: not
/// part of the API.
#[doc(hidden)]
pub use shared::flush_raw;
#[doc(hidden)]
pub use store::{
    RawOp, acquire_raw, atomic_raw, evaluate_raw, refund_raw, release_raw, stored_in_memory,
};
pub use window::Decision;
