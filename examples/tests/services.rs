//! End-to-end: the example binaries, started as the README says, against the
//! in-memory store and a real `redis-server`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SEARCH: &str = env!("CARGO_BIN_EXE_search-service");
const PORTFOLIO: &str = env!("CARGO_BIN_EXE_portfolio");

/// The service binary, killed when dropped.
struct Service {
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &str, envs: &[(&str, &str)]) -> Service {
    let port = tests::free_port();
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PORT", port.to_string())
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut service = Service {
        child: cmd.spawn().expect("start search-service"),
        port,
    };
    let stdout = service.child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    // Waits for the service's own "listening" line.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let ready = line.contains("listening");
        log.push(line);
        if ready {
            return service;
        }
    }
    panic!("{binary} did not start:\n{}", log.join("\n"));
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, "")
}

fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A hit on the second identical search, then a 429 past the limit (5).
fn exercise_search(port: u16) -> serde_json::Value {
    let (status, first) = http_get(port, "/search?q=redis+cluster+slots&k=3");
    assert_eq!(status, 200, "{first}");
    let hits = json(&first);
    assert_eq!(hits.as_array().map(Vec::len), Some(3), "{hits}");
    assert_eq!(hits[0]["title"], "Redis Cluster hash slots", "{hits}");
    let (_, second) = http_get(port, "/search?q=redis+cluster+slots&k=3");
    assert_eq!(json(&second), hits);
    let (_, stats) = http_get(port, "/stats");
    let stats = json(&stats);
    assert_eq!(
        stats["computed"]["searches"], 1,
        "the second search was a hit: {stats}"
    );
    assert!(stats["cache"]["hits"].as_u64().unwrap() >= 1, "{stats}");
    // Three requests so far; the limit is 5 per window.
    assert_eq!(http_get(port, "/health").0, 200);
    assert_eq!(http_get(port, "/health").0, 200);
    let (status, body) = http_get(port, "/search?q=anything");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("Too Many Requests"), "{body}");
    stats
}

#[test]
fn starts_on_the_in_memory_store_without_redis_and_answers() {
    let service = start(SEARCH, &[("RATE_LIMIT", "5")]);
    let (status, body) = http_get(service.port, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"healthy\":true"), "{body}");
    assert!(body.contains("in-memory"), "{body}");
}

#[test]
fn search_service_memoizes_and_rate_limits_on_the_in_memory_store() {
    let service = start(SEARCH, &[("RATE_LIMIT", "5")]);
    exercise_search(service.port);
}

#[test]
fn search_service_memoizes_in_redis_and_rate_limits() {
    let server = tests::RedisServer::start();
    let service = start(SEARCH, &[("REDIS_URL", &server.url()), ("RATE_LIMIT", "5")]);
    exercise_search(service.port);
    // The documented keys, readable by any client.
    let key = cache_core::key_for("search", &("redis cluster slots", 3)).unwrap();
    let pttl: i64 = server.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(pttl > 3_590_000 && pttl <= 3_600_000, "search PTTL {pttl}");
    let key = cache_core::key_for("embedding", &("redis cluster slots",)).unwrap();
    assert_eq!(server.cli(&["EXISTS", &key]).trim(), "1");
    let count: u64 = server
        .cli(&["GET", "rate:ip:127.0.0.1"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, 5, "the 429 was rejected locally, not counted");
}

#[test]
fn uses_redis_when_redis_url_is_set_and_never_logs_the_password() {
    let server = tests::RedisServer::start_with(&["--requirepass", "svc-Secret-1"]);
    let url = format!("redis://:svc-Secret-1@127.0.0.1:{}", server.port());
    let service = start(SEARCH, &[("REDIS_URL", &url)]);
    let (status, body) = http_get(service.port, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"healthy\":true"), "{body}");
    assert!(
        body.contains(&format!("127.0.0.1:{}", server.port())),
        "{body}"
    );
    assert!(!body.contains("svc-Secret-1"), "{body}");
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {body}"))
}

#[test]
fn portfolio_caches_prices_and_summaries_and_invalidates_on_a_balance_change() {
    let server = tests::RedisServer::start();
    let service = start(PORTFOLIO, &[("REDIS_URL", &server.url())]);
    let port = service.port;

    let (status, _) = request(port, "PUT", "/users/7/balances/BTC", r#"{"amount":2}"#);
    assert_eq!(status, 204);
    request(port, "PUT", "/users/7/balances/ETH", r#"{"amount":10}"#);

    let (status, first) = http_get(port, "/users/7/summary");
    assert_eq!(status, 200, "{first}");
    let first = json(&first);
    let (_, again) = http_get(port, "/users/7/summary");
    assert_eq!(json(&again), first);
    let stats = json(&http_get(port, "/stats").1);
    assert_eq!(
        stats["source_reads"]["ledger"], 1,
        "second summary came from Redis: {stats}"
    );
    assert_eq!(
        server.cli(&["EXISTS", "user:7:summary:valuation"]).trim(),
        "1"
    );
    let pttl: u64 = server
        .cli(&["PTTL", "asset:BTC:current_price"])
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "price TTL {pttl}");

    // A balance change drops every user:7:summary:* entry, and the next summary is recomputed.
    request(port, "PUT", "/users/7/balances/BTC", r#"{"amount":3}"#);
    assert_eq!(
        server.cli(&["EXISTS", "user:7:summary:valuation"]).trim(),
        "0"
    );
    let after = json(&http_get(port, "/users/7/summary").1);
    let btc_price = first["positions"][0]["price"].as_f64().unwrap();
    let eth_value = first["positions"][1]["value"].as_f64().unwrap();
    let total = after["total"].as_f64().unwrap();
    assert!(
        (total - (3.0 * btc_price + eth_value)).abs() < 1e-6,
        "{after}"
    );

    // Bulk lookup: duplicates are read once, known prices come from the cache.
    let feed_before = json(&http_get(port, "/stats").1)["source_reads"]["feed"]
        .as_u64()
        .unwrap();
    let (status, prices) = http_get(port, "/prices?assets=BTC,ETH,BTC,SOL");
    assert_eq!(status, 200, "{prices}");
    assert_eq!(json(&prices).as_object().unwrap().len(), 3);
    let feed_after = json(&http_get(port, "/stats").1)["source_reads"]["feed"]
        .as_u64()
        .unwrap();
    assert_eq!(feed_after, feed_before + 1, "one feed call, for SOL only");

    let (status, _) = http_get(port, "/prices?assets=BTC,user:1*");
    assert_eq!(status, 400, "symbols from user input are validated");
}
