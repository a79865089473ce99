//! The tracking connections of a local tier: one RESP3 connection per Redis
//! primary with `CLIENT TRACKING ON BCAST PREFIX {namespace}:`, kept up by
//! one background task per handle.
//!
//! Broadcasting mode rather than the default mode: the default mode tracks
//! the keys *a connection read*, so the handle's reads would have to go
//! through the tracking connection, or their connection would need
//! `CLIENT TRACKING ON REDIRECT <id>` again after every reconnect of either
//! connection (the cluster client reconnects by itself, unseen). Broadcast
//! needs only the tracking connection itself, costs Redis no memory per key
//! read, and its price, one push per write under the prefix whether cached
//! here or not, is what a namespace bounds.
//!
//! The driver reconnects the data connections by itself but cannot say when
//! (or re-enable tracking), so this connection is supervised here: connect,
//! enable tracking, open the tier; on a disconnection push, a failed
//! heartbeat or (cluster) a change of primaries, close the tier and start
//! over after a backoff.
//!
//! Some changes reach no tracking connection: `SWAPDB` puts another
//! database's keys under the connection's database and announces nothing
//! (Redis 7.0). So on a standalone server the tier also keeps a marker of the
//! database's identity, `{namespace}:__local:db-identity`: a random value
//! that the first tier writes (`SET NX`, no TTL) and every tier reads back as
//! its heartbeat. A value other than the one read when tracking came up, or
//! none, means the database under the connection may have changed: the tier
//! takes the current identity (writing a fresh one if there is none) and is
//! emptied. A cluster has one database per node and refuses `SWAPDB`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::LocalTier;
use crate::store::connect;

/// The database-identity marker's key, after the tracked prefix.
const IDENTITY_KEY: &str = "__local:db-identity";

/// How often the tracking connections are checked: a connection that hangs
/// without closing (a paused server, a lost network) is found within about
/// this plus the handle's timeout.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Backoff between attempts to re-establish tracking: the handle's one
/// reconnect policy.
const MIN_BACKOFF: Duration = connect::RECONNECT_MIN_DELAY;
const MAX_BACKOFF: Duration = connect::RECONNECT_MAX_DELAY;

/// What the tier tracks: one server, or the primaries of a cluster found
/// through its seeds.
pub(crate) enum TrackedStore {
    Standalone(Box<redis::Client>),
    Cluster(Vec<redis::Client>),
}

/// Starts the supervising task of `tier`; it ends when the tier is dropped.
/// Without a Tokio runtime the tier stays closed (never read).
pub(crate) fn start(
    tier: &Arc<LocalTier>,
    store: TrackedStore,
    prefix: Option<String>,
    connect_timeout: Duration,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("local tier off: the handle was built outside a Tokio runtime");
        return;
    };
    let supervisor = Supervisor {
        tier: Arc::downgrade(tier),
        store,
        prefix,
        connect_timeout,
        response_timeout: tier.timeout,
    };
    runtime.spawn(supervisor.run());
}

