//! `#[cached]` against the in-memory store, a standalone `redis-server` and a
//! three-node cluster: keys, TTLs, stored bytes, what is (not) cached,
//! single-flight, fail-open.
//!
//! Each test builds its own handle with its own namespace, and the memoized
//! functions take it as a skipped argument (`cache = cache, skip(cache)`), so
//! tests never share entries or a default handle.
//!
//! The behaviours both APIs express run twice: through `#[cached]`
//! (`through_macro::`) and through `Cache::get_or_set` / `try_get_or_set`
//! with the attribute's key and options (`through_function::`); the
//! functions of module [`memo`] pick the API. The attribute's own ones
//! (keys made of arguments, `skip`, methods, generics, the functions beside
//! it) run through it alone.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_core::{Cache, Codec, EntryOptions, KeyTtl, cached, key_for};
use serde::{Deserialize, Serialize};
use tests::suite::{self, Api, Backend};
use tests::{RedisServer, shared_server, unique_prefix};

/// A handle on the backend with a namespace of its own.
async fn fixture(backend: Backend, _test: &str) -> Cache {
    suite::build(backend.suite_builder().namespace(unique_prefix("cached"))).await
}

async fn macro_fixture(backend: Backend, test: &str) -> (Cache, Api) {
    (fixture(backend, test).await, Api::Macro)
}

async fn function_fixture(backend: Backend, test: &str) -> (Cache, Api) {
    (fixture(backend, test).await, Api::Function)
}

/// The behaviours of both APIs, through each.
macro_rules! shared_suite {
    ($fixture:ident) => {
        tests::suite!(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            fixture: $fixture;
            key_is_prefix_and_sha256_of_the_json_arguments,
            entry_lives_for_the_ttl,
            err_is_not_cached_and_ok_is,
            concurrent_first_calls_run_the_body_once,
            corrupt_entry_is_a_miss_and_is_overwritten,
            recursive_memoized_function_does_not_deadlock,
            a_panicking_leader_does_not_leave_followers_hanging,
            a_cancelled_leader_does_not_block_later_calls,
            invalidate_memoized_drops_one_entry,
            custom_key_and_duration_ttl,
            msgpack_codec_round_trips,
            a_zero_ttl_stores_nothing,
            a_foreign_value_under_a_msgpack_key_is_a_miss_and_is_overwritten,
            hash_map_arguments_hit_whatever_their_order,
        );
    };
}

mod through_macro {
    use super::*;
    shared_suite!(macro_fixture);
}

mod through_function {
    use super::*;
    shared_suite!(function_fixture);
}

// What only the attribute does: keys made of the arguments.
tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture;
    none_is_not_cached_and_some_is,
    methods_on_two_instances_share_an_entry,
    skipped_arguments_are_not_part_of_the_key,
    arguments_without_canonical_json_are_not_cached,
    generic_functions_key_each_type_apart,
    key_and_invalidate_functions_follow_key_and_skip,
    the_cache_argument_is_never_part_of_the_key,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Embedding(Vec<f32>);

#[cached(prefix = "embedding", ttl = 86400, cache = cache, skip(cache, calls))]
async fn embed(cache: &Cache, calls: &AtomicUsize, text: &str) -> Result<Embedding, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    embedding_of(text)
}

fn embedding_of(text: &str) -> Result<Embedding, String> {
    if text.is_empty() {
        return Err("empty text".to_string());
    }
    Ok(Embedding(text.bytes().map(f32::from).collect()))
}

#[cached(prefix = "lookup", ttl = 60, cache = cache, skip(cache, calls))]
async fn lookup(cache: &Cache, calls: &AtomicUsize, id: u32) -> Option<String> {
    calls.fetch_add(1, Ordering::SeqCst);
    id.is_multiple_of(2).then(|| format!("item-{id}"))
}

#[cached(prefix = "report", ttl = 60, cache = cache, skip(cache, calls, request_id))]
async fn report(cache: &Cache, calls: &AtomicUsize, account: u32, request_id: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    let _ = request_id;
    u64::from(account) * 10
}

struct SearchService {
    calls: AtomicUsize,
}

impl SearchService {
    /// Doc comments and other attributes are kept.
    #[cached(prefix = "search", ttl = 3600, cache = cache, skip(cache))]
    #[allow(clippy::needless_lifetimes)]
    pub async fn search<'q>(&self, cache: &Cache, query: &'q str, top_k: usize) -> Vec<String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (0..top_k).map(|i| format!("{query}-{i}")).collect()
    }
}

#[cached(prefix = "fib", ttl = 60, cache = cache, skip(cache))]
async fn fib(cache: &Cache, n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    Box::pin(fib(cache, n - 1)).await + Box::pin(fib(cache, n - 2)).await
}

/// Shared state of the gated function used by the concurrency tests.
#[derive(Default)]
struct Gate {
    calls: AtomicUsize,
    entered: tokio::sync::Notify,
    open: tokio::sync::watch::Sender<bool>,
    panic_first: AtomicBool,
}

#[cached(prefix = "gated", ttl = 60, cache = cache, skip(cache, gate))]
async fn gated(cache: &Cache, gate: &Gate, id: u32) -> u32 {
    gated_body(gate, id).await
}

