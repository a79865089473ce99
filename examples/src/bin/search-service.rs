//! The example service: `cargo run --release -p examples --bin search-service`.
//!
//! `GET /search?q=...&k=...` ranks a corpus shipped with the repository (BM25
//! plus embedding cosine); `GET /embed?text=...` returns the embedding of a
//! text. `SearchService::search` and `Embedder::embed` are memoized with
//! `#[cached]`, and `/embed` shares its entries with `/search`. Every client IP
//! gets `RATE_LIMIT` requests (default 100) per `RATE_LIMIT_WINDOW_SECS`
//! (default 60), ten times that on the paid plan (an `X-Api-Key` from a
//! static table); `POST /login` is charged only when it fails
//! (`LOGIN_FAILURES` per minute, default 5). Uses Redis when `REDIS_URL` / `REDIS_CLUSTER_URLS` /
//! `REDIS_HOST` is set and the embedded in-memory store otherwise; serves
//! HTTP/1.1 and HTTP/2 on `HOST:PORT` (default `0.0.0.0:3000`). `--help` lists
//! every setting.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use cache_core::Cache;
use examples::search::{Hit, SearchService};
use examples::server::{self, ServerSettings};
use examples::{Invocation, LogFormat};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use rate_limit::{Quota, RateLimitLayer, RequestInfo, ResponseInfo};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const USAGE: &str = "\
search-service: memoized search and embeddings behind a per-IP rate limit.

Usage: search-service [--help]

Endpoints:
  GET /search?q=TEXT&k=N   the N (1 to 50, default 5) best documents for TEXT
  GET /embed?text=TEXT     the embedding of TEXT: {\"dimensions\":384,\"embedding\":[...]}
  GET /health              the cache's state
  GET /stats               cache, computation and rate-limit counters
  GET /metrics             the same and more, in the Prometheus text format
  POST /login              {\"user\":...,\"password\":...}: 200, or 401 (the demo account:
                           user `demo`, password DEMO_PASSWORD)

Rate limit:
  RATE_LIMIT               requests per window and client IP [default: 100];
                           ten times that with `X-Api-Key: demo-paid-key` (the paid plan)
  RATE_LIMIT_WINDOW_SECS   the window [default: 60]
  LOGIN_FAILURES           failed logins per minute and client IP [default: 5]
  DEMO_PASSWORD            the demo account's password [default: demo]
";

/// The API keys and their plans: a static table standing in for the
/// accounts an authentication layer would look up.
const API_KEYS: &[(&str, &str)] = &[("demo-paid-key", "paid")];

/// The plan of an authenticated request: what `resolve_plan` puts into the
/// request for the rate limiter's `plan_for`.
#[derive(Clone, Copy)]
struct Plan(&'static str);

/// Longest text `/search` and `/embed` accept, in bytes.
const MAX_TEXT_BYTES: usize = 500;

/// Buckets of the `*.duration` histograms, in seconds: 50 µs to 5 s, so that
/// a hit on the in-memory store and a Redis timeout both land in one.
const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The `Content-Type` of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct App {
    cache: Cache,
    search: Arc<SearchService>,
    limiter: RateLimitLayer,
    login_limiter: RateLimitLayer,
    /// The demo account's password (never logged).
    demo_password: Arc<str>,
}

fn main() -> ExitCode {
    // `--help` prints every setting and exits before anything starts; the
    // settings themselves come from the environment.
    match examples::parse_args(std::env::args().skip(1)) {
        Ok(Invocation::Serve) => {}
        Ok(Invocation::Help) => {
            print!("{USAGE}\n{}\n{}", examples::CACHE_USAGE, server::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprint!(
                "error: {err}\n\n{USAGE}\n{}\n{}",
                examples::CACHE_USAGE,
                server::USAGE
            );
            return ExitCode::from(2);
        }
    }
    match LogFormat::from_env() {
        Ok(format) => examples::init_tracing(format),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve());
    // Tasks still running are cancelled; a blocking one (a DNS lookup) gets a
    // moment, not a say in when the process exits.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), Box<dyn Error>> {
    // A bad setting fails here, before anything starts.
    let settings = ServerSettings::from_env()?;
    let limit: u64 = examples::env_number("RATE_LIMIT", 100)?;
    let window: u64 = examples::env_number("RATE_LIMIT_WINDOW_SECS", 60)?;
    let login_failures: u64 = examples::env_number("LOGIN_FAILURES", 5)?;
    let demo_password: Arc<str> = std::env::var("DEMO_PASSWORD")
        .unwrap_or_else(|_| "demo".to_string())
        .into();

    // Metrics: cache-core and rate-limit (feature `metrics`) record through
    // the `metrics` facade into whatever recorder the process installed.
    // Install it before the first cache call: a handle keeps the metric
    // handles its operations first used.
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration".into()), DURATION_BUCKETS)?
        .install_recorder()?;
    // The exporter's own HTTP listener is not used (GET /metrics is served on
    // the service's port below), so nothing else drains the histograms'
    // samples between scrapes: keep their memory bounded.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    // Redis when REDIS_URL (or REDIS_CLUSTER_URLS, REDIS_HOST) is set, else
    // the embedded in-memory store.
    let cache = Cache::from_env().await?;
    // Backend's Display hides any password.
    tracing::info!(backend = %cache.backend(), "cache ready");
    // The handle `#[cached]` functions (SearchService::search, embed) use.
    cache_core::set_default(cache.clone());
    let search = Arc::new(SearchService::default());
    tracing::info!(documents = search.documents(), "index built");

    // Counted in Redis, so every instance shares the limit; the layer takes
    // a connection of its own (Cache::dedicated_counter), and keys clients by
    // the peer address in each request's ConnectInfo<SocketAddr>.
    // The paid plan (an API key of the table) counts apart, ten times the limit.
    let limiter = RateLimitLayer::builder(cache.clone())
        .limit(limit)
        .window(Duration::from_secs(window))
        .plan(
            "paid",
            [(
                "paid",
                Quota::new(limit.saturating_mul(10), Duration::from_secs(window)),
            )],
        )
        .plan_for(|req: &RequestInfo<'_>| req.extensions.get::<Plan>().map(|plan| plan.0))
        .build()?;
    tracing::info!(limit, window_secs = window, "rate limit per client IP");
    // Failed logins only: each login is charged when admitted (so concurrent
    // guesses cannot pass together) and given back unless it got a 401/403.
    let login_limiter = RateLimitLayer::builder(cache.clone())
        .prefix("login")
        .policy("login-failures", Quota::per_minute(login_failures))
        .charge_if(|res: &ResponseInfo<'_>| {
            matches!(res.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        })
        .build()?;

    let app = Router::new()
        .route("/search", get(search_handler))
        .route("/embed", get(embed_handler))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/login", post(login).layer(login_limiter.clone()))
        // Applies to the routes above only.
        .layer(limiter.clone())
        // Outside the limiter: puts the request's plan in for `plan_for`.
        .layer(middleware::from_fn(resolve_plan))
        // Outside the limit: a scraper spends no client's quota, and is never refused.
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text) }
            }),
        )
        .with_state(App {
            cache,
            search,
            limiter,
            login_limiter,
            demo_password,
        });

    // Serving. With axum alone it would be
    //
    //     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
    //         .with_graceful_shutdown(shutdown_signal())
    //
    // (the ConnectInfo is what the rate limiter keys clients by). A service on
    // the open internet needs what axum::serve cannot set: a deadline for each
    // request head and body, idle connections closed, a cap on open
    // connections, and a shutdown that ends within SHUTDOWN_GRACE_MS whatever
    // the clients do. examples::server::serve_until adds those, serves
    // HTTP/1.1 and HTTP/2 on the port, and puts the same
    // ConnectInfo<SocketAddr> in every request.
    let listener = TcpListener::bind((settings.host.as_str(), settings.port)).await?;
    server::serve_until(listener, app, &settings, shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM: the server then stops accepting,
/// lets the requests in flight finish, and drops what is still open after
/// SHUTDOWN_GRACE_MS.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

type Rejection = (StatusCode, Json<Value>);

fn bad_request(message: &str) -> Rejection {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message })))
}

