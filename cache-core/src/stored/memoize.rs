//! What `#[cached]` with a stored-value option expands to.
//!
//! [`memoize_stored`] serves `compress`, `encrypt` and `tags`; [`memoize_stale`]
//! adds stale-while-revalidate and fail-safe, and needs a body it can move
//! to a background task (`Send + 'static`).
//!
//! Both are fail-open like the plain path (a store error runs the body), and
//! single-flight like it: concurrent calls of one key in one process share
//! the leader's read and, on a miss, its body (the flights of the plain
//! path, keyed by the full key; followers get the codec bytes).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::codec::Codec;
use crate::memoize::flight::{FlightKey, Leader};
use crate::memoize::{Call, Turn, wait_for_turn};
use crate::telemetry::{self, MemoizedCall, Served};

use super::StoredOptions;
use super::entry::{Seal, millis, now_ms};
use super::tags::{tag_key, tags_match};

/// How long a background refresh holds its lease without a `timeout`.
pub const DEFAULT_REFRESH_LEASE: Duration = Duration::from_secs(10);

/// XFetch's β: 1 is the paper's default (larger refreshes earlier).
const XFETCH_BETA: f64 = 1.0;

/// One call's cache coordinates, owned (a background refresh takes them).
#[derive(Clone)]
struct Target {
    cache: Cache,
    key: String,
    full_key: String,
    ttl: Duration,
    codec: Codec,
    options: StoredOptions,
    function: &'static str,
}

/// What a read found.
enum Found<V> {
    /// A value within `ttl`; `early` when XFetch says to refresh it now.
    /// `payload`: its codec bytes, for the flight's followers.
    Fresh {
        value: V,
        early: bool,
        payload: Vec<u8>,
    },
    /// A value past `ttl` (within `ttl + stale`).
    Stale {
        value: V,
        payload: Vec<u8>,
    },
    Miss,
}

/// A read: what was found, and the versions of the call's tags then
/// (`None` when the store failed: nothing is written after a failed read).
struct Read<V> {
    found: Found<V>,
    versions: Option<Vec<(String, u64)>>,
}

impl<V> Read<V> {
    /// How the call is served after this read.
    fn served(&self) -> Served {
        match (&self.found, &self.versions) {
            (Found::Fresh { .. }, _) => Served::Hit,
            (Found::Stale { .. }, _) => Served::Stale,
            (Found::Miss, Some(_)) => Served::Miss,
            (Found::Miss, None) => Served::Error,
        }
    }
}

impl Target {
    fn new(call: Call, options: StoredOptions) -> Result<Target, Option<Cache>> {
        // Entries with stored-value options are not kept in the local tier
        // (their freshness, tags and leases are decided at each read).
        let Call {
            cache,
            key,
            ttl,
            codec,
            local: _,
            function,
            prefix: _,
        } = call;
        let cache = cache.filter(|cache| !cache.is_bypassed()).ok_or(None)?;
        let key = match key {
            Ok(key) => key,
            Err(err) => {
                cache.note_uncacheable();
                tracing::debug!(function, %err, "memoized call ran uncached: its key could not be built");
                return Err(Some(cache));
            }
        };
        Ok(Target {
            full_key: cache.full_key(&key).into_owned(),
            codec: codec.unwrap_or(cache.codec()),
            cache,
            key,
            ttl,
            options,
            function,
        })
    }

    /// Reads the entry and the call's tag versions in one round trip.
    async fn read<V: DeserializeOwned>(&self, count: bool) -> Read<V> {
        let cache = &self.cache;
        let tags = &self.options.tags;
        let mut keys = Vec::with_capacity(1 + tags.len());
        keys.push(self.full_key.clone());
        keys.extend(tags.iter().map(|tag| cache.owned_full_key(tag_key(tag))));
        let values = cache.get_many_full_within(&keys, cache.timeout()).await;
        cache.note_memo_failure(values.as_ref().err());
        let Ok(mut values) = values else {
            return Read {
                found: Found::Miss,
                versions: None,
            };
        };
        let mut versions: Vec<(String, u64)> = tags
            .iter()
            .cloned()
            .zip(
                values
                    .iter()
                    .skip(1)
                    .map(|v| super::tags::parse_version(v.as_deref())),
            )
            .collect();
        let bytes = values.get_mut(0).and_then(Option::take);
        // A version key absent (never set, evicted, deleted) is a miss for
        // every entry; it gets a version before anything is computed under it.
        let fresh = cache
            .fresh_tag_versions(&mut versions, cache.timeout())
            .await;
        cache.note_memo_failure(fresh.as_ref().err());
        let found = self.judge(bytes, &versions, count);
        Read {
            found,
            versions: fresh.is_ok().then_some(versions),
        }
    }

