//! Redis and Redis Cluster, through the `redis` crate's own connection manager
//! (reconnects by itself) and async cluster client (slot routing, MOVED/ASK).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Value};

use super::connect;
use super::pubsub::{Listener, Topic, redis::RedisPubSub};
use super::{
    AtomicOp, Expiring, KeyTtl, MAX_COUNT, ScanNode, Store, StoreFuture, WindowIncr, atomic, millis,
};
use crate::config::{CacheConfig, RedisEndpoint};
use crate::error::{Error, Result, is_refused_login};
use crate::key::escape_glob;
use crate::stats::EventStats;

/// Keys asked for per SCAN step: large enough to make few round trips, small
/// enough that no single SCAN or UNLINK blocks the server noticeably.
const SCAN_BATCH: usize = 500;

/// What differs between a single server and a cluster: everything else is the
/// same commands on a multiplexed connection.
pub(crate) trait Connection: ConnectionLike + Clone + Send + Sync + 'static {
    /// One server, or a cluster's.
    const REACH: super::Reach;
    /// The servers a SCAN walk must visit.
    fn scan_nodes(&self) -> impl Future<Output = Result<Vec<ScanNode>>> + Send;
    /// One SCAN page on `node` and the UNLINK of its keys: (next cursor, removed).
    fn delete_page(
        &self,
        node: &ScanNode,
        cursor: u64,
        pattern: &str,
    ) -> impl Future<Output = Result<(u64, u64)>> + Send;
    /// Writes several keys; cluster keys may live on different nodes.
    fn set_each(&self, commands: Vec<Cmd>) -> impl Future<Output = Result<()>> + Send;
    /// Reads several keys with one command each (in one round trip), in order.
    fn get_each(
        &self,
        commands: Vec<Cmd>,
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>>> + Send;
    /// Pub/sub is sharded (`SPUBLISH`): a cluster.
    const SHARDED_PUBSUB: bool = false;
    /// Sends the `count` commands of `pipe` in one write: by default
    /// through `ConnectionLike`, which boxes it. Error replies come back
    /// in place, as `Value::ServerError`.
    fn send_pipeline<'a>(
        &'a mut self,
        pipe: &'a redis::Pipeline,
        count: usize,
    ) -> impl Future<Output = redis::RedisResult<Vec<Value>>> + Send + 'a {
        self.req_packed_commands(pipe, 0, count)
    }
    /// Sends one command: by default through `ConnectionLike`, which boxes it.
    fn send<'a>(
        &'a mut self,
        cmd: &'a Cmd,
    ) -> impl Future<Output = redis::RedisResult<Value>> + Send + 'a {
        self.req_packed_command(cmd)
    }
}

/// A refused login is tried again at most this often: each try is a new connection.
const LOGIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// One standalone server: the driver's connection manager, which reconnects
/// by itself after I/O errors, and is replaced by a fresh one after the
/// server refused the credentials. The driver keeps a refused login as the
/// connection's outcome for good, so a user created or a password fixed on
/// the server after start-up would otherwise need a restart of the service.
#[derive(Clone)]
pub(crate) struct Standalone(Arc<StandaloneInner>);

struct StandaloneInner {
    current: ArcSwap<Manager>,
    client: redis::Client,
    config: ConnectionManagerConfig,
}

struct Manager {
    conn: ConnectionManager,
    since: Instant,
}

impl Standalone {
    fn new(client: redis::Client, config: ConnectionManagerConfig) -> Result<Self> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(connect::driver_config_error)?;
        Ok(Standalone(Arc::new(StandaloneInner {
            current: ArcSwap::from_pointee(Manager {
                conn,
                since: Instant::now(),
            }),
            client,
            config,
        })))
    }

    /// The current manager's connection, and what identifies that manager
    /// if it fails (a guard is not held across the call).
    fn manager(&self) -> (Failed, ConnectionManager) {
        let current = self.0.current.load();
        let failed = Failed {
            manager: Arc::as_ptr(&current) as usize,
            since: current.since,
        };
        (failed, current.conn.clone())
    }

    /// After a refused login, replaces the manager that failed (not a newer
    /// one), at most once per [`LOGIN_RETRY_INTERVAL`]; the calls in between
    /// get the refusal at once, without a connection attempt.
    fn after(&self, failed: &Failed, result: &redis::RedisResult<impl Sized>) {
        let Err(err) = result else { return };
        if !is_refused_login(err) || failed.since.elapsed() < LOGIN_RETRY_INTERVAL {
            return;
        }
        let current = self.0.current.load();
        if Arc::as_ptr(&current) as usize != failed.manager {
            return;
        }
        let Ok(conn) =
            ConnectionManager::new_lazy_with_config(self.0.client.clone(), self.0.config.clone())
        else {
            return;
        };
        let fresh = Arc::new(Manager {
            conn,
            since: Instant::now(),
        });
        self.0.current.compare_and_swap(&*current, fresh);
    }
}

