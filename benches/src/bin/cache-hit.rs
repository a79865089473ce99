//! Hit path of a 384-float embedding: `Cache::get` (and `#[cached]` when
//! available) beside raw `redis` GET + `serde_json` decode, in the same run,
//! at 1 and 64 concurrent tasks, against a redis-server on loopback.
//!
//! `cargo run --release -p benches --bin cache-hit`

use benches::{ROUNDS, Series, report, throughput};
use cache_core::Cache;

const ITERATIONS: usize = 20_000;

/// The `cached` crate's Redis-backed async memoization (MessagePack values).
#[cfg(feature = "compare")]
mod cached_crate {
    use std::sync::OnceLock;

    pub static URL: OnceLock<String> = OnceLock::new();

    #[cached::macros::concurrent_cached(
        map_error = r##"|e| format!("{e:?}")"##,
        ty = "cached::AsyncRedisCache<String, Vec<f32>>",
        create = r##" {
            cached::AsyncRedisCache::builder("bench_cached_crate")
                .ttl(std::time::Duration::from_secs(600))
                .connection_string(URL.get().expect("url set"))
                .build()
                .await
                .expect("cached crate redis cache")
        } "##
    )]
    pub async fn embed(text: String) -> Result<Vec<f32>, String> {
        Ok((0..384)
            .map(|i| (i as f32 * 0.37 + text.len() as f32).sin())
            .collect())
    }
}

#[tokio::main]
async fn main() {
    let server = tests::RedisServer::start();
    let embedding: Vec<f32> = (0..384).map(|i| (i as f32 * 0.37).sin()).collect();
    let key = "bench:embedding";

    let client = redis::Client::open(server.url()).expect("redis url");
    let raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let cache = Cache::builder()
        .redis_url(&server.url())
        .expect("redis url")
        .build()
        .await
        .expect("cache");
    cache.set(key, &embedding, None).await.expect("seed");
    #[cfg(feature = "compare")]
    {
        let _ = cached_crate::URL.set(server.url());
        cached_crate::embed("hello".to_string())
            .await
            .expect("seed the cached crate");
    }

    for tasks in [1, 64] {
        let mut baseline = Series::new("raw redis GET + serde_json");
        let mut ours = Series::new("Cache::get");
        #[cfg(feature = "compare")]
        let mut other = Series::new("cached crate #[concurrent_cached(redis)] (MessagePack)");
        for _ in 0..ROUNDS {
            let conn = raw.clone();
            baseline.rounds.push(
                throughput(ITERATIONS, tasks, move || {
                    let mut conn = conn.clone();
                    async move {
                        let bytes: Vec<u8> = redis::cmd("GET")
                            .arg(key)
                            .query_async(&mut conn)
                            .await
                            .expect("GET");
                        let value: Vec<f32> = serde_json::from_slice(&bytes).expect("decode");
                        assert_eq!(value.len(), 384);
                    }
                })
                .await,
            );
            let cache = cache.clone();
            ours.rounds.push(
                throughput(ITERATIONS, tasks, move || {
                    let cache = cache.clone();
                    async move {
                        let value: Option<Vec<f32>> = cache.get(key).await.expect("get");
                        assert_eq!(value.map(|v| v.len()), Some(384));
                    }
                })
                .await,
            );
            #[cfg(feature = "compare")]
            other.rounds.push(
                throughput(ITERATIONS, tasks, || async {
                    let value = cached_crate::embed("hello".to_string())
                        .await
                        .expect("cached crate");
                    assert_eq!(value.len(), 384);
                })
                .await,
            );
        }
        let series = vec![baseline, ours];
        #[cfg(feature = "compare")]
        let series = {
            let mut series = series;
            series.push(other);
            series
        };
        report(
            &format!(
                "cache hit, 384 f32 JSON, {tasks} task(s), {ITERATIONS} calls per round, median of {ROUNDS}"
            ),
            &series,
        );
    }
}
