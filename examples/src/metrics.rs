//! The Tokio runtime's figures for the services' `/stats`. (The metrics the
//! libraries record are served on `GET /metrics` by each binary's `main.rs`,
//! which installs the Prometheus recorder.)

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
