//! Shared counting at in-process cost (opt-in,
//! [`RateLimitLayerBuilder::shared_counting`](crate::RateLimitLayerBuilder::shared_counting)):
//! each instance answers every request from its own counts, and exchanges
//! counts with Redis in the background, as Limitador's cached Redis
//! storage, Gubernator's `GLOBAL` behaviour and Cloudflare's counters do.
//!
//! **How.** An instance holds, per client and policy, the count of the
//! current window and of the one before: what Redis last said every
//! instance counted (`seen`), plus what it admitted itself since. A request
//! is decided on that sum with the same arithmetic as everywhere
//! ([`window`](crate::window)), under a lock of this process, without a
//! Redis call. Every [flush interval](SharedCounting::flush_interval) the
//! instance's background task sends what it admitted since its last flush
//! in one script call (`INCRBY` per count, one call per Redis server, or per
//! bucket on a cluster) and reads back the totals, which include every
//! other instance's flushed counts (only those that differ from the total
//! the instance expects, its last read plus its delta: a total left out is
//! the expected one, so the table learns the same as from every total); a
//! rejected request never leaves the process, and clients over their limit
//! are answered by the deny cache.
//!
//! **The bound.** Between two of its flushes, an instance admits at most
//! its *allowance* of one client under one policy:
//! `a = max(1, ⌊share × limit⌋)` ([`local_share`](SharedCounting::local_share),
//! default 5 %), or one request costing more than that. A request past it
//! waits for a flush (sent at once; bounded by the store timeout). With `N`
//! instances, a client's count in one window then stays within
//!
//! ```text
//! limit + (N − 1) × a
//! ```
//!
//! whatever the rate, the flush interval or the network: the instance
//! whose last admission came last checked it against a total that held
//! everything but the other instances' unflushed counts, at most `a` each.
//! (For the sliding window the same holds for its weighted estimate.) The
//! flush's answer leaving out the totals equal to the expected ones does
//! not weaken this: a count left out had exactly the total the instance
//! expected, which it takes as Redis' answer, so every total the instance
//! holds is one Redis returned, as before; only a well-formed answer
//! (positions rising within the call) is read, any other takes the counts
//! out of flight without raising a total. It
//! never rejects a request the limit would admit: totals only grow, so a
//! count that says "over" is right. Instances are every process that
//! counted in the window: one killed loses its unflushed counts (at most
//! `a` per client, admitted but never sent), within the bound; one started
//! in its place is one more instance.
//!
//! **Windows** are aligned to Redis' clock: window `k` of a policy covers
//! `[k × window, (k + 1) × window)` ms since the epoch, every instance
//! reading Redis' time through an offset measured on each flush (the
//! offset of the shortest round trip: off by at most half of it). The fixed
//! window is therefore aligned too, not started by a client's first request
//! (the exact mode's). The sliding window is the same counter as the exact
//! mode's. GCRA is not offered: its state is one timestamp advanced by
//! each request from the later of itself and "now", which does not add up
//! across instances as counts do ([`ConfigError::SharedAlgorithm`](crate::ConfigError::SharedAlgorithm)).
//!
//! **Redis down.** Each instance goes on deciding from what it knows: its
//! own counts and the last totals. A request over the allowance cannot be
//! known: the [fail mode](crate::FailMode) decides (open: let through and
//! counted, sent once Redis answers; closed: 503). So while Redis is down a
//! client gets at most the limit per instance with the default fail mode,
//! and at most `a` more per instance with `FailMode::Closed`. A flush whose
//! answer was lost is sent again unchanged, and its id makes Redis apply it
//! once; when Redis is back the instance sends what it counted meanwhile
//! and reads the totals again.
//!
//! **Keys.** `{prefix}:{s<b>}:{client}:{k}` (several policies:
//! `{prefix}:{s<b>}:{client}:{policy}:{k}`), a bare count expiring when its
//! window stops counting (a second later, for clocks that disagree), where
//! `k` is the window number and `b` the client key's FNV-1a (32-bit) modulo
//! 16: the hash tag that puts a cluster's flush in 16 slots. Beside them,
//! `{prefix}:{s<lane>}:flush:<instance>` holds each instance's last applied
//! flush id for 10 minutes.
//!
//! **Bounded.** An instance holds at most 100 000 clients (settled ones are
//! dropped first); the task sends at most 1 024 counts per call and stops
//! when the layer is dropped, after one last flush.
//!
//! **Redis only.** On the in-memory store the counts are in the process
//! already, exact at in-process cost: a layer with shared counting there
//! counts as one without it does (the limiter never builds this mode).

