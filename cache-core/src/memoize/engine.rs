//! The one memoization pipeline, behind `#[cached]` and
//! [`Cache::get_or_set`](crate::Cache::get_or_set) alike: [`memoize`].
//!
//! One call goes: bypass? key? local tier? flight (single-flight in the
//! process)? read (the entry, and the versions of its tags)? Then a fresh
//! value is returned (refreshed in the background when XFetch says so), a
//! stale one is returned while a background refresh runs, and a miss runs
//! the body (after the cross-instance lock, with `lock`), shares its result
//! with the flight's followers and writes it. Every store operation of the
//! call (reads, tag versions, the write) is spent from one failure budget
//! ([`Budget`]); a failure anywhere runs the body (fail-open).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::body::{Body, Refresh};
use super::budget::Budget;
use super::decoded::Keep;
use super::flight::{FlightKey, Leader, Outcome, Role, join};
use super::key::CallKey;
use super::lock::{self, Waited};
use super::options::{DEFAULT_REFRESH_LEASE, EntryOptions};
use super::target::{Found, OwnedTarget, Target};
use crate::cache::Cache;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::stored::LeasePurpose;
use crate::telemetry::{self, MemoizedCall, Served};

/// Everything about one memoized call except its body.
#[derive(Debug)]
pub struct Call<'c, 'k> {
    /// The handle, or `None` when there is none (then the body just runs).
    /// `#[cached]` passes a clone: a borrow would outlive the body's move
    /// of the arguments (`&mut self`, `self: Arc<Self>`, a `Cache` argument).
    pub cache: Option<Cow<'c, Cache>>,
    /// The key, or why it could not be built.
    pub key: Result<CallKey<'k>>,
    /// How the entry is stored and served; its `label` is the `prefix`
    /// label of the call's metrics and span.
    pub options: Cow<'c, EntryOptions>,
    /// The function's name, for logs.
    pub function: &'static str,
}

/// Runs `body` memoized as `call` says. `stored` picks the part of the
/// result to cache (`Ok`, `Some`, or everything) and `restore` rebuilds a
/// result from it; `keep` says how the local tier keeps values decoded
/// (`None`: as bytes).
pub async fn memoize<R, V, B>(
    mut call: Call<'_, '_>,
    body: B,
    stored: fn(&R) -> Option<&V>,
    restore: fn(V) -> R,
    keep: Option<Keep<V>>,
) -> R
where
    B: Body<R, V>,
    V: Serialize + DeserializeOwned,
{
    // The call's parts are used in place (borrowed, or taken out of it):
    // this future is built and moved on every call, a local hit included,
    // so it stays small; for the same reason the body and the store's paths
    // run boxed.
    let report = MemoizedCall::start(call.options.label);
    let function = call.function;
    let Some(cache) = call.cache.as_deref().filter(|cache| !cache.is_bypassed()) else {
        report.finish("none", Served::Bypass);
        return Box::pin(report.traced(body.run())).await;
    };
    let key = match &mut call.key {
        Ok(key) => key,
        Err(err) => {
            cache.note_uncacheable();
            warn_uncacheable(function, err);
            report.finish(telemetry::tier(cache.reach()), Served::Bypass);
            let mut budget = Budget::for_this_task(cache);
            return Box::pin(report.traced(budget.run(body.run()))).await;
        }
    };
    let options: &EntryOptions = &call.options;
    let codec = options.codec.unwrap_or(cache.codec());
    // Before the flights: a local hit costs a lookup and a clone, or the
    // decoding; for a `#[cached]` key, no SHA-256 (the local tier keeps its
    // entries under their canonical arguments).
    if let Some(tier) = cache.local_tier().filter(|_| options.uses_local_tier()) {
        let full_key;
        let local_key = match &*key {
            CallKey::Args(args) => args.local(),
            CallKey::Stored(stored) => {
                full_key = cache.full_key(stored);
                full_key.as_bytes()
            }
        };
        if let Some(entry) = tier.entry(local_key) {
            if let (Some(keep), Some(decoded)) = (&keep, &entry.decoded)
                && let Some(value) = keep.take(decoded)
            {
                cache.record_hit();
                report.finish(telemetry::TIER_LOCAL, Served::Hit);
                return restore(value);
            }
            if let Some(value) = cache.decode_with::<V>(codec, function, Some(&entry.bytes)) {
                report.finish(telemetry::TIER_LOCAL, Served::Hit);
                return restore(value);
            }
        }
    }
    // The key as stored, with the namespace (taken, not copied, when it
    // can be), and the local tier's key when it is not that one.
    let full_key = match &mut *key {
        CallKey::Args(args) => cache.owned_full_key(args.hashed()),
        CallKey::Stored(Cow::Owned(stored)) => cache.owned_full_key(std::mem::take(stored)),
        CallKey::Stored(Cow::Borrowed(stored)) => cache.full_key(stored).into_owned(),
    };
    let alias = match &*key {
        CallKey::Args(args) => Some(args.local()),
        CallKey::Stored(_) => None,
    };
    let call = StoreCall {
        cache,
        full_key,
        alias,
        options,
        codec,
        function,
        report,
    };
    Box::pin(call.run(body, stored, restore, keep)).await
}

