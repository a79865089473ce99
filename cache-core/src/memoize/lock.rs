//! `lock`: across instances, one computation per missing key.
//!
//! Within one instance the flights already fold concurrent calls of a key
//! into one; across instances, a miss with `lock` takes the key's compute
//! lease in the store (`SET NX PX`, released by compare-and-delete: the
//! leases of [`crate::stored`]). The holder computes, writes, releases and
//! publishes a message on the lease's channel (the event bus: `PUBLISH`, or
//! `SPUBLISH` on a cluster; in process on the in-memory store). The other
//! instances' leaders subscribe to that channel, look for the value again,
//! and wait for the message, looking again at a slow pace in case it was
//! lost, until the value is there, the lease lapses (its holder died: they
//! take it) or the bound passes (they compute without it). A store that
//! fails on the way makes the call compute at once: the lock never turns a
//! cache failure into a wait.

use std::time::Duration;

use futures_util::StreamExt;
use serde::de::{DeserializeOwned, IgnoredAny};
use tokio::time::Instant;

use super::budget::Budget;
use super::target::{Found, Target};
use crate::cache::Cache;
use crate::stored::{Lease, LeasePurpose, lease_key};

/// How long a waiter sleeps between looks when no message comes: the
/// fallback for a message lost (pub/sub is at most once), not the way it
/// learns of the value.
const POLL: Duration = Duration::from_millis(250);

/// How a miss with `lock` goes on.
pub(super) enum Waited<V> {
    /// This call holds the lease: compute, write, then [`release`]. With
    /// the tag versions of the last read, to write the value under.
    Held(Lease, Vec<(String, u64)>),
    /// The holder's value appeared: the value and its codec bytes.
    Found(V, Vec<u8>),
    /// Compute without the lease: the store failed, or the bound passed.
    Compute(Vec<(String, u64)>),
}

/// Takes the compute lease of `target`'s key for `bound`, or waits up to
/// `bound` for the value of whoever holds it. `versions`: the tag versions
/// of the miss's read.
pub(super) async fn take_or_wait<V: DeserializeOwned>(
    target: &Target<'_>,
    budget: &mut Budget,
    bound: Duration,
    mut versions: Vec<(String, u64)>,
) -> Waited<V> {
    let cache = target.cache;
    let deadline = Instant::now() + bound;
    match take(target, budget, bound).await {
        Ok(Some(lease)) => return held(target, budget, lease, versions).await,
        Ok(None) => {}
        Err(()) => return Waited::Compute(versions),
    }
    // Subscribed before looking again: a value written after the look
    // comes with a message.
    let channel = cache
        .full_key(&lease_key(LeasePurpose::Compute, target.key()))
        .into_owned();
    let mut wake = subscribe(cache, &channel, deadline).await;
    loop {
        let read = target.read::<V>(budget, false, false).await;
        match read.found {
            Found::Fresh { value, payload, .. } | Found::Stale { value, payload } => {
                cache.record_hit();
                return Waited::Found(value, payload);
            }
            Found::Miss => {}
        }
        let Some(read_versions) = read.versions else {
            return Waited::Compute(versions);
        };
        versions = read_versions;
        match take(target, budget, bound).await {
            Ok(Some(lease)) => return held(target, budget, lease, versions).await,
            Ok(None) => {}
            Err(()) => return Waited::Compute(versions),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::debug!(
                function = target.function(),
                ?bound,
                "no value within the lock's bound: computing without the lease"
            );
            return Waited::Compute(versions);
        }
        let nap = left.min(POLL);
        match wake.as_mut() {
            // A message, a gap, or nothing within the nap: look again.
            Some(messages) => {
                let _ = tokio::time::timeout(nap, messages.next()).await;
            }
            None => tokio::time::sleep(nap).await,
        }
    }
}

/// With the lease taken, one more look: a holder may have written the
/// value and released the lease between this call's read and its take.
async fn held<V: DeserializeOwned>(
    target: &Target<'_>,
    budget: &mut Budget,
    lease: Lease,
    versions: Vec<(String, u64)>,
) -> Waited<V> {
    let read = target.read::<V>(budget, false, false).await;
    match read.found {
        Found::Fresh { value, payload, .. } | Found::Stale { value, payload } => {
            target.cache.release(lease).await;
            target.cache.record_hit();
            Waited::Found(value, payload)
        }
        Found::Miss => Waited::Held(lease, read.versions.unwrap_or(versions)),
    }
}

