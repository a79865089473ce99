//! Fernet keys for entries encrypted at rest.

use std::fmt;
use std::sync::Arc;

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
    fernet: Arc<fernet::MultiFernet>,
    count: usize,
}

impl fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKeys({} keys, hidden)", self.count)
    }
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
            count: parsed.len(),
            fernet: Arc::new(fernet::MultiFernet::new(parsed)),
        })
    }

    /// A Fernet token of `plaintext` under the first key.
    pub(crate) fn encrypt(&self, plaintext: &[u8]) -> String {
        self.fernet.encrypt(plaintext)
    }

    /// The plaintext of `token`, if some key authenticates it.
    pub(crate) fn decrypt(&self, token: &str) -> Option<Vec<u8>> {
        self.fernet.decrypt(token).ok()
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

    #[test]
    fn rotation_old_keys_decrypt_the_first_encrypts() {
        let old = EncryptionKeys::parse(KEY).unwrap();
        let new_key = fernet::Fernet::generate_key();
        let rotated = EncryptionKeys::parse(&format!("{new_key},{KEY}")).unwrap();
        let old_token = old.encrypt(b"secret");
        assert_eq!(rotated.decrypt(&old_token).unwrap(), b"secret");
        let new_token = rotated.encrypt(b"secret");
        assert!(
            old.decrypt(&new_token).is_none(),
            "written with the new key"
        );
    }
}
