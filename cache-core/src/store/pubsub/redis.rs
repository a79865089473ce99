//! The Redis store's pub/sub: the server side of its listeners (their
//! topics subscribed and confirmed, unsubscribed once unused, restored
//! after a loss) over one pub/sub connection to Redis: RESP3, so that
//! messages arrive as pushes beside ordinary replies, with redis-rs's own
//! reconnect and automatic resubscription. Standalone: a
//! `ConnectionManager` with a push sender and
//! `set_automatic_resubscription`; Cluster: the async cluster client with a
//! push sender, which resubscribes by itself, and sharded pub/sub
//! (`SSUBSCRIBE`), one channel per command since each channel lives in the
//! slot of its name. Publishing is the store's own `PUBLISH` (`SPUBLISH`).

use std::sync::Arc;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{PushInfo, PushKind, Value};

use super::{Hub, Listener, Message, Payload, PubSub, Topic};
use crate::config::{Backend, CacheConfig};
use crate::error::{Error, Result};
use crate::stats::EventStats;
use crate::store::connect;

/// The pub/sub connection of one store (opened in `store/connect.rs`, as
/// every Redis connection); cheap to clone.
use connect::PubSubConnection as Connection;

/// Bound on an unsubscribe, which holds up the store's other (un)subscribes.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a lost connection is poked while Redis stays away, once the
/// driver's own reconnect attempts are spent (a command makes it try again).
const REVIVE_INTERVAL: Duration = Duration::from_millis(200);

/// What the pub/sub of one Redis store keeps: the hub, the connection
/// (opened by the first subscribe). Held by the store and by every
/// listener; it holds no store, so nothing keeps a dropped handle alive.
pub(crate) struct RedisPubSub {
    hub: Arc<Hub>,
    connection: tokio::sync::OnceCell<Connection>,
    /// Serialises the server-side subscribe and unsubscribe commands with
    /// the reference counts they follow, so that an unsubscribe of a channel
    /// dropped a moment ago never undoes a subscribe of it that came after.
    commands: tokio::sync::Mutex<()>,
    /// Topics whose unsubscribe failed (the connection was down): the
    /// driver resubscribes them on reconnect, so they are unsubscribed again then.
    unreleased: std::sync::Mutex<Vec<Topic>>,
    /// What the connection is opened from: the endpoints, the size cap
    /// applied where a payload arrives, the timeouts.
    config: CacheConfig,
}

impl RedisPubSub {
    /// Opens nothing yet: the first subscribe connects.
    pub(crate) fn new(config: &CacheConfig) -> RedisPubSub {
        RedisPubSub {
            hub: Arc::default(),
            connection: tokio::sync::OnceCell::new(),
            commands: tokio::sync::Mutex::new(()),
            unreleased: std::sync::Mutex::default(),
            config: config.clone(),
        }
    }

    /// What [`Cache::stats`](crate::Cache::stats) reports of the bus.
    pub(crate) fn stats(&self) -> EventStats {
        self.hub.stats()
    }

    /// Counts a message the store published.
    pub(crate) fn published(&self) {
        self.hub
            .counters
            .published
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A listener to `topics`, once the server has confirmed them: within
    /// the handle's timeout, or the connect timeout when longer (the first
    /// subscribe connects).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        topics: Vec<Topic>,
        capacity: usize,
    ) -> Result<Listener> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let connection = Connection::open(&self.config, &self.hub)?;
                // The reviver: ends when the store's pub/sub does.
                tokio::spawn(revive(
                    Arc::downgrade(self),
                    self.hub.clone(),
                    connection.clone(),
                    self.config.timeout,
                ));
                Ok::<_, Error>(connection)
            })
            .await?;
        let _order = self.commands.lock().await;
        // Registered before the server confirms: nothing published after
        // the confirmation can miss the queue.
        let (listener, new) = Listener::register(self.clone(), topics, capacity);
        if !new.is_empty() {
            let timeout = self.config.timeout.max(self.config.connect_timeout);
            match tokio::time::timeout(timeout, connection.subscribe(&new)).await {
                Ok(Ok(())) => {}
                // Dropping the listener releases what did get subscribed.
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(Error::Timeout(timeout)),
            }
        }
        self.hub.connected();
        Ok(listener)
    }

    /// Unsubscribes the server from `topics` nobody listens to any more.
    async fn unsubscribe_unused(self: Arc<Self>, topics: Vec<Topic>) {
        let Some(connection) = self.connection.get() else {
            return;
        };
        let _order = self.commands.lock().await;
        // Someone may have subscribed again since the drop.
        let unused = self.hub.unused(topics);
        if unused.is_empty() {
            return;
        }
        let unsubscribe = tokio::time::timeout(RELEASE_TIMEOUT, connection.unsubscribe(&unused));
        let result = match unsubscribe.await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(RELEASE_TIMEOUT)),
        };
        if let Err(err) = result {
            // The connection is down: the driver will resubscribe these when
            // it is back; they are unsubscribed again then.
            tracing::debug!(%err, "event bus: unsubscribe failed; retried after the reconnect");
            crate::sync::lock(&self.unreleased).extend(unused);
        }
    }
}

