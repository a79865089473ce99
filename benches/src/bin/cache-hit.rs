//! Hit and miss paths of a 384-float embedding, each variant beside its
//! baseline in the same run, at 1 and 64 concurrent tasks, against a
//! redis-server on loopback:
//!
//! - JSON: raw `redis` GET + `serde_json` (baseline), `Cache::get`, `#[cached]`;
//! - MessagePack: raw GET + `rmp_serde` (baseline), `#[cached(codec = "msgpack")]`;
//! - with `--features compare`: the `cached` crate's Redis-backed
//!   `#[concurrent_cached]` (MessagePack).
//!
//! The raw baselines GET the very entries the macros read (same keys, same
//! bytes), and every call's arguments are made before the rounds, so a round
//! measures the calls alone.
//!
//! Hits: each task reads its own key, so single-flight never folds calls
//! together: every call is one round trip, as in the baselines. Then one hot
//! key read by all 64 tasks, where concurrent `#[cached]` calls share a read. Misses: every
//! call has arguments never seen before: a GET that finds nothing, the
//! computation, and a SET with the TTL (raw baseline: GET + encode + SET EX).
//!
//! - stored-value options (`BENCH_ONLY=stored`): hits with the envelope
//!   (`stale`), `compress`, `encrypt` and `tags`, beside plain `#[cached]`,
//!   with the bytes each entry takes in Redis.
//!
//! `cargo run --release -p benches --features compare --bin cache-hit`

use benches::embeddings::{embed_json, embed_msgpack, embedding, msgpack_value, text_of};
use benches::{ROUNDS, Series, report, throughput};
use cache_core::Cache;
use redis::aio::MultiplexedConnection;

/// Calls per round of hits: about half a second or more each, so that a round
/// outlasts the machine's short hiccups.
fn iterations(tasks: usize) -> usize {
    if tasks == 1 { 5_000 } else { 100_000 }
}
/// Fewer calls for misses: each one leaves a 4 kB entry behind.
const MISS_ITERATIONS: usize = 4_000;
const TASKS: [usize; 2] = [1, 64];

/// Arguments no call has used before: a miss.
fn fresh_text() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("unseen document {n}")
}

