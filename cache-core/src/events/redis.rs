//! The bus's one pub/sub connection to Redis: RESP3, so that messages
//! arrive as pushes beside ordinary replies, with redis-rs's own reconnect
//! and automatic resubscription. Standalone: a `ConnectionManager` with a
//! push sender and `set_automatic_resubscription`; Cluster: the async
//! cluster client with a push sender, which resubscribes by itself, and
//! sharded pub/sub (`SSUBSCRIBE`), one channel per command since each
//! channel lives in the slot of its name.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{PushInfo, PushKind, Value};

use super::hub::{Hub, Message, Payload, Topic};
use crate::config::{Backend, CacheConfig, RedisEndpoint};
use crate::error::{Error, Result};
use crate::store::redis as store;

/// The pub/sub connection of one bus; cheap to clone.
#[derive(Clone)]
pub(crate) enum PubSub {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl PubSub {
    /// Lazily connected: the first subscribe connects. Pushes go straight
    /// into `hub` (no channel in between: the hub's queues are the buffer).
    pub(crate) fn open(config: &CacheConfig, hub: &Arc<Hub>) -> Result<PubSub> {
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
        match &config.backend {
            Backend::Redis(endpoint) => {
                let client = store::resp3(store::client(endpoint, config)?)
                    .map_err(store::driver_config_error)?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(None)
                    // Reconnects quickly after a restart: the backoff stays
                    // under half a second; after these, the bus pokes it.
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(400))
                    .set_number_of_retries(10)
                    .set_push_sender(sender)
                    .set_automatic_resubscription();
                let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map_err(store::driver_config_error)?;
                Ok(PubSub::Standalone(manager))
            }
            Backend::Cluster(nodes) => {
                let urls = nodes.iter().map(resp3_url).collect::<Result<Vec<_>>>()?;
                let client = store::cluster_builder(urls, config)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(sender)
                    .build()
                    .map_err(store::driver_config_error)?;
                Ok(PubSub::Cluster(
                    client.get_pending_async_connection_with_config(store::cluster_config(config)),
                ))
            }
            Backend::Memory => Err(Error::invalid(
                "events",
                "the in-memory backend has no pub/sub connection",
            )),
        }
    }

