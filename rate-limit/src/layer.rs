//! [`RateLimitLayer`] (`impl Layer`) and [`RateLimit`] (the service); the
//! layer's settings are in [`RateLimitLayerBuilder`](crate::RateLimitLayerBuilder).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cache_core::Cache;
use cache_sync::StateFlag;
use http::{Request, Response, StatusCode, header};
use tower::{Layer, Service};

use crate::builder::RateLimitLayerBuilder;
use crate::error::KeyError;
use crate::future::ResponseFuture;
use crate::headers::{HeaderTemplate, RATELIMIT, X_RATELIMIT_LIMIT};
use crate::key::{KeyExtractor, RequestInfo, UNIDENTIFIED_KEY, sanitize};
use crate::lease::LeaseGuard;
use crate::limiter::{Count, Limiter, RateLimitStats, Verdict};
use crate::outcome::{PendingCharge, Refunds, ResponseInfo, SettleFn};
use crate::plan::{DEFAULT_PLAN, Plans};
use crate::prefix::PrefixClaim;
use crate::response::{self, GrpcStatus, ResponseBody};
use crate::telemetry::{self, Outcome};
use crate::window::Decision;

/// What to do when the store cannot count a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Let the request through (the default): an outage of the store does not
    /// become an outage of the service.
    #[default]
    Open,
    /// Reject with `503 Service Unavailable` (problem+json).
    Closed,
}

/// gRPC's server pushback: how long a client's retry policy waits before
/// retrying (gRFC A6).
const GRPC_RETRY_PUSHBACK_MS: http::HeaderName =
    http::HeaderName::from_static("grpc-retry-pushback-ms");

pub(crate) type OnLimited = dyn Fn(&Decision) -> Response<Bytes> + Send + Sync;
pub(crate) type CostFn = dyn Fn(&RequestInfo<'_>) -> u64 + Send + Sync;

/// What the layer and its services share, settled by the builder.
pub(crate) struct Shared {
    pub(crate) limiter: Limiter,
    pub(crate) extractor: Box<dyn KeyExtractor>,
    pub(crate) cost: Option<Box<CostFn>>,
    pub(crate) headers: HeaderTemplate,
    /// The default 429 body per policy, rendered once (the wait is in `Retry-After`).
    pub(crate) limited_bodies: Vec<Bytes>,
    pub(crate) fail_mode: FailMode,
    pub(crate) shadow: bool,
    pub(crate) on_limited: Option<Box<OnLimited>>,
    /// Logged once: a misconfiguration, not an outage to follow.
    pub(crate) missing_key_logged: StateFlag,
    /// The layer's prefix on its store, held until the last clone is dropped.
    pub(crate) _prefix_claim: PrefixClaim,
    /// The declared plans, if any (the fields above are the default plan's).
    pub(crate) plans: Option<Box<Plans>>,
    /// Charging by outcome: how much of its charge a response keeps.
    pub(crate) settle: Option<Box<SettleFn>>,
    pub(crate) refunds: Refunds,
}

/// The policies a request is counted under: the default plan's (the
/// layer's own) or a declared plan's.
#[derive(Clone, Copy)]
pub(crate) struct PlanRef<'a> {
    /// Its name, when the layer has plans (metrics label by it).
    pub(crate) name: Option<&'a str>,
    pub(crate) limiter: &'a Limiter,
    pub(crate) headers: &'a HeaderTemplate,
    pub(crate) limited_bodies: &'a [Bytes],
}