/// Gives the lease back, then tells the waiters to look.
pub(super) async fn release(target: &Target<'_>, lease: Lease) {
    let cache = target.cache;
    let channel = cache.full_key(lease.key()).into_owned();
    cache.release(lease).await;
    // Lost or failed: the waiters look again at their slow pace.
    let _ = cache.events().publish(&channel, &()).await;
}

/// The compute lease, within the budget: `Err` when the store failed.
async fn take(
    target: &Target<'_>,
    budget: &mut Budget,
    bound: Duration,
) -> Result<Option<Lease>, ()> {
    let (cache, key) = (target.cache, target.key());
    let taken = budget
        .spend(|left| async move {
            cache
                .take_lease_within(LeasePurpose::Compute, key, bound, left)
                .await
        })
        .await;
    cache.note_memo_failure(taken.as_ref().err());
    taken.map_err(drop)
}

/// The wake messages of `channel`, or `None` (then the waiter polls) when
/// the bus cannot subscribe before `deadline` and the handle's timeout.
async fn subscribe(
    cache: &Cache,
    channel: &str,
    deadline: Instant,
) -> Option<crate::events::Subscription<IgnoredAny>> {
    let bound = deadline
        .saturating_duration_since(Instant::now())
        .min(cache.timeout());
    let bus = cache.events();
    match tokio::time::timeout(bound, bus.subscribe::<IgnoredAny>(&[channel])).await {
        Ok(Ok(subscription)) => Some(subscription),
        Ok(Err(err)) => {
            tracing::debug!(%err, "lock: no wake messages; polling");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::memoize::EntryOptions;

    /// Another instance holding the compute lease of `key` for `hold`.
    async fn held_elsewhere(cache: &Cache, key: &str, hold: Duration) -> Lease {
        cache
            .try_lease(LeasePurpose::Compute, key, hold)
            .await
            .expect("the lease is free")
    }

    /// A `get_or_set` of `key` with `lock(bound)` in a task of its own,
    /// counting its computations (each answers 7).
    fn waiter(
        cache: &Cache,
        key: &'static str,
        bound: Duration,
        computed: &Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<u32> {
        let (cache, computed) = (cache.clone(), computed.clone());
        tokio::spawn(async move {
            let options = EntryOptions::ttl(Duration::from_secs(60)).lock(bound);
            cache
                .get_or_set(key, &options, move || {
                    computed.fetch_add(1, Ordering::SeqCst);
                    async { 7 }
                })
                .await
        })
    }

    // Paused time: a waiter that relied on its poll would resume only once
    // the clock jumped by POLL; woken by the message, it resumes at once.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_woken_by_the_holders_message_not_by_its_poll() {
        let cache = Cache::in_memory();
        let holder = held_elsewhere(&cache, "report", Duration::from_secs(60)).await;
        let computed = Arc::new(AtomicUsize::new(0));
        let waiting = waiter(&cache, "report", Duration::from_secs(30), &computed);
        // One thread: once it subscribed, it ran on to its nap.
        while cache.stats().events.subscriptions == 0 {
            tokio::task::yield_now().await;
        }
        let written = Instant::now();
        // The holder writes, releases and tells.
        cache
            .set("report", &42_u32, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        let channel = lease_key(LeasePurpose::Compute, "report");
        cache.release(holder).await;
        cache.events().publish(&channel, &()).await.unwrap();
        assert_eq!(waiting.await.unwrap(), 42, "the holder's value");
        assert_eq!(computed.load(Ordering::SeqCst), 0);
        assert!(written.elapsed() < POLL, "woken, not polled");
    }

    #[tokio::test]
    async fn a_waiter_computes_once_the_holders_lease_lapses() {
        let cache = Cache::in_memory();
        // A holder that died: its lease is never released, and lapses.
        let _dead = held_elsewhere(&cache, "lapsed", Duration::from_millis(300)).await;
        let computed = Arc::new(AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let value = waiter(&cache, "lapsed", Duration::from_secs(30), &computed).await;
        assert_eq!(value.unwrap(), 7);
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took the lapsed lease, not the whole bound: {:?}",
            started.elapsed()
        );
        assert_eq!(cache.get::<u32>("lapsed").await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn a_waiter_computes_when_the_bound_passes() {
        let cache = Cache::in_memory();
        let _slow = held_elsewhere(&cache, "slow", Duration::from_secs(60)).await;
        let computed = Arc::new(AtomicUsize::new(0));
        let bound = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let value = waiter(&cache, "slow", bound, &computed).await;
        assert_eq!(value.unwrap(), 7);
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() >= bound, "waited the bound first");
    }
}
