//! An axum hello-world on loopback, bare and behind rate limiters, measured
//! side by side in interleaved rounds, in three scenarios:
//!
//! - **many clients**: 10 000 distinct client addresses through a trusted
//!   proxy (the load generator sets `X-Forwarded-For` per request from the
//!   pool), limit never reached;
//! - **one hot client**: every request from one address, limit never reached;
//! - **flood**: one client over its limit (> 99 % answered 429), beside a
//!   handler answering the same 429 itself.
//!
//! Variants: bare axum; a hand-written `INCR` + `EXPIRE` pipeline per request
//! and one `EVALSHA` per request (raw `redis` crate, no coalescing);
//! `RateLimitLayer` on Redis and on the in-memory store; and, with
//! `--features compare`, `tower_governor` and `limitador` (its exact and its
//! cached Redis storage; vendored with a build fix, benches/vendor/limitador).
//!
//! The services run in a child process (this binary started again with
//! `--serve`), the load generator in this one, so that the CPU time of the
//! service process and of `redis-server`, read from `/proc/<pid>/stat`
//! around each round, leaves the load generator's out. Redis commands come
//! from `INFO commandstats` around each round. A last phase sends a fixed
//! rate (open loop, below saturation) and reports p50/p99 latency.
//!
//! `cargo run --release -p benches --features compare --bin http`
//!
//! A last phase measures accuracy across instances: 1 000 requests of one
//! client over two instances of each limiter (limit 100), how many pass.
//!
//! `BENCH_ONLY=text` keeps each scenario's baseline and the rows whose name
//! holds `text` (`a|b`: either; `BENCH_ONLY=!text` drops the baselines too);
//! `BENCH_SCENARIOS=many,hot,flood` picks scenarios; `BENCH_ROUNDS=n`,
//! `BENCH_LATENCY=0` (skip the latency phase), `BENCH_ACCURACY=0` (skip the
//! accuracy phase), `BENCH_SHARED=0` (skip the shared counting's 4-instance
//! phase; `BENCH_SHARED_SECONDS=n` sets its length) for short or profiling runs.
//!
//! The shared counting's phase (module `shared`): 4 instances of the service
//! (processes: this binary with `--serve-instance`) on one Redis, 10 000
//! clients and one hot client over their limits, every admission counted
//! per client and window against the mode's stated bound.
//! With `--features metrics` the service process installs a Prometheus
//! recorder, for the overhead of the libraries' metrics.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use benches::Series;
use benches::limiters::{Naive, client_ip, naive, naive_with_headers};
use cache_core::Cache;
use rate_limit::{
    HeaderSets, RATELIMIT, RATELIMIT_POLICY, RateLimitLayer, X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
use redis::aio::MultiplexedConnection;
use tests::http::Connection;

const CONNECTIONS: usize = 32;
const ROUND: Duration = Duration::from_millis(1000);
const ROUNDS: usize = 7;
const WINDOW: Duration = Duration::from_secs(3600);
/// Never reached: 10^12 per hour. Below 2^50, as any real limit: the layer
/// counts a fixed window of requests of cost 1 with pipelined plain
/// commands up to there (from 2^50 a value above the limit may be a GCRA
/// TAT, so the script counts; see rate-limit's `store::redis`).
const NORMAL_LIMIT: u64 = 1_000_000_000_000;
/// Reached after the first round's first requests.
const FLOOD_LIMIT: u64 = 10;
/// The layers' bound on a store call (see `serve_all`).
const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// Distinct client addresses of the many-clients scenario.
const CLIENTS: usize = 10_000;
/// The proxy every request comes through (the load generator's address).
const TRUSTED_PROXY: &str = "127.0.0.1/32";
/// Offered load of the latency phase, requests per second over all connections.
const LATENCY_RATE: u64 = 2_000;
/// Length of one latency run.
const LATENCY_RUN: Duration = Duration::from_millis(1500);
/// Latency runs per variant (samples pooled).
const LATENCY_ROUNDS: usize = 5;

/// The same kind of script as the store's window counter: `INCRBY`, then
/// `PEXPIRE` when the key is new or has no TTL; returns {count, pttl}.
const INCR_WINDOW_LUA: &str = r"
local by = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local count = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(count) ~= 'number' or count < by or count > tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {by, window}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > window then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = window
end
return {count, ttl}
";

/// A service of the child process: its id (what the parent asks for) and
/// the row name it is reported under.
struct Service {
    id: &'static str,
    name: &'static str,
}

const SERVICES: &[Service] = &[
    Service {
        id: "bare",
        name: "bare axum (baseline)",
    },
    Service {
        id: "headers",
        name: "reference: the handler sends the 5 rate-limit header fields itself",
    },
    Service {
        id: "naive",
        name: "naive `INCR` + `EXPIRE NX` pipeline per request",
    },
    Service {
        id: "naive-headers",
        name: "naive `INCR` + `EXPIRE NX` + `PTTL`, with the same five header fields",
    },
    Service {
        id: "evalsha",
        name: "one `EVALSHA` per request, no coalescing",
    },
    Service {
        id: "rl-redis",
        name: "`RateLimitLayer`, Redis",
    },
    Service {
        id: "rl-redis-no-headers",
        name: "`RateLimitLayer`, Redis, no header fields (the naive middleware's output)",
    },
    Service {
        id: "rl-memory",
        name: "`RateLimitLayer`, in-memory store",
    },
    Service {
        id: "governor",
        name: "`tower_governor` (in-process)",
    },
    Service {
        id: "limitador",
        name: "`limitador`, exact Redis storage (`AsyncRedisStorage`)",
    },
    Service {
        id: "limitador-cached",
        name: "`limitador`, cached Redis storage (`CachedRedisStorage`)",
    },
    Service {
        id: "ref-429",
        name: "reference: the handler answers the same 429 itself (baseline)",
    },
    Service {
        id: "rl-redis-flood",
        name: "`RateLimitLayer`, Redis, flood",
    },
    Service {
        id: "rl-memory-flood",
        name: "`RateLimitLayer`, in-memory store, flood",
    },
    Service {
        id: "governor-flood",
        name: "`tower_governor`, flood",
    },
    Service {
        id: "limitador-flood",
        name: "`limitador`, exact Redis storage, flood",
    },
    Service {
        id: "limitador-cached-flood",
        name: "`limitador`, cached Redis storage, flood",
    },
];

fn name_of(id: &str) -> &'static str {
    SERVICES
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.name)
        .or_else(|| shared::name(id))
        .unwrap_or("?")
}

