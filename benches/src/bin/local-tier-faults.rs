//! Fault run of two instances with local tiers on one Redis, under load
//! ([`tests::coherence`]): instance B writes a new version of a hot key
//! every 2 ms (a price feed), 8 tasks of instance A read it as a request
//! handler would (the local tier, else Redis, else the source of truth when
//! the cache fails), while A's connections go through a noxious proxy that
//! plays each network fault, then Redis is killed, restarted on the same
//! port, and paused with `CLIENT PAUSE`.
//!
//! A read is **stale** when it returns a version older than one Redis
//! acknowledged to B more than the bound (100 ms) before the read began;
//! every read is checked. A request **fails** when it gets no value at all
//! (the source of truth always answers, so only a panic or a hang would).
//! `LOCAL_TIER_FAULT_MS` sets how long each fault lasts (default 1000).
//! Bounded: about 20 s at the default.
//!
//! `./scripts/fault-run.sh local-tier` (or `cargo run --release -p benches
//! --bin local-tier-faults`).

use std::time::Duration;

use cache_core::Cache;
use tests::RedisServer;
use tests::coherence::{BOUND, Run, WRITE_EVERY};
use tests::proxy::{Fault, FaultProxy};

const READERS: usize = 8;

fn phase(run: &Run, a: &Cache, what: &str) {
    let stats = a.stats();
    let (reads, stale) = run.counts();
    println!(
        "| {:>5.1} s | {what} | {reads} | {} | {stale} | {} |",
        run.elapsed(),
        stats.local_hits,
        stats.local_tracking,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fault_ms: u64 = std::env::var("LOCAL_TIER_FAULT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port()).await;
    let a = benches::local_handle(&proxy.url(), Duration::from_secs(60)).await;
    let b = benches::local_handle(&redis.url(), Duration::from_secs(60)).await;
    let run = Run::start(&a, &b, "price:BTC", READERS);
    println!(
        "\nlocal tier fault run: B writes every {WRITE_EVERY:?}, {READERS} readers on A (through a fault proxy), stale bound {BOUND:?}"
    );
    println!("| at | phase | reads so far | local hits so far | stale so far | A tracking |");
    println!("| ---: | --- | ---: | ---: | ---: | --- |");
    let wait = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    wait(2000).await;
    phase(&run, &a, "steady");
    for fault in [
        Fault::Latency {
            latency: Duration::from_millis(60),
            jitter: Duration::from_millis(40),
        },
        Fault::Bandwidth { kib_per_s: 1 },
        Fault::Blackhole,
        Fault::Partition,
        Fault::ResetAfter { bytes: 300 },
        Fault::SlowClose {
            delay: Duration::from_millis(500),
        },
        Fault::Refuse,
    ] {
        proxy.apply(fault).await;
        wait(fault_ms).await;
        proxy.heal().await;
        phase(&run, &a, &format!("{fault:?} for {fault_ms} ms, healed"));
        wait(1000).await;
    }
    redis.kill();
    phase(&run, &a, "Redis killed");
    wait(1000).await;
    redis.restart();
    proxy
        .bind_upstream()
        .expect("the restarted server listens for the proxy");
    phase(&run, &a, "Redis restarted (empty)");
    wait(2500).await;
    phase(&run, &a, "steady");
    let paused = redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
    assert_eq!(paused.trim(), "OK", "CLIENT PAUSE");
    phase(&run, &a, "`CLIENT PAUSE 1500 ALL`");
    wait(3000).await;
    phase(&run, &a, "end");
    let findings = run.finish().await;
    let stats = a.stats();
    println!(
        "\n{findings}\nlocal hits {} ({:.0} %), invalidations received by A {}",
        stats.local_hits,
        100.0 * stats.local_hits as f64 / findings.reads.max(1) as f64,
        stats.local_invalidations,
    );
    assert!(stats.local_tracking, "A's tracking is back at the end");
    if findings.stale > 0 {
        std::process::exit(1);
    }
}
