//! The example service: `cargo run --release -p examples --bin search-service`.
//!
//! `GET /search?q=...&k=...` ranks a corpus shipped with the repository (BM25
//! plus embedding cosine). `SearchService::search` and `Embedder::embed` are
//! memoized with `#[cached]`. Every client IP gets `RATE_LIMIT` requests
//! (default 100) per `RATE_LIMIT_WINDOW_SECS` (default 60). Uses Redis when
//! `REDIS_URL` / `REDIS_CLUSTER_URLS` / `REDIS_HOST` is set and the embedded
//! in-memory store otherwise; listens on `PORT` (default 3000).

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

#[derive(Clone)]
struct App {
    cache: Cache,
    search: Arc<SearchService>,
    limiter: RateLimitLayer,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    examples::init_tracing();
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

    let app = Router::new()
        .route("/search", get(search_handler))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .layer(limiter.clone())
        .with_state(App {
            cache,
            search,
            limiter,
        });
    examples::serve(app).await
}

#[derive(Deserialize)]
struct SearchQuery {
    q: String,
    k: Option<usize>,
}

async fn search_handler(
    State(app): State<App>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<Vec<Hit>>, (StatusCode, Json<Value>)> {
    let k = query.k.unwrap_or(5);
    if query.q.trim().is_empty() || query.q.len() > 500 || !(1..=50).contains(&k) {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "q: 1 to 500 characters; k: 1 to 50" })),
        ));
    }
    Ok(Json(app.search.search(&query.q, k).await))
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
    }))
}
