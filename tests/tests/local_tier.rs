//! The local tier (`CacheBuilder::local_tier`) and its coherence across
//! instances: two handles with local tiers and connections of their own
//! ("instances" A and B), a raw `redis-cli` as "another client", on a
//! standalone `redis-server`, the three-node cluster and the in-memory store
//! (which has no local tier: there B is A's `dedicated()` clone, sharing the
//! data, and every behaviour holds trivially).
//!
//! A change is waited for by polling every 2 ms, failing after 10 s; the
//! delay seen is printed (`--nocapture`), not asserted: the 100 ms
//! bound is a measured figure (BENCHMARKS.md), not a flaky assertion here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_core::{Cache, cached};
use tests::suite::{self, Backend};
use tests::{RedisCluster, RedisServer, shared_cluster, shared_server, unique_prefix};

/// How long a change may take to be seen before the test fails.
const CAP: Duration = Duration::from_secs(10);
/// Longer than any test: an entry that goes is invalidated, not expired.
const MAX_TTL: Duration = Duration::from_secs(300);

/// Two instances on one store, each with its own local tier, and the store.
struct Instances {
    a: Cache,
    b: Cache,
    backend: Backend,
    namespace: String,
}

impl Instances {
    /// `key` as stored (namespace in front), for raw clients.
    fn full(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    /// Runs a command through `redis-cli` (the other client) on the store.
    fn raw(&self, args: &[&str]) -> String {
        match self.backend {
            Backend::Standalone => shared_server().cli(args),
            Backend::Cluster => shared_cluster().cli(args),
            Backend::Memory => unreachable!("redis-only behaviour"),
        }
    }
}

fn local_builder(backend: Backend, namespace: &str) -> cache_core::CacheBuilder {
    backend
        .suite_builder()
        .namespace(namespace)
        .local_tier(1000, MAX_TTL)
}

async fn fixture(backend: Backend, test: &str) -> Instances {
    let namespace = unique_prefix(test);
    let a = suite::build(local_builder(backend, &namespace)).await;
    let b = match backend {
        Backend::Memory => a.dedicated(),
        Backend::Standalone | Backend::Cluster => {
            suite::build(local_builder(backend, &namespace)).await
        }
    };
    if backend != Backend::Memory {
        tracking_up(&a).await;
        tracking_up(&b).await;
    }
    Instances {
        a,
        b,
        backend,
        namespace,
    }
}

/// Waits until the handle's local tier is open (tracking up everywhere).
async fn tracking_up(cache: &Cache) {
    tests::eventually(CAP, "tracking up", || async {
        cache.stats().local_tracking
    })
    .await;
}

/// Reads `key` on `cache` until a read is served by the local tier (on
/// Redis; the in-memory store has none). A first read may not be kept: an
/// invalidation of the key (of the write just before, say) still on its way
/// when the read was sent makes the tier drop what it read.
async fn read_into_local_tier(cache: &Cache, backend: Backend, key: &str, expected: &str) {
    assert_eq!(
        cache.get::<String>(key).await.unwrap().as_deref(),
        Some(expected)
    );
    if backend == Backend::Memory {
        return;
    }
    tests::eventually(CAP, "a read served by the local tier", || async {
        let before = cache.stats().local_hits;
        assert_eq!(
            cache.get::<String>(key).await.unwrap().as_deref(),
            Some(expected)
        );
        cache.stats().local_hits == before + 1
    })
    .await;
}

/// Polls A until `key` reads as `expected`; prints the delay.
async fn a_sees(instances: &Instances, key: &str, expected: Option<&str>, change: &str) {
    let a = &instances.a;
    let delay = tests::eventually(CAP, change, || async {
        a.get::<String>(key).await.unwrap().as_deref() == expected
    })
    .await;
    eprintln!(
        "{:?} {change}: seen by the other instance after {delay:?}",
        instances.backend
    );
}

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture;
    a_set_by_another_instance_is_seen,
    a_delete_by_another_instance_is_seen,
    an_own_write_is_seen_at_once,
    invalidate_prefix_by_another_instance_is_seen,
    get_many_is_served_by_the_tier_and_sees_changes,
    a_cached_function_hits_the_local_tier_on_its_second_call,
    local_false_bypasses_the_tier,
    invalidate_memoized_by_another_instance_is_seen,
    a_zero_ttl_result_is_not_kept_locally,
    a_tagged_entry_in_the_tier_is_a_miss_once_its_tag_is_invalidated,
);

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    redis_only fixture: fixture;
    a_set_by_another_client_is_seen,
    a_del_by_another_client_is_seen,
    an_unlink_by_another_client_is_seen,
    an_expiry_in_redis_is_seen,
    stats_count_invalidations_and_report_tracking,
);