/// Which manager a call used: its address, only ever compared (a reused
/// address can at worst replace a fresh manager once more).
struct Failed {
    manager: usize,
    since: Instant,
}

impl ConnectionLike for Standalone {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(self.send(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (current, mut conn) = self.manager();
            let result = conn.send_packed_commands(pipeline, offset, count).await;
            self.after(&current, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0.current.load().conn.get_db()
    }
}

impl Connection for Standalone {
    const REACH: super::Reach = super::Reach::Server;

    async fn send(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        // The manager's own method: no boxed future per command.
        let (current, mut conn) = self.manager();
        let result = conn.send_packed_command(cmd).await;
        self.after(&current, &result);
        result
    }

    async fn send_pipeline(
        &mut self,
        pipe: &redis::Pipeline,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        let (current, mut conn) = self.manager();
        let result = conn.send_packed_commands(pipe, 0, count).await;
        self.after(&current, &result);
        result
    }

    async fn scan_nodes(&self) -> Result<Vec<ScanNode>> {
        Ok(vec![ScanNode::Only])
    }

    async fn delete_page(
        &self,
        _node: &ScanNode,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, u64)> {
        let mut conn = self.clone();
        let (next, keys): (u64, Vec<Vec<u8>>) =
            scan_cmd(cursor, pattern).query_async(&mut conn).await?;
        let mut removed = 0;
        if !keys.is_empty() {
            removed = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        Ok((next, removed))
    }

    async fn get_each(&self, commands: Vec<Cmd>) -> Result<Vec<Option<Vec<u8>>>> {
        let mut pipe = redis::pipe();
        for cmd in commands {
            pipe.add_command(cmd);
        }
        let mut conn = self.clone();
        let values: Vec<Vec<u8>> = pipe.query_async(&mut conn).await?;
        Ok(values.into_iter().map(non_empty).collect())
    }

    async fn set_each(&self, commands: Vec<Cmd>) -> Result<()> {
        let mut pipe = redis::pipe();
        for cmd in commands {
            pipe.add_command(cmd).ignore();
        }
        let mut conn = self.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }
}

impl Connection for ClusterConnection {
    const REACH: super::Reach = super::Reach::Cluster;

    // Plain PUBLISH goes to every node of the cluster over its bus; SPUBLISH
    // only to the shard of the channel's slot, which is what scales.
    const SHARDED_PUBSUB: bool = true;

    async fn scan_nodes(&self) -> Result<Vec<ScanNode>> {
        // SCAN cursors are per node, so each primary is walked on its own.
        let mut conn = self.clone();
        Ok(cluster_primaries(&mut conn)
            .await?
            .into_iter()
            .map(|(host, port)| ScanNode::Primary { host, port })
            .collect())
    }

    async fn delete_page(&self, node: &ScanNode, cursor: u64, pattern: &str) -> Result<(u64, u64)> {
        let mut conn = self.clone();
        let route = match node {
            ScanNode::Primary { host, port } => {
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                })
            }
            ScanNode::Only => RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        };
        let reply = conn.route_command(scan_cmd(cursor, pattern), route).await?;
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)?;
        // Keys of one SCAN page span many slots: UNLINK them one by one
        // (multiplexed, so still about one round trip per page).
        let unlinks = keys.iter().map(|key| {
            let mut conn = conn.clone();
            async move {
                let n: u64 = redis::cmd("UNLINK").arg(key).query_async(&mut conn).await?;
                Ok::<u64, Error>(n)
            }
        });
        let removed = try_join_all(unlinks).await?.into_iter().sum::<u64>();
        Ok((next, removed))
    }