struct Supervisor {
    tier: Weak<LocalTier>,
    store: TrackedStore,
    prefix: Option<String>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        // A warning was logged for the current outage: say it once, not per attempt.
        let mut warned = false;
        // Numbers each set of connections: a late event of an older set
        // must not act on the tier (see LocalTier::close_from).
        let mut generation = 0;
        while let Some(tier) = self.tier.upgrade() {
            generation += 1;
            tier.begin(generation);
            drop(tier);
            // Told by the push handler that a connection closed.
            let lost = Arc::new(Notify::new());
            match self.connect(&lost, generation).await {
                Ok((connections, primaries, mut identity)) => {
                    let Some(tier) = self.tier.upgrade() else {
                        return;
                    };
                    if !tier.open_generation(generation, connections.clone()) {
                        // One was lost while the others connected.
                        drop(tier);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    drop(tier);
                    tracing::info!(primaries = connections.len(), "local tier: tracking up");
                    backoff = MIN_BACKOFF;
                    let reason = self
                        .watch(&connections, &primaries, identity.as_mut(), &lost)
                        .await;
                    if self.tier.strong_count() == 0 {
                        return;
                    }
                    tracing::warn!(
                        reason,
                        "local tier: tracking lost; the tier is emptied and unused until it is back"
                    );
                    warned = true;
                }
                // A server refusing CLIENT TRACKING (an ACL without it) must
                // not go unnoticed, nor flood the log.
                Err(err) if !warned => {
                    tracing::warn!(
                        error = %err,
                        "local tier: tracking not established; the tier is unused until it is"
                    );
                    warned = true;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "local tier: tracking not established yet");
                }
            }
            if let Some(tier) = self.tier.upgrade() {
                tier.close();
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A tracking connection to every primary, the primaries' addresses
    /// (cluster only, to notice when they change), and the database's
    /// identity (standalone only).
    async fn connect(
        &self,
        lost: &Arc<Notify>,
        generation: u64,
    ) -> redis::RedisResult<(
        Vec<MultiplexedConnection>,
        Vec<(String, u16)>,
        Option<Identity>,
    )> {
        match &self.store {
            TrackedStore::Standalone(client) => {
                let mut conn = self.track((**client).clone(), lost, generation).await?;
                let key = format!("{}{IDENTITY_KEY}", self.prefix.as_deref().unwrap_or(""));
                let value = establish_identity(&mut conn, &key).await?;
                Ok((vec![conn], Vec::new(), Some(Identity { key, value })))
            }
            TrackedStore::Cluster(seeds) => {
                let primaries = self.primaries(seeds).await?;
                let seed = seeds.first().ok_or_else(no_node)?;
                let mut connections = Vec::with_capacity(primaries.len());
                for (host, port) in &primaries {
                    let client = connect::client_at(seed, host, *port)?;
                    connections.push(self.track(client, lost, generation).await?);
                }
                Ok((connections, primaries, None))
            }
        }
    }

    /// The primaries serving slots, as the first seed that answers sees them.
    async fn primaries(&self, seeds: &[redis::Client]) -> redis::RedisResult<Vec<(String, u16)>> {
        let mut last = no_node();
        for seed in seeds {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.response_timeout));
            let attempt = async {
                let mut conn = seed
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                cluster_primaries(&mut conn).await
            };
            match attempt.await {
                Ok(primaries) if !primaries.is_empty() => return Ok(primaries),
                Ok(_) => {}
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    /// A RESP3 connection to `client`'s server with tracking on, its
    /// invalidations applied to the tier as they arrive; one of the set
    /// numbered `generation`.
    async fn track(
        &self,
        client: redis::Client,
        lost: &Arc<Notify>,
        generation: u64,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let client = connect::resp3(client)?;
        let tier = self.tier.clone();
        let lost = Arc::clone(lost);
        // Runs in the connection's read loop, before any reply that follows
        // the push is handed out: what a barrier relies on.
        let on_push = move |push: PushInfo| -> Result<(), ()> {
            if let Some(tier) = tier.upgrade() {
                apply(&tier, push, generation, &lost);
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_push_sender(on_push);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON").arg("BCAST");
        if let Some(prefix) = &self.prefix {
            tracking.arg("PREFIX").arg(prefix);
        }
        let () = tracking.query_async(&mut conn).await?;
        Ok(conn)
    }

    /// Returns (with the reason) once a connection is lost, a heartbeat fails,
    /// the primaries changed or the tier is gone. Empties the tier when the
    /// database's `identity` changed.
    async fn watch(
        &self,
        connections: &[MultiplexedConnection],
        primaries: &[(String, u16)],
        mut identity: Option<&mut Identity>,
        lost: &Notify,
    ) -> &'static str {
        loop {
            tokio::select! {
                () = lost.notified() => return "connection closed",
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            if self.tier.strong_count() == 0 {
                return "handle dropped";
            }
            if let (Some(identity), Some(conn)) = (identity.as_deref_mut(), connections.first()) {
                // Standalone: reading the marker is the heartbeat.
                match self.check_identity(conn.clone(), identity).await {
                    Ok(()) => continue,
                    Err(reason) => return reason,
                }
            }
            for conn in connections {
                if !ping(conn.clone(), self.response_timeout).await {
                    return "heartbeat failed";
                }
            }
            if let (TrackedStore::Cluster(_), Some(conn)) = (&self.store, connections.first()) {
                let mut conn = conn.clone();
                let now = tokio::time::timeout(self.response_timeout, cluster_primaries(&mut conn));
                match now.await {
                    Ok(Ok(mut now)) => {
                        now.sort();
                        let mut before = primaries.to_vec();
                        before.sort();
                        if now != before {
                            return "cluster primaries changed";
                        }
                    }
                    _ => return "heartbeat failed",
                }
            }
        }
    }
}

/// The database-identity marker of a standalone server's tracked database,
/// and its value when last read.
struct Identity {
    key: String,
    /// `None` when the marker could not be written (an ACL refusing it) and
    /// no other instance has written it yet.
    value: Option<Vec<u8>>,
}

impl Supervisor {
    /// Reads the marker on `conn`; when it is not what was read before,
    /// takes the current identity, then empties the tier: every entry may
    /// come from the database that was there before. In that order, so that
    /// a second change while this runs is caught by the next heartbeat
    /// rather than recorded as the state the entries filled after the
    /// flush come from.
    async fn check_identity(
        &self,
        mut conn: MultiplexedConnection,
        identity: &mut Identity,
    ) -> Result<(), &'static str> {
        let mut get = redis::cmd("GET");
        get.arg(&identity.key);
        let read = get.query_async(&mut conn);
        let now: Option<Vec<u8>> = match tokio::time::timeout(self.response_timeout, read).await {
            Ok(Ok(now)) => now,
            _ => return Err("heartbeat failed"),
        };
        if now == identity.value {
            return Ok(());
        }
        let current = tokio::time::timeout(
            self.response_timeout,
            establish_identity(&mut conn, &identity.key),
        );
        identity.value = match current.await {
            Ok(Ok(value)) => value,
            _ => return Err("heartbeat failed"),
        };
        let Some(tier) = self.tier.upgrade() else {
            return Err("handle dropped");
        };
        tier.flush();
        tracing::info!(
            "local tier: the database under the tracking connection changed (SWAPDB, a flush, or its identity marker deleted or evicted); the tier was emptied"
        );
        Ok(())
    }
}

/// The identity of the database `conn` is on: the marker under `key`,
/// written first with a fresh random value if there is none (`SET NX`, so
/// every instance adopts the first one's). When the write is refused (an
/// ACL), the marker is only read: such a handle notices a change once
/// another instance has written one.
async fn establish_identity(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<Option<Vec<u8>>> {
    let fresh = format!("{:032x}", fastrand::u128(..));
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(key)
        .arg(&fresh)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(key);
    match pipe.query_async::<(Option<Vec<u8>>,)>(conn).await {
        Ok((value,)) => Ok(value),
        Err(err) => {
            tracing::debug!(%err, "local tier: the database-identity marker could not be written; only read");
            redis::cmd("GET").arg(key).query_async(conn).await
        }
    }
}

/// A PING answered within `timeout`.
pub(super) async fn ping(mut conn: MultiplexedConnection, timeout: Duration) -> bool {
    let cmd = redis::cmd("PING");
    let reply = cmd.query_async::<String>(&mut conn);
    matches!(tokio::time::timeout(timeout, reply).await, Ok(Ok(_)))
}

/// Applies one push of a tracking connection of the set `generation` to
/// the tier. An older set's invalidations still evict (never harmful); its
/// disconnection does not close the tier a newer set opened.
fn apply(tier: &LocalTier, push: PushInfo, generation: u64, lost: &Notify) {
    match push.kind {
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    // The tier's keys are UTF-8: another key was never here.
                    if let Value::BulkString(key) = key
                        && let Ok(key) = std::str::from_utf8(key)
                    {
                        tier.invalidated(key);
                    }
                }
            }
            // A null key: FLUSHDB or FLUSHALL.
            _ => {
                tier.counters.add(super::INVALIDATIONS);
                tier.flush();
            }
        },
        PushKind::Disconnection => {
            // Closed here and now, not when the supervisor wakes up.
            tier.close_from(generation);
            lost.notify_one();
        }
        _ => {}
    }
}

/// The primaries serving slots, from `CLUSTER NODES`.
async fn cluster_primaries(
    conn: &mut MultiplexedConnection,
) -> redis::RedisResult<Vec<(String, u16)>> {
    let text: String = connect::cluster_nodes().query_async(conn).await?;
    Ok(connect::parse_cluster_primaries(&text))
}

fn no_node() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "no cluster node answered"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier() -> LocalTier {
        LocalTier::new(100, Duration::from_secs(60), Duration::from_secs(1))
    }

    fn disconnection() -> PushInfo {
        PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        }
    }

