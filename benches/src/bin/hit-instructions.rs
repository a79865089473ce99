//! One variant of the 64-task MessagePack hit, `CALLS` times, for counting
//! instructions under callgrind (`scripts/hit-instructions.sh`): a figure this
//! machine's second-to-second noise does not move.
//!
//! `hit-instructions VARIANT CALLS`: `raw` is `GET` + `rmp_serde` of the very
//! entry the macro reads (after its two-byte header); three ways to cap the size of what is read, with
//! the same decode: `raw-getrange` (`GETRANGE key 0 cap`, what the handle
//! does), `raw-strlen` (`STRLEN`, then `GET` when within the cap: two round
//! trips) and `raw-lua` (one script doing both); `macro` is
//! `#[cached(codec = "msgpack")]`.
//! A run with 0 calls measures the set-up, which the script subtracts.

use benches::embeddings::{embed_msgpack, msgpack_value, text_of};

const TASKS: usize = 64;
const VARIANTS: [&str; 5] = ["raw", "raw-getrange", "raw-strlen", "raw-lua", "macro"];
/// STRLEN and GET in one step: nil when the value is over the cap.
const CAPPED_GET_LUA: &str = r"
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then return false end
return redis.call('GET', KEYS[1])
";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_default();
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        VARIANTS.contains(&variant.as_str()),
        "usage: hit-instructions {} CALLS",
        VARIANTS.join("|")
    );

    // With the `metrics` feature, into the recorder an application would install.
    #[cfg(feature = "metrics")]
    let _metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of the process");
    let server = tests::RedisServer::start();
    let (raw, cache) = benches::raw_and_cache(&server).await;
    let texts: &'static [String] = (0..TASKS).map(text_of).collect::<Vec<_>>().leak();
    let keys: &'static [String] = texts
        .iter()
        .map(|text| cache_core::key_for("bench-msgpack", &(text,)).expect("key"))
        .collect::<Vec<_>>()
        .leak();
    // Both variants seed the same way, so the set-up run subtracts exactly.
    for text in texts {
        embed_msgpack(&cache, text).await;
    }

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let raw = raw.clone();
            let cache = cache.clone();
            let variant = variant.clone();
            let cap = cache.max_value_bytes();
            let script = redis::Script::new(CAPPED_GET_LUA);
            tokio::spawn(async move {
                for _ in 0..calls / TASKS {
                    let key = &keys[task];
                    let mut conn = raw.clone();
                    let bytes: Vec<u8> = match variant.as_str() {
                        "macro" => {
                            assert_eq!(embed_msgpack(&cache, &texts[task]).await.len(), 384);
                            continue;
                        }
                        "raw-getrange" => {
                            redis::cmd("GETRANGE")
                                .arg(key)
                                .arg(0)
                                .arg(cap)
                                .query_async(&mut conn)
                                .await
                        }
                        "raw-strlen" => {
                            let len: usize = redis::cmd("STRLEN")
                                .arg(key)
                                .query_async(&mut conn)
                                .await
                                .expect("STRLEN");
                            assert!(len <= cap);
                            redis::cmd("GET").arg(key).query_async(&mut conn).await
                        }
                        "raw-lua" => script.key(key).arg(cap).invoke_async(&mut conn).await,
                        _ => redis::cmd("GET").arg(key).query_async(&mut conn).await,
                    }
                    .expect("read");
                    let value: Vec<f32> =
                        rmp_serde::from_slice(msgpack_value(&bytes)).expect("decode");
                    assert_eq!(value.len(), 384);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}
