//! Fault tests against real `redis-server` processes: crashes, restarts,
//! a Redis absent at start-up, the circuit breaker, credentials, and Redis
//! Cluster failovers (a primary killed, and a planned `CLUSTER FAILOVER`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cache_core::{BreakerState, Cache, CacheBuilder, ErrorKind};
use rate_limit::{FailMode, RateLimitLayer};
use tests::suite;
use tests::{RedisCluster, RedisServer, free_port, unique_prefix};

/// Timeout of the handles in this file; every failing call must end within it.
const TIMEOUT: Duration = Duration::from_millis(200);
/// Slack for scheduling on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(150);

async fn handle(url: &str) -> Cache {
    suite::build(
        suite::redis(url)
            .timeout(TIMEOUT)
            .breaker_cooldown(Duration::from_millis(300)),
    )
    .await
}

/// The load tasks of a test each report their first successful call, so
/// that the fault is injected once all of them run (not after a pause that
/// guesses when they do).
#[derive(Clone)]
struct Running(Arc<tokio::sync::Semaphore>);

impl Running {
    fn new() -> Self {
        Running(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    /// Called once by each task, after its first successful call.
    fn report(&self) {
        self.0.add_permits(1);
    }

    /// Waits until `tasks` tasks have reported, within a bound.
    async fn wait_for(&self, tasks: usize) {
        let tasks = u32::try_from(tasks).expect("a few tasks");
        tokio::time::timeout(Duration::from_secs(10), self.0.acquire_many(tasks))
            .await
            .expect("the load did not start within 10 s")
            .expect("the semaphore is never closed")
            .forget();
    }
}

/// Calls `cache.set` until one succeeds, returning how long it took. The key
/// gets a TTL, so that checks for keys without one are not disturbed.
async fn until_it_works(cache: &Cache, key: &str, limit: Duration) -> Duration {
    // Each failing call waits up to TIMEOUT or fails fast on the open breaker.
    tests::eventually(limit, "the handle recovers", async || {
        let ttl = Some(Duration::from_secs(600));
        cache.set(key, &1, ttl).await.is_ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_when_redis_dies_end_within_the_timeout() {
    let mut server = RedisServer::start();
    let cache = handle(&server.url()).await;
    let p = unique_prefix("inflight");
    cache.set(&format!("{p}:k"), &1, None).await.unwrap();

    let stop = Instant::now() + Duration::from_millis(800);
    let running = Running::new();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (cache, running) = (cache.clone(), running.clone());
            let key = format!("{p}:k{w}");
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let (mut failures, mut successes) = (0, 0);
                while Instant::now() < stop {
                    let started = Instant::now();
                    if cache.set(&key, &w, None).await.is_err() {
                        failures += 1;
                    } else {
                        successes += 1;
                        if successes == 1 {
                            running.report();
                        }
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
    running.wait_for(workers.len()).await;
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
    let cache = suite::build(
        suite::redis(&server.url())
            .timeout(LONG)
            // Every call below must reach the connection, not an open breaker.
            .breaker_threshold(100),
    )
    .await;
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
    let cache = suite::build(
        suite::redis(&server.url())
            .timeout(TIMEOUT)
            .breaker_threshold(3)
            .breaker_cooldown(Duration::from_millis(400)),
    )
    .await;
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

// ---------------------------------------------------------------------------
// Redis Cluster failover

/// Node timeout of the clusters that fail over here: a dead primary is
/// replaced about this long, plus the replica's election delay (0.5-1 s), after it died.
const NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long after the promotion every handle may still fail while it finds
/// the new primary (breaker cooldown, slot map refresh).
const RECOVERY: Duration = Duration::from_secs(2);
/// The limiter's store timeout in these tests; a request waits at most twice
/// that on the store (behind the batch at the store, then its own call).
const STORE_TIMEOUT: Duration = Duration::from_millis(100);

/// One timed operation of a load.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    took: Duration,
    /// Cache calls: succeeded. HTTP: the status.
    outcome: u16,
}

/// Tasks calling `set` then `get` on 64 keys spread over every slot, until
/// `stop`; each reports its first successful `set` to `running`.
fn cache_load(
    cache: &Cache,
    prefix: &str,
    stop: &Arc<AtomicBool>,
    running: &Running,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    const TASKS: usize = 6;
    (0..TASKS)
        .map(|task| {
            let (cache, prefix, stop) = (cache.clone(), prefix.to_string(), stop.clone());
            let running = running.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut reported = false;
                let mut i = task;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{prefix}:load:{}", i % 64);
                    i += TASKS;
                    let at = Instant::now();
                    let set = cache.set(&key, &i, Some(Duration::from_secs(600))).await;
                    if set.is_ok() && !reported {
                        running.report();
                        reported = true;
                    }
                    samples.push(Sample {
                        at,
                        took: at.elapsed(),
                        outcome: u16::from(set.is_ok()),
                    });
                    let at = Instant::now();
                    let read = cache.get::<usize>(&key).await;
                    samples.push(Sample {
                        at,
                        took: at.elapsed(),
                        outcome: u16::from(read.is_ok()),
                    });
                    // A fail-fast call (open breaker) never yields by itself.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                samples
            })
        })
        .collect()
}

/// One keep-alive client sending `GET /` to `port` every few milliseconds
/// until `stop`; it reports its first 200 to `running`.
fn http_load(
    port: u16,
    stop: &Arc<AtomicBool>,
    running: &Running,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    let (stop, running) = (stop.clone(), running.clone());
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut reported = false;
        let mut conn = tests::http::Connection::open(port).await.unwrap();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            let response = conn.get("/", Duration::from_secs(5)).await.unwrap();
            if response.status == 200 && !reported {
                running.report();
                reported = true;
            }
            samples.push(Sample {
                at,
                took: at.elapsed(),
                outcome: response.status,
            });
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        samples
    })
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>) -> Vec<Sample> {
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    samples
}

/// A cluster that may fail over, a handle on it, and two rate-limited apps
/// (fail open, fail closed) whose counters share one slot with `probe`.
struct FailoverRig {
    cluster: RedisCluster,
    cache: Cache,
    /// A handle whose namespace is a hash tag: all its keys share the probe's slot.
    tagged: Cache,
    /// Prefix of the load's keys (spread over every slot).
    prefix: String,
    /// The full key `probe` of `tagged`, in the slot of the limiters' counters.
    probe: String,
    open: u16,
    closed: u16,
}

/// Serves `GET /` behind `layer` on a free loopback port.
async fn serve(layer: RateLimitLayer) -> u16 {
    tests::http::serve_layer(layer).await
}

async fn failover_rig(name: &str) -> FailoverRig {
    let cluster = RedisCluster::start_with_node_timeout(NODE_TIMEOUT);
    let handle = |namespace: Option<&str>| {
        let builder = suite::cluster(cluster.urls())
            .timeout(TIMEOUT)
            .breaker_cooldown(Duration::from_millis(300));
        suite::build(match namespace {
            Some(namespace) => builder.namespace(namespace),
            None => builder,
        })
    };
    let cache = handle(None).await;
    let prefix = unique_prefix(name);
    // A namespace that is a hash tag puts the probe and both limiters'
    // counters in one slot, whatever the limiter makes of the client's address.
    let tag = format!("{{{prefix}}}");
    let tagged = handle(Some(&tag)).await;
    let limiter = |mode: FailMode, name: &str| {
        RateLimitLayer::builder(tagged.clone())
            .limit(1_000_000)
            .window(Duration::from_secs(600))
            .prefix(name)
            .store_timeout(STORE_TIMEOUT)
            .fail_mode(mode)
            .build()
            .unwrap()
    };
    let open = serve(limiter(FailMode::Open, "open")).await;
    let closed = serve(limiter(FailMode::Closed, "closed")).await;
    for port in [open, closed] {
        let response = tests::http::get(port, "/", &[]).await;
        assert_eq!(response.status, 200);
        assert!(
            response.header("x-ratelimit-remaining").is_some(),
            "counted"
        );
    }
    tagged
        .set("probe", &0, Some(Duration::from_secs(600)))
        .await
        .unwrap();
    FailoverRig {
        cluster,
        cache,
        tagged,
        prefix,
        probe: format!("{tag}:probe"),
        open,
        closed,
    }
}

impl FailoverRig {
    /// The keys under `pattern` on every current primary, and whether each has a TTL.
    fn keys_on_primaries(&self, pattern: &str) -> Vec<(String, bool)> {
        let mut keys = Vec::new();
        for port in self.cluster.primaries() {
            let node = self
                .cluster
                .nodes()
                .iter()
                .find(|n| n.port() == port)
                .unwrap();
            for key in node
                .cli(&["--scan", "--pattern", pattern])
                .lines()
                .filter(|k| !k.is_empty())
            {
                let pttl: i64 = node.cli(&["PTTL", key]).trim().parse().unwrap();
                keys.push((key.to_string(), pttl > 0));
            }
        }
        keys
    }

    /// What a failover must leave true: nothing without a TTL, counting
    /// resumed on the new primary, and `invalidate_prefix` reaching every primary.
    async fn check_after_failover(&self) {
        let tagged = self.keys_on_primaries(&format!("{{{}}}*", self.prefix));
        assert!(tagged.len() >= 3, "probe and both counters: {tagged:?}");
        let loaded = self.keys_on_primaries(&format!("{}:load:*", self.prefix));
        assert_eq!(loaded.len(), 64, "every load key is on a primary");
        let without_ttl: Vec<_> = tagged
            .iter()
            .chain(&loaded)
            .filter(|(_, ttl)| !ttl)
            .collect();
        assert!(
            without_ttl.is_empty(),
            "keys left without a TTL: {without_ttl:?}"
        );

        let first = tests::http::get(self.open, "/", &[])
            .await
            .number("x-ratelimit-remaining");
        let second = tests::http::get(self.open, "/", &[])
            .await
            .number("x-ratelimit-remaining");
        assert_eq!(second + 1, first, "the counter counts on the new primary");

        let removed = self
            .cache
            .invalidate_prefix(&format!("{}:load:", self.prefix))
            .await
            .unwrap();
        assert_eq!(
            removed, 64,
            "invalidate_prefix walks every primary, the promoted one included"
        );
        assert!(
            self.keys_on_primaries(&format!("{}:load:*", self.prefix))
                .is_empty()
        );
    }
}

/// Every cache call ended within the handle's timeout and every request
/// within twice the limiter's store timeout: nobody is blocked by a failover.
fn assert_bounded(cache_calls: &[Sample], requests: &[Sample]) {
    let slowest_call = cache_calls.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(
        slowest_call <= TIMEOUT + SLACK,
        "a cache call took {slowest_call:?}"
    );
    let slowest_request = requests.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(
        slowest_request <= 2 * STORE_TIMEOUT + SLACK,
        "a request took {slowest_request:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_primary_is_replaced_and_the_handle_and_limiter_follow() {
    let mut rig = failover_rig("killed").await;
    let victim = rig.cluster.primary_for_key(&rig.probe);
    let replica = rig
        .cluster
        .replica_of(victim)
        .expect("every primary has a replica");

    let stop = Arc::new(AtomicBool::new(false));
    let running = Running::new();
    let calls = cache_load(&rig.cache, &rig.prefix, &stop, &running);
    let (open, closed) = (
        http_load(rig.open, &stop, &running),
        http_load(rig.closed, &stop, &running),
    );
    running.wait_for(calls.len() + 2).await;
    let killed = Instant::now();
    rig.cluster.node_mut(victim).kill();
    // Blocks this thread only: the load runs on the runtime's workers.
    let failover = rig.cluster.wait_until(Duration::from_secs(15), |c| {
        c.primaries().contains(&replica) && c.is_settled()
    });
    let promoted = Instant::now();
    let followed = until_it_works(&rig.tagged, "probe", Duration::from_secs(5)).await;
    // Every handle has found the new primary by then: its breaker probes
    // again after 300 ms, and the cluster client refreshes its slot map on the
    // first errors (given time to, on a loaded two-core machine).
    let settled = promoted + followed + RECOVERY;
    tokio::time::sleep_until((settled + Duration::from_millis(300)).into()).await;
    stop.store(true, Ordering::Relaxed);
    let calls = collect(calls).await;
    let (open, closed) = (open.await.unwrap(), closed.await.unwrap());
    eprintln!(
        "killed primary: replica promoted {failover:?} after the kill, handle used it {followed:?} later; \
         {} of {} cache calls failed",
        calls.iter().filter(|s| s.outcome == 0).count(),
        calls.len()
    );

    assert!(
        failover < Duration::from_secs(10),
        "promotion took {failover:?}"
    );
    assert!(
        calls.iter().any(|s| s.outcome == 0 && s.at > killed),
        "calls failed while the primary was down"
    );
    let last_failure = calls.iter().filter(|s| s.outcome == 0).map(|s| s.at).max();
    assert!(
        last_failure.is_none_or(|at| at <= settled),
        "every call succeeds once the handle follows: the last failed {:?} after the promotion",
        last_failure.map(|at| at - promoted)
    );
    assert!(
        open.iter().all(|s| s.outcome == 200),
        "fail open: every request passes"
    );
    assert!(
        closed.iter().all(|s| s.outcome == 200 || s.outcome == 503),
        "fail closed: passes or 503, nothing else"
    );
    assert!(
        closed.iter().any(|s| s.outcome == 503 && s.at > killed),
        "fail closed: refused while its counter's primary is down"
    );
    assert!(
        closed
            .iter()
            .filter(|s| s.at > settled)
            .all(|s| s.outcome == 200),
        "fail closed: counted again once the handle follows"
    );
    assert_bounded(&calls, &[open, closed].concat());

    // The old primary comes back as a replica of the new one; the walk skips it.
    rig.cluster.node_mut(victim).restart();
    rig.cluster
        .wait_until(Duration::from_secs(15), RedisCluster::is_settled);
    assert!(!rig.cluster.primaries().contains(&victim));
    rig.check_after_failover().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_cluster_failover_is_followed_without_errors_after_the_switch() {
    let rig = failover_rig("planned").await;
    let old = rig.cluster.primary_for_key(&rig.probe);
    let replica = rig
        .cluster
        .replica_of(old)
        .expect("every primary has a replica");
    let replica_node = rig
        .cluster
        .nodes()
        .iter()
        .find(|n| n.port() == replica)
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let running = Running::new();
    let calls = cache_load(&rig.cache, &rig.prefix, &stop, &running);
    let requests = vec![
        http_load(rig.open, &stop, &running),
        http_load(rig.closed, &stop, &running),
    ];
    running.wait_for(calls.len() + requests.len()).await;
    assert_eq!(replica_node.cli(&["CLUSTER", "FAILOVER"]).trim(), "OK");
    let switched = rig.cluster.wait_until(Duration::from_secs(10), |c| {
        c.primaries().contains(&replica) && c.is_settled()
    });
    let promoted = Instant::now();
    let followed = until_it_works(&rig.tagged, "probe", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (calls, requests) = (collect(calls).await, collect(requests).await);
    let failed = calls.iter().filter(|s| s.outcome == 0).count();
    let refused = requests.iter().filter(|s| s.outcome != 200).count();
    eprintln!(
        "planned failover: switched {switched:?} after CLUSTER FAILOVER, handle used the new primary {followed:?} later; \
         {failed} of {} cache calls failed, {refused} of {} requests not 200",
        calls.len(),
        requests.len()
    );
    assert!(
        calls
            .iter()
            .filter(|s| s.at > promoted + followed)
            .all(|s| s.outcome == 1),
        "every call succeeds once the switch is over"
    );
    assert_bounded(&calls, &requests);
    rig.check_after_failover().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_reports_a_primary_that_is_down_instead_of_skipping_it() {
    let mut cluster = RedisCluster::start_with_node_timeout(NODE_TIMEOUT);
    // The other primaries keep serving while one is down, as many deployments
    // choose; and the dead primary is not replaced until the test says so.
    cluster.config_set("cluster-require-full-coverage", "no");
    let victim = cluster.primaries()[0];
    let replica = cluster.replica_of(victim).expect("a replica");
    let replica_cli = |args: &[&str]| tests::RedisServer::cli_on(replica, args);
    assert_eq!(
        replica_cli(&["CONFIG", "SET", "cluster-replica-no-failover", "yes"]).trim(),
        "OK"
    );
    let cache = suite::build(
        suite::cluster(cluster.urls())
            .timeout(TIMEOUT)
            .breaker_threshold(100),
    )
    .await;
    let p = unique_prefix("down");
    let entries: Vec<(String, u32)> = (0..64).map(|i| (format!("{p}:k:{i}"), i)).collect();
    let refs: Vec<(&str, u32)> = entries.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    cache
        .set_many(&refs, Some(Duration::from_secs(600)))
        .await
        .unwrap();

    cluster.node_mut(victim).kill();
    // Every node agrees it is down (FAIL, not only suspected), so whichever
    // node the client asks for the topology reports it failed.
    cluster.wait_until(Duration::from_secs(10), |c| {
        c.nodes().iter().filter(|n| n.is_running()).all(|node| {
            tests::parse_cluster_nodes(&node.cli(&["CLUSTER", "NODES"]))
                .iter()
                .any(|n| n.port == victim && n.failed)
        })
    });
    let result = cache.invalidate_prefix(&format!("{p}:k:")).await;
    assert!(
        result.is_err(),
        "a primary that still serves slots is down: the walk cannot be complete, got {result:?}"
    );

    // Once the replica takes over, the same call covers every primary again.
    assert_eq!(
        replica_cli(&["CONFIG", "SET", "cluster-replica-no-failover", "no"]).trim(),
        "OK"
    );
    cluster.wait_until(Duration::from_secs(15), |c| {
        c.primaries().contains(&replica) && c.is_settled()
    });
    tests::eventually(
        Duration::from_secs(15),
        "the walk covers the promoted replica",
        async || cache.invalidate_prefix(&format!("{p}:k:")).await.is_ok(),
    )
    .await;
    for (key, _) in &entries {
        assert!(!cache.exists(key).await.unwrap(), "{key} survived");
    }
}

/// The log lines written while `f` runs on this thread (current-thread runtime).
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> (
    tracing::subscriber::DefaultGuard,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Captured(writer.clone()))
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (tracing::subscriber::set_default(subscriber), buffer)
}

fn error_lines(buffer: &std::sync::Mutex<Vec<u8>>) -> Vec<String> {
    String::from_utf8_lossy(&buffer.lock().unwrap())
        .lines()
        .filter(|line| line.contains("ERROR"))
        .map(str::to_string)
        .collect()
}

/// A wrong password is an authentication error at once: not a timeout, not
/// retried, not a reason to open the breaker, shown by `health()`, and
/// logged once at error level with the user name and never the password.
#[tokio::test]
async fn a_wrong_password_is_an_auth_error_not_a_timeout() {
    let secret = "Right-Pa55-1";
    let server = RedisServer::start_with(&["--requirepass", secret]);
    let (_guard, logs) = capture_logs();
    let bad = handle(&format!(
        "redis://:Wrong-Pa55-2@127.0.0.1:{}",
        server.port()
    ))
    .await;
    for _ in 0..8 {
        let started = Instant::now();
        let err = bad.get::<i32>("k").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(err.is_auth() && !err.is_unavailable());
        assert!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
        assert!(!err.to_string().contains("Wrong-Pa55"), "{err}");
    }
    let stats = bad.stats();
    assert_eq!((stats.retries, stats.timeouts), (0, 0), "{stats:?}");
    assert_eq!(stats.breaker, BreakerState::Closed);
    let health = bad.health().await;
    assert!(!health.healthy);
    assert_eq!(health.error_kind, Some(ErrorKind::Auth), "{health:?}");
    let errors = error_lines(&logs);
    assert_eq!(errors.len(), 1, "logged once: {errors:?}");
    assert!(
        errors[0].contains("user=\"default\"") || errors[0].contains("user=default"),
        "{errors:?}"
    );
    assert!(!errors[0].contains("Wrong-Pa55"), "{errors:?}");
}

/// The same for an ACL user: a wrong password, and a command the user may not run.
#[tokio::test]
async fn acl_refusals_are_auth_errors_naming_the_user() {
    let server = RedisServer::start();
    server.cli(&[
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">reader-pass",
        "~*",
        "+ping",
        "+getrange",
    ]);
    let (_guard, logs) = capture_logs();
    let wrong = handle(&format!(
        "redis://reader:nope-pass@127.0.0.1:{}",
        server.port()
    ))
    .await;
    let err = wrong.set("k", &1, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    let errors = error_lines(&logs);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("reader"), "{errors:?}");
    assert!(!errors[0].contains("nope-pass"), "{errors:?}");

    let reader = handle(&format!(
        "redis://reader:reader-pass@127.0.0.1:{}",
        server.port()
    ))
    .await;
    assert_eq!(
        reader.get::<i32>("k").await.unwrap(),
        None,
        "GETRANGE is allowed"
    );
    let err = reader.set("k", &1, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "NOPERM: {err}");
    assert_eq!(reader.stats().retries, 0);
    assert!(reader.health().await.healthy, "PING is allowed");
}

/// Keys under `prefix`, written on a handle of their own.
async fn fill(cache: &Cache, prefix: &str, n: usize) {
    let entries: Vec<(String, usize)> = (0..n).map(|i| (format!("{prefix}:{i}"), i)).collect();
    let refs: Vec<(&str, usize)> = entries.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    cache.set_many(&refs, None).await.unwrap();
}

/// During `CLIENT PAUSE` the walk's first step times out with the handle's
/// timeout; it used to wait for the pause to end (the response timeout of the
/// standalone connection is off, and the call bypassed the handle's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_is_bounded_by_the_timeout_while_redis_is_paused() {
    let server = RedisServer::start();
    let cache = handle(&server.url()).await;
    let p = unique_prefix("inv-pause");
    fill(&cache, &p, 100).await;
    // Longer than the timeout and its slack; `CLIENT UNPAUSE` would wait for it too.
    server.cli(&["CLIENT", "PAUSE", "1000", "ALL"]);
    let started = Instant::now();
    let err = cache.invalidate_prefix(&format!("{p}:")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(took <= TIMEOUT + SLACK, "took {took:?}");
}

/// With Redis stopped it fails within the timeout (it used to hang for seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_is_bounded_by_the_timeout_while_redis_is_down() {
    let mut server = RedisServer::start();
    let cache = handle(&server.url()).await;
    let p = unique_prefix("inv-down");
    fill(&cache, &p, 10).await;
    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = cache.invalidate_prefix(&format!("{p}:")).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            started.elapsed() <= TIMEOUT + SLACK,
            "took {:?}",
            started.elapsed()
        );
    }
    // Through the breaker like any call: it opens and then refuses at once.
    for _ in 0..5 {
        let _ = cache.invalidate_prefix(&format!("{p}:")).await;
    }
    let err = cache.invalidate_prefix(&format!("{p}:")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen, "{err}");
}

/// The whole walk is bounded by the handle's invalidate budget, even when
/// that is shorter than the call timeout; what it removed stays removed and
/// a second call finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_stops_at_its_budget_and_can_be_called_again() {
    let server = RedisServer::start();
    let budget = Duration::from_millis(300);
    let cache = suite::build(
        suite::redis(&server.url())
            .timeout(Duration::from_secs(5))
            .invalidate_budget(budget),
    )
    .await;
    let p = unique_prefix("inv-budget");
    fill(&cache, &p, 2000).await;
    server.cli(&["CLIENT", "PAUSE", "1000", "ALL"]);
    let started = Instant::now();
    let err = cache.invalidate_prefix(&format!("{p}:")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string().contains("300ms"),
        "reports the budget: {err}"
    );
    assert!(took >= budget && took <= budget + SLACK, "took {took:?}");
    // Once the pause is over (this call waits for its end), a new walk finishes.
    assert!(!cache.exists(&format!("{p}:none")).await.unwrap());
    assert_eq!(
        cache.invalidate_prefix(&format!("{p}:")).await.unwrap(),
        2000
    );
}

/// The same bound on a cluster with one primary paused: the walk visits
/// every primary, and the paused one's step times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_on_a_cluster_is_bounded_while_a_primary_is_paused() {
    let cluster = tests::RedisCluster::start();
    let cache = suite::build(suite::cluster(cluster.urls()).timeout(TIMEOUT)).await;
    let p = unique_prefix("inv-cluster");
    fill(&cache, &p, 300).await;
    RedisServer::cli_on(cluster.primaries()[1], &["CLIENT", "PAUSE", "1500", "ALL"]);
    let started = Instant::now();
    let err = cache.invalidate_prefix(&format!("{p}:")).await.unwrap_err();
    let took = started.elapsed();
    // The handle's deadline or the cluster client's own reply timeout,
    // whichever fires first: a timeout either way, never `Connection`.
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(took <= TIMEOUT * 2 + SLACK, "took {took:?}");
}

/// The handle's timeout is a deadline: a large reply that is received or,
/// for `get`, decoded after it is a timeout, never a late `Ok`. The timeout
/// is set between the time the read takes and the time read and decode take,
/// measured first: `get` used to return `Ok` after its timeout there.
#[tokio::test]
async fn a_reply_completing_after_the_timeout_is_a_timeout_not_a_late_ok() {
    let server = RedisServer::start();
    let build = |timeout: Duration| {
        let builder = suite::redis(&server.url())
            .timeout(timeout)
            .max_value_bytes(64 << 20)
            // Every late reply counts as a failure: keep the breaker out of the way.
            .breaker_threshold(1000);
        suite::build(builder)
    };
    let patient = build(Duration::from_secs(10)).await;
    patient
        .set("big", &"v".repeat(16 << 20), None)
        .await
        .unwrap();
    let (mut read, mut read_and_decode) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let started = Instant::now();
        patient.get_bytes("big").await.unwrap().unwrap();
        read = read.min(started.elapsed());
        let started = Instant::now();
        patient.get::<String>("big").await.unwrap().unwrap();
        read_and_decode = read_and_decode.min(started.elapsed());
    }
    assert!(read_and_decode > read, "{read:?} {read_and_decode:?}");
    let timeout = read + (read_and_decode - read) / 2;
    let reader = build(timeout).await;
    // Connecting can take longer than this tight timeout on a loaded machine
    // (the whole suite on two cores): PING until connected, within a bound.
    let connecting = Instant::now();
    while !reader.health().await.healthy {
        assert!(
            connecting.elapsed() < Duration::from_secs(10),
            "never connected within {timeout:?}"
        );
    }
    let timeouts_before = reader.stats().timeouts;
    let mut timeouts = 0;
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        match reader.get::<String>("big").await {
            Ok(_) => assert!(
                started.elapsed() <= timeout,
                "Ok after {:?} with a timeout of {timeout:?}",
                started.elapsed()
            ),
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
                timeouts += 1;
            }
        }
        let started = tokio::time::Instant::now();
        match reader.get_bytes("big").await {
            Ok(_) => assert!(
                started.elapsed() <= timeout,
                "Ok after {:?}",
                started.elapsed()
            ),
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
                timeouts += 1;
            }
        }
    }
    assert!(timeouts > 0, "read and decode fit in {timeout:?}");
    assert_eq!(reader.stats().timeouts - timeouts_before, timeouts);
}