pub(crate) mod flush;
pub(crate) mod table;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::clock::{Clock, now_micros};
use crate::error::ConfigError;
use crate::quota::{Algorithm, Quota};
use crate::window::Outcome;

use self::flush::{Flusher, Link, Task};
use self::table::{Checked, Table};

/// Clients one instance holds at most.
pub(crate) const MAX_CLIENTS: usize = 100_000;
/// Hash tags of the keys (`{s0}` to `{s15}`): a cluster's flush is one call per bucket.
pub(crate) const BUCKETS: usize = 16;
/// Keys outlive their window's use by this much: instances whose clocks
/// (offsets) disagree by less still find them.
const GRACE_MS: u64 = 1000;

/// The opt-in counting mode of a layer on Redis: each instance answers
/// from its own counts and exchanges them with Redis in the background
/// (see [`RateLimitLayerBuilder::shared_counting`](crate::RateLimitLayerBuilder::shared_counting)
/// for when to choose it).
///
/// With `N` instances, a client's count in one window stays within
/// `limit + (N − 1) × max(1, ⌊share × limit⌋)`
/// ([`over_admission_bound`](Self::over_admission_bound)), and no request
/// the limit admits is rejected.
///
/// ```
/// use std::time::Duration;
/// use rate_limit::SharedCounting;
///
/// let shared = SharedCounting::new()
///     .flush_interval(Duration::from_millis(10))
///     .local_share(0.02); // an instance admits at most 2 % of a limit between flushes
/// assert_eq!(shared.allowance(1000), 20);
/// // Four instances: at most 60 over a limit of 1 000 in any window.
/// assert_eq!(shared.over_admission_bound(4, 1000), 1060);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedCounting {
    flush_interval: Duration,
    local_share: f64,
}

impl Default for SharedCounting {
    fn default() -> Self {
        SharedCounting::new()
    }
}

impl SharedCounting {
    /// The default flush interval: 10 ms.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
    /// The default local share: 5 % of a limit.
    pub const DEFAULT_LOCAL_SHARE: f64 = 0.05;
    /// The longest flush interval.
    pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

    /// Flushes every 10 ms, an allowance of 5 % of each limit.
    pub const fn new() -> Self {
        SharedCounting {
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
            local_share: Self::DEFAULT_LOCAL_SHARE,
        }
    }

    /// How often an instance sends what it admitted and reads the totals
    /// back (1 ms to [`MAX_FLUSH_INTERVAL`](Self::MAX_FLUSH_INTERVAL)):
    /// shorter is fresher counts (an instance learns sooner that a client
    /// is over its limit elsewhere) for more Redis calls. The bound does
    /// not depend on it.
    pub const fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// The share of a policy's limit one instance may admit of one client
    /// between two flushes (above 0, at most 1): the bound's `share`.
    /// Smaller is a tighter bound for more waits on a flush (a client
    /// sending more than `share × limit` to one instance within one round
    /// trip to Redis).
    pub const fn local_share(mut self, share: f64) -> Self {
        self.local_share = share;
        self
    }

    /// The flush interval set.
    pub const fn interval(&self) -> Duration {
        self.flush_interval
    }

    /// The local share set.
    pub const fn share(&self) -> f64 {
        self.local_share
    }

    /// The most one instance admits of one client under a policy of
    /// `limit` between two flushes: `max(1, ⌊share × limit⌋)` (a single
    /// request costing more passes alone).
    pub fn allowance(&self, limit: u64) -> u64 {
        // Limits are at most 2^52: exact in a double.
        ((limit as f64 * self.local_share).floor() as u64).max(1)
    }

    /// The most a client can be admitted in one window of a policy of
    /// `limit` by `instances` instances while they reach Redis:
    /// `limit + (instances − 1) × allowance(limit)`.
    pub fn over_admission_bound(&self, instances: u64, limit: u64) -> u64 {
        limit.saturating_add(
            instances
                .saturating_sub(1)
                .saturating_mul(self.allowance(limit)),
        )
    }

    /// Checks the settings and that every quota is one the mode holds.
    pub(crate) fn validate(&self, quotas: &[Quota]) -> Result<(), ConfigError> {
        if self.flush_interval < Duration::from_millis(1)
            || self.flush_interval > Self::MAX_FLUSH_INTERVAL
        {
            return Err(ConfigError::FlushInterval(self.flush_interval));
        }
        if !(self.local_share > 0.0 && self.local_share <= 1.0) {
            return Err(ConfigError::LocalShare);
        }
        if quotas.iter().any(Quota::is_concurrent) {
            return Err(ConfigError::SharedConcurrency);
        }
        match quotas.iter().find(|q| q.enforced_by() == Algorithm::Gcra) {
            Some(quota) => Err(ConfigError::SharedAlgorithm(quota.enforced_by())),
            None => Ok(()),
        }
    }
}

