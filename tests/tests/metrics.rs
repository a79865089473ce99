//! Metrics (cargo feature `metrics` of cache-core and rate-limit): every
//! metric the guide's docs/metrics.md lists appears, with exactly
//! its documented labels, after the operation that reports it, on the
//! in-memory store, a standalone `redis-server` and a cluster; and no label
//! value ever carries a key, an argument or a client address.
//!
//! Each test records into a recorder of its own, installed for its thread
//! (`metrics::set_default_local_recorder`) on a current-thread runtime, so
//! that every task of the test (the layer's batcher, the HTTP server)
//! records into it and parallel tests never see each other's counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::{Cache, EntryOptions, cached};
use futures_util::StreamExt;
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, LocalRecorderGuard, Metadata, Recorder,
    SharedString, Unit,
};
use rate_limit::{FailMode, Quota, RateLimitLayer};
use tests::suite::{self, Backend};
use tests::{RedisServer, unique_prefix};

/// Every metric of docs/metrics.md, with its label names.
const DOCUMENTED: &[(&str, &[&str])] = &[
    ("cache.operations", &["operation", "result", "tier"]),
    ("cache.operation.duration", &["operation", "tier"]),
    ("cache.memoized.calls", &["prefix", "result", "tier"]),
    ("cache.memoized.duration", &["prefix", "result"]),
    ("cache.singleflight.joins", &["prefix"]),
    ("cache.breaker.transitions", &["state"]),
    ("cache.tag.invalidations", &[]),
    ("cache.events.gaps", &["reason"]),
    ("ratelimit.decisions", &["outcome", "policy", "plan"]),
    ("ratelimit.refunds", &["result", "plan"]),
    ("ratelimit.store.calls", &["result"]),
    ("ratelimit.store.duration", &["result"]),
    ("ratelimit.leases", &["event", "plan"]),
];

/// A recorder that keeps, per metric and label set, how many times it was
/// incremented (counters) or recorded (histograms).
#[derive(Default)]
struct Recorded {
    series: Mutex<HashMap<Key, Arc<Series>>>,
}

#[derive(Default)]
struct Series(AtomicU64);