impl PubSub for RedisPubSub {
    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn release(self: Arc<Self>, topics: Vec<Topic>) {
        if self.connection.get().is_none() {
            return;
        }
        // A drop cannot wait: the unsubscribe runs on the runtime. Outside
        // one, the connection goes with the store's pub/sub, and its
        // subscriptions with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.unsubscribe_unused(topics));
        }
    }
}

impl Drop for RedisPubSub {
    fn drop(&mut self) {
        self.hub.close();
    }
}

/// Runs for the life of the store's pub/sub: after each loss of the
/// connection, pings until the connection is back. The driver reconnects
/// (and resubscribes) by itself after a loss, but gives up after its
/// retries; a command is what makes it start again, so a Redis that stays
/// down for a while is still found once it is back, without the
/// application doing anything.
async fn revive(
    pubsub: std::sync::Weak<RedisPubSub>,
    hub: Arc<Hub>,
    connection: Connection,
    timeout: Duration,
) {
    loop {
        hub.lost.notified().await;
        let mut interval = tokio::time::interval(REVIVE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while hub.is_disconnected() && !hub.is_closed() {
            interval.tick().await;
            let Some(pubsub) = pubsub.upgrade() else {
                return;
            };
            let resubscribed = {
                // Under the lock: the topics are those the server must have.
                let _order = pubsub.commands.lock().await;
                let topics = hub.topics();
                tokio::time::timeout(timeout, connection.resubscribed(&topics)).await
            };
            if let Ok(true) = resubscribed {
                // Usually the confirmations said so already (then this is a
                // no-op); with nothing subscribed none would.
                hub.confirmed();
            }
        }
        if hub.is_closed() {
            return;
        }
        let Some(pubsub) = pubsub.upgrade() else {
            return;
        };
        let unreleased = std::mem::take(&mut *crate::sync::lock(&pubsub.unreleased));
        if !unreleased.is_empty() {
            pubsub.unsubscribe_unused(unreleased).await;
        }
    }
}

impl Connection {
    /// Lazily connected: the first subscribe connects. Pushes go straight
    /// into `hub` (no channel in between: the hub's queues are the buffer).
    fn open(config: &CacheConfig, hub: &Arc<Hub>) -> Result<Connection> {
        // One connection: a subscription confirmed after a loss is the
        // resubscription of everything. A cluster has one connection per
        // node and the pushes do not say which: there the bus confirms
        // every channel itself before it reports the loss over (see `revive`).
        let one_connection = matches!(config.backend, Backend::Redis(_));
        let max_bytes = config.max_value_bytes;
        let sender = {
            let hub = Arc::clone(hub);
            move |push: PushInfo| -> std::result::Result<(), std::convert::Infallible> {
                on_push(&hub, push, one_connection, max_bytes);
                Ok(())
            }
        };
        connect::pubsub(config, sender)
    }

    /// Subscribes the server side to `topics`, confirmed by the server.
    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        let (channels, patterns) = split(topics);
        match self.clone() {
            Connection::Standalone(mut conn) => {
                if !channels.is_empty() {
                    conn.subscribe(&channels).await?;
                }
                if !patterns.is_empty() {
                    conn.psubscribe(&patterns).await?;
                }
            }
            Connection::Cluster(conn) => {
                for channel in channels {
                    subscribe_on_primary(conn.clone(), channel).await?;
                }
            }
        }
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        let (channels, patterns) = split(topics);
        match self.clone() {
            Connection::Standalone(mut conn) => {
                if !channels.is_empty() {
                    conn.unsubscribe(&channels).await?;
                }
                if !patterns.is_empty() {
                    conn.punsubscribe(&patterns).await?;
                }
            }
            Connection::Cluster(mut conn) => {
                for channel in channels {
                    conn.sunsubscribe(channel).await?;
                }
            }
        }
        Ok(())
    }

    /// After a loss: whether every subscription is known to be back, so
    /// that a gap reported now can be followed by no silent loss. A gap
    /// reported too early would let a subscriber resynchronise before its
    /// subscription is back and then miss what is published meanwhile; one
    /// reported late (after a few messages of the new connection) is safe.
    ///
    /// Standalone: an answered PING, since the connection manager runs its
    /// resubscription before it hands out the new connection. Cluster: each
    /// channel confirmed on the connection to the primary that serves its
    /// slot (see [`confirm_on_primary`]).
    async fn resubscribed(&self, topics: &[Topic]) -> bool {
        match self {
            Connection::Standalone(_) => self.ping().await.is_ok(),
            Connection::Cluster(conn) => {
                if self.ping().await.is_err() {
                    return false;
                }
                let (channels, _) = split(topics);
                for channel in channels {
                    if !confirm_on_primary(conn.clone(), channel).await {
                        return false;
                    }
                }
                true
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        let cmd = redis::cmd("PING");
        match self.clone() {
            Connection::Standalone(mut conn) => {
                let _: Value = cmd.query_async(&mut conn).await?;
            }
            Connection::Cluster(mut conn) => {
                conn.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await?;
            }
        }
        Ok(())
    }
}

/// How often [`subscribe_on_primary`] tries again while the driver has no
/// connection up to the channel's primary.
const PRIMARY_RETRY: Duration = Duration::from_millis(50);

/// Subscribes `channel` on the primary that serves its slot, trying again
/// (the caller bounds it) while the driver has no connection up to that
/// primary. Never left on its replica (see [`ssubscribe_on_primary`]).
async fn subscribe_on_primary(mut conn: ClusterConnection, channel: &str) -> Result<()> {
    loop {
        match ssubscribe_on_primary(&conn, channel).await {
            Some(Landed::Primary) => return Ok(()),
            // Nothing to tell the node by: as the driver routes it.
            Some(Landed::Refused) => return Ok(conn.ssubscribe(channel).await?),
            None => tokio::time::sleep(PRIMARY_RETRY).await,
        }
    }
}

/// Subscribes `channel` again and confirms it on the connection the
/// cluster client keeps to the primary serving the channel's slot, the node
/// whose publishes count it. The driver resubscribes a reconnected node by
/// itself, but cannot say when, nor which node a push came from.
async fn confirm_on_primary(mut conn: ClusterConnection, channel: &str) -> bool {
    match ssubscribe_on_primary(&conn, channel).await {
        Some(Landed::Primary) => true,
        // The server refuses the probe's commands (an ACL): a confirmed
        // `SSUBSCRIBE` is all there is to go by.
        Some(Landed::Refused) => conn.ssubscribe(channel).await.is_ok(),
        None => false,
    }
}

/// Where [`ssubscribe_on_primary`]'s `SSUBSCRIBE` was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    /// On the driver's connection to the primary serving the slot.
    Primary,
    /// The probe's commands were refused (an ACL): nothing can be told.
    Refused,
}

/// `SSUBSCRIBE channel` in one pipeline with the commands that say where it
/// ran: the answering node's id, the slot and the node's view of who serves
/// it, all answered on the one connection the pipeline went to. Routed to
/// the slot's primary; but while the driver has no connection up to it, the
/// driver sends it to another node, and the slot's replica confirms it
/// (sharded pub/sub is served there too; another primary redirects it): a
/// subscription there would be confirmed before the primary is back, and
/// left behind as a second one once the driver resubscribes the primary
/// (every message twice). So one made on a replica is undone at once, on
/// that replica, and counts as none (`None`, as when nothing was confirmed).
///
/// Run as a task of its own: a caller that stops waiting (its timeout) must
/// not stop it between a confirmation on a replica and its undoing.
async fn ssubscribe_on_primary(conn: &ClusterConnection, channel: &str) -> Option<Landed> {
    let (conn, channel) = (conn.clone(), channel.to_owned());
    tokio::spawn(async move { ssubscribe_probed(conn, &channel).await })
        .await
        .ok()
        .flatten()
}

async fn ssubscribe_probed(mut conn: ClusterConnection, channel: &str) -> Option<Landed> {
    let mut probe = redis::pipe();
    probe
        .cmd("CLUSTER")
        .arg("MYID")
        .cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(channel)
        .cmd("CLUSTER")
        .arg("SLOTS")
        .cmd("SSUBSCRIBE")
        .arg(channel);
    let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(channel, SlotAddr::Master));
    let replies = match conn.route_pipeline(probe, 0, 4, route).await {
        Ok(replies) => replies,
        Err(err) if err.code() == Some("NOPERM") => return Some(Landed::Refused),
        Err(_) => return None,
    };
    if replies
        .iter()
        .any(|reply| matches!(reply, Value::ServerError(err) if err.code() == "NOPERM"))
    {
        return Some(Landed::Refused);
    }
    let [node, Value::Int(slot), Value::Array(slots), subscribed] = replies.as_slice() else {
        return None;
    };
    if !matches!(
        subscribed,
        Value::Push {
            kind: PushKind::SSubscribe,
            ..
        }
    ) {
        return None;
    }
    let node = text(node)?;
    let range = slots.iter().find_map(|range| slot_range(range, *slot))?;
    let mut served_by = range.iter().skip(2).filter_map(|node| match node {
        Value::Array(node) => Some(node.as_slice()),
        _ => None,
    });
    if served_by.next().and_then(|primary| text(primary.get(2)?)) == Some(node) {
        return Some(Landed::Primary);
    }
    // A replica of the slot confirmed it: undone there, by address, as
    // the driver names its connection to it (from `CLUSTER SLOTS`).
    if let Some((host, port)) = served_by
        .find(|replica| replica.get(2).and_then(text) == Some(node))
        .and_then(address)
    {
        let mut sunsubscribe = redis::cmd("SUNSUBSCRIBE");
        sunsubscribe.arg(channel);
        let replica = SingleNodeRoutingInfo::ByAddress { host, port };
        if let Err(err) = conn
            .route_command(sunsubscribe, RoutingInfo::SingleNode(replica))
            .await
        {
            // Its connection is gone, and the subscription with it.
            tracing::debug!(%err, "event bus: undoing a subscription on a replica failed");
        }
    }
    None
}

