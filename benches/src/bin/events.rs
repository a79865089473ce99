//! The event bus on a loopback redis-server, beside raw redis-rs pub/sub in
//! the same run: publish -> receive latency (one message in flight, p50 and
//! p99) and throughput (publishers and a consumer running at once), plus
//! the in-memory backend's in-process figures for scale.
//!
//! `cargo run --release -p benches --bin events [-- MESSAGES]` (default 20 000
//! per latency run, 5x that per throughput run)

use std::time::{Duration, Instant};

use cache_core::Cache;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// A small price update, as the examples publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick {
    symbol: String,
    price: f64,
    seq: u64,
}

fn tick(seq: u64) -> Tick {
    Tick {
        symbol: "BTC".into(),
        price: 72000.5,
        seq,
    }
}

/// Interleaved rounds of the throughput runs.
const THROUGHPUT_ROUNDS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Publishers running at once in the throughput runs.
const PUBLISHERS: usize = 8;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn row(name: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "| {name} | {:.1} µs | {:.1} µs |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6
    );
}

/// One message in flight: publish, wait for it, repeat.
async fn bus_latency(cache: &Cache, channel: &str, messages: u64) -> Vec<Duration> {
    let bus = cache.events();
    let mut subscription = bus.subscribe::<Tick>(&[channel]).await.expect("subscribe");
    let mut latencies = Vec::with_capacity(messages as usize);
    for seq in 0..messages {
        let started = Instant::now();
        bus.publish(channel, &tick(seq)).await.expect("publish");
        let received = subscription.next().await.expect("stream").expect("event");
        assert_eq!(received.seq, seq);
        latencies.push(started.elapsed());
    }
    latencies
}

async fn raw_latency(url: &str, channel: &str, messages: u64) -> Vec<Duration> {
    let client = redis::Client::open(url).expect("url");
    let mut publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(channel).await.expect("subscribe");
    let mut stream = pubsub.into_on_message();
    let mut latencies = Vec::with_capacity(messages as usize);
    for seq in 0..messages {
        let started = Instant::now();
        let payload = serde_json::to_vec(&tick(seq)).expect("json");
        let _: u64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut publisher)
            .await
            .expect("publish");
        let message = stream.next().await.expect("stream");
        let received: Tick = serde_json::from_slice(message.get_payload_bytes()).expect("json");
        assert_eq!(received.seq, seq);
        latencies.push(started.elapsed());
    }
    latencies
}

/// Messages per second from the first publish to the last receipt, and
/// what the consumer saw (received, dropped by a full buffer).
async fn bus_throughput(
    cache: &Cache,
    channel: &str,
    messages: u64,
    buffer: usize,
) -> (f64, u64, u64) {
    let bus = cache.events().with_buffer(buffer);
    let subscription = bus.subscribe::<Tick>(&[channel]).await.expect("subscribe");
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        let (mut received, mut dropped) = (0, 0);
        let mut subscription = subscription;
        while received + dropped < messages {
            match subscription.next().await.expect("stream") {
                Ok(_) => received += 1,
                Err(cache_core::events::EventError::Gap { dropped: n, .. }) => dropped += n,
                Err(other) => panic!("{other}"),
            }
        }
        (received, dropped)
    });
    publish_all(messages, {
        let bus = bus.clone();
        let channel = channel.to_string();
        move |seq| {
            let bus = bus.clone();
            let channel = channel.clone();
            async move {
                bus.publish(&channel, &tick(seq)).await.expect("publish");
            }
        }
    })
    .await;
    let (received, dropped) = consumer.await.expect("consumer");
    (
        messages as f64 / started.elapsed().as_secs_f64(),
        received,
        dropped,
    )
}

async fn raw_throughput(url: &str, channel: &str, messages: u64) -> f64 {
    let client = redis::Client::open(url).expect("url");
    let publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(channel).await.expect("subscribe");
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut stream = pubsub.into_on_message();
        for _ in 0..messages {
            let message = stream.next().await.expect("stream");
            let _: Tick = serde_json::from_slice(message.get_payload_bytes()).expect("json");
        }
    });
    publish_all(messages, {
        let channel = channel.to_string();
        move |seq| {
            let mut publisher = publisher.clone();
            let channel = channel.clone();
            async move {
                let payload = serde_json::to_vec(&tick(seq)).expect("json");
                let _: u64 = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(payload)
                    .query_async(&mut publisher)
                    .await
                    .expect("publish");
            }
        }
    })
    .await;
    consumer.await.expect("consumer");
    messages as f64 / started.elapsed().as_secs_f64()
}

