//! Per-asset prices and balances with TTLs, per-user summaries invalidated by
//! prefix on a balance change, bulk price lookups in one round trip. Money is
//! exact (decimals, written as JSON strings); `--help` lists every setting.
//!
//! `cargo run --release -p examples --bin portfolio`, then:
//! `curl -X PUT localhost:3000/users/7/balances/BTC -H 'content-type: application/json' -d '{"amount":"2.5"}'`
//! `curl localhost:3000/users/7/summary` and `curl 'localhost:3000/prices?assets=BTC,ETH,BTC'`
//!
//! Live prices across instances (run two with the same `REDIS_URL` and
//! different `PORT`s): open `http://localhost:3000/` in a browser, then
//! `curl -X POST localhost:3001/prices/BTC -H 'content-type: application/json' -d '{"price":"71234.5"}'`.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Version, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cache_core::Cache;
use examples::portfolio::{Amount, Portfolio, PriceUpdate, Summary, Symbol};
use examples::relay::{self, Relay};
use examples::server::{self, ServerSettings};
use examples::stream_cap::StreamCap;
use examples::{Invocation, LogFormat};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use rate_limit::{Quota, RateLimitLayer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const USAGE: &str = "\
portfolio: cached prices, balances and per-user valuations, invalidated on change.

Usage: portfolio [--help]

Endpoints:
  PUT /users/ID/balances/ASSET   body {\"amount\":\"2.5\"}: a decimal string (exact) or a JSON
                                 number; 0 to 10^15, at most 18 decimal places; 204
  GET /users/ID/summary          balances, prices and values; money as decimal strings
  GET /prices?assets=BTC,ETH     current prices, duplicates read once
  POST /prices/ASSET             body {\"price\":\"71234.5\"}: a new price, cached and published
                                 on the market:prices channel to every instance; 204
  GET /events                    price updates as Server-Sent Events (`price`, `gap`), each
                                 with an id; a reconnect with Last-Event-ID resumes after it
  GET /                          a live page of the updates and the cache's hit rate
  GET /health                    the cache's state
  GET /stats                     cache counters and source reads
  GET /metrics                   the cache's metrics, Prometheus text format

Event streams (each holds a connection as long as it is open):
  MAX_EVENT_STREAMS_PER_CLIENT   open /events streams per client IP (IPv6: per /56), across every
                                 instance sharing the store (a concurrency limit of the rate
                                 limiter); more get 429 [default: 16]
  MAX_EVENT_STREAMS              open /events streams in this instance; more get 503 [default: 1000]
";

/// How long a stream's lease counts if its instance dies holding it: an
/// open stream renews it with its keep-alives (every 15 s), so this only
/// bounds how long a crashed instance's streams keep their clients' slots.
const STREAM_LEASE_TTL: Duration = Duration::from_secs(60);

/// Seconds a client refused a stream is told to wait before it tries again.
const STREAM_RETRY_AFTER_SECS: &str = "10";

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
    portfolio: Arc<Portfolio>,
    relay: Arc<Relay>,
    streams: Arc<StreamCap>,
    /// The cap of streams per client: its counters for /stats.
    per_client: RateLimitLayer,
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
    let per_client: usize = examples::env_number("MAX_EVENT_STREAMS_PER_CLIENT", 16)?;
    let total: usize = examples::env_number("MAX_EVENT_STREAMS", 1000)?;
    if per_client == 0 || total == 0 {
        return Err("MAX_EVENT_STREAMS_PER_CLIENT and MAX_EVENT_STREAMS must be at least 1".into());
    }

    // Metrics: cache-core (feature `metrics`) records through the `metrics`
    // facade into whatever recorder the process installed. Install it before
    // the first cache call: a handle keeps the metric handles its operations
    // first used.
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
    tracing::info!(per_client, total, "event streams capped");
    // At most `per_client` streams per client IP across every instance: a
    // lease per stream, taken in one store call, released when the stream
    // ends or its client goes away (a 429 with Retry-After past the cap).
    let per_client = RateLimitLayer::builder(cache.clone())
        .prefix("portfolio-streams")
        .policy(
            "streams",
            Quota::concurrent(per_client as u64).lease_ttl(STREAM_LEASE_TTL),
        )
        .build()?;
    let app = App {
        relay: Relay::start(&cache),
        portfolio: Arc::new(Portfolio::new(cache)),
        streams: StreamCap::new(total),
        per_client: per_client.clone(),
    };
    let app = Router::new()
        .route("/", get(page))
        .route(
            "/events",
            get(events)
                .layer(per_client)
                .layer(axum::middleware::map_response(close_refused_stream)),
        )
        .route("/prices", get(prices))
        .route("/prices/{asset}", post(publish_price))
        .route("/users/{id}/summary", get(summary))
        .route("/users/{id}/balances/{asset}", put(set_balance))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text) }
            }),
        )
        .with_state(app);

    // Serving. With axum alone it would be
    //
    //     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
    //         .with_graceful_shutdown(shutdown_signal())
    //
    // (the ConnectInfo is how /events knows its client, as a rate limiter
    // would). A service on the open internet needs what axum::serve cannot
    // set: a deadline for each request head and body, idle connections
    // closed, a cap on open connections, and a shutdown that ends within
    // SHUTDOWN_GRACE_MS whatever the clients do (an /events stream never
    // ends by itself). examples::server::serve_until adds those, serves
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

