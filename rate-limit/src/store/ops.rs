//! The limiter's atomic steps, each an [`AtomicOp`] of the store: its Lua
//! script on Redis ([`super::redis`]), its twin in memory
//! ([`super::memory`]), run by [`Cache::run_atomic`](cache_core::Cache::run_atomic),
//! which picks the form. Tests run both forms on the same inputs.

use cache_core::{AtomicOp, Entries, Result, Script};

use super::{memory, redis};

/// Several policies, or a concurrency limit: `limits.lua`.
pub(crate) struct Limits;
/// One rate policy: `single.lua`.
pub(crate) struct Single;
/// One fixed-window policy on the store's clock: `counter.lua`.
pub(crate) struct Counter;
/// A charge given back: `refund.lua`.
pub(crate) struct Refund;
/// A lease given back (`ZREM`).
pub(crate) struct Release;
/// A lease still held renewed.
pub(crate) struct Renew;

impl AtomicOp for Limits {
    fn script(&self) -> &Script {
        &redis::LIMITS
    }
    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        memory::limits(entries, keys, args)
    }
}

impl AtomicOp for Single {
    fn script(&self) -> &Script {
        &redis::SINGLE
    }
    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        memory::single(entries, keys, args)
    }
}

impl AtomicOp for Counter {
    fn script(&self) -> &Script {
        &redis::COUNTER
    }
    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        memory::counter(entries, keys, args)
    }
}

impl AtomicOp for Refund {
    fn script(&self) -> &Script {
        &redis::REFUND
    }
    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        memory::refund(entries, keys, args)
    }
}

impl AtomicOp for Release {
    fn script(&self) -> &Script {
        &redis::RELEASE
    }
    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        memory::release(entries, keys, args)
    }
}

impl AtomicOp for Renew {
    fn script(&self) -> &Script {
        &redis::RENEW
    }
    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        memory::renew(entries, keys, args)
    }
}
