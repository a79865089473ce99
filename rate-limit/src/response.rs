//! Responses the layer produces itself: 429, 503 and 500, as
//! `application/problem+json` (RFC 9457), and the body type that carries them
//! beside the inner service's bodies.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::lease::LeaseGuard;

pin_project! {
    /// The layer's response body: the inner service's, or one the layer wrote.
    // pin-project-lite takes no doc comments on fields; the variants say it all.
    #[allow(missing_docs)]
    #[project = ResponseBodyProj]
    pub enum ResponseBody<B> {
        /// The inner service's body, untouched.
        Inner { #[pin] body: B },
        /// A body written by the layer.
        Full { data: Option<Bytes> },
        /// The inner service's body, holding a lease of a
        /// [concurrency limit](crate::Quota::concurrent) until it ends,
        /// fails or is dropped.
        Leased { #[pin] body: B, lease: LeaseGuard },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody::Inner { body }
    }

    pub(crate) fn leased(body: B, lease: LeaseGuard) -> Self {
        ResponseBody::Leased { body, lease }
    }

    /// A body with these bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        ResponseBody::Full {
            data: Some(data.into()),
        }
    }
}

/// An empty body. Layers outside this one build their own responses with
/// it: tower-http's `TimeoutLayer` (its 408) and `CorsLayer` (the preflight
/// answer) need `Default` of the body they wrap.
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody::Full { data: None }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            ResponseBodyProj::Inner { body } => body.poll_frame(cx),
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBodyProj::Leased { mut body, lease } => {
                let frame = std::task::ready!(body.as_mut().poll_frame(cx));
                // The response is over: at its end, on an error, or once the
                // frame just read was its last.
                match &frame {
                    Some(Ok(_)) if !body.is_end_stream() => lease.on_frame(),
                    _ => lease.release(),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Inner { body } | ResponseBody::Leased { body, .. } => {
                body.is_end_stream()
            }
            ResponseBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Inner { body } | ResponseBody::Leased { body, .. } => body.size_hint(),
            ResponseBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

fn problem_json(status: StatusCode, title: &str, detail: &str) -> Bytes {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    Bytes::from(body.to_string())
}

/// An `application/problem+json` response.
pub(crate) fn problem<B>(
    status: StatusCode,
    title: &str,
    detail: &str,
) -> Response<ResponseBody<B>> {
    with_problem_body(status, problem_json(status, title, detail))
}

fn with_problem_body<B>(status: StatusCode, body: Bytes) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    if status == StatusCode::TOO_MANY_REQUESTS {
        // Sized for what a 429 ends up with (`content-type`, `Retry-After`,
        // the five rate-limit fields, `content-length`): one allocation of
        // the final size instead of a map grown on the way.
        *response.headers_mut() = HeaderMap::with_capacity(8);
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// The default 429 body for a layer: problem+json, the same for every
/// rejected request (the wait is in `Retry-After`), so it is rendered once.
pub fn too_many_requests_body(limit: u64, window: std::time::Duration) -> Bytes {
    problem_json(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        &format!(
            "Rate limit of {limit} requests per {} s exceeded; retry after the number of seconds in Retry-After.",
            crate::window::ceil_seconds(window)
        ),
    )
}

/// The default 429 body of a [concurrency limit](crate::Quota::concurrent):
/// problem+json, rendered once per layer.
pub(crate) fn too_many_in_flight_body(limit: u64) -> Bytes {
    problem_json(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        &format!(
            "At most {limit} requests of a client may be in flight at once; retry after the number of seconds in Retry-After."
        ),
    )
}

/// A 429 with a prepared problem+json body; the layer adds `Retry-After`.
pub(crate) fn too_many_requests<B>(body: Bytes) -> Response<ResponseBody<B>> {
    with_problem_body(StatusCode::TOO_MANY_REQUESTS, body)
}

/// The fail-closed 503.
pub(crate) fn store_unavailable<B>() -> Response<ResponseBody<B>> {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "The rate limiter cannot reach its store; try again shortly.",
    )
}

/// The gRPC status codes the layer answers gRPC calls with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrpcStatus {
    /// 8: over the limit (the code gRPC's own quota errors use, which retry
    /// policies do not retry by default).
    ResourceExhausted,
    /// 13: the layer cannot key the call (a misconfiguration).
    Internal,
    /// 14: the store cannot count, under [`FailMode::Closed`](crate::FailMode::Closed).
    Unavailable,
}

impl GrpcStatus {
    fn code(self) -> &'static str {
        match self {
            GrpcStatus::ResourceExhausted => "8",
            GrpcStatus::Internal => "13",
            GrpcStatus::Unavailable => "14",
        }
    }
}

