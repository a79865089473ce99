//! The byte-level paths: raw values under full keys (the namespace in
//! front), within the handle's size cap, through the local tier when there
//! is one; raw messages on channels. What the engines (`memoize`, `stored`,
//! `events`) build on.

use std::time::Duration;

use super::Cache;
use crate::config::validate_ttl;
use crate::error::{Error, Result};
use crate::resilience::Idempotence;
use crate::stats::EventStats;
use crate::store::pubsub::{Listener, Topic};

impl Cache {
    /// `PUBLISH` (`SPUBLISH` on a cluster) of raw bytes; sent once, never
    /// retried. In process, into the in-memory store's listeners.
    pub(crate) async fn publish_bytes(&self, channel: &str, payload: &[u8]) -> Result<u64> {
        // In process: delivered at once, no future to allocate.
        if let Some(reached) = self.inner.store.publish_at_once(channel, payload) {
            return Ok(reached);
        }
        self.run(Idempotence::CountsOnce, |s| s.publish(channel, payload))
            .await
    }

    /// A listener to `topics` with a queue of `capacity` messages, once the
    /// store has confirmed them. Not a call under the breaker or retried:
    /// the store bounds its confirmation (see `Store::subscribe`).
    pub(crate) async fn subscribe_bytes(
        &self,
        topics: Vec<Topic>,
        capacity: usize,
    ) -> Result<Listener> {
        self.inner.store.subscribe(topics, capacity).await
    }

    /// Whether the store subscribes to patterns (not a cluster).
    pub(crate) fn subscribes_patterns(&self) -> bool {
        self.inner.store.subscribes_patterns()
    }

    /// The counters and the connection state of the store's pub/sub.
    pub(crate) fn pubsub_stats(&self) -> EventStats {
        self.inner.store.pubsub_stats()
    }

