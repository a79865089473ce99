//! `GET /metrics`: what cache-core and rate-limit record through the
//! `metrics` facade (their feature `metrics`, on in these examples), in the
//! Prometheus text format, rendered by `metrics-exporter-prometheus` on
//! request (no listener of its own: the service's port serves it).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app: axum::Router = axum::Router::new().merge(examples::metrics::routes()?);
//! # Ok(()) }
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of the `*.duration` histograms, in seconds: 50 µs to 5 s, so
/// that a hit on the in-memory store and a Redis timeout both land in one.
const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The `Content-Type` of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` route, installing the Prometheus recorder as the
/// process's global one on first use. Merge it outside the rate limit: a
/// scraper should not spend a client's quota, nor be refused.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Result<Router<S>, BuildError> {
    let handle = handle()?;
    Ok(Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([(header::CONTENT_TYPE, TEXT_FORMAT)], handle.render()) }
        }),
    ))
}

/// The process's recorder handle, installed once.
fn handle() -> Result<PrometheusHandle, BuildError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration".into()), DURATION_BUCKETS)?
        .install_recorder()?;
    // Without the exporter's listener nobody else drains the histograms'
    // samples between scrapes: keep their memory bounded.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The Tokio runtime's own figures for `/stats`: live tasks (spawned and
/// not yet finished: a leak shows as a count that keeps growing), worker
/// threads and the global queue's depth, from [`tokio::runtime::RuntimeMetrics`].
/// Call it on the service's runtime.
pub fn runtime_stats() -> serde_json::Value {
    let metrics = tokio::runtime::Handle::current().metrics();
    serde_json::json!({
        "alive_tasks": metrics.num_alive_tasks(),
        "workers": metrics.num_workers(),
        "global_queue_depth": metrics.global_queue_depth(),
    })
}
