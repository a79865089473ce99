//! The local deny cache under many distinct clients over their limit: limit
//! 1 per hour, every client sends two requests (the second is over the limit
//! and goes into the deny cache) and a third (answered from it). Measured
//! while the cache fills up to its 100 000 entries, then while it is full of
//! live entries, so that every insert must evict. Baseline in the same run:
//! the same layer with the deny cache off (every request a store call).
//! Requests go straight to the layer's service (`oneshot`), no HTTP, on the
//! in-memory store, so that the limiter is what is measured.
//!
//! `cargo run --release -p benches --bin deny-cache`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use benches::Series;
use cache_core::Cache;
use rate_limit::RateLimitLayer;
use tower::{Layer, ServiceExt};

/// The deny cache's capacity: filling it takes this many clients.
const CAPACITY: u32 = 100_000;
/// Clients measured once the cache is full.
const FULL_CLIENTS: u32 = 20_000;
const TASKS: u32 = 4;
const ROUNDS: usize = 5;

fn request(client: u32) -> http::Request<Body> {
    let peer = SocketAddr::from((client.saturating_add(1 << 28).to_be_bytes(), 4000));
    http::Request::builder()
        .uri("/")
        .extension(ConnectInfo(peer))
        .body(Body::empty())
        .expect("request")
}

/// Three requests for each client of `clients`, across `TASKS` tasks;
/// requests per second.
async fn run(layer: &RateLimitLayer, clients: std::ops::Range<u32>) -> f64 {
    let service = layer.layer(tower::service_fn(|_: http::Request<Body>| async {
        Ok::<_, Infallible>(http::Response::new(Body::empty()))
    }));
    let started = Instant::now();
    let per_task = clients.len() as u32 / TASKS;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let service = service.clone();
            let first = clients.start + task * per_task;
            tokio::spawn(async move {
                for client in first..first + per_task {
                    for expected in [200, 429, 429] {
                        let response = service
                            .clone()
                            .oneshot(request(client))
                            .await
                            .expect("infallible");
                        assert_eq!(response.status(), expected, "client {client}");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    f64::from(per_task * TASKS * 3) / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let variants = [
        ("deny cache off (baseline)", false),
        ("deny cache on", true),
    ];
    let mut filling: Vec<Series> = variants.iter().map(|(n, _)| Series::new(n)).collect();
    let mut full: Vec<Series> = variants.iter().map(|(n, _)| Series::new(n)).collect();
    let mut tracked = Vec::new();
    for _ in 0..ROUNDS {
        for (i, (_, deny)) in variants.iter().enumerate() {
            let cache = Cache::builder()
                .in_memory()
                .memory_max_entries(1_000_000)
                .build()
                .await
                .expect("cache");
            let layer = RateLimitLayer::builder(cache)
                .limit(1)
                .window(Duration::from_secs(3600))
                .local_deny_cache(*deny)
                .build()
                .expect("layer");
            filling[i].rounds.push(run(&layer, 0..CAPACITY).await);
            full[i]
                .rounds
                .push(run(&layer, CAPACITY..CAPACITY + FULL_CLIENTS).await);
            tracked.push(layer.tracked_clients());
        }
    }
    benches::report(
        &format!(
            "{CAPACITY} distinct clients x 3 requests (limit 1), {TASKS} tasks, while the deny cache fills; {ROUNDS} rounds, median"
        ),
        &filling,
    );
    benches::report(
        &format!(
            "{FULL_CLIENTS} more clients x 3 requests, deny cache full of live entries; {ROUNDS} rounds, median"
        ),
        &full,
    );
    println!("\n(slots, deny entries) held after each run: {tracked:?}");
}
