//! End-to-end: the example binaries, started as the README and docs/example-services.md say, against the
//! in-memory store and a real `redis-server`.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

const SEARCH: &str = env!("CARGO_BIN_EXE_search-service");
const PORTFOLIO: &str = env!("CARGO_BIN_EXE_portfolio");

/// The service binary, killed when dropped.
struct Service {
    child: Child,
    port: u16,
    /// Its stdout, line by line, after the "listening" line.
    log: mpsc::Receiver<String>,
    /// Its stdout up to the "listening" line.
    startup_log: Vec<String>,
}

impl Service {
    /// Waits at most `timeout` for a log line containing `needle`.
    fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &str, envs: &[(&str, &str)]) -> Service {
    start_with_fd_limit(binary, envs, None)
}

/// Starts `binary` on a free port with only `envs` (and `RUST_LOG=info`) in its
/// environment, optionally with a lower file-descriptor limit, and waits for
/// its "listening" line.
fn start_with_fd_limit(binary: &str, envs: &[(&str, &str)], fd_limit: Option<u64>) -> Service {
    let port = tests::free_port();
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PORT", port.to_string())
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(fd_limit) = fd_limit {
        let limit = libc::rlimit {
            rlim_cur: fd_limit,
            rlim_max: fd_limit,
        };
        // SAFETY: setrlimit is async-signal-safe and only reads `limit`, which the closure owns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().expect("start the service");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut service = Service {
        child,
        port,
        log: rx,
        startup_log: Vec::new(),
    };
    // Waits for the service's own "listening" line.
    while let Ok(line) = service.log.recv_timeout(Duration::from_secs(30)) {
        let ready = line.contains("listening");
        service.startup_log.push(line);
        if ready {
            return service;
        }
    }
    panic!(
        "{binary} did not start:\n{}",
        service.startup_log.join("\n")
    );
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
    // The fixed window's value: a bare count, the window's end its expiry.
    let count = server.cli(&["GET", "rate:ip:127.0.0.1"]);
    assert_eq!(
        count.trim(),
        "5",
        "the 429 was rejected locally, not counted"
    );
    let pttl: i64 = server
        .cli(&["PTTL", "rate:ip:127.0.0.1"])
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 0, "the window ends with the key: PTTL {pttl}");
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

