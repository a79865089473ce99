//! `RateLimitLayer`'s shared counting (issue 21, item 2): answered from each
//! instance's own counts, exchanged with Redis in the background. Several
//! instances are layers on separate handles (each its own connection,
//! counts and flush task), against a standalone `redis-server` and a
//! three-node cluster; on the in-memory store (one store in the process,
//! nothing to exchange) a layer with shared counting counts as one without
//! it, exactly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cache_core::Cache;
use rate_limit::{Algorithm, Clock, ManualClock, Quota, RateLimitLayer, SharedCounting};
use tests::suite::{self, Backend, Store, store};
use tests::{RedisServer, unique_prefix};
use tower::{Layer, Service, ServiceExt};

/// A layer on `cache` counting `quota` with shared counting (`share` of
/// the limit per instance between flushes, flushed every 5 ms), on `clock`.
fn shared_layer(
    cache: Cache,
    prefix: &str,
    quota: Quota,
    share: f64,
    clock: &ManualClock,
) -> RateLimitLayer {
    let store_timeout = cache.timeout();
    RateLimitLayer::builder(cache)
        .prefix(prefix)
        .policy("p", quota)
        .shared_counting(
            SharedCounting::new()
                .flush_interval(Duration::from_millis(5))
                .local_share(share),
        )
        .store_timeout(store_timeout)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// A service answering 200 behind `layer`.
fn instance(
    layer: &RateLimitLayer,
) -> impl Service<
    http::Request<()>,
    Response = http::Response<rate_limit::ResponseBody<()>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(()))
    }))
}

/// A request from `peer`'s address.
fn from(peer: [u8; 4]) -> http::Request<()> {
    let mut request = http::Request::new(());
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(SocketAddr::from((peer, 4000))));
    request
}

/// The status of one request from `peer` through `service`.
async fn status<S>(service: &S, peer: [u8; 4]) -> u16
where
    S: Service<
            http::Request<()>,
            Response = http::Response<rate_limit::ResponseBody<()>>,
            Error = Infallible,
        > + Clone,
{
    service
        .clone()
        .oneshot(from(peer))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Moves `clock` to the start of the next window of `window` (aligned to
/// the epoch, as the shared mode's windows are), so that a test's requests
/// fall in one window.
fn align(clock: &ManualClock, window: Duration) {
    let window = window.as_micros();
    let into = clock.now().as_micros() % window;
    clock.advance(Duration::from_micros((window - into) as u64));
}

/// The key of `client`'s count in the window holding `clock`'s now: the
/// layout of the README (`{prefix}:{s<b>}:{client}:{k}`, `b` the client's
/// FNV-1a modulo 16). Computed here independently of the crate.
fn count_key(prefix: &str, client: &str, clock: &ManualClock, window: Duration) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in client.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let index = clock.now().as_millis() / window.as_millis();
    format!("{prefix}:{{s{}}}:{client}:{index}", hash % 16)
}

/// Polls `ready` (each poll may wait on Redis) until it holds; panics after 15 s.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: not after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: store;
    four_instances_stay_within_the_bound_under_concurrency,
    a_sliding_window_across_four_instances_stays_within_the_bound,
);

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    redis_only fixture: store;
    one_instance_admits_exactly_the_limit_per_aligned_window,
);

mod redis_behaviour {
    use super::*;

    /// One instance: exact (the bound is the limit), on windows aligned to
    /// the clock; its counts reach the window's key, which expires.
    pub async fn one_instance_admits_exactly_the_limit_per_aligned_window(store: Store) {
        let prefix = unique_prefix("shared-one");
        let window = Duration::from_secs(60);
        let clock = ManualClock::new();
        align(&clock, window);
        clock.advance(Duration::from_secs(20));
        let layer = shared_layer(
            store.cache.clone(),
            &prefix,
            Quota::new(5, window),
            0.05,
            &clock,
        );
        let service = instance(&layer);
        let mut statuses = Vec::new();
        for _ in 0..7 {
            statuses.push(status(&service, [10, 1, 0, 1]).await);
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
        // The window ends where the clock's minute does, 40 s on; not 60 s
        // after the first request.
        let limited = service.clone().oneshot(from([10, 1, 0, 1])).await.unwrap();
        assert_eq!(limited.headers()["retry-after"], "40");
        let key = count_key(&prefix, "ip:10.1.0.1", &clock, window);
        until("the counts reach Redis", || {
            store.cli(&["GET", &key]) == "5"
        })
        .await;
        let ttl: i64 = store.cli(&["PTTL", &key]).parse().unwrap();
        assert!(ttl > 0, "the window's key expires: {ttl}");
        clock.advance(Duration::from_secs(40));
        assert_eq!(status(&service, [10, 1, 0, 1]).await, 200, "a new window");
        assert_eq!(layer.stats().allowed, 6);
    }
}

mod behaviour {
    use super::*;

