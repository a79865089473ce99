//! The background task of one instance: every flush interval (or at once
//! when a request waits on its allowance) it sends the pending counts to
//! Redis in [`Flush`] calls ([`flush.lua`](FLUSH_LUA)) and hands the totals
//! back to the table; it estimates Redis' clock from the same replies.
//!
//! **What a call carries.** Per count: its key, the delta (negative the
//! first time this instance sends the window's count), the key's expiry and
//! the total the instance expects (what it last read plus the delta). The
//! answer holds only the totals that differ from the expected ones, as
//! (position, total) pairs: a count left out has exactly the total
//! expected, so the table learns what it would from every total, and an
//! instance alone on its clients reads back nothing but Redis' time.
//!
//! **Lanes.** A call goes on a lane, and a lane carries one call at a time:
//! a call whose answer was lost (a timeout, a cut connection) is sent again,
//! unchanged and before anything new on its lane, until it is answered; its
//! flush id makes Redis apply it once. On a cluster the lane is the key's
//! bucket (its hash tag: one slot per call); on one server the calls are
//! chunks of at most [`MAX_ITEMS`] counts on free lanes.
//!
//! **Stopping.** The task ends when its [`Flusher`] (held by the layer) is
//! dropped, after one last flush bounded by the store timeout.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use cache_core::{AtomicOp, Cache, Entries, Script};
use cache_sync::StateFlag;
use futures_util::future::join_all;
use tokio::sync::{Notify, oneshot, watch};

use super::table::{Shard, Table};
use super::{BUCKETS, Layout};
use crate::clock::{Clock, now_micros};
use crate::quota::Quota;
use crate::telemetry;

/// The flush script.
pub(crate) const FLUSH_LUA: &str = include_str!("flush.lua");
static FLUSH: LazyLock<Script> = LazyLock::new(|| Script::new(FLUSH_LUA));

/// Counts per call at most: a call holds Redis for about a microsecond per count.
pub(crate) const MAX_ITEMS: usize = 1024;
/// Calls in flight at once on one server.
const SERVER_LANES: usize = 8;
/// How long Redis keeps a lane's marker: a call sent again later than this
/// after its lost answer could be applied twice.
const MARKER_MS: i64 = 10 * 60 * 1000;

