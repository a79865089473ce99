//! The invalidation walks: every key under a prefix, in SCAN pages on each
//! primary, within the handle's invalidation budget.

use super::Cache;
use crate::error::{Error, Result};
use crate::resilience::Idempotence;
use crate::store::{Reach, ScanNode};

impl Cache {
    /// Removes every key starting with `prefix` (within the namespace) and
    /// returns how many. Walks the keyspace with SCAN and removes in batches
    /// with UNLINK, on every primary of a cluster; never KEYS. Glob characters
    /// in `prefix` are literal.
    ///
    /// Each SCAN + UNLINK step is one call under the handle's timeout, retries
    /// and circuit breaker, and the whole walk is bounded by the handle's
    /// [`invalidate_budget`](crate::config::CacheBuilder::invalidate_budget) (30 s by
    /// default): past it the call is an [`Error::Timeout`](crate::Error::Timeout). Keys removed
    /// before an error stay removed; calling again finishes the job.
    ///
    /// An empty `prefix` is an [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument): it would
    /// match every key. Say [`invalidate_all`](Self::invalidate_all) for that.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("user:7:summary:balance", &1250, None).await?;
    /// cache.set("user:7:summary:orders", &3, None).await?;
    /// cache.set("user:70:summary:orders", &1, None).await?;
    /// assert_eq!(cache.invalidate_prefix("user:7:summary:").await?, 2);
    /// assert!(cache.exists("user:70:summary:orders").await?);
    /// assert!(cache.invalidate_prefix("").await.is_err()); // say invalidate_all()
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        if prefix.is_empty() {
            return Err(Error::invalid(
                "prefix",
                "empty: it matches every key; call invalidate_all() to remove them all",
            ));
        }
        self.delete_by_prefix(&self.full_key(prefix)).await
    }

    /// Removes every key of this handle: with a namespace, every key under
    /// `{namespace}:` and nothing else; without one, every key of the database
    /// (of every primary of a cluster), other services' and rate-limit
    /// counters included. Same walk and bounds as
    /// [`invalidate_prefix`](Self::invalidate_prefix).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::builder().namespace("billing").build().await?;
    /// cache.set("a", &1, None).await?;
    /// cache.set("b", &2, None).await?;
    /// assert_eq!(cache.invalidate_all().await?, 2);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_all(&self) -> Result<u64> {
        let prefix = match &self.inner.namespace {
            Some(ns) => format!("{ns}:"),
            None => String::new(),
        };
        self.delete_by_prefix(&prefix).await
    }

    /// The walk of [`invalidate_prefix`](Self::invalidate_prefix) over full keys.
    pub(super) async fn delete_by_prefix(&self, prefix: &str) -> Result<u64> {
        let removed = self.unlink_by_prefix(prefix).await;
        if let Some(local) = &self.inner.local {
            local.evict_prefix(prefix);
        }
        removed
    }

    /// [`delete_by_prefix`](Self::delete_by_prefix) without the local tier.
    pub(super) async fn unlink_by_prefix(&self, prefix: &str) -> Result<u64> {
        let budget = self.inner.invalidate_budget;
        let deadline = tokio::time::Instant::now() + budget;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        // A step cut short by the budget rather than by the handle's timeout
        // reports the budget.
        let over_budget = |err: Error| match err {
            Error::Timeout(_) if left().is_zero() => Error::Timeout(budget),
            err => err,
        };
        let nodes: Vec<ScanNode> = match self.inner.reach {
            // A call of its own only where it asks the store (CLUSTER NODES):
            // a local answer must not count as a success for the breaker.
            Reach::Cluster => self
                .run_within(Idempotence::Idempotent, left(), |s| s.scan_nodes())
                .await
                .map_err(over_budget)?,
            Reach::Server | Reach::InProcess => vec![ScanNode::Only],
        };
        let mut removed = 0u64;
        for node in &nodes {
            let mut cursor = 0u64;
            loop {
                // Repeating a step after a failure only rescans a page: idempotent.
                let (next, n) = self
                    .run_within(Idempotence::Idempotent, left(), |s| {
                        s.delete_prefix_page(node, cursor, prefix)
                    })
                    .await
                    .map_err(over_budget)?;
                removed += n;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }
}