#[cached(prefix = "flag", ttl = 60, cache = cache, skip(cache, calls))]
async fn flag(cache: &Cache, calls: &AtomicUsize, name: &str) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    format!("{name}-on")
}

#[cached(prefix = "balance", ttl = 60, cache = cache, skip(cache, calls), local = false)]
async fn balance(cache: &Cache, calls: &AtomicUsize, account: u32) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    u64::from(account) * 100
}

#[cached(prefix = "zero-ttl", ttl = Duration::ZERO, cache = cache, skip(cache, calls))]
async fn fleeting(cache: &Cache, calls: &AtomicUsize, n: u32) -> u32 {
    calls.fetch_add(1, Ordering::SeqCst);
    n + 1
}

mod behaviour {
    use super::*;

    /// A zero TTL deletes the entry, here one that did not decode: the
    /// deletion's invalidation must not pass for a write to keep.
    pub async fn a_zero_ttl_result_is_not_kept_locally(i: Instances) {
        let key = cache_core::key_for("zero-ttl", &(1,)).unwrap();
        i.b.set(&key, "not a number", None).await.unwrap();
        let calls = AtomicUsize::new(0);
        assert_eq!(fleeting(&i.a, &calls, 1).await, 2);
        assert_eq!(fleeting(&i.a, &calls, 1).await, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "nothing was kept");
        assert!(!i.a.exists(&key).await.unwrap());
    }

    /// The tier keeps an enveloped entry's bytes; its tags are still checked
    /// at each read, so `invalidate_tag` (a write to another key) needs no
    /// invalidation of the entry itself.
    pub async fn a_tagged_entry_in_the_tier_is_a_miss_once_its_tag_is_invalidated(i: Instances) {
        i.b.set_tagged("doc", "one", &["team:1"], None)
            .await
            .unwrap();
        read_into_local_tier(&i.a, i.backend, "doc", "one").await;
        i.b.invalidate_tag("team:1").await.unwrap();
        assert_eq!(i.a.get::<String>("doc").await.unwrap(), None);
        i.a.set_tagged("doc", "two", &["team:1"], None)
            .await
            .unwrap();
        assert_eq!(
            i.a.get::<String>("doc").await.unwrap().as_deref(),
            Some("two")
        );
    }

    pub async fn a_set_by_another_instance_is_seen(i: Instances) {
        i.b.set("price", "100", None).await.unwrap();
        read_into_local_tier(&i.a, i.backend, "price", "100").await;
        i.b.set("price", "101", None).await.unwrap();
        a_sees(&i, "price", Some("101"), "set by instance B").await;
    }

    pub async fn a_delete_by_another_instance_is_seen(i: Instances) {
        i.b.set("price", "100", None).await.unwrap();
        read_into_local_tier(&i.a, i.backend, "price", "100").await;
        assert!(i.b.delete("price").await.unwrap());
        a_sees(&i, "price", None, "delete by instance B").await;
    }

    pub async fn an_own_write_is_seen_at_once(i: Instances) {
        i.a.set("price", "100", None).await.unwrap();
        read_into_local_tier(&i.a, i.backend, "price", "100").await;
        i.a.set("price", "101", None).await.unwrap();
        assert_eq!(
            i.a.get::<String>("price").await.unwrap().as_deref(),
            Some("101")
        );
        i.a.delete("price").await.unwrap();
        assert_eq!(i.a.get::<String>("price").await.unwrap(), None);
        i.a.set("price", "102", None).await.unwrap();
        i.a.get::<String>("price").await.unwrap();
        i.a.invalidate_prefix("pri").await.unwrap();
        assert_eq!(i.a.get::<String>("price").await.unwrap(), None);
    }

    pub async fn invalidate_prefix_by_another_instance_is_seen(i: Instances) {
        i.b.set("asset:1", "1", None).await.unwrap();
        read_into_local_tier(&i.a, i.backend, "asset:1", "1").await;
        assert_eq!(i.b.invalidate_prefix("asset:").await.unwrap(), 1);
        a_sees(&i, "asset:1", None, "invalidate_prefix by instance B").await;
    }

