//! The typed event bus (`cache.events()`): one behavioural suite on the
//! in-memory backend, a standalone `redis-server` and the three-node cluster
//! (sharded pub/sub), plus what only Redis has: the exact bytes on the wire
//! as another program's subscriber sees them, and a restart of the server.

use std::time::{Duration, Instant};

use cache_core::Cache;
use cache_core::events::{EventConnection, EventError, Subscription};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tests::suite::{self, Backend};
use tests::{RedisServer, shared_cluster, shared_server, unique_prefix};

/// The backend, a fresh handle (so a bus of its own) and a prefix for channel names.
type Fixture = (Backend, Cache, String);

async fn fixture(backend: Backend, test: &str) -> Fixture {
    (
        backend,
        suite::build(backend.suite_builder()).await,
        unique_prefix(test),
    )
}

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture;
    a_published_event_reaches_every_subscriber_typed,
    patterns_receive_the_channels_they_match,
    a_malformed_message_is_an_item_and_the_stream_goes_on,
    a_slow_consumer_gets_one_gap_with_the_count_dropped,
    dropping_the_streams_unsubscribes_the_channel,
    bad_channels_and_oversized_events_are_refused,
    clones_and_dedicated_handles_reach_the_same_subscribers,
);

tests::suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    redis_only fixture: fixture;
    the_wire_carries_exactly_the_json_bytes,
    json_from_another_client_is_received_typed,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    symbol: String,
    quantity: f64,
}

fn order(id: u64) -> Order {
    Order {
        id,
        symbol: "BTC".into(),
        quantity: 0.5,
    }
}

/// Generous: the machine is shared; a delivery takes well under a millisecond.
const WAIT: Duration = Duration::from_secs(10);

async fn next<T: serde::de::DeserializeOwned>(
    stream: &mut Subscription<T>,
) -> Result<T, EventError> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an item within the wait")
        .expect("subscriptions never end")
}

/// Server-side subscribers of `channel`: `PUBSUB NUMSUB` (`SHARDNUMSUB` on
/// the primary that serves its slot on the cluster).
fn server_subscribers(backend: Backend, channel: &str) -> u64 {
    let reply = match backend {
        Backend::Standalone => shared_server().cli(&["PUBSUB", "NUMSUB", channel]),
        Backend::Cluster => {
            let port = shared_cluster().primary_for_key(channel);
            RedisServer::cli_on(port, &["PUBSUB", "SHARDNUMSUB", channel])
        }
        Backend::Memory => unreachable!("the in-memory backend has no server"),
    };
    reply
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("PUBSUB reply {reply:?}"))
}

mod behaviour {
    use super::*;

    pub async fn a_published_event_reaches_every_subscriber_typed((backend, cache, p): Fixture) {
        let channel = format!("{p}:trading:orders");
        let bus = cache.events();
        let mut first = bus.subscribe::<Order>(&[&channel]).await.unwrap();
        let mut second = bus.subscribe::<Order>(&[&channel]).await.unwrap();
        let stats = cache.stats().events;
        assert_eq!(stats.subscriptions, 2);
        let connection = match backend {
            Backend::Memory => EventConnection::Idle,
            _ => EventConnection::Connected,
        };
        assert_eq!(stats.connection, connection);

        for id in 1..=3 {
            bus.publish(&channel, &order(id)).await.unwrap();
        }
        for id in 1..=3 {
            assert_eq!(next(&mut first).await.unwrap(), order(id));
            assert_eq!(next(&mut second).await.unwrap(), order(id));
        }
        assert_eq!(cache.stats().events.published, 3);
    }

