//! [`Backend`]: which store a handle talks to.

use std::fmt;

use super::RedisEndpoint;

/// Which store a [`Cache`](crate::Cache) talks to.
///
/// New stores may be added (a match needs a `_` arm).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The embedded in-memory store: one process, no network.
    Memory,
    /// One Redis server (or a primary behind a proxy).
    Redis(RedisEndpoint),
    /// Redis Cluster, discovered from these seed nodes.
    Cluster(Vec<RedisEndpoint>),
}

impl Backend {
    /// The ACL user the store logs in as, when one is configured (on a
    /// cluster, the first seed's: every node gets the same credentials).
    pub(crate) fn user_name(&self) -> Option<&str> {
        let endpoint = match self {
            Backend::Redis(endpoint) => Some(endpoint),
            Backend::Cluster(nodes) => nodes.first(),
            Backend::Memory => None,
        };
        endpoint.and_then(|endpoint| endpoint.username.as_deref())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Memory => f.write_str("in-memory"),
            Backend::Redis(endpoint) => write!(f, "redis {endpoint}"),
            Backend::Cluster(nodes) => {
                f.write_str("redis cluster ")?;
                for (i, node) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{node}")?;
                }
                Ok(())
            }
        }
    }
}