/// A call past the local tier: everything but the body and what to do
/// with its result. Small, and used in place: the future that owns it is
/// boxed on every call that reaches the store.
struct StoreCall<'a> {
    cache: &'a Cache,
    /// The key as stored, with the namespace.
    full_key: String,
    /// The local tier's key of the entry, when it is not `full_key`.
    alias: Option<&'a [u8]>,
    options: &'a EntryOptions,
    codec: Codec,
    function: &'static str,
    report: MemoizedCall,
}

impl StoreCall<'_> {
    /// Flight, read, and what follows from it.
    async fn run<R, V, B>(
        mut self,
        body: B,
        stored: fn(&R) -> Option<&V>,
        restore: fn(V) -> R,
        keep: Option<Keep<V>>,
    ) -> R
    where
        B: Body<R, V>,
        V: Serialize + DeserializeOwned,
    {
        let full_key = std::mem::take(&mut self.full_key);
        let (cache, alias, options, codec, function) = (
            self.cache,
            self.alias,
            self.options,
            self.codec,
            self.function,
        );
        let report = &self.report;
        let store_tier = telemetry::tier(cache.reach());
        let tier = cache.local_tier().filter(|_| options.uses_local_tier());
        // The store may be asked from here on, within the budget.
        let mut budget = Budget::for_this_task(cache);
        let leader = match wait_for_turn(FlightKey::new(cache.id(), full_key), codec).await {
            Turn::Lead(leader) => leader,
            Turn::Served(value) => {
                report.joined(store_tier, Served::Hit);
                return restore(value);
            }
            Turn::RunAlone => {
                report.joined(store_tier, Served::Miss);
                return report.traced(budget.run(body.run())).await;
            }
        };
        let target = Target {
            cache,
            full_key: leader.key(),
            alias,
            options,
            codec,
            function,
        };
        // Before the read is sent: an invalidation arriving meanwhile keeps
        // what it read out of the tier.
        let watch = tier.map(|tier| tier.watch(target.full_key));
        // Boxed, as every store path of the call: each box stays small
        // enough for the allocator's per-thread cache (and this future too).
        let read = report
            .traced(Box::pin(target.read::<V>(
                &mut budget,
                tier.is_some(),
                true,
            )))
            .await;
        match read.found {
            Found::Fresh {
                value,
                early,
                payload,
                plain,
            } => {
                if let (Some(tier), Some(watch), true) = (tier, watch, plain) {
                    let decoded = keep.as_ref().map(|keep| keep.decoded(&value));
                    match alias {
                        Some(alias) => tier.fill_as(watch, alias, &payload, decoded, read.expires),
                        None => tier.fill(watch, &payload, decoded, read.expires),
                    }
                }
                let owned = early.then(|| target.to_owned());
                leader.finish_with_hit(&payload);
                report.finish(store_tier, Served::Hit);
                if let Some(owned) = owned {
                    refresh(owned, body.refresh(stored, codec, function));
                }
                return restore(value);
            }
            Found::Stale { value, payload } => {
                let owned = target.to_owned();
                leader.finish_with_hit(&payload);
                report.finish(store_tier, Served::Stale);
                refresh(owned, body.refresh(stored, codec, function));
                return restore(value);
            }
            Found::Miss => drop(watch),
        }
        let Some(mut versions) = read.versions else {
            // The store failed: an entry kept while tracking is down, if the
            // user opted in to those; else the body.
            if let Some(entry) =
                tier.and_then(|tier| tier.get_stale(alias.unwrap_or(target.full_key.as_bytes())))
            {
                let value = match (&keep, &entry.decoded) {
                    (Some(keep), Some(decoded)) => keep.take(decoded),
                    _ => None,
                };
                if value.is_some() {
                    cache.record_hit();
                }
                if let Some(value) = value
                    .or_else(|| cache.decode_with::<V>(codec, target.full_key, Some(&entry.bytes)))
                {
                    leader.finish_with_hit(&entry.bytes);
                    report.finish(telemetry::TIER_LOCAL, Served::Stale);
                    return restore(value);
                }
            }
            report.finish(store_tier, Served::Error);
            let result = report.traced(budget.run(body.run())).await;
            let encoded = stored(&result)
                .and_then(|value| super::body::encode(value, codec, function))
                .map(Arc::new);
            // Shared with the followers, but not written: a store that just
            // failed the read is not waited on a second time.
            leader.publish(encoded);
            leader.finish();
            return result;
        };
        let mut lease = None;
        if let Some(bound) = options.lock {
            match report
                // Boxed, as the other paths of misses: this future is moved
                // (and boxed) on every call that reaches the store.
                .traced(Box::pin(lock::take_or_wait::<V>(
                    &target,
                    &mut budget,
                    bound,
                    versions,
                )))
                .await
            {
                Waited::Held(held, fresh) => {
                    lease = Some(held);
                    versions = fresh;
                }
                Waited::Found(value, payload) => {
                    leader.finish_with_hit(&payload);
                    report.finish(store_tier, Served::Hit);
                    return restore(value);
                }
                Waited::Compute(fresh) => versions = fresh,
            }
        }
        report.finish(store_tier, Served::Miss);
        let started = Instant::now();
        let result = report.traced(budget.run(body.run())).await;
        let compute = started.elapsed();
        let value = stored(&result);
        let decoded = match (tier, &keep, value) {
            (Some(_), Some(keep), Some(value)) => Some(keep.decoded(value)),
            _ => None,
        };
        // Moved, not copied: the encoded bytes serve followers and the write.
        let encoded: Option<Arc<Vec<u8>>> = value
            .and_then(|value| super::body::encode(value, codec, function))
            .map(Arc::new);
        leader.publish(encoded.clone());
        if let Some(bytes) = encoded {
            let local = tier.is_some().then_some(decoded);
            report
                .traced(Box::pin(target.write(
                    &mut budget,
                    &bytes,
                    compute,
                    versions,
                    local,
                )))
                .await;
        }
        if let Some(lease) = lease {
            Box::pin(lock::release(&target, lease)).await;
        }
        leader.finish();
        result
    }
}