/// Number of client connections `redis-cli` sees, itself excluded.
fn clients(server: &RedisServer) -> usize {
    server
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|line| line.contains("addr=") && !line.contains("cmd=client"))
        .count()
}

/// A dedicated handle has a connection of its own (so its calls never queue
/// behind a slow or large reply on the handle it came from) and the same
/// settings; in memory it shares the data.
#[tokio::test]
async fn a_dedicated_handle_has_a_connection_of_its_own() {
    let server = RedisServer::start();
    let shared = suite::build(
        suite::redis(&server.url())
            .namespace("app")
            .timeout(Duration::from_millis(700))
            .max_value_bytes(1000),
    )
    .await;
    shared.set("k", &1, None).await.unwrap();
    assert_eq!(clients(&server), 1);
    let own = shared.dedicated();
    assert_eq!(
        (own.timeout(), own.namespace(), own.max_value_bytes()),
        (
            shared.timeout(),
            shared.namespace(),
            shared.max_value_bytes()
        )
    );
    assert_eq!(
        own.get::<i32>("k").await.unwrap(),
        Some(1),
        "same server and namespace"
    );
    assert_eq!(clients(&server), 2, "a second connection");
    // Killing the first connection leaves the second alone.
    server.cli(&[
        "CLIENT",
        "KILL",
        "TYPE",
        "normal",
        "SKIPME",
        "yes",
        "ID",
        &client_id(&server, 0),
    ]);
    assert_eq!(own.incr("n", 1).await.unwrap(), 1);

    let memory = Cache::in_memory();
    memory.set("k", &1, None).await.unwrap();
    assert_eq!(memory.dedicated().get::<i32>("k").await.unwrap(), Some(1));
}

