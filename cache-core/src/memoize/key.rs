//! The key of one memoized call as the engine gets it: the key as stored,
//! or, for a `#[cached]` function whose entries the local tier keeps, the
//! canonical JSON of its arguments, which a local hit looks up as it is
//! and only a trip to the store hashes (SHA-256) into the stored key.

use std::borrow::Cow;

use serde::Serialize;

use crate::cache::Cache;
use crate::error::{EncodeError, Result};
use crate::key::push_sha256_hex;

/// The key of one memoized call.
#[derive(Debug)]
pub enum CallKey<'k> {
    /// A hashed `#[cached]` key not hashed yet (see [`ArgsKey`]).
    Args(ArgsKey),
    /// The key as stored, without the handle's namespace: a hashed
    /// `#[cached]` key, a `key = ...` one, or a
    /// [`get_or_set`](crate::Cache::get_or_set) key.
    Stored(Cow<'k, str>),
}

/// `{prefix}` and the canonical JSON of a call's arguments: the local
/// tier's key for the call. It cannot collide with another call's, nor with
/// any key as stored: it is the bytes `0xFF`, the prefix, `0xFF`, the JSON,
/// and `0xFF` is in no UTF-8 text (so in no key, prefix or JSON), which
/// makes the three parts unambiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsKey {
    /// A buffer of the thread's pool (see [`POOL`]): no allocation for a
    /// key once the thread has made one, and a small value to move (the
    /// key travels in the call's future).
    bytes: Vec<u8>,
    /// Where the JSON starts in `bytes`.
    json_at: usize,
}

/// The byte that opens and closes the prefix of an [`ArgsKey`].
const SEPARATOR: u8 = 0xFF;

/// A key's buffer above this size is not kept for the next one: a huge
/// argument list once must not keep its buffer forever.
const POOLED_MAX: usize = 4096;

thread_local! {
    /// The buffer the thread's next [`ArgsKey`] is written into, given back
    /// when a key drops. Empty while a key holds it: a key made meanwhile
    /// (a nested call, a `Serialize` impl that builds a key itself) gets a
    /// buffer of its own.
    static POOL: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl ArgsKey {
    /// The key of `args` under `prefix`; an error when they have no
    /// canonical JSON form, as for [`key_for`](crate::key_for).
    pub(crate) fn new<A: Serialize + ?Sized>(prefix: &str, args: &A) -> Result<ArgsKey> {
        let mut bytes = POOL.try_with(std::cell::Cell::take).unwrap_or_default();
        bytes.clear();
        bytes.push(SEPARATOR);
        bytes.extend_from_slice(prefix.as_bytes());
        bytes.push(SEPARATOR);
        let json_at = bytes.len();
        // On an error the buffer drops here (rare: not worth pooling).
        crate::jcs::to_writer(&mut bytes, args).map_err(EncodeError::NotCanonical)?;
        Ok(ArgsKey { bytes, json_at })
    }

    /// The local tier's key.
    pub(crate) fn local(&self) -> &[u8] {
        &self.bytes
    }

    /// The key as stored (without the namespace): `{prefix}:{sha256 hex of
    /// the JSON}`, what [`key_for`](crate::key_for) gives for the same arguments.
    pub(crate) fn hashed(&self) -> String {
        let prefix = &self.bytes[1..self.json_at - 1];
        let mut key = String::with_capacity(prefix.len() + 1 + 64);
        // The prefix was a `&str`: always UTF-8.
        key.push_str(std::str::from_utf8(prefix).unwrap_or_default());
        key.push(':');
        push_sha256_hex(&mut key, &self.bytes[self.json_at..]);
        key
    }
}

impl Drop for ArgsKey {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.capacity() > POOLED_MAX {
            return;
        }
        // A buffer there already (a key made while this one lived) goes.
        let _ = POOL.try_with(|pool| pool.replace(bytes));
    }
}

/// The key `#[cached]` gives the engine for `args` under `prefix`: not
/// hashed when the local tier may serve the call (`handle` has one and the
/// function uses it), hashed otherwise (streamed into SHA-256, no buffer).
pub fn call_key<A: Serialize + ?Sized>(
    handle: Option<&Cache>,
    local: bool,
    prefix: &str,
    args: &A,
) -> Result<CallKey<'static>> {
    if local && handle.is_some_and(|cache| cache.local_tier().is_some()) {
        return ArgsKey::new(prefix, args).map(CallKey::Args);
    }
    crate::key::key_for(prefix, args).map(|key| CallKey::Stored(Cow::Owned(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_args_key_hashes_into_the_documented_key() {
        let args = (
            "hello",
            3,
            std::collections::HashMap::from([("b", 1), ("a", 2)]),
        );
        let key = ArgsKey::new("embedding", &args).unwrap();
        assert_eq!(
            key.hashed(),
            crate::key::key_for("embedding", &args).unwrap()
        );
        assert_eq!(
            key.local(),
            b"\xFFembedding\xFF[\"hello\",3,{\"a\":2,\"b\":1}]"
        );
        // Past the inline buffer too.
        let long = "x".repeat(500);
        let key = ArgsKey::new("embedding", &(&long,)).unwrap();
        assert_eq!(
            key.hashed(),
            crate::key::key_for("embedding", &(&long,)).unwrap()
        );
        assert!(ArgsKey::new("p", &(f64::NAN,)).is_err());
    }

    #[test]
    fn args_keys_of_different_calls_differ() {
        // The prefix cannot run into the JSON, nor the JSON into another prefix.
        let a = ArgsKey::new("a", &("b",)).unwrap();
        let b = ArgsKey::new("a\u{ff}", &("b",)).unwrap();
        assert_ne!(a.local(), b.local());
        assert_ne!(
            ArgsKey::new("p", &(1,)).unwrap().local(),
            ArgsKey::new("p", &("1",)).unwrap().local()
        );
        // And no key as stored (UTF-8) equals one.
        assert!(std::str::from_utf8(a.local()).is_err());
    }
}