    async fn get_each(&self, commands: Vec<Cmd>) -> Result<Vec<Option<Vec<u8>>>> {
        // Keys on different nodes: one command each, multiplexed.
        let reads = commands.into_iter().map(|cmd| {
            let mut conn = self.clone();
            async move {
                let value: Vec<u8> = cmd.query_async(&mut conn).await?;
                Ok::<_, Error>(non_empty(value))
            }
        });
        try_join_all(reads).await
    }

    async fn set_each(&self, commands: Vec<Cmd>) -> Result<()> {
        let writes = commands.into_iter().map(|cmd| {
            let mut conn = self.clone();
            async move {
                let () = cmd.query_async(&mut conn).await?;
                Ok::<(), Error>(())
            }
        });
        try_join_all(writes).await?;
        Ok(())
    }
}

/// `GETRANGE key 0 max_len`: at most `max_len + 1` bytes cross the wire, so a
/// huge value costs the server and the connection no more than the cap (GET
/// would send all of it, blocking every call queued behind it on the
/// multiplexed connection). Same round trip and reply shape as GET.
fn get_range_cmd(key: &str, max_len: usize) -> Cmd {
    // Sized up front: four arguments, the longest cap has 9 digits.
    let mut cmd = Cmd::with_capacity(4, "GETRANGE".len() + key.len() + 1 + 9);
    cmd.arg("GETRANGE").arg(key).arg(0).arg(max_len);
    cmd
}

/// [`get_range_cmd`] and `PTTL` of the same key, pipelined: one round trip,
/// one slot on a cluster.
fn get_expiring_pipe(key: &str, max_len: usize) -> redis::Pipeline {
    let mut pipe = redis::Pipeline::with_capacity(2);
    pipe.add_command(get_range_cmd(key, max_len));
    pipe.cmd("PTTL").arg(key);
    pipe
}

/// A `PTTL` reply as a remaining life: `None` for no expiry (-1), zero for
/// a key gone since the read (-2).
fn remaining(pttl: i64) -> Option<Duration> {
    match pttl {
        -1 => None,
        ms => Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
    }
}

/// GETRANGE answers "" for a missing key; no codec's encoding is empty, so
/// an empty value is a miss either way.
fn non_empty(value: Vec<u8>) -> Option<Vec<u8>> {
    (!value.is_empty()).then_some(value)
}

fn scan_cmd(cursor: u64, pattern: &str) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_BATCH);
    cmd
}