/// Where a call stands once the flights of its key are sorted out.
pub(super) enum Turn<V> {
    /// It leads the flight: read the cache, run the body on a miss.
    Lead(Leader),
    /// A leader's encoded result, decoded.
    Served(V),
    /// The leader's outcome is not shared (`Err`, `None`, undecodable):
    /// run the body alone.
    RunAlone,
}

/// Joins the flight of `key` and, as a follower, waits for its outcome,
/// joining again (and perhaps leading) when its leader vanished.
pub(super) async fn wait_for_turn<V: DeserializeOwned>(key: FlightKey, codec: Codec) -> Turn<V> {
    let mut role = join(key);
    loop {
        let flight = match role {
            Role::Leader(leader) => return Turn::Lead(leader),
            Role::Follower(flight) => flight,
        };
        match flight.outcome().await {
            Outcome::Done(Some(bytes)) => {
                return match codec.decode::<V>(&bytes) {
                    Ok(value) => Turn::Served(value),
                    Err(_) => Turn::RunAlone,
                };
            }
            Outcome::Done(None) => return Turn::RunAlone,
            Outcome::Abandoned => role = join(flight.key.clone()),
        }
    }
}

/// Refreshes the entry in a task of its own, if this instance gets the
/// refresh lease (one refresh per key across instances). A refresh that
/// fails (`Err`, `None`, panic, over `timeout`) leaves the old value in
/// place and holds its lease until it lapses, so that a failing upstream is
/// retried once per lease period, not once per call.
fn refresh(target: OwnedTarget, body: Option<Refresh>) {
    let Some(body) = body else {
        // A body that cannot leave the call (never `#[cached]` with `stale`).
        tracing::debug!(
            function = target.function,
            "no background refresh: the body borrows"
        );
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let target = target.target();
        let cache = target.cache;
        let hold = target.options.timeout.unwrap_or(DEFAULT_REFRESH_LEASE);
        let Some(lease) = cache
            .try_lease(LeasePurpose::Refresh, target.key(), hold)
            .await
        else {
            return;
        };
        // A call tree of its own: the refresh's store operations share one budget.
        let mut budget = Budget::for_this_task(cache);
        // Read again under the lease: a refresh that finished (and gave the
        // lease back) after this call's read has written a fresh value,
        // which must not be refreshed a second time. Its tag versions are
        // the ones the new value is written with.
        let read = target
            .read::<serde::de::IgnoredAny>(&mut budget, false, false)
            .await;
        let Some(versions) = read.versions else {
            return;
        };
        if matches!(read.found, Found::Fresh { early: false, .. }) {
            cache.release(lease).await;
            return;
        }
        let started = Instant::now();
        // A task of its own, so that a panic is an `Err` here, not a lost lease.
        let mut task = tokio::spawn(body);
        let outcome = match target.options.timeout {
            Some(limit) => match tokio::time::timeout(limit, &mut task).await {
                Ok(joined) => joined.ok(),
                Err(_) => {
                    task.abort();
                    None
                }
            },
            None => task.await.ok(),
        };
        match outcome.flatten() {
            Some(bytes) => {
                target
                    .write(&mut budget, &bytes, started.elapsed(), versions, None)
                    .await;
                cache.release(lease).await;
            }
            None => {
                // Kept until it lapses: the next attempt waits that long.
                tracing::debug!(
                    function = target.function,
                    "background refresh failed or timed out; the stale value stays"
                );
            }
        }
    });
}

