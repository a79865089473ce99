//! Requests per second of an axum hello-world on loopback: bare, behind
//! `RateLimitLayer` (in-memory and Redis stores) and, with `--features
//! compare`, behind `tower_governor`; normally (limit never reached) and under
//! a flood (> 99 % rejected). Variants are interleaved round by round.
//!
//! `cargo run --release -p benches --features compare --bin http`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::get;
use benches::Series;
use cache_core::Cache;
use rate_limit::{HeaderSets, RateLimitLayer};
use tests::http::Connection;

const CONNECTIONS: usize = 32;
const ROUND: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 5;
const WINDOW: Duration = Duration::from_secs(3600);
const FIXED_HEADERS: [(&str, &str); 5] = [
    ("x-ratelimit-limit", "4611686018427387903"),
    ("x-ratelimit-remaining", "4611686018427387000"),
    ("x-ratelimit-reset", "3600"),
    ("ratelimit-policy", "\"rate\";q=4611686018427387903;w=3600"),
    ("ratelimit", "\"rate\";r=4611686018427387000;t=3600"),
];

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
    // What the five rate-limit header fields cost on the wire and in the
    // client, with no limiter at all: the floor for any layer that sends them.
    let fixed_headers = axum::middleware::map_response(|mut response: Response| async move {
        for (name, value) in FIXED_HEADERS {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    });
    variants.push((
        "bare axum + 5 fixed rate-limit headers (reference)".into(),
        serve(hello().layer(fixed_headers)).await,
        None,
    ));
    for (mode, limit) in [("normal", u64::MAX / 4), ("flood", 10)] {
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