/// What the task shares with the limiter.
pub(crate) struct Link {
    /// Wakes the task at once: a request waits on its allowance.
    pub(crate) urgent: Notify,
    /// Wakes the idle task: a client has counts to send.
    pub(crate) work: Notify,
    /// Flushes done so far (each answered or failed).
    pub(crate) done: watch::Sender<u64>,
    /// The last flush failed: Redis is not answering.
    pub(crate) failing: AtomicBool,
    /// Redis' clock minus the limiter's, µs (estimated from the replies).
    pub(crate) offset_us: AtomicI64,
    /// Script calls made, and those that failed.
    pub(crate) calls: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Link {
    pub(crate) fn new() -> Self {
        Link {
            urgent: Notify::new(),
            work: Notify::new(),
            done: watch::Sender::new(0),
            failing: AtomicBool::new(false),
            offset_us: AtomicI64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

/// Ends the task when dropped (with the layer).
pub(crate) struct Flusher {
    _stop: oneshot::Sender<()>,
}

/// Everything the task needs.
pub(crate) struct Task {
    pub(crate) cache: Cache,
    pub(crate) table: Arc<Table>,
    pub(crate) link: Arc<Link>,
    pub(crate) layout: Arc<Layout>,
    pub(crate) quotas: Vec<Quota>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    /// The clock is the windows' clock: no offset to Redis' is estimated.
    pub(crate) authoritative: bool,
    /// A Redis Cluster: one lane per bucket (one slot per call).
    pub(crate) cluster: bool,
}

/// One count sent in a call.
struct Item {
    /// The client's shard in the table: the answer is applied shard by shard.
    shard: usize,
    /// The client's hash in the table.
    hash: u64,
    client: Arc<str>,
    policy: usize,
    index: u64,
    delta: u64,
    sent_before: bool,
    /// The total the instance expects: what it last read plus `delta`.
    expected: u64,
}

/// A call: its keys and arguments, kept to be sent again unchanged. The
/// keys are written one after the other in one string (one allocation per
/// call, not per count).
struct Call {
    keys: String,
    /// Where each key ends in `keys`.
    ends: Vec<usize>,
    args: Vec<i64>,
    items: Vec<Item>,
}

impl Call {
    /// The keys, as the script gets them.
    fn keys(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let key = self.keys.get(start..end).unwrap_or_default();
                start = end;
                key
            })
            .collect()
    }
}

/// The best estimate of Redis' clock so far: the offset measured over the
/// shortest round trip, replaced by a later one as short or when it is old.
struct Estimate {
    round_trip: u64,
    at: u64,
}

impl Task {
    /// Starts the task on the current tokio runtime; `None` outside one.
    pub(crate) fn spawn(self) -> Option<Flusher> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (stop, stopped) = oneshot::channel();
        runtime.spawn(self.run(stopped));
        Some(Flusher { _stop: stop })
    }

    async fn run(self, mut stopped: oneshot::Receiver<()>) {
        let lanes = if self.cluster { BUCKETS } else { SERVER_LANES };
        let mut lanes: Vec<Option<Call>> = (0..lanes).map(|_| None).collect();
        let id = self.layout.instance;
        let mut next_flush = 0u64;
        let mut estimate: Option<Estimate> = None;
        let failed = StateFlag::new();
        loop {
            let mut urgent = false;
            // Idle: nothing to send and nothing to send again.
            if lanes.iter().all(Option::is_none) {
                self.table.idle.store(true, Ordering::SeqCst);
                if !self.table.has_dirty() {
                    tokio::select! {
                        _ = self.link.work.notified() => {}
                        _ = self.link.urgent.notified() => urgent = true,
                        _ = &mut stopped => return,
                    }
                }
                self.table.idle.store(false, Ordering::SeqCst);
            }
            // Gather what the interval brings, unless a request waits.
            let stop = !urgent
                && tokio::select! {
                    _ = tokio::time::sleep(self.interval) => false,
                    _ = self.link.urgent.notified() => false,
                    _ = &mut stopped => true,
                };
            self.flush(&mut lanes, id, &mut next_flush, &mut estimate, &failed)
                .await;
            if stop {
                return;
            }
        }
    }

    /// Sends again the calls whose answers were lost, then the pending
    /// counts on the free lanes; applies the answers.
    async fn flush(
        &self,
        lanes: &mut [Option<Call>],
        id: u64,
        next_flush: &mut u64,
        estimate: &mut Option<Estimate>,
        failed: &StateFlag,
    ) {
        let cluster = self.cluster;
        let busy: Vec<bool> = lanes.iter().map(Option::is_some).collect();
        let mut fresh: Vec<Vec<Item>> = (0..lanes.len()).map(|_| Vec::new()).collect();
        let room = std::cell::Cell::new(busy.iter().filter(|b| !**b).count() * MAX_ITEMS);
        self.table.drain(
            |client| {
                if cluster {
                    !busy[self.layout.bucket(client)]
                } else {
                    room.get() > 0
                }
            },
            |count| {
                room.set(room.get().saturating_sub(1));
                let lane = if cluster {
                    self.layout.bucket(count.client)
                } else {
                    // The first free lane with room (one was free: `room`).
                    (0..busy.len())
                        .find(|&lane| !busy[lane] && fresh[lane].len() < MAX_ITEMS)
                        .or_else(|| (0..busy.len()).find(|&lane| !busy[lane]))
                        .unwrap_or(0)
                };
                fresh[lane].push(Item {
                    shard: count.shard,
                    hash: count.hash,
                    client: count.client.clone(),
                    policy: count.policy,
                    index: count.index,
                    delta: count.delta,
                    sent_before: count.sent_before,
                    expected: count.seen.saturating_add(count.delta),
                });
            },
        );
        for (lane, items) in fresh.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            *next_flush += 1;
            let flush_id = i64::try_from(*next_flush).unwrap_or(i64::MAX);
            let mut keys = self.layout.marker(lane, id);
            keys.reserve(items.len() * (keys.len() + 24));
            let mut ends = Vec::with_capacity(items.len() + 1);
            ends.push(keys.len());
            let mut args = Vec::with_capacity(2 + 3 * items.len());
            args.extend([flush_id, MARKER_MS]);
            for item in &items {
                let quota = &self.quotas[item.policy];
                self.layout
                    .write_count_key(&mut keys, &item.client, item.policy, item.index);
                ends.push(keys.len());
                let delta = i64::try_from(item.delta).unwrap_or(i64::MAX);
                args.extend([
                    if item.sent_before { delta } else { -delta },
                    i64::try_from(super::expiry_ms(quota, item.index)).unwrap_or(i64::MAX),
                    i64::try_from(item.expected).unwrap_or(i64::MAX),
                ]);
            }
            lanes[lane] = Some(Call {
                keys,
                ends,
                args,
                items,
            });
        }
        let calls = lanes
            .iter()
            .enumerate()
            .filter_map(|(lane, call)| Some((lane, call.as_ref()?)))
            .map(|(lane, call)| async move {
                let keys = call.keys();
                let started = now_micros(self.clock.as_ref());
                let store_call = telemetry::StoreCall::start();
                let reply = self
                    .cache
                    .run_atomic(&Flush, &keys, &call.args, self.timeout)
                    .await;
                let reply = store_call.finish(reply);
                let ended = now_micros(self.clock.as_ref());
                (lane, reply, started, ended)
            });
        let replies = join_all(calls).await;
        let mut all_ok = true;
        let mut error = None;
        for (lane, reply, started, ended) in replies {
            self.link.calls.fetch_add(1, Ordering::Relaxed);
            let Some(call) = lanes[lane].take() else {
                continue;
            };
            match reply {
                Ok(reply) if well_formed(&reply, call.items.len()) => {
                    self.apply(&call, Some(&reply[2..]));
                    self.note_clock(&reply[..2], started, ended, estimate);
                }
                Ok(reply) => {
                    // Not this script's answer: nothing can be read from it,
                    // and sending it again would be answered the same way.
                    all_ok = false;
                    self.link.errors.fetch_add(1, Ordering::Relaxed);
                    error = Some(format!(
                        "the flush's answer is malformed: {} numbers for {} counts",
                        reply.len(),
                        call.items.len()
                    ));
                    self.apply(&call, None);
                }
                Err(err) => {
                    all_ok = false;
                    self.link.errors.fetch_add(1, Ordering::Relaxed);
                    error = Some(err.to_string());
                    lanes[lane] = Some(call);
                }
            }
        }
        self.link.failing.store(!all_ok, Ordering::SeqCst);
        match error {
            Some(error) => {
                if failed.raise() {
                    tracing::warn!(
                        prefix = %self.layout.prefix,
                        error,
                        "shared rate limiting: Redis unavailable, answering from this instance's counts"
                    );
                }
            }
            None => {
                if failed.lower() {
                    tracing::info!(
                        prefix = %self.layout.prefix,
                        "shared rate limiting: Redis available again, counts sent"
                    );
                }
            }
        }
        self.link.done.send_modify(|done| *done += 1);
    }

