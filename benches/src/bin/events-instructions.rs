//! One message in flight on the event bus, `MESSAGES` times, for counting
//! instructions under callgrind (`scripts/events-instructions.sh`): publish
//! a `u64`, await it on the subscription, on a current-thread runtime.
//!
//! `events-instructions VARIANT MESSAGES`: `memory` is the in-memory store's
//! bus (in process), `redis` a loopback `redis-server`'s (its instructions
//! are the server's process, not counted). A run with 0 messages measures
//! the set-up, which the script subtracts.

use cache_core::Cache;
use futures_util::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_default();
    let messages: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let server;
    let cache = match variant.as_str() {
        "memory" => Cache::in_memory(),
        "redis" => {
            server = tests::RedisServer::start();
            let cache = Cache::builder().redis_url(&server.url()).expect("url");
            cache.build().await.expect("cache")
        }
        _ => panic!("usage: events-instructions memory|redis MESSAGES"),
    };
    let bus = cache.events();
    let mut ticks = bus.subscribe::<u64>(&["ticks"]).await.expect("subscribe");
    // Both runs publish one message first (the connection's first use), so
    // the set-up run subtracts exactly.
    for tick in 0..=messages {
        bus.publish("ticks", &tick).await.expect("publish");
        let received = ticks.next().await.expect("never ends").expect("a tick");
        assert_eq!(received, tick);
    }
}