/// Money in the portfolio's JSON: a decimal string.
fn decimal(value: &serde_json::Value) -> Decimal {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    Decimal::from_str_exact(text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

#[test]
fn portfolio_caches_prices_and_summaries_and_invalidates_on_a_balance_change() {
    let server = tests::RedisServer::start();
    let service = start(PORTFOLIO, &[("REDIS_URL", &server.url())]);
    let port = service.port;

    let (status, _) = request(port, "PUT", "/users/7/balances/BTC", r#"{"amount":"2"}"#);
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

    // A balance change invalidates the tag user:7 (one SET): the stored
    // summary stays until its TTL, but the next summary is recomputed.
    request(port, "PUT", "/users/7/balances/BTC", r#"{"amount":"3"}"#);
    assert_eq!(
        server.cli(&["EXISTS", "user:7:summary:valuation"]).trim(),
        "1"
    );
    let after = json(&http_get(port, "/users/7/summary").1);
    let btc_price = decimal(&first["positions"][0]["price"]);
    let eth_value = decimal(&first["positions"][1]["value"]);
    assert_eq!(
        decimal(&after["total"]),
        Decimal::from(3) * btc_price + eth_value,
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

#[test]
fn portfolio_money_is_exact_and_negative_amounts_are_refused() {
    let server = tests::RedisServer::start();
    let service = start(PORTFOLIO, &[("REDIS_URL", &server.url())]);
    let port = service.port;

    // Prices 749.34 and 778.22: in f64, 0.1 * 749.34 + 0.2 * 778.22 is 230.57800000000003.
    assert_eq!(
        request(port, "PUT", "/users/7/balances/BTC", r#"{"amount":"0.1"}"#).0,
        204
    );
    assert_eq!(
        request(port, "PUT", "/users/7/balances/ETH", r#"{"amount":0.2}"#).0,
        204,
        "a JSON number is still accepted"
    );
    let summary = json(&http_get(port, "/users/7/summary").1);
    assert_eq!(summary["total"], "230.578", "{summary}");
    assert_eq!(summary["positions"][0]["price"], "749.34", "{summary}");
    assert_eq!(summary["positions"][1]["balance"], "0.2", "{summary}");
    // What other languages read from Redis: exact decimal strings. The
    // summary is tagged: its JSON follows the envelope's header (docs/stored-values.md,
    // "The envelope"): 25 bytes, then the tag "user:7" as 2 + 6 + 8 bytes.
    let cached = json(&server.cli(&["GETRANGE", "user:7:summary:valuation", "41", "-1"]));
    assert_eq!(cached["total"], "230.578", "{cached}");
    assert_eq!(
        server.cli(&["GET", "asset:BTC:current_price"]).trim(),
        r#""749.34""#
    );

    let empty = json(&http_get(port, "/users/8/summary").1);
    assert_eq!(empty["total"], "0", "not -0.0: {empty}");

    for (body, expected) in [
        (r#"{"amount":-5}"#, "amount must not be negative, got -5"),
        (
            r#"{"amount":"-3746.7"}"#,
            "amount must not be negative, got -3746.7",
        ),
        (r#"{"amount":"abc"}"#, "amount must be a decimal number"),
        (
            r#"{"amount":"0.0000000000000000001"}"#,
            "more than 18 decimal places",
        ),
        (r#"{"amount":1e300}"#, "at most 1000000000000000"),
        (r#"{"quantity":1}"#, "amount is required"),
        (r#"{"amount":"#, "Failed to parse the request body as JSON"),
    ] {
        let (status, response) = request(port, "PUT", "/users/7/balances/BTC", body);
        assert_eq!(status, 400, "{body}: {response}");
        let error = json(&response)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(expected), "{body}: {response}");
    }
    let unchanged = json(&http_get(port, "/users/7/summary").1);
    assert_eq!(unchanged, summary, "refused amounts change nothing");
}

/// Reads until the peer closes the connection (end of file or reset), at most
/// `deadline`; returns how long that took, or `None` if it stayed open.
fn time_until_closed(stream: &mut TcpStream, deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.checked_sub(started.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            // A 408 or any other bytes: keep reading until the close.
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {
                return Some(started.elapsed());
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(err) => panic!("reading: {err}"),
        }
    }
}

/// A connection that sent `bytes` and then nothing more.
fn half_open(port: u16, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(bytes).unwrap();
    stream
}

const PARTIAL_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n";

#[test]
fn half_sent_requests_and_silent_connections_are_closed_within_the_header_read_timeout() {
    let service = start(
        SEARCH,
        &[
            ("HEADER_READ_TIMEOUT_MS", "300"),
            ("IDLE_TIMEOUT_MS", "60000"),
            // An HTTP/2 connection is sent GOAWAY, then given this long to finish.
            ("SHUTDOWN_GRACE_MS", "300"),
        ],
    );
    let cases: [(&str, &[u8]); 4] = [
        ("a partial HTTP/1 request head", PARTIAL_HEAD),
        ("nothing at all", b""),
        ("a partial HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        (
            "an HTTP/2 preface and no request",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
    ];
    let mut streams: Vec<_> = cases
        .iter()
        .map(|(_, bytes)| half_open(service.port, bytes))
        .collect();
    let started = Instant::now();
    for ((case, _), stream) in cases.iter().zip(&mut streams) {
        // 300 ms (+ 300 ms for HTTP/2) with ample margin for a loaded machine;
        // before the fix, none of them was ever closed.
        let closed = time_until_closed(stream, Duration::from_secs(5));
        assert!(closed.is_some(), "{case}: still open after 5 s");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed by the timeout, not at once: {:?}",
        started.elapsed()
    );
    // The service is still there.
    assert_eq!(http_get(service.port, "/health").0, 200);
}

#[test]
fn a_body_that_stops_half_way_is_refused_within_the_body_read_timeout() {
    let service = start(
        PORTFOLIO,
        &[
            ("BODY_READ_TIMEOUT_MS", "300"),
            ("HEADER_READ_TIMEOUT_MS", "60000"),
        ],
    );
    let mut stalled = half_open(
        service.port,
        b"PUT /users/7/balances/BTC HTTP/1.1\r\nHost: localhost\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"amount\":",
    );
    let started = Instant::now();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut response = Vec::new();
    // Before the fix, the handler waited for the rest of the body for good.
    let _ = stalled.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 400"),
        "after {:?}: {response:?}",
        started.elapsed()
    );
    assert!(response.contains("not received within"), "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "and the connection closed"
    );
}

#[test]
fn health_answers_while_half_open_connections_hold_every_file_descriptor() {
    // 128 descriptors: the service keeps 64 of them for itself and serves at
    // most 64 connections; 150 half-sent requests are more than it can hold.
    // Before the fix it accepted until it ran out of descriptors and then
    // served nothing, as the half-open connections were never closed.
    let service = start_with_fd_limit(SEARCH, &[("HEADER_READ_TIMEOUT_MS", "400")], Some(128));
    let _half_open: Vec<TcpStream> = (0..150)
        .map(|_| half_open(service.port, PARTIAL_HEAD))
        .collect();
    let started = Instant::now();
    let (status, body) = http_get(service.port, "/health");
    assert_eq!(status, 200, "{body}");
    // The half-open connections ahead of it in the backlog are closed 400 ms
    // after their accept, 64 at a time: three rounds, with margin.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "/health took {:?}",
        started.elapsed()
    );
}

fn send_sigterm(service: &Service) {
    let pid = libc::pid_t::try_from(service.child.id()).unwrap();
    // SAFETY: kill only sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// Sends SIGTERM and waits at most `deadline` for the process to exit.
fn terminate(service: &mut Service, deadline: Duration) -> Option<(ExitStatus, Duration)> {
    let started = Instant::now();
    send_sigterm(service);
    wait_for_exit(service, deadline).map(|status| (status, started.elapsed()))
}

/// Waits at most `deadline` for the process to exit (killing it if it does not).
fn wait_for_exit(service: &mut Service, deadline: Duration) -> Option<ExitStatus> {
    let pid = libc::pid_t::try_from(service.child.id()).unwrap();
    let child = &mut service.child;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        scope.spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(deadline) {
            Ok(status) => Some(status.unwrap()),
            Err(_) => {
                // Ends the waiting thread; the test then fails.
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                None
            }
        }
    })
}

#[test]
fn sigterm_exits_within_the_grace_period_despite_a_half_open_connection() {
    let mut service = start(
        PORTFOLIO,
        &[
            ("HEADER_READ_TIMEOUT_MS", "60000"),
            ("SHUTDOWN_GRACE_MS", "500"),
        ],
    );
    let mut stalled = half_open(service.port, PARTIAL_HEAD);
    // Connections are accepted in order: once this one is answered, the
    // half-open one is being served too.
    assert_eq!(http_get(service.port, "/health").0, 200);

    let exited = terminate(&mut service, Duration::from_secs(5));
    let (status, took) = exited.expect("still running 5 s after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(450),
        "the grace period was not given: {took:?}"
    );
    assert!(
        time_until_closed(&mut stalled, Duration::from_secs(1)).is_some(),
        "the half-open connection was dropped"
    );
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let mut service = start(
        PORTFOLIO,
        &[
            ("SHUTDOWN_GRACE_MS", "10000"),
            ("BODY_READ_TIMEOUT_MS", "10000"),
        ],
    );
    let body = br#"{"amount":"2"}"#;
    let mut in_flight = half_open(
        service.port,
        format!(
            "PUT /users/7/balances/BTC HTTP/1.1\r\nHost: localhost\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(http_get(service.port, "/health").0, 200);
    send_sigterm(&service);
    assert!(
        service.wait_for_log("shutting down", Duration::from_secs(5)),
        "no shutdown after SIGTERM"
    );
    // The body arrives after shutdown began: the request still completes.
    in_flight.write_all(body).unwrap();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut response = String::new();
    let _ = in_flight.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 204"), "{response:?}");
    let status = wait_for_exit(&mut service, Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_without_open_connections_exits_at_once() {
    let mut service = start(SEARCH, &[("SHUTDOWN_GRACE_MS", "10000")]);
    assert_eq!(http_get(service.port, "/health").0, 200);
    let (status, took) = terminate(&mut service, Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn help_prints_the_settings_and_exits_without_serving() {
    for binary in [SEARCH, PORTFOLIO] {
        let port = tests::free_port();
        let mut child = Command::new(binary)
            .arg("--help")
            .env_clear()
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            let _ = tx.send((text, child.wait()));
        });
        let Ok((usage, status)) = rx.recv_timeout(Duration::from_secs(10)) else {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{binary} --help did not exit: it started serving");
        };
        assert!(status.unwrap().success(), "{binary}");
        for expected in [
            "Usage:",
            "HOST",
            "0.0.0.0",
            "PORT",
            "HEADER_READ_TIMEOUT_MS",
            "IDLE_TIMEOUT_MS",
            "MAX_CONNECTIONS",
            "SHUTDOWN_GRACE_MS",
            "LOG_FORMAT",
            "REDIS_URL",
        ] {
            assert!(usage.contains(expected), "{binary}: {expected}:\n{usage}");
        }
        assert!(!usage.contains("listening"), "{usage}");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
    let status = Command::new(SEARCH)
        .arg("--port")
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "an unknown argument is a usage error"
    );
}

#[test]
fn host_sets_the_bind_address() {
    // Every 127.0.0.0/8 address is loopback: 127.0.0.2 reaches a service bound
    // to 0.0.0.0, never one bound to 127.0.0.1.
    let bound = start(SEARCH, &[("HOST", "127.0.0.1")]);
    assert_eq!(http_get(bound.port, "/health").0, 200);
    assert!(TcpStream::connect(("127.0.0.2", bound.port)).is_err());

    let everywhere = start(SEARCH, &[]);
    assert!(
        TcpStream::connect(("127.0.0.2", everywhere.port)).is_ok(),
        "the default HOST is 0.0.0.0"
    );
}

/// GETs over HTTP/2 with prior knowledge (h2c, what `curl --http2-prior-knowledge` does).
fn http2_get(port: u16, paths: &[&str]) -> Vec<(http::StatusCode, http::HeaderMap, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let mut responses = Vec::new();
        for path in paths {
            let request = hyper::Request::get(format!("http://127.0.0.1:{port}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
                    .await
                    .expect("an answer within 10 s")
                    .expect("an HTTP/2 response");
            assert_eq!(response.version(), http::Version::HTTP_2);
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            responses.push((
                parts.status,
                parts.headers,
                String::from_utf8(body.to_vec()).unwrap(),
            ));
        }
        responses
    })
}

#[test]
fn serves_http2_with_prior_knowledge_and_http1_on_one_port() {
    let service = start(SEARCH, &[("RATE_LIMIT", "5")]);
    let responses = http2_get(
        service.port,
        &[
            "/health",
            "/search?q=redis+cluster+slots&k=3",
            "/embed?text=hello",
        ],
    );
    let (status, headers, body) = &responses[0];
    assert_eq!(*status, 200, "{body}");
    assert!(body.contains("\"healthy\":true"), "{body}");
    // The rate limiter sees the peer address on HTTP/2 too.
    assert_eq!(headers["x-ratelimit-limit"], "5");
    assert_eq!(headers["x-ratelimit-remaining"], "4");
    let (status, _, body) = &responses[1];
    assert_eq!(*status, 200, "{body}");
    assert_eq!(json(body)[0]["title"], "Redis Cluster hash slots", "{body}");
    let (status, _, body) = &responses[2];
    assert_eq!(*status, 200, "{body}");
    assert_eq!(json(body)["dimensions"], 384);
    // HTTP/1.1 on the same port, same limiter bucket.
    let (status, body) = http_get(service.port, "/health");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn embed_is_memoized_in_redis_and_shared_with_search() {
    let server = tests::RedisServer::start();
    let service = start(SEARCH, &[("REDIS_URL", &server.url())]);
    let port = service.port;

    let (status, body) = http_get(port, "/embed?text=redis+cluster+slots");
    assert_eq!(status, 200, "{body}");
    let first = json(&body);
    assert_eq!(first["dimensions"], 384, "{first}");
    let vector: Vec<f64> = first["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(vector.len(), 384);
    let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "L2-normalised: {norm}");

    assert_eq!(
        json(&http_get(port, "/embed?text=redis+cluster+slots").1),
        first
    );
    let key = cache_core::key_for("embedding", &("redis cluster slots",)).unwrap();
    let pttl: i64 = server.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(
        pttl > 86_000_000 && pttl <= 86_400_000,
        "embedding PTTL {pttl}"
    );
    // A search for the same text reuses the entry.
    assert_eq!(http_get(port, "/search?q=redis+cluster+slots").0, 200);
    let stats = json(&http_get(port, "/stats").1);
    assert_eq!(stats["computed"]["embeddings"], 1, "{stats}");
    assert_eq!(stats["computed"]["searches"], 1, "{stats}");

    for bad in ["/embed?text=", "/embed?text=+++", "/embed"] {
        assert_eq!(http_get(port, bad).0, 400, "{bad}");
    }
    let long = format!("/embed?text={}", "a".repeat(501));
    assert_eq!(http_get(port, &long).0, 400);
}

#[test]
fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let service = start(SEARCH, &[("IDLE_TIMEOUT_MS", "300")]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
            .await
            .unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get(format!("http://127.0.0.1:{}/health", service.port))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        let started = Instant::now();
        // The client's connection ends when the server sends GOAWAY and closes.
        let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
        assert!(ended.is_ok(), "still open 5 s after its last request");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "closed by the idle timeout, not at once: {:?}",
            started.elapsed()
        );
    });
}

/// The browser test's check name, for `TEST_ALLOW_SKIP`.
const BROWSER_CHECK: &str = "chromium";
const BROWSER_TEST: &str = "a_price_published_by_one_instance_reaches_a_browser_on_another";

/// Headless Chromium (Debian's `chromium`, which scripts/test.sh installs), if present.
fn chromium() -> Option<&'static str> {
    let found = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    found.then_some("chromium")
}

/// Polls `check` every 10 ms until it holds; `false` after `limit`.
fn poll_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn a_price_published_by_one_instance_reaches_a_browser_on_another() {
    let Some(browser) = chromium() else {
        tests::skip::skip_or_fail(
            BROWSER_CHECK,
            "chromium is not installed (scripts/test.sh installs it with apt-get)",
        );
        return;
    };
    let server = tests::RedisServer::start();
    let publisher = start(PORTFOLIO, &[("REDIS_URL", &server.url())]);
    let relay = start(PORTFOLIO, &[("REDIS_URL", &server.url())]);
    // One miss, one hit on the relay: the page shows a 50 % hit rate.
    http_get(relay.port, "/prices?assets=SOL");
    http_get(relay.port, "/prices?assets=SOL");

    // The page, in a headless browser: it subscribes over /events, and with
    // ?updates=1 closes the stream after the first update, so that the
    // browser's virtual time runs out and it prints the page as it is then.
    let profile = std::env::temp_dir().join(format!("chromium-{}", relay.port));
    let mut browser = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("http://127.0.0.1:{}/?updates=1", relay.port))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = browser.stdout.take().expect("stdout");
    let (tx, dom) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = tx.send(text);
    });

    // The relay subscribed (with the server's confirmation seen: a push
    // the bus reads just after the SUBSCRIBE call returns), and the page's
    // stream open: counted once its position is fixed.
    let subscribed = poll_until(Duration::from_secs(30), || {
        let stats = json(&http_get(relay.port, "/stats").1);
        stats["cache"]["events"]["connection"] == "connected"
            && stats["event_streams"]["relay_subscribed"] == true
            && stats["event_streams"]["open"] == 1
    });
    if !subscribed {
        let _ = browser.kill();
        let stats = json(&http_get(relay.port, "/stats").1);
        panic!("the page never opened /events: {stats}");
    }

    // Another process publishes; the relay's subscriber gets it over Redis.
    let (status, body) = request(
        publisher.port,
        "POST",
        "/prices/BTC",
        r#"{"price":"71234.5"}"#,
    );
    assert_eq!(status, 204, "{body}");

    let dom = dom.recv_timeout(Duration::from_secs(60));
    let _ = browser.kill();
    let _ = browser.wait();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = dom.expect("chromium printed the page");
    assert!(
        dom.contains(r#"<td id="price-BTC">71234.5</td>"#),
        "the update is on the page:\n{dom}"
    );
    assert!(
        dom.contains(r#"<span id="hit-rate">50.0 %</span>"#),
        "the hit rate is on the page:\n{dom}"
    );
    // The stream is gone with the page; the relay's one subscription stays.
    let stats = stats_once(relay.port, "the page's stream released", |stats| {
        stats["event_streams"]["open"] == 0
    });
    assert_eq!(
        stats["event_streams"]["per_client"]["leases_granted"], 1,
        "the page's stream held a lease: {stats}"
    );
    assert_eq!(stats["cache"]["events"]["subscriptions"], 1, "{stats}");
    assert_eq!(
        server
            .cli(&["PUBSUB", "NUMSUB", "market:prices"])
            .lines()
            .map(str::trim)
            .next_back(),
        Some("2"),
        "one subscription per instance, whatever the number of browsers"
    );
}

#[test]
fn a_missing_browser_fails_the_browser_test_unless_its_skip_is_allowed() {
    // The browser test, run alone from this binary where `chromium` cannot
    // be found. Before, it passed, and its "skipped" line was hidden.
    let no_tools = std::env::temp_dir().join(format!("no-tools-{}", std::process::id()));
    std::fs::create_dir_all(&no_tools).unwrap();
    let record = no_tools.join("skipped-checks.txt");
    let run = |allow: Option<&str>| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", BROWSER_TEST, "--nocapture"])
            .env("PATH", &no_tools)
            .env(tests::skip::RECORD_VAR, &record)
            .env_remove(tests::skip::ALLOW_SKIP_VAR)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(allow) = allow {
            command.env(tests::skip::ALLOW_SKIP_VAR, allow);
        }
        let output = command.output().expect("run the browser test");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            text.contains("1 passed") || text.contains("1 failed"),
            "it ran: {text}"
        );
        (output.status.success(), text)
    };

    let (passed, text) = run(None);
    assert!(!passed, "a missing browser fails the test:\n{text}");
    assert!(
        text.contains("TEST_ALLOW_SKIP=chromium"),
        "and says how to allow the skip:\n{text}"
    );
    assert!(!record.exists(), "nothing recorded when it fails");

    let (passed, text) = run(Some("msrv"));
    assert!(!passed, "another check's skip does not cover it:\n{text}");

    let (passed, text) = run(Some("msrv,chromium"));
    assert!(passed, "an allowed skip passes:\n{text}");
    let recorded = std::fs::read_to_string(&record).expect("the skip is recorded");
    assert!(
        recorded.starts_with("chromium: chromium is not installed"),
        "{recorded}"
    );
    let _ = std::fs::remove_dir_all(&no_tools);
}

/// `GET /metrics`, parsed by a Prometheus text-format parser.
fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_string())))
        .unwrap_or_else(|err| panic!("not Prometheus text ({err}):\n{body}"))
}

/// The value of the counter `name` summed over the samples whose labels
/// include `labels` (0 when there is none yet).
fn counter(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(value) => value,
            ref other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

#[test]
fn search_service_metrics_move_with_requests_and_parse_as_prometheus_text() {
    let server = tests::RedisServer::start();
    let service = start(SEARCH, &[("REDIS_URL", &server.url()), ("RATE_LIMIT", "5")]);
    exercise_search(service.port);
    // Served outside the rate limit: the client is over its limit by now.
    let before = scrape(service.port);
    let search = [("prefix", "search"), ("tier", "redis")];
    let memoized = |scrape: &_, result| {
        counter(
            scrape,
            "cache_memoized_calls",
            &[search[0], search[1], ("result", result)],
        )
    };
    assert_eq!(memoized(&before, "miss"), 1.0, "the first search");
    assert_eq!(memoized(&before, "hit"), 1.0, "the second search");
    let get_hits = [("operation", "get"), ("result", "hit"), ("tier", "redis")];
    assert!(counter(&before, "cache_operations", &get_hits) >= 1.0);
    // The one policy of `RateLimitLayer::new` is named after the key prefix.
    let allowed = [("outcome", "allowed"), ("policy", "rate")];
    assert_eq!(counter(&before, "ratelimit_decisions", &allowed), 5.0);
    let local = [("outcome", "limited_locally")];
    assert_eq!(counter(&before, "ratelimit_decisions", &local), 1.0);
    assert!(counter(&before, "ratelimit_store_calls", &[("result", "ok")]) >= 5.0);
    assert!(
        before
            .samples
            .iter()
            .any(|s| s.metric == "cache_operation_duration"
                && matches!(s.value, prometheus_parse::Value::Histogram(_))),
        "the operation latency is a histogram"
    );

    // Counters move with requests: one more rejected search.
    assert_eq!(http_get(service.port, "/search?q=more").0, 429);
    let after = scrape(service.port);
    assert_eq!(counter(&after, "ratelimit_decisions", &local), 2.0);
    assert_eq!(
        memoized(&after, "miss"),
        1.0,
        "a rejected request runs nothing"
    );
}

#[test]
fn portfolio_serves_its_cache_metrics() {
    let service = start(PORTFOLIO, &[]);
    for _ in 0..2 {
        assert_eq!(http_get(service.port, "/prices?assets=BTC").0, 200);
    }
    let scrape = scrape(service.port);
    let reads = [("operation", "get_many"), ("tier", "memory")];
    assert!(
        counter(&scrape, "cache_operations", &reads) >= 2.0,
        "{:?}",
        scrape.samples
    );
}

/// A `GET /events` stream read as raw Server-Sent Events: the request is
/// HTTP/1.0, so the body is the event stream itself until the server closes.
struct EventStream {
    reader: BufReader<TcpStream>,
    status: u16,
    head: String,
}

/// What [`EventStream::next_event`] found.
#[derive(Debug, PartialEq)]
enum Next {
    /// An event's lines, comments left out.
    Event(String),
    /// The server closed the stream.
    Closed,
    /// Nothing within the time given.
    Nothing,
}

impl EventStream {
    /// Opens `/events` from the loopback address `source`, with these extra header lines.
    fn open(port: u16, source: [u8; 4], headers: &str) -> EventStream {
        let mut stream = connect_from(source, port);
        write!(
            stream,
            "GET /events HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n{headers}\r\n"
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a response head");
            if line.is_empty() || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status: {head:?}"));
        EventStream {
            reader,
            status,
            head,
        }
    }

    /// The next event within `timeout`.
    fn next_event(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        let mut event = String::new();
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Next::Nothing;
            };
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Next::Closed,
                Ok(_) if line == "\n" => {
                    if !event.is_empty() {
                        return Next::Event(event);
                    }
                }
                // A comment (the keep-alive).
                Ok(_) if line.starts_with(':') => {}
                Ok(_) => event.push_str(&line),
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return Next::Closed,
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Next::Nothing;
                }
                Err(err) => panic!("reading events: {err}"),
            }
        }
    }

    /// The next event, which must come within 10 s.
    fn expect_event(&mut self) -> String {
        match self.next_event(Duration::from_secs(10)) {
            Next::Event(event) => event,
            other => panic!("no event: {other:?}"),
        }
    }
}

/// A connection to the loopback service from another loopback address
/// (every 127.0.0.0/8 address is this machine): a second client.
fn connect_from(source: [u8; 4], port: u16) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let stream = socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect");
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

const LOCALHOST: [u8; 4] = [127, 0, 0, 1];

/// `/stats` once `check` holds for it (within 10 s).
fn stats_once(
    port: u16,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let held = poll_until(Duration::from_secs(10), || {
        last = json(&http_get(port, "/stats").1);
        check(&last)
    });
    assert!(held, "{what}: {last}");
    last
}

fn publish(port: u16, asset: &str, price: &str) {
    let (status, body) = request(
        port,
        "POST",
        &format!("/prices/{asset}"),
        &format!(r#"{{"price":"{price}"}}"#),
    );
    assert_eq!(status, 204, "{body}");
}

/// The value of the event's `id:` line.
fn event_id(event: &str) -> &str {
    event
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no id: {event:?}"))
}

#[test]
fn an_event_stream_outlives_the_idle_timeout() {
    // Idle after 300 ms, dropped 300 ms after that: before the fix the
    // stream's request counted as ended once its head was sent, so every
    // stream was cut at IDLE_TIMEOUT_MS + SHUTDOWN_GRACE_MS (70 s by default).
    let service = start(
        PORTFOLIO,
        &[("IDLE_TIMEOUT_MS", "300"), ("SHUTDOWN_GRACE_MS", "300")],
    );
    stats_once(service.port, "the relay subscribed", |stats| {
        stats["event_streams"]["relay_subscribed"] == true
    });
    let mut events = EventStream::open(service.port, LOCALHOST, "");
    assert_eq!(events.status, 200, "{}", events.head);
    events.expect_event();
    assert_eq!(
        events.next_event(Duration::from_secs(2)),
        Next::Nothing,
        "open and quiet for 2 s, over three times idle + grace"
    );
    publish(service.port, "BTC", "71234.5");
    let update = events.expect_event();
    assert!(
        update.contains(r#""symbol":"BTC","price":"71234.5""#),
        "{update}"
    );
}

#[test]
fn a_reconnecting_event_stream_resumes_after_its_last_event_id() {
    let service = start(PORTFOLIO, &[]);
    let port = service.port;
    stats_once(port, "the relay subscribed", |stats| {
        stats["event_streams"]["relay_subscribed"] == true
    });
    let mut first = EventStream::open(port, LOCALHOST, "");
    assert_eq!(first.status, 200, "{}", first.head);
    // The stream's position comes first, before any update.
    let opened = first.expect_event();
    let position = event_id(&opened).to_string();
    drop(first);

    // Published while the browser was away.
    publish(port, "BTC", "1");
    publish(port, "ETH", "2");
    stats_once(port, "the relay received both", |stats| {
        stats["event_streams"]["relay_received"] == 2
    });
    let mut resumed = EventStream::open(port, LOCALHOST, &format!("Last-Event-ID: {position}\r\n"));
    assert_eq!(resumed.status, 200, "{}", resumed.head);
    let btc = resumed.expect_event();
    assert!(btc.starts_with("event: price\n"), "{btc}");
    assert!(btc.contains(r#""symbol":"BTC","price":"1""#), "{btc}");
    let eth = resumed.expect_event();
    assert!(eth.contains(r#""symbol":"ETH","price":"2""#), "{eth}");
    let (run, _) = position.split_once('-').unwrap();
    assert_eq!(event_id(&eth), format!("{run}-2"));

    // An id this process cannot resume from (another instance's, an
    // earlier run's): the stream says updates may be missing.
    let mut foreign = EventStream::open(port, LOCALHOST, "Last-Event-ID: 5eed-1\r\n");
    let gap = foreign.expect_event();
    assert!(gap.starts_with("event: gap\n"), "{gap}");
    assert_eq!(
        event_id(&gap),
        format!("{run}-2"),
        "and where it goes on from"
    );
    publish(port, "SOL", "3");
    let sol = foreign.expect_event();
    assert!(sol.contains(r#""symbol":"SOL""#), "{sol}");
    let sol_again = resumed.expect_event();
    assert_eq!(sol_again, sol, "every stream numbers an update alike");
}

#[test]
fn event_streams_are_capped_per_client_and_in_total_and_released_when_they_end() {
    let service = start(
        PORTFOLIO,
        &[
            ("MAX_EVENT_STREAMS_PER_CLIENT", "2"),
            ("MAX_EVENT_STREAMS", "3"),
        ],
    );
    let port = service.port;
    stats_once(port, "the relay subscribed", |stats| {
        stats["event_streams"]["relay_subscribed"] == true
    });
    let (a, b, c) = ([127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]);
    let a1 = EventStream::open(port, a, "");
    let a2 = EventStream::open(port, a, "");
    assert_eq!((a1.status, a2.status), (200, 200));
    let a3 = EventStream::open(port, a, "");
    assert_eq!(a3.status, 429, "a client over its cap: {}", a3.head);
    let a3_head = a3.head.to_ascii_lowercase();
    // The rate limiter's concurrency limit: a slot frees when a stream ends.
    assert!(a3_head.contains("retry-after: 1\r\n"), "{a3_head}");
    assert!(
        a3_head.contains(r#"ratelimit-policy: "streams";q=2;qu="concurrent-requests""#),
        "{a3_head}"
    );
    assert!(
        a3_head.contains("connection: close"),
        "its connection slot is given back at once: {a3_head}"
    );
    let b1 = EventStream::open(port, b, "");
    assert_eq!(b1.status, 200, "another client: {}", b1.head);
    let c1 = EventStream::open(port, c, "");
    assert_eq!(c1.status, 503, "the service over its cap: {}", c1.head);
    // The rest of the service is not starved by the streams.
    assert_eq!(http_get(port, "/health").0, 200);
    stats_once(port, "three streams, two refused per client", |stats| {
        let per_client = &stats["event_streams"]["per_client"];
        stats["event_streams"]["open"] == 3
            && per_client["leases_granted"] == 4
            && per_client["leases_refused"] == 1
    });

    // A stream whose client went away is released.
    drop(a1);
    stats_once(port, "a1 released", |stats| {
        stats["event_streams"]["open"] == 2
    });
    let a4 = EventStream::open(port, a, "");
    assert_eq!(a4.status, 200, "{}", a4.head);
    drop((a2, a3, a4, b1, c1));
    stats_once(port, "every stream released", |stats| {
        stats["event_streams"]["open"] == 0
            && stats["event_streams"]["per_client"]["leases_expired"] == 0
    });
}

#[test]
fn logs_are_plain_off_a_terminal_and_json_lines_with_log_format_json() {
    // stdout is a pipe here, as for a file or a log shipper: no colour codes.
    // Before, every line had them.
    let text = start(SEARCH, &[]);
    assert!(text.startup_log.len() >= 2, "{:?}", text.startup_log);
    for line in &text.startup_log {
        assert!(!line.contains('\x1b'), "escape codes in {line:?}");
    }

    let service = start(PORTFOLIO, &[("LOG_FORMAT", "json")]);
    let entries: Vec<serde_json::Value> = service
        .startup_log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line:?}")))
        .collect();
    for entry in &entries {
        assert!(entry["timestamp"].is_string(), "{entry}");
        assert!(entry["target"].is_string(), "{entry}");
    }
    let listening = entries.last().unwrap();
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert!(
        listening["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("listening")),
        "{listening}"
    );
    assert_eq!(
        listening["address"],
        format!("0.0.0.0:{}", service.port),
        "the event's fields at the top level: {listening}"
    );

    // An unknown format is refused before anything starts.
    let mut child = Command::new(PORTFOLIO)
        .env_clear()
        .env("LOG_FORMAT", "xml")
        .env("PORT", tests::free_port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let Ok(error) = rx.recv_timeout(Duration::from_secs(10)) else {
        let _ = child.kill();
        panic!("LOG_FORMAT=xml started serving");
    };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{error}");
    assert!(error.contains("LOG_FORMAT must be text or json"), "{error}");
}

/// `method path` with extra header lines: status, head and body.
fn request_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The paid plan (`X-Api-Key` from the static table) counts apart with ten
/// times the limit, and `/login` is charged only when it fails.
#[test]
fn search_service_has_a_paid_plan_and_charges_only_failed_logins() {
    let service = start(SEARCH, &[("RATE_LIMIT", "3"), ("DEMO_PASSWORD", "s3cret")]);
    let port = service.port;
    let paid = [("X-Api-Key", "demo-paid-key")];
    for _ in 0..3 {
        assert_eq!(request_with(port, "GET", "/health", &[], "").0, 200);
    }
    assert_eq!(request_with(port, "GET", "/health", &[], "").0, 429);
    // The paid plan: its own count, 30 per window, in its headers.
    let (status, head, _) = request_with(port, "GET", "/health", &paid, "");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("ratelimit-policy: \"paid\";q=30;w=60"),
        "{head}"
    );
    // An unknown key is the free plan, already spent.
    let other = [("X-Api-Key", "guess")];
    assert_eq!(request_with(port, "GET", "/health", &other, "").0, 429);

    let right = r#"{"user":"demo","password":"s3cret"}"#;
    let wrong = r#"{"user":"demo","password":"guess"}"#;
    for _ in 0..6 {
        // Successful logins are given back.
        assert_eq!(request_with(port, "POST", "/login", &paid, right).0, 200);
    }
    for _ in 0..5 {
        assert_eq!(request_with(port, "POST", "/login", &paid, wrong).0, 401);
    }
    let (status, head, _) = request_with(port, "POST", "/login", &paid, wrong);
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("\"login-failures\";q=5;w=60"), "{head}");
    let stats = http_get_with(port, "/stats", &paid);
    assert_eq!(stats["login_rate_limit"]["refunded"], 6, "{stats}");
}

fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let (status, _, body) = request_with(port, "GET", path, headers, "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}