    /// Four instances on separate handles, 20 clients each sending 120
    /// requests at once spread over the instances, limit 100 and a share of
    /// 5 %: every client is admitted at least its limit (no request the
    /// limit admits is rejected) and at most `100 + 3 × 5`; exactly 100 in
    /// memory (one store).
    pub async fn four_instances_stay_within_the_bound_under_concurrency(store: Store) {
        within_the_bound(store, Quota::new(100, Duration::from_secs(60))).await;
    }

    /// The same with the sliding window (the previous window's count weighs
    /// too; here it is empty).
    pub async fn a_sliding_window_across_four_instances_stays_within_the_bound(store: Store) {
        within_the_bound(
            store,
            Quota::new(100, Duration::from_secs(60)).algorithm(Algorithm::SlidingWindow),
        )
        .await;
    }

    async fn within_the_bound(store: Store, quota: Quota) {
        const CLIENTS: u8 = 20;
        const REQUESTS: usize = 120;
        let prefix = unique_prefix("shared-four");
        let clock = ManualClock::new();
        align(&clock, quota.window());
        clock.advance(Duration::from_secs(1));
        let settings = SharedCounting::new().local_share(0.05);
        let mut layers = Vec::new();
        for _ in 0..4 {
            let cache = store.another_handle().await;
            layers.push(shared_layer(cache, &prefix, quota, 0.05, &clock));
        }
        let services: Vec<_> = layers.iter().map(instance).collect();
        let requests: Vec<_> = (0..REQUESTS * usize::from(CLIENTS))
            .map(|i| {
                let client = (i % usize::from(CLIENTS)) as u8;
                let service = services[(i / usize::from(CLIENTS)) % 4].clone();
                tokio::spawn(async move { (client, status(&service, [10, 2, 0, client]).await) })
            })
            .collect();
        let mut admitted = [0u64; CLIENTS as usize];
        for request in requests {
            let (client, status) = request.await.unwrap();
            match status {
                200 => admitted[usize::from(client)] += 1,
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        let (low, high) = match store.backend {
            Backend::Memory => (100, 100),
            _ => (100, settings.over_admission_bound(4, 100)),
        };
        assert_eq!(high, if low == high { 100 } else { 115 });
        for (client, admitted) in admitted.iter().enumerate() {
            assert!(
                (low..=high).contains(admitted),
                "client {client}: {admitted} admitted, bound {low}..={high}"
            );
        }
        for layer in &layers {
            assert_eq!(layer.stats().store_errors, 0, "{:?}", layer.stats());
        }
    }
}

/// On the in-memory store shared counting counts as the store does without
/// it: a layer with it and one without, on one handle and one prefix, share
/// one count, which admits exactly the limit; the fixed window starts at the
/// client's first request (the exact mode's), not on the clock's minute.
#[tokio::test]
async fn on_the_in_memory_store_shared_counting_counts_as_without_it() {
    let cache = Cache::in_memory();
    let window = Duration::from_secs(60);
    let clock = ManualClock::new();
    align(&clock, window);
    clock.advance(Duration::from_secs(20));
    let shared = shared_layer(cache.clone(), "rate", Quota::new(5, window), 0.05, &clock);
    let exact = RateLimitLayer::builder(cache)
        .prefix("rate")
        .policy("p", Quota::new(5, window))
        .clock(clock.clone())
        .build()
        .unwrap();
    let (shared, exact) = (instance(&shared), instance(&exact));
    let mut statuses = Vec::new();
    for service in [&shared, &exact, &shared, &exact, &shared, &exact] {
        statuses.push(status(service, [10, 5, 0, 1]).await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    let limited = shared.clone().oneshot(from([10, 5, 0, 1])).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.headers()["retry-after"],
        "60",
        "from the first request"
    );
    clock.advance(window);
    assert_eq!(status(&shared, [10, 5, 0, 1]).await, 200, "a new window");
}

/// Redis down: the instance answers from its own counts (a client still
/// gets 429 past its limit), lets through what it cannot know (fail open,
/// counted), and once Redis is back (empty) it sends what it counted
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_and_back_answers_locally_then_resynchronises() {
    let mut server = RedisServer::start();
    let cache = suite::build(suite::redis(&server.url()).timeout(Duration::from_millis(300))).await;
    let window = Duration::from_secs(3600);
    let clock = ManualClock::new();
    align(&clock, window);
    let layer = shared_layer(cache, "rate", Quota::new(100, window), 0.05, &clock);
    let service = instance(&layer);
    let key = count_key("rate", "ip:10.3.0.1", &clock, window);
    for _ in 0..3 {
        assert_eq!(status(&service, [10, 3, 0, 1]).await, 200);
    }
    until("the first counts reach Redis", || {
        server.cli(&["GET", &key]).trim() == "3"
    })
    .await;

    server.kill();
    let mut statuses = Vec::new();
    for _ in 0..120 {
        statuses.push(status(&service, [10, 3, 0, 1]).await);
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(passed, 97, "the limit, on the instance's own counts");
    assert!(statuses[97..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another client: answered within its allowance, then let through.
    assert_eq!(status(&service, [10, 3, 0, 2]).await, 200);
    assert!(layer.stats().store_errors > 0, "{:?}", layer.stats());

    server.restart();
    until("the counts admitted meanwhile reach Redis", || {
        server.cli(&["GET", &key]).trim() == "97"
    })
    .await;
    let ttl: i64 = server.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(ttl > 0, "resent counts expire: {ttl}");
    assert_eq!(status(&service, [10, 3, 0, 1]).await, 429);
}

/// An instance killed loses what it had not flushed (at most its allowance
/// per client): another instance, not knowing it, admits the limit, so the
/// client got the limit plus that, within the bound. Dropping a layer
/// instead flushes first: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_loses_only_its_unflushed_counts() {
    let server = RedisServer::start();
    let window = Duration::from_secs(3600);
    let quota = Quota::new(100, window);
    let clock = ManualClock::new();
    align(&clock, window);
    for killed in [true, false] {
        let prefix = if killed { "killed" } else { "dropped" };
        let client = [10, 4, 0, u8::from(killed)];
        // Instance A on a runtime of its own (its process): a flush interval
        // of 10 s, so its 5 admissions (its allowance) are still unsent.
        let url = server.url();
        let a_clock = clock.clone();
        let (admitted_by_a, runtime) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let admitted = runtime.block_on(async move {
                let cache = suite::build(suite::redis(&url).timeout(suite::TIMEOUT)).await;
                let layer = RateLimitLayer::builder(cache)
                    .prefix(prefix)
                    .policy("p", quota)
                    .shared_counting(SharedCounting::new().flush_interval(Duration::from_secs(10)))
                    .store_timeout(suite::TIMEOUT)
                    .clock(a_clock)
                    .build()
                    .unwrap();
                let service = instance(&layer);
                let mut admitted = 0;
                for _ in 0..5 {
                    admitted += u64::from(status(&service, client).await == 200);
                }
                (admitted, layer)
            });
            (admitted, runtime)
        })
        .join()
        .unwrap();
        let (admitted_by_a, layer_a) = admitted_by_a;
        assert_eq!(admitted_by_a, 5);
        if killed {
            // The process dies: its tasks stop where they are, nothing is sent.
            runtime.shutdown_background();
            drop(layer_a);
        } else {
            // The layer is dropped (a graceful shutdown): one last flush.
            drop(layer_a);
            let key = count_key(prefix, &format!("ip:10.4.0.{}", client[3]), &clock, window);
            until("the dropped instance's last flush", || {
                server.cli(&["GET", &key]).trim() == "5"
            })
            .await;
            std::thread::spawn(move || drop(runtime)).join().unwrap();
        }
        // Another instance serves the client: alone, it admits up to the
        // limit on what Redis holds.
        let cache = suite::build(suite::redis(&server.url()).timeout(suite::TIMEOUT)).await;
        let b = shared_layer(cache, prefix, quota, 0.05, &clock);
        let service = instance(&b);
        let mut admitted_by_b = 0;
        for _ in 0..150 {
            admitted_by_b += u64::from(status(&service, client).await == 200);
        }
        let total = admitted_by_a + admitted_by_b;
        if killed {
            assert_eq!(total, 105, "A's 5 unsent counts were lost");
        } else {
            assert_eq!(total, 100, "A's counts were sent when it was dropped");
        }
        assert!(total <= SharedCounting::new().over_admission_bound(2, 100));
    }
}

/// GCRA cannot be shared (its state does not add up across instances), and
/// the settings are checked.
#[test]
fn shared_counting_refuses_gcra_and_settings_out_of_range() {
    let build = |quota: Quota, shared: SharedCounting| {
        RateLimitLayer::builder(Cache::in_memory())
            .policy("p", quota)
            .shared_counting(shared)
            .build()
            .map(|_| ())
    };
    assert_eq!(
        build(
            Quota::per_second(10).algorithm(Algorithm::Gcra),
            SharedCounting::new()
        ),
        Err(rate_limit::ConfigError::SharedAlgorithm(Algorithm::Gcra))
    );
    assert_eq!(
        build(
            Quota::per_second(10),
            SharedCounting::new().local_share(1.5)
        ),
        Err(rate_limit::ConfigError::LocalShare)
    );
    assert_eq!(
        build(
            Quota::per_second(10),
            SharedCounting::new().flush_interval(Duration::from_secs(60))
        ),
        Err(rate_limit::ConfigError::FlushInterval(Duration::from_secs(
            60
        )))
    );
    assert_eq!(
        rate_limit::ConfigError::LocalShare.kind(),
        rate_limit::ErrorKind::Config
    );
}

/// The flush (`flush.lua` on Redis, its twin in memory) on the same calls:
/// new keys, a foreign text and a negative number (replaced), a first and
/// a later send, totals as expected or not (only the others answered), a
/// call sent again with its flush id (only reads), an expiry already past
/// (the key gone); every answer, value and expiry agrees.
#[tokio::test]
async fn the_flush_script_and_its_twin_agree() {
    let server = RedisServer::start();
    let redis = Cache::builder()
        .redis_url(&server.url())
        .unwrap()
        .build()
        .await
        .unwrap();
    let memory = Cache::in_memory();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (soon, past) = (now_ms + 60_000, now_ms - 1_000);
    let marker = "agree:{s3}:flush:7";
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|name| format!("agree:{{s3}}:{name}:1"));
    for cache in [&redis, &memory] {
        cache.set(&c, "abc", None).await.unwrap();
        cache.set(&d, &-5, None).await.unwrap();
    }
    // Per count: key, delta (negative: first send), expiry, expected total.
    type Count<'a> = (&'a str, i64, i64, i64);
    let calls: Vec<(i64, Vec<Count>)> = vec![
        (
            1,
            vec![
                (&a, -3, soon, 3),
                (&b, -1, soon, 5),
                (&c, 2, soon, 2),
                (&d, -4, soon, 9),
            ],
        ),
        // The same call again (its answer lost): read, not counted twice.
        (
            1,
            vec![
                (&a, -3, soon, 3),
                (&b, -1, soon, 5),
                (&c, 2, soon, 2),
                (&d, -4, soon, 9),
            ],
        ),
        (
            2,
            vec![(&a, 2, soon, 5), (&b, 1, soon, 1), (&e, -6, past, 6)],
        ),
    ];
    let mut answered = Vec::new();
    for (id, counts) in &calls {
        let mut keys = vec![marker];
        let mut args = vec![*id, 600_000];
        for (key, delta, expiry, expected) in counts {
            keys.push(key);
            args.extend([*delta, *expiry, *expected]);
        }
        let on_redis = rate_limit::flush_raw(&redis, &keys, &args).await.unwrap();
        let in_memory = rate_limit::flush_raw(&memory, &keys, &args).await.unwrap();
        // Past the time: only the counts whose totals differ, by position.
        assert_eq!(on_redis[2..], in_memory[2..], "call {id}: {counts:?}");
        answered.push(on_redis[2..].to_vec());
        for key in [&a, &b, &c, &d, &e] {
            let (x, y) = (
                redis.get::<i64>(key).await.unwrap(),
                memory.get::<i64>(key).await.unwrap(),
            );
            assert_eq!(x, y, "{key} after call {id}");
            let ttl = |ttl| match ttl {
                cache_core::KeyTtl::Expires(left) => Some(left.as_millis() as i64),
                _ => None,
            };
            let (x, y) = (
                ttl(redis.ttl(key).await.unwrap()),
                ttl(memory.ttl(key).await.unwrap()),
            );
            // The same expiry, read a moment apart.
            let agree = match (x, y) {
                (Some(x), Some(y)) => (x - y).abs() < 2_000,
                (x, y) => x == y,
            };
            assert!(agree, "{key}'s expiry after call {id}: {x:?} and {y:?}");
        }
    }
    assert_eq!(
        answered,
        [vec![2, 1, 4, 4], vec![2, 1, 4, 4], vec![2, 2]],
        "only the totals other than expected are answered"
    );
    assert_eq!(
        memory.get::<i64>(&e).await.unwrap(),
        None,
        "expired at once"
    );
}
