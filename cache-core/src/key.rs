//! How keys are built, so that any service in any language can compute them.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{EncodeError, Result};

/// The key `#[cached]` uses: `{prefix}:{lowercase hex SHA-256 of the canonical
/// JSON of args}`.
///
/// `args` is the tuple of the key arguments in declaration order, so a
/// one-argument call `embed("hello")` hashes the JSON text `["hello"]`. The
/// JSON is RFC 8785 (JSON Canonicalization Scheme): no spaces, object members
/// (maps, structs) sorted by the UTF-16 code units of their names, numbers in
/// their shortest ECMAScript form (`1.0` is `1`, `1e-7` is `1e-7`, `1e21` is
/// `1e+21`, `-0.0` is `0`), minimal string escaping; so any language with a
/// JCS library computes the same key, and equal `HashMap`s give equal keys in
/// every process. One extension: integers beyond ±2^53 are written as exact
/// decimals (as serde_json and Python's `json` write them), where JCS would
/// round them through a double. The handle's namespace, when one is set, is
/// added in front by the [`Cache`](crate::Cache).
///
/// For a generic function `#[cached]` hashes one more element, last: the
/// tuple of its type parameters' `std::any::type_name`s (`f::<u8>(1)` is
/// `key_for("f", &(1u8, ("u8",)))`). The `{name}_key` function it writes
/// beside each memoized function builds the exact key, whatever its options.
///
/// # Errors
///
/// [`Error::Encode`](crate::Error::Encode) when an argument has no canonical JSON form: a NaN or
/// infinite float, a map whose keys are not strings, integers, chars or
/// bools, two members with the same name, an integer beyond 64 bits in a
/// serde_json `RawValue`, or a `Serialize` impl that fails.
/// `#[cached]` then runs the body uncached.
///
/// ```
/// # fn main() -> Result<(), cache_core::Error> {
/// // printf '["hello"]' | sha256sum
/// let key = cache_core::key_for("embedding", &("hello",))?;
/// assert_eq!(
///     key,
///     "embedding:c7a0f7154e64cd96c617f251dc12c4396b7234c2856ccf4860ab7af537dfcdd9"
/// );
/// // Python: hashlib.sha256(rfc8785.dumps([2.0, {"b": 1, "a": None}])).hexdigest()
/// let args = (2.0, std::collections::HashMap::from([("b", Some(1)), ("a", None)]));
/// assert_eq!(key_for_text(r#"[2,{"a":null,"b":1}]"#), cache_core::key_for("p", &args)?);
/// assert!(cache_core::key_for("p", &(f64::NAN,)).is_err());
/// # fn key_for_text(json: &str) -> String { format!("p:{}", cache_core::sha256_hex(json.as_bytes())) }
/// # Ok(()) }
/// ```
pub fn key_for<A: Serialize + ?Sized>(prefix: &str, args: &A) -> Result<String> {
    // The JSON goes straight into the hash: no buffer, except for objects.
    let mut hashing = Hashing(Sha256::new());
    crate::jcs::to_writer(&mut hashing, args).map_err(EncodeError::NotCanonical)?;
    let mut key = String::with_capacity(prefix.len() + 1 + 64);
    key.push_str(prefix);
    key.push(':');
    push_hex(&mut key, &hashing.0.finalize().into());
    Ok(key)
}

/// Lowercase hex SHA-256 of `bytes`: the hash part of [`key_for`], and a way
/// to turn user-chosen text into a fixed-size key part nobody can steer.
///
/// ```
/// use cache_core::sha256_hex;
///
/// // printf 'hello' | sha256sum
/// assert_eq!(
///     sha256_hex(b"hello"),
///     "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
/// );
/// // A user-chosen name as a fixed-size, harmless key part:
/// let key = format!("report:{}", &sha256_hex("../../etc/passwd *".as_bytes())[..16]);
/// assert_eq!(key.len(), "report:".len() + 16);
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    push_sha256_hex(&mut out, bytes);
    out
}

/// Appends the lowercase hex SHA-256 of `bytes` to `out`.
pub(crate) fn push_sha256_hex(out: &mut String, bytes: &[u8]) {
    push_hex(out, &Sha256::digest(bytes).into());
}

/// Feeds the canonical JSON into a SHA-256.
struct Hashing(Sha256);

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The two lowercase hex digits of every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0x0f]];
        byte += 1;
    }
    pairs
};

fn push_hex(out: &mut String, digest: &[u8; 32]) {
    let mut hex = [0u8; 64];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(digest) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
    // Only ASCII hex digits were written, so this never falls back.
    out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
}

/// Escapes the glob characters of Redis `MATCH` patterns (`* ? [ ] \`), so that
/// a literal prefix such as `user:[1]` matches only keys starting with exactly that.
pub(crate) fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() + 8);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_prefix_and_sha256_of_the_json_array() {
        // printf '["hello"]' | sha256sum
        let expected = "embedding:c7a0f7154e64cd96c617f251dc12c4396b7234c2856ccf4860ab7af537dfcdd9";
        assert_eq!(key_for("embedding", &("hello",)).unwrap(), expected);
    }

    #[test]
    fn the_readme_examples_hold() {
        // printf '["redis",3]' | sha256sum
        assert_eq!(
            key_for("search", &("redis", 3)).unwrap(),
            "search:189aead97c9caf1f9435bc6c7748d27790acbaac2fddeb807695071d13a82a30"
        );
        // hashlib.sha256(rfc8785.dumps(["redis", {"top_k": 3, "lang": "en"}, 0.5, 1e-7]))
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Field {
            Number(u32),
            Text(&'static str),
        }
        let filters = std::collections::HashMap::from([
            ("top_k", Field::Number(3)),
            ("lang", Field::Text("en")),
        ]);
        assert_eq!(
            key_for("search", &("redis", filters, 0.5, 1e-7)).unwrap(),
            "search:cc12f0170bac48798a00d960813b0e83ca9478957a64906fa7c39a2c6747ed55"
        );
    }

    #[test]
    fn sha256_hex_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn arguments_are_hashed_as_a_json_array_in_order() {
        let a = key_for("p", &("x", 2)).unwrap();
        assert_eq!(a, format!("p:{}", sha256_hex(br#"["x",2]"#)));
        assert_ne!(a, key_for("p", &(2, "x")).unwrap());
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("user:[1]*?"), r"user:\[1\]\*\?");
        assert_eq!(escape_glob(r"a\b"), r"a\\b");
        assert_eq!(escape_glob("plain:key"), "plain:key");
    }
}
