//! Fernet keys for entries encrypted at rest.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// The keys of [`CacheBuilder::encryption_keys`](crate::CacheBuilder::encryption_keys)
/// (or `CACHE_ENCRYPTION_KEYS`): Fernet keys (32 bytes, URL-safe base64, as
/// Python's `Fernet.generate_key()` makes them). The first encrypts; every
/// one decrypts, so a new key goes first and the old one stays until the
/// entries it wrote have expired.
///
/// Its `Debug` shows how many keys there are, never a key.
#[derive(Clone)]
pub struct EncryptionKeys {
    /// In order: the first encrypts.
    fernets: Arc<[fernet::Fernet]>,
}

impl fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKeys({} keys, hidden)", self.fernets.len())
    }
}

/// How far ahead of `current_time` the fernet crate accepts a token's
/// timestamp, in seconds (its `MAX_CLOCK_SKEW`, fixed).
const FERNET_SKEW_SECS: u64 = 60;

/// Why a token did not decrypt; each is a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecryptError {
    /// No key authenticates it: another key, tampered, not a token.
    Unauthenticated,
    /// Authentic, but stamped this many seconds ahead of this clock, more
    /// than the allowed skew: the writer's clock runs ahead (or ours lags).
    Skewed {
        /// Seconds from now to the token's timestamp.
        ahead_secs: u64,
    },
}

