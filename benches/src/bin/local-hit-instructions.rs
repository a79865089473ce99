//! One variant of the local-tier hit of the `local-tier` benchmark, `CALLS`
//! times in one task, for counting instructions under callgrind
//! (`scripts/hit-instructions.sh`): what each variant adds to the floor, in
//! a figure this machine's second-to-second noise does not move.
//!
//! `local-hit-instructions VARIANT CALLS`: `floor` is a plain moka `get` +
//! clone of the 384-float embedding (keyed by its text); `macro` is the
//! `#[cached]` JSON local hit; `function` is `Cache::get_or_set`'s local hit.
//! A run with 0 calls measures the set-up, which the script subtracts.

use std::time::Duration;

use benches::embeddings::{embed_json, embedding, text_of};
use cache_core::EntryOptions;

const VARIANTS: [&str; 3] = ["floor", "macro", "function"];

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_default();
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        VARIANTS.contains(&variant.as_str()),
        "usage: local-hit-instructions {} CALLS",
        VARIANTS.join("|")
    );
    let server = tests::RedisServer::start();
    let cache = benches::local_handle(&server.url(), Duration::from_secs(600)).await;
    let text = text_of(0);
    let floor = moka::sync::Cache::<String, Vec<f32>>::new(10_000);
    floor.insert(text.clone(), embedding(&text));
    let options = EntryOptions::ttl(Duration::from_secs(600));
    let key = format!("bench-fn:{text}");
    let compute = || {
        let text = text.clone();
        async move { embedding(&text) }
    };
    // Every variant seeds the same way, so the set-up run subtracts exactly;
    // then both entries are read until the local tier serves them.
    loop {
        let hits = cache.stats().local_hits;
        embed_json(&cache, &text).await;
        cache.get_or_set(&key, &options, compute).await;
        if cache.stats().local_hits == hits + 2 {
            break;
        }
    }
    for _ in 0..calls {
        let value = match variant.as_str() {
            "floor" => floor.get(text.as_str()).expect("seeded"),
            "macro" => embed_json(&cache, &text).await,
            _ => cache.get_or_set(&key, &options, compute).await,
        };
        assert_eq!(std::hint::black_box(value).len(), 384);
    }
}
