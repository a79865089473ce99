//! Fault tests against real `redis-server` processes: crashes, restarts,
//! a Redis absent at start-up, the circuit breaker, credentials.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cache_core::{BreakerState, Cache, CacheBuilder, ErrorKind};
use tests::{RedisServer, free_port, unique_prefix};

/// Timeout of the handles in this file; every failing call must end within it.
const TIMEOUT: Duration = Duration::from_millis(200);
/// Slack for scheduling on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(150);

async fn handle(url: &str) -> Cache {
    Cache::builder()
        .redis_url(url)
        .unwrap()
        .timeout(TIMEOUT)
        .breaker_cooldown(Duration::from_millis(300))
        .build()
        .await
        .unwrap()
}

/// Calls `cache.set` until one succeeds, returning how long it took.
async fn until_it_works(cache: &Cache, key: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if cache.set(key, &1, None).await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the handle did not recover within {limit:?}"
        );
        // Each failing call already waits up to TIMEOUT or fails fast on the open
        // breaker; this pause only keeps the loop from spinning on the latter.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_when_redis_dies_end_within_the_timeout() {
    let mut server = RedisServer::start();
    let cache = handle(&server.url()).await;
    let p = unique_prefix("inflight");
    cache.set(&format!("{p}:k"), &1, None).await.unwrap();

    let stop = Instant::now() + Duration::from_millis(800);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let cache = cache.clone();
            let key = format!("{p}:k{w}");
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut failures = 0;
                while Instant::now() < stop {
                    let started = Instant::now();
                    if cache.set(&key, &w, None).await.is_err() {
                        failures += 1;
                    }
                    slowest = slowest.max(started.elapsed());
                    // A fail-fast call (open breaker) never yields by itself; without
                    // this the loop would starve the other tasks and the timers.
                    tokio::task::yield_now().await;
                }
                (slowest, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();
    let mut any_failed = false;
    for worker in workers {
        let (slowest, failures) = worker.await.unwrap();
        assert!(
            slowest <= TIMEOUT + SLACK,
            "a call took {slowest:?}, over the {TIMEOUT:?} timeout"
        );
        any_failed |= failures > 0;
    }
    assert!(any_failed, "calls after the kill must fail");
}

/// A crashed Redis refuses connections at once: a call that meets that must
/// fail as fast, not wait out its timeout behind the driver's reconnect backoff.
/// (The fault run showed one request waiting a whole call timeout when it was
/// in flight as Redis died; it now waits a few milliseconds.)
#[tokio::test]
async fn calls_fail_fast_while_redis_refuses_connections() {
    const LONG: Duration = Duration::from_secs(1);
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(&server.url())
        .unwrap()
        .timeout(LONG)
        // Every call below must reach the connection, not an open breaker.
        .breaker_threshold(100)
        .build()
        .await
        .unwrap();
    let key = unique_prefix("refused");
    cache.set(&key, &1, None).await.unwrap();
    server.kill();
    for call in 0..3 {
        let started = Instant::now();
        let err = cache.get::<i32>(&key).await.unwrap_err();
        let took = started.elapsed();
        assert!(err.is_connection(), "call {call}: {err}");
        assert!(
            took < Duration::from_millis(150),
            "call {call} took {took:?} against a refusing Redis (timeout {LONG:?})"
        );
    }
    // And the first call after the restart finds the server again, with no pause.
    server.restart();
    let started = Instant::now();
    cache.set(&key, &2, None).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(150));
}

#[tokio::test]
async fn the_same_handle_works_again_after_redis_restarts() {
    let mut server = RedisServer::start();
    let cache = handle(&server.url()).await;
    let key = unique_prefix("restart");
    cache.set(&key, &1, None).await.unwrap();
    server.kill();
    assert!(cache.set(&key, &2, None).await.is_err());
    server.restart();
    let took = until_it_works(&cache, &key, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "recovered after {took:?}");
}

#[tokio::test]
async fn from_env_succeeds_without_redis_and_connects_when_it_appears() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let vars = HashMap::from([
        ("REDIS_URL".to_string(), url),
        ("CACHE_TIMEOUT_MS".to_string(), "200".to_string()),
        ("CACHE_BREAKER_COOLDOWN_MS".to_string(), "300".to_string()),
    ]);
    let cache = CacheBuilder::from_vars(|name| vars.get(name).cloned())
        .unwrap()
        .build()
        .await
        .expect("an unreachable Redis is not a configuration error");
    let started = Instant::now();
    let err = cache.get::<i32>("k").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(started.elapsed() <= TIMEOUT + SLACK);
    assert!(!cache.health().await.healthy);

    let _server = RedisServer::start_on(port, &[]);
    let took = until_it_works(&cache, &unique_prefix("late"), Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "connected after {took:?}");
    assert!(cache.health().await.healthy);
}

#[tokio::test]
async fn breaker_opens_fails_fast_and_closes_after_recovery() {
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(&server.url())
        .unwrap()
        .timeout(TIMEOUT)
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    let key = unique_prefix("breaker");
    cache.set(&key, &1, None).await.unwrap();
    server.kill();
    for _ in 0..3 {
        assert!(cache.get::<i32>(&key).await.is_err());
    }
    assert_eq!(cache.stats().breaker, BreakerState::Open);
    let started = Instant::now();
    let err = cache.get::<i32>(&key).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "an open breaker must fail fast, took {:?}",
        started.elapsed()
    );
    assert!(cache.stats().breaker_rejections >= 1);

    server.restart();
    until_it_works(&cache, &key, Duration::from_secs(5)).await;
    assert_eq!(cache.stats().breaker, BreakerState::Closed);
}

#[tokio::test]
async fn password_never_appears_in_debug_errors_or_health() {
    let secret = "Sup3r-Secret-Pa55";
    let server = RedisServer::start_with(&["--requirepass", secret]);
    let good = handle(&format!("redis://:{secret}@127.0.0.1:{}", server.port())).await;
    good.set(&unique_prefix("auth"), &1, None).await.unwrap();
    assert!(!format!("{good:?}").contains(secret));
    assert!(!good.backend().to_string().contains(secret));

    let wrong = format!("{secret}-wrong");
    let bad = handle(&format!("redis://:{wrong}@127.0.0.1:{}", server.port())).await;
    let err = bad.get::<i32>("k").await.unwrap_err();
    let health = bad.health().await;
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{health:?}"),
        format!("{bad:?}"),
    ] {
        assert!(!text.contains(secret), "password leaked: {text}");
    }
    assert!(!health.healthy);
}

#[tokio::test]
async fn acl_user_and_password_from_the_url_authenticate() {
    let server = RedisServer::start();
    server.cli(&["ACL", "SETUSER", "app", "on", ">app-pass", "~*", "+@all"]);
    let cache = handle(&format!(
        "redis://app:app-pass@127.0.0.1:{}/2",
        server.port()
    ))
    .await;
    cache.set("k", &"v", None).await.unwrap();
    assert_eq!(server.cli(&["-n", "2", "GET", "k"]).trim(), "\"v\"");
}
