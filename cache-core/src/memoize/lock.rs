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
use super::engine::{Found, Target};
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
        Ok(Some(lease)) => return Waited::Held(lease, versions),
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
            Ok(Some(lease)) => return Waited::Held(lease, versions),
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