/// A scenario: its title, the client addresses requests cycle through, its
/// rows (the first is the baseline of its ratios), and whether the latency
/// phase runs it.
struct Scenario {
    key: &'static str,
    title: &'static str,
    addresses: Vec<String>,
    rows: Vec<&'static str>,
    latency: bool,
}

fn scenarios() -> Vec<Scenario> {
    let many: Vec<String> = (0..CLIENTS)
        .map(|i| format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255))
        .collect();
    let limiters = [
        "naive",
        "naive-headers",
        "evalsha",
        "rl-redis",
        "rl-redis-no-headers",
        "rl-memory",
        "governor",
        "limitador",
        "limitador-cached",
    ];
    let mut list = vec![
        Scenario {
            key: "many",
            title: "many clients: 10 000 addresses through a trusted proxy, limit never reached",
            addresses: many,
            rows: [&["bare", "headers"][..], &limiters].concat(),
            latency: true,
        },
        Scenario {
            key: "hot",
            title: "one hot client: every request from one address, limit never reached",
            addresses: vec!["10.255.0.1".into()],
            rows: [&["bare"][..], &limiters].concat(),
            latency: true,
        },
        Scenario {
            key: "flood",
            title: "flood: one client over its limit (limit 10 per hour)",
            addresses: vec!["10.254.0.1".into()],
            rows: vec![
                "ref-429",
                "rl-redis-flood",
                "rl-memory-flood",
                "governor-flood",
                "limitador-flood",
                "limitador-cached-flood",
            ],
            latency: false,
        },
    ];
    shared::add_rows(&mut list);
    if !cfg!(feature = "compare") {
        for scenario in &mut list {
            scenario
                .rows
                .retain(|id| !id.starts_with("governor") && !id.starts_with("limitador"));
        }
    }
    if let Ok(keep) = std::env::var("BENCH_SCENARIOS") {
        list.retain(|s| keep.split(',').any(|k| k.trim() == s.key));
    }
    // `BENCH_ONLY=text` keeps each baseline and the rows whose name holds it;
    // `BENCH_ONLY=!text` drops the baselines too (for profiling one variant).
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let texts = only.trim_start_matches('!');
        for scenario in &mut list {
            let mut index = 0;
            scenario.rows.retain(|id| {
                index += 1;
                (index == 1 && !only.starts_with('!'))
                    || texts.split('|').any(|text| name_of(id).contains(text))
            });
        }
    }
    list
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.get(1).map(String::as_str) == Some("--serve") {
        let url = args.get(2).expect("--serve <redis url>").clone();
        // With the `metrics` feature, the libraries' metrics go into the
        // recorder an application would install (never rendered here).
        #[cfg(feature = "metrics")]
        let _metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of the process");
        runtime.block_on(serve_all(&url));
    } else if args.get(1).map(String::as_str) == Some("--serve-instance") {
        let [url, prefix] = [2, 3].map(|i| args.get(i).expect("--serve-instance <url> <prefix>"));
        runtime.block_on(shared::serve_instance(url, prefix));
    } else {
        runtime.block_on(measure());
    }
}

// ---------------------------------------------------------------------------
// The service process.
// ---------------------------------------------------------------------------

/// Starts every service, prints `id port` lines and `ready`, and serves until
/// its standard input closes (the parent exits or drops it).
async fn serve_all(url: &str) {
    // Calls may take up to 2 s: on a machine shared with other work a
    // stalled moment must not make the layer fail open (and stop calling
    // Redis), which would make its row cheaper than what it measures. The
    // layers' counters (store errors included) are printed at the end.
    let redis_cache = || async {
        Cache::builder()
            .redis_url(url)
            .expect("url")
            .timeout(STORE_TIMEOUT)
            .build()
            .await
            .expect("cache")
    };
    let raw = redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let builder = |cache: Cache, limit: u64| {
        let store_timeout = STORE_TIMEOUT.min(cache.timeout());
        RateLimitLayer::builder(cache)
            .limit(limit)
            .window(WINDOW)
            // A prefix per limit: one prefix with two limits on one Redis is
            // refused (the counters would be shared).
            .prefix(format!("rate-{limit}"))
            .trusted_proxies([TRUSTED_PROXY])
            .store_timeout(store_timeout)
    };
    let layer = |cache: Cache, limit: u64| builder(cache, limit).build().expect("layer");
    let mut ports: Vec<(&str, u16)> = Vec::new();
    ports.push(("bare", serve(hello()).await));
    let normal = header_fields(NORMAL_LIMIT, NORMAL_LIMIT - 1000);
    ports.push((
        "headers",
        serve(Router::new().route("/", get(move || async move { (normal, "Hello, World!") })))
            .await,
    ));
    ports.push((
        "naive",
        serve(hello().layer(middleware::from_fn_with_state(
            Naive {
                conn: raw.clone(),
                window: WINDOW,
                limit: NORMAL_LIMIT,
            },
            naive,
        )))
        .await,
    ));
    // What a user writes to send the layer's default header fields.
    ports.push((
        "naive-headers",
        serve(hello().layer(middleware::from_fn_with_state(
            Naive {
                conn: raw.clone(),
                window: WINDOW,
                limit: NORMAL_LIMIT,
            },
            naive_with_headers,
        )))
        .await,
    ));
    let script = EvalSha {
        conn: raw,
        script: redis::Script::new(INCR_WINDOW_LUA),
    };
    ports.push((
        "evalsha",
        serve(hello().layer(middleware::from_fn_with_state(
            std::sync::Arc::new(script),
            evalsha,
        )))
        .await,
    ));
    let mut layers: Vec<(&str, RateLimitLayer)> = Vec::new();
    let rl_redis = layer(redis_cache().await, NORMAL_LIMIT);
    layers.push(("rl-redis", rl_redis.clone()));
    ports.push(("rl-redis", serve(hello().layer(rl_redis)).await));
    // The naive middleware's output (no header fields), on counts of its own.
    let no_headers = builder(redis_cache().await, NORMAL_LIMIT)
        .prefix("rate-no-headers")
        .headers(HeaderSets::NONE)
        .build()
        .expect("layer");
    layers.push(("rl-redis-no-headers", no_headers.clone()));
    ports.push((
        "rl-redis-no-headers",
        serve(hello().layer(no_headers)).await,
    ));
    ports.push((
        "rl-memory",
        serve(hello().layer(layer(Cache::in_memory(), NORMAL_LIMIT))).await,
    ));
    shared::serve_rows(url, &mut ports, &mut layers).await;
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
    ports.push((
        "ref-429",
        serve(Router::new().route("/", get(limited))).await,
    ));
    ports.push((
        "rl-redis-flood",
        serve(hello().layer(layer(redis_cache().await, FLOOD_LIMIT))).await,
    ));
    ports.push((
        "rl-memory-flood",
        serve(hello().layer(layer(Cache::in_memory(), FLOOD_LIMIT))).await,
    ));
    #[cfg(feature = "compare")]
    {
        use tower_governor::governor::GovernorConfigBuilder;
        use tower_governor::key_extractor::SmartIpKeyExtractor;
        // A huge refill rate for "normal"; one per hour after a burst of 10 for the flood.
        let normal = GovernorConfigBuilder::default()
            .key_extractor(SmartIpKeyExtractor)
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .finish()
            .expect("governor config");
        let flood = GovernorConfigBuilder::default()
            .key_extractor(SmartIpKeyExtractor)
            .per_second(3600)
            .burst_size(10)
            .finish()
            .expect("governor config");
        ports.push((
            "governor",
            serve(hello().layer(tower_governor::GovernorLayer::new(normal))).await,
        ));
        ports.push((
            "governor-flood",
            serve(hello().layer(tower_governor::GovernorLayer::new(flood))).await,
        ));
        for (id, limit) in [
            ("limitador", NORMAL_LIMIT),
            ("limitador-flood", FLOOD_LIMIT),
        ] {
            let storage = peer::limitador_exact(url).await;
            ports.push((id, serve(peer::limitador(hello(), storage, limit)).await));
        }
        for (id, limit) in [
            ("limitador-cached", NORMAL_LIMIT),
            ("limitador-cached-flood", FLOOD_LIMIT),
        ] {
            let storage = peer::limitador_cached(url).await;
            ports.push((id, serve(peer::limitador(hello(), storage, limit)).await));
        }
    }
    // Two instances of each limiter with a limit of ACCURACY_LIMIT per hour,
    // sharing what they share in production (Redis), for the accuracy phase.
    for instance in ["a", "b"] {
        for variant in ACCURACY_VARIANTS {
            let app = accuracy_instance(variant, url).await;
            let id: &'static str = Box::leak(format!("acc-{variant}-{instance}").into_boxed_str());
            ports.push((id, serve(app).await));
        }
    }
    for (id, port) in &ports {
        println!("{id} {port}");
    }
    println!("ready");
    // Serve until the parent closes our standard input.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .expect("stdin watcher");
    // What the layers counted, failures included: to tell a row that failed
    // open from one that counted.
    for (id, layer) in layers {
        eprintln!("{id}: {:?}", layer.stats());
    }
}