    pub async fn get_many_is_served_by_the_tier_and_sees_changes(i: Instances) {
        i.b.set("k1", "1", None).await.unwrap();
        i.b.set("k2", "2", None).await.unwrap();
        let both = i.a.get_many::<String>(&["k1", "k2", "k3"]).await.unwrap();
        assert_eq!(both, [Some("1".into()), Some("2".into()), None]);
        // Until both are kept (a read that raced with the invalidation of
        // B's write is not kept; see read_into_local_tier).
        tests::eventually(CAP, "k1 and k2 from the tier", || async {
            let before = i.a.stats().local_hits;
            let again = i.a.get_many::<String>(&["k1", "k2", "k3"]).await.unwrap();
            assert_eq!(again, both);
            i.backend == Backend::Memory || i.a.stats().local_hits == before + 2
        })
        .await;
        i.b.set("k2", "22", None).await.unwrap();
        tests::eventually(CAP, "get_many sees k2 set by B", || async {
            i.a.get_many::<String>(&["k1", "k2"]).await.unwrap()
                == [Some("1".to_string()), Some("22".to_string())]
        })
        .await;
    }

    pub async fn a_cached_function_hits_the_local_tier_on_its_second_call(i: Instances) {
        let calls = AtomicUsize::new(0);
        assert_eq!(flag(&i.a, &calls, "dark-mode").await, "dark-mode-on");
        let before = i.a.stats();
        assert_eq!(flag(&i.a, &calls, "dark-mode").await, "dark-mode-on");
        let after = i.a.stats();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(after.hits, before.hits + 1);
        if i.backend != Backend::Memory {
            assert_eq!(
                after.local_hits,
                before.local_hits + 1,
                "the value the first call stored is served locally"
            );
        }
    }

    pub async fn local_false_bypasses_the_tier(i: Instances) {
        let calls = AtomicUsize::new(0);
        assert_eq!(balance(&i.a, &calls, 7).await, 700);
        let before = i.a.stats();
        assert_eq!(balance(&i.a, &calls, 7).await, 700);
        assert_eq!(balance(&i.a, &calls, 7).await, 700);
        let after = i.a.stats();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "still memoized");
        assert_eq!(after.hits, before.hits + 2);
        assert_eq!(after.local_hits, before.local_hits, "never from the tier");
        assert_eq!(after.local_misses, before.local_misses, "never looked up");
    }

    pub async fn invalidate_memoized_by_another_instance_is_seen(i: Instances) {
        let calls = AtomicUsize::new(0);
        flag(&i.a, &calls, "beta").await;
        flag(&i.a, &calls, "beta").await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(
            cache_core::invalidate_memoized(&i.b, "flag", &("beta",))
                .await
                .unwrap()
        );
        tests::eventually(CAP, "A no longer serves the entry B dropped", async || {
            flag(&i.a, &calls, "beta").await;
            calls.load(Ordering::SeqCst) > 1
        })
        .await;
    }
}

mod redis_behaviour {
    use super::*;

    pub async fn a_set_by_another_client_is_seen(i: Instances) {
        i.raw(&["SET", &i.full("price"), "\"100\""]);
        read_into_local_tier(&i.a, i.backend, "price", "100").await;
        i.raw(&["SET", &i.full("price"), "\"101\""]);
        a_sees(&i, "price", Some("101"), "SET by redis-cli").await;
    }

    pub async fn a_del_by_another_client_is_seen(i: Instances) {
        i.raw(&["SET", &i.full("price"), "\"100\""]);
        read_into_local_tier(&i.a, i.backend, "price", "100").await;
        i.raw(&["DEL", &i.full("price")]);
        a_sees(&i, "price", None, "DEL by redis-cli").await;
    }

    pub async fn an_unlink_by_another_client_is_seen(i: Instances) {
        i.raw(&["SET", &i.full("price"), "\"100\""]);
        read_into_local_tier(&i.a, i.backend, "price", "100").await;
        i.raw(&["UNLINK", &i.full("price")]);
        a_sees(&i, "price", None, "UNLINK by redis-cli").await;
    }