/// The key names of one layer's counts on Redis.
pub(crate) struct Layout {
    /// The layer's prefix (the handle adds its namespace).
    pub(crate) prefix: String,
    /// This instance, in its markers.
    pub(crate) instance: u64,
    /// The policies' names, when there are several (they go in the keys).
    names: Option<Vec<String>>,
}

impl Layout {
    /// The bucket of `client`: FNV-1a (32-bit) of its key, modulo [`BUCKETS`].
    pub(crate) fn bucket(&self, client: &str) -> usize {
        bucket(client)
    }

    /// The key of `client`'s count under `policy` in window `index`.
    #[cfg(test)]
    pub(crate) fn count_key(&self, client: &str, policy: usize, index: u64) -> String {
        let mut key = String::new();
        self.write_count_key(&mut key, client, policy, index);
        key
    }

    /// Writes the key of `client`'s count under `policy` in window `index`
    /// at the end of `key` (a flush writes its keys into one string).
    pub(crate) fn write_count_key(
        &self,
        key: &mut String,
        client: &str,
        policy: usize,
        index: u64,
    ) {
        let mut digits = itoa::Buffer::new();
        key.push_str(&self.prefix);
        key.push_str(":{s");
        key.push_str(digits.format(bucket(client)));
        key.push_str("}:");
        key.push_str(client);
        if let Some(name) = self.names.as_ref().and_then(|names| names.get(policy)) {
            key.push(':');
            key.push_str(name);
        }
        key.push(':');
        key.push_str(digits.format(index));
    }

    /// The key of this instance's marker on `lane` (one slot with the
    /// lane's counts on a cluster).
    pub(crate) fn marker(&self, lane: usize, instance: u64) -> String {
        format!("{}:{{s{lane}}}:flush:{instance:016x}", self.prefix)
    }
}

/// FNV-1a (32-bit) of `client`, modulo [`BUCKETS`]: the same in every
/// instance and language.
pub(crate) fn bucket(client: &str) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in client.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as usize % BUCKETS
}

/// When the count of window `index` stops counting (ms since the epoch,
/// with [`GRACE_MS`]): its end, or for the sliding window the next one's.
pub(crate) fn expiry_ms(quota: &Quota, index: u64) -> u64 {
    let windows = match quota.enforced_by() {
        Algorithm::SlidingWindow => 2,
        _ => 1,
    };
    index
        .saturating_add(windows)
        .saturating_mul(quota.window_ms())
        .saturating_add(GRACE_MS)
}

/// For tests: one flush call with `keys` and `args` as the flusher sends
/// them ([`flush.lua`](flush::FLUSH_LUA) on Redis, its twin on the
/// in-memory store): what the twin-and-script agreement test runs. Not a
/// stable API.
#[doc(hidden)]
pub async fn flush_raw(
    cache: &cache_core::Cache,
    keys: &[&str],
    args: &[i64],
) -> cache_core::Result<Vec<i64>> {
    cache
        .run_atomic(&flush::Flush, keys, args, Duration::from_secs(5))
        .await
}

/// A request's answer in the shared mode.
pub(crate) enum Answer {
    /// Decided on the instance's counts, at `now_us` of the windows' clock.
    Decided { outcome: Outcome, now_us: u64 },
    /// Past the allowance while Redis does not answer: what cannot be
    /// known (counted locally if the fail mode lets it through).
    Unknown,
}

/// The shared mode of one layer on Redis: its counts, and the task that
/// exchanges them.
pub(crate) struct SharedLimits {
    table: Arc<Table>,
    /// The task's link, the allowance per policy, and the task itself until
    /// it is started (on the first request, inside the runtime).
    remote: Remote,
    clock: Arc<dyn Clock>,
    /// The clock is the windows' clock (a test's): no offset to Redis'.
    authoritative: bool,
}

struct Remote {
    link: Arc<Link>,
    allowance: Vec<u64>,
    task: Mutex<Option<Task>>,
    flusher: OnceLock<Option<Flusher>>,
    fail_open: bool,
    store_timeout: Duration,
}

/// What [`SharedLimits::on_redis`] needs.
pub(crate) struct RedisSide {
    pub(crate) cache: cache_core::Cache,
    pub(crate) prefix: String,
    pub(crate) fail_open: bool,
    pub(crate) store_timeout: Duration,
}