/// The limiters of the accuracy phase (with `--features compare`, the
/// other libraries' too).
const ACCURACY_VARIANTS: &[&str] = &[
    "rl-redis",
    "naive",
    "rl-memory",
    shared::ROW,
    #[cfg(feature = "compare")]
    "governor",
    #[cfg(feature = "compare")]
    "limitador",
    #[cfg(feature = "compare")]
    "limitador-cached",
];
/// The limit of the accuracy phase, per hour.
const ACCURACY_LIMIT: u64 = 100;
/// Requests of the accuracy phase's one client, over both instances.
const ACCURACY_REQUESTS: usize = 1000;

/// One instance of `variant` for the accuracy phase: its own connection,
/// its own in-process state.
async fn accuracy_instance(variant: &str, url: &str) -> Router {
    match variant {
        "rl-redis" | "rl-memory" => {
            let cache = match variant {
                "rl-redis" => Cache::builder()
                    .redis_url(url)
                    .expect("url")
                    .timeout(STORE_TIMEOUT)
                    .build()
                    .await
                    .expect("cache"),
                _ => Cache::in_memory(),
            };
            let store_timeout = STORE_TIMEOUT.min(cache.timeout());
            let layer = RateLimitLayer::builder(cache)
                .limit(ACCURACY_LIMIT)
                .window(WINDOW)
                .prefix("acc")
                .trusted_proxies([TRUSTED_PROXY])
                .store_timeout(store_timeout)
                .build()
                .expect("layer");
            hello().layer(layer)
        }
        "naive" => {
            let conn = redis::Client::open(url)
                .expect("redis url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let state = Naive {
                conn,
                window: WINDOW,
                limit: ACCURACY_LIMIT,
            };
            hello().layer(middleware::from_fn_with_state(state, naive))
        }
        #[cfg(feature = "compare")]
        "governor" => {
            use tower_governor::governor::GovernorConfigBuilder;
            use tower_governor::key_extractor::SmartIpKeyExtractor;
            let config = GovernorConfigBuilder::default()
                .key_extractor(SmartIpKeyExtractor)
                .per_second(WINDOW.as_secs() / ACCURACY_LIMIT)
                .burst_size(ACCURACY_LIMIT as u32)
                .finish()
                .expect("governor config");
            hello().layer(tower_governor::GovernorLayer::new(config))
        }
        #[cfg(feature = "compare")]
        "limitador" => peer::limitador(hello(), peer::limitador_exact(url).await, ACCURACY_LIMIT),
        #[cfg(feature = "compare")]
        "limitador-cached" => {
            peer::limitador(hello(), peer::limitador_cached(url).await, ACCURACY_LIMIT)
        }
        shared::ROW => shared::accuracy_instance(url).await,
        other => panic!("no accuracy variant {other}"),
    }
}

/// Kuadrant's `limitador` (vendored with a fix: benches/vendor/limitador)
/// as an axum middleware keyed like the others: one limit of the namespace
/// `bench`, its variable `ip` the client address from `X-Forwarded-For`.
#[cfg(feature = "compare")]
mod peer {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::Router;
    use axum::extract::{ConnectInfo, Request, State};
    use axum::http::StatusCode;
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use benches::limiters::client_ip;
    use limitador::AsyncRateLimiter;
    use limitador::limit::{Context, Limit, Namespace};
    use limitador::storage::AsyncCounterStorage;
    use limitador::storage::redis::{AsyncRedisStorage, CachedRedisStorageBuilder};

    use super::WINDOW;

    /// Its exact storage: a Lua script per check.
    pub async fn limitador_exact(url: &str) -> Box<dyn AsyncCounterStorage> {
        Box::new(
            AsyncRedisStorage::new(url)
                .await
                .expect("limitador redis storage"),
        )
    }

    /// Its cached storage, with its defaults: counts kept in process and
    /// flushed to Redis every second.
    pub async fn limitador_cached(url: &str) -> Box<dyn AsyncCounterStorage> {
        Box::new(
            CachedRedisStorageBuilder::new(url)
                .build()
                .await
                .expect("limitador cached storage"),
        )
    }

    #[derive(Clone)]
    struct Limiter {
        limiter: Arc<AsyncRateLimiter>,
        namespace: Namespace,
    }

