//! Fault run of two instances with local tiers on one Redis, under load:
//! instance B writes a new version of a hot key every 2 ms (a price feed),
//! 8 tasks of instance A read it as a request handler would (the local tier,
//! else Redis, else the source of truth when the cache fails), while Redis
//! is killed, restarted on the same port, then paused with `CLIENT PAUSE`.
//!
//! A read is **stale** when it returns a version older than one Redis
//! acknowledged to B more than the bound (100 ms) before the read began;
//! every read is checked. A request **fails** when it gets no value at all
//! (the source of truth always answers, so only a panic or a hang would).
//! Bounded: about 10 s.
//!
//! `./scripts/fault-run.sh local-tier` (or `cargo run --release -p benches
//! --bin local-tier-faults`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::Cache;
use tests::RedisServer;

const READERS: usize = 8;
const BOUND: Duration = Duration::from_millis(100);
const WRITE_EVERY: Duration = Duration::from_millis(2);
const KEY: &str = "price:BTC";

/// What every task shares.
struct Shared {
    /// The source of truth: the newest version written.
    source: AtomicU64,
    /// Versions Redis acknowledged to B, with when, in order.
    acknowledged: Mutex<Vec<(u64, Instant)>>,
    stop: AtomicBool,
    reads: AtomicU64,
    from_source: AtomicU64,
    stale: AtomicU64,
    failed: AtomicU64,
    worst_lag: Mutex<Duration>,
}

impl Shared {
    /// The newest version acknowledged before `instant`, if any.
    fn acknowledged_before(&self, instant: Instant) -> Option<u64> {
        let acknowledged = self.acknowledged.lock().expect("not poisoned");
        let index = acknowledged.partition_point(|(_, at)| *at < instant);
        index.checked_sub(1).map(|i| acknowledged[i].0)
    }

    /// When version `version + 1` was acknowledged: how old the read was.
    fn lag_of(&self, version: u64, read_at: Instant) -> Duration {
        let acknowledged = self.acknowledged.lock().expect("not poisoned");
        acknowledged
            .iter()
            .find(|(v, _)| *v > version)
            .map_or(Duration::ZERO, |(_, at)| {
                read_at.saturating_duration_since(*at)
            })
    }
}

async fn writer(b: Cache, shared: Arc<Shared>) {
    let mut version = 0;
    let mut tick = tokio::time::interval(WRITE_EVERY);
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        version += 1;
        shared.source.store(version, Ordering::SeqCst);
        if b.set(KEY, &version, None).await.is_ok() {
            let at = Instant::now();
            shared
                .acknowledged
                .lock()
                .expect("not poisoned")
                .push((version, at));
        }
    }
}

async fn reader(a: Cache, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let served = match a.get::<u64>(KEY).await {
            Ok(Some(version)) => Some(version),
            // A miss or a failing cache: the request reads the source.
            Ok(None) | Err(_) => {
                shared.from_source.fetch_add(1, Ordering::Relaxed);
                Some(shared.source.load(Ordering::SeqCst))
            }
        };
        shared.reads.fetch_add(1, Ordering::Relaxed);
        let Some(version) = served else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Some(newest) = began
            .checked_sub(BOUND)
            .and_then(|bound| shared.acknowledged_before(bound))
            && version < newest
        {
            shared.stale.fetch_add(1, Ordering::Relaxed);
            let lag = shared.lag_of(version, began);
            let mut worst = shared.worst_lag.lock().expect("not poisoned");
            *worst = (*worst).max(lag);
        }
        tokio::task::yield_now().await;
    }
}

fn phase(started: Instant, shared: &Shared, a: &Cache, what: &str) {
    let stats = a.stats();
    println!(
        "| {:>5.1} s | {what} | {} | {} | {} | {} |",
        started.elapsed().as_secs_f64(),
        shared.reads.load(Ordering::Relaxed),
        stats.local_hits,
        shared.stale.load(Ordering::Relaxed),
        stats.local_tracking,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut redis = RedisServer::start();
    let a = benches::local_handle(&redis.url(), Duration::from_secs(60)).await;
    let b = benches::local_handle(&redis.url(), Duration::from_secs(60)).await;
    let shared = Arc::new(Shared {
        source: AtomicU64::new(0),
        acknowledged: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        reads: AtomicU64::new(0),
        from_source: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        worst_lag: Mutex::new(Duration::ZERO),
    });
    let mut tasks = vec![tokio::spawn(writer(b.clone(), shared.clone()))];
    for _ in 0..READERS {
        tasks.push(tokio::spawn(reader(a.clone(), shared.clone())));
    }
    let started = Instant::now();
    println!(
        "\nlocal tier fault run: B writes every {WRITE_EVERY:?}, {READERS} readers on A, stale bound {BOUND:?}"
    );
    println!("| at | phase | reads so far | local hits so far | stale so far | A tracking |");
    println!("| ---: | --- | ---: | ---: | ---: | --- |");
    let wait = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    wait(2000).await;
    phase(started, &shared, &a, "steady");
    redis.kill();
    phase(started, &shared, &a, "Redis killed");
    wait(1000).await;
    redis.restart();
    phase(started, &shared, &a, "Redis restarted (empty)");
    wait(2500).await;
    phase(started, &shared, &a, "steady");
    let paused = redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
    assert_eq!(paused.trim(), "OK", "CLIENT PAUSE");
    phase(started, &shared, &a, "`CLIENT PAUSE 1500 ALL`");
    wait(3000).await;
    phase(started, &shared, &a, "end");
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("task");
    }
    let stats = a.stats();
    let reads = shared.reads.load(Ordering::Relaxed);
    let stale = shared.stale.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    println!(
        "\nreads {reads}, local hits {} ({:.0} %), from the source of truth {}, versions acknowledged {}, \
         invalidations received by A {}\nstale reads (older than a version acknowledged > {BOUND:?} before): {stale} (worst lag {:?}); failed requests: {failed}",
        stats.local_hits,
        100.0 * stats.local_hits as f64 / reads.max(1) as f64,
        shared.from_source.load(Ordering::Relaxed),
        shared.acknowledged.lock().expect("not poisoned").len(),
        stats.local_invalidations,
        *shared.worst_lag.lock().expect("not poisoned"),
    );
    assert!(stats.local_tracking, "A's tracking is back at the end");
    if stale > 0 || failed > 0 {
        std::process::exit(1);
    }
}