async fn raw_get(conn: &MultiplexedConnection, key: &str) -> Vec<u8> {
    let mut conn = conn.clone();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

#[tokio::main]
async fn main() {
    let server = tests::RedisServer::start();
    let (raw, cache) = benches::raw_and_cache(&server).await;
    #[cfg(feature = "compare")]
    let _ = benches::cached_crate::URL.set(server.url());

    // Seed every entry by calling the macros once.
    for task in 0..64 {
        let text = text_of(task);
        embed_json(&cache, &text).await;
        embed_msgpack(&cache, &text).await;
        #[cfg(feature = "compare")]
        benches::cached_crate::embed(text)
            .await
            .expect("seed the cached crate");
    }
    // The raw baselines GET the very entries the macros read (same keys, same
    // bytes, so the same work for redis-server), and every variant gets its
    // arguments made beforehand: a round measures the calls alone.
    let texts = made_once((0..64).map(text_of).collect());
    let json_keys = made_once(
        (0..64)
            .map(|task| cache_core::key_for("bench-json", &(text_of(task),)).expect("key"))
            .collect(),
    );
    let pack_keys = made_once(
        (0..64)
            .map(|task| cache_core::key_for("bench-msgpack", &(text_of(task),)).expect("key"))
            .collect(),
    );

    for tasks in TASKS {
        if !selected(&format!("hit-{tasks}")) {
            continue;
        }
        let mut json_raw = Series::new("raw GET + serde_json (baseline)");
        let mut json_get = Series::new("Cache::get::<Vec<f32>>");
        let mut json_macro = Series::new("#[cached] JSON");
        let mut pack_raw = Series::new("raw GET + rmp_serde (baseline)");
        let mut pack_macro = Series::new("#[cached(codec = \"msgpack\")]");
        #[cfg(feature = "compare")]
        let mut other = Series::new("cached crate #[concurrent_cached(redis)] (MessagePack)");
        for _ in 0..ROUNDS {
            let conn = raw.clone();
            json_raw.rounds.push(
                throughput(iterations(tasks), tasks, move |task| {
                    let conn = conn.clone();
                    async move {
                        let bytes = raw_get(&conn, &json_keys[task]).await;
                        let value: Vec<f32> = serde_json::from_slice(&bytes).expect("decode");
                        assert_eq!(value.len(), 384);
                    }
                })
                .await,
            );
            let c = cache.clone();
            json_get.rounds.push(
                throughput(iterations(tasks), tasks, move |task| {
                    let c = c.clone();
                    async move {
                        let value: Option<Vec<f32>> = c.get(&json_keys[task]).await.expect("get");
                        assert_eq!(value.map(|v| v.len()), Some(384));
                    }
                })
                .await,
            );
            let c = cache.clone();
            json_macro.rounds.push(
                throughput(iterations(tasks), tasks, move |task| {
                    let c = c.clone();
                    async move {
                        assert_eq!(embed_json(&c, &texts[task]).await.len(), 384);
                    }
                })
                .await,
            );
            let conn = raw.clone();
            pack_raw.rounds.push(
                throughput(iterations(tasks), tasks, move |task| {
                    let conn = conn.clone();
                    async move {
                        let bytes = raw_get(&conn, &pack_keys[task]).await;
                        let value: Vec<f32> =
                            rmp_serde::from_slice(msgpack_value(&bytes)).expect("decode");
                        assert_eq!(value.len(), 384);
                    }
                })
                .await,
            );
            let c = cache.clone();
            pack_macro.rounds.push(
                throughput(iterations(tasks), tasks, move |task| {
                    let c = c.clone();
                    async move {
                        assert_eq!(embed_msgpack(&c, &texts[task]).await.len(), 384);
                    }
                })
                .await,
            );
            #[cfg(feature = "compare")]
            other.rounds.push(
                throughput(iterations(tasks), tasks, move |task| async move {
                    let value = benches::cached_crate::embed(texts[task].clone())
                        .await
                        .expect("cached crate");
                    assert_eq!(value.len(), 384);
                })
                .await,
            );
        }
        let title = format!(
            "cache hit, 384 f32, {tasks} task(s), {} calls per round, median of {ROUNDS} rounds",
            iterations(tasks)
        );
        report(&format!("{title}: JSON"), &[json_raw, json_get, json_macro]);
        #[cfg(not(feature = "compare"))]
        report(&format!("{title}: MessagePack"), &[pack_raw, pack_macro]);
        #[cfg(feature = "compare")]
        report(
            &format!("{title}: MessagePack"),
            &[pack_raw, pack_macro, other],
        );
    }

    if selected("hot") {
        hot_key(&raw, &cache, texts[0].as_str(), pack_keys[0].as_str()).await;
    }
    if selected("miss") {
        misses(&raw, &cache).await;
    }
    if selected("stored") {
        stored::hits(&server, &raw).await;
    }
}

/// Hits of entries written with stored-value options, beside plain ones.
mod stored {
    use benches::embeddings::{embedding, text_of};
    use benches::{ROUNDS, Series, report, throughput};
    use cache_core::{Cache, EncryptionKeys, cached};
    use redis::aio::MultiplexedConnection;

    #[cached(prefix = "stored-plain", ttl = 600, cache = cache, skip(cache))]
    async fn plain(cache: &Cache, text: &str) -> Vec<f32> {
        embedding(text)
    }

    #[cached(prefix = "stored-stale", ttl = 600, stale = 600, cache = cache, skip(cache))]
    async fn stale(cache: Cache, text: String) -> Vec<f32> {
        embedding(&text)
    }

    #[cached(prefix = "stored-compress", ttl = 600, compress, cache = cache, skip(cache))]
    async fn compressed(cache: &Cache, text: &str) -> Vec<f32> {
        embedding(text)
    }

    #[cached(prefix = "stored-encrypt", ttl = 600, encrypt, cache = cache, skip(cache))]
    async fn encrypted(cache: &Cache, text: &str) -> Vec<f32> {
        embedding(text)
    }

    #[cached(prefix = "stored-tags", ttl = 600, tags = [format!("doc:{text}")], cache = cache, skip(cache))]
    async fn tagged(cache: &Cache, text: &str) -> Vec<f32> {
        embedding(text)
    }

    const ITERATIONS: usize = 5_000;

    pub async fn hits(server: &tests::RedisServer, raw: &MultiplexedConnection) {
        let keys = EncryptionKeys::parse("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=")
            .expect("bench key");
        let cache = Cache::builder()
            .redis_url(&server.url())
            .expect("redis url")
            .encryption_keys(keys)
            .build()
            .await
            .expect("cache");
        let texts: &'static [String] = (0..1).map(text_of).collect::<Vec<_>>().leak();
        let text = texts[0].as_str();
        plain(&cache, text).await;
        stale(cache.clone(), text.to_string()).await;
        compressed(&cache, text).await;
        encrypted(&cache, text).await;
        tagged(&cache, text).await;
        let mut series: Vec<Series> = [
            "#[cached] JSON (baseline)",
            "stale = 600 (envelope)",
            "compress (lz4)",
            "encrypt (Fernet)",
            "tags = [1 tag] (tag version read beside)",
        ]
        .iter()
        .map(|name| Series::new(name))
        .collect();
        for _ in 0..ROUNDS {
            for (variant, series) in series.iter_mut().enumerate() {
                let c = cache.clone();
                series.rounds.push(
                    throughput(ITERATIONS, 1, move |_| {
                        let c = c.clone();
                        async move {
                            let value = match variant {
                                0 => plain(&c, text).await,
                                1 => stale(c.clone(), text.to_string()).await,
                                2 => compressed(&c, text).await,
                                3 => encrypted(&c, text).await,
                                _ => tagged(&c, text).await,
                            };
                            assert_eq!(value.len(), 384);
                        }
                    })
                    .await,
                );
            }
        }
        report(
            &format!(
                "stored-value options, cache hit, 384 f32 JSON, 1 task, {ITERATIONS} calls per round, median of {ROUNDS} rounds"
            ),
            &series,
        );
        for prefix in [
            "stored-plain",
            "stored-stale",
            "stored-compress",
            "stored-encrypt",
            "stored-tags",
        ] {
            let key = cache_core::key_for(prefix, &(text,)).expect("key");
            let mut conn = raw.clone();
            let len: usize = redis::cmd("STRLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("STRLEN");
            println!("STRLEN {prefix}: {len} bytes");
        }
    }
}

/// Lives to the end of the run, so that the benchmark tasks borrow it
/// without a reference count to share between cores.
fn made_once(items: Vec<String>) -> &'static [String] {
    items.leak()
}

/// Whether to run a part: all of them, or those `BENCH_ONLY` names
/// (`hit-1`, `hit-64`, `hot`, `miss`, separated by commas).
fn selected(part: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == part))
}

