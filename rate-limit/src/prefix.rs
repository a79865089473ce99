//! Which key prefix each live layer of this process counts under, per
//! store: two layers with the same prefix on one store share their
//! counters, so a layer whose policies differ from those of a live layer
//! with its prefix is refused when it is built
//! ([`ConfigError::PrefixInUse`]).
//!
//! Layers with the same prefix and the same policies are allowed: they are
//! instances of one limit (a second router built by the same code, or two
//! app instances in one test), and sharing the counters is what makes the
//! limit exact across them. Another process is not seen: two deployments
//! with different limits on one Redis still need prefixes of their own.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use cache_core::{Cache, StoredKey};

use crate::error::ConfigError;
use crate::limiter::Policy;
use crate::quota::Quota;

/// The prefix as stored (its store, the handle's namespace in front) →
/// what the live layers there count.
type Claims = HashMap<StoredKey, Claimed>;

/// One entry per prefix in use by a live layer: bounded by the layers alive,
/// since the last one's drop removes it.
static CLAIMS: LazyLock<Mutex<Claims>> = LazyLock::new(Mutex::default);

struct Claimed {
    policies: Vec<(String, Quota)>,
    layers: usize,
}

/// A layer's hold on its prefix, released when the layer (its last clone) is dropped.
pub(crate) struct PrefixClaim {
    key: StoredKey,
}

impl PrefixClaim {
    /// Claims `prefix` on `cache`'s store for `policies`, or says which
    /// live layer's policies it would share counters with.
    pub(crate) fn take(
        cache: &Cache,
        prefix: &str,
        policies: &[Policy],
    ) -> Result<PrefixClaim, ConfigError> {
        // One entry for every handle on the same keys: clones and dedicated
        // handles of one in-memory store, Redis handles on one database,
        // namespaces that put the prefix at the same key.
        let key = cache.stored_key(prefix);
        let policies: Vec<(String, Quota)> =
            policies.iter().map(|p| (p.name.clone(), p.quota)).collect();
        // Every update leaves the map whole: a poisoned lock is still usable.
        let mut claims = cache_sync::lock(&CLAIMS);
        match claims.get_mut(&key) {
            Some(claimed) if claimed.policies != policies => {
                return Err(ConfigError::PrefixInUse(prefix.to_string()));
            }
            Some(claimed) => claimed.layers += 1,
            None => {
                claims.insert(
                    key.clone(),
                    Claimed {
                        policies,
                        layers: 1,
                    },
                );
            }
        }
        Ok(PrefixClaim { key })
    }
}

impl Drop for PrefixClaim {
    fn drop(&mut self) {
        let mut claims = cache_sync::lock(&CLAIMS);
        if let Some(claimed) = claims.get_mut(&self.key) {
            claimed.layers -= 1;
            if claimed.layers == 0 {
                claims.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policies(limit: u64) -> Vec<Policy> {
        vec![Policy {
            name: "p".into(),
            quota: Quota::new(limit, Duration::from_secs(60)),
        }]
    }

    #[test]
    fn a_prefix_is_held_while_a_layer_lives_and_other_policies_are_refused() {
        let cache = Cache::in_memory();
        let first = PrefixClaim::take(&cache, "held", &policies(20)).unwrap();
        let err = PrefixClaim::take(&cache.dedicated(), "held", &policies(5)).err();
        assert_eq!(err, Some(ConfigError::PrefixInUse("held".into())));
        // The same limit: another instance of it.
        let same = PrefixClaim::take(&cache, "held", &policies(20)).unwrap();
        // Another store, or another prefix: nothing shared.
        let elsewhere = PrefixClaim::take(&Cache::in_memory(), "held", &policies(5)).unwrap();
        let other = PrefixClaim::take(&cache, "held2", &policies(5)).unwrap();
        drop((first, elsewhere, other));
        assert!(PrefixClaim::take(&cache, "held", &policies(5)).is_err());
        drop(same);
        // The last holder gone, the prefix is free for another limit.
        assert!(PrefixClaim::take(&cache, "held", &policies(5)).is_ok());
    }

    #[tokio::test]
    async fn handles_on_one_redis_database_share_their_prefixes_across_namespaces() {
        // Nothing listens on port 1: the handles are built all the same.
        let handle = |db: u8, namespace: &'static str| async move {
            Cache::builder()
                .redis_url(&format!("redis://127.0.0.1:1/{db}"))
                .unwrap()
                .namespace(namespace)
                .build()
                .await
                .unwrap()
        };
        let limits = handle(3, "limits").await;
        let held = PrefixClaim::take(&limits, "api:rate", &policies(20)).unwrap();
        // `limits:api:rate` again, through another handle and namespace.
        let nested = handle(3, "limits:api").await;
        let err = PrefixClaim::take(&nested, "rate", &policies(5)).err();
        assert_eq!(err, Some(ConfigError::PrefixInUse("rate".into())));
        // Another database, or another namespace: other keys.
        let elsewhere = PrefixClaim::take(&handle(4, "limits").await, "api:rate", &policies(5));
        let other = PrefixClaim::take(&handle(3, "other").await, "api:rate", &policies(5));
        assert!(elsewhere.is_ok() && other.is_ok());
        drop(held);
    }
}