    /// The key expires in Redis while A holds it (its max TTL is minutes):
    /// Redis's invalidation of the expired key drops it.
    pub async fn an_expiry_in_redis_is_seen(i: Instances) {
        i.raw(&["SET", &i.full("price"), "\"100\"", "PX", "1500"]);
        read_into_local_tier(&i.a, i.backend, "price", "100").await;
        a_sees(
            &i,
            "price",
            None,
            "expiry in Redis (PX 1500 ms, from the SET)",
        )
        .await;
    }

    pub async fn stats_count_invalidations_and_report_tracking(i: Instances) {
        assert!(i.a.stats().local_tracking);
        let before = i.a.stats().local_invalidations;
        i.b.set("k", "1", None).await.unwrap();
        tests::eventually(CAP, "A counts B's write", || async {
            i.a.stats().local_invalidations > before
        })
        .await;
        let without = suite::build(i.backend.suite_builder()).await;
        assert!(!without.stats().local_tracking, "no local tier");
    }
}

/// A server of the test's own, A and B on it, and the key written.
async fn own_server_instances() -> (RedisServer, Cache, Cache) {
    instances_on(RedisServer::start()).await
}

/// A and B with local tiers on `server`, their tracking up.
async fn instances_on(server: RedisServer) -> (RedisServer, Cache, Cache) {
    let builder = || {
        suite::redis(&server.url())
            .timeout(suite::TIMEOUT)
            .local_tier(1000, MAX_TTL)
    };
    let a = suite::build(builder()).await;
    let b = suite::build(builder()).await;
    tracking_up(&a).await;
    tracking_up(&b).await;
    (server, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushdb_empties_the_local_tier() {
    let (server, a, b) = own_server_instances().await;
    b.set("price", "100", None).await.unwrap();
    read_into_local_tier(&a, Backend::Standalone, "price", "100").await;
    assert_eq!(server.cli(&["FLUSHDB"]).trim(), "OK");
    tests::eventually(CAP, "FLUSHDB seen", || async {
        a.get::<String>("price").await.unwrap().is_none()
    })
    .await;
}

/// `SWAPDB` moves another database's keys under the tracking connection
/// and, on Redis 7.0, sends no invalidation: the tier notices the change of
/// the database's identity marker at its next heartbeat and empties itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapdb_empties_the_local_tier() {
    let server = RedisServer::start();
    // A alone has a local tier, so the database-identity marker in each
    // database is A's: its presence says A's heartbeat saw the change (a
    // tier emptied for another reason, such as a heartbeat lost under load,
    // would let the read below pass while A still takes the swapped-back
    // database for the one it knew).
    let a = suite::build(
        suite::redis(&server.url())
            .timeout(suite::TIMEOUT)
            .local_tier(1000, MAX_TTL),
    )
    .await;
    tracking_up(&a).await;
    let b = suite::build(suite::redis(&server.url()).timeout(suite::TIMEOUT)).await;
    let marker = "__local:db-identity";
    // Database 1 first: tracking is not per database, so a write there
    // after the read below would invalidate it by its name alone.
    assert_eq!(
        server.cli(&["-n", "1", "SET", "price", "\"200\""]).trim(),
        "OK"
    );
    b.set("price", "100", None).await.unwrap();
    read_into_local_tier(&a, Backend::Standalone, "price", "100").await;
    assert_eq!(server.cli(&["SWAPDB", "0", "1"]).trim(), "OK");
    let seen = tests::eventually(CAP, "SWAPDB seen", || async {
        server.cli(&["EXISTS", marker]).trim() == "1"
            && a.get::<String>("price").await.unwrap().as_deref() == Some("200")
    })
    .await;
    eprintln!("SWAPDB seen after {seen:?}");
    // The tier stays open, and works on the database now there.
    assert!(a.stats().local_tracking);
    read_into_local_tier(&a, Backend::Standalone, "price", "200").await;
    // Swapped back: noticed as well, though both databases now have a marker.
    assert_eq!(server.cli(&["SWAPDB", "0", "1"]).trim(), "OK");
    tests::eventually(CAP, "the second SWAPDB seen", || async {
        a.get::<String>("price").await.unwrap().as_deref() == Some("100")
    })
    .await;
}

#[cached(prefix = "brief", ttl = BRIEF, cache = cache, skip(cache, calls))]
async fn brief(cache: &Cache, calls: &AtomicUsize, n: u32) -> u32 {
    calls.fetch_add(1, Ordering::SeqCst);
    n + 1
}

/// The life in Redis of the keys of `an_expired_key_is_not_served_locally`.
const BRIEF: Duration = Duration::from_secs(2);

/// Keys with a TTL, written by another client (and, for `#[cached]`, by B),
/// are read by A into its local tier; Redis's active expiry is off, so the
/// keys expire without being deleted and no invalidation comes. Once the
/// TTL has passed, A's `get`, `get_many` and `#[cached]` call no longer
/// serve the local copies: a fill from a read lives no longer than the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_not_served_locally() {
    let (server, a, b) = instances_on(RedisServer::start_with(&[
        "--enable-debug-command",
        "local",
    ]))
    .await;
    assert_eq!(
        server.cli(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]).trim(),
        "OK"
    );
    let px = BRIEF.as_millis().to_string();
    // Before the writes: every key expires after this plus BRIEF.
    let written = Instant::now();
    server.cli(&["SET", "one", "\"1\"", "PX", &px]);
    server.cli(&["SET", "two", "\"2\"", "PX", &px]);
    let calls = AtomicUsize::new(0);
    assert_eq!(brief(&b, &calls, 1).await, 2);

    read_into_local_tier(&a, Backend::Standalone, "one", "1").await;
    tests::eventually(CAP, "get_many served by the local tier", || async {
        let before = a.stats().local_hits;
        let read = a.get_many::<String>(&["two"]).await.unwrap();
        assert_eq!(read, vec![Some("2".to_string())]);
        a.stats().local_hits == before + 1
    })
    .await;
    tests::eventually(
        CAP,
        "the memoized call served by the local tier",
        || async {
            let before = a.stats().local_hits;
            assert_eq!(brief(&a, &calls, 1).await, 2);
            a.stats().local_hits == before + 1
        },
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "A's calls were hits");

    // The clock, polled: past every key's expiry, with a margin for the
    // server's clock against this one.
    let expired = written + BRIEF + Duration::from_millis(250);
    tests::eventually(CAP, "the keys' TTL passed", || async {
        Instant::now() > expired
    })
    .await;
    assert_eq!(
        server.cli(&["DBSIZE"]).trim(),
        "4",
        "the three keys (expired, not deleted: no invalidation was sent) and the tier's identity marker"
    );
    assert_eq!(a.get::<String>("one").await.unwrap(), None);
    assert_eq!(a.get_many::<String>(&["two"]).await.unwrap(), vec![None]);
    assert_eq!(brief(&a, &calls, 1).await, 2);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "run again: the entry expired"
    );
}

