//! One behavioural suite per test file, run unchanged on every backend, and
//! the handles the tests open.
//!
//! A test file writes each behaviour once, as `behaviour::name(fixture)`, and
//! [`suite!`](crate::suite!) instantiates it as `memory_store::name`,
//! `standalone_redis::name` and `redis_cluster::name`. The fixture is the
//! file's own: an `async fn(Backend, &str) -> F` that opens what the
//! behaviours take (a handle, a handle and a key prefix, ...) on the backend,
//! given the test's name.

use std::time::Duration;

use cache_core::{Cache, CacheBuilder};

use crate::{shared_cluster, shared_server};

/// The call timeout of the suite's handles on Redis: generous, so that a
/// loaded two-core machine does not turn a slow reply into a failure.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The API a memoization behaviour runs through: the suites of
/// `#[cached]` run each behaviour that both can express once through the
/// attribute and once through `Cache::get_or_set` / `try_get_or_set` with
/// the key and `EntryOptions` the attribute would use, so that the two keep
/// the same guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `#[cached(...)]`.
    Macro,
    /// `Cache::get_or_set` / `Cache::try_get_or_set`.
    Function,
}

/// A store the behaviours run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory store of the process.
    Memory,
    /// The shared standalone `redis-server` ([`shared_server`]).
    Standalone,
    /// The shared three-node cluster ([`shared_cluster`]).
    Cluster,
}

impl Backend {
    /// A builder on this backend's shared store, with the handle's defaults.
    pub fn builder(self) -> CacheBuilder {
        match self {
            Backend::Memory => Cache::builder().in_memory(),
            Backend::Standalone => redis(&shared_server().url()),
            Backend::Cluster => cluster(shared_cluster().urls()),
        }
    }

    /// A builder with the suite's [`TIMEOUT`] on Redis (the in-memory store
    /// keeps the default: it has no I/O to wait for).
    pub fn suite_builder(self) -> CacheBuilder {
        match self {
            Backend::Memory => self.builder(),
            Backend::Standalone | Backend::Cluster => self.builder().timeout(TIMEOUT),
        }
    }
}

/// A builder on the Redis at `url`.
pub fn redis(url: &str) -> CacheBuilder {
    Cache::builder()
        .redis_url(url)
        .expect("the test's Redis URL is valid")
}

/// A builder on the Redis Cluster reached through `urls`.
pub fn cluster<I, S>(urls: I) -> CacheBuilder
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    Cache::builder()
        .cluster_urls(urls)
        .expect("the test's cluster URLs are valid")
}

/// Builds the handle (building never connects, so only a bad setting fails).
pub async fn build(builder: CacheBuilder) -> Cache {
    builder
        .build()
        .await
        .expect("the test's handle settings are valid")
}

/// A store for one test: a handle on the backend's shared store, with the
/// suite's [`TIMEOUT`] (a store call timed out on a loaded machine fails
/// open, which exactness checks would count as over-admission), and the way
/// to open another handle on the same store (a second instance of an app).
#[derive(Clone)]
pub struct Store {
    /// The test's handle.
    pub cache: Cache,
    /// The backend the store is on.
    pub backend: Backend,
}

impl Store {
    /// Another handle on the same store, as a second instance of the app
    /// would open it; on the in-memory store the same one (one process,
    /// one store).
    pub async fn another_handle(&self) -> Cache {
        match self.backend {
            Backend::Memory => self.cache.clone(),
            Backend::Standalone | Backend::Cluster => build(self.backend.suite_builder()).await,
        }
    }

    /// A raw command on the store through `redis-cli`, its output trimmed
    /// (a key of another type, say); panics on the in-memory store, which
    /// has none.
    pub fn cli(&self, args: &[&str]) -> String {
        match self.backend {
            Backend::Memory => panic!("no raw commands on the in-memory store"),
            Backend::Standalone => shared_server().cli(args),
            Backend::Cluster => shared_cluster().cli(args),
        }
        .trim()
        .to_string()
    }
}

/// The fixture of suites that take a [`Store`] (`fixture: store;`).
pub async fn store(backend: Backend, _test: &str) -> Store {
    Store {
        cache: build(backend.suite_builder()).await,
        backend,
    }
}

/// Instantiates each behaviour once per backend: `memory_store::name`,
/// `standalone_redis::name`, `redis_cluster::name`.
///
/// ```text
/// async fn fixture(backend: tests::suite::Backend, test: &str) -> (Cache, String) { ... }
///
/// tests::suite! {
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     fixture: fixture;
///     set_then_get_returns_the_value,
///     missing_key_is_none,
/// }
/// ```
///
/// Each test runs `behaviour::name(fixture(backend, "name").await).await`,
/// `behaviour` and `fixture` being items of the invoking module. The test
/// attribute defaults to `#[tokio::test]`. Starting with `redis_only` puts
/// the tests under `redis_only::`, leaves out the in-memory store and runs
/// `redis_behaviour::name` instead.
#[macro_export]
macro_rules! suite {
    (#[$test:meta] fixture: $fixture:ident; $($name:ident),* $(,)?) => {
        $crate::suite!(@backend $test, $fixture, behaviour, memory_store, Memory, $($name),*);
        $crate::suite!(@backend $test, $fixture, behaviour, standalone_redis, Standalone, $($name),*);
        $crate::suite!(@backend $test, $fixture, behaviour, redis_cluster, Cluster, $($name),*);
    };
    (#[$test:meta] redis_only fixture: $fixture:ident; $($name:ident),* $(,)?) => {
        mod redis_only {
            use super::*;
            $crate::suite!(@backend $test, $fixture, redis_behaviour, standalone_redis, Standalone, $($name),*);
            $crate::suite!(@backend $test, $fixture, redis_behaviour, redis_cluster, Cluster, $($name),*);
        }
    };
    (fixture: $fixture:ident; $($name:ident),* $(,)?) => {
        $crate::suite!(#[tokio::test] fixture: $fixture; $($name),*);
    };
    (redis_only fixture: $fixture:ident; $($name:ident),* $(,)?) => {
        $crate::suite!(#[tokio::test] redis_only fixture: $fixture; $($name),*);
    };
    (@backend $test:meta, $fixture:ident, $behaviour:ident, $module:ident, $backend:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[$test]
                async fn $name() {
                    let fixture = super::$fixture($crate::suite::Backend::$backend, stringify!($name)).await;
                    super::$behaviour::$name(fixture).await;
                }
            )*
        }
    };
}