/// 64 tasks reading one popular key (a trending query, a hot product): each
/// raw GET is a round trip of its own; `#[cached]` lets concurrent callers
/// share one in-flight read.
async fn hot_key(
    raw: &MultiplexedConnection,
    cache: &Cache,
    text: &'static str,
    key: &'static str,
) {
    let tasks = 64;
    let mut pack_raw = Series::new("raw GET + rmp_serde (baseline)");
    let mut pack_macro = Series::new("#[cached(codec = \"msgpack\")]");
    #[cfg(feature = "compare")]
    let mut other = Series::new("cached crate #[concurrent_cached(redis)] (MessagePack)");
    for _ in 0..ROUNDS {
        let conn = raw.clone();
        pack_raw.rounds.push(
            throughput(iterations(tasks), tasks, move |_| {
                let conn = conn.clone();
                async move {
                    let bytes = raw_get(&conn, key).await;
                    let value: Vec<f32> =
                        rmp_serde::from_slice(msgpack_value(&bytes)).expect("decode");
                    assert_eq!(value.len(), 384);
                }
            })
            .await,
        );
        let c = cache.clone();
        pack_macro.rounds.push(
            throughput(iterations(tasks), tasks, move |_| {
                let c = c.clone();
                async move {
                    assert_eq!(embed_msgpack(&c, text).await.len(), 384);
                }
            })
            .await,
        );
        #[cfg(feature = "compare")]
        other.rounds.push(
            throughput(iterations(tasks), tasks, move |_| async move {
                let value = benches::cached_crate::embed(text.to_string())
                    .await
                    .expect("cached crate");
                assert_eq!(value.len(), 384);
            })
            .await,
        );
    }
    let title = format!(
        "cache hit on one hot key, 384 f32, {tasks} tasks, {} calls per round, median of {ROUNDS} rounds: MessagePack",
        iterations(tasks)
    );
    #[cfg(not(feature = "compare"))]
    report(&title, &[pack_raw, pack_macro]);
    #[cfg(feature = "compare")]
    report(&title, &[pack_raw, pack_macro, other]);
}

