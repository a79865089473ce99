//! The rate limiter in front of a tonic server (serving tonic-health),
//! called by tonic's client, and in front of a plain hyper server: both
//! find the peer with no code of their own beyond inserting it (hyper), and
//! a limited gRPC call is `RESOURCE_EXHAUSTED` to the client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use cache_core::Cache;
use rate_limit::{PeerIp, RateLimitLayer, RequestInfo};
use tonic::Code;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// tonic-health on a free loopback port, behind `layer`.
async fn serve_health(layer: RateLimitLayer) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    port
}

async fn client(port: u16) -> HealthClient<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(10));
    HealthClient::new(endpoint.connect().await.unwrap())
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

fn metadata<'m>(metadata: &'m tonic::metadata::MetadataMap, name: &str) -> &'m str {
    metadata
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing: {metadata:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn a_tonic_server_with_the_layer_answers_limited_calls_resource_exhausted() {
    let layer = RateLimitLayer::builder(Cache::in_memory())
        .limit(2)
        .window(Duration::from_secs(60))
        .build()
        .unwrap();
    let port = serve_health(layer.clone()).await;
    let mut health = client(port).await;
    for remaining in ["1", "0"] {
        let served = health.check(check()).await.expect("admitted");
        assert_eq!(
            metadata(served.metadata(), "x-ratelimit-remaining"),
            remaining
        );
    }
    let limited = health.check(check()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(
        limited.message().starts_with("rate limit of 2 per 60 s"),
        "{}",
        limited.message()
    );
    let headers = limited.metadata();
    assert_eq!(metadata(headers, "ratelimit-policy"), r#""rate";q=2;w=60"#);
    assert!(metadata(headers, "ratelimit").starts_with(r#""rate";r=0;t="#));
    assert_eq!(metadata(headers, "x-ratelimit-limit"), "2");
    let retry: u64 = metadata(headers, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The peer came from tonic's TcpConnectInfo: keyed, never a 500.
    let stats = layer.stats();
    assert_eq!((stats.allowed, stats.limited), (2, 1));
}

/// The variable naming a Python with grpcio and grpcio-health-checking
/// (`scripts/test.sh` makes a venv and sets it).
const GRPCIO_PYTHON: &str = "TEST_GRPCIO_PYTHON";

/// Python's grpcio, a second gRPC implementation (its C core), sees a
/// limited call as `RESOURCE_EXHAUSTED` with the rate-limit headers as
/// metadata, not the `UNAVAILABLE` it made of an HTTP 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sees_a_limited_call_as_resource_exhausted() {
    let Ok(python) = std::env::var(GRPCIO_PYTHON) else {
        tests::skip::skip_or_fail(
            "grpcio",
            &format!(
                "{GRPCIO_PYTHON} does not name a Python with grpcio (scripts/test.sh makes one)"
            ),
        );
        return;
    };
    let layer = RateLimitLayer::builder(Cache::in_memory())
        .limit(2)
        .window(Duration::from_secs(60))
        .build()
        .unwrap();
    let port = serve_health(layer).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc/health_check.py");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .args([script, &port.to_string(), "3"])
            .output(),
    )
    .await
    .expect("the grpcio client finishes within 60 s")
    .expect("the grpcio client runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let calls: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let codes: Vec<&str> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["OK", "OK", "RESOURCE_EXHAUSTED"], "{calls}");
    assert_eq!(calls[0]["metadata"]["x-ratelimit-remaining"], "1");
    let limited = &calls[2];
    assert!(
        limited["details"]
            .as_str()
            .unwrap()
            .starts_with("rate limit of 2 per 60 s"),
        "{limited}"
    );
    assert_eq!(
        limited["metadata"]["ratelimit-policy"],
        r#""rate";q=2;w=60"#
    );
    assert_eq!(limited["metadata"]["x-ratelimit-remaining"], "0");
    assert!(limited["metadata"]["retry-after"].is_string(), "{limited}");
}

/// Per-method limits: the key is the gRPC path (`/package.Service/Method`)
/// and the peer, so each method has a budget of its own.
#[tokio::test]
async fn a_key_of_the_grpc_path_limits_each_method_on_its_own() {
    let peer = PeerIp::new();
    let layer = RateLimitLayer::builder(Cache::in_memory())
        .limit(1)
        .window(Duration::from_secs(60))
        .key_extractor(move |request: &RequestInfo<'_>| {
            let ip = peer.client_ip(request)?;
            Ok(format!("{}:{ip}", request.uri.path()))
        })
        .build()
        .unwrap();
    let port = serve_health(layer).await;
    let mut health = client(port).await;
    health.check(check()).await.expect("the first Check");
    let limited = health.check(check()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    // Watch, another method of the same service: its own budget.
    let watch = health.watch(check()).await.expect("the first Watch");
    drop(watch);
    let limited = health.watch(check()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
}

/// A plain hyper server: its code inserts each connection's peer as a
/// `SocketAddr` extension, and the layer keys by it.
#[tokio::test]
async fn a_hyper_server_that_inserts_the_peer_is_limited_per_client() {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceBuilder;

    let layer = RateLimitLayer::new(Cache::in_memory(), 1, Duration::from_secs(60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, peer): (_, SocketAddr) = listener.accept().await.unwrap();
            let service = ServiceBuilder::new()
                .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(peer);
                    request
                })
                .layer(layer.clone())
                .service_fn(|_| async {
                    Ok::<_, Infallible>(http::Response::new(axum::body::Body::from("ok")))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
            );
        }
    });
    assert_eq!(tests::http::get(port, "/", &[]).await.status, 200);
    let limited = tests::http::get(port, "/", &[]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("x-ratelimit-limit"), Some("1"));
}