impl EncryptionKeys {
    /// Parses comma-separated keys (spaces around them ignored). An empty
    /// list or a malformed key is an [`ErrorKind::Config`](crate::ErrorKind::Config)
    /// naming its position, never its text.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{EncryptionKeys, ErrorKind};
    ///
    /// // Rotation: the new key first (it encrypts), the old one still decrypts.
    /// let keys = EncryptionKeys::parse(
    ///     "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=, 6VtEf5bCZDvuN9r1VFQkp7RGDRIoUtn7W5v0FrHwL2E=",
    /// )?;
    /// assert_eq!(format!("{keys:?}"), "EncryptionKeys(2 keys, hidden)");
    /// let err = EncryptionKeys::parse("not-a-key").unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Config);
    /// assert!(!err.to_string().contains("not-a-key"));
    /// # Ok(()) }
    /// ```
    pub fn parse(keys: &str) -> Result<EncryptionKeys> {
        let parsed = keys
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .enumerate()
            .map(|(position, key)| {
                fernet::Fernet::new(key).ok_or_else(|| Error::Config {
                    setting: "CACHE_ENCRYPTION_KEYS",
                    reason: format!(
                        "key {} is not a Fernet key (32 bytes in URL-safe base64)",
                        position + 1
                    ),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if parsed.is_empty() {
            return Err(Error::Config {
                setting: "CACHE_ENCRYPTION_KEYS",
                reason: "no keys".into(),
            });
        }
        Ok(EncryptionKeys {
            fernets: parsed.into(),
        })
    }

    /// A Fernet token of `plaintext` under the first key.
    pub(crate) fn encrypt(&self, plaintext: &[u8]) -> String {
        self.fernets[0].encrypt(plaintext)
    }

    /// The plaintext of `token`, if some key authenticates it and its
    /// timestamp is at most `max_skew` ahead of `now` (seconds since the
    /// Unix epoch). Tokens from the past are accepted however old: an
    /// entry's life is its TTL in the store, not its token's age.
    pub(crate) fn decrypt(
        &self,
        token: &str,
        now: u64,
        max_skew: Duration,
    ) -> std::result::Result<Vec<u8>, DecryptError> {
        let latest = now.saturating_add(max_skew.as_secs());
        // The crate refuses a token stamped more than 60 s after the time it
        // is told, and checks nothing else when given no TTL: told
        // `latest - 60`, it accepts exactly the stamps up to `latest`.
        let told = latest.saturating_sub(FERNET_SKEW_SECS);
        if let Some(plaintext) = self.decrypt_told(token, told) {
            return Ok(plaintext);
        }
        // Only now, on the failure path, is the stamp worth reading: a
        // token from too far ahead is told apart from a wrong key.
        match token_timestamp(token) {
            Some(stamp) if stamp > latest && self.decrypt_told(token, stamp).is_some() => {
                Err(DecryptError::Skewed {
                    ahead_secs: stamp - now,
                })
            }
            _ => Err(DecryptError::Unauthenticated),
        }
    }

    fn decrypt_told(&self, token: &str, told: u64) -> Option<Vec<u8>> {
        self.fernets
            .iter()
            .find_map(|fernet| fernet.decrypt_at_time(token, None, told).ok())
    }
}

/// The timestamp of a Fernet token (seconds since the Unix epoch): bytes 1
/// to 8 after the version byte `0x80`, the first 12 characters of its
/// URL-safe base64. Unauthenticated: only for telling failures apart.
fn token_timestamp(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let head = token.as_bytes().get(..12)?;
    let mut bytes = [0u8; 9];
    let decoded = base64::engine::general_purpose::URL_SAFE
        .decode_slice(head, &mut bytes)
        .ok()?;
    match (decoded, bytes) {
        (9, [0x80, stamp @ ..]) => Some(u64::from_be_bytes(stamp)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";

    #[test]
    fn keys_never_show_in_debug_or_errors() {
        let keys = EncryptionKeys::parse(&format!(" {KEY} ,")).unwrap();
        assert!(!format!("{keys:?}").contains("cw_0x"));
        let err = EncryptionKeys::parse(&format!("{KEY},not-a-key-at-all")).unwrap_err();
        assert!(!err.to_string().contains("not-a-key"), "{err}");
        assert!(err.to_string().contains("key 2"), "{err}");
        assert!(EncryptionKeys::parse(" , ").is_err());
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    const SKEW: Duration = Duration::from_secs(300);

    #[test]
    fn rotation_old_keys_decrypt_the_first_encrypts() {
        let old = EncryptionKeys::parse(KEY).unwrap();
        let new_key = fernet::Fernet::generate_key();
        let rotated = EncryptionKeys::parse(&format!("{new_key},{KEY}")).unwrap();
        let old_token = old.encrypt(b"secret");
        assert_eq!(rotated.decrypt(&old_token, now(), SKEW).unwrap(), b"secret");
        let new_token = rotated.encrypt(b"secret");
        assert_eq!(
            old.decrypt(&new_token, now(), SKEW),
            Err(DecryptError::Unauthenticated),
            "written with the new key"
        );
    }

    /// A writer whose clock runs ahead: its tokens are stamped in our future.
    #[test]
    fn tokens_from_the_future_are_accepted_up_to_the_skew_and_told_apart_beyond() {
        let keys = EncryptionKeys::parse(KEY).unwrap();
        let fernet = fernet::Fernet::new(KEY).unwrap();
        let now = 1_800_000_000;
        let at = |ahead: u64| fernet.encrypt_at_time(b"v", now + ahead);
        // The crate alone refused anything over 60 s ahead.
        assert!(fernet.decrypt_at_time(&at(61), None, now).is_err());
        for ahead in [0, 59, 61, 120, 300] {
            assert_eq!(
                keys.decrypt(&at(ahead), now, SKEW).unwrap(),
                b"v",
                "{ahead} s"
            );
        }
        assert_eq!(
            keys.decrypt(&at(301), now, SKEW),
            Err(DecryptError::Skewed { ahead_secs: 301 })
        );
        assert_eq!(
            keys.decrypt(&at(120), now, Duration::ZERO),
            Err(DecryptError::Skewed { ahead_secs: 120 })
        );
        assert_eq!(keys.decrypt(&at(0), now, Duration::ZERO).unwrap(), b"v");
        // However old: accepted (the entry's TTL bounds its life).
        let old = fernet.encrypt_at_time(b"v", 1_000_000_000);
        assert_eq!(keys.decrypt(&old, now, SKEW).unwrap(), b"v");
        // Far ahead but with another key, or tampered: not a skew.
        let other = fernet::Fernet::new(&fernet::Fernet::generate_key()).unwrap();
        let foreign = other.encrypt_at_time(b"v", now + 3600);
        assert_eq!(
            keys.decrypt(&foreign, now, SKEW),
            Err(DecryptError::Unauthenticated)
        );
        let mut tampered = at(3600).into_bytes();
        let last = tampered.len() - 5;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            keys.decrypt(&tampered, now, SKEW),
            Err(DecryptError::Unauthenticated)
        );
        for garbage in [
            "",
            "gAAAA",
            "not a token at all",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            assert_eq!(
                keys.decrypt(garbage, now, SKEW),
                Err(DecryptError::Unauthenticated)
            );
        }
        assert_eq!(token_timestamp(&at(7)), Some(now + 7));
    }
}