/// Counts the call, says it entered, waits for the gate (bounded: a body
/// left waiting fails its test), panics if told to, answers `id + 1`.
async fn gated_body(gate: &Gate, id: u32) -> u32 {
    let call = gate.calls.fetch_add(1, Ordering::SeqCst);
    gate.entered.notify_one();
    let mut open = gate.open.subscribe();
    tests::within(WAIT, "the gate opens", open.wait_for(|open| *open))
        .await
        .expect("the gate's sender lives");
    if call == 0 && gate.panic_first.load(Ordering::SeqCst) {
        panic!("the leader fails");
    }
    id + 1
}

/// How long a test waits for what it expects.
const WAIT: Duration = Duration::from_secs(10);

#[cached(prefix = "custom", key = format!("user:{user}"), ttl = Duration::from_millis(45_000), cache = cache, skip(cache))]
async fn custom(cache: &Cache, user: u32) -> String {
    format!("summary of {user}")
}

#[cached(prefix = "packed", ttl = 60, codec = "msgpack", cache = cache, skip(cache, calls))]
async fn packed(cache: &Cache, calls: &AtomicUsize, n: u32) -> Vec<f32> {
    calls.fetch_add(1, Ordering::SeqCst);
    (0..n).map(|i| i as f32 * 0.5).collect()
}

#[cached(prefix = "inverse", ttl = 60, cache = cache, skip(cache, calls))]
async fn inverse(cache: &Cache, calls: &AtomicUsize, x: f64) -> f64 {
    calls.fetch_add(1, Ordering::SeqCst);
    1.0 / x
}

#[cached(prefix = "packed-id", ttl = 60, codec = "msgpack", cache = cache, skip(cache, calls))]
async fn packed_id(cache: &Cache, calls: &AtomicUsize, name: &str) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    name.len() as u64
}

#[cached(prefix = "packed-doc", ttl = 60, codec = "msgpack", cache = cache, skip(cache, calls))]
async fn packed_doc(cache: &Cache, calls: &AtomicUsize, id: u32) -> serde_json::Value {
    calls.fetch_add(1, Ordering::SeqCst);
    serde_json::json!({ "id": id, "tags": ["a", "b"] })
}

#[cached(prefix = "by-counts", ttl = 60, cache = cache, skip(cache, calls))]
async fn total(cache: &Cache, calls: &AtomicUsize, counts: &HashMap<String, u32>) -> u32 {
    calls.fetch_add(1, Ordering::SeqCst);
    counts.values().sum()
}

#[cached(prefix = "zero-ttl", ttl = Duration::ZERO, cache = cache, skip(cache, calls))]
async fn fleeting(cache: &Cache, calls: &AtomicUsize, n: u32) -> u32 {
    calls.fetch_add(1, Ordering::SeqCst);
    n + 1
}

/// Which type it was called with: `1u8` and `1.0f64` have the same JSON
/// (`1`), so a key of the arguments alone would give one the other's answer.
#[cached(prefix = "type-of", ttl = 60, cache = cache, skip(calls))]
async fn type_of<T: Serialize + Send + Sync>(
    cache: &Cache,
    calls: &AtomicUsize,
    value: T,
) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    let _ = &value;
    std::any::type_name::<T>().to_owned()
}

/// The same with an `impl Trait` argument: an unnamed type parameter.
#[cached(prefix = "type-of-impl", ttl = 60, cache = cache)]
async fn type_of_impl(cache: &Cache, value: impl Serialize + Send + Sync) -> String {
    std::any::type_name_of_val(&value).to_owned()
}

/// One entry for all calls: `key = ...` and a skipped argument.
#[cached(prefix = "prices", ttl = 60, key = "all", cache = cache, skip(calls))]
async fn prices(cache: &Cache, calls: &AtomicUsize) -> Vec<u32> {
    calls.fetch_add(1, Ordering::SeqCst);
    vec![72_000, 3_500]
}

/// The handle named by `cache = ...` is left out of the key without `skip`.
#[cached(prefix = "handle-arg", ttl = 60, cache = cache, skip(calls))]
async fn handle_arg(cache: &Cache, calls: &AtomicUsize, n: u32) -> u32 {
    calls.fetch_add(1, Ordering::SeqCst);
    n * 3
}

/// An owned handle named by reference, not skipped either.
#[cached(prefix = "owned-handle-arg", ttl = 60, cache = &cache)]
async fn owned_handle_arg(cache: Cache, n: u32) -> u32 {
    drop(cache);
    n * 4
}

/// A service whose keys hold a field of `self`.
struct Regional {
    region: &'static str,
    calls: AtomicUsize,
}

impl Regional {
    #[cached(prefix = "regional", ttl = 60, key = format!("{}:{sku}", self.region), cache = cache)]
    async fn price(&self, cache: &Cache, sku: &str) -> u32 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sku.len() as u32
    }
}

/// The memoized operations of the shared behaviours, through either API:
/// the function API gets the key and the options the attribute uses.
mod memo {
    use super::*;

    fn minute() -> EntryOptions {
        EntryOptions::ttl(Duration::from_secs(60))
    }