/// Redis killed and started again, empty, on the same port; another client
/// writes a new value at once. A never serves what it held before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_from_before_a_redis_restart_is_served_after_it() {
    let (mut server, a, _b) = own_server_instances().await;
    a.set("price", "100", None).await.unwrap();
    // Held locally before the kill.
    read_into_local_tier(&a, Backend::Standalone, "price", "100").await;
    server.kill();
    server.restart();
    server.cli(&["SET", "price", "\"200\""]);
    tests::eventually(CAP, "the new value is read", || async {
        let read = a.get::<String>("price").await;
        assert_ne!(
            read.as_ref().ok().cloned().flatten().as_deref(),
            Some("100"),
            "stale"
        );
        read.ok().flatten().as_deref() == Some("200")
    })
    .await;
    tracking_up(&a).await;
    // The tier works again.
    read_into_local_tier(&a, Backend::Standalone, "price", "200").await;
}

/// Calls of each command the server counted, but the tracking connection's
/// heartbeat (PING, and the GET of its database-identity marker: the data
/// path reads with GETRANGE), connection set-up and what the test itself
/// sends (INFO, CONFIG).
fn data_commands(server: &RedisServer) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]);
    assert!(
        info.contains("# Commandstats"),
        "no INFO commandstats: {info}"
    );
    info.lines()
        .filter(|line| line.starts_with("cmdstat_"))
        .filter(|line| {
            // Connection set-up too (HELLO, CLIENT ...), should a
            // connection be re-made meanwhile: not reads or writes.
            ![
                "cmdstat_ping:",
                "cmdstat_get:",
                "cmdstat_info:",
                "cmdstat_config|",
                "cmdstat_hello:",
                "cmdstat_client|",
            ]
            .iter()
            .any(|skip| line.starts_with(skip))
        })
        .map(|line| {
            line.split("calls=")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("unreadable commandstats line: {line}"))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_second_call_makes_no_redis_call() {
    let (server, a, _b) = own_server_instances().await;
    let calls = AtomicUsize::new(0);
    flag(&a, &calls, "dark-mode").await;
    server.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(flag(&a, &calls, "dark-mode").await, "dark-mode-on");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        data_commands(&server),
        0,
        "{}",
        server.cli(&["INFO", "commandstats"])
    );
    // Without the tier the same call reads Redis: the count above is not blind.
    balance(&a, &calls, 1).await;
    server.cli(&["CONFIG", "RESETSTAT"]);
    balance(&a, &calls, 1).await;
    assert_eq!(data_commands(&server), 1, "one GETRANGE");
}

