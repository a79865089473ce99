//! Fault run of `search-service` under steady load on loopback: Redis is
//! killed, restarted on the same port, then paused with `CLIENT PAUSE`.
//! Reports failures and latency per phase, and how long after the restart the
//! service used Redis again. Bounded: about 10 s of load.
//!
//! `./scripts/fault-run.sh` (builds both in release, then runs this).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tests::http::Connection;

const CLIENTS: usize = 16;
const WORDS: &[&str] = &[
    "redis",
    "cache",
    "window",
    "rate",
    "limit",
    "cluster",
    "slot",
    "scan",
    "keys",
    "ttl",
    "embedding",
    "vector",
    "bm25",
    "proxy",
    "ipv6",
    "breaker",
    "retry",
    "backoff",
    "json",
    "portfolio",
    "price",
    "balance",
    "health",
    "shutdown",
    "lua",
    "script",
    "token",
    "bucket",
];

/// Phases of the run, by start time.
const PHASES: &[(&str, u64)] = &[
    ("steady", 0),
    ("redis killed", 2000),
    ("redis restarted", 4000),
    ("CLIENT PAUSE 1500 ms", 7000),
    ("after the pause", 8500),
];
const END_MS: u64 = 10_000;

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn phase_of(ms: u64) -> usize {
    PHASES
        .iter()
        .rposition(|(_, start)| ms >= *start)
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/search-service".into());
    let timeout_ms: u64 = std::env::var("CACHE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let mut redis = tests::RedisServer::start();
    let port = tests::free_port();
    let _service = Service(
        Command::new(&binary)
            .env("REDIS_URL", redis.url())
            .env("PORT", port.to_string())
            .env("RATE_LIMIT", "100000000")
            .env("CACHE_TIMEOUT_MS", timeout_ms.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start {binary}: {err}")),
    );
    // Wait for the service to accept connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Connection::open(port).await.is_err() {
        assert!(Instant::now() < deadline, "service did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let samples: Arc<Mutex<Vec<(u64, Duration, bool)>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut conn = Connection::open(port).await.expect("connect");
                let mut i = client;
                while started.elapsed() < Duration::from_millis(END_MS) {
                    let q = format!(
                        "{}+{}",
                        WORDS[i % WORDS.len()],
                        WORDS[(i * 7 + 3) % WORDS.len()]
                    );
                    i += CLIENTS;
                    let sent = started.elapsed();
                    let result = conn
                        .get(&format!("/search?q={q}&k=5"), Duration::from_secs(5))
                        .await;
                    let ok = matches!(&result, Ok(r) if r.status == 200);
                    if result.is_err() {
                        conn = Connection::open(port).await.expect("reconnect");
                    }
                    let latency = started.elapsed() - sent;
                    samples
                        .lock()
                        .expect("samples")
                        .push((sent.as_millis() as u64, latency, ok));
                }
            })
        })
        .collect();

    let at = |ms: u64| {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            started + Duration::from_millis(ms),
        ))
    };
    at(PHASES[1].1).await;
    redis.kill();
    at(PHASES[2].1).await;
    redis.restart();
    let restarted = Instant::now();
    // The restarted server is empty: the first key the service writes shows it is back.
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let reused_after = loop {
        let size: u64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        if size > 0 {
            break Some(restarted.elapsed());
        }
        if restarted.elapsed() > Duration::from_secs(3) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    at(PHASES[3].1).await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    for client in clients {
        client.await.expect("client task");
    }

    let samples = samples.lock().expect("samples");
    println!(
        "\nfault run: {CLIENTS} keep-alive clients on /search, cache call timeout {timeout_ms} ms"
    );
    println!("| phase | requests | failed | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut total_failed = 0;
    for (index, (name, _)) in PHASES.iter().enumerate() {
        let mut latencies: Vec<Duration> = samples
            .iter()
            .filter(|(ms, _, _)| phase_of(*ms) == index)
            .map(|(_, latency, _)| *latency)
            .collect();
        let failed = samples
            .iter()
            .filter(|(ms, _, ok)| phase_of(*ms) == index && !ok)
            .count();
        total_failed += failed;
        latencies.sort();
        println!(
            "| {name} | {} | {failed} | {:.1} ms | {:.1} ms | {:.1} ms |",
            latencies.len(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    match reused_after {
        Some(after) => println!(
            "service wrote to Redis again {:.0} ms after the restart",
            after.as_secs_f64() * 1e3
        ),
        None => println!("service did NOT use Redis within 3 s of the restart"),
    }
    println!("failed requests in total: {total_failed}");
    // The slowest requests of each phase with the time they were sent: an
    // outlier at a phase's start and one in its middle have different causes.
    println!("slowest requests per phase (sent at: latency):");
    for (index, (name, _)) in PHASES.iter().enumerate() {
        let mut slowest: Vec<(u64, Duration)> = samples
            .iter()
            .filter(|(ms, _, _)| phase_of(*ms) == index)
            .map(|(ms, latency, _)| (*ms, *latency))
            .collect();
        slowest.sort_by_key(|(_, latency)| std::cmp::Reverse(*latency));
        let listed: Vec<String> = slowest
            .iter()
            .take(4)
            .map(|(ms, latency)| format!("{ms} ms: {:.1} ms", latency.as_secs_f64() * 1e3))
            .collect();
        println!("  {name}: {}", listed.join(", "));
    }
}