    /// `app` behind a limitador of `limit` per window on `storage`.
    pub fn limitador(app: Router, storage: Box<dyn AsyncCounterStorage>, limit: u64) -> Router {
        let limiter = AsyncRateLimiter::new_with_storage(storage);
        let by_ip = "ip".try_into().expect("a CEL variable");
        limiter.add_limit(Limit::new("bench", limit, WINDOW.as_secs(), [], [by_ip]));
        let state = Limiter {
            limiter: Arc::new(limiter),
            namespace: "bench".into(),
        };
        app.layer(middleware::from_fn_with_state(state, check))
    }

    /// 429 when limited; fails open.
    async fn check(
        State(state): State<Limiter>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        request: Request,
        next: Next,
    ) -> Response {
        let ip = client_ip(&request, peer).to_string();
        let limited = AssertSend(async move {
            let values = HashMap::from([("ip".to_string(), ip)]);
            let context: Context<'_> = values.into();
            let result = state
                .limiter
                .check_rate_limited_and_update(&state.namespace, &context, 1)
                .await;
            matches!(result, Ok(result) if result.limited)
        })
        .await;
        if limited {
            return StatusCode::TOO_MANY_REQUESTS.into_response();
        }
        next.run(request).await
    }

    /// limitador's CEL `Context` is not `Sync` (its `cel::Context` may hold
    /// a `&dyn VariableResolver`), so a future holding it across an await is
    /// not `Send`, which axum requires; its servers run on a thread-per-core
    /// runtime. The future here builds the context itself, sets no resolver
    /// and only ever runs inside this one task: moving it between threads
    /// moves everything it refers to with it.
    struct AssertSend<F>(F);

    // SAFETY: see above: nothing the future holds is shared with another
    // task or thread.
    unsafe impl<F> Send for AssertSend<F> {}

    impl<F: std::future::Future> std::future::Future for AssertSend<F> {
        type Output = F::Output;