    /// Decides what `bytes` are worth to this call.
    fn judge<V: DeserializeOwned>(
        &self,
        bytes: Option<Vec<u8>>,
        versions: &[(String, u64)],
        count: bool,
    ) -> Found<V> {
        let counters = self.cache.counters();
        let miss = || {
            if count {
                counters.record_miss();
            }
            Found::Miss
        };
        let Some(bytes) = bytes else {
            return miss();
        };
        let Some((header, payload)) =
            self.cache
                .open_counted(&self.full_key, bytes, self.options.encrypt)
        else {
            return Found::Miss;
        };
        // A plain value (another writer's, or written before the option was
        // added) reads as fresh, unless tags or encryption are required.
        let (soft_expiry_ms, compute_ms) = match &header {
            Some(header) => {
                if !tags_match(&header.tags, versions) {
                    return miss();
                }
                (header.soft_expiry_ms, header.compute_ms)
            }
            None if !versions.is_empty() => return miss(),
            None => (0, 0),
        };
        let value = match self.codec.decode::<V>(&payload) {
            Ok(value) => value,
            Err(err) => {
                counters.record_decode_error();
                tracing::debug!(key = %self.full_key, error = %err, "cache entry did not decode; treated as a miss");
                return miss();
            }
        };
        if count {
            counters.record_hit();
        }
        let now = now_ms();
        if self.options.stale.is_some() && soft_expiry_ms != 0 {
            if now >= soft_expiry_ms {
                if count {
                    counters.record_stale_served();
                }
                return Found::Stale { value, payload };
            }
            let early = refresh_early(now, soft_expiry_ms, compute_ms, 1.0 - fastrand::f64());
            return Found::Fresh {
                value,
                early,
                payload,
            };
        }
        Found::Fresh {
            value,
            early: false,
            payload,
        }
    }

    /// Writes `value` sealed as the options say, with the tag versions read
    /// before it was computed. Failures are noted, never returned.
    async fn write<V: Serialize>(&self, value: &V, compute: Duration, tags: Vec<(String, u64)>) {
        if let Some(codec_bytes) = self.encode(value) {
            self.write_encoded(&codec_bytes, compute, tags).await;
        }
    }

    /// The codec bytes of `value`; `None` (logged) when it does not encode.
    fn encode<V: Serialize>(&self, value: &V) -> Option<Vec<u8>> {
        match self.codec.encode(value) {
            Ok(bytes) => Some(bytes),
            Err(err) => {
                tracing::warn!(function = self.function, error = %err, "result could not be encoded; not cached");
                None
            }
        }
    }