/// `content-type: application/grpc`, with or without a `+format` or parameters.
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= GRPC.len()
            && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// A gRPC answer in the Trailers-Only form: HTTP 200, `content-type:
/// application/grpc`, `grpc-status` and `grpc-message` in the one header
/// block, no body (hyper ends the stream with it), as gRPC servers answer
/// a call that fails before its first message.
pub(crate) fn grpc<B>(status: GrpcStatus, message: &str) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::default());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static(status.code()));
    if let Ok(message) = HeaderValue::from_str(&grpc_message(message)) {
        headers.insert("grpc-message", message);
    }
    response
}

/// `grpc-message`'s encoding: percent-encoded UTF-8, every byte outside
/// printable ASCII and `%` itself escaped (the gRPC HTTP/2 protocol).
fn grpc_message(message: &str) -> String {
    use std::fmt::Write;
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::{Router, routing::get};
    use http::{Method, Request};
    use tower::{ServiceBuilder, ServiceExt};
    use tower_http::cors::CorsLayer;
    use tower_http::timeout::TimeoutLayer;

    use super::*;
    use crate::RateLimitLayer;

    /// An app limited to 2 requests per minute, with tower-http's timeout
    /// and CORS layers outside the limiter in one `ServiceBuilder`, as axum's
    /// documentation stacks middleware. (Separate `Router::layer` calls
    /// compiled before too: axum turns each layer's body into its own.)
    fn app(timeout: Duration) -> Router {
        let limiter =
            RateLimitLayer::new(cache_core::Cache::in_memory(), 2, Duration::from_secs(60));
        Router::new()
            .route("/", get(|| async { "hi" }))
            .route("/stuck", get(std::future::pending::<&'static str>))
            .layer(
                ServiceBuilder::new()
                    .layer(CorsLayer::permissive())
                    .layer(TimeoutLayer::with_status_code(
                        StatusCode::REQUEST_TIMEOUT,
                        timeout,
                    ))
                    .layer(limiter),
            )
    }

    fn request(method: Method, path: &str) -> Request<Body> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
            .body(Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 9], 50000))));
        request
    }

    async fn body(response: Response<Body>) -> Bytes {
        axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap()
    }

    #[test]
    fn grpc_content_types_are_recognised_and_messages_percent_encoded() {
        let with = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_grpc(&headers)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&http::HeaderMap::new()));
        assert_eq!(grpc_message("100% über"), "100%25 %C3%BCber");
        assert_eq!(grpc_message("line\nbreak"), "line%0Abreak");
    }

    #[tokio::test]
    async fn tower_http_timeout_and_cors_layers_wrap_the_limiter() {
        // Long enough never to fire on a loaded machine.
        let app = app(Duration::from_secs(30));
        let served = app
            .clone()
            .oneshot(request(Method::GET, "/"))
            .await
            .unwrap();
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(served.headers()["access-control-allow-origin"], "*");
        assert_eq!(served.headers()["x-ratelimit-remaining"], "1");
        assert_eq!(body(served).await, "hi");
        // The preflight is CorsLayer's own answer, with an empty body.
        let preflight = app
            .clone()
            .oneshot(request(Method::OPTIONS, "/"))
            .await
            .unwrap();
        assert_eq!(preflight.status(), StatusCode::OK);
        assert!(
            preflight
                .headers()
                .contains_key("access-control-allow-methods")
        );
        assert!(body(preflight).await.is_empty());
        app.clone()
            .oneshot(request(Method::GET, "/"))
            .await
            .unwrap();
        let limited = app.oneshot(request(Method::GET, "/")).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()["access-control-allow-origin"], "*");
        assert!(body(limited).await.starts_with(b"{"));
    }

    #[tokio::test]
    async fn a_timeout_outside_the_limiter_answers_with_an_empty_body() {
        let stuck = app(Duration::from_millis(20))
            .oneshot(request(Method::GET, "/stuck"))
            .await
            .unwrap();
        assert_eq!(stuck.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(stuck.headers()["access-control-allow-origin"], "*");
        assert!(body(stuck).await.is_empty());
    }
}
