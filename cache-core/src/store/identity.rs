//! Which store a handle talks to ([`StoreId`]) and which entry of it a
//! key names ([`StoredKey`]): for libraries that keep per-store state
//! beside a [`Cache`](crate::Cache) (the rate limiter's registry of the
//! prefixes in use), so that they never need to know the backend.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Backend;

/// Which store a [`Cache`](crate::Cache) handle reads and writes
/// ([`Cache::store_id`](crate::Cache::store_id)): equal for every handle on
/// the same data, different for handles on different data.
///
/// - An in-memory store is its own: its clones and
///   [`dedicated`](crate::Cache::dedicated) handles share it; another
///   [`Cache::in_memory`](crate::Cache::in_memory) is another store (its
///   id is never given to another store of the process, even once dropped).
/// - Standalone Redis: the host, port and database, as configured (a host
///   name is not resolved: `localhost` and `127.0.0.1` are two ids); the
///   user, password and TLS do not change which data it is.
/// - Redis Cluster: its seed nodes' hosts and ports, in any order.
///
/// Its `Display` names the store without credentials; it is for logs and
/// error messages, not parsing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::Error> {
/// use cache_core::Cache;
///
/// let cache = Cache::in_memory();
/// assert_eq!(cache.store_id(), cache.dedicated().store_id());
/// assert_ne!(cache.store_id(), Cache::in_memory().store_id());
///
/// // Two handles on one Redis database: one store, whoever logs in (and
/// // whether it is up: nothing listens on port 1).
/// let a = Cache::builder().redis_url("redis://:secret@127.0.0.1:1/2")?.build().await?;
/// let b = Cache::builder().redis_url("redis://127.0.0.1:1/2")?.build().await?;
/// assert_eq!(a.store_id(), b.store_id());
/// assert_eq!(a.store_id().to_string(), "redis 127.0.0.1:1/2");
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreId(Id);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Id {
    /// An in-memory store: its number in the process.
    InProcess(u64),
    /// A standalone server: host (lowercased: DNS names ignore case), port, database.
    Server(String, u16, i64),
    /// A cluster: its seeds' hosts and ports, sorted, without repeats.
    Cluster(Vec<(String, u16)>),
}

/// The next in-memory store's number: never reused, so an id held past its
/// store's life names no other store.
static IN_PROCESS: AtomicU64 = AtomicU64::new(1);

impl StoreId {
    /// The id of a store just opened from `backend`: called once per store
    /// (each in-memory store takes a new number).
    pub(crate) fn of_new_store(backend: &Backend) -> StoreId {
        StoreId(match backend {
            Backend::Memory => Id::InProcess(IN_PROCESS.fetch_add(1, Ordering::Relaxed)),
            Backend::Redis(endpoint) => Id::Server(
                endpoint.host.to_ascii_lowercase(),
                endpoint.port,
                endpoint.db,
            ),
            Backend::Cluster(nodes) => {
                let mut seeds: Vec<(String, u16)> = nodes
                    .iter()
                    .map(|node| (node.host.to_ascii_lowercase(), node.port))
                    .collect();
                seeds.sort();
                seeds.dedup();
                Id::Cluster(seeds)
            }
        })
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Id::InProcess(number) => write!(f, "in-memory #{number}"),
            Id::Server(host, port, db) => write!(f, "redis {host}:{port}/{db}"),
            Id::Cluster(seeds) => {
                f.write_str("redis cluster ")?;
                for (i, (host, port)) in seeds.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{host}:{port}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreId")
            .field(&format_args!("{self}"))
            .finish()
    }
}

/// One entry's address across handles
/// ([`Cache::stored_key`](crate::Cache::stored_key)): the store
/// ([`StoreId`]) and the key as the store holds it, the handle's namespace
/// in front (`{namespace}:{key}`). Two handles' stored keys are equal
/// exactly when they name the same entry, whatever their namespaces: a
/// registry of what is in use per store (the rate limiter's prefixes) keys
/// itself by it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::Error> {
/// use cache_core::Cache;
///
/// let url = "redis://127.0.0.1:1"; // built whether or not Redis is up
/// let limits = Cache::builder().redis_url(url)?.namespace("limits").build().await?;
/// let nested = Cache::builder().redis_url(url)?.namespace("limits:api").build().await?;
/// // `limits:api:rate` on both: one entry.
/// assert_eq!(limits.stored_key("api:rate"), nested.stored_key("rate"));
/// assert_eq!(nested.stored_key("rate").key(), "limits:api:rate");
/// assert_ne!(limits.stored_key("rate"), Cache::in_memory().stored_key("limits:rate"));
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoredKey {
    store: StoreId,
    key: String,
}

impl StoredKey {
    pub(crate) fn new(store: StoreId, key: String) -> StoredKey {
        StoredKey { store, key }
    }

    /// The store that holds the entry.
    pub fn store(&self) -> &StoreId {
        &self.store
    }

    /// The key as the store holds it: the handle's namespace in front.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.store, self.key)
    }
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("store", &self.store)
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RedisEndpoint, Secret};

    fn endpoint(url: &str) -> RedisEndpoint {
        RedisEndpoint::parse("test", url).unwrap()
    }

    #[test]
    fn a_server_is_its_host_port_and_database_whoever_logs_in() {
        let id = |url: &str| StoreId::of_new_store(&Backend::Redis(endpoint(url)));
        let plain = id("redis://Cache.Internal:6379/2");
        assert_eq!(plain, id("rediss://user:pw@cache.internal:6379/2"));
        assert_ne!(plain, id("redis://cache.internal:6379/3"));
        assert_ne!(plain, id("redis://cache.internal:6380/2"));
        assert_ne!(plain, id("redis://other:6379/2"));
        assert_eq!(plain.to_string(), "redis cache.internal:6379/2");
    }

    #[test]
    fn a_cluster_is_its_seeds_in_any_order() {
        let id = |urls: &[&str]| {
            StoreId::of_new_store(&Backend::Cluster(
                urls.iter().map(|u| endpoint(u)).collect(),
            ))
        };
        let one = id(&["redis://b:7001", "redis://a:7000"]);
        assert_eq!(
            one,
            id(&["redis://a:7000", "redis://b:7001", "redis://a:7000"])
        );
        assert_ne!(one, id(&["redis://a:7000"]));
        assert_eq!(one.to_string(), "redis cluster a:7000,b:7001");
    }

    #[test]
    fn each_in_memory_store_is_its_own() {
        let first = StoreId::of_new_store(&Backend::Memory);
        assert_eq!(first, first.clone());
        assert_ne!(first, StoreId::of_new_store(&Backend::Memory));
    }

    #[test]
    fn no_password_in_display_or_debug() {
        let mut with_password = endpoint("redis://u@h:1/0");
        with_password.password = Some(Secret::new("hunter2"));
        let id = StoreId::of_new_store(&Backend::Redis(with_password));
        let key = StoredKey::new(id.clone(), "k".into());
        for shown in [
            id.to_string(),
            format!("{id:?}"),
            key.to_string(),
            format!("{key:?}"),
        ] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("u@"),
                "{shown}"
            );
        }
    }
}