    /// Hands Redis' totals back to the table: the `differing` (position,
    /// total) pairs of the answer, the expected total for every other count
    /// (no answer: only takes the counts out of flight). The items come
    /// shard by shard (as drained): each shard is locked once.
    fn apply(&self, call: &Call, differing: Option<&[i64]>) {
        let mut pairs = differing.unwrap_or_default().chunks_exact(2).peekable();
        let mut locked: Option<(usize, MutexGuard<'_, Shard>)> = None;
        for (i, item) in call.items.iter().enumerate() {
            // Positions come in order, from 1 (checked by `well_formed`).
            let total = match pairs.peek() {
                Some(&&[position, total]) if usize::try_from(position) == Ok(i + 1) => {
                    pairs.next();
                    u64::try_from(total).unwrap_or(0)
                }
                _ if differing.is_some() => item.expected,
                _ => 0,
            };
            if locked
                .as_ref()
                .is_none_or(|(index, _)| *index != item.shard)
            {
                // One shard lock held at a time.
                drop(locked.take());
                locked = Some((item.shard, self.table.shard_at(item.shard)));
            }
            let Some((_, shard)) = locked.as_mut() else {
                continue;
            };
            self.table.acknowledge(
                shard,
                (item.hash, &item.client),
                item.policy,
                item.index,
                item.delta,
                total,
            );
        }
    }

    /// Redis' clock from a reply's `TIME`, sent between `started` and
    /// `ended` (µs of the limiter's clock): the windows follow it.
    fn note_clock(&self, time: &[i64], started: u64, ended: u64, estimate: &mut Option<Estimate>) {
        if self.authoritative {
            return;
        }
        let (Ok(seconds), Ok(micros)) = (u64::try_from(time[0]), u64::try_from(time[1])) else {
            return;
        };
        let redis = seconds.saturating_mul(1_000_000).saturating_add(micros);
        let round_trip = ended.saturating_sub(started);
        let midpoint = started + round_trip / 2;
        let offset = i64::try_from(i128::from(redis) - i128::from(midpoint)).unwrap_or(0);
        // An estimate is off by at most half its round trip: keep the
        // shortest, unless it is more than 10 s old (clocks drift).
        let better = match estimate {
            None => true,
            Some(kept) => round_trip <= kept.round_trip || ended > kept.at + 10_000_000,
        };
        if better {
            *estimate = Some(Estimate {
                round_trip,
                at: ended,
            });
            self.link.offset_us.store(offset, Ordering::Relaxed);
        }
    }
}

/// Whether `reply` is a flush's answer to a call of `items` counts: the
/// time, then (position, total) pairs, positions rising within `1..=items`.
fn well_formed(reply: &[i64], items: usize) -> bool {
    let Some(pairs) = reply.get(2..) else {
        return false;
    };
    if pairs.len() % 2 != 0 {
        return false;
    }
    let mut last = 0;
    pairs.chunks_exact(2).all(|pair| {
        let rising = pair[0] > last && usize::try_from(pair[0]).is_ok_and(|p| p <= items);
        last = pair[0];
        rising
    })
}

/// The flush as an atomic operation: [`flush.lua`](FLUSH_LUA) on Redis; in
/// memory its twin, the same step on the store's entries (kept for the
/// seam's sake: on the in-memory store the shared mode never flushes).
pub(crate) struct Flush;

impl AtomicOp for Flush {
    fn script(&self) -> &Script {
        &FLUSH
    }

