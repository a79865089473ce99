//! How values become bytes in the store.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DecodeError, EncodeError, Result};

/// The encoding of stored values.
///
/// JSON is the default: any client in any language can read the entries.
/// MessagePack (cargo feature `msgpack`) is smaller and faster to decode, for
/// values only Rust services of the same schema read.
///
/// Decoding takes the whole entry or nothing: bytes left after the value
/// make it foreign (a miss), never a hit on its first part. A MessagePack
/// entry starts with the two bytes `0xC1 0x01` (a byte MessagePack never uses
/// and no JSON text starts with, then the format version), so that a value
/// another writer put under the key is a miss, and the memoized call that
/// follows overwrites it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// `serde_json`, readable by every client.
    #[default]
    Json,
    /// `rmp-serde` with field names (so struct changes stay decodable as
    /// JSON-like maps), after the header `0xC1 0x01`.
    #[cfg(feature = "msgpack")]
    MessagePack,
}

impl Codec {
    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Codec::Json => Ok(serde_json::to_vec(value).map_err(EncodeError::Json)?),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => {
                let mut bytes = Vec::with_capacity(128);
                bytes.extend_from_slice(&msgpack::HEADER);
                rmp_serde::encode::write_named(&mut bytes, value)
                    .map_err(EncodeError::MessagePack)?;
                Ok(bytes)
            }
        }
    }

    /// Decodes `bytes`; an error when they are not exactly one `T` in this
    /// encoding (trailing bytes included).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cache_core::Codec;
    ///
    /// let bytes = Codec::Json.encode(&[1, 2, 3])?;
    /// assert_eq!(bytes, b"[1,2,3]");
    /// assert_eq!(Codec::Json.decode::<Vec<u8>>(&bytes)?, [1, 2, 3]);
    /// assert!(Codec::Json.decode::<Vec<u8>>(b"[1,2,3] trailing").is_err());
    /// # Ok(()) }
    /// ```
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> std::result::Result<T, DecodeError> {
        match self {
            // from_slice rejects anything but whitespace after the value.
            Codec::Json => serde_json::from_slice(bytes).map_err(DecodeError::Json),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => msgpack::decode(bytes),
        }
    }
}

#[cfg(feature = "msgpack")]
mod msgpack {
    use serde::Deserialize;
    use serde::de::{DeserializeOwned, IgnoredAny};

    use crate::error::DecodeError;

    /// What a MessagePack entry starts with: 0xC1, the one byte the format
    /// never uses (and no JSON text starts with), then the version of this
    /// layout. A new layout takes a new version; an entry of an unknown
    /// version is a miss.
    pub(super) const HEADER: [u8; 2] = [0xC1, 0x01];

    pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
        let body = bytes
            .strip_prefix(&HEADER)
            .ok_or(DecodeError::MissingHeader)?;
        let mut de = rmp_serde::Deserializer::from_read_ref(body);
        let value = T::deserialize(&mut de).map_err(DecodeError::MessagePack)?;
        // rmp-serde stops after the first value. Reading one more marker
        // tells the end (an EOF on the marker) from trailing bytes.
        match IgnoredAny::deserialize(&mut de) {
            Err(rmp_serde::decode::Error::InvalidMarkerRead(err))
                if err.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Ok(value)
            }
            _ => Err(DecodeError::TrailingBytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_rejects_garbage() {
        let bytes = Codec::Json.encode(&vec![1.5f32, 2.0]).unwrap();
        assert_eq!(bytes, b"[1.5,2.0]");
        assert_eq!(
            Codec::Json.decode::<Vec<f32>>(&bytes).unwrap(),
            vec![1.5, 2.0]
        );
        assert!(Codec::Json.decode::<Vec<f32>>(b"\xff").is_err());
    }

    #[test]
    fn json_rejects_trailing_bytes_but_not_whitespace() {
        assert!(Codec::Json.decode::<u64>(b"12345 x").is_err());
        assert!(Codec::Json.decode::<u64>(b"1 2").is_err());
        assert!(Codec::Json.decode::<Vec<u8>>(b"[1][2]").is_err());
        assert_eq!(Codec::Json.decode::<u64>(b" 12345\n").unwrap(), 12345);
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_entries_start_with_the_header() {
        let bytes = Codec::MessagePack.encode(&7u8).unwrap();
        assert_eq!(bytes, [0xC1, 0x01, 0x07]);
        assert_eq!(Codec::MessagePack.decode::<u8>(&bytes).unwrap(), 7);
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_rejects_foreign_values() {
        // The JSON text "12345" once read as the fixint 49 (the byte '1').
        assert!(Codec::MessagePack.decode::<u64>(b"12345").is_err());
        assert!(Codec::MessagePack.decode::<u64>(b"\"12345\"").is_err());
        // Garbage once read as Number(-1) (0xFF is the negative fixint -1).
        assert!(
            Codec::MessagePack
                .decode::<serde_json::Value>(b"\xff\xfe garbage")
                .is_err()
        );
        // Bare MessagePack of another writer (no header): a miss.
        let bare = rmp_serde::to_vec_named(&12345u64).unwrap();
        assert!(Codec::MessagePack.decode::<u64>(&bare).is_err());
        // Another version of the layout: a miss.
        let mut other = Codec::MessagePack.encode(&12345u64).unwrap();
        other[1] = 0x02;
        assert!(Codec::MessagePack.decode::<u64>(&other).is_err());
        assert!(Codec::MessagePack.decode::<u64>(&[]).is_err());
        assert!(Codec::MessagePack.decode::<u64>(&[0xC1, 0x01]).is_err());
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_rejects_trailing_bytes() {
        let mut bytes = Codec::MessagePack.encode(&12345u64).unwrap();
        bytes.push(0x01);
        assert!(Codec::MessagePack.decode::<u64>(&bytes).is_err());
        // A trailing byte that starts an incomplete value (u16 marker).
        bytes.pop();
        bytes.push(0xcd);
        assert!(Codec::MessagePack.decode::<u64>(&bytes).is_err());
        let mut value = Codec::MessagePack
            .encode(&serde_json::json!({"a": [1, 2]}))
            .unwrap();
        value.extend_from_slice(&[0x90]);
        assert!(
            Codec::MessagePack
                .decode::<serde_json::Value>(&value)
                .is_err()
        );
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trips_and_is_smaller() {
        let value: Vec<f32> = (0..384).map(|i| i as f32 * 0.37).collect();
        let packed = Codec::MessagePack.encode(&value).unwrap();
        assert_eq!(
            Codec::MessagePack.decode::<Vec<f32>>(&packed).unwrap(),
            value
        );
        assert!(packed.len() < Codec::Json.encode(&value).unwrap().len());
    }
}