/// The id of the `index`-th client connection `redis-cli` sees, itself excluded.
fn client_id(server: &RedisServer, index: usize) -> String {
    server
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|line| line.contains("addr=") && !line.contains("cmd=client"))
        .nth(index)
        .and_then(|line| line.split_whitespace().next())
        .and_then(|field| field.strip_prefix("id="))
        .expect("a client")
        .to_string()
}

/// `RateLimitLayer` counts on a connection of its own by default.
#[tokio::test]
async fn the_rate_limiter_counts_on_its_own_connection() {
    use tower::{Layer as _, ServiceExt as _};
    let server = RedisServer::start();
    let cache = handle(&server.url()).await;
    cache.set("k", &1, None).await.unwrap();
    assert_eq!(clients(&server), 1);
    let limiter = rate_limit::RateLimitLayer::new(cache.clone(), 10, Duration::from_secs(60));
    let service = limiter.layer(tower::service_fn(|_req: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    let mut request = http::Request::new(String::new());
    let peer: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(limiter.stats().store_calls, 1, "{:?}", limiter.stats());
    assert_eq!(clients(&server), 2, "the limiter's own connection");
}

/// A user created after the service started (or a password fixed on the
/// server) is picked up without a restart: an auth failure is not sticky.
#[tokio::test]
async fn credentials_fixed_on_the_server_are_picked_up_without_a_restart() {
    let server = RedisServer::start();
    let cache = handle(&format!(
        "redis://late:late-pass@127.0.0.1:{}",
        server.port()
    ))
    .await;
    let err = cache.set("k", &1, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    server.cli(&["ACL", "SETUSER", "late", "on", ">late-pass", "~*", "+@all"]);
    let took = until_it_works(&cache, "k", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(cache.health().await.healthy);
}

/// On a cluster too, refused credentials are an auth error, not a timeout.
#[tokio::test]
async fn a_wrong_password_on_a_cluster_is_an_auth_error() {
    let cluster = tests::shared_cluster();
    let urls: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|node| format!("redis://ghost:Wrong-Pa55-3@127.0.0.1:{}", node.port()))
        .collect();
    let cache = suite::build(suite::cluster(urls).timeout(Duration::from_secs(2))).await;
    let started = Instant::now();
    let err = cache.get::<i32>("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!err.to_string().contains("Wrong-Pa55"), "{err}");
    assert_eq!(cache.health().await.error_kind, Some(ErrorKind::Auth));
}
