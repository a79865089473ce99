//! `lock` (`#[cached(lock = ..)]`, `EntryOptions::lock`): across instances,
//! one computation per missing key. Four handles on one store and
//! namespace (four instances; on the in-memory store, clones of one
//! handle, which is one instance: there the flights do it) and 50 callers
//! on each, of one missing key: the body runs once, through either API.
//!
//! The body holds until all 200 callers have started and every instance has
//! counted its miss, so that all four miss while the first computes:
//! without the lock each of the four computes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{Cache, EntryOptions, cached, key_for};
use tests::suite::{self, Api, Backend};
use tests::unique_prefix;

const INSTANCES: usize = 4;
const CALLERS: usize = 200;
/// How long a test waits for what it expects.
const WAIT: Duration = Duration::from_secs(20);

/// Four instances on one store and namespace, and the API they call through.
struct Four {
    instances: Vec<Cache>,
    api: Api,
}

async fn fixture(backend: Backend, test: &str) -> Four {
    let namespace = unique_prefix(test);
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        let cache = match (backend, instances.first()) {
            (Backend::Memory, Some(first)) => Cache::clone(first),
            _ => suite::build(backend.suite_builder().namespace(namespace.clone())).await,
        };
        instances.push(cache);
    }
    Four {
        instances,
        api: Api::Macro,
    }
}

async fn function_fixture(backend: Backend, test: &str) -> Four {
    Four {
        api: Api::Function,
        ..fixture(backend, test).await
    }
}

/// The computation every caller asks for: counted, and held until every
/// caller has started and every instance has missed.
struct Run {
    instances: Vec<Cache>,
    started: tokio::sync::watch::Sender<usize>,
    computed: AtomicUsize,
}

impl Run {
    async fn compute(&self) -> u64 {
        self.computed.fetch_add(1, Ordering::SeqCst);
        let mut started = self.started.subscribe();
        tests::within(
            WAIT,
            "every caller starts",
            started.wait_for(|n| *n == CALLERS),
        )
        .await
        .expect("the run lives");
        // A miss is counted by the instance's read: no signal to wait on.
        // (The closure owns what it reads: a body run by `get_or_set` is
        // `Send`, which the compiler cannot prove of a closure that borrows.)
        let instances = self.instances.clone();
        tests::eventually(WAIT, "every instance misses", move || {
            let missed = instances.iter().all(|cache| cache.stats().misses > 0);
            std::future::ready(missed)
        })
        .await;
        42
    }
}

#[cached(prefix = "report", ttl = 60, lock = 10, cache = cache, skip(run))]
async fn report(cache: &Cache, run: &Run, id: u32) -> u64 {
    assert_eq!(id, 1);
    run.compute().await
}

async fn report_through(api: Api, cache: &Cache, run: &Arc<Run>, id: u32) -> u64 {
    match api {
        Api::Macro => report(cache, run, id).await,
        Api::Function => {
            let key = key_for("report", &(id,)).unwrap();
            let options = EntryOptions::ttl(Duration::from_secs(60)).lock(Duration::from_secs(10));
            let run = run.clone();
            cache
                .get_or_set(&key, &options, move || async move { run.compute().await })
                .await
        }
    }
}

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture;
    two_hundred_callers_on_four_instances_compute_once,
);

mod through_function {
    use super::*;

    tests::suite!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        fixture: function_fixture;
        two_hundred_callers_on_four_instances_compute_once,
    );
}

mod behaviour {
    use super::*;

    pub async fn two_hundred_callers_on_four_instances_compute_once(four: Four) {
        let Four { instances, api } = four;
        let run = Arc::new(Run {
            instances: instances.clone(),
            started: tokio::sync::watch::Sender::new(0),
            computed: AtomicUsize::new(0),
        });
        let calls: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let cache = instances[caller % INSTANCES].clone();
                let run = run.clone();
                tokio::spawn(async move {
                    run.started.send_modify(|n| *n += 1);
                    report_through(api, &cache, &run, 1).await
                })
            })
            .collect();
        for call in calls {
            let value = tests::within(WAIT, "a caller gets the value", call).await;
            assert_eq!(value.unwrap(), 42);
        }
        assert_eq!(
            run.computed.load(Ordering::SeqCst),
            1,
            "one computation for {CALLERS} callers on {INSTANCES} instances"
        );
        let key = key_for("report", &(1,)).unwrap();
        for cache in &instances {
            assert_eq!(cache.get::<u64>(&key).await.unwrap(), Some(42));
        }
    }
}
