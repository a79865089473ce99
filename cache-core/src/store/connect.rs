//! Every Redis connection of a handle is opened here: the store's
//! ([`super::redis`]), the event bus's pub/sub connection and the local
//! tier's tracking connections. One place for the TLS roots and the
//! credentials ([`client`], [`client_at`], [`cluster_builder`]), for the
//! reconnect policy ([`RECONNECT_MIN_DELAY`]..[`RECONNECT_MAX_DELAY`], and
//! what each kind of connection adds to it), and for reading the cluster's
//! nodes ([`cluster_nodes`], [`parse_cluster_primaries`]).
//!
//! | connection | reconnects | paced by |
//! |---|---|---|
//! | store, standalone | once per call that finds it broken | the handle's retries and breaker |
//! | store, cluster | the cluster client, on the next command | the handle's retries and breaker |
//! | event bus | the manager, backing off 50 to 400 ms, then the bus pokes it | [`RECONNECT_MIN_DELAY`], [`RECONNECT_MAX_DELAY`] |
//! | tracking | the tier's supervisor, backing off 50 to 400 ms | [`RECONNECT_MIN_DELAY`], [`RECONNECT_MAX_DELAY`] |

use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;

use crate::config::{Backend, CacheConfig, RedisEndpoint};
use crate::error::{Error, Result};

/// The first wait before a connection that reconnects in the background
/// (the bus's, the tracking ones) tries again; doubled after each failure.
pub(crate) const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// The longest wait between two attempts: a Redis that restarts is found
/// again within half a second.
pub(crate) const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(400);

/// How the store's standalone connection manager reconnects.
pub(crate) fn store_manager(config: &CacheConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        // The handle bounds every call (retries included) with one timer of
        // its own; a second one per command here would only cost time.
        .set_response_timeout(None)
        // One connection attempt per reconnect, no retries inside the
        // manager: every call awaits the manager's pending reconnect, so
        // retries there (with their backoff) made a call that met a
        // crashed Redis, or a refused password, wait out its whole
        // timeout, where a refused connection is known at once. The
        // handle's retries and breaker pace the attempts instead.
        .set_number_of_retries(0)
}

/// How the event bus's connection manager reconnects: quickly after a
/// restart (the backoff stays under half a second); after its attempts the
/// bus pokes it itself.
pub(crate) fn pubsub_manager(config: &CacheConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(None)
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY)
        .set_number_of_retries(10)
}

/// A client per Redis server the handle is configured with, for
/// connections a feature opens itself (the local tier's tracking).
pub(crate) enum Servers {
    /// The one server (boxed: a client is large beside a `Vec`).
    Standalone(Box<redis::Client>),
    /// A client per seed node of the cluster.
    Cluster(Vec<redis::Client>),
}

/// The clients of the handle's Redis servers; `None` on the in-memory
/// store, which has none.
pub(crate) fn servers(config: &CacheConfig) -> Option<Result<Servers>> {
    match &config.backend {
        Backend::Memory => None,
        Backend::Redis(endpoint) => {
            Some(client(endpoint, config).map(|client| Servers::Standalone(Box::new(client))))
        }
        Backend::Cluster(nodes) => Some(
            nodes
                .iter()
                .map(|node| client(node, config))
                .collect::<Result<Vec<_>>>()
                .map(Servers::Cluster),
        ),
    }
}

/// A Redis store's pub/sub connection, which the event bus uses: RESP3, so
/// that messages arrive as pushes (to `sender`) beside ordinary replies,
/// with redis-rs's own reconnect and resubscription. Cheap to clone.
#[derive(Clone)]
pub(crate) enum PubSubConnection {
    /// A connection manager that resubscribes after a reconnect.
    Standalone(ConnectionManager),
    /// The cluster client, which resubscribes by itself.
    Cluster(ClusterConnection),
}