    /// A heartbeat gave up on set 1 with a PING unanswered, the tier was
    /// reopened on set 2, and only then set 1's connection reported its end.
    #[test]
    fn an_older_set_lost_late_does_not_close_the_tier_a_newer_one_opened() {
        let tier = tier();
        let lost = Notify::new();
        tier.begin(1);
        assert!(tier.open_generation(1, Vec::new()));
        tier.close();
        tier.begin(2);
        assert!(tier.open_generation(2, Vec::new()));
        tier.fill(tier.watch("k"), b"1", None, None);

        apply(&tier, disconnection(), 1, &lost);
        assert!(tier.stats().tracking, "set 2 is up: the tier stays open");
        assert!(tier.get("k").is_some());

        apply(&tier, disconnection(), 2, &lost);
        assert!(!tier.stats().tracking, "the live set's loss closes it");
        assert!(tier.get("k").is_none());
    }

    /// One connection of a set lost while the others were being made: the
    /// set does not open the tier.
    #[test]
    fn a_set_lost_while_connecting_does_not_open_the_tier() {
        let tier = tier();
        let lost = Notify::new();
        tier.begin(1);
        apply(&tier, disconnection(), 1, &lost);
        assert!(!tier.open_generation(1, Vec::new()));
        assert!(!tier.stats().tracking);
    }
}
