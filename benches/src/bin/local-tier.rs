//! The local tier (`CacheBuilder::local_tier`), each variant beside its
//! baselines in the same run, against a redis-server on loopback:
//!
//! - **hit**: `#[cached]` served by the local tier (JSON and MessagePack
//!   entries of a 384-float embedding) and `Cache::get_or_set` served by it
//!   vs a plain `moka` `get` + clone of the same `Vec<f32>` (the floor), the
//!   same `#[cached]` without a local tier (a Redis round trip) and, with
//!   `--features compare`, the `cached` crate's Redis-backed
//!   `#[concurrent_cached]`. One task, so that the figures are per-call costs.
//! - **invalidation delay**: two handles with local tiers (two instances);
//!   B writes a new value, A is polled until it no longer serves the old one.
//!   The delay runs from B's write being acknowledged; p50 / p99 over
//!   the samples.
//! - **price of broadcasting** (`CLIENT TRACKING ... BCAST PREFIX`): raw SETs
//!   (64 tasks) to keys under the prefix 4 instances track vs keys outside
//!   it, same server, same run: what each write under a tracked prefix costs
//!   Redis and the writer.
//!
//! `cargo run --release -p benches --features compare --bin local-tier`
//! (`BENCH_ONLY=hit`: the hit table alone)

use std::time::{Duration, Instant};

use benches::embeddings::{embed_json, embed_msgpack, embedding, text_of};
use benches::{ROUNDS, Series, report, throughput};
use cache_core::{Cache, EntryOptions};

const HIT_ITERATIONS: usize = 200_000;
const REDIS_ITERATIONS: usize = 5_000;
const DELAY_SAMPLES: usize = 1_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = tests::RedisServer::start();
    let (_raw, remote) = benches::raw_and_cache(&server).await;
    let local = benches::local_handle(&server.url(), Duration::from_secs(600)).await;
    #[cfg(feature = "compare")]
    let _ = benches::cached_crate::URL.set(server.url());

    let text: &'static str = text_of(0).leak();
    let floor = moka::sync::Cache::<String, Vec<f32>>::new(10_000);
    floor.insert(text.to_string(), embedding(text));
    // Seed: the entries are stored (and kept by the local tier).
    embed_json(&local, text).await;
    embed_msgpack(&local, text).await;
    #[cfg(feature = "compare")]
    benches::cached_crate::embed(text.to_string())
        .await
        .expect("seed");
    let options: &'static EntryOptions =
        Box::leak(Box::new(EntryOptions::ttl(Duration::from_secs(600))));
    let function_key: &'static str = format!("bench-fn:{text}").leak();
    let compute = move || async move { embedding(text) };
    local.get_or_set(function_key, options, compute).await;
    let before = local.stats().local_hits;
    embed_json(&local, text).await;
    local.get_or_set(function_key, options, compute).await;
    assert_eq!(local.stats().local_hits, before + 2, "served locally");

    let mut moka_floor = Series::new("moka get + clone (floor)");
    let mut local_json = Series::new("#[cached] local hit, JSON");
    let mut local_pack = Series::new("#[cached(codec = \"msgpack\")] local hit");
    let mut local_function = Series::new("get_or_set local hit, JSON");
    let mut remote_json = Series::new("#[cached] Redis hit (no local tier), JSON");
    #[cfg(feature = "compare")]
    let mut other = Series::new("cached crate #[concurrent_cached(redis)] Redis hit");
    for _ in 0..ROUNDS {
        let f = floor.clone();
        moka_floor.rounds.push(
            throughput(HIT_ITERATIONS, 1, move |_| {
                let f = f.clone();
                async move {
                    let value = f.get(text).expect("seeded");
                    assert_eq!(std::hint::black_box(value).len(), 384);
                }
            })
            .await,
        );
        let c = local.clone();
        local_json.rounds.push(
            throughput(HIT_ITERATIONS, 1, move |_| {
                let c = c.clone();
                async move { assert_eq!(embed_json(&c, text).await.len(), 384) }
            })
            .await,
        );
        let c = local.clone();
        local_pack.rounds.push(
            throughput(HIT_ITERATIONS, 1, move |_| {
                let c = c.clone();
                async move { assert_eq!(embed_msgpack(&c, text).await.len(), 384) }
            })
            .await,
        );
        let c = local.clone();
        local_function.rounds.push(
            throughput(HIT_ITERATIONS, 1, move |_| {
                let c = c.clone();
                async move {
                    let value = c.get_or_set(function_key, options, compute).await;
                    assert_eq!(value.len(), 384);
                }
            })
            .await,
        );
        let c = remote.clone();
        remote_json.rounds.push(
            throughput(REDIS_ITERATIONS, 1, move |_| {
                let c = c.clone();
                async move { assert_eq!(embed_json(&c, text).await.len(), 384) }
            })
            .await,
        );
        #[cfg(feature = "compare")]
        other.rounds.push(
            throughput(REDIS_ITERATIONS, 1, move |_| async move {
                let value = benches::cached_crate::embed(text.to_string())
                    .await
                    .expect("cached crate");
                assert_eq!(value.len(), 384);
            })
            .await,
        );
    }
    let stats = local.stats();
    assert!(
        stats.local_hits > (3 * ROUNDS * HIT_ITERATIONS) as u64,
        "{stats:?}"
    );
    let title = format!("#[cached] hit of a 384-f32 embedding, 1 task, median of {ROUNDS} rounds");
    #[cfg(not(feature = "compare"))]
    report(
        &title,
        &[
            moka_floor,
            local_json,
            local_pack,
            local_function,
            remote_json,
        ],
    );
    #[cfg(feature = "compare")]
    {
        report(
            &title,
            &[
                moka_floor,
                local_json,
                local_pack,
                local_function,
                remote_json,
                other,
            ],
        );
    }

    // BENCH_ONLY=hit: the hit table alone.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("hit") {
        return;
    }
    invalidation_delay(&server).await;
    broadcast_price(&server).await;
}