    fn twin(
        &self,
        entries: &mut Entries<'_>,
        keys: &[&str],
        args: &[i64],
    ) -> cache_core::Result<Vec<i64>> {
        let (Some((&marker, counts)), [flush_id, marker_ms, per_count @ ..]) =
            (keys.split_first(), args)
        else {
            return Err(malformed("a marker, a flush id and its lifetime"));
        };
        if per_count.len() != 3 * counts.len() {
            return Err(malformed("three arguments per count"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        let mut out = vec![
            i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            i64::from(now.subsec_micros()),
        ];
        let id = flush_id.to_string();
        let replay = entries.get(marker) == Some(id.as_bytes());
        let integer = |value: &[u8]| std::str::from_utf8(value).ok()?.parse::<i64>().ok();
        for (position, (&key, count)) in counts.iter().zip(per_count.chunks_exact(3)).enumerate() {
            let (delta, expiry_ms, expected) = (count[0].saturating_abs(), count[1], count[2]);
            let first = count[0] < 0;
            let until_expiry = u64::try_from(expiry_ms.saturating_sub(now_ms))
                .ok()
                .filter(|&ms| ms > 0)
                .map(std::time::Duration::from_millis);
            let total = if replay {
                entries.get(key).and_then(integer).unwrap_or(0)
            } else {
                // INCRBY: a missing key counts from 0; anything that is not
                // a count of this mode is replaced (as the script does).
                let counted = match entries.get(key) {
                    None => Some(delta),
                    Some(value) => integer(value).and_then(|current| current.checked_add(delta)),
                };
                // Its expiry is kept, unless the key is new, the instance
                // sends the window for the first time, or it is replaced.
                let (total, kept) = match counted {
                    Some(total) if total >= delta => (total, total != delta && !first),
                    _ => (delta, false),
                };
                match (kept, until_expiry) {
                    (true, _) => {
                        let left = entries.ttl(key);
                        entries.set(key, total.to_string().as_bytes(), left);
                    }
                    (false, Some(left)) => {
                        entries.set(key, total.to_string().as_bytes(), Some(left))
                    }
                    // An expiry already past (PXAT, PEXPIREAT): the key is gone.
                    (false, None) => {
                        entries.delete(key);
                    }
                }
                total
            };
            if total != expected {
                out.extend([i64::try_from(position + 1).unwrap_or(i64::MAX), total]);
            }
        }
        let lifetime = u64::try_from(*marker_ms).unwrap_or(0).max(1);
        entries.set(
            marker,
            id.as_bytes(),
            Some(std::time::Duration::from_millis(lifetime)),
        );
        Ok(out)
    }
}

fn malformed(reason: &str) -> cache_core::Error {
    cache_core::Error::InvalidArgument {
        argument: "flush",
        reason: reason.into(),
    }
}
