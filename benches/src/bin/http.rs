//! Requests per second of an axum hello-world on loopback: bare, behind
//! `RateLimitLayer` (in-memory and Redis stores) and, with `--features
//! compare`, behind `tower_governor`; normally (limit never reached) and under
//! a flood (> 99 % rejected). Variants are interleaved round by round.
//!
//! `cargo run --release -p benches --features compare --bin http`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::routing::get;
use benches::Series;
use cache_core::Cache;
use rate_limit::{
    HeaderSets, RATELIMIT, RATELIMIT_POLICY, RateLimitLayer, X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
use tests::http::Connection;

const CONNECTIONS: usize = 32;
const ROUND: Duration = Duration::from_millis(1000);
const ROUNDS: usize = 9;
const WINDOW: Duration = Duration::from_secs(3600);
/// Never reached.
const NORMAL_LIMIT: u64 = rate_limit::MAX_LIMIT;
/// Reached after the first round's first requests.
const FLOOD_LIMIT: u64 = 10;

/// The five rate-limit header fields for `limit` and `remaining`, rendered
/// once (static values: cloning them per response copies nothing).
fn header_fields(limit: u64, remaining: u64) -> [(HeaderName, HeaderValue); 5] {
    let value = |text: String| HeaderValue::from_static(Box::leak(text.into_boxed_str()));
    let window = WINDOW.as_secs();
    [
        (X_RATELIMIT_LIMIT, value(limit.to_string())),
        (X_RATELIMIT_REMAINING, value(remaining.to_string())),
        (X_RATELIMIT_RESET, value(window.to_string())),
        (
            RATELIMIT_POLICY,
            value(format!("\"rate\";q={limit};w={window}")),
        ),
        (
            RATELIMIT,
            value(format!("\"rate\";r={remaining};t={window}")),
        ),
    ]
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "Hello, World!" }))
}

async fn serve(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    port
}

/// Requests per second over `ROUND`, and the share answered 429.
async fn load(port: u16) -> (f64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = Connection::open(port).await.expect("connect");
                let (mut done, mut limited) = (0u64, 0u64);
                while started.elapsed() < ROUND {
                    let response = conn
                        .get("/", Duration::from_secs(5))
                        .await
                        .expect("request");
                    done += 1;
                    if response.status == 429 {
                        limited += 1;
                    }
                }
                (done, limited)
            })
        })
        .collect();
    let (mut done, mut limited) = (0, 0);
    for task in tasks {
        let (d, l) = task.await.expect("client");
        done += d;
        limited += l;
    }
    (
        done as f64 / started.elapsed().as_secs_f64(),
        limited as f64 / done.max(1) as f64,
    )
}

#[tokio::main]
async fn main() {
    let server = tests::RedisServer::start();
    let redis = || async {
        Cache::builder()
            .redis_url(&server.url())
            .expect("url")
            .build()
            .await
            .expect("cache")
    };
    // Each variant: its name, its port, and the layer whose counters it reports.
    let mut variants: Vec<(String, u16, Option<RateLimitLayer>)> = Vec::new();
    variants.push(("bare axum (baseline)".into(), serve(hello()).await, None));
    // What the rate-limit header fields cost on the wire and in the client,
    // with no limiter at all: the handler sends them itself. The floors for
    // any layer that sends them: the five fields on a 200, and a flood's
    // whole 429 (the same fields, `Retry-After` and the problem+json body).
    let normal = header_fields(NORMAL_LIMIT, NORMAL_LIMIT - 1000);
    variants.push((
        "bare axum sending the 5 header fields itself (reference)".into(),
        serve(Router::new().route("/", get(move || async move { (normal, "Hello, World!") })))
            .await,
        None,
    ));
    let body = rate_limit::too_many_requests_body(FLOOD_LIMIT, WINDOW);
    let flood = header_fields(FLOOD_LIMIT, 0);
    let limited = move || {
        let (body, flood) = (body.clone(), flood.clone());
        async move {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/problem+json"),
                    ),
                    (header::RETRY_AFTER, HeaderValue::from_static("3600")),
                ],
                flood,
                body,
            )
        }
    };
    variants.push((
        "bare axum answering the flood's 429 itself (reference)".into(),
        serve(Router::new().route("/", get(limited))).await,
        None,
    ));
    for (mode, limit) in [("normal", NORMAL_LIMIT), ("flood", FLOOD_LIMIT)] {
        for (store, headers) in [("memory", true), ("memory", false), ("Redis", true)] {
            let cache = if store == "memory" {
                Cache::in_memory()
            } else {
                redis().await
            };
            let sets = HeaderSets {
                legacy: headers,
                ietf: headers,
            };
            let layer = RateLimitLayer::builder(cache)
                .limit(limit)
                .window(WINDOW)
                .headers(sets)
                .build()
                .expect("layer");
            let name = if headers {
                format!("RateLimitLayer, {store}, {mode}")
            } else {
                format!("RateLimitLayer, {store}, headers off, {mode}")
            };
            let port = serve(hello().layer(layer.clone())).await;
            variants.push((name, port, Some(layer)));
        }
        #[cfg(feature = "compare")]
        {
            // A huge refill rate for "normal"; one per hour after a burst of 10 for the flood.
            let config = if mode == "normal" {
                tower_governor::governor::GovernorConfigBuilder::default()
                    .per_nanosecond(1)
                    .burst_size(u32::MAX)
                    .finish()
            } else {
                tower_governor::governor::GovernorConfigBuilder::default()
                    .per_second(3600)
                    .burst_size(10)
                    .finish()
            }
            .expect("governor config");
            let layer = tower_governor::GovernorLayer::new(config);
            variants.push((
                format!("tower_governor, {mode}"),
                serve(hello().layer(layer)).await,
                None,
            ));
        }
    }

    // `BENCH_ONLY=memory` keeps the baseline and the variants whose name holds it;
    // `BENCH_ONLY=!memory` drops the baseline too (for profiling one variant).
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let mut index = 0;
        variants.retain(|(name, _, _)| {
            index += 1;
            (index == 1 && !only.starts_with("!")) || name.contains(only.trim_start_matches("!"))
        });
    }
    let mut series: Vec<Series> = variants
        .iter()
        .map(|(name, _, _)| Series::new(name))
        .collect();
    let mut limited_share = vec![0.0; variants.len()];
    for _ in 0..ROUNDS {
        for (i, (_, port, _)) in variants.iter().enumerate() {
            let (rps, limited) = load(*port).await;
            series[i].rounds.push(rps);
            limited_share[i] = limited;
        }
    }
    benches::report(
        &format!(
            "HTTP GET / on loopback, {CONNECTIONS} keep-alive connections, {ROUNDS} rounds of {ROUND:?}, median"
        ),
        &series,
    );
    println!();
    for ((name, _, layer), share) in variants.iter().zip(limited_share) {
        let mut line = format!(
            "{name}: {:.2} % answered 429 in the last round",
            share * 100.0
        );
        if let Some(layer) = layer {
            let stats = layer.stats();
            let requests = stats.allowed + stats.limited + stats.store_errors;
            line.push_str(&format!(
                "; {:.3} store calls per request",
                stats.store_calls as f64 / requests.max(1) as f64
            ));
        }
        println!("{line}");
    }
}