    pub async fn fleeting(api: Api, cache: &Cache, calls: &AtomicUsize, n: u32) -> u32 {
        match api {
            Api::Macro => super::fleeting(cache, calls, n).await,
            Api::Function => {
                let key = key_for("zero-ttl", &(n,)).unwrap();
                let options = EntryOptions::ttl(Duration::ZERO);
                cache
                    .get_or_set(&key, &options, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move { n + 1 }
                    })
                    .await
            }
        }
    }

    pub async fn embed(
        api: Api,
        cache: &Cache,
        calls: &AtomicUsize,
        text: &str,
    ) -> Result<Embedding, String> {
        match api {
            Api::Macro => super::embed(cache, calls, text).await,
            Api::Function => {
                let key = key_for("embedding", &(text,)).unwrap();
                let options = EntryOptions::ttl(Duration::from_secs(86400));
                cache
                    .try_get_or_set(&key, &options, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let text = text.to_owned();
                        async move { embedding_of(&text) }
                    })
                    .await
            }
        }
    }

    pub async fn gated(api: Api, cache: &Cache, gate: &Arc<Gate>, id: u32) -> u32 {
        match api {
            Api::Macro => super::gated(cache, gate, id).await,
            Api::Function => {
                let key = key_for("gated", &(id,)).unwrap();
                cache
                    .get_or_set(&key, &minute(), || {
                        let gate = gate.clone();
                        async move { gated_body(&gate, id).await }
                    })
                    .await
            }
        }
    }

    pub fn fib(api: Api, cache: Cache, n: u64) -> Pin<Box<dyn Future<Output = u64> + Send>> {
        Box::pin(async move {
            match api {
                Api::Macro => super::fib(&cache, n).await,
                Api::Function => {
                    let key = key_for("fib", &(n,)).unwrap();
                    let inner = cache.clone();
                    cache
                        .get_or_set(&key, &minute(), move || async move {
                            if n < 2 {
                                return n;
                            }
                            fib(api, inner.clone(), n - 1).await + fib(api, inner, n - 2).await
                        })
                        .await
                }
            }
        })
    }

    pub async fn custom(api: Api, cache: &Cache, user: u32) -> String {
        match api {
            Api::Macro => super::custom(cache, user).await,
            Api::Function => {
                let options = EntryOptions::ttl(Duration::from_millis(45_000));
                cache
                    .get_or_set(&format!("custom:user:{user}"), &options, || async move {
                        format!("summary of {user}")
                    })
                    .await
            }
        }
    }

    fn packed_options() -> EntryOptions {
        minute().codec(Codec::MessagePack)
    }

    pub async fn packed(api: Api, cache: &Cache, calls: &AtomicUsize, n: u32) -> Vec<f32> {
        match api {
            Api::Macro => super::packed(cache, calls, n).await,
            Api::Function => {
                let key = key_for("packed", &(n,)).unwrap();
                cache
                    .get_or_set(&key, &packed_options(), || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move { (0..n).map(|i| i as f32 * 0.5).collect() }
                    })
                    .await
            }
        }
    }

    pub async fn packed_id(api: Api, cache: &Cache, calls: &AtomicUsize, name: &str) -> u64 {
        match api {
            Api::Macro => super::packed_id(cache, calls, name).await,
            Api::Function => {
                let key = key_for("packed-id", &(name,)).unwrap();
                let len = name.len() as u64;
                cache
                    .get_or_set(&key, &packed_options(), || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move { len }
                    })
                    .await
            }
        }
    }

    pub async fn packed_doc(
        api: Api,
        cache: &Cache,
        calls: &AtomicUsize,
        id: u32,
    ) -> serde_json::Value {
        match api {
            Api::Macro => super::packed_doc(cache, calls, id).await,
            Api::Function => {
                let key = key_for("packed-doc", &(id,)).unwrap();
                cache
                    .get_or_set(&key, &packed_options(), || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move { serde_json::json!({ "id": id, "tags": ["a", "b"] }) }
                    })
                    .await
            }
        }
    }

    pub async fn total(
        api: Api,
        cache: &Cache,
        calls: &AtomicUsize,
        counts: &HashMap<String, u32>,
    ) -> u32 {
        match api {
            Api::Macro => super::total(cache, calls, counts).await,
            Api::Function => {
                let key = key_for("by-counts", &(counts,)).unwrap();
                let sum = counts.values().sum();
                cache
                    .get_or_set(&key, &minute(), || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move { sum }
                    })
                    .await
            }
        }
    }
}

mod behaviour {
    use super::*;

    pub async fn a_zero_ttl_stores_nothing((cache, api): (Cache, Api)) {
        let calls = AtomicUsize::new(0);
        assert_eq!(memo::fleeting(api, &cache, &calls, 1).await, 2);
        assert_eq!(memo::fleeting(api, &cache, &calls, 1).await, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "nothing was cached");
        let key = key_for("zero-ttl", &(1,)).unwrap();
        assert!(!cache.exists(&key).await.unwrap());
        assert_eq!(cache.stats().errors, 0, "a zero TTL is not an error");
    }

    pub async fn key_is_prefix_and_sha256_of_the_json_arguments((cache, api): (Cache, Api)) {
        let calls = AtomicUsize::new(0);
        let value = memo::embed(api, &cache, &calls, "hello").await.unwrap();
        let key = key_for("embedding", &("hello",)).unwrap();
        assert_eq!(
            key,
            "embedding:c7a0f7154e64cd96c617f251dc12c4396b7234c2856ccf4860ab7af537dfcdd9"
        );
        let stored = cache.get_bytes(&key).await.unwrap().expect("entry stored");
        assert_eq!(
            stored,
            serde_json::to_vec(&value).unwrap(),
            "the JSON of the Ok value"
        );
        assert_eq!(
            memo::embed(api, &cache, &calls, "hello").await.unwrap(),
            value
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "second call is a hit");
    }