/// The miss path: GET finds nothing, compute, SET with the TTL.
async fn misses(raw: &MultiplexedConnection, cache: &Cache) {
    for tasks in TASKS {
        if !selected(&format!("hit-{tasks}")) {
            continue;
        }
        let mut json_raw = Series::new("raw GET + compute + serde_json + SET EX (baseline)");
        let mut json_macro = Series::new("#[cached] JSON");
        let mut pack_raw = Series::new("raw GET + compute + rmp_serde + SET EX (baseline)");
        let mut pack_macro = Series::new("#[cached(codec = \"msgpack\")]");
        #[cfg(feature = "compare")]
        let mut other = Series::new("cached crate #[concurrent_cached(redis)] (MessagePack)");
        for _ in 0..ROUNDS {
            let conn = raw.clone();
            json_raw.rounds.push(
                throughput(MISS_ITERATIONS, tasks, move |_| {
                    let conn = conn.clone();
                    async move {
                        let text = fresh_text();
                        raw_miss(&conn, &format!("raw-json:{text}"), |v| {
                            serde_json::to_vec(v).expect("json")
                        })
                        .await;
                    }
                })
                .await,
            );
            let c = cache.clone();
            json_macro.rounds.push(
                throughput(MISS_ITERATIONS, tasks, move |_| {
                    let c = c.clone();
                    async move {
                        assert_eq!(embed_json(&c, &fresh_text()).await.len(), 384);
                    }
                })
                .await,
            );
            let conn = raw.clone();
            pack_raw.rounds.push(
                throughput(MISS_ITERATIONS, tasks, move |_| {
                    let conn = conn.clone();
                    async move {
                        let text = fresh_text();
                        raw_miss(&conn, &format!("raw-msgpack:{text}"), |v| {
                            rmp_serde::to_vec_named(v).expect("msgpack")
                        })
                        .await;
                    }
                })
                .await,
            );
            let c = cache.clone();
            pack_macro.rounds.push(
                throughput(MISS_ITERATIONS, tasks, move |_| {
                    let c = c.clone();
                    async move {
                        assert_eq!(embed_msgpack(&c, &fresh_text()).await.len(), 384);
                    }
                })
                .await,
            );
            #[cfg(feature = "compare")]
            other.rounds.push(
                throughput(MISS_ITERATIONS, tasks, |_| async move {
                    let value = benches::cached_crate::embed(fresh_text())
                        .await
                        .expect("cached crate");
                    assert_eq!(value.len(), 384);
                })
                .await,
            );
            // Keep the server's memory flat across rounds.
            let mut conn = raw.clone();
            let () = redis::cmd("FLUSHDB")
                .query_async(&mut conn)
                .await
                .expect("FLUSHDB");
        }
        let title = format!(
            "cache miss, 384 f32, {tasks} task(s), {MISS_ITERATIONS} calls per round, median of {ROUNDS} rounds"
        );
        report(&format!("{title}: JSON"), &[json_raw, json_macro]);
        #[cfg(not(feature = "compare"))]
        report(&format!("{title}: MessagePack"), &[pack_raw, pack_macro]);
        #[cfg(feature = "compare")]
        report(
            &format!("{title}: MessagePack"),
            &[pack_raw, pack_macro, other],
        );
    }
}

/// The hand-written miss: GET (nothing), compute, encode, SET EX.
async fn raw_miss(conn: &MultiplexedConnection, key: &str, encode: fn(&Vec<f32>) -> Vec<u8>) {
    let mut conn = conn.clone();
    let found: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert!(found.is_none());
    let value = embedding(key);
    let () = redis::cmd("SET")
        .arg(key)
        .arg(encode(&value))
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .expect("SET");
}