/// Raw SETs under a prefix 4 instances track, and outside it.
async fn broadcast_price(server: &tests::RedisServer) {
    let mut instances = Vec::new();
    for _ in 0..4 {
        let cache = Cache::builder()
            .redis_url(&server.url())
            .expect("redis url")
            .namespace("tracked")
            .local_tier(10_000, Duration::from_secs(600))
            .build()
            .await
            .expect("cache");
        instances.push(cache);
    }
    for cache in &instances {
        let started = Instant::now();
        while !cache.stats().local_tracking {
            assert!(started.elapsed() < Duration::from_secs(10), "tracking up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (raw, _) = benches::raw_and_cache(server).await;
    let mut untracked = Series::new("SET outside the tracked prefix (baseline)");
    let mut tracked = Series::new("SET under a prefix 4 instances track (BCAST)");
    for _ in 0..ROUNDS {
        for (series, prefix) in [(&mut untracked, "other"), (&mut tracked, "tracked")] {
            let conn = raw.clone();
            series.rounds.push(
                throughput(50_000, 64, move |task| {
                    let mut conn = conn.clone();
                    async move {
                        let () = redis::cmd("SET")
                            .arg(format!("{prefix}:k{task}"))
                            .arg(task)
                            .query_async(&mut conn)
                            .await
                            .expect("SET");
                    }
                })
                .await,
            );
        }
    }
    report(
        &format!("raw SET, 64 tasks, 50 000 per round, median of {ROUNDS} rounds"),
        &[untracked, tracked],
    );
    let invalidations: u64 = instances
        .iter()
        .map(|c| c.stats().local_invalidations)
        .sum();
    println!("invalidations received by the 4 instances: {invalidations}");
}

/// B writes, A is polled until it no longer serves the old value.
async fn invalidation_delay(server: &tests::RedisServer) {
    let a = benches::local_handle(&server.url(), Duration::from_secs(600)).await;
    let b = benches::local_handle(&server.url(), Duration::from_secs(600)).await;
    let mut delays = Vec::with_capacity(DELAY_SAMPLES);
    let mut polls = 0u64;
    for n in 0..DELAY_SAMPLES as u64 {
        b.set("price", &n, None).await.expect("set");
        // A holds the value locally before B changes it.
        loop {
            let hits = a.stats().local_hits;
            let read: Option<u64> = a.get("price").await.expect("get");
            if read == Some(n) && a.stats().local_hits > hits {
                break;
            }
        }
        b.set("price", &(n + 1_000_000), None).await.expect("set");
        let acknowledged = Instant::now();
        loop {
            polls += 1;
            let read: Option<u64> = a.get("price").await.expect("get");
            if read != Some(n) {
                break;
            }
            tokio::task::yield_now().await;
        }
        delays.push(acknowledged.elapsed());
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    println!(
        "\ninvalidation delay, write acknowledged to B -> A no longer serves the old value, {DELAY_SAMPLES} samples (A polled {polls} times)"
    );
    println!("| p50 | p90 | p99 | max |");
    println!("| ---: | ---: | ---: | ---: |");
    println!(
        "| {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
        at(0.5).as_secs_f64() * 1e6,
        at(0.9).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(1.0).as_secs_f64() * 1e6
    );
}
