//! The typed API: values through the handle's codec, counters and keys'
//! lifetimes.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Cache;
use super::bytes::expiry;
use crate::codec::Codec;
use crate::config::validate_ttl;
use crate::error::{Error, Result};
use crate::resilience::Idempotence;
use crate::store::atomic::IncrWindow;
use crate::store::{KeyTtl, WindowCount, WindowIncr};

impl Cache {
    /// Reads and decodes a JSON value. A missing key, or a value that does not
    /// decode as `T` (corrupt, foreign, old schema), is `Ok(None)`: a miss.
    ///
    /// The handle's timeout bounds the whole call, decoding included: a value
    /// that is only decoded after it is an [`Error::Timeout`](crate::Error::Timeout).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("user:7:name", "Ada", None).await?;
    /// assert_eq!(cache.get::<String>("user:7:name").await?.as_deref(), Some("Ada"));
    /// // A value that does not decode as the type asked for is a miss, not an error.
    /// assert_eq!(cache.get::<u64>("user:7:name").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let started = tokio::time::Instant::now();
        let full_key = self.full_key(key);
        let bytes = if let Some(bytes) = self.local_tier().and_then(|local| local.get(&full_key)) {
            Some(bytes.to_vec())
        } else {
            match self.get_full_filling(&full_key, self.timeout()).await {
                Ok(bytes) => bytes,
                Err(err) => match self
                    .local_tier()
                    .and_then(|l| l.get_stale(full_key.as_bytes()))
                {
                    Some(entry) => Some(entry.bytes.to_vec()),
                    None => return Err(err),
                },
            }
        };
        let value = match bytes {
            // Written with a stored-value option (tags, encryption, ...).
            Some(bytes) if crate::envelope::is_envelope(&bytes) => {
                self.decode_enveloped(key, bytes, false).await?
            }
            bytes => self.decode(key, bytes.as_deref()),
        };
        self.check_deadline(started)?;
        Ok(value)
    }

    /// A timeout when a call that started at `started` is past the handle's
    /// deadline (never on the in-memory store, which has none).
    pub(super) fn check_deadline(&self, started: tokio::time::Instant) -> Result<()> {
        if !self.inner.reach.in_process() && started.elapsed() > self.timeout() {
            self.inner.counters.record_timeout();
            return Err(Error::Timeout(self.timeout()));
        }
        Ok(())
    }

    /// Decodes `bytes` read under `key` with the handle's codec, counting the
    /// hit or miss. Undecodable bytes are a miss, logged without their content.
    pub(crate) fn decode<T: DeserializeOwned>(&self, key: &str, bytes: Option<&[u8]>) -> Option<T> {
        self.decode_with(self.inner.codec, key, bytes)
    }

    /// [`decode`](Self::decode) with a given codec.
    pub(crate) fn decode_with<T: DeserializeOwned>(
        &self,
        codec: Codec,
        key: &str,
        bytes: Option<&[u8]>,
    ) -> Option<T> {
        let counters = &self.inner.counters;
        let Some(bytes) = bytes else {
            counters.record_miss();
            return None;
        };
        match codec.decode(bytes) {
            Ok(value) => {
                counters.record_hit();
                Some(value)
            }
            Err(err) => {
                counters.record_decode_error();
                counters.record_miss();
                tracing::debug!(key, error = %err, "cache entry did not decode; treated as a miss");
                None
            }
        }
    }

    /// Encodes `value` (JSON unless the handle says otherwise) and stores it,
    /// with an optional TTL. A TTL over [`MAX_TTL`](crate::MAX_TTL) or an
    /// encoding over [`max_value_bytes`](Self::max_value_bytes) is an
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument), and nothing is sent.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{ErrorKind, MAX_TTL};
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("session:1", &["read", "write"], Some(Duration::from_secs(1800))).await?;
    /// let too_long = cache.set("session:1", &1, Some(MAX_TTL * 2)).await.unwrap_err();
    /// assert_eq!(too_long.kind(), ErrorKind::InvalidArgument); // and nothing was written
    /// # Ok(()) }
    /// ```
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = self.inner.codec.encode(value)?;
        self.set_bytes(key, &bytes, ttl).await
    }

    /// Reads several keys in one round trip (MGET); the answer is in key order.
    /// Values over [`max_value_bytes`](Self::max_value_bytes) are misses, as
    /// with [`get`](Self::get), and the timeout includes decoding.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set_many(&[("price:1", 10.5), ("price:2", 20.0)], None).await?;
    /// let prices: Vec<Option<f64>> = cache.get_many(&["price:1", "price:3", "price:2"]).await?;
    /// assert_eq!(prices, [Some(10.5), None, Some(20.0)]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        let started = tokio::time::Instant::now();
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k).into_owned()).collect();
        if let Some(local) = &self.inner.local {
            return self.get_many_through(local, keys, &full, started).await;
        }
        let cap = self.inner.max_value_bytes;
        let values = self
            .run(Idempotence::Idempotent, |s| s.get_many(&full, cap))
            .await?;
        let decoded = full
            .iter()
            .zip(keys)
            .zip(values)
            .map(|((full_key, key), bytes)| {
                let bytes = self.within_cap(full_key, bytes);
                self.decode(key, bytes.as_deref())
            })
            .collect();
        self.check_deadline(started)?;
        Ok(decoded)
    }

    /// [`get_many`](Self::get_many) through the local tier: the keys it
    /// holds are not asked for; the others are read in one round trip and
    /// kept, unless changed meanwhile.
    pub(super) async fn get_many_through<T: DeserializeOwned>(
        &self,
        local: &crate::local::LocalTier,
        keys: &[&str],
        full: &[String],
        started: tokio::time::Instant,
    ) -> Result<Vec<Option<T>>> {
        let mut found: Vec<Option<Arc<[u8]>>> = full.iter().map(|k| local.get(k)).collect();
        let missing: Vec<String> = full
            .iter()
            .zip(&found)
            .filter(|(_, found)| found.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if !missing.is_empty() {
            let watches: Vec<_> = missing.iter().map(|key| local.watch(key)).collect();
            let cap = self.inner.max_value_bytes;
            let sent = std::time::Instant::now();
            let values = self
                .run(Idempotence::Idempotent, |s| {
                    s.get_many_expiring(&missing, cap)
                })
                .await?;
            let mut read = missing.iter().zip(values).zip(watches);
            for slot in found.iter_mut().filter(|slot| slot.is_none()) {
                let Some(((full_key, (bytes, left)), watch)) = read.next() else {
                    break;
                };
                let Some(bytes) = self.within_cap(full_key, bytes) else {
                    continue;
                };
                local.fill(watch, &bytes, None, expiry(sent, left));
                *slot = Some(Arc::from(bytes));
            }
        }
        let decoded = found
            .iter()
            .zip(keys)
            .map(|(bytes, key)| self.decode(key, bytes.as_deref()))
            .collect();
        self.check_deadline(started)?;
        Ok(decoded)
    }

    /// Writes several values, all with the same optional TTL, pipelined.
    pub async fn set_many<T: Serialize>(
        &self,
        entries: &[(&str, T)],
        ttl: Option<Duration>,
    ) -> Result<()> {
        if let Some(ttl) = ttl {
            validate_ttl("ttl", ttl)?;
        }
        if ttl.is_some_and(|ttl| ttl.as_millis() == 0) {
            for (key, _) in entries {
                self.delete(key).await?;
            }
            return Ok(());
        }
        let encoded = entries
            .iter()
            .map(|(key, value)| {
                let bytes = self.inner.codec.encode(value)?;
                self.check_size(&bytes)?;
                Ok((self.full_key(key).into_owned(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let written = self
            .run(Idempotence::Idempotent, |s| s.set_many(&encoded, ttl))
            .await;
        for (key, _) in &encoded {
            self.local_evict(key);
        }
        written
    }

    /// Removes a key; `true` if it existed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &1, None).await?;
    /// assert!(cache.exists("k").await?);
    /// assert!(cache.delete("k").await?);
    /// assert!(!cache.delete("k").await?); // already gone
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.full_key(key);
        let deleted = self.run(Idempotence::Idempotent, |s| s.delete(&key)).await;
        self.local_evict(&key);
        deleted
    }

    /// `true` if the key exists (and has not expired).
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let key = self.full_key(key);
        self.run(Idempotence::Idempotent, |s| s.exists(&key)).await
    }

    /// Sets a key's time to live; `false` if there is no such key. A zero TTL
    /// removes the key, as Redis does.
    /// A TTL over [`MAX_TTL`](crate::MAX_TTL) is an
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::KeyTtl;
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// cache.set("k", &1, None).await?;
    /// assert_eq!(cache.ttl("k").await?, KeyTtl::Persistent);
    /// assert!(cache.expire("k", Duration::from_secs(60)).await?);
    /// assert!(matches!(cache.ttl("k").await?, KeyTtl::Expires(left) if left <= Duration::from_secs(60)));
    /// assert_eq!(cache.ttl("other").await?, KeyTtl::Missing);
    /// # Ok(()) }
    /// ```
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        validate_ttl("ttl", ttl)?;
        if ttl.as_millis() == 0 {
            return self.delete(key).await;
        }
        let key = self.full_key(key);
        let expiring = self
            .run(Idempotence::Idempotent, |s| s.expire(&key, ttl))
            .await;
        self.local_evict(&key);
        expiring
    }

    /// A key's remaining time to live (Redis `PTTL`).
    pub async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let key = self.full_key(key);
        self.run(Idempotence::Idempotent, |s| s.ttl(&key)).await
    }

    /// Adds `by` to an integer counter (created at 0) and returns the new value.
    /// A key holding something else than an integer is an [`Error::Command`](crate::Error::Command).
    /// Not retried after an ambiguous failure, so it never counts twice.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// assert_eq!(cache.incr("visits", 1).await?, 1);
    /// assert_eq!(cache.incr("visits", 10).await?, 11);
    /// cache.set("name", "Ada", None).await?;
    /// assert_eq!(cache.incr("name", 1).await.unwrap_err().kind(), cache_core::ErrorKind::Command);
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        let key = self.full_key(key);
        let count = self
            .run(Idempotence::CountsOnce, |s| s.incr(&key, by))
            .await;
        self.local_evict(&key);
        count
    }

    /// A fixed-window counter: adds `by` and, when the counter is new (or has no
    /// expiry), makes it expire after `window`, all in one atomic step (a Lua
    /// script on Redis). Returns the count and the time until the window resets.
    /// This is what the rate limiter counts with. A window outside 1 ms to
    /// [`MAX_WINDOW`](crate::MAX_WINDOW), or `by` over 2^53, is an
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// let window = Duration::from_secs(60);
    /// cache.incr_window("logins:ada", 1, window).await?;
    /// let now = cache.incr_window("logins:ada", 1, window).await?;
    /// assert_eq!(now.count, 2);
    /// assert!(now.reset_after <= window);
    /// # Ok(()) }
    /// ```
    pub async fn incr_window(&self, key: &str, by: u64, window: Duration) -> Result<WindowCount> {
        self.incr_window_within(key, by, window, self.timeout())
            .await
    }

    /// [`incr_window`](Self::incr_window) within `timeout` (at most the
    /// handle's): a caller with a tighter deadline, such as the rate limiter,
    /// gets it enforced here, where running out of time counts as a failure
    /// for the circuit breaker like any other timeout.
    pub async fn incr_window_within(
        &self,
        key: &str,
        by: u64,
        window: Duration,
        timeout: Duration,
    ) -> Result<WindowCount> {
        // 1 ms to MAX_WINDOW, checked before anything is sent: the same
        // InvalidArgument on every backend.
        let window_ms = crate::store::window_millis(window)?;
        crate::store::check_increment(by)?;
        let key = self.full_key(key);
        let keys = [&*key];
        // Both within 2^53: exact as i64.
        let args = [by as i64, window_ms as i64, crate::store::MAX_COUNT as i64];
        let reply = self
            .run_within(Idempotence::CountsOnce, timeout, |s| {
                s.run_atomic(&IncrWindow, &keys, &args)
            })
            .await;
        self.local_evict(&key);
        let [count, left_ms] = reply?[..] else {
            let shape = crate::error::StoreError::unexpected("incr_window");
            return Err(crate::error::CommandError::UnexpectedReply(shape).into());
        };
        Ok(WindowCount {
            count: u64::try_from(count).unwrap_or(0),
            reset_after: Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)),
        })
    }

    /// Fixed-window counters of one window without a script, for the rate
    /// limiter's common case: per key (namespaced like every key; one hash
    /// slot on a cluster) `INCRBY key by` (`INCR key` for 1), `PEXPIRE key
    /// window LT` and, if its `read_ttl` (one per key), `PTTL key` (without
    /// it a count comes with its window's end on Redis only when its
    /// `PEXPIRE` started the window, `window` then: one command fewer per
    /// key for a caller that needs the end of few windows, read with
    /// [`ttl_within`](Self::ttl_within) then, or that knows it already),
    /// all in one pipelined write, within `timeout` (at most the handle's), under the handle's circuit breaker, never sent again
    /// once it may have run. Unlike [`incr_window`](Self::incr_window) it
    /// leaves a value that is no counter to its caller
    /// ([`WindowIncr::NotACounter`]), which replaces it with a script that
    /// reads it. `Ok(None)`: the server takes no `PEXPIRE` options (Redis
    /// before 7.0, found out once and logged), nothing was sent: count
    /// with a script. `by` has one increment per key, each 1 to 2^53; the
    /// window is checked as `incr_window`'s.
    ///
    /// Not part of the promised API: the rate limiter's counting.
    #[doc(hidden)]
    pub async fn incr_windows_within(
        &self,
        keys: &[&str],
        by: &[u64],
        window: Duration,
        read_ttl: &[bool],
        timeout: Duration,
    ) -> Result<Option<Vec<WindowIncr>>> {
        let window_ms = crate::store::window_millis(window)?;
        if keys.len() != by.len() {
            return Err(Error::invalid("by", "one increment per key"));
        }
        if keys.len() != read_ttl.len() {
            return Err(Error::invalid("read_ttl", "one flag per key"));
        }
        for &by in by {
            if by == 0 {
                return Err(Error::invalid("by", "must be at least 1"));
            }
            crate::store::check_increment(by)?;
        }
        // Within 2^53: exact as i64. One key (most calls) needs no list.
        let one: [i64; 1];
        let many: Vec<i64>;
        let increments: &[i64] = match by {
            &[by] => {
                one = [by as i64];
                &one
            }
            _ => {
                many = by.iter().map(|&by| by as i64).collect();
                &many
            }
        };
        let owned = self.full_keys(keys);
        let named: Vec<&str>;
        let keys = match &owned {
            None => keys,
            Some(owned) => {
                named = owned.iter().map(String::as_str).collect();
                &named
            }
        };
        self.run_within(Idempotence::CountsOnce, timeout, |s| {
            s.incr_windows(keys, increments, window_ms as i64, read_ttl)
        })
        .await
    }

    /// [`ttl`](Self::ttl) within `timeout` (at most the handle's).
    ///
    /// Not part of the promised API: the rate limiter's reading of a
    /// window's end after [`incr_windows_within`](Self::incr_windows_within)
    /// without it.
    #[doc(hidden)]
    pub async fn ttl_within(&self, key: &str, timeout: Duration) -> Result<KeyTtl> {
        let key = self.full_key(key);
        self.run_within(Idempotence::Idempotent, timeout, |s| s.ttl(&key))
            .await
    }
}