    /// Subscribes the server side to `topics`, confirmed by the server.
    pub(crate) async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        let (channels, patterns) = split(topics);
        match self.clone() {
            PubSub::Standalone(mut conn) => {
                if !channels.is_empty() {
                    conn.subscribe(&channels).await?;
                }
                if !patterns.is_empty() {
                    conn.psubscribe(&patterns).await?;
                }
            }
            PubSub::Cluster(conn) => {
                for channel in channels {
                    subscribe_on_primary(conn.clone(), channel).await?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        let (channels, patterns) = split(topics);
        match self.clone() {
            PubSub::Standalone(mut conn) => {
                if !channels.is_empty() {
                    conn.unsubscribe(&channels).await?;
                }
                if !patterns.is_empty() {
                    conn.punsubscribe(&patterns).await?;
                }
            }
            PubSub::Cluster(mut conn) => {
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
    pub(crate) async fn resubscribed(&self, topics: &[Topic]) -> bool {
        match self {
            PubSub::Standalone(_) => self.ping().await.is_ok(),
            PubSub::Cluster(conn) => {
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
            PubSub::Standalone(mut conn) => {
                let _: Value = cmd.query_async(&mut conn).await?;
            }
            PubSub::Cluster(mut conn) => {
                conn.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await?;
            }
        }
        Ok(())
    }
}

/// How often [`subscribe_on_primary`] looks again for the connection to
/// a channel's primary while the driver has none up.
const PRIMARY_RETRY: Duration = Duration::from_millis(50);

/// Subscribes `channel` on the primary that serves its slot, waiting (the
/// caller bounds it) while the driver has no connection up to that primary.
/// Never on its replica: sharded pub/sub is served there too, and a
/// subscription left there doubles every message once the driver
/// resubscribes the primary (see [`ssubscribe_at`]).
async fn subscribe_on_primary(mut conn: ClusterConnection, channel: &str) -> Result<()> {
    loop {
        match primary_connection(&mut conn, channel).await {
            Some(Probe::Connection {
                address: Some(primary),
                ..
            }) => return Ok(ssubscribe_at(&mut conn, channel, &primary).await?),
            // Nothing to tell the primary by: routed as the driver routes it.
            Some(_) => return Ok(conn.ssubscribe(channel).await?),
            None => tokio::time::sleep(PRIMARY_RETRY).await,
        }
    }
}

/// `SSUBSCRIBE channel` on the driver's connection to `primary` and no
/// other. Routed by slot, the driver sends it to the slot's replica while
/// that primary's connection is down, and so does its retry of a
/// subscribe whose connection broke before the confirmation; routed by
/// address, it fails instead (and its retries stay on that address).
async fn ssubscribe_at(
    conn: &mut ClusterConnection,
    channel: &str,
    (host, port): &(String, u16),
) -> redis::RedisResult<()> {
    let mut ssubscribe = redis::cmd("SSUBSCRIBE");
    ssubscribe.arg(channel);
    let route = SingleNodeRoutingInfo::ByAddress {
        host: host.clone(),
        port: *port,
    };
    conn.route_command(ssubscribe, RoutingInfo::SingleNode(route))
        .await?
        .extract_error()?;
    Ok(())
}

/// Subscribes `channel` again and confirms it on the connection the
/// cluster client keeps to the primary serving the channel's slot, the node
/// whose publishes count it. The driver resubscribes a reconnected node by
/// itself, but cannot say when; and an `SSUBSCRIBE` sent while that
/// primary's connection is down goes to its replica (sharded pub/sub is
/// served there too): confirmed early, before the primary is back, and
/// left behind as a second subscription once it is (every message twice).
/// So the `SSUBSCRIBE` is sent only while the primary's connection is up,
/// to that connection only (by address, see [`ssubscribe_at`]), and counts
/// only if that connection is the same one before and after it.
async fn confirm_on_primary(mut conn: ClusterConnection, channel: &str) -> bool {
    let Some(before) = primary_connection(&mut conn, channel).await else {
        return false;
    };
    let subscribed = match &before {
        Probe::Connection {
            address: Some(primary),
            ..
        } => ssubscribe_at(&mut conn, channel, primary).await,
        _ => conn.ssubscribe(channel).await,
    };
    if subscribed.is_err() {
        return false;
    }
    match (before, primary_connection(&mut conn, channel).await) {
        (Probe::Connection { id, .. }, Some(Probe::Connection { id: after, .. })) => id == after,
        // The server refuses the probe's commands (an ACL): the confirmed
        // `SSUBSCRIBE` is all there is to go by.
        (Probe::Refused, Some(Probe::Refused)) => true,
        _ => false,
    }
}

/// What [`primary_connection`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// The server-side id of the client's connection to the slot's primary,
    /// and the primary's address as the driver names its connection (from
    /// `CLUSTER SLOTS`, as the driver reads it), unless the node left it
    /// out (an empty or wildcard address: the driver fills in one of its own).
    Connection {
        id: u64,
        address: Option<(String, u16)>,
    },
    /// The probe itself was refused; nothing can be told.
    Refused,
}

/// The id of the connection the cluster client uses for the primary that
/// serves `channel`'s slot, or `None` when it has none up. One pipeline,
/// routed as the driver routes to that primary, so answered on one
/// connection: the answering node's id, the connection's id, the slot and
/// the node's view of who serves it. When the driver has no connection to
/// the primary it sends the pipeline to another node, which says so (its
/// id is not the slot's primary's), without a redirect to follow or a
/// retry to wait for.
async fn primary_connection(conn: &mut ClusterConnection, channel: &str) -> Option<Probe> {
    let mut probe = redis::pipe();
    probe
        .cmd("CLUSTER")
        .arg("MYID")
        .cmd("CLIENT")
        .arg("ID")
        .cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(channel)
        .cmd("CLUSTER")
        .arg("SLOTS");
    let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(channel, SlotAddr::Master));
    let replies = match conn.route_pipeline(probe, 0, 4, route).await {
        Ok(replies) => replies,
        Err(err) if err.code() == Some("NOPERM") => return Some(Probe::Refused),
        Err(_) => return None,
    };
    if replies
        .iter()
        .any(|reply| matches!(reply, Value::ServerError(err) if err.code() == "NOPERM"))
    {
        return Some(Probe::Refused);
    }
    let [node, Value::Int(id), Value::Int(slot), Value::Array(slots)] = replies.as_slice() else {
        return None;
    };
    let node = text(node)?;
    let primary = slots.iter().find_map(|range| slot_primary(range, *slot))?;
    if text(primary.get(2)?)? != node {
        return None;
    }
    let address = match primary {
        [host, Value::Int(port), ..] => text(host)
            .filter(|host| !matches!(*host, "" | "?" | "0.0.0.0" | "::"))
            .zip(u16::try_from(*port).ok())
            .map(|(host, port)| (host.to_string(), port)),
        _ => None,
    };
    u64::try_from(*id)
        .ok()
        .map(|id| Probe::Connection { id, address })
}

/// The primary (`[ip, port, id, ...]`) of one `CLUSTER SLOTS` range
/// (`[start, end, primary, replicas...]`) if it holds `slot`.
fn slot_primary(range: &Value, slot: i64) -> Option<&[Value]> {
    let Value::Array(range) = range else {
        return None;
    };
    let [
        Value::Int(start),
        Value::Int(end),
        Value::Array(primary),
        ..,
    ] = range.as_slice()
    else {
        return None;
    };
    if !(*start..=*end).contains(&slot) {
        return None;
    }
    Some(primary)
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

fn resp3_url(endpoint: &RedisEndpoint) -> Result<url::Url> {
    let mut url = endpoint.connection_url()?;
    url.query_pairs_mut().append_pair("protocol", "resp3");
    Ok(url)
}