impl SharedLimits {
    /// This instance's own table and task.
    pub(crate) fn on_redis(
        settings: SharedCounting,
        side: RedisSide,
        quotas: &[Quota],
        names: &[String],
        clock: Arc<dyn Clock>,
    ) -> Self {
        let authoritative = clock.is_authoritative();
        let table = Arc::new(Table::new(MAX_CLIENTS));
        let link = Arc::new(Link::new());
        let layout = Layout {
            prefix: side.prefix,
            instance: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                std::time::SystemTime::now(),
            ),
            names: (names.len() > 1).then(|| names.to_vec()),
        };
        let cluster = side.cache.reach() == cache_core::Reach::Cluster;
        let task = Task {
            cache: side.cache,
            table: table.clone(),
            link: link.clone(),
            layout: Arc::new(layout),
            quotas: quotas.to_vec(),
            interval: settings.flush_interval,
            timeout: side.store_timeout,
            clock: clock.clone(),
            authoritative,
            cluster,
        };
        SharedLimits {
            table,
            remote: Remote {
                link,
                allowance: quotas
                    .iter()
                    .map(|q| settings.allowance(q.limit()))
                    .collect(),
                task: Mutex::new(Some(task)),
                flusher: OnceLock::new(),
                fail_open: side.fail_open,
                store_timeout: side.store_timeout,
            },
            clock,
            authoritative,
        }
    }

    /// "Now" on the windows' clock, µs: the limiter's clock moved by the
    /// measured offset to Redis' (none for an authoritative clock).
    fn now_us(&self) -> u64 {
        let local = now_micros(self.clock.as_ref());
        if self.authoritative {
            return local;
        }
        local.saturating_add_signed(self.remote.link.offset_us.load(Ordering::Relaxed))
    }

    /// Decides a request of `client` costing `cost`.
    pub(crate) async fn check(&self, client: &str, quotas: &[Quota], cost: u64) -> Answer {
        let remote = &self.remote;
        remote.start();
        let deadline = tokio::time::Instant::now() + remote.store_timeout;
        loop {
            let now_us = self.now_us();
            let (checked, dirty) =
                self.table
                    .check(client, quotas, &remote.allowance, now_us, cost);
            if dirty {
                self.wake(remote);
            }
            if let Checked::Decided(outcome) = checked {
                return Answer::Decided { outcome, now_us };
            }
            // Past the allowance: a flush first, unless Redis is not answering.
            if remote.link.failing.load(Ordering::SeqCst) || tokio::time::Instant::now() >= deadline
            {
                if remote.fail_open && self.table.force(client, quotas, now_us, cost) {
                    self.wake(remote);
                }
                return Answer::Unknown;
            }
            let mut done = remote.link.done.subscribe();
            remote.link.urgent.notify_one();
            let _ = tokio::time::timeout_at(deadline, done.changed()).await;
        }
    }

    /// Wakes the task if it waits for work.
    fn wake(&self, remote: &Remote) {
        if self.table.idle.load(Ordering::SeqCst) && self.table.idle.swap(false, Ordering::SeqCst) {
            remote.link.work.notify_one();
        }
    }

    /// (flush calls, failed flush calls): what the layer's stats add.
    pub(crate) fn calls(&self) -> (u64, u64) {
        let link = &self.remote.link;
        (
            link.calls.load(Ordering::Relaxed),
            link.errors.load(Ordering::Relaxed),
        )
    }

    /// Clients held.
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.table.len()
    }
}