/// The addresses of the primaries that serve slots, from `CLUSTER NODES`,
/// read again on every walk: after a failover the promoted replica is a
/// primary and the old one, back as a replica or still down, serves none.
async fn cluster_primaries(conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>> {
    let reply = conn
        .route_command(
            connect::cluster_nodes(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let text: String = redis::from_redis_value(reply)?;
    Ok(connect::parse_cluster_primaries(&text))
}

/// A store over one multiplexed connection of either kind, and its
/// pub/sub over a connection of its own.
pub(crate) struct RedisStore<C> {
    conn: C,
    pubsub: Arc<RedisPubSub>,
    /// Cluster only: a seed to try logging in to when the cluster client
    /// reports no connection without saying why.
    login_probe: Option<LoginProbe>,
    /// The server refused `PEXPIRE ... LT` (Redis before 7.0): window
    /// counters go through scripts from then on.
    no_expire_options: std::sync::atomic::AtomicBool,
}

/// One plain login to a seed node, to tell a refused password from an outage.
struct LoginProbe {
    seed: redis::Client,
    connect_timeout: Duration,
    /// When it last tried, and what it found.
    last: std::sync::Mutex<Option<(Instant, Option<redis::RedisError>)>>,
}

impl LoginProbe {
    async fn refused_login(&self) -> Option<redis::RedisError> {
        // Every update is one assignment: a poisoned answer is whole.
        let lock = || crate::sync::lock(&self.last);
        {
            let mut last = lock();
            if let Some((at, answer)) = &*last
                && at.elapsed() < LOGIN_RETRY_INTERVAL
            {
                return answer.clone();
            }
            // Claimed before probing: calls arriving meanwhile take the last
            // answer instead of each starting a login of their own.
            let previous = last.as_ref().and_then(|(_, answer)| answer.clone());
            *last = Some((Instant::now(), previous));
        }
        let login = self.seed.get_multiplexed_async_connection();
        let answer = match tokio::time::timeout(self.connect_timeout, login).await {
            Ok(Err(err)) if is_refused_login(&err) => Some(err),
            _ => None,
        };
        *lock() = Some((Instant::now(), answer.clone()));
        answer
    }
}

impl RedisStore<Standalone> {
    /// Lazily connected: returns at once, connects in the background.
    pub(crate) fn standalone(endpoint: &RedisEndpoint, config: &CacheConfig) -> Result<Self> {
        let client = connect::client(endpoint, config)?;
        let conn = Standalone::new(client, connect::store_manager(config))?;
        Ok(Self::over(conn, config))
    }
}

impl RedisStore<ClusterConnection> {
    /// Lazily connected: returns at once, discovers the cluster in the background.
    pub(crate) fn cluster(nodes: &[RedisEndpoint], config: &CacheConfig) -> Result<Self> {
        let urls = nodes
            .iter()
            .map(RedisEndpoint::connection_url)
            .collect::<Result<Vec<_>>>()?;
        // The driver retries a command after a redirection (MOVED, ASK: it
        // did not run) but also after a broken connection, when it may have
        // run: a counter's handle takes none of them (a script that counts
        // would count twice), and its calls are sent again by the handle
        // only when the node said it did not run them.
        let retries = if config.counter { 0 } else { 2 };
        let client = connect::cluster_builder(urls, config)
            .retries(retries)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()
            .map_err(connect::driver_config_error)?;
        let conn = client.get_pending_async_connection_with_config(connect::cluster_config(config));
        let mut store = Self::over(conn, config);
        if let Some(seed) = nodes.first() {
            store.login_probe = Some(LoginProbe {
                seed: connect::client(seed, config)?,
                connect_timeout: config.connect_timeout,
                last: std::sync::Mutex::new(None),
            });
        }
        Ok(store)
    }
}

impl<C: Connection> RedisStore<C> {
    fn over(conn: C, config: &CacheConfig) -> Self {
        RedisStore {
            conn,
            pubsub: Arc::new(RedisPubSub::new(config)),
            login_probe: None,
            no_expire_options: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn query<'a, T>(&'a self, cmd: Cmd) -> StoreFuture<'a, T>
    where
        T: redis::FromRedisValue + Send + 'a,
    {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let value = conn.send(&cmd).await?.extract_error()?;
            Ok(redis::from_redis_value(value)?)
        })
    }
}

/// `EVALSHA hash` or `EVAL source`, then the keys and the arguments: one
/// command, sized up front.
fn script_cmd(name: &str, script: &str, keys: &[&str], args: &[i64]) -> Cmd {
    let bytes = name.len()
        + script.len()
        + keys.iter().map(|key| key.len()).sum::<usize>()
        + 20 * (1 + args.len());
    let mut cmd = Cmd::with_capacity(3 + keys.len() + args.len(), bytes);
    cmd.arg(name).arg(script).arg(keys.len());
    for key in keys {
        cmd.arg(*key);
    }
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// [`Store::incr_windows`]' commands: per key `INCRBY key by` (`INCR key`
/// for 1), `PEXPIRE key window LT` and, if its `read_ttl`, `PTTL key`, in
/// one pipeline.
///
/// Why these three, and why no script is needed around them:
/// - No counter without a TTL: every increment is followed by the
///   `PEXPIRE`, and `LT` sets an expiry on a key that has none (Redis takes
///   no expiry as an infinite one) while leaving a running window's alone
///   (its end is already less than a window from now). A key whose
///   `PEXPIRE` was lost (the connection cut between the two) gets its
///   expiry from the next increment's. `LT` also brings an expiry past one
///   window from now (a longer window's) down to one window, which `NX`
///   would leave; the cost is the same.
/// - The commands of other clients may run between these three: an
///   increment another client makes between this `INCRBY` and `PTTL` only
///   makes the reported window end the same or closer (never later).
/// - `PTTL` answers the window's end for the reply (rate-limit headers,
///   `Retry-After`); a caller that needs no end (a rate limiter sending no
///   reset header admits most requests without one), or knows it already
///   (a rate limiter that saw the window start), leaves it out. Without
///   it, `PEXPIRE`'s reply still tells a window that starts: 1 exactly
///   when it set the expiry to the whole window (see [`window_incr`]).
fn incr_window_pipe(
    keys: &[&str],
    by: &[i64],
    window_ms: i64,
    read_ttl: &[bool],
) -> redis::Pipeline {
    let mut pipe = redis::Pipeline::with_capacity(window_replies(read_ttl));
    for ((&key, &by), &read_ttl) in keys.iter().zip(by).zip(read_ttl) {
        // `INCR` for one: an argument fewer to build and encode.
        pipe.add_command(match by {
            1 => key_cmd("INCR", key, None, false),
            _ => key_cmd("INCRBY", key, Some(by), false),
        });
        pipe.add_command(key_cmd("PEXPIRE", key, Some(window_ms), true));
        if read_ttl {
            pipe.add_command(key_cmd("PTTL", key, None, false));
        }
    }
    pipe
}

/// How many replies [`incr_window_pipe`] has: two per key, three for a key
/// whose TTL it reads.
fn window_replies(read_ttl: &[bool]) -> usize {
    2 * read_ttl.len() + read_ttl.iter().filter(|&&read| read).count()
}

/// `name key [number] [LT]`, sized up front (a number has at most 20 digits).
fn key_cmd(name: &str, key: &str, number: Option<i64>, lt: bool) -> Cmd {
    let mut cmd = Cmd::with_capacity(4, name.len() + key.len() + 22);
    cmd.arg(name).arg(key);
    if let Some(number) = number {
        cmd.arg(number);
    }
    if lt {
        cmd.arg("LT");
    }
    cmd
}

/// One key's replies of [`incr_window_pipe`] (`by` its increment; two, or
/// three with `PTTL`'s): what it found, or the call's error. `Err(None)`:
/// the server refused `PEXPIRE`'s option (Redis before 7.0 answers `ERR`
/// to its arity). Without `PTTL`, the window's end is known when
/// `PEXPIRE ... LT` answered 1: it set the expiry to the whole window
/// (the key had none: a window that starts; or a longer one, brought
/// down), so the window ends `window_ms` from then; its 0 (a running
/// window's end left alone) tells no end.
fn window_incr(
    replies: &[Value],
    by: i64,
    window_ms: i64,
) -> std::result::Result<WindowIncr, Option<redis::RedisError>> {
    let (incr, expire, pttl) = match replies {
        [incr, expire] => (incr, expire, None),
        [incr, expire, pttl] => (incr, expire, Some(pttl)),
        _ => {
            let shape = crate::error::StoreError::unexpected("incr_window");
            return Err(Some(redis::RedisError::from(redis::ParsingError::from(
                shape.to_string(),
            ))));
        }
    };
    if let Value::ServerError(err) = expire {
        return match err.code() {
            "ERR" => Err(None),
            _ => Err(Some(err.clone().into())),
        };
    }
    let count = match incr {
        Value::Int(count) => *count,
        // Another type, or not an integer (or the sum would overflow): the
        // value is as it was, nothing was counted.
        Value::ServerError(err) if matches!(err.code(), "WRONGTYPE" | "ERR") => {
            return Ok(WindowIncr::NotACounter);
        }
        Value::ServerError(err) => return Err(Some(err.clone().into())),
        other => return Err(Some(unexpected_reply(other))),
    };
    // Negative before the increment, or past 2^53: no count of this
    // library's (it has the increment added, and is replaced by the caller).
    if count < by || count > MAX_COUNT as i64 {
        return Ok(WindowIncr::NotACounter);
    }
    let left_ms = match pttl {
        None if matches!(expire, Value::Int(1)) => Some(window_ms),
        None => None,
        // Gone since the increment: its window ended meanwhile.
        Some(Value::Int(-2)) => Some(0),
        // No expiry (someone's `PERSIST` in between): the next increment's
        // `PEXPIRE` gives it one; this one is counted in a window from now.
        Some(Value::Int(-1)) => Some(window_ms),
        Some(Value::Int(ms)) => Some(*ms),
        Some(Value::ServerError(err)) => return Err(Some(err.clone().into())),
        Some(other) => return Err(Some(unexpected_reply(other))),
    };
    Ok(WindowIncr::Counted {
        count: count as u64,
        left_ms: left_ms.map(|ms| u64::try_from(ms).unwrap_or(0)),
    })
}

fn unexpected_reply(value: &Value) -> redis::RedisError {
    redis::ParsingError::from(format!("unexpected reply {value:?}")).into()
}

fn set_cmd(key: &str, value: &[u8], ttl: Option<Duration>) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(millis(ttl));
    }
    cmd
}

impl<C: Connection> Store for RedisStore<C> {
    fn reach(&self) -> super::Reach {
        C::REACH
    }

    fn get<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        let cmd = get_range_cmd(key, max_len);
        Box::pin(async move {
            let value = conn.send(&cmd).await?.extract_error()?;
            Ok(non_empty(redis::from_redis_value(value)?))
        })
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
        max_len: usize,
    ) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        // No MGET has a size cap: one GETRANGE per key, pipelined.
        let commands = keys.iter().map(|key| get_range_cmd(key, max_len)).collect();
        Box::pin(self.conn.get_each(commands))
    }

    fn get_expiring<'a>(&'a self, key: &'a str, max_len: usize) -> StoreFuture<'a, Expiring> {
        let mut conn = self.conn.clone();
        let pipe = get_expiring_pipe(key, max_len);
        Box::pin(async move {
            let (value, pttl): (Vec<u8>, i64) = pipe.query_async(&mut conn).await?;
            Ok((non_empty(value), remaining(pttl)))
        })
    }

    fn get_many_expiring<'a>(
        &'a self,
        keys: &'a [String],
        max_len: usize,
    ) -> StoreFuture<'a, Vec<Expiring>> {
        // One two-command pipeline per key, multiplexed: one round trip.
        let reads = keys.iter().map(move |key| {
            let mut conn = self.conn.clone();
            let pipe = get_expiring_pipe(key, max_len);
            async move {
                let (value, pttl): (Vec<u8>, i64) = pipe.query_async(&mut conn).await?;
                Ok::<_, Error>((non_empty(value), remaining(pttl)))
            }
        });
        Box::pin(try_join_all(reads))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        let mut conn = self.conn.clone();
        let cmd = set_cmd(key, value, ttl);
        Box::pin(async move {
            let () = cmd.query_async(&mut conn).await?;
            Ok(())
        })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(String, Vec<u8>)],
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        let commands = entries
            .iter()
            .map(|(key, value)| set_cmd(key, value, ttl))
            .collect();
        Box::pin(self.conn.set_each(commands))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        // UNLINK frees the value off the main thread: same result as DEL, no stall on big values.
        self.query(redis::cmd("UNLINK").arg(key).take())
    }

    fn exists<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        self.query(redis::cmd("EXISTS").arg(key).take())
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        self.query(redis::cmd("PEXPIRE").arg(key).arg(millis(ttl)).take())
    }

    fn ttl<'a>(&'a self, key: &'a str) -> StoreFuture<'a, KeyTtl> {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let ms: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await?;
            Ok(match ms {
                -2 => KeyTtl::Missing,
                ms if ms < 0 => KeyTtl::Persistent,
                ms => KeyTtl::Expires(Duration::from_millis(ms.unsigned_abs())),
            })
        })
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64) -> StoreFuture<'a, i64> {
        self.query(redis::cmd("INCRBY").arg(key).arg(by).take())
    }

    fn eval<'a>(
        &'a self,
        script: &'a super::Script,
        keys: &'a [&'a str],
        args: &'a [i64],
    ) -> StoreFuture<'a, Vec<i64>> {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            // EVALSHA; on NOSCRIPT (flushed cache, restart, failover) nothing
            // ran, and EVAL sends the source, which Redis runs and keeps for
            // the next EVALSHA: one round trip more, never a second run.
            let cmd = script_cmd("EVALSHA", script.hash(), keys, args);
            let reply = match conn.send(&cmd).await.and_then(Value::extract_error) {
                Err(err) if err.code() == Some("NOSCRIPT") => {
                    let cmd = script_cmd("EVAL", script.source(), keys, args);
                    conn.send(&cmd).await?.extract_error()?
                }
                reply => reply?,
            };
            Ok(redis::from_redis_value(reply)?)
        })
    }

    fn incr_windows<'a>(
        &'a self,
        keys: &'a [&'a str],
        by: &'a [i64],
        window_ms: i64,
        read_ttl: &'a [bool],
    ) -> StoreFuture<'a, Option<Vec<WindowIncr>>> {
        use std::sync::atomic::Ordering;
        if self.no_expire_options.load(Ordering::Relaxed) {
            return Box::pin(std::future::ready(Ok(None)));
        }
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let pipe = incr_window_pipe(keys, by, window_ms, read_ttl);
            let expected = window_replies(read_ttl);
            let replies = conn.send_pipeline(&pipe, expected).await?;
            if replies.len() != expected {
                return Err(unexpected_reply(&Value::Array(replies)).into());
            }
            let mut counted = Vec::with_capacity(keys.len());
            let mut refused = false;
            let mut at = 0;
            for (&by, &read_ttl) in by.iter().zip(read_ttl) {
                let per_key = if read_ttl { 3 } else { 2 };
                let Some(replies) = replies.get(at..at + per_key) else {
                    return Err(unexpected_reply(&Value::Nil).into());
                };
                at += per_key;
                match window_incr(replies, by, window_ms) {
                    Ok(found) => counted.push(found),
                    Err(Some(err)) => return Err(err.into()),
                    Err(None) => {
                        refused = true;
                        counted.push(match replies.first() {
                            Some(Value::Int(count))
                                if *count >= by && *count <= MAX_COUNT as i64 =>
                            {
                                WindowIncr::Counted {
                                    count: *count as u64,
                                    left_ms: Some(0),
                                }
                            }
                            _ => WindowIncr::NotACounter,
                        });
                    }
                }
            }
            if !refused {
                return Ok(Some(counted));
            }
            if !self.no_expire_options.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the Redis server refuses `PEXPIRE ... LT` (Redis before 7.0): \
                     window counters are counted by a Lua script from now on"
                );
            }
            // The increments were made and no expiry set: an increment of
            // zero by the script gives each counter its expiry (and reads
            // it), so none lives without one and nothing counts twice.
            for (found, &key) in counted.iter_mut().zip(keys) {
                if let WindowIncr::Counted { left_ms, .. } = found {
                    let args = [0, window_ms, MAX_COUNT as i64];
                    let reply = self
                        .eval(atomic::IncrWindow.script(), &[key], &args)
                        .await?;
                    *left_ms = Some(
                        reply
                            .get(1)
                            .and_then(|&ms| u64::try_from(ms).ok())
                            .unwrap_or(0),
                    );
                }
            }
            Ok(Some(counted))
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, payload: &'a [u8]) -> StoreFuture<'a, u64> {
        let command = if C::SHARDED_PUBSUB {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let cmd = redis::cmd(command).arg(channel).arg(payload).take();
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let reply = conn.send(&cmd).await?.extract_error()?;
            let reached = redis::from_redis_value(reply)?;
            self.pubsub.published();
            Ok(reached)
        })
    }

    fn subscribe(&self, topics: Vec<Topic>, capacity: usize) -> StoreFuture<'_, Listener> {
        Box::pin(self.pubsub.subscribe(topics, capacity))
    }

    fn subscribes_patterns(&self) -> bool {
        // Sharded pub/sub has no patterns.
        !C::SHARDED_PUBSUB
    }

    fn pubsub_stats(&self) -> EventStats {
        self.pubsub.stats()
    }

    fn scan_nodes(&self) -> StoreFuture<'_, Vec<ScanNode>> {
        Box::pin(self.conn.scan_nodes())
    }

    fn delete_prefix_page<'a>(
        &'a self,
        node: &'a ScanNode,
        cursor: u64,
        prefix: &'a str,
    ) -> StoreFuture<'a, (u64, u64)> {
        Box::pin(async move {
            let pattern = format!("{}*", escape_glob(prefix));
            self.conn.delete_page(node, cursor, &pattern).await
        })
    }

    fn refused_login(&self) -> StoreFuture<'_, Option<redis::RedisError>> {
        Box::pin(async move {
            Ok(match &self.login_probe {
                Some(probe) => probe.refused_login().await,
                None => None,
            })
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let reply: Value = redis::cmd("PING").query_async(&mut conn).await?;
            match reply {
                Value::SimpleString(_) | Value::BulkString(_) | Value::Okay => Ok(()),
                other => Err(
                    redis::ParsingError::from(format!("unexpected PING reply {other:?}")).into(),
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_the_masters_that_serve_slots() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected
a1b2 127.0.0.1:30006@31006 master,fail? - 0 1426238318243 5 connected 10923-16383
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";
        // 30003 was failed over (no slots left); 30006 is down but still serves
        // its slots, so a walk must reach it (and fail) rather than skip it.
        assert_eq!(
            connect::parse_cluster_primaries(text),
            vec![
                ("127.0.0.1".to_string(), 30002),
                ("127.0.0.1".to_string(), 30006),
                ("127.0.0.1".to_string(), 30001)
            ]
        );
    }
}