/// Logs a call whose key could not be built (NaN argument, say) at warn
/// level at most once a minute per process, with the number of such calls
/// since the last warning, and at debug level otherwise: one bad argument in
/// a hot loop must not flood the log. Every such call is counted in
/// [`Stats::uncacheable`](crate::Stats::uncacheable).
fn warn_uncacheable(function: &'static str, error: &Error) {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static LIMITER: WarnLimiter = WarnLimiter::new(Duration::from_secs(60));
    let now = EPOCH.get_or_init(Instant::now).elapsed();
    match LIMITER.tick(now) {
        Some(calls) => tracing::warn!(
            function,
            %error,
            calls,
            "memoized calls ran uncached: their key could not be built (counted in Stats::uncacheable; logged at most once a minute)"
        ),
        None => {
            tracing::debug!(function, %error, "memoized call ran uncached: its key could not be built");
        }
    }
}

/// At most one warning per period, and how many events it stands for.
struct WarnLimiter {
    period_ms: u64,
    /// Milliseconds (since the caller's epoch) before which nothing is logged.
    quiet_until: AtomicU64,
    /// Events since the last warning.
    unlogged: AtomicU64,
}

impl WarnLimiter {
    const fn new(period: Duration) -> WarnLimiter {
        WarnLimiter {
            // Whole milliseconds of any sane period fit a u64.
            period_ms: period.as_millis() as u64,
            quiet_until: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Records one event at `now`; `Some(events since the last warning)`
    /// when this one is to be logged.
    fn tick(&self, now: Duration) -> Option<u64> {
        let now = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let quiet_until = self.quiet_until.load(Ordering::Relaxed);
        // One caller wins the window; the others only count.
        (now >= quiet_until
            && self
                .quiet_until
                .compare_exchange(
                    quiet_until,
                    now.saturating_add(self.period_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok())
        .then(|| self.unlogged.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncacheable_calls_are_warned_about_at_most_once_a_period() {
        let limiter = WarnLimiter::new(Duration::from_secs(60));
        let at = Duration::from_secs;
        assert_eq!(limiter.tick(at(0)), Some(1), "the first one is logged");
        for second in 1..60 {
            assert_eq!(limiter.tick(at(second)), None, "then quiet for a minute");
        }
        assert_eq!(
            limiter.tick(at(60)),
            Some(60),
            "then one warning for all 60"
        );
        assert_eq!(limiter.tick(at(61)), None);
        assert_eq!(limiter.tick(at(500)), Some(2));
    }
}