    pub async fn entry_lives_for_the_ttl((cache, api): (Cache, Api)) {
        let calls = AtomicUsize::new(0);
        memo::embed(api, &cache, &calls, "ttl").await.unwrap();
        let key = key_for("embedding", &("ttl",)).unwrap();
        match cache.ttl(&key).await.unwrap() {
            KeyTtl::Expires(left) => {
                assert!(left <= Duration::from_secs(86400));
                assert!(left > Duration::from_secs(86398), "{left:?}");
            }
            other => panic!("expected the TTL, got {other:?}"),
        }
    }

    pub async fn err_is_not_cached_and_ok_is((cache, api): (Cache, Api)) {
        let calls = AtomicUsize::new(0);
        assert!(memo::embed(api, &cache, &calls, "").await.is_err());
        assert!(memo::embed(api, &cache, &calls, "").await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "Err is never cached");
        let key = key_for("embedding", &("",)).unwrap();
        assert!(!cache.exists(&key).await.unwrap());
    }

    pub async fn none_is_not_cached_and_some_is(cache: Cache) {
        let calls = AtomicUsize::new(0);
        assert_eq!(lookup(&cache, &calls, 1).await, None);
        assert_eq!(lookup(&cache, &calls, 1).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "None is never cached");
        assert_eq!(lookup(&cache, &calls, 2).await.as_deref(), Some("item-2"));
        assert_eq!(lookup(&cache, &calls, 2).await.as_deref(), Some("item-2"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let stored = cache
            .get_bytes(&key_for("lookup", &(2,)).unwrap())
            .await
            .unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(&b"\"item-2\""[..]),
            "the Some value itself"
        );
    }

    pub async fn methods_on_two_instances_share_an_entry(cache: Cache) {
        let a = SearchService {
            calls: AtomicUsize::new(0),
        };
        let b = SearchService {
            calls: AtomicUsize::new(0),
        };
        let first = a.search(&cache, "redis", 3).await;
        let second = b.search(&cache, "redis", 3).await;
        assert_eq!(first, second);
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            b.calls.load(Ordering::SeqCst),
            0,
            "self is not part of the key"
        );
        assert!(
            cache
                .exists(&key_for("search", &("redis", 3)).unwrap())
                .await
                .unwrap()
        );
    }

    pub async fn skipped_arguments_are_not_part_of_the_key(cache: Cache) {
        let calls = AtomicUsize::new(0);
        assert_eq!(report(&cache, &calls, 7, 1).await, 70);
        assert_eq!(report(&cache, &calls, 7, 2).await, 70);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(
            cache
                .exists(&key_for("report", &(7,)).unwrap())
                .await
                .unwrap()
        );
    }