        fn poll(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            // SAFETY: structural pinning of the only field; never moved out.
            unsafe { self.map_unchecked_mut(|wrapper| &mut wrapper.0) }.poll(cx)
        }
    }
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

struct EvalSha {
    conn: MultiplexedConnection,
    script: redis::Script,
}

/// One `EVALSHA` of the window script per request, no coalescing.
async fn evalsha(
    State(state): State<std::sync::Arc<EvalSha>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let key = format!("bench:evalsha:{}", client_ip(&request, peer));
    let mut conn = state.conn.clone();
    let count: redis::RedisResult<(u64, i64)> = state
        .script
        .key(&key)
        .arg(1)
        .arg(WINDOW.as_millis() as u64)
        .arg(NORMAL_LIMIT)
        .invoke_async(&mut conn)
        .await;
    match count {
        Ok((count, _)) if count > NORMAL_LIMIT => StatusCode::TOO_MANY_REQUESTS.into_response(),
        _ => next.run(request).await,
    }
}

// ---------------------------------------------------------------------------
// The load generator and the measurements.
// ---------------------------------------------------------------------------

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of process `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Context switches of process `pid` so far (voluntary and not, every
/// thread): how often its threads parked and were woken.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The commands that run only inside the scripts of this benchmark (the raw
/// `EVALSHA` row's, and the layer's `limits.lua`: `TIME`, `MGET`, `SET`,
/// `PEXPIREAT`, and its repairs; the naive pipeline sends `INCR` and
/// `EXPIRE`).
const SCRIPT_INNER: &[&str] = &[
    "incrby",
    "pttl",
    "pexpire",
    "set",
    "get",
    "mget",
    "pexpiretime",
    "pexpireat",
    "del",
    "time",
];

/// What `INFO commandstats` says Redis has run, leaving out `INFO` (ours):
/// per command its calls and its µs in `redis-server`.
#[derive(Default, Clone)]
struct Commands(std::collections::BTreeMap<String, (u64, u64)>);

impl Commands {
    /// Scripts ran (`EVALSHA`, `EVAL`, `FCALL`): then [`SCRIPT_INNER`]'s
    /// commands are taken for their `redis.call`s; without scripts every
    /// command was sent by a client (the layer's pipelined fixed window
    /// sends `INCRBY`, `PEXPIRE`, `PTTL` itself).
    fn scripts(&self) -> bool {
        ["evalsha", "eval", "fcall"]
            .iter()
            .any(|name| self.0.get(*name).is_some_and(|&(calls, _)| calls > 0))
    }

    /// (sent by clients, run inside scripts). `INFO commandstats` counts a
    /// script's `redis.call`s as commands of their own, so an `EVALSHA` is
    /// one command sent and its `INCRBY`, `PTTL` (and `PEXPIRE`) are
    /// counted apart.
    fn sent_and_inner(&self) -> (u64, u64) {
        let scripts = self.scripts();
        let (mut sent, mut inner) = (0, 0);
        for (name, &(calls, _)) in &self.0 {
            if scripts && SCRIPT_INNER.contains(&name.as_str()) {
                inner += calls;
            } else {
                sent += calls;
            }
        }
        (sent, inner)
    }

    /// µs in `redis-server` of the commands sent (a script's time holds
    /// its `redis.call`s').
    fn sent_usec(&self) -> u64 {
        let scripts = self.scripts();
        self.0
            .iter()
            .filter(|(name, _)| !(scripts && SCRIPT_INNER.contains(&name.as_str())))
            .map(|(_, &(_, usec))| usec)
            .sum()
    }

    /// What ran between `before` and `self`.
    fn since(&self, before: &Commands) -> Commands {
        Commands(
            self.0
                .iter()
                .map(|(name, &(calls, usec))| {
                    let (c0, u0) = before.0.get(name).copied().unwrap_or((0, 0));
                    (name.clone(), (calls - c0, usec - u0))
                })
                .filter(|(_, (calls, _))| *calls > 0)
                .collect(),
        )
    }

    fn add(&mut self, other: &Commands) {
        for (name, &(calls, usec)) in &other.0 {
            let entry = self.0.entry(name.clone()).or_default();
            entry.0 += calls;
            entry.1 += usec;
        }
    }
}

async fn redis_commands(conn: &mut MultiplexedConnection) -> Commands {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    let field = |stats: &str, name: &str| -> u64 {
        stats
            .split(',')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    let mut commands = Commands::default();
    for line in info.lines() {
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        if name != "info" {
            commands.0.insert(
                name.to_string(),
                (field(stats, "calls"), field(stats, "usec")),
            );
        }
    }
    commands
}

/// The service process and its ports.
struct Services {
    child: Child,
    ports: HashMap<String, u16>,
}

impl Services {
    fn start(url: &str) -> Services {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(["--serve", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the service process");
        let stdout = child.stdout.take().expect("child stdout");
        let mut ports = HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            if line == "ready" {
                break;
            }
            if let Some((id, port)) = line.split_once(' ') {
                ports.insert(id.to_string(), port.parse().expect("port"));
            }
        }
        Services { child, ports }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        // Closing its standard input ends it (after it printed its layers'
        // counters); kill it if it does not within a few seconds.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Closed loop: `CONNECTIONS` keep-alive connections, each sending its next
/// request when the previous is answered, cycling through `addresses` (each
/// connection from its own offset). Returns (requests done, share answered 429).
async fn load(port: u16, addresses: &std::sync::Arc<Vec<String>>) -> (u64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let addresses = addresses.clone();
            tokio::spawn(async move {
                let mut conn = Connection::open(port).await.expect("connect");
                let (mut done, mut limited) = (0u64, 0u64);
                let mut next = c * addresses.len() / CONNECTIONS;
                while started.elapsed() < ROUND {
                    let address = addresses[next % addresses.len()].as_str();
                    next += 1;
                    let response = conn
                        .request("/", &[("X-Forwarded-For", address)], Duration::from_secs(5))
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
    (done, limited as f64 / done.max(1) as f64)
}

/// Open loop: `LATENCY_RATE` requests per second in all, spread evenly over
/// `CONNECTIONS` connections, for `LATENCY_RUN`. Returns each request's
/// latency (from just before its write to the end of its response).
async fn fixed_rate(port: u16, addresses: &std::sync::Arc<Vec<String>>) -> Vec<Duration> {
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / LATENCY_RATE as f64);
    let per_connection = (LATENCY_RUN.as_secs_f64() / interval.as_secs_f64()) as u32;
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let addresses = addresses.clone();
            tokio::spawn(async move {
                let mut conn = Connection::open(port).await.expect("connect");
                let offset = interval.mul_f64(c as f64 / CONNECTIONS as f64);
                let first = c * addresses.len() / CONNECTIONS;
                let mut latencies = Vec::with_capacity(per_connection as usize);
                for k in 0..per_connection {
                    tokio::time::sleep_until(start + offset + interval * k).await;
                    let address = addresses[(first + k as usize) % addresses.len()].as_str();
                    let sent = Instant::now();
                    conn.request("/", &[("X-Forwarded-For", address)], Duration::from_secs(5))
                        .await
                        .expect("request");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client"));
    }
    all
}

/// One scenario's results per row.
#[derive(Default)]
struct Row {
    /// Requests per second, one per round.
    rps: Series,
    /// CPU µs per request (service + Redis), one per round.
    cpu: Series,
    service_ticks: u64,
    redis_ticks: u64,
    /// Context switches of the service process.
    switches: u64,
    requests: u64,
    /// Commands sent to Redis.
    commands: u64,
    /// Commands run inside scripts.
    inner_commands: u64,
    /// What `INFO commandstats` counted, summed over the rounds.
    command_stats: Commands,
    limited: f64,
    /// Latencies of every fixed-rate run, pooled.
    latencies: Vec<Duration>,
    /// (p50, p99) of each fixed-rate run, in µs.
    runs: Vec<(f64, f64)>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn measure() {
    let server = tests::RedisServer::start();
    let services = Services::start(&server.url());
    let mut admin = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut admin)
        .await
        .expect("INFO server");
    let redis_pid: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("redis process_id");
    eprintln!(
        "service process pid {}, redis-server pid {redis_pid}",
        services.pid()
    );
    let ticks_per_second = clock_ticks();
    let scenarios = scenarios();
    let rounds = env_number("BENCH_ROUNDS", ROUNDS);
    let mut results: Vec<Vec<Row>> = scenarios
        .iter()
        .map(|s| s.rows.iter().map(|_| Row::default()).collect())
        .collect();
    let pools: Vec<std::sync::Arc<Vec<String>>> = scenarios
        .iter()
        .map(|s| std::sync::Arc::new(s.addresses.clone()))
        .collect();

    for _ in 0..rounds {
        for (s, scenario) in scenarios.iter().enumerate() {
            for (r, id) in scenario.rows.iter().enumerate() {
                let port = services.ports[*id];
                let commands = redis_commands(&mut admin).await;
                let (service, redis) = (cpu_ticks(services.pid()), cpu_ticks(redis_pid));
                let switches = context_switches(services.pid());
                let started = Instant::now();
                let (done, limited) = load(port, &pools[s]).await;
                let elapsed = started.elapsed();
                let (service, redis) = (
                    cpu_ticks(services.pid()) - service,
                    cpu_ticks(redis_pid) - redis,
                );
                let switches = context_switches(services.pid()) - switches;
                let ran = redis_commands(&mut admin).await.since(&commands);
                let row = &mut results[s][r];
                row.rps.rounds.push(done as f64 / elapsed.as_secs_f64());
                row.cpu
                    .rounds
                    .push((service + redis) as f64 / ticks_per_second * 1e6 / done.max(1) as f64);
                row.service_ticks += service;
                row.redis_ticks += redis;
                row.switches += switches;
                row.requests += done;
                let (sent, inner) = ran.sent_and_inner();
                row.commands += sent;
                row.inner_commands += inner;
                row.command_stats.add(&ran);
                row.limited = limited;
            }
        }
    }
    if env_number("BENCH_LATENCY", 1) != 0 {
        for _ in 0..LATENCY_ROUNDS {
            for (s, scenario) in scenarios.iter().enumerate() {
                if !scenario.latency {
                    continue;
                }
                for (r, id) in scenario.rows.iter().enumerate() {
                    let mut latencies = fixed_rate(services.ports[*id], &pools[s]).await;
                    latencies.sort();
                    let row = &mut results[s][r];
                    row.runs.push((
                        micros(percentile(&latencies, 0.5)),
                        micros(percentile(&latencies, 0.99)),
                    ));
                    row.latencies.extend(latencies);
                }
            }
        }
    }
    let accuracy = if env_number("BENCH_ACCURACY", 1) != 0 {
        let mut admitted = Vec::new();
        for (index, variant) in ACCURACY_VARIANTS.iter().enumerate() {
            let ports = [
                services.ports[&format!("acc-{variant}-a")],
                services.ports[&format!("acc-{variant}-b")],
            ];
            // One client of its own per variant: keys never shared between rows.
            admitted.push((*variant, over_two(ports, format!("10.253.0.{index}")).await));
        }
        admitted
    } else {
        Vec::new()
    };

    println!(
        "\nHTTP GET / on loopback, {CONNECTIONS} keep-alive connections, {rounds} rounds of {ROUND:?}; \
         service in its own process; CPU = utime + stime of the service process and redis-server \
         (load generator not counted); ratios are medians of per-round ratios to the first row"
    );
    for (scenario, rows) in scenarios.iter().zip(&mut results) {
        println!("\n### {}\n", scenario.title);
        println!(
            "| variant | req/s | throughput vs first row | CPU µs/request (service + Redis) | service | Redis | CPU vs first row | Redis commands sent/request | run inside scripts/request | service context switches/request | 429 share |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        let baseline = |series: &Series| Series {
            name: String::new(),
            rounds: series.rounds.clone(),
        };
        let (base_rps, base_cpu) = (baseline(&rows[0].rps), baseline(&rows[0].cpu));
        for (id, row) in scenario.rows.iter().zip(rows.iter()) {
            let per =
                |ticks: u64| ticks as f64 / ticks_per_second * 1e6 / row.requests.max(1) as f64;
            println!(
                "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} | {:.3} | {:.3} | {:.2} | {:.1} % |",
                name_of(id),
                row.rps.median(),
                row.rps.ratio_to(&base_rps),
                row.cpu.median(),
                per(row.service_ticks),
                per(row.redis_ticks),
                row.cpu.ratio_to(&base_cpu),
                row.commands as f64 / row.requests.max(1) as f64,
                row.inner_commands as f64 / row.requests.max(1) as f64,
                row.switches as f64 / row.requests.max(1) as f64,
                row.limited * 100.0,
            );
        }
        if rows.iter().any(|row| !row.command_stats.0.is_empty()) {
            println!(
                "\nredis-server's own time from `INFO commandstats` (µs of the commands \
                 sent, a script's with its `redis.call`s; per command: calls per request, \
                 µs per call)\n"
            );
            println!("| variant | commandstats µs/request | per command |");
            println!("| --- | ---: | --- |");
            for (id, row) in scenario.rows.iter().zip(rows.iter()) {
                let stats = &row.command_stats;
                if stats.0.is_empty() {
                    continue;
                }
                let requests = row.requests.max(1) as f64;
                let each: Vec<String> = stats
                    .0
                    .iter()
                    .map(|(name, &(calls, usec))| {
                        format!(
                            "{name} {:.3} × {:.2} µs",
                            calls as f64 / requests,
                            usec as f64 / calls.max(1) as f64
                        )
                    })
                    .collect();
                println!(
                    "| {} | {:.2} | {} |",
                    name_of(id),
                    stats.sent_usec() as f64 / requests,
                    each.join(", ")
                );
            }
        }
        if scenario.latency && rows.iter().any(|r| !r.latencies.is_empty()) {
            println!(
                "\nlatency at {LATENCY_RATE} req/s offered (open loop, {CONNECTIONS} connections, \
                 {LATENCY_ROUNDS} runs of {LATENCY_RUN:?}); p50/p99 over all runs' requests; \
                 added = the median over runs of the row's p50/p99 minus the first row's in the same pass\n"
            );
            println!("| variant | p50 µs | p99 µs | added p50 µs | added p99 µs |");
            println!("| --- | ---: | ---: | ---: | ---: |");
            for row in rows.iter_mut() {
                row.latencies.sort();
            }
            let base_runs = rows[0].runs.clone();
            for (id, row) in scenario.rows.iter().zip(rows.iter()) {
                let added = |pick: fn(&(f64, f64)) -> f64| {
                    let mut deltas: Vec<f64> = row
                        .runs
                        .iter()
                        .zip(&base_runs)
                        .map(|(run, base)| pick(run) - pick(base))
                        .collect();
                    deltas.sort_by(f64::total_cmp);
                    deltas.get(deltas.len() / 2).copied().unwrap_or(0.0)
                };
                println!(
                    "| {} | {:.0} | {:.0} | {:+.0} | {:+.0} |",
                    name_of(id),
                    micros(percentile(&row.latencies, 0.5)),
                    micros(percentile(&row.latencies, 0.99)),
                    added(|r| r.0),
                    added(|r| r.1),
                );
            }
        }
    }
    if !accuracy.is_empty() {
        println!(
            "\n### Accuracy across two instances: {ACCURACY_REQUESTS} requests of one client, \
             limit {ACCURACY_LIMIT} per hour, over two instances ({CONNECTIONS} connections, \
             alternately to each)\n"
        );
        println!("| variant | admitted | over the limit |");
        println!("| --- | ---: | ---: |");
        for (variant, admitted) in accuracy {
            let name = match variant {
                "rl-redis" => "`RateLimitLayer`, Redis",
                "rl-memory" => "`RateLimitLayer`, in-memory store (one store per instance)",
                other => name_of(other),
            };
            println!(
                "| {name} | {admitted} | {:+} |",
                admitted as i64 - ACCURACY_LIMIT as i64
            );
        }
    }
    if env_number("BENCH_SHARED", 1) != 0 {
        shared::four_instances(&server.url(), &mut admin, redis_pid, ticks_per_second).await;
    }
}

/// Sends `ACCURACY_REQUESTS` requests of `address` over `CONNECTIONS`
/// connections, each to one of the two `ports` in turn; the requests admitted.
async fn over_two(ports: [u16; 2], address: String) -> u64 {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (sent, address) = (sent.clone(), address.clone());
            tokio::spawn(async move {
                let mut conn = Connection::open(ports[c % 2]).await.expect("connect");
                let mut admitted = 0u64;
                while sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < ACCURACY_REQUESTS {
                    let response = conn
                        .request(
                            "/",
                            &[("X-Forwarded-For", &address)],
                            Duration::from_secs(5),
                        )
                        .await
                        .expect("request");
                    admitted += u64::from(response.status == 200);
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.expect("client");
    }
    admitted
}

// ---------------------------------------------------------------------------
// Shared counting (issue 21, item 2): its rows and its 4-instance phase, kept
// apart from the rest so that the exact path's changes merge around them.
// ---------------------------------------------------------------------------

/// `RateLimitLayer` with shared counting: its rows in the many-clients and
/// hot-client scenarios and in the accuracy phase (one layer per instance,
/// counts exchanged through Redis in the background), and a phase of its
/// own: 4 instances of the service (processes) on one Redis, 10 000 clients
/// and one hot client over their limits, every admission counted per
/// client and window against the stated bound.
mod shared {
    use std::time::{SystemTime, UNIX_EPOCH};

    use rate_limit::SharedCounting;

    use super::*;

    /// The row's id.
    pub const ROW: &str = "rl-shared";
    const NAME: &str = "`RateLimitLayer`, shared counting (Redis)";

    /// Instances of the 4-instance phase (processes).
    const INSTANCES: usize = 4;
    /// The crowd's policy: 10 000 clients, each over it in most windows.
    const CROWD_LIMIT: u64 = 20;
    const CROWD_WINDOW: Duration = Duration::from_secs(10);
    /// The hot client's policy: one client sending far more.
    const HOT_LIMIT: u64 = 10_000;
    const HOT_WINDOW: Duration = Duration::from_secs(10);
    /// Connections of the `CONNECTIONS` that send the hot client's requests.
    const HOT_CONNECTIONS: usize = 8;
    /// Admissions this close to a window's edge by the handler's clock are
    /// counted apart.
    const EDGE: Duration = Duration::from_millis(1);
    /// The phase's length (`BENCH_SHARED_SECONDS`).
    const PHASE_SECONDS: usize = 30;

    /// The row's name, for `name_of`.
    pub fn name(id: &str) -> Option<&'static str> {
        (id == ROW).then_some(NAME)
    }

    /// The shared counting's row, after the in-memory store's, in the
    /// many-clients and hot-client scenarios.
    pub fn add_rows(list: &mut [Scenario]) {
        for scenario in list
            .iter_mut()
            .filter(|s| s.key == "many" || s.key == "hot")
        {
            let at = scenario
                .rows
                .iter()
                .position(|id| *id == "rl-memory")
                .map_or(scenario.rows.len(), |i| i + 1);
            scenario.rows.insert(at, ROW);
        }
    }

    /// A layer with the default shared counting (flushes every 10 ms, an
    /// allowance of 5 % of the limit), keyed like the other rows.
    fn layer(cache: Cache, prefix: &str, limit: u64, window: Duration) -> RateLimitLayer {
        builder(cache, prefix, limit, window)
            .build()
            .expect("layer")
    }

    fn builder(
        cache: Cache,
        prefix: &str,
        limit: u64,
        window: Duration,
    ) -> rate_limit::RateLimitLayerBuilder {
        RateLimitLayer::builder(cache)
            .prefix(prefix)
            .limit(limit)
            .window(window)
            .trusted_proxies([TRUSTED_PROXY])
            .shared_counting(SharedCounting::new())
            .store_timeout(STORE_TIMEOUT)
    }

    /// A layer of the 4-instance phase: its `X-RateLimit-Reset` is the Unix
    /// time its window ends, which names the window the instance counted
    /// an admission in.
    fn phase_layer(cache: Cache, prefix: &str, limit: u64, window: Duration) -> RateLimitLayer {
        builder(cache, prefix, limit, window)
            .reset_header(rate_limit::ResetFormat::EpochSeconds)
            .build()
            .expect("layer")
    }

    async fn redis_cache(url: &str) -> Cache {
        Cache::builder()
            .redis_url(url)
            .expect("url")
            .timeout(STORE_TIMEOUT)
            .build()
            .await
            .expect("cache")
    }

    /// Serves the row of the many-clients and hot-client scenarios.
    pub async fn serve_rows(
        url: &str,
        ports: &mut Vec<(&'static str, u16)>,
        layers: &mut Vec<(&'static str, RateLimitLayer)>,
    ) {
        let layer = layer(redis_cache(url).await, "shared", NORMAL_LIMIT, WINDOW);
        layers.push((ROW, layer.clone()));
        ports.push((ROW, serve(hello().layer(layer)).await));
    }

    /// One instance of the accuracy phase (the two share their counts
    /// through Redis).
    pub async fn accuracy_instance(url: &str) -> Router {
        hello().layer(layer(
            redis_cache(url).await,
            "acc-shared",
            ACCURACY_LIMIT,
            WINDOW,
        ))
    }

    /// The handler behind the phase's layers: reached only when admitted,
    /// it says when (µs since the epoch), which names the window.
    async fn admitted() -> impl IntoResponse {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (
            [(
                HeaderName::from_static("x-admitted-at"),
                HeaderValue::from(at),
            )],
            "Hello, World!",
        )
    }

    /// One instance of the 4-instance phase (`--serve-instance <url>
    /// <prefix>`): `/crowd` and `/hot` behind their policies, on a handle
    /// of its own; prints `instance <port>` and `ready`, serves until its
    /// standard input closes, then prints its layers' counters.
    pub async fn serve_instance(url: &str, prefix: &str) {
        let cache = redis_cache(url).await;
        let crowd = phase_layer(
            cache.clone(),
            &format!("{prefix}-crowd"),
            CROWD_LIMIT,
            CROWD_WINDOW,
        );
        let hot = phase_layer(cache, &format!("{prefix}-hot"), HOT_LIMIT, HOT_WINDOW);
        let app = Router::new()
            .route("/crowd", get(admitted))
            .route_layer(crowd.clone())
            .merge(
                Router::new()
                    .route("/hot", get(admitted))
                    .route_layer(hot.clone()),
            );
        println!("instance {}", serve(app).await);
        println!("ready");
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .expect("stdin watcher");
        eprintln!("instance crowd: {:?}", crowd.stats());
        eprintln!("instance hot: {:?}", hot.stats());
    }

