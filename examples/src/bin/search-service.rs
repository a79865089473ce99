//! The example service: `cargo run --release -p examples --bin search-service`.
//!
//! `GET /search?q=...&k=...` ranks a corpus shipped with the repository (BM25
//! plus embedding cosine); `GET /embed?text=...` returns the embedding of a
//! text. `SearchService::search` and `Embedder::embed` are memoized with
//! `#[cached]`, and `/embed` shares its entries with `/search`. Every client IP
//! gets `RATE_LIMIT` requests (default 100) per `RATE_LIMIT_WINDOW_SECS`
//! (default 60). Uses Redis when `REDIS_URL` / `REDIS_CLUSTER_URLS` /
//! `REDIS_HOST` is set and the embedded in-memory store otherwise; serves
//! HTTP/1.1 and HTTP/2 on `HOST:PORT` (default `0.0.0.0:3000`). `--help` lists
//! every setting.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use cache_core::Cache;
use examples::search::{Hit, SearchService};
use rate_limit::RateLimitLayer;
use serde::Deserialize;
use serde_json::{Value, json};

const USAGE: &str = "\
search-service: memoized search and embeddings behind a per-IP rate limit.

Usage: search-service [--help]

Endpoints:
  GET /search?q=TEXT&k=N   the N (1 to 50, default 5) best documents for TEXT
  GET /embed?text=TEXT     the embedding of TEXT: {\"dimensions\":384,\"embedding\":[...]}
  GET /health              the cache's state
  GET /stats               cache, computation and rate-limit counters
  GET /metrics             the same and more, in the Prometheus text format

Rate limit:
  RATE_LIMIT               requests per window and client IP [default: 100]
  RATE_LIMIT_WINDOW_SECS   the window [default: 60]
";

/// Longest text `/search` and `/embed` accept, in bytes.
const MAX_TEXT_BYTES: usize = 500;

#[derive(Clone)]
struct App {
    cache: Cache,
    search: Arc<SearchService>,
    limiter: RateLimitLayer,
}

fn main() -> ExitCode {
    examples::run(USAGE, app)
}

async fn app() -> Result<Router, Box<dyn std::error::Error>> {
    let cache = Cache::from_env().await?;
    // Backend's Display hides any password.
    tracing::info!(backend = %cache.backend(), "cache ready");
    cache_core::set_default(cache.clone());
    let search = Arc::new(SearchService::default());
    tracing::info!(documents = search.documents(), "index built");

    let limit: u64 = examples::env_number("RATE_LIMIT", 100)?;
    let window: u64 = examples::env_number("RATE_LIMIT_WINDOW_SECS", 60)?;
    let limiter = RateLimitLayer::builder(cache.clone())
        .limit(limit)
        .window(Duration::from_secs(window))
        .build()?;
    tracing::info!(limit, window_secs = window, "rate limit per client IP");

    Ok(Router::new()
        .route("/search", get(search_handler))
        .route("/embed", get(embed_handler))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .layer(limiter.clone())
        .merge(examples::metrics::routes()?)
        .with_state(App {
            cache,
            search,
            limiter,
        }))
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
        "runtime": examples::metrics::runtime_stats(),
    }))
}
