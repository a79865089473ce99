//! How values become bytes in the store.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The encoding of stored values.
///
/// JSON is the default: any client in any language can read the entries.
/// MessagePack (cargo feature `msgpack`) is smaller and faster to decode, for
/// values only Rust services of the same schema read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// `serde_json`, readable by every client.
    #[default]
    Json,
    /// `rmp-serde` with field names (so struct changes stay decodable as JSON-like maps).
    #[cfg(feature = "msgpack")]
    MessagePack,
}

impl Codec {
    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Codec::Json => serde_json::to_vec(value).map_err(|err| Error::Encode(err.to_string())),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => {
                rmp_serde::to_vec_named(value).map_err(|err| Error::Encode(err.to_string()))
            }
        }
    }

    /// Decodes `bytes`; `None` when they are not a `T` in this encoding.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> std::result::Result<T, String> {
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|err| err.to_string()),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|err| err.to_string()),
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