/// Rate limiting for any Tower service over `http::Request`: one or more
/// policies ([`Quota`](crate::Quota)s, each with its [`Algorithm`](crate::Algorithm)),
/// all checked in one store call per request.
///
/// Cheap to clone (one `Arc`). Layers also stack, each with its own key
/// prefix (a prefix a live layer uses with other policies is refused); a
/// response keeps the rate-limit headers of the innermost layer that wrote
/// them, so an inner layer's 429 advertises the limit that rejected it.
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
    pub(crate) shared: Arc<Shared>,
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
    /// [`MAX_WINDOW`](crate::MAX_WINDOW) (366 days): mistakes in code, found at start-up. [`RateLimitLayer::builder`] reports them as a
    /// [`ConfigError`](crate::ConfigError) instead.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit::RateLimitLayer;
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// let per_ip = RateLimitLayer::new(cache.clone(), 100, Duration::from_secs(60));
    /// // The same limit through the builder, which returns an error instead of panicking:
    /// let same = RateLimitLayer::builder(cache).limit(100).window(Duration::from_secs(60)).build();
    /// assert!(same.is_ok());
    /// # let _ = per_ip;
    /// ```
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
    /// use rate_limit::RateLimitLayer;
    ///
    /// let layer = RateLimitLayer::new(cache_core::Cache::in_memory(), 1, Duration::from_secs(60));
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(layer.clone());
    /// for _ in 0..3 {
    ///     app.clone().oneshot(request("/", [203, 0, 113, 9])).await?;
    /// }
    /// let stats = layer.stats(); // the clone in the router counted
    /// assert_eq!((stats.allowed, stats.limited), (1, 2));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> RateLimitStats {
        let shared = &self.shared;
        let mut stats = shared.limiter.stats();
        if let Some(plans) = &shared.plans {
            for plan in &plans.list {
                stats = stats.plus(plan.limiter.stats());
            }
            stats.unknown_plans = plans.unknown.load(std::sync::atomic::Ordering::Relaxed);
        }
        stats.refunded = shared
            .refunds
            .done
            .load(std::sync::atomic::Ordering::Relaxed);
        stats.refund_errors = shared
            .refunds
            .failed
            .load(std::sync::atomic::Ordering::Relaxed);
        stats
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
    /// The plan at `index`: 0 the default plan (the layer's own policies),
    /// `i + 1` the declared plan `i`.
    pub(crate) fn plan(&self, index: usize) -> PlanRef<'_> {
        let declared = index
            .checked_sub(1)
            .and_then(|i| self.plans.as_ref()?.list.get(i));
        match declared {
            Some(plan) => PlanRef {
                name: Some(&plan.name),
                limiter: &plan.limiter,
                headers: &plan.headers,
                limited_bodies: &plan.limited_bodies,
            },
            None => PlanRef {
                name: self.plans.as_ref().map(|_| DEFAULT_PLAN),
                limiter: &self.limiter,
                headers: &self.headers,
                limited_bodies: &self.limited_bodies,
            },
        }
    }

    /// The response to a request over the limit (not in shadow mode); a gRPC
    /// call gets `RESOURCE_EXHAUSTED`, `on_limited` or not (its HTTP body
    /// would be a protocol error to the gRPC client).
    fn limited<B>(
        &self,
        plan: PlanRef<'_>,
        decision: &Decision,
        grpc: bool,
    ) -> Response<ResponseBody<B>> {
        plan.limiter.counters.add(Count::Limited);
        if grpc {
            let mut limited = response::grpc(
                GrpcStatus::ResourceExhausted,
                &Self::grpc_limited_message(plan, decision),
            );
            Self::write_limited_headers(plan, limited.headers_mut(), decision);
            // gRPC's retry policies wait this long before retrying a call.
            let pushback = decision.retry_after_seconds().saturating_mul(1000);
            limited.headers_mut().insert(
                GRPC_RETRY_PUSHBACK_MS,
                crate::headers::number_value(pushback),
            );
            return limited;
        }
        let Some(respond) = &self.on_limited else {
            let mut limited = response::too_many_requests(
                plan.limited_bodies
                    .get(decision.policy)
                    .cloned()
                    .unwrap_or_default(),
            );
            Self::write_limited_headers(plan, limited.headers_mut(), decision);
            return limited;
        };
        let mut limited = respond(decision).map(ResponseBody::full);
        // `Response::new` gives 200: a closure that set no status meant the
        // 429 (a rejection answered 200 would tell the client it was served).
        if limited.status() == StatusCode::OK {
            *limited.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        }
        // The layer's headers, except those the closure set itself.
        let own = std::mem::take(limited.headers_mut());
        Self::write_limited_headers(plan, limited.headers_mut(), decision);
        limited.headers_mut().extend(own);
        limited
    }

    /// The `grpc-message` of a limited call: which limit, and when to retry.
    fn grpc_limited_message(plan: PlanRef<'_>, decision: &Decision) -> String {
        let wait = decision.retry_after_seconds();
        match plan.limiter.policies.get(decision.policy) {
            Some(p) if p.quota.is_concurrent() => format!(
                "concurrency limit of {} requests in flight (policy \"{}\") exceeded; retry after {wait} s",
                p.quota.limit(),
                p.name,
            ),
            Some(p) => format!(
                "rate limit of {} per {} s (policy \"{}\") exceeded; retry after {wait} s",
                p.quota.limit(),
                crate::window::ceil_seconds(p.quota.window()),
                p.name,
            ),
            None => format!("rate limit exceeded; retry after {wait} s"),
        }
    }

    /// `Retry-After` and the rate-limit headers of a rejected request.
    fn write_limited_headers(
        plan: PlanRef<'_>,
        headers: &mut http::HeaderMap,
        decision: &Decision,
    ) {
        headers.insert(
            header::RETRY_AFTER,
            crate::headers::number_value(decision.retry_after_seconds()),
        );
        plan.headers.write(headers, decision);
    }

    /// The response to a request that costs more than a policy's whole quota.
    fn too_costly<B>(
        plan: PlanRef<'_>,
        cost: u64,
        policy: usize,
        grpc: bool,
    ) -> Response<ResponseBody<B>> {
        plan.limiter.counters.add(Count::Limited);
        let detail = match plan.limiter.policies.get(policy) {
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
        if grpc {
            return response::grpc(GrpcStatus::ResourceExhausted, &detail);
        }
        response::problem(StatusCode::TOO_MANY_REQUESTS, "Request Too Costly", &detail)
    }

    /// The response to a request the extractor cannot key: a misconfiguration.
    fn unkeyed<B>(&self, err: &KeyError, grpc: bool) -> Response<ResponseBody<B>> {
        if self.missing_key_logged.raise() {
            tracing::error!(error = %err, "rate limiter cannot identify the client");
        }
        if grpc {
            return response::grpc(GrpcStatus::Internal, &err.to_string());
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
        let grpc = response::is_grpc(info.headers);
        let cost = shared.cost.as_ref().map_or(1, |cost| cost(&info));
        // The request's plan: the default one (index 0) without plans.
        let plan_index = match &shared.plans {
            None => 0,
            Some(plans) => plans.choose(&info),
        };
        let plan = shared.plan(plan_index);
        let key = match key {
            Ok(key) => sanitize(key),
            // A custom extractor built on `PeerIp::client_ip`: the same shared
            // bucket `PeerIp` itself uses.
            Err(KeyError::UnidentifiedClient) => UNIDENTIFIED_KEY.to_string(),
            Err(err) => return ResponseFuture::ready(shared.unkeyed(&err, grpc)),
        };
        // A request that can never pass, whoever sends it.
        if !shared.shadow
            && let Some(policy) = plan.limiter.too_costly(cost)
        {
            telemetry::decided_in(plan.limiter, plan.name, Outcome::Limited, Some(policy));
            return ResponseFuture::ready(Shared::too_costly(plan, cost, policy, grpc));
        }
        // A client known to be over its limit is answered here: no store
        // call, no allocation for a future, the inner service untouched.
        // Not a free request (cost 0): it passes even a client at its limit.
        let known = if cost == 0 {
            None
        } else {
            plan.limiter.check_locally(&key)
        };
        if let Some(decision) = &known
            && !shared.shadow
        {
            telemetry::decided_in(
                plan.limiter,
                plan.name,
                Outcome::LimitedLocally,
                Some(decision.policy),
            );
            return ResponseFuture::ready(shared.limited(plan, decision, grpc));
        }
        // The clone is not ready; the instance that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = shared.clone();
        let future = async move {
            let plan = shared.plan(plan_index);
            let charging = shared.settle.is_some();
            let mut charge = None;
            // The lease of a concurrency limit (of the request's plan), once
            // taken: released when the response body ends, or when this
            // future or the body is dropped (see `crate::lease`).
            let mut lease = None;
            let decision = match known {
                Some(decision) => decision,
                None => {
                    let verdict = if plan.limiter.takes_leases() {
                        let (verdict, taken, charged) =
                            plan.limiter.acquire_charged(key, cost, charging).await;
                        lease =
                            taken.map(|taken| LeaseGuard::new(shared.clone(), plan_index, taken));
                        charge = charged;
                        verdict
                    } else if charging {
                        let (verdict, charged) = plan.limiter.check_charged(key, cost).await;
                        charge = charged;
                        verdict
                    } else {
                        plan.limiter.check(key, cost).await
                    };
                    match verdict {
                        Verdict::Decided(decision) => decision,
                        Verdict::TooCostly { policy } => {
                            if !shared.shadow {
                                telemetry::decided_in(
                                    plan.limiter,
                                    plan.name,
                                    Outcome::Limited,
                                    Some(policy),
                                );
                                return Ok(Shared::too_costly(plan, cost, policy, grpc));
                            }
                            telemetry::decided_in(
                                plan.limiter,
                                plan.name,
                                Outcome::Shadow,
                                Some(policy),
                            );
                            // Shadow mode never rejects: noted, let through, uncounted.
                            plan.limiter.counters.add(Count::ShadowLimited);
                            return Ok(inner.call(request).await?.map(ResponseBody::inner));
                        }
                        Verdict::StoreFailed => {
                            return match shared.fail_mode {
                                FailMode::Open => {
                                    telemetry::decided_in(
                                        plan.limiter,
                                        plan.name,
                                        Outcome::FailOpen,
                                        None,
                                    );
                                    Ok(inner.call(request).await?.map(ResponseBody::inner))
                                }
                                FailMode::Closed => {
                                    telemetry::decided_in(
                                        plan.limiter,
                                        plan.name,
                                        Outcome::FailClosed,
                                        None,
                                    );
                                    Ok(if grpc {
                                        response::grpc(
                                            GrpcStatus::Unavailable,
                                            "the rate limiter cannot reach its store; try again shortly",
                                        )
                                    } else {
                                        response::store_unavailable()
                                    })
                                }
                            };
                        }
                    }
                }
            };
            let counters = &plan.limiter.counters;
            if !decision.allowed && !shared.shadow {
                telemetry::decided_in(
                    plan.limiter,
                    plan.name,
                    Outcome::Limited,
                    Some(decision.policy),
                );
                return Ok(shared.limited(plan, &decision, grpc));
            }
            let outcome = if decision.allowed {
                Outcome::Allowed
            } else {
                Outcome::Shadow
            };
            telemetry::decided_in(plan.limiter, plan.name, outcome, Some(decision.policy));
            if decision.allowed {
                counters.add(Count::Allowed);
            } else {
                counters.add(Count::ShadowLimited);
            }
            // Charged by outcome: given back if this future is dropped before
            // the response (the guard's drop), else as the response says. A
            // lease is another matter: it stays with the body, whatever the
            // response is charged.
            let pending =
                charge.map(|charge| PendingCharge::new(shared.clone(), plan_index, charge));
            // An error of the inner service (no response to charge) drops
            // `pending`: given back whole (and `lease`: released).
            let response = inner.call(request).await?;
            if let (Some(pending), Some(settle)) = (pending, &shared.settle) {
                let kept = settle(&ResponseInfo::of(&response), pending.cost());
                pending.settle(kept).await;
            }
            let mut response = match lease {
                Some(lease) => response.map(|body| ResponseBody::leased(body, lease)),
                None => response.map(ResponseBody::inner),
            };
            // A layer inside this one answered for itself (its 429 says its own
            // limit): its headers stand, never overwritten with this one's.
            if !carries_rate_limit_headers(response.headers()) {
                plan.headers.write(response.headers_mut(), &decision);
            }
            Ok(response)
        };
        ResponseFuture::pending(future)
    }
}

/// Whether a response already has rate-limit headers: those of a layer
/// inside this one.
fn carries_rate_limit_headers(headers: &http::HeaderMap) -> bool {
    // A handler's few fields are compared by name faster than the map
    // hashes ours (custom names, hashed byte by byte) to look them up.
    if headers.keys_len() <= 8 {
        return headers
            .keys()
            .any(|name| *name == RATELIMIT || *name == X_RATELIMIT_LIMIT);
    }
    headers.contains_key(RATELIMIT) || headers.contains_key(X_RATELIMIT_LIMIT)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use http::HeaderValue;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    /// A request from `peer`, as axum's `into_make_service_with_connect_info` hands it on.
    fn request(peer: &str) -> Request<String> {
        let mut request = Request::new(String::new());
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    }

    async fn ok(_: Request<String>) -> Result<Response<String>, Infallible> {
        Ok(Response::new("ok".to_string()))
    }

    #[tokio::test]
    async fn counts_per_peer_and_answers_429_with_the_headers_past_the_limit() {
        let layer = RateLimitLayer::new(Cache::in_memory(), 2, Duration::from_secs(60));
        let service = ServiceBuilder::new().layer(layer.clone()).service_fn(ok);
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let response = service
                .clone()
                .oneshot(request("192.0.2.1:4000"))
                .await
                .unwrap();
            statuses.push(response.status());
            assert!(response.headers().contains_key("x-ratelimit-limit"));
            assert!(response.headers().contains_key("ratelimit-policy"));
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                let retry: u64 = response.headers()[header::RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1, "Retry-After is never 0");
            }
        }
        assert_eq!(
            statuses,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
        // Another peer has a budget of its own.
        let other = service.oneshot(request("192.0.2.2:4000")).await.unwrap();
        assert_eq!(other.status(), StatusCode::OK);
        let stats = layer.stats();
        assert_eq!((stats.allowed, stats.limited), (3, 1));
    }

    #[tokio::test]
    async fn an_inner_layers_429_keeps_its_own_headers() {
        let cache = Cache::in_memory();
        let login = RateLimitLayer::builder(cache.clone())
            .prefix("stacked-login")
            .limit(1)
            .window(Duration::from_secs(60))
            .build()
            .unwrap();
        let global = RateLimitLayer::builder(cache)
            .prefix("stacked-global")
            .limit(20)
            .window(Duration::from_secs(10))
            .build()
            .unwrap();
        let service = ServiceBuilder::new()
            .layer(global)
            .layer(login)
            .service_fn(ok);
        let peer = "192.0.2.6:4000";
        let served = service.clone().oneshot(request(peer)).await.unwrap();
        assert_eq!(served.status(), StatusCode::OK);
        // The innermost layer's headers: the tighter limit's state.
        assert_eq!(
            served.headers()["ratelimit-policy"],
            r#""stacked-login";q=1;w=60"#
        );
        let limited = service.oneshot(request(peer)).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = limited.headers();
        assert_eq!(headers["ratelimit-policy"], r#""stacked-login";q=1;w=60"#);
        assert!(
            headers["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with(r#""stacked-login";r=0;t="#)
        );
        assert_eq!(headers["x-ratelimit-limit"], "1");
        assert_eq!(headers.get_all("ratelimit").iter().count(), 1);
    }

    fn grpc_request(peer: &str) -> Request<String> {
        let mut request = request(peer);
        *request.uri_mut() = http::Uri::from_static("/grpc.health.v1.Health/Check");
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        request
    }

    fn grpc_status(response: &Response<ResponseBody<String>>) -> &str {
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "Trailers-Only is HTTP 200"
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        assert!(http_body::Body::is_end_stream(response.body()), "no body");
        response.headers()["grpc-status"].to_str().unwrap()
    }

    #[tokio::test]
    async fn a_limited_grpc_call_is_resource_exhausted_with_the_headers_as_metadata() {
        let layer = RateLimitLayer::builder(Cache::in_memory())
            .limit(1)
            .window(Duration::from_secs(60))
            .clock(crate::ManualClock::new())
            .build()
            .unwrap();
        let service = ServiceBuilder::new().layer(layer).service_fn(ok);
        let peer = "192.0.2.7:4000";
        let served = service.clone().oneshot(grpc_request(peer)).await.unwrap();
        assert_eq!(served.headers()["x-ratelimit-remaining"], "0");
        let limited = service.clone().oneshot(grpc_request(peer)).await.unwrap();
        assert_eq!(grpc_status(&limited), "8", "RESOURCE_EXHAUSTED");
        let headers = limited.headers();
        let message = headers["grpc-message"].to_str().unwrap();
        assert!(message.starts_with("rate limit of 1 per 60 s"), "{message}");
        assert_eq!(headers[header::RETRY_AFTER], "60");
        assert_eq!(headers["grpc-retry-pushback-ms"], "60000");
        assert_eq!(headers["x-ratelimit-limit"], "1");
        assert!(headers.contains_key("ratelimit"));
        // An HTTP request of the same client still gets the problem+json 429.
        let http = service.oneshot(request(peer)).await.unwrap();
        assert_eq!(http.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn a_grpc_call_without_a_peer_is_internal_and_a_store_failure_unavailable() {
        let layer = RateLimitLayer::new(Cache::in_memory(), 1, Duration::from_secs(60));
        let service = ServiceBuilder::new().layer(layer).service_fn(ok);
        let mut unkeyed = grpc_request("192.0.2.8:4000");
        unkeyed.extensions_mut().clear();
        let response = service.oneshot(unkeyed).await.unwrap();
        assert_eq!(grpc_status(&response), "13", "INTERNAL");
        assert!(
            response.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("tonic")
        );

        // Nothing listens on port 1.
        let down = Cache::builder()
            .redis_url("redis://127.0.0.1:1")
            .unwrap()
            .timeout(Duration::from_millis(50))
            .build()
            .await
            .unwrap();
        let layer = RateLimitLayer::builder(down)
            .fail_mode(FailMode::Closed)
            .build()
            .unwrap();
        let service = ServiceBuilder::new().layer(layer).service_fn(ok);
        let response = service
            .oneshot(grpc_request("192.0.2.8:4000"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&response), "14", "UNAVAILABLE");
    }

    #[tokio::test]
    async fn a_plain_socket_addr_extension_is_the_peer() {
        let layer = RateLimitLayer::new(Cache::in_memory(), 1, Duration::from_secs(60));
        let service = ServiceBuilder::new().layer(layer).service_fn(ok);
        let from_hyper = || {
            let mut request = Request::new(String::new());
            request
                .extensions_mut()
                .insert("192.0.2.9:4000".parse::<SocketAddr>().unwrap());
            request
        };
        let first = service.clone().oneshot(from_hyper()).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let second = service.oneshot(from_hyper()).await.unwrap();
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn a_request_without_connect_info_is_a_500_never_a_shared_bucket() {
        let layer = RateLimitLayer::new(Cache::in_memory(), 100, Duration::from_secs(60));
        let service = ServiceBuilder::new().layer(layer.clone()).service_fn(ok);
        let response = service.oneshot(Request::new(String::new())).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(layer.stats().allowed, 0, "nothing was counted");
    }

    #[tokio::test]
    async fn on_limited_keeps_the_status_and_headers_it_sets() {
        let layer = RateLimitLayer::builder(Cache::in_memory())
            .limit(1)
            .window(Duration::from_secs(60))
            .on_limited(|_: &Decision| {
                let mut response = Response::new(Bytes::from_static(b"come back later"));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                let headers = response.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
                headers.insert("x-ratelimit-limit", HeaderValue::from_static("hidden"));
                headers.append("x-trace", HeaderValue::from_static("a"));
                headers.append("x-trace", HeaderValue::from_static("b"));
                response
            })
            .build()
            .unwrap();
        let service = ServiceBuilder::new().layer(layer).service_fn(ok);
        let peer = "192.0.2.4:4000";
        service.clone().oneshot(request(peer)).await.unwrap();
        let limited = service.oneshot(request(peer)).await.unwrap();
        assert_eq!(limited.status(), StatusCode::SERVICE_UNAVAILABLE);
        let headers = limited.headers();
        assert_eq!(headers[header::RETRY_AFTER], "3600");
        assert_eq!(headers["x-ratelimit-limit"], "hidden");
        assert_eq!(headers.get_all("x-trace").iter().count(), 2);
        // What the closure left alone, the layer adds.
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert!(headers.contains_key("ratelimit-policy"));
    }

    #[tokio::test]
    async fn on_limited_without_a_status_answers_429_with_the_layers_headers() {
        let layer = RateLimitLayer::builder(Cache::in_memory())
            .limit(1)
            .window(Duration::from_secs(60))
            .clock(crate::ManualClock::new()) // time stands still: the wait is 60 s
            .on_limited(|_: &Decision| Response::new(Bytes::from_static(b"slow down")))
            .build()
            .unwrap();
        let service = ServiceBuilder::new().layer(layer).service_fn(ok);
        let peer = "192.0.2.5:4000";
        service.clone().oneshot(request(peer)).await.unwrap();
        let limited = service.oneshot(request(peer)).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "60");
        assert_eq!(limited.headers()["x-ratelimit-limit"], "1");
    }

    /// Either name marks a response an inner layer answered, in a map of a
    /// handler's few fields (compared by name) as in a larger one (looked up).
    #[test]
    fn an_inner_layers_headers_are_found_in_small_and_large_maps() {
        for fields in [0, 3, 7, 8, 20] {
            let mut headers = http::HeaderMap::new();
            for i in 0..fields {
                headers.insert(
                    http::HeaderName::try_from(format!("x-field-{i}")).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            assert!(!carries_rate_limit_headers(&headers), "{fields} fields");
            for name in [RATELIMIT, X_RATELIMIT_LIMIT] {
                let mut marked = headers.clone();
                marked.insert(name.clone(), HeaderValue::from_static("1"));
                assert!(
                    carries_rate_limit_headers(&marked),
                    "{name} in {fields} fields"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_request_costing_more_than_the_quota_is_refused_without_a_store_call() {
        let layer = RateLimitLayer::builder(Cache::in_memory())
            .limit(5)
            .window(Duration::from_secs(60))
            .cost(|_: &RequestInfo<'_>| 6)
            .build()
            .unwrap();
        let service = ServiceBuilder::new().layer(layer.clone()).service_fn(ok);
        let response = service.oneshot(request("192.0.2.3:4000")).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(layer.stats().store_calls, 0);
    }
}
