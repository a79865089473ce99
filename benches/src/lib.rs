//! Shared measuring code of the benchmark binaries: interleaved rounds, so
//! that a baseline and the thing measured see the same machine state.

use std::future::Future;
use std::time::{Duration, Instant};

/// Rounds per variant; the median round (and the median per-round ratio) is reported.
pub const ROUNDS: usize = 11;

/// Runs `op(task)` `iterations` times in all across `tasks` concurrent tasks
/// (numbered from 0), and returns operations per second.
pub async fn throughput<F, Fut>(iterations: usize, tasks: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let per_task = iterations / tasks;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    op(task).await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("benchmark task");
    }
    (per_task * tasks) as f64 / started.elapsed().as_secs_f64()
}

/// One named variant's results over the rounds.
#[derive(Debug, Default)]
pub struct Series {
    /// Variant name.
    pub name: String,
    /// Operations per second, one per round.
    pub rounds: Vec<f64>,
}

impl Series {
    /// Starts an empty series.
    pub fn new(name: &str) -> Self {
        Series {
            name: name.to_string(),
            rounds: Vec::new(),
        }
    }

    /// The median round.
    pub fn median(&self) -> f64 {
        median(self.rounds.clone())
    }

    /// The median over rounds of this series' round divided by the
    /// baseline's round of the same pass: a slow moment of the machine
    /// lowers both sides of a ratio, not one variant's median.
    pub fn ratio_to(&self, baseline: &Series) -> f64 {
        median(
            self.rounds
                .iter()
                .zip(&baseline.rounds)
                .map(|(ops, base)| ops / base)
                .collect(),
        )
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Prints a table: median ops/s, µs/op and the ratio to the first (baseline)
/// series, the median of the per-round ratios.
pub fn report(title: &str, series: &[Series]) {
    println!("\n{title}");
    println!("| variant | ops/s | µs/op | ratio to baseline |");
    println!("| --- | ---: | ---: | ---: |");
    let Some(baseline) = series.first() else {
        return;
    };
    for s in series {
        let ops = s.median();
        println!(
            "| {} | {:.0} | {:.1} | {:.2} |",
            s.name,
            ops,
            Duration::from_secs_f64(1.0 / ops).as_secs_f64() * 1e6,
            s.ratio_to(baseline)
        );
    }
}

/// A raw `redis` connection (the baselines) and a [`Cache`](cache_core::Cache)
/// handle (the library) to the same server.
pub async fn raw_and_cache(
    server: &tests::RedisServer,
) -> (redis::aio::MultiplexedConnection, cache_core::Cache) {
    let raw = redis::Client::open(server.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let cache = cache_core::Cache::builder()
        .redis_url(&server.url())
        .expect("redis url")
        .build()
        .await
        .expect("cache");
    (raw, cache)
}

/// The `cached` crate's Redis-backed async memoization (MessagePack values).
#[cfg(feature = "compare")]
pub mod cached_crate {
    use std::sync::OnceLock;

    pub static URL: OnceLock<String> = OnceLock::new();

    #[cached::macros::concurrent_cached(
        map_error = r##"|e| format!("{e:?}")"##,
        ty = "cached::AsyncRedisCache<String, Vec<f32>>",
        create = r##" {
            cached::AsyncRedisCache::builder("bench_cached_crate")
                .ttl(std::time::Duration::from_secs(600))
                .connection_string(URL.get().expect("url set"))
                .build()
                .await
                .expect("cached crate redis cache")
        } "##
    )]
    pub async fn embed(text: String) -> Result<Vec<f32>, String> {
        Ok(crate::embeddings::embedding(&text))
    }
}

