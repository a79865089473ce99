//! Sealing a value's codec bytes into an enveloped entry and opening it
//! again: compression, encryption, the header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::Cache;
use crate::error::{Error, Result};

use crate::encryption::DecryptError;
use crate::envelope::{self, COMPRESSED, ENCRYPTED, Header};

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Whole milliseconds of `duration`, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How one entry is sealed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seal {
    /// Compress payloads of at least this many bytes.
    pub(crate) compress_from: Option<usize>,
    /// Encrypt with the handle's first key.
    pub(crate) encrypt: bool,
    /// Fresh until then (ms since the epoch; 0 for no soft expiry).
    pub(crate) soft_expiry_ms: u64,
    /// How long the value took to compute.
    pub(crate) compute_ms: u32,
    /// Tags with the versions read before the value was computed.
    pub(crate) tags: Vec<(String, u64)>,
}

/// An opened entry: its header (`None` for a plain entry) and codec bytes.
pub(crate) struct Opened {
    pub(crate) header: Option<Header>,
    pub(crate) payload: Vec<u8>,
}

/// Why an entry could not be opened; each is a miss.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Bad or unknown header, or a payload that does not decompress.
    Malformed(&'static str),
    /// A token that no key authenticates, or no keys at all.
    Unauthenticated,
    /// An authentic token stamped more than the handle's
    /// `encryption_max_skew` ahead of this clock.
    Skewed {
        /// Seconds from now to the token's timestamp.
        ahead_secs: u64,
    },
}

impl Cache {
    /// `codec_bytes` in an envelope as `seal` says.
    pub(crate) fn seal(&self, codec_bytes: &[u8], seal: &Seal) -> Result<Vec<u8>> {
        envelope::check_tags(
            &seal
                .tags
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>(),
        )?;
        let mut flags = 0;
        let mut payload: std::borrow::Cow<'_, [u8]> = codec_bytes.into();
        if seal
            .compress_from
            .is_some_and(|from| codec_bytes.len() >= from)
        {
            payload = lz4_flex::block::compress_prepend_size(codec_bytes).into();
            flags |= COMPRESSED;
        }
        if seal.encrypt {
            let keys = self.encryption_keys().ok_or_else(|| {
                Error::invalid(
                    "encrypt",
                    "no encryption keys: set CACHE_ENCRYPTION_KEYS or CacheBuilder::encryption_keys",
                )
            })?;
            payload = keys.encrypt(&payload).into_bytes().into();
            flags |= ENCRYPTED;
        }
        let header = Header {
            flags,
            written_ms: now_ms(),
            soft_expiry_ms: seal.soft_expiry_ms,
            compute_ms: seal.compute_ms,
            tags: seal.tags.clone(),
        };
        Ok(header.wrap(&payload))
    }

    /// The codec bytes of a stored entry, plain or enveloped. Decompressed
    /// payloads are capped at the handle's `max_value_bytes` (a
    /// decompression bomb is a miss, not an allocation).
    pub(crate) fn open(&self, bytes: Vec<u8>) -> std::result::Result<Opened, OpenError> {
        if !envelope::is_envelope(&bytes) {
            return Ok(Opened {
                header: None,
                payload: bytes,
            });
        }
        let (header, payload) =
            Header::unwrap(&bytes).map_err(|_| OpenError::Malformed("envelope header"))?;
        let mut payload = payload.to_vec();
        if header.flags & ENCRYPTED != 0 {
            let keys = self.encryption_keys().ok_or(OpenError::Unauthenticated)?;
            let token = std::str::from_utf8(&payload).map_err(|_| OpenError::Unauthenticated)?;
            let max_skew = self.config().encryption_max_skew;
            payload = keys
                .decrypt(token, now_ms() / 1000, max_skew)
                .map_err(|err| match err {
                    DecryptError::Unauthenticated => OpenError::Unauthenticated,
                    DecryptError::Skewed { ahead_secs } => OpenError::Skewed { ahead_secs },
                })?;
        }
        if header.flags & COMPRESSED != 0 {
            payload = decompress_capped(&payload, self.max_value_bytes())
                .ok_or(OpenError::Malformed("compressed payload"))?;
        }
        Ok(Opened {
            header: Some(header),
            payload,
        })
    }
}

/// lz4 block with its 4-byte little-endian size prefix, refusing a stated
/// size over `cap` before allocating anything.
fn decompress_capped(bytes: &[u8], cap: usize) -> Option<Vec<u8>> {
    let (size, block) = bytes.split_first_chunk::<4>()?;
    let size = usize::try_from(u32::from_le_bytes(*size)).ok()?;
    if size > cap {
        return None;
    }
    lz4_flex::block::decompress(block, size).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips_above_the_threshold_only() {
        let cache = Cache::in_memory();
        let big = serde_json::to_vec(&vec!["result"; 500]).unwrap();
        let seal = Seal {
            compress_from: Some(1024),
            ..Seal::default()
        };
        let sealed = cache.seal(&big, &seal).unwrap();
        assert!(sealed.len() < big.len() / 4);
        assert_eq!(sealed[3], COMPRESSED);
        assert_eq!(cache.open(sealed).ok().unwrap().payload, big);
        let small = cache.seal(b"[1,2]", &seal).unwrap();
        assert_eq!(small[3], 0, "under the threshold: stored as is");
        assert_eq!(cache.open(small).ok().unwrap().payload, b"[1,2]");
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_allocating() {
        let mut bomb = (u32::MAX).to_le_bytes().to_vec();
        bomb.extend_from_slice(&[0x1f, 0, 0, 0, 0]);
        assert!(decompress_capped(&bomb, 1 << 20).is_none());
        let zeros = lz4_flex::block::compress_prepend_size(&vec![0u8; 100_000]);
        assert!(decompress_capped(&zeros, 99_999).is_none());
        assert_eq!(decompress_capped(&zeros, 100_000).unwrap().len(), 100_000);
    }

    #[test]
    fn plain_bytes_open_as_themselves() {
        let cache = Cache::in_memory();
        let opened = cache.open(b"{\"a\":1}".to_vec()).ok().unwrap();
        assert!(opened.header.is_none());
        assert_eq!(opened.payload, b"{\"a\":1}");
    }
}