/// FLUSHALL on every primary of a cluster of the test's own: both
/// instances' tiers, tracking every primary, drop what they held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_on_a_cluster_empties_every_instance_tier() {
    let cluster = RedisCluster::start();
    let builder = || {
        suite::cluster(cluster.urls())
            .timeout(suite::TIMEOUT)
            .local_tier(1000, MAX_TTL)
    };
    let a = suite::build(builder()).await;
    let b = suite::build(builder()).await;
    tracking_up(&a).await;
    tracking_up(&b).await;
    // Keys on every primary (16 keys spread over the slots).
    let keys: Vec<String> = (0..16).map(|n| format!("asset:{n}")).collect();
    for key in &keys {
        b.set(key, "1", None).await.unwrap();
    }
    for key in &keys {
        read_into_local_tier(&a, Backend::Cluster, key, "1").await;
        read_into_local_tier(&b, Backend::Cluster, key, "1").await;
    }
    for primary in cluster.primaries() {
        assert_eq!(RedisServer::cli_on(primary, &["FLUSHALL"]).trim(), "OK");
    }
    for instance in [&a, &b] {
        tests::eventually(CAP, "FLUSHALL seen on every primary", || async {
            instance
                .get_many::<String>(&keys.iter().map(String::as_str).collect::<Vec<_>>())
                .await
                .unwrap()
                .iter()
                .all(Option::is_none)
        })
        .await;
    }
}

/// `local_tier_serve_stale(true)`: with Redis down, a read that fails is
/// answered from the tier (an entry younger than max_ttl); off by default it
/// is an error. Once Redis and tracking are back, nothing from before is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entries_are_served_on_failure_only_when_opted_in() {
    let mut server = RedisServer::start();
    let builder = |stale: bool| {
        suite::redis(&server.url())
            .timeout(Duration::from_millis(300))
            .local_tier(1000, MAX_TTL)
            .local_tier_serve_stale(stale)
    };
    let strict = suite::build(builder(false)).await;
    let lenient = suite::build(builder(true)).await;
    tracking_up(&strict).await;
    tracking_up(&lenient).await;
    strict.set("price", "100", None).await.unwrap();
    let calls = AtomicUsize::new(0);
    for cache in [&strict, &lenient] {
        read_into_local_tier(cache, Backend::Standalone, "price", "100").await;
        flag(cache, &calls, "beta").await;
    }
    tests::eventually(CAP, "the flag held locally", || async {
        let hits = lenient.stats().local_hits;
        flag(&lenient, &calls, "beta").await;
        lenient.stats().local_hits > hits
    })
    .await;
    server.kill();
    for cache in [&strict, &lenient] {
        tests::eventually(CAP, "tracking down", || async {
            !cache.stats().local_tracking
        })
        .await;
    }
    assert!(
        strict.get::<String>("price").await.is_err(),
        "off by default"
    );
    assert_eq!(
        lenient.get::<String>("price").await.unwrap().as_deref(),
        Some("100"),
        "opted in: the entry kept"
    );
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(flag(&lenient, &calls, "beta").await, "beta-on");
    assert_eq!(calls.load(Ordering::SeqCst), before, "served, not run");
    server.restart();
    server.cli(&["SET", "price", "\"200\""]);
    tests::eventually(CAP, "the new value is read", || async {
        let read = lenient.get::<String>("price").await;
        read.ok().flatten().as_deref() == Some("200")
    })
    .await;
    tracking_up(&lenient).await;
    assert_eq!(
        lenient.get::<String>("price").await.unwrap().as_deref(),
        Some("200")
    );
}