    /// [`get_full_within`](Self::get_full_within), keeping what it read in
    /// the local tier unless the key changed meanwhile.
    pub(crate) async fn get_full_filling(
        &self,
        full_key: &str,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>> {
        let Some(local) = &self.inner.local else {
            return self.get_full_within(full_key, timeout).await;
        };
        let watch = local.watch(full_key);
        let (bytes, expires) = self.get_full_expiring(full_key, timeout).await?;
        if let Some(bytes) = &bytes {
            local.fill(watch, bytes, None, expires);
        }
        Ok(bytes)
    }

    /// [`get_full_within`](Self::get_full_within) and the instant the key
    /// expires in Redis, if it has a TTL, in the same round trip: a local
    /// copy must not outlive the key. Counted from before the read was sent,
    /// so never later than the real expiry.
    pub(crate) async fn get_full_expiring(
        &self,
        full_key: &str,
        timeout: Duration,
    ) -> Result<(Option<Vec<u8>>, Option<std::time::Instant>)> {
        let sent = std::time::Instant::now();
        let cap = self.inner.max_value_bytes;
        let (bytes, left) = self
            .run_within(Idempotence::Idempotent, timeout, |s| {
                s.get_expiring(full_key, cap)
            })
            .await?;
        Ok((self.within_cap(full_key, bytes), expiry(sent, left)))
    }

    /// [`set_full_within`](Self::set_full_within), keeping the value in the
    /// local tier (under `alias`, if given) once Redis's invalidation of this
    /// very write has come back, and no other one (see [`crate::local`]).
    pub(crate) async fn set_full_filling(
        &self,
        full_key: &str,
        alias: Option<&[u8]>,
        value: &[u8],
        decoded: Option<crate::local::Decoded>,
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<()> {
        // A zero TTL deletes the key: nothing to keep.
        let deletes = ttl.is_some_and(|ttl| ttl.as_millis() == 0);
        let Some(local) = self.inner.local.as_ref().filter(|_| !deletes) else {
            return self.set_full_within(full_key, value, ttl, timeout).await;
        };
        let watch = local.watch(full_key);
        let written = self.write_full_within(full_key, value, ttl, timeout).await;
        if written.is_ok() && local.barrier().await {
            local.fill_own(watch, value, decoded, alias, ttl);
        } else {
            drop(watch);
            local.evict(full_key);
        }
        written
    }

    /// Drops the local copy of a key this handle just changed.
    pub(super) fn local_evict(&self, full_key: &str) {
        if let Some(local) = &self.inner.local {
            local.evict(full_key);
        }
    }

    /// Raw values of full keys in one round trip, within `timeout`; each
    /// over the cap is `None`.
    pub(crate) async fn get_many_full_within(
        &self,
        full_keys: &[String],
        timeout: Duration,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let cap = self.inner.max_value_bytes;
        let values = self
            .run_within(Idempotence::Idempotent, timeout, |s| {
                s.get_many(full_keys, cap)
            })
            .await?;
        Ok(full_keys
            .iter()
            .zip(values)
            .map(|(key, bytes)| self.within_cap(key, bytes))
            .collect())
    }

    /// Reads raw bytes. No codec, no hit/miss counting.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("price", &72000.5, None).await?;
    /// // Values are plain JSON: what any other Redis client reads.
    /// assert_eq!(cache.get_bytes("price").await?.as_deref(), Some(&b"72000.5"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_full_within(&self.full_key(key), self.timeout())
            .await
    }

    /// Reads a key that already has the namespace in front, within `timeout`
    /// (at most the handle's).
    ///
    /// A value over [`max_value_bytes`](Self::max_value_bytes) is `None` (a
    /// miss, counted as oversized); at most the cap plus one byte is read.
    pub(crate) async fn get_full_within(
        &self,
        full_key: &str,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>> {
        let cap = self.inner.max_value_bytes;
        let bytes = self
            .run_within(Idempotence::Idempotent, timeout, |s| s.get(full_key, cap))
            .await?;
        Ok(self.within_cap(full_key, bytes))
    }

    /// `bytes` if within the cap; else `None`, counted and logged.
    pub(super) fn within_cap(&self, full_key: &str, bytes: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match bytes {
            Some(bytes) if bytes.len() > self.inner.max_value_bytes => {
                self.inner.counters.record_oversized();
                tracing::debug!(
                    key = full_key,
                    max_value_bytes = self.inner.max_value_bytes,
                    "cache entry is over max_value_bytes; treated as a miss"
                );
                None
            }
            bytes => bytes,
        }
    }

    /// Refuses a value the handle would never read back.
    pub(super) fn check_size(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.inner.max_value_bytes {
            return Err(Error::invalid(
                "value",
                format!(
                    "{} bytes, over the handle's max_value_bytes of {}",
                    value.len(),
                    self.inner.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Writes raw bytes, with an optional TTL (zero removes the key, as Redis does).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set_bytes("written-by-python", br#"{"a": 1}"#, None).await?;
    /// let value: Option<std::collections::HashMap<String, i32>> = cache.get("written-by-python").await?;
    /// assert_eq!(value.map(|map| map["a"]), Some(1));
    /// # Ok(()) }
    /// ```
    pub async fn set_bytes(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.set_full_within(&self.full_key(key), value, ttl, self.timeout())
            .await
    }

    /// Writes a key that already has the namespace in front, within `timeout`
    /// (at most the handle's).
    pub(crate) async fn set_full_within(
        &self,
        full_key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<()> {
        let written = self.write_full_within(full_key, value, ttl, timeout).await;
        self.local_evict(full_key);
        written
    }

    /// [`set_full_within`](Self::set_full_within) without the local tier.
    pub(super) async fn write_full_within(
        &self,
        full_key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<()> {
        if let Some(ttl) = ttl {
            validate_ttl("ttl", ttl)?;
        }
        self.check_size(value)?;
        if ttl.is_some_and(|ttl| ttl.as_millis() == 0) {
            return self
                .run_within(Idempotence::Idempotent, timeout, |s| s.delete(full_key))
                .await
                .map(drop);
        }
        self.run_within(Idempotence::Idempotent, timeout, |s| {
            s.set(full_key, value, ttl)
        })
        .await
    }
}

/// When a key read at `sent` with `left` to live expires; `None`: no expiry.
pub(super) fn expiry(
    sent: std::time::Instant,
    left: Option<Duration>,
) -> Option<std::time::Instant> {
    // Past what an Instant holds: as good as never.
    left.and_then(|left| sent.checked_add(left))
}
