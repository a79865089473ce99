//! The example services' shared parts: their domains ([`search`], [`portfolio`])
//! and the start-up and shutdown every service of this kind needs.
#![warn(missing_docs)]

pub mod portfolio;
pub mod search;

use std::net::SocketAddr;

use axum::Router;

/// Logs to stdout, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Reads a number from the environment, with a default; a value that does not
/// parse is an error naming the variable.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a number, got {value:?}")),
        Err(_) => Ok(default),
    }
}

/// Serves `app` on `PORT` (default 3000) with the peer address available to
/// the rate limiter, until Ctrl-C or SIGTERM; requests in flight finish.
pub async fn serve(app: Router) -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = env_number("PORT", 3000)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    tracing::info!(port, "listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
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
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
