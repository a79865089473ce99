//! Plans chosen per request and charging by outcome (issue 22, items 1 and
//! 2), on the in-memory store, a standalone `redis-server` and a cluster:
//! plans never share state, a client changing plan, headers valid per RFC
//! 9651, exactly 5 of 100 concurrent wrong passwords across two instances,
//! a refund on a dropped response future given once, and the refund's
//! arithmetic for every algorithm (the Lua script and the Rust one agree).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use cache_core::Cache;
use http::StatusCode;
use rate_limit::{
    Algorithm, ConfigError, ManualClock, Quota, RateLimitLayer, RequestInfo, ResponseInfo,
    SharedCounting,
};
use tests::suite::{Backend, Store, store};
use tests::unique_prefix;
use tower::ServiceExt;

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: store;
    two_plans_never_share_state,
    a_client_changing_plan_starts_afresh_and_finds_its_old_count_on_return,
    headers_report_the_chosen_plan_and_are_valid_structured_fields,
    an_unknown_plan_counts_under_the_default_plan,
    plans_work_with_the_shared_counting,
    a_hundred_concurrent_wrong_passwords_across_two_instances_admit_exactly_five,
    a_dropped_response_future_is_refunded_exactly_once,
    the_refund_gives_back_to_the_window_charged_for_every_algorithm,
    charge_if_refunds_with_every_algorithm_through_the_layer,
    a_response_cost_keeps_part_of_the_charge,
);

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::Gcra,
];