    pub async fn patterns_receive_the_channels_they_match((backend, cache, p): Fixture) {
        let bus = cache.events();
        let pattern = format!("{p}:market:*");
        if backend == Backend::Cluster {
            let refused = bus.subscribe_patterns::<f64>(&[&pattern]).await;
            assert!(matches!(refused, Err(EventError::PatternsUnsupported)));
            return;
        }
        let mut prices = bus.subscribe_patterns::<f64>(&[&pattern]).await.unwrap();
        bus.publish(&format!("{p}:trading:orders"), &1.0)
            .await
            .unwrap();
        bus.publish(&format!("{p}:market:BTC"), &72000.5)
            .await
            .unwrap();
        bus.publish(&format!("{p}:market:ETH"), &3900.25)
            .await
            .unwrap();
        assert_eq!(next(&mut prices).await.unwrap(), 72000.5);
        assert_eq!(next(&mut prices).await.unwrap(), 3900.25);
    }

    pub async fn a_malformed_message_is_an_item_and_the_stream_goes_on(
        (_backend, cache, p): Fixture,
    ) {
        let channel = format!("{p}:orders");
        let bus = cache.events();
        let mut orders = bus.subscribe::<Order>(&[&channel]).await.unwrap();
        bus.publish(&channel, "not an order").await.unwrap();
        bus.publish(&channel, &order(7)).await.unwrap();
        match next(&mut orders).await {
            Err(EventError::Malformed {
                channel: on,
                reason,
            }) => {
                assert_eq!(on, channel);
                assert!(!reason.is_empty());
            }
            other => panic!("expected a malformed item, got {other:?}"),
        }
        assert_eq!(next(&mut orders).await.unwrap(), order(7));
        assert_eq!(cache.stats().events.malformed, 1);
    }

    pub async fn a_slow_consumer_gets_one_gap_with_the_count_dropped(
        (_backend, cache, p): Fixture,
    ) {
        let channel = format!("{p}:flood");
        let bus = cache.events().with_buffer(4);
        let mut slow = bus.subscribe::<u64>(&[&channel]).await.unwrap();
        // Another subscriber of the same channel, with the default buffer.
        let mut fast = cache.events().subscribe::<u64>(&[&channel]).await.unwrap();
        for n in 0..20_u64 {
            bus.publish(&channel, &n).await.unwrap();
        }
        // The slow one holds up neither the connection nor the other subscriber.
        for n in 0..20 {
            assert_eq!(next(&mut fast).await.unwrap(), n);
        }
        // Every message has reached the slow one's buffer (which kept 4) before reading.
        tests::eventually(WAIT, "20 messages received by each", async || {
            cache.stats().events.received == 40
        })
        .await;
        match next(&mut slow).await {
            Err(EventError::Gap {
                dropped,
                disconnected,
            }) => {
                assert_eq!(dropped, 16);
                assert!(!disconnected);
            }
            other => panic!("expected a gap, got {other:?}"),
        }
        for n in 16..20 {
            assert_eq!(next(&mut slow).await.unwrap(), n);
        }
        let stats = cache.stats().events;
        assert_eq!((stats.gaps, stats.dropped), (1, 16));
    }

    pub async fn dropping_the_streams_unsubscribes_the_channel((backend, cache, p): Fixture) {
        let channel = format!("{p}:orders");
        let bus = cache.events();
        let first = bus.subscribe::<Order>(&[&channel]).await.unwrap();
        let second = bus.subscribe::<Order>(&[&channel, &channel]).await.unwrap();
        if backend != Backend::Memory {
            // One connection per bus, however many streams.
            assert_eq!(server_subscribers(backend, &channel), 1);
        }
        drop(first);
        assert_eq!(cache.stats().events.subscriptions, 1);
        if backend != Backend::Memory {
            // Still subscribed for the stream left; the unsubscribe of a
            // dropped stream runs on the runtime, so check it did not happen
            // after one round trip on the same connection.
            let mut third = bus.subscribe::<Order>(&[&channel]).await.unwrap();
            bus.publish(&channel, &order(1)).await.unwrap();
            assert_eq!(next(&mut third).await.unwrap(), order(1));
            assert_eq!(server_subscribers(backend, &channel), 1);
            drop(third);
        }
        drop(second);
        assert_eq!(cache.stats().events.subscriptions, 0);
        if backend != Backend::Memory {
            tests::eventually(WAIT, "no server-side subscription left", async || {
                server_subscribers(backend, &channel) == 0
            })
            .await;
        }
        // Nobody listens: a publish reaches no one.
        assert_eq!(bus.publish(&channel, &order(2)).await.unwrap(), 0);
    }

