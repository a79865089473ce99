//! The entry of one memoized call in the store ([`Target`]): how it is
//! read (with its tags' versions), judged fresh, stale or missing
//! ([`Found`]), and written. The engine and the cross-instance lock read it
//! alike.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::budget::Budget;
use super::options::EntryOptions;
use crate::cache::Cache;
use crate::codec::Codec;
use crate::error::Result;
use crate::stored::{Seal, millis, now_ms, tag_key, tags_match};

/// One call's coordinates in the store.
pub(super) struct Target<'a> {
    pub(super) cache: &'a Cache,
    /// The key as stored, with the namespace.
    pub(super) full_key: &'a str,
    /// The local tier's key of the entry, when it is not `full_key`.
    pub(super) alias: Option<&'a [u8]>,
    pub(super) options: &'a EntryOptions,
    pub(super) codec: Codec,
    pub(super) function: &'static str,
}

impl Target<'_> {
    /// The memoized function's name (or the label of a `get_or_set` call), for logs.
    pub(super) fn function(&self) -> &'static str {
        self.function
    }
}

/// A [`Target`] that owns its parts, for a background refresh.
pub(super) struct OwnedTarget {
    pub(super) cache: Cache,
    pub(super) full_key: String,
    pub(super) options: EntryOptions,
    pub(super) codec: Codec,
    pub(super) function: &'static str,
}

impl OwnedTarget {
    pub(super) fn target(&self) -> Target<'_> {
        Target {
            cache: &self.cache,
            full_key: &self.full_key,
            alias: None,
            options: &self.options,
            codec: self.codec,
            function: self.function,
        }
    }
}

/// What a read found.
pub(super) enum Found<V> {
    /// A value within `ttl`; `early` when XFetch says to refresh it now.
    /// `payload`: its codec bytes, for the flight's followers; `plain` when
    /// the entry is those bytes and nothing else (no envelope), so that the
    /// local tier may keep it.
    Fresh {
        value: V,
        early: bool,
        payload: Vec<u8>,
        plain: bool,
    },
    /// A value past `ttl` (within `ttl + stale`).
    Stale {
        value: V,
        payload: Vec<u8>,
    },
    Miss,
}

/// A read: what was found, the versions of the call's tags then (`None`
/// when the store failed: nothing is written after a failed read), and when
/// the key expires in the store (read for the local tier).
pub(super) struct Read<V> {
    pub(super) found: Found<V>,
    pub(super) versions: Option<Vec<(String, u64)>>,
    pub(super) expires: Option<Instant>,
}

