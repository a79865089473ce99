//! Rate limiting for axum and any Tower service, counted in Redis (or the
//! in-memory store) through a `cache_core::Cache`: fixed window, sliding
//! window or GCRA ([`Algorithm`]), several policies per layer ([`Quota`]s,
//! checked in one store call), and a cost per request.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use cache_core::Cache;
//! use rate_limit::{FailMode, RateLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::from_env().await?;
//! let app: Router = Router::new()
//!     .route("/search", get(|| async { "results" }))
//!     // 100 requests per minute per client IP.
//!     .layer(RateLimitLayer::new(cache.clone(), 100, Duration::from_secs(60)))
//!     // And 10 per second, behind a load balancer in 10.0.0.0/8, failing closed.
//!     .layer(
//!         RateLimitLayer::builder(cache)
//!             .limit(10)
//!             .window(Duration::from_secs(1))
//!             .prefix("rate-burst")
//!             .trusted_proxies(["10.0.0.0/8"])
//!             .fail_mode(FailMode::Closed)
//!             .build()?,
//!     );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! - **Counting**: one atomic Lua script per store call evaluates every
//!   policy ([`RateLimitLayerBuilder::policy`]); a request passes only if all
//!   admit it, and is then charged to all (a rejected one to none). Redis
//!   key `{prefix}:{client}` for one policy, `{prefix}:{{client}}:{policy}`
//!   for several; every key written expires. Concurrent requests of one
//!   client are folded into one call; clients known to be rejected are
//!   answered in-process until a request would pass again.
//! - **Client key**: the peer IP from `ConnectInfo` ([`PeerIp`]); from
//!   trusted proxies only, the one header [`ForwardedHeader`] names; IPv6
//!   grouped by /56. Custom keys through [`KeyExtractor`]; odd or long keys
//!   are hashed.
//! - **Responses**: `429` with `Retry-After` and a problem+json body;
//!   `X-RateLimit-Limit/Remaining/Reset` (seconds until reset, or epoch
//!   seconds with [`ResetFormat::EpochSeconds`]) and
//!   `RateLimit-Policy`/`RateLimit` on every counted response.
//! - **Store failure**: fail open by default, `503` with [`FailMode::Closed`].
#![warn(missing_docs)]

mod builder;
mod clock;
mod deny;
mod error;
mod future;
mod headers;
mod key;
mod layer;
mod limiter;
mod quota;
mod response;
mod store;
mod telemetry;
mod window;

pub use builder::{DEFAULT_PREFIX, DEFAULT_STORE_TIMEOUT, RateLimitLayerBuilder};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ConfigError;
pub use future::ResponseFuture;
pub use headers::{
    HeaderSets, RATELIMIT, RATELIMIT_POLICY, ResetFormat, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
};
pub use key::{
    ForwardedHeader, HeaderKey, KeyError, KeyExtractor, MAX_KEY_LEN, PeerIp, RequestInfo,
    RouteAndIp, TrustedProxies, UNIDENTIFIED_KEY, UNMATCHED_ROUTE,
};
pub use layer::{FailMode, RateLimit, RateLimitLayer};
pub use limiter::RateLimitStats;
pub use quota::{Algorithm, MAX_LIMIT, MAX_WINDOW, Quota};
pub use response::ResponseBody;
/// The layer's default 429 body, for the benchmarks' baseline that answers
/// the same 429 itself: not part of the API.
#[doc(hidden)]
pub use response::too_many_requests_body;
#[doc(hidden)]
pub use store::{evaluate_raw, stored_in_memory};
pub use window::Decision;
