//! The versioned header of entries written with a stored-value option
//! (`stale`, `compress`, `encrypt`, `tags`).
//!
//! Plain entries are the codec's bytes and nothing else. An enveloped entry
//! is (all integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `0xC1 0xE5` (0xC1 starts no JSON text and no MessagePack value) |
//! | 2 | 1 | format version, `1` |
//! | 3 | 1 | flags: bit 0 compressed (lz4 block), bit 1 encrypted (Fernet); other bits 0 |
//! | 4 | 8 | write time, ms since the Unix epoch |
//! | 12 | 8 | soft expiry, ms since the Unix epoch (`0`: none) |
//! | 20 | 4 | compute time of the value, ms |
//! | 24 | 1 | number of tags `n` |
//! | 25 | … | `n` times: tag length (2), tag (UTF-8), tag version (8) |
//! | … | rest | payload |
//!
//! The payload is the codec's bytes, compressed (`lz4_flex` block with its
//! 4-byte little-endian size prefix) if bit 0 is set, then as a Fernet token
//! (URL-safe base64 text) if bit 1 is set. An unknown version, unknown flag
//! bits or a header that does not parse make the entry a miss.

use std::fmt;

/// What every enveloped entry starts with.
pub const MAGIC: [u8; 2] = [0xC1, 0xE5];
/// The layout described in the module docs.
pub const VERSION: u8 = 1;
/// Bit 0 of the flags: the payload is lz4-compressed.
pub const COMPRESSED: u8 = 0b01;
/// Bit 1 of the flags: the payload is a Fernet token.
pub const ENCRYPTED: u8 = 0b10;
const KNOWN_FLAGS: u8 = COMPRESSED | ENCRYPTED;
const FIXED_LEN: usize = 25;

/// The header fields of one entry.
///
/// Fields may be added: start from [`Header::default`] and set the fields.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// [`COMPRESSED`] and [`ENCRYPTED`] bits.
    pub flags: u8,
    /// When the entry was written, ms since the Unix epoch.
    pub written_ms: u64,
    /// When it stops being fresh, ms since the Unix epoch; 0 for never.
    pub soft_expiry_ms: u64,
    /// How long the value took to compute, ms (for early refresh).
    pub compute_ms: u32,
    /// The tags and their versions when the value was computed.
    pub tags: Vec<(String, u64)>,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("flags", &self.flags)
            .field("written_ms", &self.written_ms)
            .field("soft_expiry_ms", &self.soft_expiry_ms)
            .field("compute_ms", &self.compute_ms)
            .field("tags", &self.tags)
            .finish()
    }
}