    pub async fn clones_and_dedicated_handles_reach_the_same_subscribers(
        (backend, cache, p): Fixture,
    ) {
        let channel = format!("{p}:orders");
        let bus = cache.events();
        let mut orders = bus.subscribe::<Order>(&[&channel]).await.unwrap();
        let (clone, dedicated) = (cache.clone(), cache.dedicated());
        let (by_clone, by_dedicated) = (clone.events(), dedicated.events());
        assert_eq!(by_clone.publish(&channel, &order(1)).await.unwrap(), 1);
        assert_eq!(by_dedicated.publish(&channel, &order(2)).await.unwrap(), 1);
        assert_eq!(next(&mut orders).await.unwrap(), order(1));
        assert_eq!(next(&mut orders).await.unwrap(), order(2));
        // In process a dedicated handle is a clone: one store, one bus. On
        // Redis it has a store of its own, and a bus of its own (nobody
        // subscribed there), which reaches the same server.
        assert_eq!(clone.stats().events.subscriptions, 1);
        let in_process = backend == Backend::Memory;
        let seen = dedicated.stats().events;
        assert_eq!(seen.subscriptions, u64::from(in_process));
        assert_eq!(seen.published, if in_process { 2 } else { 1 });
    }

    pub async fn bad_channels_and_oversized_events_are_refused((_backend, cache, p): Fixture) {
        let bus = cache.events();
        assert!(matches!(
            bus.publish("", &1).await,
            Err(EventError::InvalidChannel { .. })
        ));
        assert!(matches!(
            bus.subscribe::<u64>(&[]).await,
            Err(EventError::InvalidChannel { .. })
        ));
        let long = "c".repeat(cache_core::events::MAX_CHANNEL_BYTES + 1);
        assert!(matches!(
            bus.subscribe::<u64>(&[&long]).await,
            Err(EventError::InvalidChannel { .. })
        ));
        let big = "x".repeat(cache.max_value_bytes());
        match bus.publish(&format!("{p}:big"), &big).await {
            Err(EventError::TooLarge { bytes, max }) => {
                assert_eq!((bytes, max), (big.len() + 2, cache.max_value_bytes()));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
}

/// A subscriber as another program has it: a plain RESP3 connection (to
/// the shard's primary on the cluster) sending `SUBSCRIBE`/`SSUBSCRIBE`.
async fn raw_subscriber(
    backend: Backend,
    channel: &str,
) -> (
    redis::aio::MultiplexedConnection,
    tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let (url, command) = match backend {
        Backend::Cluster => {
            let port = shared_cluster().primary_for_key(channel);
            (format!("redis://127.0.0.1:{port}"), "SSUBSCRIBE")
        }
        _ => (shared_server().url(), "SUBSCRIBE"),
    };
    let client = redis::Client::open(format!("{url}/?protocol=resp3")).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    redis::cmd(command)
        .arg(channel)
        .exec_async(&mut conn)
        .await
        .unwrap();
    (conn, rx)
}

mod redis_behaviour {
    use super::*;

    pub async fn the_wire_carries_exactly_the_json_bytes((backend, cache, p): Fixture) {
        let channel = format!("{p}:orders");
        let (_conn, mut pushes) = raw_subscriber(backend, &channel).await;
        let sent = order(42);
        cache.events().publish(&channel, &sent).await.unwrap();
        let payload = loop {
            let push = tokio::time::timeout(WAIT, pushes.recv())
                .await
                .expect("a push within the wait")
                .expect("the connection is open");
            if matches!(
                push.kind,
                redis::PushKind::Message | redis::PushKind::SMessage
            ) {
                break push.data[1].clone();
            }
        };
        let redis::Value::BulkString(bytes) = payload else {
            panic!("payload {payload:?}");
        };
        // What a Python or Node subscriber gets: plain JSON, nothing around it.
        assert_eq!(bytes, serde_json::to_vec(&sent).unwrap());
        assert_eq!(bytes, br#"{"id":42,"symbol":"BTC","quantity":0.5}"#);
    }

    pub async fn json_from_another_client_is_received_typed((backend, cache, p): Fixture) {
        let channel = format!("{p}:orders");
        let mut orders = cache
            .events()
            .subscribe::<Order>(&[&channel])
            .await
            .unwrap();
        let command = if backend == Backend::Cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let json = r#"{"symbol": "BTC", "quantity": 0.5, "id": 9}"#;
        let reply = match backend {
            Backend::Cluster => {
                let port = shared_cluster().primary_for_key(&channel);
                RedisServer::cli_on(port, &[command, &channel, json])
            }
            _ => shared_server().cli(&[command, &channel, json]),
        };
        assert_eq!(reply.trim(), "1");
        assert_eq!(next(&mut orders).await.unwrap(), order(9));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_pattern_subscriptions_unsubscribes_them() {
    // A server of its own: PUBSUB NUMPAT counts every client's patterns.
    let server = RedisServer::start();
    let cache = suite::build(suite::redis(&server.url()).timeout(suite::TIMEOUT)).await;
    let bus = cache.events();
    let first = bus.subscribe_patterns::<f64>(&["market:*"]).await.unwrap();
    let second = bus
        .subscribe_patterns::<f64>(&["market:*", "news:*"])
        .await
        .unwrap();
    assert_eq!(server.cli(&["PUBSUB", "NUMPAT"]).trim(), "2");
    drop(second);
    tests::eventually(WAIT, "news:* unsubscribed", async || {
        server.cli(&["PUBSUB", "NUMPAT"]).trim() == "1"
    })
    .await;
    drop(first);
    tests::eventually(WAIT, "market:* unsubscribed", async || {
        server.cli(&["PUBSUB", "NUMPAT"]).trim() == "0"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_come_back_after_redis_restarts_with_a_gap() {
    let mut server = RedisServer::start();
    let cache = suite::build(suite::redis(&server.url()).timeout(suite::TIMEOUT)).await;
    let bus = cache.events();
    let channel = unique_prefix("restart");
    let mut orders = bus.subscribe::<Order>(&[&channel]).await.unwrap();
    bus.publish(&channel, &order(1)).await.unwrap();
    assert_eq!(next(&mut orders).await.unwrap(), order(1));

    server.kill();
    server.restart();
    let restarted = Instant::now();
    // Nothing but waiting: the subscription must come back by itself.
    tests::eventually(WAIT, "resubscribed", async || {
        cache.stats().events.reconnects == 1
    })
    .await;
    let back = restarted.elapsed();
    eprintln!("subscription back {back:?} after the restart");
    assert_eq!(cache.stats().events.connection, EventConnection::Connected);
    let mut id = 2;
    loop {
        // The publishing connection may still be reconnecting; the first
        // publish that goes through reaches the subscription (the server
        // counts the receivers): the gap was not reported before it was back.
        match bus.publish(&channel, &order(id)).await {
            Ok(receivers) => {
                assert_eq!(receivers, 1);
                break;
            }
            Err(err) => assert!(restarted.elapsed() < WAIT, "publish failing: {err}"),
        }
        id += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match next(&mut orders).await {
        Err(EventError::Gap { disconnected, .. }) => assert!(disconnected),
        other => panic!("expected a gap first, got {other:?}"),
    }
    let received = next(&mut orders).await.unwrap();
    assert!((2..=id).contains(&received.id), "{received:?}");
    let stats = cache.stats().events;
    assert_eq!(stats.connection, EventConnection::Connected);
    assert_eq!((stats.reconnects, stats.gaps), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_while_redis_is_down_is_unsubscribed_once_it_is_back() {
    let mut server = RedisServer::start();
    let cache = suite::build(suite::redis(&server.url()).timeout(suite::TIMEOUT)).await;
    let bus = cache.events();
    let channel = unique_prefix("dropped-while-down");
    let orders = bus.subscribe::<Order>(&[&channel]).await.unwrap();
    let _other = bus.subscribe::<Order>(&["other"]).await.unwrap();

    server.kill();
    tests::eventually(WAIT, "the loss noticed", async || {
        cache.stats().events.connection == EventConnection::Disconnected
    })
    .await;
    // The unsubscribe fails now; the driver would resubscribe the channel.
    drop(orders);
    server.restart();
    tests::eventually(WAIT, "reconnected", async || {
        cache.stats().events.connection == EventConnection::Connected
    })
    .await;
    tests::eventually(
        WAIT,
        "the dropped stream's channel unsubscribed",
        async || server.cli(&["PUBSUB", "NUMSUB", &channel]).lines().last() == Some("0"),
    )
    .await;
    assert_eq!(
        server.cli(&["PUBSUB", "NUMSUB", "other"]).lines().last(),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_is_back_after_a_restart_with_nothing_subscribed() {
    let mut server = RedisServer::start();
    let cache = suite::build(suite::redis(&server.url()).timeout(suite::TIMEOUT)).await;
    let bus = cache.events();
    let channel = unique_prefix("nothing-subscribed");
    drop(bus.subscribe::<Order>(&[&channel]).await.unwrap());
    tests::eventually(WAIT, "unsubscribed", async || {
        server.cli(&["PUBSUB", "NUMSUB", &channel]).lines().last() == Some("0")
    })
    .await;

    server.kill();
    tests::eventually(WAIT, "the loss noticed", async || {
        cache.stats().events.connection == EventConnection::Disconnected
    })
    .await;
    server.restart();
    // No subscription to confirm: the state still comes back.
    tests::eventually(WAIT, "connected again", async || {
        cache.stats().events.connection == EventConnection::Connected
    })
    .await;
    let mut orders = bus.subscribe::<Order>(&[&channel]).await.unwrap();
    bus.publish(&channel, &order(1)).await.unwrap();
    assert_eq!(next(&mut orders).await.unwrap(), order(1));
}

#[tokio::test]
async fn the_bus_never_shows_the_password() {
    let cache = suite::build(suite::redis("redis://user:s3cret-pw@127.0.0.1:1/0")).await;
    let bus = cache.events();
    let shown = format!("{bus:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    // Nothing listens on port 1: the subscribe fails, without the password.
    let err = bus.subscribe::<u64>(&["c"]).await.unwrap_err();
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret-pw"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_subscriptions_come_back_after_their_primary_restarts_with_a_gap() {
    // A cluster of its own (the shared one is never killed), with a node
    // timeout long enough that the primary is back before a failover.
    let mut cluster = tests::RedisCluster::start_with_node_timeout(Duration::from_secs(60));
    let cache = suite::build(suite::cluster(cluster.urls()).timeout(suite::TIMEOUT)).await;
    let bus = cache.events();
    let channel = unique_prefix("cluster-restart");
    let mut orders = bus.subscribe::<Order>(&[&channel]).await.unwrap();
    bus.publish(&channel, &order(1)).await.unwrap();
    assert_eq!(next(&mut orders).await.unwrap(), order(1));

    let primary = cluster.primary_for_key(&channel);
    cluster.node_mut(primary).kill();
    tests::eventually(WAIT, "the loss noticed", async || {
        cache.stats().events.connection == EventConnection::Disconnected
    })
    .await;
    cluster.node_mut(primary).restart();
    let restarted = Instant::now();
    tests::eventually(WAIT, "resubscribed", async || {
        cache.stats().events.reconnects == 1
    })
    .await;
    eprintln!(
        "subscription back {:?} after the restart",
        restarted.elapsed()
    );
    // The gap is reported once the subscription is back on the primary
    // that serves the channel, and only then: a publish there (by another
    // program, on its own connection) reaches it at once.
    let json = serde_json::to_string(&order(2)).unwrap();
    let reached = RedisServer::cli_on(primary, &["SPUBLISH", &channel, &json]);
    assert_eq!(reached.trim(), "1", "the first publish after the gap");
    match next(&mut orders).await {
        Err(EventError::Gap { disconnected, .. }) => assert!(disconnected),
        other => panic!("expected a gap first, got {other:?}"),
    }
    assert_eq!(next(&mut orders).await.unwrap(), order(2));
    // Through the bus too (its publishing connection may still be
    // reconnecting), received once: no second subscription, on the
    // replica, that the shard would deliver it to as well.
    loop {
        match bus.publish(&channel, &order(3)).await {
            Ok(_) => break,
            Err(err) => assert!(restarted.elapsed() < WAIT, "publish failing: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(next(&mut orders).await.unwrap(), order(3));
    let replica = cluster.replica_of(primary).expect("the primary's replica");
    let on_replica = RedisServer::cli_on(replica, &["PUBSUB", "SHARDNUMSUB", &channel]);
    assert_eq!(on_replica.lines().last(), Some("0"), "{on_replica}");
    let stats = cache.stats().events;
    assert_eq!((stats.reconnects, stats.gaps), (1, 1));
}

/// The bus's connection to the primary of a channel's shard is cut, and
/// the primary refuses it new connections (its password changed) while its
/// replica still serves the shard: no gap may be reported (the subscription
/// is not back where the shard's publishes are counted), nor any second
/// subscription left on the replica. Once the bus may connect again, the
/// gap comes, and a publish on the primary reaches the subscription once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_subscription_is_confirmed_on_its_primary_not_its_replica() {
    let cluster = tests::RedisCluster::start_with_node_timeout(Duration::from_secs(60));
    let cache = suite::build(suite::cluster(cluster.urls()).timeout(suite::TIMEOUT)).await;
    let bus = cache.events();
    let channel = unique_prefix("replica-fallback");
    let mut orders = bus.subscribe::<Order>(&[&channel]).await.unwrap();
    bus.publish(&channel, &order(1)).await.unwrap();
    assert_eq!(next(&mut orders).await.unwrap(), order(1));
    let primary = cluster.primary_for_key(&channel);
    let replica = cluster.replica_of(primary).expect("the primary's replica");
    let admin = |args: &[&str]| {
        let mut with_auth = vec!["--no-auth-warning", "-a", "refused-pw"];
        with_auth.extend_from_slice(args);
        RedisServer::cli_on(primary, &with_auth)
    };
    let shard_subscribers = |port: u16| {
        let reply = RedisServer::cli_on(port, &["PUBSUB", "SHARDNUMSUB", &channel]);
        reply.lines().last().unwrap_or_default().trim().to_string()
    };

    // Existing connections stay logged in; new ones are refused.
    let set = RedisServer::cli_on(
        primary,
        &["ACL", "SETUSER", "default", "resetpass", ">refused-pw"],
    );
    assert_eq!(set.trim(), "OK");
    assert_ne!(admin(&["CLIENT", "KILL", "TYPE", "pubsub"]).trim(), "0");
    tests::eventually(WAIT, "the loss noticed", async || {
        cache.stats().events.connection == EventConnection::Disconnected
    })
    .await;
    // The bus tries again every 200 ms: fifteen rounds. (Before, a round
    // that the driver happened to send to the replica, which serves sharded
    // pub/sub too, reported the gap: in about one run in three.)
    let refused = Instant::now();
    while refused.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            cache.stats().events.reconnects,
            0,
            "a gap reported while the primary refuses the bus"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shard_subscribers(replica), "0", "subscribed on the replica");

    assert_eq!(admin(&["ACL", "SETUSER", "default", "nopass"]).trim(), "OK");
    tests::eventually(WAIT, "resubscribed", async || {
        cache.stats().events.reconnects == 1
    })
    .await;
    let json = serde_json::to_string(&order(2)).unwrap();
    let reached = RedisServer::cli_on(primary, &["SPUBLISH", &channel, &json]);
    assert_eq!(reached.trim(), "1", "the first publish after the gap");
    match next(&mut orders).await {
        Err(EventError::Gap { disconnected, .. }) => assert!(disconnected),
        other => panic!("expected a gap first, got {other:?}"),
    }
    assert_eq!(next(&mut orders).await.unwrap(), order(2));
    assert_eq!(shard_subscribers(replica), "0", "subscribed on the replica");
}

/// A subscribe made while the bus's connection to its channel's primary is
/// down (the primary's proxy refuses connections, its replica still serves
/// the shard) is never made on the replica. Routed by slot, the driver sent
/// the `SSUBSCRIBE` to the replica, and once it resubscribed the primary by
/// itself every message came twice (the shard delivers on both). The
/// subscribe waits for the primary instead, within the handle's timeout;
/// once the primary is back it is made there, and each message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_while_its_primary_is_away_is_never_made_on_the_replica() {
    let cluster = tests::proxy::ProxiedCluster::start(
        tests::RedisCluster::start_with_node_timeout(Duration::from_secs(60)),
    )
    .await;
    let cache = suite::build(suite::cluster(cluster.urls()).timeout(suite::TIMEOUT)).await;
    let bus = cache.events();
    // One shard for both channels: the first connects the bus.
    let tag = unique_prefix("replica-subscribe");
    let (first, second) = (format!("{{{tag}}}:first"), format!("{{{tag}}}:second"));
    let _first = bus.subscribe::<Order>(&[&first]).await.unwrap();
    let primary = cluster.cluster.primary_for_key(&second);
    let replica = cluster
        .cluster
        .replica_of(primary)
        .expect("the primary's replica");
    let shard_subscribers = |port: u16| {
        let reply = RedisServer::cli_on(port, &["PUBSUB", "SHARDNUMSUB", &second]);
        reply.lines().last().unwrap_or_default().trim().to_string()
    };

    cluster
        .proxy_of(primary)
        .apply(tests::proxy::Fault::Refuse)
        .await;
    tests::eventually(WAIT, "the loss noticed", async || {
        cache.stats().events.connection == EventConnection::Disconnected
    })
    .await;
    let refused = bus.subscribe::<Order>(&[&second]).await;
    // One the driver sent to the replica is undone there at once (by a task
    // of its own, which the subscribe's timeout may leave running).
    tests::eventually(WAIT, "no subscription left on the replica", async || {
        shard_subscribers(replica) == "0"
    })
    .await;
    assert!(
        matches!(refused, Err(EventError::Cache(ref err)) if err.kind() == cache_core::ErrorKind::Timeout),
        "a subscribe while the primary is away: {refused:?}"
    );

    cluster.proxy_of(primary).heal().await;
    tests::eventually(WAIT, "resubscribed", async || {
        cache.stats().events.reconnects == 1
    })
    .await;
    let mut orders = bus.subscribe::<Order>(&[&second]).await.unwrap();
    for id in [2, 3] {
        let json = serde_json::to_string(&order(id)).unwrap();
        let reached = RedisServer::cli_on(primary, &["SPUBLISH", &second, &json]);
        assert_eq!(reached.trim(), "1", "a publish on the primary");
    }
    assert_eq!(next(&mut orders).await.unwrap(), order(2));
    assert_eq!(next(&mut orders).await.unwrap(), order(3), "received twice");
    assert_eq!(shard_subscribers(replica), "0", "subscribed on the replica");
}