fn valid_text(text: &str) -> bool {
    !text.trim().is_empty() && text.len() <= MAX_TEXT_BYTES
}

#[derive(Deserialize)]
struct SearchQuery {
    q: String,
    k: Option<usize>,
}

async fn search_handler(
    State(app): State<App>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<Vec<Hit>>, Rejection> {
    let k = query.k.unwrap_or(5);
    if !valid_text(&query.q) || !(1..=50).contains(&k) {
        return Err(bad_request("q: 1 to 500 bytes of UTF-8; k: 1 to 50"));
    }
    Ok(Json(app.search.search(&query.q, k).await))
}

#[derive(Deserialize)]
struct EmbedQuery {
    text: String,
}

async fn embed_handler(
    State(app): State<App>,
    Query(query): Query<EmbedQuery>,
) -> Result<Json<Value>, Rejection> {
    if !valid_text(&query.text) {
        return Err(bad_request("text: 1 to 500 bytes of UTF-8"));
    }
    let embedding = app.search.embed(&query.text).await;
    Ok(Json(
        json!({ "dimensions": embedding.len(), "embedding": embedding }),
    ))
}

async fn health(State(app): State<App>) -> Json<cache_core::Health> {
    Json(app.cache.health().await)
}

async fn stats(State(app): State<App>) -> Json<Value> {
    let (searches, embeddings) = app.search.computed();
    let cache = app.cache.stats();
    Json(json!({
        "cache": cache,
        "hit_rate": cache.hit_rate(),
        "computed": { "searches": searches, "embeddings": embeddings },
        "rate_limit": app.limiter.stats(),
        "login_rate_limit": app.login_limiter.stats(),
        "runtime": examples::metrics::runtime_stats(),
    }))
}

/// Puts the plan of the request's `X-Api-Key` (from [`API_KEYS`]) into the
/// request; without a known key, none: the free plan.
async fn resolve_plan(mut request: Request, next: Next) -> Response {
    let key = request
        .headers()
        .get("x-api-key")
        .and_then(|value| value.to_str().ok());
    let plan = key.and_then(|key| API_KEYS.iter().find(|(known, _)| *known == key));
    if let Some(&(_, plan)) = plan {
        request.extensions_mut().insert(Plan(plan));
    }
    next.run(request).await
}

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

/// The demo account: `demo` with the configured password.
async fn login(State(app): State<App>, Json(login): Json<Login>) -> (StatusCode, Json<Value>) {
    if login.user == "demo" && login.password.as_bytes() == app.demo_password.as_bytes() {
        (StatusCode::OK, Json(json!({ "user": login.user })))
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "wrong user or password" })),
        )
    }
}