impl HistogramFn for Series {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl metrics::CounterFn for Series {
    fn increment(&self, by: u64) {
        self.0.fetch_add(by, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.series(key))
    }
}

type Labels = BTreeMap<String, String>;

impl Recorded {
    fn series(&self, key: &Key) -> Arc<Series> {
        self.series
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Every series: name, labels, count.
    fn all(&self) -> Vec<(String, Labels, u64)> {
        self.series
            .lock()
            .unwrap()
            .iter()
            .map(|(key, series)| {
                let labels = key
                    .labels()
                    .map(|label| (label.key().to_string(), label.value().to_string()))
                    .collect();
                (
                    key.name().to_string(),
                    labels,
                    series.0.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The count of `name` summed over the series whose labels include `labels`.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.all()
            .into_iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, count)| count)
            .sum()
    }

    /// Asserts that `name` moved with these labels.
    #[track_caller]
    fn assert_moved(&self, name: &str, labels: &[(&str, &str)]) {
        assert!(
            self.count(name, labels) > 0,
            "{name} {labels:?} not recorded; recorded: {:#?}",
            self.all()
        );
    }

    /// Asserts that every series has exactly the documented labels, and
    /// that no label value contains one of `secrets`.
    #[track_caller]
    fn assert_documented(&self, secrets: &[&str]) {
        for (name, labels, _) in self.all() {
            let documented = DOCUMENTED
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} is not in docs/metrics.md's list"));
            let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
            // `plan` only on a layer with plans.
            let mut expected: Vec<&str> = documented.1.to_vec();
            if !keys.contains(&"plan") {
                expected.retain(|label| *label != "plan");
            }
            expected.sort_unstable();
            // A store failure has no policy to report.
            let without_policy = name == "ratelimit.decisions"
                && keys.iter().all(|k| ["outcome", "plan"].contains(k))
                && labels["outcome"].starts_with("fail_");
            assert!(
                keys == expected || without_policy,
                "{name}: labels {keys:?}, documented {:?}",
                documented.1
            );
            for value in labels.values() {
                for secret in secrets {
                    assert!(
                        !value.contains(secret),
                        "{name} has a label value {value:?} carrying {secret:?}"
                    );
                }
            }
        }
    }
}

/// A handle for the test, on a namespace of its own, and the test's recorder.
struct Fixture {
    backend: Backend,
    cache: Cache,
    recorded: &'static Recorded,
    _guard: LocalRecorderGuard<'static>,
}

/// Installs a recorder for the test's thread (leaked: it lives as long as
/// the test's tasks), then opens the handle.
fn recorder() -> (&'static Recorded, LocalRecorderGuard<'static>) {
    let recorded: &'static Recorded = Box::leak(Box::default());
    (recorded, metrics::set_default_local_recorder(recorded))
}

async fn fixture(backend: Backend, test: &str) -> Fixture {
    let (recorded, guard) = recorder();
    let cache = suite::build(backend.suite_builder().namespace(unique_prefix(test))).await;
    Fixture {
        backend,
        cache,
        recorded,
        _guard: guard,
    }
}

fn tier(backend: Backend) -> &'static str {
    match backend {
        Backend::Memory => "memory",
        Backend::Standalone | Backend::Cluster => "redis",
    }
}

/// How long a test waits for what it expects.
const WAIT: Duration = Duration::from_secs(10);

/// A body that waits until the test opens the gate.
#[derive(Default)]
struct Gate {
    calls: AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

#[cached(prefix = "metered", ttl = 60, cache = cache, skip(cache, gate))]
async fn metered(cache: &Cache, gate: &Gate, text: String) -> usize {
    gate.calls.fetch_add(1, Ordering::SeqCst);
    let mut open = gate.open.subscribe();
    tests::within(WAIT, "the gate opens", open.wait_for(|open| *open))
        .await
        .expect("the gate's sender lives");
    text.len()
}

#[cached(prefix = "quote", ttl = Duration::from_millis(1), stale = 300, cache = cache, skip(cache))]
async fn quote(cache: &Cache, symbol: String) -> Option<u64> {
    Some(symbol.len() as u64)
}

#[cached(prefix = "summary", ttl = 60, tags = [format!("user:{user}")], cache = cache, skip(cache))]
async fn summary(cache: &Cache, user: String) -> Option<String> {
    Some(format!("summary of {user}"))
}

tests::suite! {
    fixture: fixture;
    memoized_calls_report_hits_misses_joins_stale_and_bypass,
    function_calls_report_their_label_never_the_key,
    store_operations_report_result_and_latency_without_keys,
    tag_invalidations_and_event_gaps_are_counted,
    rate_limit_decisions_and_store_calls_are_counted,
    rate_limit_plans_and_refunds_are_labelled,
    spans_carry_prefix_outcome_and_duration_never_arguments,
}

mod behaviour {
    use super::*;