/// `messages` publishes by [`PUBLISHERS`] tasks at once.
async fn publish_all<F, Fut>(messages: u64, publish: F)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = messages / PUBLISHERS as u64;
    let tasks: Vec<_> = (0..PUBLISHERS as u64)
        .map(|task| {
            let publish = publish.clone();
            tokio::spawn(async move {
                for seq in task * per_task..(task + 1) * per_task {
                    publish(seq).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher");
    }
}

#[tokio::main]
async fn main() {
    let messages: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let flood = messages * 5 / PUBLISHERS as u64 * PUBLISHERS as u64;
    let server = tests::RedisServer::start();
    let url = server.url();
    let cache = Cache::builder()
        .redis_url(&url)
        .expect("url")
        .build()
        .await
        .expect("cache");
    let memory = Cache::in_memory();

    // Warm-up of both paths (connections, allocator).
    raw_latency(&url, "warm:raw", 1000).await;
    bus_latency(&cache, "warm:bus", 1000).await;

    println!(
        "\npublish -> receive latency, one message in flight, {messages} messages, loopback redis-server"
    );
    println!("| variant | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    // Interleaved quarters, so that both see the same machine state.
    let (mut raw, mut bus) = (Vec::new(), Vec::new());
    for quarter in 0..4 {
        raw.extend(raw_latency(&url, &format!("lat:raw:{quarter}"), messages / 4).await);
        bus.extend(bus_latency(&cache, &format!("lat:bus:{quarter}"), messages / 4).await);
    }
    row(
        "baseline: raw redis-rs (PUBLISH + aio::PubSub, JSON by hand)",
        raw,
    );
    row("`cache.events()` (PUBLISH + RESP3 push, typed)", bus);
    row(
        "`cache.events()` on the in-memory backend (in process)",
        bus_latency(&memory, "lat:mem", messages).await,
    );

    println!(
        "\nthroughput, {PUBLISHERS} publishers and one consumer at once, {flood} messages, loopback redis-server, median of {THROUGHPUT_ROUNDS} interleaved rounds"
    );
    println!("| variant | messages/s | received | dropped (Gap) |");
    println!("| --- | ---: | ---: | ---: |");
    let (mut raw, mut ours, mut memory_rounds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut received, mut dropped) = (0, 0);
    for round in 0..THROUGHPUT_ROUNDS {
        raw.push(raw_throughput(&url, &format!("tp:raw:{round}"), flood).await);
        let (rate, got, lost) =
            bus_throughput(&cache, &format!("tp:bus:{round}"), flood, flood as usize).await;
        ours.push(rate);
        received += got;
        dropped += lost;
        memory_rounds.push(
            bus_throughput(&memory, &format!("tp:mem:{round}"), flood, flood as usize)
                .await
                .0,
        );
    }
    let rounds = THROUGHPUT_ROUNDS as u64;
    // The default buffer: a consumer that falls behind loses the oldest, memory stays bounded.
    let (bounded, bounded_received, bounded_dropped) = bus_throughput(
        &cache,
        "tp:bounded",
        flood,
        cache_core::events::DEFAULT_EVENT_BUFFER,
    )
    .await;
    println!(
        "| baseline: raw redis-rs | {:.0} | {flood} | - |",
        median(raw)
    );
    println!(
        "| `cache.events()` (buffer {flood}) | {:.0} | {} | {} |",
        median(ours),
        received / rounds,
        dropped / rounds
    );
    println!(
        "| `cache.events()` (default buffer {}, one run) | {bounded:.0} | {bounded_received} | {bounded_dropped} |",
        cache_core::events::DEFAULT_EVENT_BUFFER
    );
    println!(
        "| `cache.events()`, in-memory backend | {:.0} | {flood} | 0 |",
        median(memory_rounds)
    );
    println!("\nbus stats after the run: {:?}", cache.stats().events);
}
