//! The example service: `cargo run --release -p examples --bin search-service`.
//!
//! Uses Redis when `REDIS_URL` / `REDIS_CLUSTER_URLS` / `REDIS_HOST` is set and
//! the embedded in-memory store otherwise; listens on `PORT` (default 3000).

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use cache_core::Cache;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cache = Cache::from_env().await?;
    // Backend's Display hides any password.
    tracing::info!(backend = %cache.backend(), "cache ready");
    cache_core::set_default(cache.clone());

    let app = Router::new()
        .route(
            "/",
            get(|| async { "search-service: try /health and /stats\n" }),
        )
        .route("/health", get(health))
        .route("/stats", get(stats))
        .with_state(cache);

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse().map_err(|_| "PORT must be a port number")?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    tracing::info!(%port, "listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    Ok(())
}

async fn health(State(cache): State<Cache>) -> Json<cache_core::Health> {
    Json(cache.health().await)
}

async fn stats(State(cache): State<Cache>) -> Json<cache_core::Stats> {
    Json(cache.stats())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