    pub async fn concurrent_first_calls_run_the_body_once((cache, api): (Cache, Api)) {
        let gate = Arc::new(Gate::default());
        let (entered_tx, mut entered_rx) = tokio::sync::watch::channel(0usize);
        let entered_tx = Arc::new(entered_tx);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, gate, entered) = (cache.clone(), gate.clone(), entered_tx.clone());
                tokio::spawn(async move {
                    // Counting and the call's first poll happen in one poll of this task,
                    // so when all 50 have counted, all 50 are inside `gated`.
                    entered.send_modify(|n| *n += 1);
                    memo::gated(api, &cache, &gate, 41).await
                })
            })
            .collect();
        tests::within(
            WAIT,
            "all 50 calls entered",
            entered_rx.wait_for(|n| *n == 50),
        )
        .await
        .unwrap();
        gate.open.send_replace(true);
        for task in tasks {
            assert_eq!(
                tests::within(WAIT, "a call returns", task).await.unwrap(),
                42
            );
        }
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1, "the body ran once");
    }

    pub async fn corrupt_entry_is_a_miss_and_is_overwritten((cache, api): (Cache, Api)) {
        let calls = AtomicUsize::new(0);
        let key = key_for("embedding", &("corrupt",)).unwrap();
        cache.set_bytes(&key, b"\x00garbage{", None).await.unwrap();
        let value = memo::embed(api, &cache, &calls, "corrupt").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            cache.get_bytes(&key).await.unwrap().unwrap(),
            serde_json::to_vec(&value).unwrap()
        );
        assert!(cache.stats().decode_errors >= 1);
    }

    pub async fn recursive_memoized_function_does_not_deadlock((cache, api): (Cache, Api)) {
        let result =
            tokio::time::timeout(Duration::from_secs(10), memo::fib(api, cache.clone(), 40)).await;
        assert_eq!(result.expect("fib must not deadlock"), 102_334_155);
    }

    pub async fn a_panicking_leader_does_not_leave_followers_hanging((cache, api): (Cache, Api)) {
        let gate = Arc::new(Gate::default());
        gate.panic_first.store(true, Ordering::SeqCst);
        let leader = {
            let (cache, gate) = (cache.clone(), gate.clone());
            tokio::spawn(async move { memo::gated(api, &cache, &gate, 1).await })
        };
        tests::within(WAIT, "the leader's body starts", gate.entered.notified()).await;
        let followers: Vec<_> = (0..5)
            .map(|_| {
                let (cache, gate) = (cache.clone(), gate.clone());
                tokio::spawn(async move { memo::gated(api, &cache, &gate, 1).await })
            })
            .collect();
        gate.open.send_replace(true);
        let leader = tests::within(WAIT, "the leader ends", leader).await;
        assert!(leader.is_err(), "the leader panicked");
        for follower in followers {
            let value = tokio::time::timeout(Duration::from_secs(10), follower)
                .await
                .expect("a follower was left hanging");
            assert_eq!(value.unwrap(), 2);
        }
    }

    pub async fn a_cancelled_leader_does_not_block_later_calls((cache, api): (Cache, Api)) {
        let gate = Arc::new(Gate::default());
        let leader = {
            let (cache, gate) = (cache.clone(), gate.clone());
            tokio::spawn(async move { memo::gated(api, &cache, &gate, 5).await })
        };
        tests::within(WAIT, "the leader's body starts", gate.entered.notified()).await;
        leader.abort();
        let _ = leader.await;
        gate.open.send_replace(true);
        let value =
            tokio::time::timeout(Duration::from_secs(10), memo::gated(api, &cache, &gate, 5))
                .await
                .expect("a later call must not wait for the cancelled leader");
        assert_eq!(value, 6);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
    }

    pub async fn invalidate_memoized_drops_one_entry((cache, api): (Cache, Api)) {
        let calls = AtomicUsize::new(0);
        memo::embed(api, &cache, &calls, "a").await.unwrap();
        memo::embed(api, &cache, &calls, "b").await.unwrap();
        assert!(
            cache_core::invalidate_memoized(&cache, "embedding", &("a",))
                .await
                .unwrap()
        );
        memo::embed(api, &cache, &calls, "a").await.unwrap();
        memo::embed(api, &cache, &calls, "b").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "only `a` ran again");
    }

    pub async fn custom_key_and_duration_ttl((cache, api): (Cache, Api)) {
        assert_eq!(memo::custom(api, &cache, 9).await, "summary of 9");
        assert_eq!(
            cache
                .get::<String>("custom:user:9")
                .await
                .unwrap()
                .as_deref(),
            Some("summary of 9")
        );
        assert!(matches!(
            cache.ttl("custom:user:9").await.unwrap(),
            KeyTtl::Expires(left) if left <= Duration::from_secs(45) && left > Duration::from_secs(43)
        ));
    }

    pub async fn msgpack_codec_round_trips((cache, api): (Cache, Api)) {
        let calls = AtomicUsize::new(0);
        let first = memo::packed(api, &cache, &calls, 3).await;
        assert_eq!(memo::packed(api, &cache, &calls, 3).await, first);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let bytes = cache
            .get_bytes(&key_for("packed", &(3,)).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            bytes[..3],
            [0xC1, 0x01, 0x93],
            "the codec's header, then a MessagePack array of 3, not JSON"
        );
    }

    pub async fn arguments_without_canonical_json_are_not_cached(cache: Cache) {
        let calls = AtomicUsize::new(0);
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            inverse(&cache, &calls, x).await;
            inverse(&cache, &calls, x).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 6, "the body ran every time");
        let stats = cache.stats();
        assert_eq!(stats.uncacheable, 6);
        assert_eq!((stats.hits, stats.misses), (0, 0), "no read was made");
        // Once all three were one key (`[null]`): -inf got inf's result.
        let positive = inverse(&cache, &calls, f64::INFINITY).await;
        let negative = inverse(&cache, &calls, f64::NEG_INFINITY).await;
        assert!(positive == 0.0 && positive.is_sign_positive());
        assert!(negative == 0.0 && negative.is_sign_negative());
        // Finite arguments are still cached.
        assert_eq!(inverse(&cache, &calls, 4.0).await, 0.25);
        assert_eq!(inverse(&cache, &calls, 4.0).await, 0.25);
        assert_eq!(calls.load(Ordering::SeqCst), 9);
        assert_eq!(cache.stats().uncacheable, 8);
        assert_eq!(cache.stats().hits, 1);
    }

    pub async fn a_foreign_value_under_a_msgpack_key_is_a_miss_and_is_overwritten(
        (cache, api): (Cache, Api),
    ) {
        let calls = AtomicUsize::new(0);
        // The JSON text 12345: its first byte is the MessagePack fixint 49.
        let key = key_for("packed-id", &("hello",)).unwrap();
        cache.set_bytes(&key, b"12345", None).await.unwrap();
        assert_eq!(memo::packed_id(api, &cache, &calls, "hello").await, 5);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the foreign value was a miss"
        );
        let stored = cache.get_bytes(&key).await.unwrap().unwrap();
        assert_eq!(stored, [0xC1, 0x01, 0x05], "overwritten by the call");
        assert_eq!(memo::packed_id(api, &cache, &calls, "hello").await, 5);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "then a hit");

        // Garbage whose first byte is the fixint -1, and our own entry with
        // bytes after the value: both misses, both overwritten.
        let expected = serde_json::json!({ "id": 7, "tags": ["a", "b"] });
        let own = cache_core::Codec::MessagePack.encode(&expected).unwrap();
        for foreign in [
            b"\xff\xfe garbage".to_vec(),
            [own.as_slice(), b"\x01"].concat(),
        ] {
            let key = key_for("packed-doc", &(7,)).unwrap();
            cache.set_bytes(&key, &foreign, None).await.unwrap();
            let before = calls.load(Ordering::SeqCst);
            assert_eq!(memo::packed_doc(api, &cache, &calls, 7).await, expected);
            assert_eq!(calls.load(Ordering::SeqCst), before + 1, "a miss");
            assert_eq!(cache.get_bytes(&key).await.unwrap().unwrap(), own);
        }
        assert_eq!(cache.stats().decode_errors, 3);
    }

    pub async fn generic_functions_key_each_type_apart(cache: Cache) {
        let calls = AtomicUsize::new(0);
        assert_eq!(type_of(&cache, &calls, 1u8).await, "u8");
        assert_eq!(
            type_of(&cache, &calls, 1.0f64).await,
            "f64",
            "not u8's entry"
        );
        assert_eq!(type_of(&cache, &calls, 1u8).await, "u8");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the third call was a hit");
        // The form docs/keys.md gives: the arguments, then an array of the type names.
        let key = type_of_key(1u8).unwrap();
        assert_eq!(
            key,
            format!("type-of:{}", cache_core::sha256_hex(br#"[1,["u8"]]"#))
        );
        assert_eq!(key, key_for("type-of", &(1u8, ("u8",))).unwrap());
        assert!(cache.exists(&key).await.unwrap());
        assert!(cache.exists(&type_of_key(1.0f64).unwrap()).await.unwrap());

        assert_eq!(type_of_impl(&cache, 1u8).await, "u8");
        assert_eq!(type_of_impl(&cache, 1.0f64).await, "f64", "not u8's entry");
        assert_eq!(
            type_of_impl_key(1.0f64).unwrap(),
            format!("type-of-impl:{}", cache_core::sha256_hex(br#"[1,["f64"]]"#))
        );
    }

    pub async fn key_and_invalidate_functions_follow_key_and_skip(cache: Cache) {
        // `key = "all"`: what `invalidate_memoized(&cache, "prices", &())` missed.
        let calls = AtomicUsize::new(0);
        assert_eq!(prices(&cache, &calls).await, [72_000, 3_500]);
        assert_eq!(prices_key().unwrap(), "prices:all");
        assert!(cache.exists("prices:all").await.unwrap());
        assert!(prices_invalidate(&cache).await.unwrap());
        assert!(!cache.exists("prices:all").await.unwrap());
        assert!(!prices_invalidate(&cache).await.unwrap(), "already gone");
        prices(&cache, &calls).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the body ran again");

        // Skipped arguments are not asked for.
        let calls = AtomicUsize::new(0);
        report(&cache, &calls, 7, 1).await;
        assert_eq!(report_key(7).unwrap(), key_for("report", &(7,)).unwrap());
        assert!(report_invalidate(&cache, 7).await.unwrap());
        report(&cache, &calls, 7, 2).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // `key = ...` over the arguments.
        custom(&cache, 9).await;
        assert_eq!(custom_key(9).unwrap(), "custom:user:9");
        assert!(custom_invalidate(&cache, 9).await.unwrap());
        assert!(!cache.exists("custom:user:9").await.unwrap());

        // Methods: associated functions, without `self`...
        let service = SearchService {
            calls: AtomicUsize::new(0),
        };
        service.search(&cache, "redis", 3).await;
        assert_eq!(
            SearchService::search_key("redis", 3).unwrap(),
            key_for("search", &("redis", 3)).unwrap()
        );
        assert!(
            SearchService::search_invalidate(&cache, "redis", 3)
                .await
                .unwrap()
        );
        service.search(&cache, "redis", 3).await;
        assert_eq!(service.calls.load(Ordering::SeqCst), 2);

        // ... or methods, when `key = ...` uses `self`.
        let eu = Regional {
            region: "eu",
            calls: AtomicUsize::new(0),
        };
        assert_eq!(eu.price(&cache, "ab-1").await, 4);
        assert_eq!(eu.price_key("ab-1").unwrap(), "regional:eu:ab-1");
        assert!(eu.price_invalidate(&cache, "ab-1").await.unwrap());
        assert_eq!(eu.price(&cache, "ab-1").await, 4);
        assert_eq!(eu.calls.load(Ordering::SeqCst), 2);

        // A key with no canonical form fails as the call would run uncached.
        let err = type_of_key(f64::NAN).unwrap_err();
        assert_eq!(err.kind(), cache_core::ErrorKind::Encode);
    }

    pub async fn the_cache_argument_is_never_part_of_the_key(cache: Cache) {
        let calls = AtomicUsize::new(0);
        assert_eq!(handle_arg(&cache, &calls, 5).await, 15);
        assert_eq!(handle_arg(&cache, &calls, 5).await, 15);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let key = key_for("handle-arg", &(5,)).unwrap();
        assert_eq!(handle_arg_key(5).unwrap(), key);
        assert!(cache.exists(&key).await.unwrap());

        assert_eq!(owned_handle_arg(cache.clone(), 2).await, 8);
        let key = key_for("owned-handle-arg", &(2,)).unwrap();
        assert!(cache.exists(&key).await.unwrap());
    }

    pub async fn hash_map_arguments_hit_whatever_their_order((cache, api): (Cache, Api)) {
        let calls = AtomicUsize::new(0);
        let forward: HashMap<String, u32> = (0..32).map(|i| (format!("k{i}"), i)).collect();
        let backward: HashMap<String, u32> = (0..32).rev().map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(memo::total(api, &cache, &calls, &forward).await, 496);
        assert_eq!(memo::total(api, &cache, &calls, &backward).await, 496);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one key for equal maps");
    }
}

/// The stored key and bytes, as another service reading Redis sees them.
#[tokio::test]
async fn any_client_reads_the_documented_key_and_json() {
    let server = shared_server();
    let cache = suite::build(suite::redis(&server.url())).await;
    let calls = AtomicUsize::new(0);
    let text = unique_prefix("raw");
    embed(&cache, &calls, &text).await.unwrap();
    let key = format!(
        "embedding:{}",
        cache_core::sha256_hex(serde_json::to_string(&[&text]).unwrap().as_bytes())
    );
    let json = server.cli(&["GET", &key]);
    let expected: Vec<f32> = text.bytes().map(f32::from).collect();
    assert_eq!(
        serde_json::from_str::<Vec<f32>>(json.trim()).unwrap(),
        expected
    );
    let pttl: u64 = server.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(pttl > 86_398_000 && pttl <= 86_400_000, "{pttl}");
}

/// With Redis killed, memoized calls still answer, each well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_dead_calls_run_the_body_quickly() {
    let mut server = RedisServer::start();
    let cache = suite::build(suite::redis(&server.url()).timeout(Duration::from_millis(200))).await;
    let calls = AtomicUsize::new(0);
    embed(&cache, &calls, "warm").await.unwrap();
    server.kill();
    for i in 0..20 {
        let started = Instant::now();
        let text = format!("down-{i}");
        let value = embed(&cache, &calls, &text).await.unwrap();
        assert_eq!(value.0.len(), text.len());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "call {i} took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 21);
    assert!(cache.stats().errors > 0);
}

/// A handle for the budget tests: a short timeout, and a breaker that does
/// not open during the test (it must not be what skips a call).
async fn budget_handle(server: &RedisServer, timeout: Duration) -> Cache {
    suite::build(
        suite::redis(&server.url())
            .timeout(timeout)
            .breaker_threshold(100),
    )
    .await
}

/// With Redis hanging, a memoized call and the memoized call inside it lose
/// one call timeout in all, not one each: the inner one finds the budget spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_calls_share_one_timeout_while_redis_hangs() {
    #[cached(prefix = "budget-inner", ttl = 60, cache = cache, skip(cache))]
    async fn inner(cache: &Cache, n: u32) -> u32 {
        n * 2
    }
    #[cached(prefix = "budget-outer", ttl = 60, cache = cache, skip(cache))]
    async fn outer(cache: &Cache, n: u32) -> u32 {
        inner(cache, n).await + 1
    }

    let timeout = Duration::from_millis(300);
    let server = RedisServer::start();
    let cache = budget_handle(&server, timeout).await;
    assert_eq!(outer(&cache, 1).await, 3, "connected and cached");
    server.cli(&["CLIENT", "PAUSE", "10000", "ALL"]);
    let started = Instant::now();
    assert_eq!(outer(&cache, 2).await, 5);
    let took = started.elapsed();
    assert!(took >= timeout, "the outer read did wait: {took:?}");
    assert!(took < timeout * 2 - Duration::from_millis(100), "{took:?}");
    assert!(cache.stats().timeouts >= 2, "{:?}", cache.stats());
    // The next call tree has a budget of its own.
    let started = Instant::now();
    assert_eq!(outer(&cache, 3).await, 7);
    assert!(started.elapsed() >= timeout);
}

/// What the body's memoized calls spend of the budget is gone for the outer
/// call's own write too: Redis starts hanging inside the body, after the
/// outer read, so the inner read spends the whole budget and the outer write
/// gives up at once instead of waiting a second timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outer_write_gets_what_the_body_left_of_the_budget() {
    #[cached(prefix = "left-inner", ttl = 60, cache = cache, skip(cache))]
    async fn inner(cache: &Cache, n: u32) -> u32 {
        n * 2
    }
    #[cached(prefix = "left-outer", ttl = 60, cache = cache, skip(cache, server))]
    async fn outer(cache: &Cache, server: &RedisServer, n: u32) -> u32 {
        server.cli(&["CLIENT", "PAUSE", "10000", "ALL"]);
        inner(cache, n).await + 1
    }

    let timeout = Duration::from_millis(300);
    let server = RedisServer::start();
    let cache = budget_handle(&server, timeout).await;
    assert!(cache.health().await.healthy);
    let started = Instant::now();
    assert_eq!(outer(&cache, &server, 1).await, 3);
    let took = started.elapsed();
    assert!(took >= timeout, "the inner read did wait: {took:?}");
    assert!(
        took < timeout * 2 - Duration::from_millis(100),
        "the outer write waited a second timeout: {took:?}"
    );
}

/// Calls that join a flight whose leader finds the entry get the leader's
/// bytes: one read for all of them. Redis is paused so that they all join
/// while the leader's read is under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_hit_share_the_leaders_read() {
    let server = RedisServer::start();
    let cache = suite::build(suite::redis(&server.url()).timeout(Duration::from_secs(10))).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let expected = packed(&cache, &calls, 16).await;
    let hits = cache.stats().hits;

    server.cli(&["CLIENT", "PAUSE", "300", "ALL"]);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move { packed(&cache, &calls, 16).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), expected);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the first call ran the body"
    );
    assert_eq!(
        cache.stats().hits - hits,
        1,
        "one read served all ten calls"
    );
}

