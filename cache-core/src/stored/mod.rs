//! Stored-value options of memoized entries: stale-while-revalidate and
//! fail-safe (`stale`, `timeout`), compression (`compress`), encryption at
//! rest (`encrypt`) and tags (`tags`), the envelope they share, and the
//! leases of refreshes and locked computations. The memoization engine
//! ([`crate::memoize`]) puts them to work.
//!
//! A plain entry is the codec's bytes; an entry written with any of these
//! options is an [`envelope`](crate::envelope): a small versioned header,
//! then the payload, encrypted with [`EncryptionKeys`](crate::EncryptionKeys).

mod entry;
mod lease;
mod tags;

pub(crate) use entry::{Seal, millis, now_ms};
pub(crate) use lease::{Lease, LeasePurpose, lease_key};
pub(crate) use tags::{parse_version, tag_key, tags_match};
