//! Tags: O(1) invalidation of every entry carrying one.
//!
//! Each tag has a version key, `__tag:{tag}` (under the handle's namespace),
//! holding a random number in `1..=i64::MAX`, so that `INCR` from any client
//! is a valid bump (absent, or not a decimal integer: version 0). An entry records the
//! versions of its tags, read *before* its value was computed; it is valid
//! while every one of them is unchanged and present (a writer that finds a
//! version key absent sets it first, so no entry records 0). [`Cache::invalidate_tag`] is one
//! `SET` of a fresh version. Reads fetch the entry and its tag versions in
//! one round trip (a pipeline of GETRANGEs, which the cluster client routes
//! per slot, so the keys need not share one).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::error::{Error, Result};

use super::entry::Seal;

/// The version key of `tag` (without the namespace).
pub(crate) fn tag_key(tag: &str) -> String {
    format!("__tag:{tag}")
}

/// The largest version drawn: versions stay within Redis' integers, so
/// that another program can bump a tag with `INCR` (Redis and Valkey refuse
/// to increment a value over `i64::MAX`).
const MAX_VERSION: u64 = i64::MAX as u64;

/// A fresh random version, never 0.
fn fresh_version() -> u64 {
    fastrand::u64(1..=MAX_VERSION)
}

/// A version as stored: decimal text. Absent is 0, and so is anything that
/// does not parse (garbage another writer left): no entry records 0, so it
/// is a miss for every entry carrying the tag, and the next writer sets a
/// fresh version. Read as one fixed number, a change from one unparsable
/// value to another would go unnoticed.
pub(crate) fn parse_version(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// `true` when the recorded tags are exactly `current` (names and versions),
/// and no tag's version key is absent: an absent key may have been evicted
/// (it has no TTL, so `allkeys-*` policies can take it) or deleted after an
/// invalidation, and reading it as a version that entries recorded before
/// it was ever set would bring back what it invalidated.
pub(crate) fn tags_match(recorded: &[(String, u64)], current: &[(String, u64)]) -> bool {
    recorded == current && current.iter().all(|(_, version)| *version != 0)
}

impl Cache {
    /// Makes every entry tagged `tag` a miss, on every instance, with one
    /// Redis write (a `SET` of the tag's version key to a fresh random
    /// version in `1..=i64::MAX`; the key has no TTL). Entries are not
    /// deleted: they expire with their TTL. Another program does the same
    /// with `INCR {namespace}:__tag:{tag}` (or any `SET` of another value).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// let cache = cache_core::Cache::in_memory();
    /// let ttl = Some(Duration::from_secs(60));
    /// cache.set_tagged("user:7:summary", &1250, &["user:7"], ttl).await?;
    /// assert_eq!(cache.get::<i64>("user:7:summary").await?, Some(1250));
    /// cache.invalidate_tag("user:7").await?;
    /// assert_eq!(cache.get::<i64>("user:7:summary").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        if tag.is_empty() {
            return Err(Error::invalid("tag", "empty"));
        }
        let version = fresh_version();
        crate::telemetry::tag_invalidated();
        self.set_bytes(&tag_key(tag), version.to_string().as_bytes(), None)
            .await
    }

    /// Stores `value` under `key` with `tags` (at most 255): it reads as
    /// with [`get`](Self::get) until one of the tags is invalidated with
    /// [`invalidate_tag`](Self::invalidate_tag). The entry carries the
    /// envelope described in docs/stored-values.md; the tags' versions are read first
    /// (one round trip), then the entry written.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    ///
    /// let cache = cache_core::Cache::in_memory();
    /// let ttl = Some(Duration::from_secs(600));
    /// cache.set_tagged("doc:1", "budget 2027", &["team:1", "project:9"], ttl).await?;
    /// cache.set_tagged("doc:2", "roadmap", &["team:2", "project:9"], ttl).await?;
    /// cache.invalidate_tag("project:9").await?; // both, in one write
    /// assert_eq!(cache.get::<String>("doc:1").await?, None);
    /// assert_eq!(cache.get::<String>("doc:2").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn set_tagged<T: Serialize + ?Sized, S: AsRef<str>>(
        &self,
        key: &str,
        value: &T,
        tags: &[S],
        ttl: Option<Duration>,
    ) -> Result<()> {
        crate::envelope::check_tags(tags)?;
        let bytes = self.codec().encode(value)?;
        let names: Vec<String> = tags.iter().map(|t| t.as_ref().to_owned()).collect();
        let versions = self.tag_versions(&names, self.timeout()).await?;
        let mut tags: Vec<(String, u64)> = names.into_iter().zip(versions).collect();
        self.fresh_tag_versions(&mut tags, self.timeout()).await?;
        let seal = Seal {
            tags,
            ..Seal::default()
        };
        let sealed = self.seal(&bytes, &seal)?;
        self.set_bytes(key, &sealed, ttl).await
    }

    /// Gives every tag of `versions` whose version key is absent or
    /// unparsable (version 0) a fresh random version, before a value is computed or written
    /// under them: an entry never records version 0, so an absent key is a
    /// miss for every entry carrying the tag. Setting a key that is absent
    /// only invalidates entries that were misses already (at worst, a
    /// concurrent writer's, once), so no `NX` is needed.
    pub(crate) async fn fresh_tag_versions(
        &self,
        versions: &mut [(String, u64)],
        timeout: Duration,
    ) -> Result<()> {
        for (tag, version) in versions.iter_mut().filter(|(_, version)| *version == 0) {
            let fresh = fresh_version();
            let key = self.owned_full_key(tag_key(tag));
            self.set_full_within(&key, fresh.to_string().as_bytes(), None, timeout)
                .await?;
            *version = fresh;
        }
        Ok(())
    }

    /// The current versions of `tags`, in one round trip.
    pub(crate) async fn tag_versions(
        &self,
        tags: &[String],
        timeout: Duration,
    ) -> Result<Vec<u64>> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = tags
            .iter()
            .map(|tag| self.owned_full_key(tag_key(tag)))
            .collect();
        let values = self.get_many_full_within(&keys, timeout).await?;
        Ok(values.iter().map(|v| parse_version(v.as_deref())).collect())
    }

    /// An entry read with [`get`](Self::get) that is enveloped: opened, its
    /// tags checked (one more round trip when it has any), decoded.
    pub(crate) async fn decode_enveloped<T: DeserializeOwned>(
        &self,
        key: &str,
        bytes: Vec<u8>,
        require_encrypted: bool,
    ) -> Result<Option<T>> {
        let counters = self.counters();
        let Some(payload) = self.open_counted(key, bytes, require_encrypted) else {
            return Ok(None);
        };
        let (header, payload) = payload;
        if let Some(header) = &header
            && !header.tags.is_empty()
        {
            let names: Vec<String> = header.tags.iter().map(|(t, _)| t.clone()).collect();
            let versions = self.tag_versions(&names, self.timeout()).await?;
            let current: Vec<(String, u64)> = names.into_iter().zip(versions).collect();
            if !tags_match(&header.tags, &current) {
                counters.record_miss();
                return Ok(None);
            }
        }
        Ok(self.decode(key, Some(&payload)))
    }

    /// [`open`](Self::open), with a failure counted as a miss (and a
    /// decrypt failure as such, logged once per process without the value).
    /// `require_encrypted`: a value that is not encrypted is a miss too.
    pub(crate) fn open_counted(
        &self,
        key: &str,
        bytes: Vec<u8>,
        require_encrypted: bool,
    ) -> Option<(Option<crate::envelope::Header>, Vec<u8>)> {
        let counters = self.counters();
        match self.open(bytes) {
            Ok(opened) => {
                let encrypted = opened
                    .header
                    .as_ref()
                    .is_some_and(|h| h.flags & crate::envelope::ENCRYPTED != 0);
                if require_encrypted && !encrypted {
                    counters.record_decode_error();
                    counters.record_miss();
                    tracing::debug!(
                        key,
                        "entry is not encrypted where it must be; treated as a miss"
                    );
                    return None;
                }
                Some((opened.header, opened.payload))
            }
            Err(super::entry::OpenError::Unauthenticated) => {
                counters.record_decrypt_failure();
                counters.record_miss();
                static WARNED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        key,
                        "an encrypted cache entry failed to authenticate with every key (wrong key, or tampered); treated as a miss, counted in Stats::decrypt_failures, logged once"
                    );
                }
                None
            }
            Err(super::entry::OpenError::Skewed { ahead_secs }) => {
                counters.record_clock_skew_miss();
                counters.record_miss();
                static WARNED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        key,
                        ahead_secs,
                        max_skew_secs = self.config().encryption_max_skew.as_secs(),
                        "an encrypted cache entry is stamped further in the future than the allowed clock skew (the writer's clock runs ahead, or this one lags); treated as a miss, counted in Stats::clock_skew_misses, logged once"
                    );
                }
                None
            }
            Err(super::entry::OpenError::Malformed(what)) => {
                counters.record_decode_error();
                counters.record_miss();
                tracing::debug!(
                    key,
                    what,
                    "cache entry envelope did not open; treated as a miss"
                );
                None
            }
        }
    }

    /// Encrypts `value` with the handle's first key (see
    /// [`CacheBuilder::encryption_keys`](crate::CacheBuilder::encryption_keys))
    /// and stores it: the bytes in the store are the envelope and a Fernet
    /// token, never the plaintext. Without keys: an
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKeys, ErrorKind};
    ///
    /// let keys = EncryptionKeys::parse("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=")?;
    /// let cache = Cache::builder().encryption_keys(keys).build().await?;
    /// cache.set_encrypted("apikey:7", "sk-live-42", None).await?;
    /// let stored = cache.get_bytes("apikey:7").await?.unwrap_or_default();
    /// assert!(cache_core::envelope::is_envelope(&stored));
    /// assert!(!String::from_utf8_lossy(&stored).contains("sk-live-42")); // never the plaintext
    /// assert_eq!(cache.get_encrypted::<String>("apikey:7").await?.as_deref(), Some("sk-live-42"));
    ///
    /// // Without keys there is nothing to encrypt with.
    /// let plain = Cache::in_memory();
    /// assert_eq!(plain.set_encrypted("k", &1, None).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
    /// # Ok(()) }
    /// ```
    pub async fn set_encrypted<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = self.codec().encode(value)?;
        let seal = Seal {
            encrypt: true,
            ..Seal::default()
        };
        let sealed = self.seal(&bytes, &seal)?;
        self.set_bytes(key, &sealed, ttl).await
    }

    /// Reads a value written by [`set_encrypted`](Self::set_encrypted) (or
    /// an `encrypt` function). A value that no key authenticates, or one
    /// that is not encrypted at all, is `Ok(None)`: a miss, counted in
    /// [`Stats::decrypt_failures`](crate::Stats::decrypt_failures) or
    /// `decode_errors`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKeys};
    ///
    /// let keys = EncryptionKeys::parse("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=")?;
    /// let cache = Cache::builder().encryption_keys(keys).build().await?;
    /// cache.set("plain", &1250, None).await?;
    /// // A plain value where an encrypted one must be is a miss.
    /// assert_eq!(cache.get_encrypted::<i64>("plain").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn get_encrypted<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_bytes(key).await? {
            None => {
                self.counters().record_miss();
                Ok(None)
            }
            Some(bytes) => self.decode_enveloped(key, bytes, true).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_redis_integers_and_garbage_reads_as_absent() {
        for _ in 0..10_000 {
            let version = fresh_version();
            assert!((1..=i64::MAX as u64).contains(&version));
        }
        assert_eq!(parse_version(None), 0);
        assert_eq!(parse_version(Some(b"42")), 42);
        assert_eq!(parse_version(Some(b"not-a-version")), 0);
        assert_eq!(parse_version(Some(b"\xff\xfe")), 0);
        assert_eq!(parse_version(Some(b"")), 0);
        // Written by an earlier release, which drew up to u64::MAX.
        assert_eq!(parse_version(Some(b"18446744073709551614")), u64::MAX - 1);
    }
}