/// A bypassed handle, or no handle at all, just runs the function.
#[tokio::test]
async fn bypass_and_missing_default_run_the_body_every_time() {
    let cache = suite::build(Cache::builder().bypass(true)).await;
    let calls = AtomicUsize::new(0);
    embed(&cache, &calls, "x").await.unwrap();
    embed(&cache, &calls, "x").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        !cache
            .exists(&key_for("embedding", &("x",)).unwrap())
            .await
            .unwrap()
    );

    #[cached(prefix = "nodefault", ttl = 60, skip(calls))]
    async fn uses_default(calls: &AtomicUsize, n: u8) -> u8 {
        calls.fetch_add(1, Ordering::SeqCst);
        n
    }
    // No test in this binary sets a default handle.
    let calls = AtomicUsize::new(0);
    uses_default(&calls, 1).await;
    uses_default(&calls, 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Generics, `where` clauses, `impl Trait` arguments, trait impls and visibility compile.
mod shapes {
    use super::*;

    #[cached(prefix = "generic", ttl = 60, cache = cache, skip(cache))]
    pub(crate) async fn generic<T>(
        cache: &Cache,
        items: &[T],
        label: impl Serialize + Send + Sync,
    ) -> usize
    where
        T: Serialize + Sync,
    {
        let _ = label;
        items.len()
    }

    pub trait Scorer {
        fn score(&self, cache: &Cache, word: &str)
        -> impl std::future::Future<Output = u32> + Send;
    }

    pub struct Length;

    impl Scorer for Length {
        // A trait impl holds the trait's items only: no `score_key` beside it.
        #[cached(prefix = "score", ttl = 60, cache = cache, skip(cache), in_trait)]
        async fn score(&self, cache: &Cache, word: &str) -> u32 {
            word.len() as u32
        }
    }

    /// A service that holds its handle, named by `&self.cache` whatever the
    /// receiver (`&self`, `self: Arc<Self>`, `&mut self`); and a handle
    /// passed by value and named by reference.
    pub struct Catalog {
        cache: Cache,
        lookups: AtomicUsize,
    }

    impl Catalog {
        #[cached(prefix = "price", ttl = 60, cache = &self.cache)]
        async fn price(&self, sku: &str) -> u32 {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            sku.len() as u32 * 100
        }

        #[cached(prefix = "stock", ttl = 60, cache = &self.cache)]
        async fn stock(self: Arc<Self>, sku: String) -> u32 {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            sku.len() as u32
        }

        #[cached(prefix = "restock", ttl = 60, cache = &self.cache)]
        async fn restock(&mut self, sku: &str) -> u32 {
            *self.lookups.get_mut() += 1;
            sku.len() as u32 * 10
        }
    }

    #[cached(prefix = "owned-handle", ttl = 60, cache = &cache, skip(cache))]
    async fn with_owned_handle(cache: Cache, n: u32) -> u32 {
        drop(cache);
        n + 1
    }

    #[tokio::test]
    async fn a_handle_held_by_self_is_used() {
        let catalog = Arc::new(Catalog {
            cache: fixture(Backend::Memory, "shapes").await,
            lookups: AtomicUsize::new(0),
        });
        assert_eq!(catalog.price("ab-1").await, 400);
        assert_eq!(catalog.price("ab-1").await, 400);
        assert_eq!(catalog.clone().stock("ab-1".into()).await, 4);
        assert_eq!(catalog.clone().stock("ab-1".into()).await, 4);
        assert_eq!(catalog.lookups.load(Ordering::SeqCst), 2);
        for key in [key_for("price", &("ab-1",)), key_for("stock", &("ab-1",))] {
            assert!(catalog.cache.exists(&key.unwrap()).await.unwrap());
        }
        let mut catalog = Arc::into_inner(catalog).expect("the only reference");
        assert_eq!(catalog.restock("ab-1").await, 40);
        assert_eq!(catalog.restock("ab-1").await, 40);
        assert_eq!(*catalog.lookups.get_mut(), 3);

        assert_eq!(with_owned_handle(catalog.cache.clone(), 1).await, 2);
        let key = key_for("owned-handle", &(1,)).unwrap();
        assert!(catalog.cache.exists(&key).await.unwrap());
    }

    #[tokio::test]
    async fn generic_and_trait_methods_are_memoized() {
        let cache = fixture(Backend::Memory, "shapes").await;
        assert_eq!(generic(&cache, &[1u8, 2, 3], "l").await, 3);
        // The type parameter's name, then the `impl Trait` argument's.
        let key = key_for("generic", &([1u8, 2, 3], "l", ("u8", "&str"))).unwrap();
        assert_eq!(generic_key(&[1u8, 2, 3], "l").unwrap(), key);
        assert!(cache.exists(&key).await.unwrap());
        assert_eq!(Length.score(&cache, "four").await, 4);
        assert!(
            cache
                .exists(&key_for("score", &("four",)).unwrap())
                .await
                .unwrap()
        );
    }
}
