//! `invalidate_prefix` over 1 M keys on a loopback redis-server: total time and
//! the longest single Redis command (from SLOWLOG, which here logs every
//! command), beside the one `KEYS` call a naive implementation would make.
//!
//! `cargo run --release -p benches --bin invalidate [-- KEYS]` (default 1 000 000)

use std::time::Instant;

use cache_core::Cache;

const BATCH: usize = 10_000;

async fn fill(conn: &mut redis::aio::MultiplexedConnection, prefix: &str, keys: usize) {
    for start in (0..keys).step_by(BATCH) {
        let mut pipe = redis::pipe();
        for i in start..(start + BATCH).min(keys) {
            pipe.cmd("SET").arg(format!("{prefix}{i}")).arg(i).ignore();
        }
        let () = pipe.query_async(conn).await.expect("fill");
    }
}

/// The longest logged command per name, in microseconds.
async fn longest_commands(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .expect("SLOWLOG GET");
    let mut longest: std::collections::BTreeMap<String, u64> = Default::default();
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let (Some(redis::Value::Int(micros)), Some(redis::Value::Array(args))) =
            (fields.get(2), fields.get(3))
        else {
            continue;
        };
        let name = match args.first() {
            Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).to_uppercase(),
            _ => continue,
        };
        if name == "SLOWLOG" {
            continue;
        }
        let slot = longest.entry(name).or_default();
        *slot = (*slot).max(u64::try_from(*micros).unwrap_or(0));
    }
    longest.into_iter().collect()
}

async fn reset_slowlog(conn: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(conn)
        .await
        .expect("reset");
}

#[tokio::main]
async fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let server = tests::RedisServer::start_with(&[
        "--slowlog-log-slower-than",
        "0",
        "--slowlog-max-len",
        "100000",
    ]);
    let client = redis::Client::open(server.url()).expect("url");
    // No response timeout: the KEYS baseline is expected to block for a long time.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect");
    let cache = Cache::builder()
        .redis_url(&server.url())
        .expect("url")
        .build()
        .await
        .expect("cache");

    // Baseline: what KEYS would cost, as one blocking call.
    fill(&mut conn, "bench:keys:", keys).await;
    reset_slowlog(&mut conn).await;
    let started = Instant::now();
    let found: Vec<String> = redis::cmd("KEYS")
        .arg("bench:keys:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let keys_elapsed = started.elapsed();
    let keys_longest = longest_commands(&mut conn).await;
    assert_eq!(found.len(), keys);
    let _ = redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await;

    fill(&mut conn, "bench:inv:", keys).await;
    fill(&mut conn, "bench:keep:", 1000).await;
    reset_slowlog(&mut conn).await;
    let started = Instant::now();
    let removed = cache
        .invalidate_prefix("bench:inv:")
        .await
        .expect("invalidate");
    let elapsed = started.elapsed();
    let ours = longest_commands(&mut conn).await;
    assert_eq!(removed as usize, keys);
    let left: u64 = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .expect("DBSIZE");
    assert_eq!(left, 1000, "only the other keys are left");

    println!("\ninvalidate_prefix over {keys} keys (plus 1000 others), loopback redis-server");
    println!("| variant | wall time | longest single command |");
    println!("| --- | ---: | ---: |");
    let keys_max = keys_longest.iter().map(|(_, us)| *us).max().unwrap_or(0);
    println!(
        "| baseline: one `KEYS bench:keys:*` (finding only, nothing removed) | {:.0} ms | {keys_max} µs (KEYS) |",
        keys_elapsed.as_secs_f64() * 1e3
    );
    let ours_max = ours
        .iter()
        .max_by_key(|(_, us)| *us)
        .cloned()
        .unwrap_or_default();
    println!(
        "| `invalidate_prefix` (SCAN 500 + UNLINK per page) | {:.0} ms | {} µs ({}) |",
        elapsed.as_secs_f64() * 1e3,
        ours_max.1,
        ours_max.0
    );
    println!("per command: {ours:?}");
    println!(
        "longest command ratio (ours / KEYS): {:.4}",
        ours_max.1 as f64 / keys_max.max(1) as f64
    );
}
