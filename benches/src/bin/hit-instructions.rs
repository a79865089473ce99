//! One variant of the 64-task MessagePack hit, `CALLS` times, for counting
//! instructions under callgrind (`scripts/hit-instructions.sh`): a figure this
//! machine's second-to-second noise does not move.
//!
//! `hit-instructions raw|macro CALLS`: `raw` is `GET` + `rmp_serde` of the
//! very entry the macro reads (after its two-byte header); `macro` is
//! `#[cached(codec = "msgpack")]`.
//! A run with 0 calls measures the set-up, which the script subtracts.

use benches::embeddings::{embed_msgpack, msgpack_value, text_of};

const TASKS: usize = 64;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_default();
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        variant == "raw" || variant == "macro",
        "usage: hit-instructions raw|macro CALLS"
    );

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
            let macro_variant = variant == "macro";
            tokio::spawn(async move {
                for _ in 0..calls / TASKS {
                    let value = if macro_variant {
                        embed_msgpack(&cache, &texts[task]).await
                    } else {
                        let mut conn = raw.clone();
                        let bytes: Vec<u8> = redis::cmd("GET")
                            .arg(&keys[task])
                            .query_async(&mut conn)
                            .await
                            .expect("GET");
                        rmp_serde::from_slice(msgpack_value(&bytes)).expect("decode")
                    };
                    assert_eq!(value.len(), 384);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}