    /// [`write`](Self::write) of bytes already encoded.
    async fn write_encoded(&self, codec_bytes: &[u8], compute: Duration, tags: Vec<(String, u64)>) {
        let cache = &self.cache;
        let stale = self.options.stale.unwrap_or_default();
        let seal = Seal {
            compress_from: self.options.compress_from,
            encrypt: self.options.encrypt,
            soft_expiry_ms: if self.options.stale.is_some() {
                now_ms().saturating_add(millis(self.ttl))
            } else {
                0
            },
            compute_ms: u32::try_from(compute.as_millis()).unwrap_or(u32::MAX),
            tags,
        };
        let write = match cache.seal(codec_bytes, &seal) {
            Ok(sealed) => {
                // Nothing outlives ttl + stale.
                let redis_ttl = self.ttl.saturating_add(stale);
                cache
                    .set_full_within(&self.full_key, &sealed, Some(redis_ttl), cache.timeout())
                    .await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = write {
            cache.note_memo_failure(Some(&err));
        }
    }
}

/// XFetch (Vattani et al.): refresh before `expiry` with a probability that
/// grows as it nears and with the compute time: when
/// `now - compute * β * ln(rand) >= expiry`, `rand` in (0, 1].
fn refresh_early(now_ms: u64, expiry_ms: u64, compute_ms: u32, rand: f64) -> bool {
    let gap = f64::from(compute_ms) * XFETCH_BETA * -rand.ln();
    now_ms as f64 + gap >= expiry_ms as f64
}

/// Runs `body` memoized with `compress`, `encrypt` or `tags` (no `stale`).
pub async fn memoize_stored<R, V, F>(
    call: Call,
    options: StoredOptions,
    body: F,
    stored: fn(&R) -> Option<&V>,
    restore: fn(V) -> R,
) -> R
where
    F: Future<Output = R>,
    V: Serialize + DeserializeOwned,
{
    let report = MemoizedCall::start(call.prefix);
    let (target, leader, read) = match lead(call, options, &report).await {
        Start::Lead(target, leader, read) => (target, leader, read),
        Start::Served(value) => return restore(value),
        Start::RunBody => return report.traced(body).await,
    };
    match read.found {
        Found::Fresh { value, payload, .. } | Found::Stale { value, payload } => {
            leader.finish_with_hit(&payload);
            restore(value)
        }
        Found::Miss => {
            let miss = run_and_store(&target, leader, read.versions, body, stored);
            report.traced(miss).await
        }
    }
}

/// How a stored-value call starts: bypassed, served by a flight's leader,
/// or leading it with the entry read.
// Built once per call and matched at once: boxing the large variant would
// allocate on every call.
#[allow(clippy::large_enum_variant)]
enum Start<V> {
    Lead(Target, Leader, Read<V>),
    Served(V),
    RunBody,
}

/// The start both stored-value entry points share: the target, the flight
/// of its key and, for its leader, the read, reported as they happen.
async fn lead<V: DeserializeOwned>(
    call: Call,
    options: StoredOptions,
    report: &MemoizedCall,
) -> Start<V> {
    let target = match Target::new(call, options) {
        Ok(target) => target,
        Err(cache) => {
            report.finish(
                cache.map_or("none", |c| telemetry::tier(c.backend())),
                Served::Bypass,
            );
            return Start::RunBody;
        }
    };
    let store_tier = telemetry::tier(target.cache.backend());
    let leader = match wait_for_turn(FlightKey::new(target.full_key.clone()), target.codec).await {
        Turn::Lead(leader) => leader,
        // Followers share the leader's value, fresh or stale (the refresh,
        // if any, is the leader's), or its result on a miss.
        Turn::Served(value) => {
            report.joined(store_tier, Served::Hit);
            return Start::Served(value);
        }
        Turn::RunAlone => {
            report.joined(store_tier, Served::Miss);
            return Start::RunBody;
        }
    };
    let read = report.traced(target.read::<V>(true)).await;
    report.finish(store_tier, read.served());
    Start::Lead(target, leader, read)
}

/// A miss: runs `body`, shares its encoded result with the flight's
/// followers and writes it (unless the read failed).
async fn run_and_store<R, V, F>(
    target: &Target,
    mut leader: Leader,
    versions: Option<Vec<(String, u64)>>,
    body: F,
    stored: fn(&R) -> Option<&V>,
) -> R
where
    F: Future<Output = R>,
    V: Serialize,
{
    let started = Instant::now();
    let result = body.await;
    let compute = started.elapsed();
    let encoded = stored(&result)
        .and_then(|value| target.encode(value))
        .map(Arc::new);
    leader.publish(encoded.clone());
    if let (Some(bytes), Some(versions)) = (encoded, versions) {
        target.write_encoded(&bytes, compute, versions).await;
    }
    leader.finish();
    result
}

/// Runs `body` memoized with `stale` (and perhaps the other options): a
/// value past `ttl` is returned at once while one refresh per key (across
/// instances: a lease in the store) runs `body` in the background; a value
/// within `ttl` may be refreshed early (XFetch). A refresh that fails
/// (`Err`, `None`, panic, over `timeout`) leaves the old value in place,
/// and holds its lease until it lapses, so a failing upstream is retried
/// once per lease period, not once per call.
pub async fn memoize_stale<R, V, F>(
    call: Call,
    options: StoredOptions,
    body: F,
    stored: fn(&R) -> Option<&V>,
    restore: fn(V) -> R,
) -> R
where
    F: Future<Output = R> + Send + 'static,
    R: Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let report = MemoizedCall::start(call.prefix);
    let (target, leader, read) = match lead(call, options, &report).await {
        Start::Lead(target, leader, read) => (target, leader, read),
        Start::Served(value) => return restore(value),
        Start::RunBody => return report.traced(body).await,
    };
    match read.found {
        Found::Fresh {
            value,
            early,
            payload,
        } => {
            leader.finish_with_hit(&payload);
            if early {
                spawn_refresh(target, body, stored);
            }
            restore(value)
        }
        Found::Stale { value, payload } => {
            leader.finish_with_hit(&payload);
            spawn_refresh(target, body, stored);
            restore(value)
        }
        Found::Miss => {
            let miss = run_and_store(&target, leader, read.versions, body, stored);
            report.traced(miss).await
        }
    }
}

/// Refreshes the entry in a task of its own, if this instance gets the lease.
fn spawn_refresh<R, V, F>(target: Target, body: F, stored: fn(&R) -> Option<&V>)
where
    F: Future<Output = R> + Send + 'static,
    R: Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let hold = target.options.timeout.unwrap_or(DEFAULT_REFRESH_LEASE);
        let Some(lease) = target.cache.try_lease(&target.key, hold).await else {
            return;
        };
        // Read again under the lease: a refresh that finished (and gave the
        // lease back) after this call's read has written a fresh value,
        // which must not be refreshed a second time. Its tag versions are
        // the ones the new value is written with.
        let read = target.read::<V>(false).await;
        let Some(versions) = read.versions else {
            return;
        };
        if matches!(read.found, Found::Fresh { early: false, .. }) {
            target.cache.release(lease).await;
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
        match outcome.as_ref().and_then(stored) {
            Some(value) => {
                target.write(value, started.elapsed(), versions).await;
                target.cache.release(lease).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfetch_refreshes_earlier_for_slow_values_and_never_without_a_compute_time() {
        let expiry = 10_000;
        assert!(
            !refresh_early(9_000, expiry, 0, 0.001),
            "no compute time: at expiry only"
        );
        assert!(refresh_early(10_000, expiry, 0, 0.5));
        // -ln(0.5) * 2000 ms ≈ 1386 ms ahead.
        assert!(refresh_early(9_000, expiry, 2_000, 0.5));
        assert!(!refresh_early(8_000, expiry, 2_000, 0.5));
        // A small rand reaches far ahead: rare but possible.
        assert!(refresh_early(1_000, expiry, 2_000, 1e-3));
    }
}