/// The address of one node of a `CLUSTER SLOTS` range (`[ip, port, id,
/// ...]`) as the driver names its connection, unless the node left it out
/// (an empty or wildcard address: the driver fills in one of its own).
fn address(node: &[Value]) -> Option<(String, u16)> {
    match node {
        [host, Value::Int(port), ..] => text(host)
            .filter(|host| !matches!(*host, "" | "?" | "0.0.0.0" | "::"))
            .zip(u16::try_from(*port).ok())
            .map(|(host, port)| (host.to_string(), port)),
        _ => None,
    }
}

/// One `CLUSTER SLOTS` range (`[start, end, primary, replicas...]`, each
/// node `[ip, port, id, ...]`) if it holds `slot`.
fn slot_range(range: &Value, slot: i64) -> Option<&[Value]> {
    let Value::Array(range) = range else {
        return None;
    };
    let [Value::Int(start), Value::Int(end), ..] = range.as_slice() else {
        return None;
    };
    (*start..=*end).contains(&slot).then_some(range.as_slice())
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

fn split(topics: &[Topic]) -> (Vec<&str>, Vec<&str>) {
    let mut channels = Vec::new();
    let mut patterns = Vec::new();
    for topic in topics {
        match topic {
            Topic::Channel(channel) => channels.push(channel.as_str()),
            Topic::Pattern(pattern) => patterns.push(pattern.as_str()),
        }
    }
    (channels, patterns)
}

/// Called by the driver for every push, on its connection task: never
/// blocks. A payload over `max_bytes` is dropped here, before any queue:
/// the subscriptions get its size only, so that a publisher of huge
/// messages cannot fill idle subscriptions' buffers with them.
fn on_push(hub: &Hub, push: PushInfo, one_connection: bool, max_bytes: usize) {
    let text = |value: Option<&Value>| -> Option<Arc<str>> {
        match value? {
            Value::BulkString(bytes) => Some(Arc::from(String::from_utf8_lossy(bytes))),
            Value::SimpleString(text) => Some(Arc::from(text.as_str())),
            _ => None,
        }
    };
    let bytes = |value: Option<&Value>| -> Option<Payload> {
        let bytes = match value? {
            Value::BulkString(bytes) => bytes.as_slice(),
            Value::SimpleString(text) => text.as_bytes(),
            _ => return None,
        };
        Some(if bytes.len() > max_bytes {
            Payload::Oversized(bytes.len())
        } else {
            Payload::Bytes(Arc::from(bytes))
        })
    };
    match push.kind {
        PushKind::Message | PushKind::SMessage => {
            if let (Some(channel), Some(payload)) =
                (text(push.data.first()), bytes(push.data.get(1)))
            {
                let topic = Topic::Channel(channel.to_string());
                hub.deliver(&topic, &Message { channel, payload });
            }
        }
        PushKind::PMessage => {
            if let (Some(pattern), Some(channel), Some(payload)) = (
                text(push.data.first()),
                text(push.data.get(1)),
                bytes(push.data.get(2)),
            ) {
                let topic = Topic::Pattern(pattern.to_string());
                hub.deliver(&topic, &Message { channel, payload });
            }
        }
        // The guards change the hub's state: each logs only a change.
        PushKind::Disconnection if hub.disconnected() => {
            tracing::warn!(
                "event bus: lost the Redis pub/sub connection; reconnecting, subscribers will get a Gap"
            );
        }
        PushKind::Subscribe | PushKind::PSubscribe | PushKind::SSubscribe
            if one_connection && hub.confirmed() =>
        {
            tracing::info!(
                "event bus: the Redis pub/sub connection is back, subscriptions restored"
            );
        }
        _ => {}
    }
}