/// Why bytes are not an entry this version can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Too short, or a tag runs past the end.
    Truncated,
    /// A version this build does not know.
    UnknownVersion(u8),
    /// Flag bits this build does not know.
    UnknownFlags(u8),
    /// A tag that is not UTF-8.
    BadTag,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated envelope"),
            Self::UnknownVersion(v) => write!(f, "unknown envelope version {v}"),
            Self::UnknownFlags(flags) => write!(f, "unknown envelope flags {flags:#04x}"),
            Self::BadTag => f.write_str("envelope tag is not UTF-8"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// `true` when `bytes` start with the envelope's magic.
///
/// ```
/// use cache_core::envelope::{Header, is_envelope};
///
/// assert!(!is_envelope(b"{\"plain\":\"json\"}"));
/// assert!(is_envelope(&Header::default().wrap(b"42")));
/// ```
pub fn is_envelope(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

impl Header {
    /// `header` followed by `payload`. Tags over 255 or longer than 65535
    /// bytes are the caller's to refuse (see [`check_tags`]).
    pub fn wrap(&self, payload: &[u8]) -> Vec<u8> {
        let tags_len: usize = self.tags.iter().map(|(tag, _)| 10 + tag.len()).sum();
        let mut out = Vec::with_capacity(FIXED_LEN + tags_len + payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.flags);
        out.extend_from_slice(&self.written_ms.to_be_bytes());
        out.extend_from_slice(&self.soft_expiry_ms.to_be_bytes());
        out.extend_from_slice(&self.compute_ms.to_be_bytes());
        out.push(u8::try_from(self.tags.len()).unwrap_or(u8::MAX));
        for (tag, version) in self.tags.iter().take(usize::from(u8::MAX)) {
            let len = u16::try_from(tag.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&tag.as_bytes()[..usize::from(len)]);
            out.extend_from_slice(&version.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    /// The header and the payload of an enveloped entry.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::envelope::EnvelopeError> {
    /// use cache_core::envelope::{EnvelopeError, Header};
    ///
    /// let mut header = Header::default();
    /// header.tags = vec![("user:7".into(), 3)];
    /// let entry = header.wrap(b"1250");
    /// let (read, payload) = Header::unwrap(&entry)?;
    /// assert_eq!((read, payload), (header, &b"1250"[..]));
    /// assert_eq!(Header::unwrap(&entry[..10]), Err(EnvelopeError::Truncated));
    /// # Ok(()) }
    /// ```
    pub fn unwrap(bytes: &[u8]) -> Result<(Header, &[u8]), EnvelopeError> {
        let rest = bytes.strip_prefix(&MAGIC).ok_or(EnvelopeError::Truncated)?;
        let mut reader = Reader(rest);
        let version = reader.u8()?;
        if version != VERSION {
            return Err(EnvelopeError::UnknownVersion(version));
        }
        let flags = reader.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let written_ms = u64::from_be_bytes(reader.array()?);
        let soft_expiry_ms = u64::from_be_bytes(reader.array()?);
        let compute_ms = u32::from_be_bytes(reader.array()?);
        let count = reader.u8()?;
        let mut tags = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let len = u16::from_be_bytes(reader.array()?);
            let tag = std::str::from_utf8(reader.take(usize::from(len))?)
                .map_err(|_| EnvelopeError::BadTag)?;
            let version = u64::from_be_bytes(reader.array()?);
            tags.push((tag.to_owned(), version));
        }
        let header = Header {
            flags,
            written_ms,
            soft_expiry_ms,
            compute_ms,
            tags,
        };
        Ok((header, reader.0))
    }
}

/// Refuses tags the header cannot hold: more than 255, or one longer than
/// 65535 bytes.
pub fn check_tags<S: AsRef<str>>(tags: &[S]) -> crate::error::Result<()> {
    if tags.len() > usize::from(u8::MAX) {
        return Err(crate::error::Error::invalid("tags", "more than 255 tags"));
    }
    if tags
        .iter()
        .any(|tag| tag.as_ref().len() > usize::from(u16::MAX))
    {
        return Err(crate::error::Error::invalid(
            "tags",
            "a tag longer than 65535 bytes",
        ));
    }
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.0.len() < n {
            return Err(EnvelopeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            flags: COMPRESSED,
            written_ms: 1_700_000_000_000,
            soft_expiry_ms: 1_700_000_005_000,
            compute_ms: 42,
            tags: vec![("user:7".into(), 3), ("team:é".into(), u64::MAX)],
        }
    }

    #[test]
    fn header_round_trips_and_layout_is_as_documented() {
        let bytes = sample().wrap(b"payload");
        assert_eq!(&bytes[..4], &[0xC1, 0xE5, 1, COMPRESSED]);
        assert_eq!(&bytes[4..12], &1_700_000_000_000u64.to_be_bytes());
        assert_eq!(&bytes[20..24], &42u32.to_be_bytes());
        assert_eq!(bytes[24], 2);
        assert_eq!(&bytes[25..27], &[0, 6]);
        assert_eq!(&bytes[27..33], b"user:7");
        let (header, payload) = Header::unwrap(&bytes).unwrap();
        assert_eq!(header, sample());
        assert_eq!(payload, b"payload");
    }

    #[test]
    fn unknown_versions_flags_and_truncation_are_refused() {
        let bytes = sample().wrap(b"x");
        let mut other = bytes.clone();
        other[2] = 2;
        assert_eq!(
            Header::unwrap(&other).unwrap_err(),
            EnvelopeError::UnknownVersion(2)
        );
        let mut flags = bytes.clone();
        flags[3] = 0x80;
        assert!(matches!(
            Header::unwrap(&flags),
            Err(EnvelopeError::UnknownFlags(_))
        ));
        for cut in 0..30 {
            assert!(Header::unwrap(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Header::unwrap(b"{\"a\":1}").is_err());
        assert!(!is_envelope(b"[1.5]"));
        assert!(!is_envelope(&[0xC1, 0x01, 7]));
    }
}