    pub async fn memoized_calls_report_hits_misses_joins_stale_and_bypass(f: Fixture) {
        let tier = tier(f.backend);
        let gate = Arc::new(Gate::default());
        // A leader and a follower: both have joined the flight once both
        // tasks have been polled once (the join happens in the first poll).
        let (entered_tx, mut entered) = tokio::sync::watch::channel(0usize);
        let entered_tx = Arc::new(entered_tx);
        let calls: Vec<_> = (0..2)
            .map(|_| {
                let (cache, gate, entered) = (f.cache.clone(), gate.clone(), entered_tx.clone());
                tokio::spawn(async move {
                    entered.send_modify(|n| *n += 1);
                    metered(&cache, &gate, "argument-7af3".to_string()).await
                })
            })
            .collect();
        tests::within(WAIT, "both calls entered", entered.wait_for(|n| *n == 2))
            .await
            .unwrap();
        gate.open.send_replace(true);
        for call in calls {
            assert_eq!(
                tests::within(WAIT, "a call returns", call).await.unwrap(),
                13
            );
        }
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
        assert_eq!(metered(&f.cache, &gate, "argument-7af3".into()).await, 13);

        let r = f.recorded;
        let prefix = ("prefix", "metered");
        r.assert_moved(
            "cache.memoized.calls",
            &[prefix, ("result", "miss"), ("tier", tier)],
        );
        r.assert_moved(
            "cache.memoized.calls",
            &[prefix, ("result", "hit"), ("tier", tier)],
        );
        r.assert_moved("cache.memoized.duration", &[prefix, ("result", "miss")]);
        assert_eq!(r.count("cache.singleflight.joins", &[prefix]), 1);

        // Past its 1 ms TTL, within `stale`: served stale.
        assert_eq!(quote(&f.cache, "ACME-91".into()).await, Some(7));
        tests::eventually(WAIT, "a stale value is served", async || {
            quote(&f.cache, "ACME-91".into()).await;
            r.count(
                "cache.memoized.calls",
                &[("prefix", "quote"), ("result", "stale")],
            ) > 0
        })
        .await;

        let bypassed = suite::build(f.backend.suite_builder().bypass(true)).await;
        metered(&bypassed, &gate, "argument-7af3".into()).await;
        r.assert_moved(
            "cache.memoized.calls",
            &[prefix, ("result", "bypass"), ("tier", "none")],
        );
        r.assert_documented(&["argument-7af3", "ACME-91"]);
    }

    pub async fn function_calls_report_their_label_never_the_key(f: Fixture) {
        let tier = tier(f.backend);
        let options = EntryOptions::ttl(Duration::from_secs(60));
        for _ in 0..2 {
            let value = f
                .cache
                .get_or_set("user:secret-4471", &options, || async { 1_u32 })
                .await;
            assert_eq!(value, 1);
        }
        let labelled = options.clone().label("users");
        f.cache
            .get_or_set("user:secret-4472", &labelled, || async { 2_u32 })
            .await;
        let r = f.recorded;
        let calls = |prefix, result| [("prefix", prefix), ("result", result), ("tier", tier)];
        r.assert_moved("cache.memoized.calls", &calls("get_or_set", "miss"));
        r.assert_moved("cache.memoized.calls", &calls("get_or_set", "hit"));
        r.assert_moved("cache.memoized.calls", &calls("users", "miss"));
        r.assert_documented(&["secret-4471", "secret-4472"]);
    }

    pub async fn store_operations_report_result_and_latency_without_keys(f: Fixture) {
        let tier = tier(f.backend);
        let cache = &f.cache;
        cache.set("secret-key-5521", &1_u32, None).await.unwrap();
        assert_eq!(cache.get::<u32>("secret-key-5521").await.unwrap(), Some(1));
        assert_eq!(cache.get::<u32>("secret-key-missing").await.unwrap(), None);
        cache.delete("secret-key-5521").await.unwrap();
        cache.invalidate_prefix("secret-key-").await.unwrap();

        let r = f.recorded;
        let op = |operation, result| [("operation", operation), ("result", result), ("tier", tier)];
        r.assert_moved("cache.operations", &op("set", "ok"));
        r.assert_moved("cache.operations", &op("get", "hit"));
        r.assert_moved("cache.operations", &op("get", "miss"));
        r.assert_moved("cache.operations", &op("delete", "ok"));
        r.assert_moved("cache.operations", &op("invalidate_prefix", "ok"));
        r.assert_moved(
            "cache.operation.duration",
            &[("operation", "get"), ("tier", tier)],
        );
        r.assert_documented(&["secret-key", "5521"]);
    }