impl Remote {
    /// Starts the task, once, on the runtime of the first request.
    fn start(&self) {
        self.flusher.get_or_init(|| {
            let task = cache_sync::lock(&self.task).take()?;
            let flusher = task.spawn();
            if flusher.is_none() {
                tracing::error!(
                    "shared rate limiting needs a tokio runtime: counts are not sent to Redis"
                );
            }
            flusher
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    /// A layer's shared mode on a Redis that is down (nothing listens on
    /// port 1): every flush fails at once.
    async fn on_a_redis_that_is_down(limit: u64, fail_open: bool) -> (SharedLimits, [Quota; 1]) {
        let down = cache_core::Cache::builder()
            .redis_url("redis://127.0.0.1:1")
            .unwrap()
            .timeout(Duration::from_millis(200))
            .build()
            .await
            .unwrap();
        let quotas = [Quota::new(limit, Duration::from_secs(3600))];
        let shared = SharedLimits::on_redis(
            SharedCounting::new().flush_interval(Duration::from_millis(1)),
            RedisSide {
                cache: down,
                prefix: "test".into(),
                fail_open,
                store_timeout: Duration::from_millis(200),
            },
            &quotas,
            &["test".into()],
            Arc::new(SystemClock),
        );
        (shared, quotas)
    }

    /// Waits (at most 10 s) until `ready`.
    async fn until(what: &str, ready: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn allowed(answer: &Answer) -> bool {
        matches!(answer, Answer::Decided { outcome, .. } if outcome.decision.allowed)
    }

    #[tokio::test]
    async fn the_task_stops_and_frees_the_counts_when_the_layer_is_dropped() {
        let (shared, quotas) = on_a_redis_that_is_down(100, true).await;
        assert!(allowed(&shared.check("ip:1", &quotas, 1).await));
        assert_eq!(shared.clients(), 1);
        let table = Arc::downgrade(&shared.table);
        let link = shared.remote.link.clone();
        until("the task flushes", || {
            link.calls.load(Ordering::Relaxed) > 0
        })
        .await;
        drop(shared);
        until("the task ends", || table.upgrade().is_none()).await;
    }

    #[tokio::test]
    async fn with_redis_down_past_the_allowance_the_fail_mode_decides() {
        for fail_open in [true, false] {
            let (shared, quotas) = on_a_redis_that_is_down(100, fail_open).await;
            // The allowance of 5 is answered locally...
            for _ in 0..5 {
                assert!(allowed(&shared.check("ip:1", &quotas, 1).await));
            }
            // ...the sixth cannot be known.
            assert!(matches!(
                shared.check("ip:1", &quotas, 1).await,
                Answer::Unknown
            ));
            // Let through and counted (sent when Redis is back), or not.
            let hash = shared.table.hash("ip:1");
            let pending = shared
                .table
                .shard("ip:1")
                .get_mut(hash, "ip:1")
                .map(|entry| entry.tallies[0].current.unflushed());
            assert_eq!(pending, Some(if fail_open { 6 } else { 5 }));
        }
    }

    #[test]
    fn the_bucket_is_fnv_1a_modulo_16() {
        // FNV-1a 32 of "" is 0x811c9dc5, of "a" 0xe40c292c.
        assert_eq!(bucket(""), 0x811c_9dc5 % 16);
        assert_eq!(bucket("a"), 0xe40c_292c % 16);
    }

    #[test]
    fn keys_name_the_bucket_the_client_and_the_window() {
        let layout = Layout {
            prefix: "rate".into(),
            instance: 7,
            names: None,
        };
        let b = bucket("ip:1.2.3.4");
        assert_eq!(
            layout.count_key("ip:1.2.3.4", 0, 29_000_000),
            format!("rate:{{s{b}}}:ip:1.2.3.4:29000000")
        );
        assert_eq!(layout.marker(3, 7), "rate:{s3}:flush:0000000000000007");
        let several = Layout {
            names: Some(vec!["burst".into(), "hourly".into()]),
            ..layout
        };
        assert_eq!(
            several.count_key("ip:1.2.3.4", 1, 5),
            format!("rate:{{s{b}}}:ip:1.2.3.4:hourly:5")
        );
    }

    #[test]
    fn the_bound_is_the_allowance_of_every_other_instance() {
        let shared = SharedCounting::new();
        assert_eq!(shared.allowance(100), 5);
        assert_eq!(shared.allowance(10), 1, "at least one");
        assert_eq!(shared.over_admission_bound(4, 100), 115);
        assert_eq!(
            shared.over_admission_bound(1, 100),
            100,
            "one instance: exact"
        );
    }

    #[test]
    fn settings_out_of_range_and_gcra_are_refused() {
        let fixed = [Quota::per_second(10)];
        assert_eq!(SharedCounting::new().validate(&fixed), Ok(()));
        assert_eq!(
            SharedCounting::new().local_share(0.0).validate(&fixed),
            Err(ConfigError::LocalShare)
        );
        assert_eq!(
            SharedCounting::new().local_share(f64::NAN).validate(&fixed),
            Err(ConfigError::LocalShare)
        );
        assert_eq!(
            SharedCounting::new()
                .flush_interval(Duration::ZERO)
                .validate(&fixed),
            Err(ConfigError::FlushInterval(Duration::ZERO))
        );
        let gcra = [Quota::per_second(10).algorithm(Algorithm::Gcra)];
        assert_eq!(
            SharedCounting::new().validate(&gcra),
            Err(ConfigError::SharedAlgorithm(Algorithm::Gcra))
        );
    }
}