/// Opens [`PubSubConnection`] lazily (the first command connects). The
/// in-memory store has none: its pub/sub is in process (its hub).
pub(crate) fn pubsub(
    config: &CacheConfig,
    sender: impl AsyncPushSender,
) -> Result<PubSubConnection> {
    match &config.backend {
        Backend::Redis(endpoint) => {
            let client = resp3(client(endpoint, config)?).map_err(driver_config_error)?;
            let manager_config = pubsub_manager(config)
                .set_push_sender(sender)
                .set_automatic_resubscription();
            let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
                .map_err(driver_config_error)?;
            Ok(PubSubConnection::Standalone(manager))
        }
        Backend::Cluster(nodes) => {
            let urls = nodes.iter().map(resp3_url).collect::<Result<Vec<_>>>()?;
            let client = cluster_builder(urls, config)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(sender)
                .build()
                .map_err(driver_config_error)?;
            Ok(PubSubConnection::Cluster(
                client.get_pending_async_connection_with_config(cluster_config(config)),
            ))
        }
        Backend::Memory => Err(Error::invalid(
            "events",
            "the in-memory backend has no pub/sub connection",
        )),
    }
}

/// A client for `endpoint`, with the handle's TLS roots.
pub(crate) fn client(endpoint: &RedisEndpoint, config: &CacheConfig) -> Result<redis::Client> {
    let url = endpoint.connection_url()?;
    #[cfg(feature = "tls")]
    if let (true, Some(pem)) = (endpoint.tls, &config.tls_ca_cert) {
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        };
        return redis::Client::build_with_tls(url, certificates).map_err(driver_config_error);
    }
    let _ = config;
    redis::Client::open(url).map_err(driver_config_error)
}

/// A cluster client builder for `urls` with the handle's TLS roots and timeouts.
pub(crate) fn cluster_builder(
    urls: Vec<url::Url>,
    config: &CacheConfig,
) -> redis::cluster::ClusterClientBuilder {
    let builder = redis::cluster::ClusterClientBuilder::new(urls);
    #[cfg(feature = "tls")]
    let builder = match &config.tls_ca_cert {
        Some(pem) => builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        }),
        None => builder,
    };
    builder
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.timeout)
}

/// The connection settings of a cluster connection: the handle's timeouts.
pub(crate) fn cluster_config(config: &CacheConfig) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_response_timeout(config.timeout)
}

/// `client` speaking RESP3 (pushes need it), with its credentials and TLS.
pub(crate) fn resp3(client: redis::Client) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// The driver's configuration errors can quote the URL; never pass them on.
pub(crate) fn driver_config_error(err: redis::RedisError) -> Error {
    let reason = if err.to_string().to_ascii_lowercase().contains("tls") {
        "rediss:// (TLS) needs the `tls` feature of redis-cache-core".to_string()
    } else {
        format!("rejected by the Redis client ({:?})", err.kind())
    };
    Error::config("redis endpoint", reason)
}

/// The `protocol=resp3` URL of `endpoint` (pushes need RESP3).
pub(crate) fn resp3_url(endpoint: &RedisEndpoint) -> Result<url::Url> {
    let mut url = endpoint.connection_url()?;
    url.query_pairs_mut().append_pair("protocol", "resp3");
    Ok(url)
}

/// A client like `seed` (credentials, TLS) for the server at `host:port`.
pub(crate) fn client_at(
    seed: &redis::Client,
    host: &str,
    port: u16,
) -> redis::RedisResult<redis::Client> {
    let info = seed.get_connection_info().clone();
    let addr = match info.addr().clone() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure,
            tls_params,
        },
        _ => redis::ConnectionAddr::Tcp(host.to_string(), port),
    };
    redis::Client::open(info.set_addr(addr))
}

/// `CLUSTER NODES`: the one way the handle learns the cluster's nodes.
pub(crate) fn cluster_nodes() -> redis::Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    cmd
}

/// The addresses of the primaries that serve slots, from the reply of
/// [`cluster_nodes`].
///
/// A primary that is down but still serves slots (not yet failed over) is
/// kept: walking it fails, so the call reports an error instead of leaving
/// that primary's keys in place and claiming success.
pub(crate) fn parse_cluster_primaries(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            // master id, ping sent, pong received, epoch, link state, then slots.
            let serves_slots = fields.nth(5).is_some();
            if !flags.split(',').any(|flag| flag == "master") || !serves_slots {
                return None;
            }
            // ip:port@cport[,hostname]
            let host_port = address.split('@').next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}
