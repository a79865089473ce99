//! One variant of the HTTP rows of `http`, driven straight into the service
//! (`oneshot`, no sockets), `REQUESTS` times, for counting the service
//! side's instructions under callgrind (`scripts/rl-instructions.sh`):
//! redis-server runs in its own process and is not counted, and the figure
//! does not move with the machine's load as CPU time does.
//!
//! `rl-instructions VARIANT REQUESTS`: `bare` (the axum hello-world),
//! `naive` (`INCR` + `EXPIRE NX` per request, `benches::limiters::naive`),
//! `naive-headers` (`INCR` + `EXPIRE NX` + `PTTL` and the layer's five
//! default header fields, `benches::limiters::naive_with_headers`),
//! `layer` (`RateLimitLayer` on Redis; `layer-no-headers` with no header
//! field, `HeaderSets::NONE`, the naive middleware's output, and then
//! no `PTTL` per request), `layer-memory` (on the in-memory
//! store; `layer-memory-ietf` and `layer-memory-no-headers` with only the
//! IETF pair of header fields, and none; `flood-memory` with a limit of
//! one, so that every counted request is a 429 from the deny cache),
//! `layer-shared` (on Redis with shared counting: its background
//! flushes run in this process and are counted, more of them per request
//! than at full speed, callgrind being slower), `leases` and
//! `leases-memory` (the same limit beside a concurrency limit,
//! `Quota::concurrent`, on Redis and in memory: a lease per request, taken
//! in the same call, released when the response is dropped). Each request comes through the trusted proxy 127.0.0.1 with
//! `X-Forwarded-For` from a pool of 10 000 clients, as in `http`'s many
//! clients row; 32 tasks; the router's routes are built once, as a server
//! does per connection. A run with 0 requests measures the set-up (and a
//! first pass that creates every client's key), which the script subtracts.
//! A run with requests prints the Redis commands per request of the measured
//! pass (`INFO commandstats`) on standard error.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use benches::limiters::{Naive, naive, naive_with_headers};
use cache_core::Cache;
use rate_limit::{HeaderSets, Quota, RateLimitLayer};
use tower::ServiceExt;

const TASKS: usize = 32;
const CLIENTS: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(3600);
/// Never reached, and below 2^50 as any real limit (see http.rs's
/// `NORMAL_LIMIT`).
const LIMIT: u64 = 1_000_000_000_000;
const VARIANTS: [&str; 12] = [
    "bare",
    "naive",
    "naive-headers",
    "layer",
    "layer-no-headers",
    "layer-memory",
    "layer-memory-ietf",
    "layer-memory-no-headers",
    "layer-shared",
    "flood-memory",
    "leases",
    "leases-memory",
];

fn request(client: usize) -> http::Request<Body> {
    let address = format!(
        "10.{}.{}.{}",
        (client >> 16) & 255,
        (client >> 8) & 255,
        client & 255
    );
    let mut request = http::Request::get("/")
        .header("x-forwarded-for", address)
        .body(Body::empty())
        .expect("request");
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    request
}

