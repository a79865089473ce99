//! Concurrency limits (`Quota::concurrent`): at most N requests of a client
//! in flight across instances, a lease per admitted request released when
//! its response body ends or is dropped, and expiring after its TTL when
//! its instance dies holding it; on the in-memory store, a standalone
//! `redis-server` and a three-node cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use cache_core::Cache;
use rate_limit::{ConfigError, ErrorKind, FailMode, ManualClock, Quota, RateLimitLayer};
use tests::suite::{self, Store, store};
use tests::{eventually, shared_server, unique_prefix, within};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// What the handler sees: requests in flight (from the handler's start to
/// its body's end or drop), the most at once, and the gate holding the
/// bodies open until the test opens it.
struct Probe {
    in_flight: AtomicUsize,
    most: AtomicUsize,
    gate: watch::Sender<bool>,
}

impl Probe {
    fn new() -> Arc<Probe> {
        Arc::new(Probe {
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            gate: watch::channel(false).0,
        })
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

/// Counts a request in flight while it lives.
struct InFlight(Arc<Probe>);

impl InFlight {
    fn enter(probe: Arc<Probe>) -> InFlight {
        let now = probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        probe.most.fetch_max(now, Ordering::SeqCst);
        InFlight(probe)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /` behind `layer`: a body of one chunk, sent once the probe's gate
/// opens; the request counts as in flight until its body ends or is dropped.
fn app(layer: RateLimitLayer, probe: Arc<Probe>) -> Router {
    Router::new()
        .route(
            "/",
            get(move || {
                let probe = probe.clone();
                async move {
                    let in_flight = InFlight::enter(probe.clone());
                    let gate = probe.gate.subscribe();
                    let chunks =
                        futures_util::stream::unfold(Some((gate, in_flight)), |state| async move {
                            let (mut gate, in_flight) = state?;
                            let _ = gate.wait_for(|open| *open).await;
                            drop(in_flight);
                            Some((Ok::<_, std::io::Error>("streamed"), None))
                        });
                    Body::from_stream(chunks)
                }
            }),
        )
        .layer(layer)
}

/// `GET /` behind `layer`: a body that sends each chunk given to `chunks`
/// (one request: the first takes the receiver).
fn streaming_app(layer: RateLimitLayer, chunks: mpsc::Receiver<&'static str>) -> Router {
    let chunks = Arc::new(std::sync::Mutex::new(Some(chunks)));
    Router::new()
        .route(
            "/",
            get(move || {
                let chunks = chunks.lock().unwrap().take();
                async move {
                    let chunks = chunks.expect("one streaming request");
                    Body::from_stream(futures_util::stream::unfold(chunks, |mut chunks| async {
                        let chunk = chunks.recv().await?;
                        Some((Ok::<_, std::io::Error>(chunk), chunks))
                    }))
                }
            }),
        )
        .layer(layer)
}

/// One request from 127.0.0.1 through `app` to `/` on the layer's own
/// policies, without HTTP: the response with its body unread.
async fn call(app: &Router) -> http::Response<Body> {
    call_on(app, "/", None).await
}

fn header<'r>(response: &'r http::Response<Body>, name: &str) -> &'r str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{name} missing: {:?}", response.headers()))
}

/// A layer with the concurrency limit `quota` (and `rate`, if any) under
/// `prefix`, its store calls given the suite's timeout.
fn layer(cache: Cache, prefix: &str, quota: Quota, rate: Option<Quota>) -> RateLimitLayer {
    let timeout = cache.timeout();
    let mut builder = RateLimitLayer::builder(cache)
        .prefix(prefix)
        .policy("streams", quota)
        .store_timeout(timeout)
        .fail_mode(FailMode::Closed);
    if let Some(rate) = rate {
        builder = builder.policy("minute", rate);
    }
    builder.build().unwrap()
}

/// Calls `app` until a request is admitted (a lease released by a task of
/// its own is back), for at most 10 s; that request's response.
async fn admitted_eventually(app: &Router, what: &str) -> http::Response<Body> {
    let mut admitted = None;
    eventually(Duration::from_secs(10), what, async || {
        let response = call(app).await;
        if response.status() == 200 {
            admitted = Some(response);
        }
        admitted.is_some()
    })
    .await;
    admitted.unwrap()
}

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: store;
    in_flight_never_exceeds_the_limit_across_two_instances,
    a_lease_is_released_at_the_body_end_or_drop_not_at_the_head,
    the_leases_of_a_killed_instance_expire_after_their_ttl,
    rate_policies_and_the_lease_are_taken_together_or_not_at_all,
    a_response_still_streaming_renews_its_lease,
    a_request_waits_for_a_slot_up_to_the_lease_wait,
    a_plans_concurrency_limit_holds_releases_at_body_end_and_never_mixes_with_another_plans,
    a_plans_streaming_response_renews_its_lease_on_the_plans_keys,
    charging_by_outcome_refunds_apart_from_the_lease_released_at_body_end,
);

/// The plan a request names, as an authentication layer would put it.
#[derive(Clone)]
struct PlanName(&'static str);

/// One request from 127.0.0.1 through `app` on `plan` (none: the layer's
/// own policies) to `path`: the response with its body unread.
async fn call_on(app: &Router, path: &str, plan: Option<&'static str>) -> http::Response<Body> {
    let mut request = http::Request::builder()
        .uri(path)
        .extension(axum::extract::ConnectInfo(SocketAddr::from((
            [127, 0, 0, 1],
            4000,
        ))))
        .body(Body::empty())
        .unwrap();
    if let Some(plan) = plan {
        request.extensions_mut().insert(PlanName(plan));
    }
    app.clone().oneshot(request).await.unwrap()
}

/// A stream on `plan` holding `layer`'s one slot (a lease TTL of 10 s):
/// a frame past half the TTL renews its lease, so another request is
/// refused past the first TTL; silent for a whole TTL since, the lease
/// expires and the slot is free.
async fn renews_while_streaming(
    layer: &RateLimitLayer,
    clock: &ManualClock,
    plan: Option<&'static str>,
) {
    use futures_util::StreamExt;

    let (send, chunks) = mpsc::channel(4);
    let streaming = streaming_app(layer.clone(), chunks);
    let response = call_on(&streaming, "/", plan).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body().into_data_stream();
    let other = app(layer.clone(), Probe::new());

    clock.advance(Duration::from_secs(6));
    send.send("tick").await.unwrap();
    assert_eq!(body.next().await.unwrap().unwrap(), "tick");
    eventually(Duration::from_secs(10), "the lease renewed", async || {
        layer.stats().leases_renewed == 1
    })
    .await;
    clock.advance(Duration::from_secs(6));
    assert_eq!(
        call_on(&other, "/", plan).await.status(),
        429,
        "past the first TTL, renewed"
    );
    clock.advance(Duration::from_secs(4));
    let freed = call_on(&other, "/", plan).await;
    assert_eq!(freed.status(), 200, "the renewed lease expired");
    drop((freed, body, send));
}

/// Calls `app` until a request on `plan` to `path` is not refused by a
/// concurrency limit (a lease released by a task of its own is back), for
/// at most 10 s: that request's response.
async fn past_the_leases(
    app: &Router,
    path: &str,
    plan: Option<&'static str>,
) -> http::Response<Body> {
    let mut answer = None;
    eventually(Duration::from_secs(10), "a lease released", async || {
        let response = call_on(app, path, plan).await;
        let by_leases = response.status() == 429 && header(&response, "retry-after") == "1";
        if !by_leases {
            answer = Some(response);
        }
        answer.is_some()
    })
    .await;
    answer.unwrap()
}

/// `GET /{status}` behind `layer`: that status, with a body of one chunk
/// sent once the probe's gate opens.
fn status_app(layer: RateLimitLayer, probe: Arc<Probe>) -> Router {
    Router::new()
        .route(
            "/{status}",
            get(
                move |axum::extract::Path(status): axum::extract::Path<u16>| {
                    let probe = probe.clone();
                    async move {
                        let gate = probe.gate.subscribe();
                        let chunks = futures_util::stream::unfold(Some(gate), |gate| async move {
                            let _ = gate?.wait_for(|open| *open).await;
                            Some((Ok::<_, std::io::Error>("streamed"), None))
                        });
                        (
                            http::StatusCode::from_u16(status).unwrap(),
                            Body::from_stream(chunks),
                        )
                    }
                },
            ),
        )
        .layer(layer)
}

mod behaviour {
    use super::*;

    pub use super::plans_and_outcomes::*;

    pub async fn a_request_waits_for_a_slot_up_to_the_lease_wait(store: Store) {
        let build = |wait: Duration| {
            RateLimitLayer::builder(store.cache.clone())
                .prefix(unique_prefix("waiting"))
                .policy("streams", Quota::concurrent(1))
                .lease_wait(wait)
                .store_timeout(store.cache.timeout())
                .build()
                .unwrap()
        };
        // A slot freed while the request waits: it gets it.
        let probe = Probe::new();
        let layer = build(Duration::from_secs(20));
        let waiting_app = app(layer.clone(), probe.clone());
        let first = call(&waiting_app).await;
        assert_eq!(first.status(), 200);
        let second = tokio::spawn({
            let app = waiting_app.clone();
            async move { call(&app).await }
        });
        eventually(
            Duration::from_secs(10),
            "the second request asked",
            async || layer.stats().store_calls >= 2,
        )
        .await;
        probe.open_gate();
        axum::body::to_bytes(first.into_body(), 1024).await.unwrap();
        let second = within(Duration::from_secs(20), "the waiting request", second)
            .await
            .unwrap();
        assert_eq!(second.status(), 200, "admitted once the slot was free");
        assert_eq!(layer.stats().leases_refused, 0);

        // No slot within the wait: the 429, after the wait.
        let probe = Probe::new();
        let layer = build(Duration::from_millis(300));
        let bounded_app = app(layer.clone(), probe.clone());
        let held = call(&bounded_app).await;
        assert_eq!(held.status(), 200);
        let started = std::time::Instant::now();
        let refused = call(&bounded_app).await;
        assert_eq!(refused.status(), 429);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        assert_eq!(layer.stats().leases_refused, 1);
        drop(held);
    }

    pub async fn a_response_still_streaming_renews_its_lease(store: Store) {
        let prefix = unique_prefix("renewed");
        let clock = ManualClock::new();
        let layer = RateLimitLayer::builder(store.cache.clone())
            .prefix(&prefix)
            .policy(
                "streams",
                Quota::concurrent(1).lease_ttl(Duration::from_secs(10)),
            )
            .clock(clock.clone())
            .store_timeout(store.cache.timeout())
            .build()
            .unwrap();
        renews_while_streaming(&layer, &clock, None).await;
    }

    pub async fn in_flight_never_exceeds_the_limit_across_two_instances(store: Store) {
        const LIMIT: usize = 5;
        let prefix = unique_prefix("streams");
        let probe = Probe::new();
        let one = layer(store.cache.clone(), &prefix, Quota::concurrent(5), None);
        let two = layer(
            store.another_handle().await,
            &prefix,
            Quota::concurrent(5),
            None,
        );
        let apps = [
            app(one.clone(), probe.clone()),
            app(two.clone(), probe.clone()),
        ];
        let calls: Vec<_> = (0..500)
            .map(|i| {
                let app = apps[i % 2].clone();
                tokio::spawn(async move { call(&app).await })
            })
            .collect();
        let mut held = Vec::new();
        for call in calls {
            let response = within(Duration::from_secs(30), "a response head", call)
                .await
                .unwrap();
            match response.status().as_u16() {
                200 => held.push(response),
                429 => assert_eq!(header(&response, "retry-after"), "1"),
                other => panic!("status {other}"),
            }
        }
        assert_eq!(held.len(), LIMIT, "exactly the limit admitted");
        assert!(probe.most.load(Ordering::SeqCst) <= LIMIT);
        assert_eq!(probe.in_flight.load(Ordering::SeqCst), LIMIT);
        let granted = one.stats().leases_granted + two.stats().leases_granted;
        let refused = one.stats().leases_refused + two.stats().leases_refused;
        assert_eq!((granted, refused), (5, 495));

        probe.open_gate();
        for response in held {
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            assert_eq!(body, "streamed");
        }
        assert_eq!(probe.in_flight.load(Ordering::SeqCst), 0);
        // Every lease back: the limit admits again, on both instances.
        admitted_eventually(&apps[0], "a lease released").await;
        admitted_eventually(&apps[1], "a lease released").await;
        assert!(probe.most.load(Ordering::SeqCst) <= LIMIT);
        assert_eq!(one.stats().leases_expired + two.stats().leases_expired, 0);
    }

    pub async fn a_lease_is_released_at_the_body_end_or_drop_not_at_the_head(store: Store) {
        let prefix = unique_prefix("one-stream");
        let probe = Probe::new();
        let layer = layer(store.cache.clone(), &prefix, Quota::concurrent(1), None);
        let app = app(layer.clone(), probe.clone());

        let first = call(&app).await;
        assert_eq!(first.status(), 200);
        assert_eq!(
            header(&first, "ratelimit-policy"),
            r#""streams";q=1;qu="concurrent-requests""#
        );
        assert!(header(&first, "ratelimit").starts_with(r#""streams";r=0"#));
        // The head is out, the body is not: the lease is still held.
        let second = call(&app).await;
        assert_eq!(second.status(), 429);
        assert_eq!(header(&second, "retry-after"), "1");
        assert_eq!(header(&second, "x-ratelimit-remaining"), "0");

        // The body read to its end: released.
        probe.open_gate();
        let body = axum::body::to_bytes(first.into_body(), 1024).await.unwrap();
        assert_eq!(body, "streamed");
        let third = admitted_eventually(&app, "the lease released at the body's end").await;

        // A body dropped unread (the client went away): released.
        probe.gate.send_replace(false);
        drop(third);
        let fourth = admitted_eventually(&app, "the lease released with the body").await;
        assert_eq!(call(&app).await.status(), 429, "the fourth holds it");
        drop(fourth);
        let stats = layer.stats();
        assert_eq!(stats.leases_expired, 0);
        assert!(stats.leases_granted >= 3);
    }

    pub async fn the_leases_of_a_killed_instance_expire_after_their_ttl(store: Store) {
        let prefix = unique_prefix("killed");
        let probe = Probe::new();
        let clock = ManualClock::new();
        let ttl = Duration::from_secs(10);
        let quota = Quota::concurrent(2).lease_ttl(ttl);
        let dying = RateLimitLayer::builder(store.cache.clone())
            .prefix(&prefix)
            .policy("streams", quota)
            .clock(clock.clone())
            .store_timeout(store.cache.timeout())
            .build()
            .unwrap();
        let dying_app = app(dying, probe.clone());
        // The instance dies with two responses in flight: their guards
        // never run, nothing is released.
        for _ in 0..2 {
            let response = call(&dying_app).await;
            assert_eq!(response.status(), 200);
            std::mem::forget(response);
        }
        let survivor = RateLimitLayer::builder(store.another_handle().await)
            .prefix(&prefix)
            .policy("streams", quota)
            .clock(clock.clone())
            .store_timeout(store.cache.timeout())
            .build()
            .unwrap();
        let survivor_app = app(survivor.clone(), probe.clone());
        assert_eq!(call(&survivor_app).await.status(), 429);
        clock.advance(ttl - Duration::from_millis(1));
        assert_eq!(
            call(&survivor_app).await.status(),
            429,
            "not before the TTL"
        );
        clock.advance(Duration::from_millis(1));
        let response = call(&survivor_app).await;
        assert_eq!(response.status(), 200, "freed at the TTL");
        probe.open_gate();
        axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(survivor.stats().leases_granted, 1);
    }

    pub async fn rate_policies_and_the_lease_are_taken_together_or_not_at_all(store: Store) {
        let prefix = unique_prefix("both");
        let probe = Probe::new();
        let clock = ManualClock::new();
        let layer = RateLimitLayer::builder(store.cache.clone())
            .prefix(&prefix)
            .policy("streams", Quota::concurrent(1))
            .policy("minute", Quota::per_minute(3))
            .clock(clock.clone())
            .store_timeout(store.cache.timeout())
            .build()
            .unwrap();
        let app = app(layer.clone(), probe.clone());
        probe.open_gate();
        let first = call(&app).await;
        assert_eq!(first.status(), 200);
        assert_eq!(
            header(&first, "ratelimit-policy"),
            r#""streams";q=1;qu="concurrent-requests", "minute";q=3;w=60"#
        );
        // Refused by the concurrency limit: the rate policy is not charged.
        for _ in 0..3 {
            assert_eq!(call(&app).await.status(), 429);
        }
        axum::body::to_bytes(first.into_body(), 1024).await.unwrap();
        for _ in 0..2 {
            let response = admitted_eventually(&app, "the lease released").await;
            axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
        }
        // Refused by the rate policy: no lease taken (the minute's wait, not 1 s).
        let limited = admitted_or_limited_after_release(&app).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(header(&limited, "retry-after"), "60");
        let stats = layer.stats();
        assert_eq!(stats.leases_granted, 3);
        // At least the three above (more if a poll found a release on its way).
        assert!(stats.leases_refused >= 3, "{stats:?}");
    }
}

mod plans_and_outcomes {
    use super::*;

    pub async fn a_plans_concurrency_limit_holds_releases_at_body_end_and_never_mixes_with_another_plans(
        store: Store,
    ) {
        let free_probe = Probe::new();
        let paid_probe = Probe::new();
        let layer = RateLimitLayer::builder(store.cache.clone())
            .prefix(unique_prefix("plan-leases"))
            .policy("free-in-flight", Quota::concurrent(1))
            .plan(
                "paid",
                [
                    ("paid-in-flight", Quota::concurrent(2)),
                    ("paid-minute", Quota::per_minute(100)),
                ],
            )
            .plan_for(|req: &rate_limit::RequestInfo<'_>| {
                req.extensions.get::<PlanName>().map(|plan| plan.0)
            })
            .store_timeout(store.cache.timeout())
            .fail_mode(FailMode::Closed)
            .build()
            .unwrap();
        let free = app(layer.clone(), free_probe.clone());
        let paid = app(layer.clone(), paid_probe.clone());

        // The paid plan holds its limit of 2, and reports its own policies.
        let paid_held = [
            call_on(&paid, "/", Some("paid")).await,
            call_on(&paid, "/", Some("paid")).await,
        ];
        for response in &paid_held {
            assert_eq!(response.status(), 200);
            assert_eq!(
                header(response, "ratelimit-policy"),
                r#""paid-in-flight";q=2;qu="concurrent-requests", "paid-minute";q=100;w=60"#
            );
        }
        let refused = call_on(&paid, "/", Some("paid")).await;
        assert_eq!(refused.status(), 429, "the paid plan's limit of 2");
        assert_eq!(header(&refused, "retry-after"), "1");
        // The default plan's slot is its own: the paid leases take none of it.
        let free_held = call_on(&free, "/", None).await;
        assert_eq!(
            free_held.status(),
            200,
            "the paid leases are not the default plan's"
        );
        assert_eq!(
            header(&free_held, "ratelimit-policy"),
            r#""free-in-flight";q=1;qu="concurrent-requests""#
        );
        assert_eq!(
            call_on(&free, "/", None).await.status(),
            429,
            "the default plan's limit of 1"
        );

        // The paid bodies end: their leases go back to the paid plan only.
        paid_probe.open_gate();
        for response in paid_held {
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            assert_eq!(body, "streamed");
        }
        let again = [
            past_the_leases(&paid, "/", Some("paid")).await,
            past_the_leases(&paid, "/", Some("paid")).await,
        ];
        assert!(
            again.iter().all(|r| r.status() == 200),
            "both paid slots back"
        );
        assert_eq!(call_on(&paid, "/", Some("paid")).await.status(), 429);
        assert_eq!(
            call_on(&free, "/", None).await.status(),
            429,
            "the paid releases freed no default-plan slot"
        );
        drop(again);

        // The default plan's body ends: its slot is back.
        free_probe.open_gate();
        axum::body::to_bytes(free_held.into_body(), 1024)
            .await
            .unwrap();
        let freed = past_the_leases(&free, "/", None).await;
        assert_eq!(freed.status(), 200);
        drop(freed);
        let stats = layer.stats();
        // A release on another plan's keys would find nothing there: expired.
        assert_eq!(stats.leases_expired, 0, "{stats:?}");
        assert!(stats.leases_granted >= 6, "{stats:?}");
    }

    pub async fn a_plans_streaming_response_renews_its_lease_on_the_plans_keys(store: Store) {
        let clock = ManualClock::new();
        // The default plan has no concurrency limit: the lease is the plan's
        // own to renew (its TTL, its keys).
        let layer = RateLimitLayer::builder(store.cache.clone())
            .prefix(unique_prefix("plan-renewed"))
            .policy("minute", Quota::per_minute(100))
            .plan(
                "streams",
                [(
                    "streams",
                    Quota::concurrent(1).lease_ttl(Duration::from_secs(10)),
                )],
            )
            .plan_for(|req: &rate_limit::RequestInfo<'_>| {
                req.extensions.get::<PlanName>().map(|plan| plan.0)
            })
            .clock(clock.clone())
            .store_timeout(store.cache.timeout())
            .build()
            .unwrap();
        renews_while_streaming(&layer, &clock, Some("streams")).await;
    }

    pub async fn charging_by_outcome_refunds_apart_from_the_lease_released_at_body_end(
        store: Store,
    ) {
        let probe = Probe::new();
        let layer = RateLimitLayer::builder(store.cache.clone())
            .prefix(unique_prefix("charged-leases"))
            .policy("streams", Quota::concurrent(1))
            .policy("failures", Quota::per_minute(2))
            .charge_if(|res: &rate_limit::ResponseInfo<'_>| {
                res.status == http::StatusCode::UNAUTHORIZED
            })
            .store_timeout(store.cache.timeout())
            .fail_mode(FailMode::Closed)
            .build()
            .unwrap();
        let app = status_app(layer.clone(), probe.clone());

        // Not charged (a 200): refunded at its head, its lease still held.
        let held = call_on(&app, "/200", None).await;
        assert_eq!(held.status(), 200);
        assert_eq!(
            layer.stats().refunded,
            1,
            "the refund is awaited before the head"
        );
        let refused = call_on(&app, "/200", None).await;
        assert_eq!(refused.status(), 429, "the lease outlives the refund");
        assert_eq!(header(&refused, "retry-after"), "1");
        probe.open_gate();
        axum::body::to_bytes(held.into_body(), 1024).await.unwrap();

        // Two failures are charged, each releasing its lease at its end.
        for _ in 0..2 {
            let failed = past_the_leases(&app, "/401", None).await;
            assert_eq!(failed.status(), 401);
            axum::body::to_bytes(failed.into_body(), 1024)
                .await
                .unwrap();
        }
        // The failures' limit is spent: refused by it, not by the lease.
        let limited = past_the_leases(&app, "/200", None).await;
        assert_eq!(limited.status(), 429);
        assert_ne!(header(&limited, "retry-after"), "1", "the minute's wait");
        let stats = layer.stats();
        assert_eq!(stats.refunded, 1, "{stats:?}");
        assert_eq!(stats.refund_errors, 0, "{stats:?}");
        assert_eq!(stats.leases_granted, 3, "{stats:?}");
        assert_eq!(stats.leases_expired, 0, "{stats:?}");
    }
}

/// The next request once no lease is held (the last release may still be
/// on its way): a rejection that is not the concurrency limit's.
async fn admitted_or_limited_after_release(app: &Router) -> http::Response<Body> {
    let mut answer = None;
    eventually(Duration::from_secs(10), "the lease released", async || {
        let response = call(app).await;
        let by_leases = response.status() == 429 && header(&response, "retry-after") == "1";
        if !by_leases {
            answer = Some(response);
        }
        answer.is_some()
    })
    .await;
    answer.unwrap()
}

/// The in-memory twins and `limits.lua` (and the release and renewal
/// scripts) give the same rows for the same sequence of acquires (costs 0
/// to 2, a concurrency limit beside a fixed window, time moving by up to
/// 0.4 s), releases and renewals, on a standalone Redis: the store is a
/// seam, not a second engine.
#[tokio::test]
async fn the_in_memory_leases_are_the_scripts_twin() {
    let memory = Cache::in_memory();
    let redis = suite::build(suite::redis(&shared_server().url()).timeout(suite::TIMEOUT)).await;
    let prefix = unique_prefix("twin");
    let keys = [
        format!("{prefix}:{{c}}:streams"),
        format!("{prefix}:{{c}}:minute"),
    ];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let quotas = [
        Quota::concurrent(2).lease_ttl(Duration::from_secs(2)),
        Quota::new(6, Duration::from_secs(2)),
    ];
    let mut rng = fastrand::Rng::with_seed(22);
    // From now: what Redis keeps expires within minutes.
    let mut now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let mut held: Vec<i64> = Vec::new();
    // Refusals by the concurrency limit, by the fixed window.
    let mut refused = (0, 0);
    for lease in 1..400i64 {
        now_us += rng.u64(0..400_000);
        if !held.is_empty() && rng.u8(0..3) == 0 {
            let gone = held.swap_remove(rng.usize(0..held.len()));
            let a = rate_limit::release_raw(&memory, keys[0], gone)
                .await
                .unwrap();
            let b = rate_limit::release_raw(&redis, keys[0], gone)
                .await
                .unwrap();
            assert_eq!(a, b, "release of lease {gone}");
        }
        if !held.is_empty() && rng.u8(0..4) == 0 {
            // A renewal, of a lease held or (at times) one long gone.
            let lease = held[rng.usize(0..held.len())] - i64::from(rng.u8(0..2));
            let args = [(now_us / 1000) as i64, 2000, lease];
            let renew =
                |cache| rate_limit::atomic_raw(cache, rate_limit::RawOp::Renew, &keys[..1], &args);
            let (a, b) = (renew(&memory).await.unwrap(), renew(&redis).await.unwrap());
            assert_eq!(a, b, "renewal of lease {lease} at {now_us}");
        }
        let cost = rng.u64(0..3);
        let a = rate_limit::acquire_raw(&memory, &keys, &quotas, now_us, cost, lease)
            .await
            .unwrap();
        let b = rate_limit::acquire_raw(&redis, &keys, &quotas, now_us, cost, lease)
            .await
            .unwrap();
        assert_eq!(a, b, "request {lease} of cost {cost} at {now_us}");
        if a[0] == 1 && cost > 0 {
            held.push(lease);
        }
        refused.0 += usize::from(a[0] == 0 && a[3] != 0);
        refused.1 += usize::from(a[0] == 0 && a[7] != 0);
    }
    assert!(refused.0 >= 10 && refused.1 >= 10, "{refused:?}");
}

/// The store unreachable: fail open lets the request through without a
/// lease (no body to release), fail closed answers 503.
#[tokio::test]
async fn a_store_failure_fails_open_or_closed_as_configured() {
    // Nothing listens on port 1.
    let down =
        suite::build(suite::redis("redis://127.0.0.1:1").timeout(Duration::from_millis(50))).await;
    for (mode, status) in [(FailMode::Open, 200), (FailMode::Closed, 503)] {
        let probe = Probe::new();
        probe.open_gate();
        let layer = RateLimitLayer::builder(down.clone())
            .prefix(unique_prefix("down"))
            .policy("streams", Quota::concurrent(1))
            .fail_mode(mode)
            .build()
            .unwrap();
        let app = app(layer.clone(), probe);
        for _ in 0..2 {
            assert_eq!(call(&app).await.status(), status, "{mode:?}");
        }
        let stats = layer.stats();
        assert_eq!(stats.leases_granted, 0);
        assert!(stats.store_errors >= 2);
    }
}

#[test]
fn a_concurrency_limit_past_its_bounds_is_a_config_error() {
    let build = |quota: Quota| {
        RateLimitLayer::builder(Cache::in_memory())
            .prefix(unique_prefix("bounds"))
            .policy("streams", quota)
            .build()
    };
    assert!(matches!(
        build(Quota::concurrent(0)),
        Err(ConfigError::ZeroLimit)
    ));
    assert!(matches!(
        build(Quota::concurrent(rate_limit::MAX_CONCURRENT + 1)),
        Err(ConfigError::ConcurrencyTooLarge(10_001))
    ));
    for ttl in [
        Duration::from_millis(999),
        Duration::from_secs(24 * 3600 + 1),
    ] {
        let err = build(Quota::concurrent(1).lease_ttl(ttl)).unwrap_err();
        assert!(matches!(err, ConfigError::LeaseTtl(t) if t == ttl));
        assert_eq!(err.kind(), ErrorKind::Config);
    }
    assert!(build(Quota::concurrent(10_000).lease_ttl(Duration::from_secs(24 * 3600))).is_ok());
    for wait in [Duration::from_secs(61), Duration::from_secs(1)] {
        let quota = match wait.as_secs() {
            61 => Quota::concurrent(1),
            _ => Quota::per_minute(1), // a wait without a concurrency limit
        };
        let err = RateLimitLayer::builder(Cache::in_memory())
            .prefix(unique_prefix("bounds"))
            .policy("streams", quota)
            .lease_wait(wait)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::LeaseWait(w) if w == wait),
            "{err}"
        );
    }
    let shared = RateLimitLayer::builder(Cache::in_memory())
        .prefix(unique_prefix("bounds"))
        .policy("streams", Quota::concurrent(1))
        .shared_counting(rate_limit::SharedCounting::new())
        .build();
    assert!(matches!(shared, Err(ConfigError::SharedConcurrency)));
}

/// A plan's concurrency limit is checked as the layer's own: its bounds,
/// `lease_wait` (accepted when only a plan has a concurrency limit), and
/// refused with the shared counting.
#[test]
fn a_plans_concurrency_limit_is_checked_at_build_time() {
    let build = |own: Quota, plan: Quota, wait: Duration, shared: bool| {
        let mut builder = RateLimitLayer::builder(Cache::in_memory())
            .prefix(unique_prefix("plan-bounds"))
            .policy("own", own)
            .plan("paid", [("paid", plan)])
            .plan_for(|_: &rate_limit::RequestInfo<'_>| Some("paid"))
            .lease_wait(wait);
        if shared {
            builder = builder.shared_counting(rate_limit::SharedCounting::new());
        }
        builder.build()
    };
    let (minute, one_s) = (Quota::per_minute(10), Duration::from_secs(1));
    assert!(build(minute, Quota::concurrent(2), one_s, false).is_ok());
    assert!(matches!(
        build(minute, Quota::concurrent(10_001), Duration::ZERO, false),
        Err(ConfigError::ConcurrencyTooLarge(10_001))
    ));
    assert!(matches!(
        build(minute, Quota::per_minute(5), one_s, false),
        Err(ConfigError::LeaseWait(w)) if w == one_s
    ));
    assert!(matches!(
        build(minute, Quota::concurrent(2), Duration::ZERO, true),
        Err(ConfigError::SharedConcurrency)
    ));
}
