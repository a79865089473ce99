//! Leases: at most one background refresh of a key at a time, and, with
//! `lock`, at most one computation of a missing key, across every instance
//! sharing the store.

use std::sync::LazyLock;
use std::time::Duration;

use crate::cache::Cache;
use crate::error::Result;
use crate::store::Script;
use crate::store::atomic::{AtomicOp, Entries};

/// `SET lease token NX PX ms`: taken only if nobody holds it, and it lapses
/// by itself, so a refresher that dies never blocks the key for longer.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end return {0}",
    )
});

/// Compare-and-delete: a refresher whose lease lapsed and was taken by
/// another never deletes the other's.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return {redis.call('DEL', KEYS[1])} end return {0}",
    )
});

/// What a lease is for: each has a key of its own beside the entry's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeasePurpose {
    /// A background refresh of a stale value (`stale`).
    Refresh,
    /// The computation of a missing value (`lock`).
    Compute,
}

/// A held lease.
pub(crate) struct Lease {
    key: String,
    token: i64,
}

impl Lease {
    /// The lease's key (without the namespace).
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

/// Takes a lease: [`ACQUIRE`], or its twin on the in-memory store's
/// entries (the token as Redis keeps it, a decimal string, lapsing alike).
struct Acquire;

impl AtomicOp for Acquire {
    fn script(&self) -> &Script {
        &ACQUIRE
    }

    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        let (&[key], &[token, hold_ms]) = (keys, args) else {
            return Err(crate::error::Error::invalid(
                "lease",
                "one key, token and hold",
            ));
        };
        if entries.get(key).is_some() {
            return Ok(vec![0]);
        }
        let hold = Duration::from_millis(u64::try_from(hold_ms).unwrap_or(1));
        entries.set(key, token.to_string().as_bytes(), Some(hold));
        Ok(vec![1])
    }
}

/// Gives a lease back: [`RELEASE`], or its twin.
struct Release;

impl AtomicOp for Release {
    fn script(&self) -> &Script {
        &RELEASE
    }

    fn twin(&self, entries: &mut Entries<'_>, keys: &[&str], args: &[i64]) -> Result<Vec<i64>> {
        let (&[key], &[token]) = (keys, args) else {
            return Err(crate::error::Error::invalid("lease", "one key and token"));
        };
        let ours = entries
            .get(key)
            .is_some_and(|held| held == token.to_string().as_bytes());
        Ok(vec![i64::from(ours && entries.delete(key))])
    }
}

/// The key of `purpose`'s lease of an entry key (both without the namespace).
pub(crate) fn lease_key(purpose: LeasePurpose, key: &str) -> String {
    match purpose {
        LeasePurpose::Refresh => format!("{key}:refresh-lease"),
        LeasePurpose::Compute => format!("{key}:compute-lease"),
    }
}

impl Cache {
    /// Takes `purpose`'s lease of `key` for `hold`: `Ok(None)` when another
    /// holds it, an error when the store does not answer (within `timeout`,
    /// at most the handle's).
    pub(crate) async fn take_lease_within(
        &self,
        purpose: LeasePurpose,
        key: &str,
        hold: Duration,
        timeout: Duration,
    ) -> crate::error::Result<Option<Lease>> {
        let lease = Lease {
            key: lease_key(purpose, key),
            // Never 0, so that it cannot match a missing value read as 0.
            token: fastrand::i64(1..i64::MAX),
        };
        let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX).max(1);
        let taken = self
            .run_atomic(&Acquire, &[&lease.key], &[lease.token, hold_ms], timeout)
            .await?;
        Ok((taken == [1]).then_some(lease))
    }

    /// [`take_lease_within`](Self::take_lease_within) the handle's timeout,
    /// `None` whether another holds it or the store failed.
    pub(crate) async fn try_lease(
        &self,
        purpose: LeasePurpose,
        key: &str,
        hold: Duration,
    ) -> Option<Lease> {
        self.take_lease_within(purpose, key, hold, self.timeout())
            .await
            .ok()
            .flatten()
    }

    /// Gives the lease back (if it is still ours).
    pub(crate) async fn release(&self, lease: Lease) {
        // A lease not released lapses after its hold: nothing to report.
        let _ = self
            .run_atomic(&Release, &[&lease.key], &[lease.token], self.timeout())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_leases_are_entries_of_the_store_that_lapse() {
        let cache = Cache::in_memory();
        for n in 0..100 {
            // Held for no time (lapsed at once) and never released, as a
            // failed refresh leaves its lease.
            let lease = cache
                .try_lease(LeasePurpose::Refresh, &format!("key:{n}"), Duration::ZERO)
                .await;
            assert!(lease.is_some());
        }
        let minute = Duration::from_secs(60);
        let held = cache.try_lease(LeasePurpose::Refresh, "held", minute).await;
        let held = held.expect("a free lease is taken");
        let again = cache.try_lease(LeasePurpose::Refresh, "held", minute).await;
        assert!(again.is_none());
        // The token, as Redis keeps it.
        let token = cache.get_bytes(held.key()).await.unwrap();
        assert_eq!(token, Some(held.token.to_string().into_bytes()));
        // Another purpose, another lease.
        let compute = cache.try_lease(LeasePurpose::Compute, "held", minute).await;
        assert!(compute.is_some());
        cache.release(held).await;
        assert!(
            cache
                .try_lease(LeasePurpose::Refresh, "held", minute)
                .await
                .is_some()
        );
    }
}