impl Target<'_> {
    pub(super) fn to_owned(&self) -> OwnedTarget {
        OwnedTarget {
            cache: self.cache.clone(),
            full_key: self.full_key.to_owned(),
            options: self.options.clone(),
            codec: self.codec,
            function: self.function,
        }
    }

    /// The key without the namespace, as [`Cache`]'s own methods take keys
    /// (the leases' keys are made from it).
    pub(super) fn key(&self) -> &str {
        match self.cache.namespace() {
            Some(namespace) => self
                .full_key
                .get(namespace.len() + 1..)
                .unwrap_or(self.full_key),
            None => self.full_key,
        }
    }

    /// Reads the entry, and the call's tag versions in the same round trip,
    /// within the budget; `local`: with the key's expiry, for the local
    /// tier; `count`: in the handle's hits and misses. Notes whether the
    /// store is failing (logged once per change).
    pub(super) async fn read<V: DeserializeOwned>(
        &self,
        budget: &mut Budget,
        local: bool,
        count: bool,
    ) -> Read<V> {
        let cache = self.cache;
        let tags = &self.options.tags;
        let read = if tags.is_empty() {
            budget
                .spend(|left| async move {
                    if local {
                        // The key's expiry too: a local copy must not outlive it.
                        cache.get_full_expiring(self.full_key, left).await
                    } else {
                        Ok((cache.get_full_within(self.full_key, left).await?, None))
                    }
                })
                .await
                .map(|(bytes, expires)| (bytes, expires, Vec::new()))
        } else {
            // Boxed: the common read stays small.
            Box::pin(self.read_tagged(budget)).await
        };
        cache.note_memo_failure(read.as_ref().err());
        let Ok((bytes, expires, versions)) = read else {
            return Read {
                found: Found::Miss,
                versions: None,
                expires: None,
            };
        };
        Read {
            found: self.judge(bytes, &versions, count),
            versions: Some(versions),
            expires,
        }
    }

    /// The entry and its tags' versions (one round trip), and a version for
    /// each tag that has none (a second, only then).
    pub(super) async fn read_tagged(
        &self,
        budget: &mut Budget,
    ) -> Result<(Option<Vec<u8>>, Option<Instant>, Vec<(String, u64)>)> {
        let cache = self.cache;
        let tags = &self.options.tags;
        let mut keys = Vec::with_capacity(1 + tags.len());
        keys.push(self.full_key.to_owned());
        keys.extend(tags.iter().map(|tag| cache.owned_full_key(tag_key(tag))));
        let keys = &keys;
        let mut values = budget
            .spend(|left| async move { cache.get_many_full_within(keys, left).await })
            .await?;
        let mut versions: Vec<(String, u64)> = tags
            .iter()
            .cloned()
            .zip(
                values
                    .iter()
                    .skip(1)
                    .map(|v| crate::stored::parse_version(v.as_deref())),
            )
            .collect();
        let bytes = values.get_mut(0).and_then(Option::take);
        // A version key absent (never set, evicted, deleted) is a miss for
        // every entry; it gets a version before anything is computed under it.
        if versions.iter().any(|(_, version)| *version == 0) {
            let versions = &mut versions;
            budget
                .spend(|left| async move { cache.fresh_tag_versions(versions, left).await })
                .await?;
        }
        Ok((bytes, None, versions))
    }

    /// Decides what `bytes` are worth to this call.
    pub(super) fn judge<V: DeserializeOwned>(
        &self,
        bytes: Option<Vec<u8>>,
        versions: &[(String, u64)],
        count: bool,
    ) -> Found<V> {
        let counters = self.cache.counters();
        let miss = || {
            if count {
                counters.record_miss();
            }
            Found::Miss
        };
        let Some(bytes) = bytes else {
            return miss();
        };
        let plain = !crate::envelope::is_envelope(&bytes);
        let (header, payload) = if plain && !self.options.encrypt {
            (None, bytes)
        } else {
            match self
                .cache
                .open_counted(self.full_key, bytes, self.options.encrypt)
            {
                Some(opened) => opened,
                None => return Found::Miss,
            }
        };
        // A plain value (another writer's, or written before the option was
        // added) reads as fresh, unless tags or encryption are required.
        let (soft_expiry_ms, compute_ms) = match &header {
            Some(header) => {
                if !tags_match(&header.tags, versions) {
                    return miss();
                }
                (header.soft_expiry_ms, header.compute_ms)
            }
            None if !versions.is_empty() => return miss(),
            None => (0, 0),
        };
        let value = match self.codec.decode::<V>(&payload) {
            Ok(value) => value,
            Err(err) => {
                counters.record_decode_error();
                tracing::debug!(key = %self.full_key, error = %err, "cache entry did not decode; treated as a miss");
                return miss();
            }
        };
        if count {
            counters.record_hit();
        }
        if self.options.stale.is_some() && soft_expiry_ms != 0 {
            let now = now_ms();
            if now >= soft_expiry_ms {
                if count {
                    counters.record_stale_served();
                }
                return Found::Stale { value, payload };
            }
            let early = refresh_early(now, soft_expiry_ms, compute_ms, 1.0 - fastrand::f64());
            return Found::Fresh {
                value,
                early,
                payload,
                plain,
            };
        }
        Found::Fresh {
            value,
            early: false,
            payload,
            plain,
        }
    }

    /// Writes the codec bytes of a value computed in `compute` under the
    /// tag versions read before, within the budget: sealed in the envelope
    /// when the options ask for one, kept in the local tier when `local`
    /// (with the decoded value, if any). A failure is noted, never returned
    /// (the caller has its result already).
    pub(super) async fn write(
        &self,
        budget: &mut Budget,
        codec_bytes: &[u8],
        compute: Duration,
        tags: Vec<(String, u64)>,
        local: Option<Option<crate::local::Decoded>>,
    ) {
        let cache = self.cache;
        let options = self.options;
        let write = if options.enveloped() {
            let seal = Seal {
                compress_from: options.compress_from,
                encrypt: options.encrypt,
                soft_expiry_ms: if options.stale.is_some() {
                    now_ms().saturating_add(millis(options.ttl))
                } else {
                    0
                },
                compute_ms: u32::try_from(compute.as_millis()).unwrap_or(u32::MAX),
                tags,
            };
            match cache.seal(codec_bytes, &seal) {
                Ok(sealed) => {
                    // Nothing outlives ttl + stale.
                    let ttl = options
                        .ttl
                        .saturating_add(options.stale.unwrap_or_default());
                    let sealed = &sealed;
                    budget
                        .spend(|left| async move {
                            cache
                                .set_full_within(self.full_key, sealed, Some(ttl), left)
                                .await
                        })
                        .await
                }
                Err(err) => Err(err),
            }
        } else {
            let ttl = Some(options.ttl);
            budget
                .spend(|left| async move {
                    match local {
                        Some(decoded) => {
                            cache
                                .set_full_filling(
                                    self.full_key,
                                    self.alias,
                                    codec_bytes,
                                    decoded,
                                    ttl,
                                    left,
                                )
                                .await
                        }
                        None => {
                            cache
                                .set_full_within(self.full_key, codec_bytes, ttl, left)
                                .await
                        }
                    }
                })
                .await
        };
        if let Err(err) = write {
            cache.note_memo_failure(Some(&err));
        }
    }
}

/// XFetch's β: 1 is the paper's default (larger refreshes earlier).
const XFETCH_BETA: f64 = 1.0;

/// XFetch (Vattani et al.): refresh before `expiry` with a probability that
/// grows as it nears and with the compute time: when
/// `now - compute * β * ln(rand) >= expiry`, `rand` in (0, 1].
pub(super) fn refresh_early(now_ms: u64, expiry_ms: u64, compute_ms: u32, rand: f64) -> bool {
    let gap = f64::from(compute_ms) * XFETCH_BETA * -rand.ln();
    now_ms as f64 + gap >= expiry_ms as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfetch_refreshes_earlier_for_slow_values_and_never_without_a_compute_time() {
        let expiry = 10_000;
        assert!(
            !refresh_early(9_000, expiry, 0, 0.001),
            "no compute time: at expiry only"
        );
        assert!(refresh_early(10_000, expiry, 0, 0.5));
        // -ln(0.5) * 2000 ms ≈ 1386 ms ahead.
        assert!(refresh_early(9_000, expiry, 2_000, 0.5));
        assert!(!refresh_early(8_000, expiry, 2_000, 0.5));
        // A small rand reaches far ahead: rare but possible.
        assert!(refresh_early(1_000, expiry, 2_000, 1e-3));
    }
}