/// A handle to the server at `url` with a local tier whose entries live at
/// most `max_ttl`, returned once its tracking is up.
pub async fn local_handle(url: &str, max_ttl: Duration) -> cache_core::Cache {
    let cache = cache_core::Cache::builder()
        .redis_url(url)
        .expect("redis url")
        .local_tier(10_000, max_ttl)
        .build()
        .await
        .expect("cache");
    let started = Instant::now();
    while !cache.stats().local_tracking {
        assert!(started.elapsed() < Duration::from_secs(10), "tracking up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cache
}

/// The memoized functions of the cache benchmarks, and what they compute.
pub mod embeddings {
    use cache_core::{Cache, cached};

    /// A 384-float embedding (the size of all-MiniLM-L6-v2 output) of `text`.
    pub fn embedding(text: &str) -> Vec<f32> {
        (0..384)
            .map(|i| (i as f32 * 0.37 + text.len() as f32).sin())
            .collect()
    }

    /// The argument of task `task`'s calls.
    pub fn text_of(task: usize) -> String {
        format!("document number {task}")
    }

    /// Memoized with JSON values.
    #[cached(prefix = "bench-json", ttl = 600, cache = cache, skip(cache))]
    pub async fn embed_json(cache: &Cache, text: &str) -> Vec<f32> {
        embedding(text)
    }

    /// The MessagePack value of an entry `embed_msgpack` stored: what follows
    /// the codec's two-byte header (`0xC1 0x01`), for the raw baselines.
    pub fn msgpack_value(entry: &[u8]) -> &[u8] {
        entry.get(2..).unwrap_or_default()
    }

    /// Memoized with MessagePack values.
    #[cached(prefix = "bench-msgpack", ttl = 600, codec = "msgpack", cache = cache, skip(cache))]
    pub async fn embed_msgpack(cache: &Cache, text: &str) -> Vec<f32> {
        embedding(text)
    }
}

/// The limiter a user writes by hand, which the HTTP benchmarks (`http`,
/// `rl-instructions`) put beside the layer.
pub mod limiters {
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use axum::extract::{ConnectInfo, Request, State};
    use axum::http::{HeaderName, HeaderValue, StatusCode};
    use axum::middleware::Next;
    use axum::response::{IntoResponse, Response};
    use redis::aio::MultiplexedConnection;

    /// The client of a hand-written limiter: the nearest `X-Forwarded-For` hop
    /// when the peer is the (loopback) proxy, else the peer.
    pub fn client_ip(request: &Request, peer: SocketAddr) -> IpAddr {
        if peer.ip().is_loopback() {
            let hop = request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse().ok());
            if let Some(ip) = hop {
                return ip;
            }
        }
        peer.ip()
    }

    /// [`naive`]'s connection, window and limit.
    #[derive(Clone)]
    pub struct Naive {
        /// A raw multiplexed connection.
        pub conn: MultiplexedConnection,
        /// The window (whole seconds).
        pub window: Duration,
        /// Requests per window.
        pub limit: u64,
    }

    /// What a user writes by hand: `INCR` and `EXPIRE NX` in one pipeline per
    /// request (one round trip, two commands), 429 over the limit, fail open.
    pub async fn naive(
        State(naive): State<Naive>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        request: Request,
        next: Next,
    ) -> Response {
        let key = format!("bench:naive:{}", client_ip(&request, peer));
        let mut conn = naive.conn;
        let count: redis::RedisResult<(u64,)> = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(naive.window.as_secs())
            .arg("NX")
            .ignore()
            .query_async(&mut conn)
            .await;
        match count {
            Ok((count,)) if count > naive.limit => StatusCode::TOO_MANY_REQUESTS.into_response(),
            _ => next.run(request).await,
        }
    }

    /// [`naive`] sending the five rate-limit header fields `RateLimitLayer`
    /// sends by default, as a user writes it: `INCR`, `EXPIRE NX` and
    /// `PTTL` in one pipeline per request (one round trip, three commands:
    /// the reset needs the window's end), then `RateLimit-Policy`,
    /// `RateLimit`, `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` with the layer's values (policy `"naive"`,
    /// remaining after this request, reset in whole seconds rounded up),
    /// each `format!`ted and checked by `HeaderValue::from_str`; 429 over
    /// the limit, fail open (no fields then). Keys of its own
    /// (`bench:naive-headers:<ip>`).
    pub async fn naive_with_headers(
        State(naive): State<Naive>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        request: Request,
        next: Next,
    ) -> Response {
        let key = format!("bench:naive-headers:{}", client_ip(&request, peer));
        let mut conn = naive.conn;
        let window = naive.window.as_secs();
        let reply: redis::RedisResult<(u64, i64)> = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(window)
            .arg("NX")
            .ignore()
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await;
        let Ok((count, pttl)) = reply else {
            return next.run(request).await;
        };
        let reset = match pttl {
            -1 => window,
            ms if ms < 0 => 0,
            ms => (ms as u64).div_ceil(1000),
        };
        let limit = naive.limit;
        let remaining = limit.saturating_sub(count);
        let mut response = if count > limit {
            StatusCode::TOO_MANY_REQUESTS.into_response()
        } else {
            next.run(request).await
        };
        let fields = [
            (
                "ratelimit-policy",
                format!("\"naive\";q={limit};w={window}"),
            ),
            ("ratelimit", format!("\"naive\";r={remaining};t={reset}")),
            ("x-ratelimit-limit", format!("{limit}")),
            ("x-ratelimit-remaining", format!("{remaining}")),
            ("x-ratelimit-reset", format!("{reset}")),
        ];
        let headers = response.headers_mut();
        for (name, value) in fields {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        response
    }
}