    /// An admission: the client (the hot client is `CLIENTS`), when its
    /// handler ran (µs since the epoch), and when the instance said its
    /// window ends (s since the epoch, rounded up).
    type Admission = (u32, u64, u64);

    /// What a connection of the phase saw.
    #[derive(Default)]
    struct Seen {
        admitted: Vec<Admission>,
        denied: u64,
        failed_open: u64,
    }

    /// The phase: 4 instance processes on `url`'s Redis, `CONNECTIONS`
    /// connections spread over them (`HOT_CONNECTIONS` of them sending the
    /// hot client's requests, the others cycling through the 10 000
    /// addresses), closed loop; then every admission counted per client
    /// and window against the bound. Prints its tables.
    pub async fn four_instances(
        url: &str,
        admin: &mut MultiplexedConnection,
        redis_pid: u32,
        ticks_per_second: f64,
    ) {
        let seconds = env_number("BENCH_SHARED_SECONDS", PHASE_SECONDS);
        let prefix = format!(
            "phase{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        let exe = std::env::current_exe().expect("current exe");
        let instances: Vec<Services> = (0..INSTANCES)
            .map(|_| {
                let mut child = Command::new(&exe)
                    .args(["--serve-instance", url, &prefix])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("start an instance");
                let stdout = child.stdout.take().expect("child stdout");
                let mut ports = HashMap::new();
                for line in BufReader::new(stdout).lines() {
                    let line = line.expect("instance output");
                    if line == "ready" {
                        break;
                    }
                    if let Some(port) = line.strip_prefix("instance ") {
                        ports.insert("instance".to_string(), port.parse().expect("port"));
                    }
                }
                Services { child, ports }
            })
            .collect();
        let ports: Vec<u16> = instances.iter().map(|i| i.ports["instance"]).collect();
        let pids: Vec<u32> = instances.iter().map(Services::pid).collect();
        let addresses: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
            (0..CLIENTS)
                .map(|i| format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255))
                .collect(),
        );
        let hot_address = "10.252.0.1";
        let commands = redis_commands(admin).await;
        let cpu = |pids: &[u32]| pids.iter().map(|pid| cpu_ticks(*pid)).sum::<u64>();
        let (service_before, redis_before) = (cpu(&pids), cpu_ticks(redis_pid));
        let phase = Duration::from_secs(seconds as u64);
        let started = Instant::now();
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let addresses = addresses.clone();
                let port = ports[c % INSTANCES];
                tokio::spawn(async move {
                    let hot = c < HOT_CONNECTIONS;
                    let mut conn = Connection::open(port).await.expect("connect");
                    let mut seen = Seen::default();
                    let mut next = c * addresses.len() / CONNECTIONS;
                    while started.elapsed() < phase {
                        let (path, client, address) = if hot {
                            ("/hot", CLIENTS as u32, hot_address)
                        } else {
                            let i = next % addresses.len();
                            next += 1;
                            ("/crowd", i as u32, addresses[i].as_str())
                        };
                        let response = conn
                            .request(
                                path,
                                &[("X-Forwarded-For", address)],
                                Duration::from_secs(5),
                            )
                            .await
                            .expect("request");
                        match response.status {
                            200 if response.header("x-ratelimit-limit").is_none() => {
                                seen.failed_open += 1;
                            }
                            200 => {
                                let at = response.number("x-admitted-at");
                                let ends = response.number("x-ratelimit-reset");
                                seen.admitted.push((client, at, ends));
                            }
                            429 => seen.denied += 1,
                            other => panic!("status {other} from an instance"),
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut all = Seen::default();
        for task in tasks {
            let seen = task.await.expect("connection");
            all.admitted.extend(seen.admitted);
            all.denied += seen.denied;
            all.failed_open += seen.failed_open;
        }
        let elapsed = started.elapsed();
        let (service, redis) = (
            cpu(&pids) - service_before,
            cpu_ticks(redis_pid) - redis_before,
        );
        let (sent, inner) = redis_commands(admin)
            .await
            .since(&commands)
            .sent_and_inner();
        drop(instances);
        let requests = all.admitted.len() as u64 + all.denied + all.failed_open;
        let per = |ticks: u64| ticks as f64 / ticks_per_second * 1e6 / requests.max(1) as f64;
        println!(
            "\n### Shared counting: 4 instances on one Redis, 10 000 clients and one hot client, \
             every admission per client and window against the bound\n"
        );
        println!(
            "{INSTANCES} instance processes of the service (shared counting, default settings: \
             flush every 10 ms, allowance 5 % of the limit), {CONNECTIONS} keep-alive connections \
             spread over them ({HOT_CONNECTIONS} sending the hot client's requests), closed loop, \
             {seconds} s; each admission counted in the window the instance counted it in \
             (its `X-RateLimit-Reset`, the Unix time the window ends); the last column, \
             admissions whose handler ran in another window by the machine's clock (the \
             instance's estimate of Redis' clock off by up to half a round trip)\n"
        );
        println!(
            "| requests | req/s | admitted | denied | failed open | CPU µs/request (4 services + Redis) | services | Redis | Redis commands sent/request | run inside scripts/request |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {requests} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.4} | {:.3} |",
            requests as f64 / elapsed.as_secs_f64(),
            all.admitted.len(),
            all.denied,
            all.failed_open,
            per(service + redis),
            per(service),
            per(redis),
            sent as f64 / requests.max(1) as f64,
            inner as f64 / requests.max(1) as f64,
        );
        println!("\n4 instances: admitted per client and window, against the bound");
        println!(
            "\n| variant | policy | bound (limit + 3 × allowance) | windows counted | windows at the limit or over | admitted in those: fewest | mean | most | most admitted, ratio to the bound | windows over the bound | admissions within {EDGE:?} of an edge | in another window by the clock |"
        );
        println!(
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let shared = SharedCounting::new();
        for (name, hot, limit, window) in [
            ("10 000 clients", false, CROWD_LIMIT, CROWD_WINDOW),
            ("one hot client", true, HOT_LIMIT, HOT_WINDOW),
        ] {
            let bound = shared.over_admission_bound(INSTANCES as u64, limit);
            let (counts, near_edge, elsewhere) = per_window(&all.admitted, hot, window);
            let at_limit: Vec<u64> = counts.values().copied().filter(|n| *n >= limit).collect();
            let most = counts.values().copied().max().unwrap_or(0);
            let over = counts.values().filter(|n| **n > bound).count();
            println!(
                "| {name} | {limit} per {window:?} | {bound} | {} | {} | {} | {:.2} | {most} | {:.3} | {over} | {near_edge} | {elsewhere} |",
                counts.len(),
                at_limit.len(),
                at_limit.iter().copied().min().unwrap_or(0),
                at_limit.iter().sum::<u64>() as f64 / at_limit.len().max(1) as f64,
                most as f64 / bound as f64,
            );
        }
    }

    /// Admissions per (client, window) of the crowd (`hot` false) or the hot
    /// client, in the window the instance named; how many were within
    /// `EDGE` of a window's edge by the handler's clock, and how many the
    /// handler's clock puts in another window.
    fn per_window(
        admitted: &[Admission],
        hot: bool,
        window: Duration,
    ) -> (HashMap<(u32, u64), u64>, u64, u64) {
        let seconds = window.as_secs();
        let window = window.as_micros() as u64;
        let edge = EDGE.as_micros() as u64;
        let mut counts: HashMap<(u32, u64), u64> = HashMap::new();
        let (mut near_edge, mut elsewhere) = (0, 0);
        for &(client, at, ends) in admitted {
            if (client == CLIENTS as u32) != hot {
                continue;
            }
            // The end rounded up to a second: the window's own end, or a
            // second past it when the instance's clock is behind Redis'.
            let named = ((ends + seconds / 2) / seconds).saturating_sub(1);
            *counts.entry((client, named)).or_default() += 1;
            let into = at % window;
            near_edge += u64::from(into < edge || window - into < edge);
            elsewhere += u64::from(at / window != named);
        }
        (counts, near_edge, elsewhere)
    }
}