/// The plan a request names, as an authentication layer would put it.
#[derive(Clone)]
struct PlanName(&'static str);

fn select(request: &RequestInfo<'_>) -> Option<&'static str> {
    request.extensions.get::<PlanName>().map(|plan| plan.0)
}

/// A builder on `cache` whose store calls may take as long as the handle
/// allows (a slow cluster call must not fail open).
fn builder(cache: &Cache, prefix: &str) -> rate_limit::RateLimitLayerBuilder {
    let store_timeout = cache.timeout();
    RateLimitLayer::builder(cache.clone())
        .prefix(prefix)
        .store_timeout(store_timeout)
}

/// `GET /`: 200; `GET /login?ok`: 200, any other `/login`: 401;
/// `GET /cost/{n}`: 200 with `x-cost: n`.
fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/login",
            get(|uri: http::Uri| async move {
                // A password check takes a while: the requests overlap.
                tokio::task::yield_now().await;
                if uri.query() == Some("ok") {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .route(
            "/cost/{n}",
            get(
                |axum::extract::Path(n): axum::extract::Path<u64>| async move {
                    ([("x-cost", n.to_string())], "measured")
                },
            ),
        )
        .layer(layer)
}

/// One request from 127.0.0.1 on `plan` (none: the default plan): status
/// and headers.
async fn call(app: &Router, path: &str, plan: Option<&'static str>) -> (u16, http::HeaderMap) {
    let mut request = http::Request::builder()
        .uri(path)
        .extension(axum::extract::ConnectInfo(SocketAddr::from((
            [127, 0, 0, 1],
            4000,
        ))))
        .body(axum::body::Body::empty())
        .unwrap();
    if let Some(plan) = plan {
        request.extensions_mut().insert(PlanName(plan));
    }
    let response = app.clone().oneshot(request).await.unwrap();
    (response.status().as_u16(), response.headers().clone())
}

async fn statuses(app: &Router, path: &str, plan: Option<&'static str>, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(call(app, path, plan).await.0);
    }
    out
}

/// Waits (at most 10 s) until `ready` holds.
async fn until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A List member: its bare item and its parameters.
type Member = (String, Vec<(String, i64)>);

/// A strict reader of RFC 9651 (Structured Field Values) Lists whose
/// members are Items (a String, Token or Integer with parameters): the
/// rate-limit fields' grammar. Returns each member's bare item and its
/// parameters, or why the text is not a valid List.
fn parse_sf_list(text: &str) -> Result<Vec<Member>, String> {
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut members = Vec::new();
    let skip_sp = |at: &mut usize| {
        while *at < bytes.len() && bytes[*at] == b' ' {
            *at += 1;
        }
    };
    let key = |at: &mut usize| -> Result<String, String> {
        let start = *at;
        match bytes.get(*at) {
            Some(b) if b.is_ascii_lowercase() || *b == b'*' => *at += 1,
            other => return Err(format!("a key starts with lcalpha or *, got {other:?}")),
        }
        while let Some(b) = bytes.get(*at) {
            if b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(b) {
                *at += 1;
            } else {
                break;
            }
        }
        Ok(text[start..*at].to_string())
    };
    let integer = |at: &mut usize| -> Result<i64, String> {
        let start = *at;
        if bytes.get(*at) == Some(&b'-') {
            *at += 1;
        }
        let digits = *at;
        while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        if *at == digits || *at - digits > 15 {
            return Err("an Integer has 1 to 15 digits".into());
        }
        if bytes.get(*at) == Some(&b'.') {
            return Err("a Decimal where an Integer is expected".into());
        }
        text[start..*at].parse().map_err(|e| format!("{e}"))
    };
    if bytes.is_empty() {
        return Ok(members);
    }
    loop {
        // The bare item: a String, a Token or an Integer.
        let bare = match bytes.get(at) {
            Some(b'"') => {
                at += 1;
                let mut value = String::new();
                loop {
                    match bytes.get(at) {
                        None => return Err("an unterminated String".into()),
                        Some(b'"') => {
                            at += 1;
                            break;
                        }
                        Some(b'\\') => {
                            match bytes.get(at + 1) {
                                Some(c @ (b'"' | b'\\')) => value.push(*c as char),
                                _ => return Err("a bad escape in a String".into()),
                            }
                            at += 2;
                        }
                        Some(c) if (0x20..0x7f).contains(c) => {
                            value.push(*c as char);
                            at += 1;
                        }
                        Some(c) => return Err(format!("byte {c:#x} in a String")),
                    }
                }
                value
            }
            Some(b) if b.is_ascii_alphabetic() || *b == b'*' => {
                let start = at;
                while bytes
                    .get(at)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b":/!#$%&'*+-.^_`|~".contains(b))
                {
                    at += 1;
                }
                text[start..at].to_string()
            }
            Some(b) if b.is_ascii_digit() || *b == b'-' => integer(&mut at)?.to_string(),
            other => return Err(format!("no bare item at {at}: {other:?}")),
        };
        // Its parameters: ;key=integer (a key alone is Boolean true).
        let mut params = Vec::new();
        while bytes.get(at) == Some(&b';') {
            at += 1;
            skip_sp(&mut at);
            let name = key(&mut at)?;
            let value = if bytes.get(at) == Some(&b'=') {
                at += 1;
                integer(&mut at)?
            } else {
                1
            };
            params.push((name, value));
        }
        members.push((bare, params));
        // OWS, then a comma and the next member, or the end.
        while bytes.get(at).is_some_and(|b| *b == b' ' || *b == b'\t') {
            at += 1;
        }
        match bytes.get(at) {
            None => return Ok(members),
            Some(b',') => {
                at += 1;
                while bytes.get(at).is_some_and(|b| *b == b' ' || *b == b'\t') {
                    at += 1;
                }
                if at == bytes.len() {
                    return Err("a trailing comma".into());
                }
            }
            Some(other) => return Err(format!("unexpected {:?} at {at}", *other as char)),
        }
    }
}

#[test]
fn the_structured_field_reader_refuses_what_rfc_9651_refuses() {
    assert!(parse_sf_list(r#""burst";q=10;w=1, "hourly";q=1000;w=3600"#).is_ok());
    assert!(parse_sf_list(r#""a";r=0;t=60"#).is_ok());
    for bad in [
        r#""a";Q=1"#,
        r#""a";q=1.5"#,
        r#""a",,"b""#,
        r#""a","#,
        r#""a"#,
        r#""a";q=1234567890123456"#,
        "\"a\u{7f}\"",
    ] {
        assert!(parse_sf_list(bad).is_err(), "{bad}");
    }
}

#[test]
fn plan_settings_are_checked_at_build_time() {
    let cache = Cache::in_memory();
    let base = || RateLimitLayer::builder(cache.clone()).prefix(unique_prefix("checked"));
    let quota = Quota::per_minute(5);
    let err = |builder: rate_limit::RateLimitLayerBuilder| builder.build().unwrap_err();
    for name in ["a:b", "a@b", "", "default", &"x".repeat(65)] {
        assert_eq!(
            err(base().plan(name, [("p", quota)]).plan_for(select)),
            ConfigError::PlanName,
            "{name:?}"
        );
    }
    assert_eq!(
        err(base()
            .plan("pro", [("p", quota)])
            .plan("pro", [("p", quota)])
            .plan_for(select)),
        ConfigError::DuplicatePlan("pro".into())
    );
    assert_eq!(
        err(base()
            .plan("pro", Vec::<(String, Quota)>::new())
            .plan_for(select)),
        ConfigError::EmptyPlan("pro".into())
    );
    assert_eq!(
        err(base().plan("pro", [("p", quota)])),
        ConfigError::PlanSelector
    );
    assert_eq!(err(base().plan_for(select)), ConfigError::PlanSelector);
    // Each plan's policies are checked as the layer's own are.
    assert_eq!(
        err(base()
            .plan("pro", [("p", Quota::per_minute(0))])
            .plan_for(select)),
        ConfigError::ZeroLimit
    );
    assert_eq!(
        err(base().plan("pro", [("p:q", quota)]).plan_for(select)),
        ConfigError::PolicyName
    );
    assert_eq!(
        err(base()
            .plan(
                "pro",
                [("p", Quota::per_minute(5).algorithm(Algorithm::Gcra))]
            )
            .plan_for(select)
            .shared_counting(SharedCounting::new())),
        ConfigError::SharedAlgorithm(Algorithm::Gcra)
    );
    assert_eq!(
        err(base()
            .charge_if(|_: &ResponseInfo<'_>| true)
            .shared_counting(SharedCounting::new())),
        ConfigError::ChargeWithSharedCounting
    );
    assert_eq!(
        ConfigError::ChargeWithSharedCounting.kind(),
        rate_limit::ErrorKind::Config
    );
}

mod behaviour {
    use super::*;

    /// Two plans and the default one with the same policy name and quota:
    /// each admits its own 2, so none of them reads another's state; the
    /// plans' keys are their own.
    pub async fn two_plans_never_share_state(store: Store) {
        let prefix = unique_prefix("plans");
        let quota = Quota::per_minute(2);
        let layer = builder(&store.cache, &prefix)
            .policy("burst", quota)
            .plan("a", [("burst", quota)])
            .plan("b", [("burst", quota)])
            .plan_for(select)
            .build()
            .unwrap();
        let app = app(layer.clone());
        assert_eq!(statuses(&app, "/", Some("a"), 3).await, [200, 200, 429]);
        assert_eq!(statuses(&app, "/", Some("b"), 3).await, [200, 200, 429]);
        assert_eq!(statuses(&app, "/", None, 3).await, [200, 200, 429]);
        let stats = layer.stats();
        assert_eq!((stats.allowed, stats.limited), (6, 3));
        // Each plan's key, beside the default plan's.
        for key in [
            format!("{prefix}@a:ip:127.0.0.1"),
            format!("{prefix}@b:ip:127.0.0.1"),
            format!("{prefix}:ip:127.0.0.1"),
        ] {
            let value = match store.backend {
                Backend::Memory => rate_limit::stored_in_memory(&store.cache, &key)
                    .await
                    .map(|(value, _)| value),
                _ => store
                    .cache
                    .get_bytes(&key)
                    .await
                    .unwrap()
                    .map(|v| String::from_utf8(v).unwrap()),
            };
            assert_eq!(value.as_deref(), Some("2"), "{key}");
        }
    }

    /// Free: 1 per minute; pro: 3. A client at its free limit that moves to
    /// pro gets pro's whole quota (a fresh count under pro's keys); moving
    /// back, it finds its free count where it left it.
    pub async fn a_client_changing_plan_starts_afresh_and_finds_its_old_count_on_return(
        store: Store,
    ) {
        let layer = builder(&store.cache, &unique_prefix("change"))
            .policy("free", Quota::per_minute(1))
            .plan("pro", [("pro", Quota::per_minute(3))])
            .plan_for(select)
            .build()
            .unwrap();
        let app = app(layer);
        assert_eq!(statuses(&app, "/", None, 2).await, [200, 429]);
        assert_eq!(
            statuses(&app, "/", Some("pro"), 4).await,
            [200, 200, 200, 429]
        );
        assert_eq!(statuses(&app, "/", None, 1).await, [429]);
    }

    /// Each response carries its plan's policies, as valid RFC 9651 Lists.
    pub async fn headers_report_the_chosen_plan_and_are_valid_structured_fields(store: Store) {
        let layer = builder(&store.cache, &unique_prefix("plan-headers"))
            .policy("free", Quota::per_minute(1))
            .plan(
                "pro",
                [
                    ("pro-burst", Quota::per_second(5)),
                    (
                        "pro-daily",
                        Quota::per_hour(1000).algorithm(Algorithm::Gcra),
                    ),
                ],
            )
            .plan_for(select)
            .build()
            .unwrap();
        let app = app(layer);
        for (plan, names, statuses) in [
            (None, vec!["free"], vec![200, 429]),
            (Some("pro"), vec!["pro-burst", "pro-daily"], vec![200, 200]),
        ] {
            for expected in statuses {
                let (status, headers) = call(&app, "/", plan).await;
                assert_eq!(status, expected);
                let policy = headers["ratelimit-policy"].to_str().unwrap();
                let items = parse_sf_list(policy).unwrap_or_else(|e| panic!("{policy}: {e}"));
                let listed: Vec<&str> = items.iter().map(|(name, _)| name.as_str()).collect();
                assert_eq!(listed, names, "{policy}");
                for (_, params) in &items {
                    let keys: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
                    assert_eq!(keys, ["q", "w"], "{policy}");
                }
                let state = headers["ratelimit"].to_str().unwrap();
                let items = parse_sf_list(state).unwrap_or_else(|e| panic!("{state}: {e}"));
                assert_eq!(items.len(), 1, "{state}");
                assert!(names.contains(&items[0].0.as_str()), "{state}");
                let limit: u64 = headers["x-ratelimit-limit"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let q = items_q(policy, &items[0].0);
                assert_eq!(limit, q, "X-RateLimit-Limit is the reported policy's");
            }
        }
    }

    fn items_q(policy: &str, name: &str) -> u64 {
        let items = parse_sf_list(policy).unwrap();
        let (_, params) = items.iter().find(|(n, _)| n == name).unwrap();
        params.iter().find(|(k, _)| k == "q").unwrap().1 as u64
    }

    /// A plan the layer does not declare is counted under the default plan,
    /// and counted in the stats.
    pub async fn an_unknown_plan_counts_under_the_default_plan(store: Store) {
        let layer = builder(&store.cache, &unique_prefix("unknown"))
            .policy("free", Quota::per_minute(2))
            .plan("pro", [("pro", Quota::per_minute(10))])
            .plan_for(select)
            .build()
            .unwrap();
        let app = app(layer.clone());
        assert_eq!(call(&app, "/", None).await.0, 200);
        let (status, headers) = call(&app, "/", Some("platinum")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["ratelimit-policy"], r#""free";q=2;w=60"#);
        assert_eq!(call(&app, "/", Some("platinum")).await.0, 429);
        // The default plan named by its name is the default plan, not unknown.
        assert_eq!(call(&app, "/", Some(rate_limit::DEFAULT_PLAN)).await.0, 429);
        assert_eq!(layer.stats().unknown_plans, 2);
    }

    /// The shared counting holds plans: each plan counts apart.
    pub async fn plans_work_with_the_shared_counting(store: Store) {
        let layer = builder(&store.cache, &unique_prefix("shared-plans"))
            .policy("free", Quota::per_minute(2))
            .plan("pro", [("pro", Quota::per_minute(3))])
            .plan_for(select)
            .shared_counting(SharedCounting::new().flush_interval(Duration::from_millis(10)))
            .build()
            .unwrap();
        let app = app(layer);
        assert_eq!(statuses(&app, "/", None, 3).await, [200, 200, 429]);
        assert_eq!(
            statuses(&app, "/", Some("pro"), 4).await,
            [200, 200, 200, 429]
        );
    }

    /// 100 concurrent wrong passwords, half through each of two instances
    /// on one store, against 5 failed logins per minute charged by
    /// outcome: exactly 5 reach the password check.
    pub async fn a_hundred_concurrent_wrong_passwords_across_two_instances_admit_exactly_five(
        store: Store,
    ) {
        let prefix = unique_prefix("logins");
        let build = |cache: Cache| {
            builder(&cache, &prefix)
                .policy("login-failures", Quota::per_minute(5))
                .charge_if(|response: &ResponseInfo<'_>| {
                    matches!(response.status.as_u16(), 401 | 403)
                })
                .build()
                .unwrap()
        };
        let first = build(store.cache.clone());
        let second = build(store.another_handle().await);
        let apps = [app(first.clone()), app(second.clone())];
        let requests: Vec<_> = (0..100)
            .map(|i| {
                let app = apps[i % 2].clone();
                tokio::spawn(async move { call(&app, "/login", None).await.0 })
            })
            .collect();
        let mut checked = 0;
        for request in requests {
            match request.await.unwrap() {
                401 => checked += 1,
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(checked, 5);
        let refunded = first.stats().refunded + second.stats().refunded;
        assert_eq!(refunded, 0, "failures keep their charge");
    }

    /// A request whose response future is dropped while the handler runs
    /// (the client went away) is given back, once: of 3 failures a minute,
    /// 2 were spent and the dropped one returned, so exactly 1 more passes.
    pub async fn a_dropped_response_future_is_refunded_exactly_once(store: Store) {
        let entered = Arc::new(tokio::sync::Notify::new());
        let handler_entered = entered.clone();
        let layer = builder(&store.cache, &unique_prefix("dropped"))
            .policy("failures", Quota::per_minute(3))
            .charge_if(|response: &ResponseInfo<'_>| response.status == StatusCode::UNAUTHORIZED)
            .build()
            .unwrap();
        let app = Router::new()
            .route(
                "/hang",
                get(move || {
                    let entered = handler_entered.clone();
                    async move {
                        entered.notify_one();
                        std::future::pending::<()>().await;
                    }
                }),
            )
            .route("/login", get(|| async { StatusCode::UNAUTHORIZED }))
            .layer(layer.clone());
        assert_eq!(statuses(&app, "/login", None, 2).await, [401, 401]);
        let hanging = {
            let app = app.clone();
            tokio::spawn(async move { call(&app, "/hang", None).await })
        };
        tokio::time::timeout(Duration::from_secs(10), entered.notified())
            .await
            .expect("the handler runs");
        hanging.abort();
        assert!(hanging.await.unwrap_err().is_cancelled());
        until("the refund", || layer.stats().refunded == 1).await;
        assert_eq!(statuses(&app, "/login", None, 2).await, [401, 429]);
        let stats = layer.stats();
        assert_eq!((stats.refunded, stats.refund_errors), (1, 0));
    }

    /// The refund's arithmetic, through the store (Lua on Redis, Rust in
    /// memory) on a given clock: three requests of cost 1 in a limit of 4,
    /// then one of them given back.
    pub async fn the_refund_gives_back_to_the_window_charged_for_every_algorithm(store: Store) {
        let start: u64 = 1_800_000_000_000_000; // µs, on a whole second
        for algorithm in ALGORITHMS {
            let quota = [Quota::per_second(4).algorithm(algorithm)];
            let key = format!("{{{}}}:p", unique_prefix("refund"));
            let keys = [key.as_str()];
            let cache = &store.cache;
            let evaluate = |now: u64, cost: u64| async move {
                rate_limit::evaluate_raw(cache, &keys, &quota, now, &[cost])
                    .await
                    .unwrap()
            };
            let refund = |now: u64, at: u64, reset: i64| async move {
                rate_limit::refund_raw(cache, &keys, &quota, now, at, &[reset as u64], 1)
                    .await
                    .unwrap()
            };
            // Charged at 100 ms into the second.
            let at = start + 100_000;
            let mut rows = Vec::new();
            for _ in 0..3 {
                rows.push(evaluate(at, 1).await);
            }
            let reset = rows[1][2];
            assert_eq!(
                evaluate(at + 200_000, 0).await[1],
                1,
                "{algorithm:?}: 1 left"
            );
            // Given back 200 ms later, in the same window: 2 left.
            assert_eq!(refund(at + 200_000, at, reset).await, [1], "{algorithm:?}");
            assert_eq!(
                evaluate(at + 200_000, 0).await[1],
                2,
                "{algorithm:?}: 2 left"
            );
            match algorithm {
                Algorithm::FixedWindow => {
                    // The window ends at 1.1 s; a refund after it finds a new
                    // window (one request at 1.2 s) and gives nothing back.
                    let later = start + 1_200_000;
                    assert_eq!(evaluate(later, 1).await[0], 1);
                    assert_eq!(refund(later, at, reset).await, [0]);
                    assert_eq!(evaluate(later, 0).await[1], 3, "the new window keeps its 1");
                }
                Algorithm::SlidingWindow => {
                    // The next aligned window: the count charged is the
                    // previous one now, and that is what is given back.
                    let later = start + 1_200_000;
                    let before = evaluate(later, 0).await[1];
                    assert_eq!(refund(later, at, reset).await, [1]);
                    let after = evaluate(later, 0).await[1];
                    assert!(after > before, "{before} -> {after}");
                    // Two windows on, nothing of it counts any more.
                    assert_eq!(refund(start + 2_500_000, at, reset).await, [0]);
                }
                Algorithm::Gcra => {
                    // Each refund moves the TAT back one interval (250 ms),
                    // never before now: from 500 ms past the charge to
                    // 250, then to now (not 0); then there is nothing to give.
                    let now = at + 200_000;
                    assert_eq!(refund(now, at, reset).await, [1]);
                    assert_eq!(evaluate(now, 0).await[1], 3);
                    assert_eq!(refund(now, at, reset).await, [1]);
                    assert_eq!(evaluate(now, 0).await[1], 4, "full again");
                    assert_eq!(refund(now, at, reset).await, [0], "nothing left to give");
                    assert_eq!(evaluate(now, 0).await[1], 4);
                    assert_eq!(evaluate(now, 4).await[0], 1, "a whole bucket, not more");
                    assert_eq!(evaluate(now, 1).await[0], 0);
                }
                other => panic!("no sequence for {other:?}"),
            }
        }
    }

    /// Through the layer, on a moved clock, with each algorithm: 3 failed
    /// logins per second, successes given back.
    pub async fn charge_if_refunds_with_every_algorithm_through_the_layer(store: Store) {
        for algorithm in ALGORITHMS {
            let clock = ManualClock::new();
            let layer = builder(&store.cache, &unique_prefix("charge-algo"))
                .policy("failures", Quota::per_second(3).algorithm(algorithm))
                .charge_if(|response: &ResponseInfo<'_>| response.status.is_client_error())
                .clock(clock.clone())
                .build()
                .unwrap();
            let app = app(layer.clone());
            assert_eq!(
                statuses(&app, "/login?ok", None, 10).await,
                [200; 10],
                "{algorithm:?}: successes are given back"
            );
            assert_eq!(
                statuses(&app, "/login", None, 4).await,
                [401, 401, 401, 429],
                "{algorithm:?}"
            );
            assert_eq!(layer.stats().refunded, 10, "{algorithm:?}");
            clock.advance(Duration::from_secs(2));
            assert_eq!(
                statuses(&app, "/login", None, 1).await,
                [401],
                "{algorithm:?}"
            );
        }
    }

    /// `charge_by_response`: admitted at the request's cost (10), charged
    /// what the response says (`x-cost`), the rest given back.
    pub async fn a_response_cost_keeps_part_of_the_charge(store: Store) {
        let layer = builder(&store.cache, &unique_prefix("response-cost"))
            .policy("units", Quota::per_minute(20))
            .cost(|_: &RequestInfo<'_>| 10)
            .charge_by_response(|response: &ResponseInfo<'_>| {
                response
                    .headers
                    .get("x-cost")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(u64::MAX)
            })
            .build()
            .unwrap();
        let app = app(layer);
        // 3 + 3 + 3 kept of 20: 11 left, so a fourth (10 at admission) passes.
        assert_eq!(statuses(&app, "/cost/3", None, 4).await, [200; 4]);
        // 12 kept: 8 left, under the 10 a request is admitted at.
        assert_eq!(statuses(&app, "/cost/3", None, 1).await, [429]);
    }
}