/// `requests` requests over `TASKS` tasks, task `t` from client `t`, then
/// every `TASKS`-th one, each answered `status`.
async fn drive(app: &Router, requests: usize, status: u16) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let app = app.clone();
            tokio::spawn(async move {
                for i in 0..requests / TASKS {
                    let client = (task + i * TASKS) % CLIENTS;
                    let response = app
                        .clone()
                        .oneshot(request(client))
                        .await
                        .expect("infallible");
                    assert_eq!(response.status(), status);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}

/// Shared counting sends its counts in the background: waits until its
/// flushes have stopped for 2 s (what the requests admitted was sent and
/// answered), so that the run counts them, not only the requests' path.
async fn settle(variant: &str, layers: &[RateLimitLayer]) {
    if variant != "layer-shared" {
        return;
    }
    let calls = || layers.iter().map(|l| l.stats().store_calls).sum::<u64>();
    let mut seen = calls();
    let mut quiet = 0;
    while quiet < 20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = calls();
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_default();
    let requests: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        VARIANTS.contains(&variant.as_str()),
        "usage: rl-instructions {} REQUESTS",
        VARIANTS.join("|")
    );
    let server = tests::RedisServer::start();
    let hello = || Router::new().route("/", get(|| async { "Hello, World!" }));
    // Callgrind runs the process some fifty times slower: calls may take a
    // minute rather than fail open.
    let builder = |cache: Cache| {
        let store_timeout = cache.timeout();
        RateLimitLayer::builder(cache)
            .limit(LIMIT)
            .window(WINDOW)
            .trusted_proxies(["127.0.0.1/32"])
            .store_timeout(store_timeout)
    };
    let layer = |cache: Cache| builder(cache).build().expect("layer");
    let redis = || async {
        Cache::builder()
            .redis_url(&server.url())
            .expect("url")
            .timeout(Duration::from_secs(60))
            // The connection is made on the first call (the shared mode's
            // first flush), at callgrind's pace.
            .connect_timeout(Duration::from_secs(60))
            .build()
            .await
            .expect("cache")
    };
    let mut layers = Vec::new();
    let app = match variant.as_str() {
        "bare" => hello(),
        "naive" | "naive-headers" => {
            let conn = redis::Client::open(server.url())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let state = Naive {
                conn,
                window: WINDOW,
                limit: LIMIT,
            };
            match variant.as_str() {
                "naive" => hello().layer(axum::middleware::from_fn_with_state(state, naive)),
                _ => hello().layer(axum::middleware::from_fn_with_state(
                    state,
                    naive_with_headers,
                )),
            }
        }
        "layer" => {
            layers.push(layer(redis().await));
            hello().layer(layers[0].clone())
        }
        "layer-no-headers" => {
            let layer = builder(redis().await)
                .headers(HeaderSets::NONE)
                .build()
                .expect("layer");
            layers.push(layer);
            hello().layer(layers[0].clone())
        }
        "leases" | "leases-memory" => {
            let cache = match variant.as_str() {
                "leases" => redis().await,
                _ => Cache::in_memory(),
            };
            let store_timeout = cache.timeout();
            let leases = RateLimitLayer::builder(cache)
                .policy("rate", Quota::new(rate_limit::MAX_LIMIT, WINDOW))
                .policy("in-flight", Quota::concurrent(rate_limit::MAX_CONCURRENT))
                .trusted_proxies(["127.0.0.1/32"])
                .store_timeout(store_timeout)
                .build()
                .expect("layer");
            layers.push(leases);
            hello().layer(layers[0].clone())
        }
        "layer-memory-ietf" | "layer-memory-no-headers" => {
            let sets = match variant.as_str() {
                "layer-memory-ietf" => HeaderSets::IETF,
                _ => HeaderSets::NONE,
            };
            let layer = builder(Cache::in_memory())
                .headers(sets)
                .build()
                .expect("layer");
            layers.push(layer);
            hello().layer(layers[0].clone())
        }
        "flood-memory" => {
            let flood = builder(Cache::in_memory()).limit(1).build().expect("layer");
            layers.push(flood);
            hello().layer(layers[0].clone())
        }
        "layer-shared" => {
            let shared = builder(redis().await)
                .shared_counting(rate_limit::SharedCounting::new())
                .build()
                .expect("layer");
            layers.push(shared);
            hello().layer(layers[0].clone())
        }
        _ => {
            layers.push(layer(Cache::in_memory()));
            hello().layer(layers[0].clone())
        }
    };
    // Routes built once, as `axum::serve` and `into_make_service` do (per
    // connection): a `Router` called as it is builds each route, and applies
    // the layer, per request.
    let app = app.with_state(());
    // Every client's key exists (and the script is loaded) before counting.
    drive(&app, CLIENTS, 200).await;
    settle(&variant, &layers).await;
    server.cli(&["CONFIG", "RESETSTAT"]);
    // A flood: every client has spent its one request, each next one is
    // answered from the deny cache.
    let status = if variant == "flood-memory" { 429 } else { 200 };
    drive(&app, requests, status).await;
    settle(&variant, &layers).await;
    for layer in layers {
        let stats = layer.stats();
        assert_eq!(stats.store_errors, 0, "every request counted: {stats:?}");
    }
    // Redis commands per measured request (`INFO commandstats`, the first
    // pass left out), on standard error.
    if requests > 0 {
        let info = server.cli(&["INFO", "commandstats"]);
        let per_request: Vec<String> = info
            .lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls: u64 = stats
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                (!name.starts_with("config") && name != "info")
                    .then(|| format!("{name} {:.3}", calls as f64 / requests as f64))
            })
            .collect();
        eprintln!("redis commands per request: {}", per_request.join(", "));
    }
}