    pub async fn tag_invalidations_and_event_gaps_are_counted(f: Fixture) {
        let cache = &f.cache;
        summary(cache, "user-8812".into()).await;
        cache.invalidate_tag("user:user-8812").await.unwrap();
        let r = f.recorded;
        assert_eq!(r.count("cache.tag.invalidations", &[]), 1);

        // A buffer of one message: the second one delivered overflows it.
        let bus = cache.events().with_buffer(1);
        let mut events = bus.subscribe::<u64>(&["orders-4410"]).await.unwrap();
        tests::eventually(
            WAIT,
            "a message is dropped from the full buffer",
            async || {
                bus.publish("orders-4410", &1_u64).await.unwrap();
                cache.stats().events.dropped > 0
            },
        )
        .await;
        let started = Instant::now();
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("the subscription yields the gap")
                .expect("the subscription is open");
            if item.is_err_and(|err| err.is_gap()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
        }
        r.assert_moved("cache.events.gaps", &[("reason", "overflow")]);
        r.assert_documented(&["user-8812", "orders-4410"]);
    }

    pub async fn spans_carry_prefix_outcome_and_duration_never_arguments(f: Fixture) {
        let gate = Gate::default();
        gate.open.send_replace(true);
        let closed = |log: &str, name: &str, fields: &[&str]| {
            log.lines().any(|line| {
                line.contains(&format!("{name}{{"))
                    && line.contains("close")
                    && fields.iter().all(|field| line.contains(field))
            })
        };
        // tracing caches each callsite's interest process-wide: a parallel
        // test (no subscriber on its thread) registering a callsite while this
        // test's subscriber is being registered can cache "never" for it, and
        // its spans are then missing here. Such a miss is asked again (its
        // interest rebuilt) with a new argument, at most three times; the
        // assertions below then hold on the last log.
        let mut log = String::new();
        for attempt in 0..3 {
            let (_guard, buffer) = capture_spans();
            let argument = format!("argument-7af3-{attempt}");
            metered(&f.cache, &gate, argument.clone()).await;
            metered(&f.cache, &gate, argument).await;
            log = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
            if closed(&log, "cache.store", &["operation=\"set\""]) {
                break;
            }
        }
        let tier = tier(f.backend);
        let closed = |name: &str, fields: &[&str]| closed(&log, name, fields);
        for outcome in ["miss", "hit"] {
            assert!(
                closed(
                    "cache.memoized",
                    &[
                        "prefix=\"metered\"",
                        &format!("tier=\"{tier}\""),
                        &format!("outcome=\"{outcome}\""),
                        "duration_us="
                    ]
                ),
                "no {outcome} span in:\n{log}"
            );
        }
        for (operation, result) in [("get", "miss"), ("get", "hit"), ("set", "ok")] {
            assert!(
                closed(
                    "cache.store",
                    &[
                        &format!("operation=\"{operation}\""),
                        &format!("result=\"{result}\""),
                        "duration_us="
                    ]
                ),
                "no {operation} {result} span in:\n{log}"
            );
        }
        assert!(
            !log.contains("argument-7af3"),
            "an argument in the spans:\n{log}"
        );
        for attempt in 0..3 {
            let key =
                cache_core::key_for("metered", &(format!("argument-7af3-{attempt}"),)).unwrap();
            let hash = key.rsplit(':').next().unwrap();
            assert!(!log.contains(hash), "a key in the spans:\n{log}");
        }
    }

