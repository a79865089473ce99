//! Leases: at most one background refresh of a key at a time, and, with
//! `lock`, at most one computation of a missing key, across every instance
//! sharing the store.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::config::Backend;
use crate::store::Script;

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

/// The in-memory store's leases, shared by the clones of a handle (which
/// share its data).
#[derive(Default)]
struct MemoryLeases(Mutex<HashMap<String, (i64, Instant)>>);

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
    ) -> crate::Result<Option<Lease>> {
        let lease = Lease {
            key: lease_key(purpose, key),
            // Never 0, so that it cannot match a missing value read as 0.
            token: fastrand::i64(1..i64::MAX),
        };
        if *self.backend() == Backend::Memory {
            let leases = self.shared_state::<MemoryLeases>();
            let mut leases = crate::sync::lock(&leases.0);
            let now = Instant::now();
            if leases
                .get(&lease.key)
                .is_some_and(|(_, until)| *until > now)
            {
                return Ok(None);
            }
            // A failed refresh keeps its lease until it lapses, and nothing
            // else removes it: without this, one entry per key ever refreshed
            // in vain would stay for the life of the process.
            leases.retain(|_, (_, until)| *until > now);
            leases.insert(lease.key.clone(), (lease.token, now + hold));
            return Ok(Some(lease));
        }
        let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX).max(1);
        let taken = self
            .eval_script_within(&ACQUIRE, &[&lease.key], &[lease.token, hold_ms], timeout)
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
        if *self.backend() == Backend::Memory {
            let leases = self.shared_state::<MemoryLeases>();
            let mut leases = crate::sync::lock(&leases.0);
            if leases
                .get(&lease.key)
                .is_some_and(|(token, _)| *token == lease.token)
            {
                leases.remove(&lease.key);
            }
            return;
        }
        // A lease not released lapses after its hold: nothing to report.
        let _ = self
            .eval_script_within(&RELEASE, &[&lease.key], &[lease.token], self.timeout())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lapsed_in_memory_leases_do_not_accumulate() {
        let cache = Cache::in_memory();
        for n in 0..100 {
            // Held for no time (lapsed at once) and never released, as a
            // failed refresh leaves its lease.
            let lease = cache
                .try_lease(LeasePurpose::Refresh, &format!("key:{n}"), Duration::ZERO)
                .await;
            assert!(lease.is_some());
        }
        let leases = cache.shared_state::<MemoryLeases>();
        assert!(crate::sync::lock(&leases.0).len() <= 1);
        let minute = Duration::from_secs(60);
        let held = cache.try_lease(LeasePurpose::Refresh, "held", minute).await;
        assert!(held.is_some());
        let again = cache.try_lease(LeasePurpose::Refresh, "held", minute).await;
        assert!(again.is_none());
        // Another purpose, another lease.
        let compute = cache.try_lease(LeasePurpose::Compute, "held", minute).await;
        assert!(compute.is_some());
    }
}