#[derive(Deserialize)]
struct PricesQuery {
    assets: String,
}

type Rejection = (StatusCode, Json<Value>);

fn bad_request(message: &str) -> Rejection {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message })))
}

async fn prices(
    State(app): State<App>,
    Query(query): Query<PricesQuery>,
) -> Result<Json<Value>, Rejection> {
    let symbols = query
        .assets
        .split(',')
        .map(|s| Symbol::parse(s).ok_or(()))
        .collect::<Result<Vec<_>, ()>>()
        .map_err(|()| bad_request("assets: 1 to 16 of A-Z 0-9, comma-separated"))?;
    if symbols.len() > 100 {
        return Err(bad_request("at most 100 assets per request"));
    }
    Ok(Json(json!(app.portfolio.prices(&symbols).await)))
}

async fn summary(State(app): State<App>, Path(id): Path<u64>) -> Json<Summary> {
    Json(app.portfolio.summary(id).await)
}

async fn set_balance(
    State(app): State<App>,
    Path((id, asset)): Path<(u64, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<StatusCode, Rejection> {
    let asset = Symbol::parse(&asset).ok_or_else(|| bad_request("asset: 1 to 16 of A-Z 0-9"))?;
    let Json(body) = body.map_err(|rejection| bad_request(&rejection.body_text()))?;
    let amount = body
        .get("amount")
        .ok_or_else(|| bad_request("amount is required, e.g. {\"amount\":\"2.5\"}"))?;
    let amount = Amount::from_json(amount).map_err(|err| bad_request(&err.to_string()))?;
    app.portfolio.set_balance(id, asset, amount).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn publish_price(
    State(app): State<App>,
    Path(asset): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<StatusCode, Rejection> {
    let symbol = Symbol::parse(&asset).ok_or_else(|| bad_request("asset: 1 to 16 of A-Z 0-9"))?;
    let Json(body) = body.map_err(|rejection| bad_request(&rejection.body_text()))?;
    let price = body
        .get("price")
        .ok_or_else(|| bad_request("price is required, e.g. {\"price\":\"71234.5\"}"))?;
    // A price is an amount: non-negative, exact, bounded.
    let price = Amount::from_json(price)
        .map_err(|err| bad_request(&err.to_string().replace("amount", "price")))?
        .value();
    app.portfolio
        .publish_price(&PriceUpdate { symbol, price })
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "could not publish a price");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "the price could not be published" })),
            )
        })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn events(State(app): State<App>, version: Version, headers: HeaderMap) -> Response {
    if !app.relay.is_subscribed() {
        return refuse(
            version,
            StatusCode::SERVICE_UNAVAILABLE,
            "live updates are unavailable",
        );
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    // Its position is fixed before the stream is counted: once /stats counts
    // it, everything published after is in it.
    let events = app.relay.stream(last_event_id);
    // The client's own cap was checked by the layer (its lease is in the body).
    let Some(permit) = app.streams.try_open() else {
        return refuse(
            version,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open",
        );
    };
    // In the body: the stream counts until it ends or the client goes away.
    relay::server_sent_events(permit.hold(events)).into_response()
}

/// A stream refused, with `Retry-After`. On HTTP/1 the connection is
/// closed after it: a client that opens connections only to hold streams
/// gives its connection slots back at once, not after the idle timeouts.
/// (HTTP/2 multiplexes: one connection, nothing to give back.)
fn refuse(version: Version, status: StatusCode, message: &str) -> Response {
    let response = (
        status,
        [(header::RETRY_AFTER, STREAM_RETRY_AFTER_SECS)],
        Json(json!({ "error": message })),
    )
        .into_response();
    close_refused(version, response)
}

async fn close_refused_stream(version: Version, response: Response) -> Response {
    close_refused(version, response)
}

/// A refused stream's connection closed after the answer, on HTTP/1 (the
/// per-client cap's 429 comes from the rate limiter).
fn close_refused(version: Version, mut response: Response) -> Response {
    if !response.status().is_success() && version < Version::HTTP_2 {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

async fn page() -> Html<&'static str> {
    Html(relay::PAGE)
}

async fn health(State(app): State<App>) -> Json<cache_core::Health> {
    Json(app.portfolio.cache().health().await)
}

async fn stats(State(app): State<App>) -> Json<Value> {
    let stats = app.portfolio.cache().stats();
    Json(json!({
        "cache": stats,
        "hit_rate": stats.hit_rate(),
        "source_reads": app.portfolio.source_reads(),
        "event_streams": {
            "open": app.streams.open_streams(),
            "per_client": app.per_client.stats(),
            "relay_subscribed": app.relay.is_subscribed(),
            "relay_received": app.relay.received(),
        },
        "runtime": examples::metrics::runtime_stats(),
    }))
}