    /// A layer with plans labels its decisions, refunds and leases with the plan
    /// (`default` for its own policies); a layer without plans never does.
    pub async fn rate_limit_plans_and_refunds_are_labelled(f: Fixture) {
        let layer = RateLimitLayer::builder(f.cache.clone())
            .prefix(unique_prefix("planned"))
            .policy("free", Quota::new(5, Duration::from_secs(60)))
            .plan(
                "paid",
                [
                    ("paid", Quota::new(50, Duration::from_secs(60))),
                    ("paid-in-flight", Quota::concurrent(1000)),
                ],
            )
            .plan_for(|req: &rate_limit::RequestInfo<'_>| {
                req.headers
                    .get("x-plan")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .charge_if(|res: &rate_limit::ResponseInfo<'_>| res.status.is_client_error())
            .build()
            .unwrap();
        let port = serve(layer).await;
        assert_eq!(
            tests::http::get(port, "/", &[("x-plan", "paid")])
                .await
                .status,
            200
        );
        assert_eq!(get_status(port).await, 200);
        let r = f.recorded;
        let decided = |policy, plan| [("outcome", "allowed"), ("policy", policy), ("plan", plan)];
        assert_eq!(r.count("ratelimit.decisions", &decided("paid", "paid")), 1);
        assert_eq!(
            r.count("ratelimit.decisions", &decided("free", "default")),
            1
        );
        // The 200s were given back (awaited before the response went on).
        for plan in ["paid", "default"] {
            let refunded = [("result", "ok"), ("plan", plan)];
            assert_eq!(r.count("ratelimit.refunds", &refunded), 1, "{plan}");
        }
        // The paid plan's lease, labelled with it.
        let granted = [("event", "granted"), ("plan", "paid")];
        assert_eq!(r.count("ratelimit.leases", &granted), 1);
        r.assert_documented(&["127.0.0.1"]);
    }

    pub async fn rate_limit_decisions_and_store_calls_are_counted(f: Fixture) {
        // A client at its limit is then rejected by the local deny cache...
        let layer = RateLimitLayer::builder(f.cache.clone())
            .policy("per-minute", Quota::new(1, Duration::from_secs(60)))
            .build()
            .unwrap();
        let port = serve(layer).await;
        assert_eq!([get_status(port).await, get_status(port).await], [200, 429]);
        // ... or, without it, by the store.
        let strict = RateLimitLayer::builder(f.cache.clone())
            .prefix("strict")
            .policy("strict", Quota::new(1, Duration::from_secs(60)))
            .local_deny_cache(false)
            .build()
            .unwrap();
        let strict_port = serve(strict).await;
        assert_eq!(
            [get_status(strict_port).await, get_status(strict_port).await],
            [200, 429]
        );
        let shadow = RateLimitLayer::builder(f.cache.clone())
            .prefix("shadowed")
            .policy("burst", Quota::new(1, Duration::from_secs(60)))
            .shadow(true)
            .build()
            .unwrap();
        let shadow_port = serve(shadow).await;
        assert_eq!(
            [get_status(shadow_port).await, get_status(shadow_port).await],
            [200, 200]
        );

        let streams = RateLimitLayer::builder(f.cache.clone())
            .prefix("in-flight")
            .policy("streams", Quota::concurrent(2))
            .build()
            .unwrap();
        let streams_port = serve(streams).await;
        assert_eq!(
            [
                get_status(streams_port).await,
                get_status(streams_port).await
            ],
            [200, 200]
        );

        let r = f.recorded;
        assert_eq!(r.count("ratelimit.leases", &[("event", "granted")]), 2);
        let decided = |outcome, policy| [("outcome", outcome), ("policy", policy)];
        assert_eq!(
            r.count("ratelimit.decisions", &decided("allowed", "per-minute")),
            1
        );
        assert_eq!(
            r.count("ratelimit.decisions", &decided("allowed", "strict")),
            1
        );
        assert_eq!(
            r.count("ratelimit.decisions", &decided("limited", "strict")),
            1
        );
        assert_eq!(
            r.count(
                "ratelimit.decisions",
                &decided("limited_locally", "per-minute")
            ),
            1
        );
        r.assert_moved("ratelimit.decisions", &decided("shadow", "burst"));
        r.assert_moved("ratelimit.store.calls", &[("result", "ok")]);
        r.assert_moved("ratelimit.store.duration", &[("result", "ok")]);
        r.assert_documented(&["127.0.0.1"]);
    }
}

/// A writer into a shared buffer, for the log lines of a test's subscriber.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs every span's close, with its fields, at every level, into a buffer.
fn capture_spans() -> (tracing::subscriber::DefaultGuard, Arc<Mutex<Vec<u8>>>) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Captured(writer.clone()))
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // Callsites first hit by a parallel test while this subscriber was being
    // registered may have cached "never": ask them again.
    tracing::callsite::rebuild_interest_cache();
    (guard, buffer)
}

async fn serve(layer: RateLimitLayer) -> u16 {
    tests::http::serve_layer(layer).await
}

async fn get_status(port: u16) -> u16 {
    tests::http::get(port, "/", &[]).await.status
}

/// A store that stops answering: errors, the breaker's three states, a
/// memoized call that runs uncached, and the rate limiter failing open and
/// closed.
#[tokio::test]
async fn failures_report_errors_breaker_changes_and_fail_open() {
    let (r, _guard) = recorder();
    let mut server = RedisServer::start();
    let cache = suite::build(
        suite::redis(&server.url())
            .timeout(Duration::from_secs(2))
            .max_attempts(1)
            .breaker_threshold(1)
            .breaker_cooldown(Duration::from_millis(1)),
    )
    .await;
    cache.set("k", &1_u8, None).await.unwrap();
    server.kill();
    let gate = Gate::default();
    gate.open.send_replace(true);
    assert_eq!(metered(&cache, &gate, "argument-7af3".into()).await, 13);
    r.assert_moved(
        "cache.memoized.calls",
        &[
            ("prefix", "metered"),
            ("result", "error"),
            ("tier", "redis"),
        ],
    );
    r.assert_moved(
        "cache.operations",
        &[("result", "error"), ("tier", "redis")],
    );
    r.assert_moved("cache.breaker.transitions", &[("state", "open")]);

    let open = RateLimitLayer::builder(cache.clone())
        .policy("per-minute", Quota::new(5, Duration::from_secs(60)))
        .build()
        .unwrap();
    let closed = RateLimitLayer::builder(cache.clone())
        .policy("per-minute", Quota::new(5, Duration::from_secs(60)))
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    assert_eq!(get_status(serve(open).await).await, 200);
    assert_eq!(get_status(serve(closed).await).await, 503);
    assert_eq!(
        r.count("ratelimit.decisions", &[("outcome", "fail_open")]),
        1
    );
    assert_eq!(
        r.count("ratelimit.decisions", &[("outcome", "fail_closed")]),
        1
    );
    r.assert_moved("ratelimit.store.calls", &[("result", "error")]);

    server.restart();
    tests::eventually(WAIT, "the breaker closes again", async || {
        let _ = cache.get::<u8>("k").await;
        r.count("cache.breaker.transitions", &[("state", "closed")]) > 0
    })
    .await;
    r.assert_moved("cache.breaker.transitions", &[("state", "half_open")]);
    r.assert_documented(&["argument-7af3", "127.0.0.1"]);
}

/// A memoized value served from the local tier (in process, in front of
/// Redis) reports the tier `local`.
#[tokio::test]
async fn local_tier_hits_report_the_local_tier() {
    let (r, _guard) = recorder();
    let cache = suite::build(
        suite::redis(&tests::shared_server().url())
            .timeout(suite::TIMEOUT)
            .namespace(unique_prefix("local_tier_hits"))
            .local_tier(100, Duration::from_secs(30)),
    )
    .await;
    let gate = Gate::default();
    gate.open.send_replace(true);
    // The tier keeps an entry once tracking is on: poll until one is served.
    let local_hit = [("prefix", "metered"), ("result", "hit"), ("tier", "local")];
    tests::eventually(
        WAIT,
        "a memoized call is served from the local tier",
        async || {
            assert_eq!(metered(&cache, &gate, "argument-7af3".into()).await, 13);
            r.count("cache.memoized.calls", &local_hit) > 0
        },
    )
    .await;
    r.assert_documented(&["argument-7af3"]);
}

/// docs/metrics.md lists every metric this file checks.
#[test]
fn the_guide_lists_every_metric() {
    let page = include_str!("../../docs/metrics.md");
    for (name, labels) in DOCUMENTED {
        assert!(
            page.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
        for label in *labels {
            assert!(
                page.contains(&format!("`{label}`")),
                "label {label} is not in docs/metrics.md"
            );
        }
    }
}
