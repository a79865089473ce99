//! A coherence checker for the local tier and the stored values: instance B
//! writes a new version of a hot key every 2 ms (a price feed), readers on
//! instance A (with a local tier) read it as a request handler would (the
//! local tier, else Redis, else the source of truth when the cache fails),
//! and every read is checked: a read is **stale** when it returns a version
//! older than one Redis acknowledged to B more than [`BOUND`] before the
//! read began (docs/local-tier.md's bound on the invalidation delay).
//!
//! [`Run`] drives it while a schedule of faults is played (see the
//! `local_tier_coherence` test and `benches/src/bin/local-tier-faults.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::Cache;

use crate::stalls::Stalls;

/// A read older than a version acknowledged this long before it is stale.
pub const BOUND: Duration = Duration::from_millis(100);
/// How often B writes a version.
pub const WRITE_EVERY: Duration = Duration::from_millis(2);

/// What the writer and the readers share.
#[derive(Debug, Default)]
pub struct Shared {
    /// The source of truth: the newest version written.
    source: AtomicU64,
    /// Versions Redis acknowledged to B, with when, in order.
    acknowledged: Mutex<Vec<(u64, Instant)>>,
    stop: AtomicBool,
    reads: AtomicU64,
    from_source: AtomicU64,
    stale: AtomicU64,
    /// The stale reads: (when the read began, version read, newest version
    /// acknowledged more than the bound before, how old the read was).
    stale_reads: Mutex<Vec<StaleRead>>,
}

/// When the read began, the version read, the newest version acknowledged
/// more than the bound before, how old the read was.
type StaleRead = (Instant, u64, u64, Duration);

impl Shared {
    /// The newest version acknowledged before `instant`, if any.
    fn acknowledged_before(&self, instant: Instant) -> Option<u64> {
        let acknowledged = self.acknowledged.lock().expect("not poisoned");
        let index = acknowledged.partition_point(|(_, at)| *at < instant);
        index.checked_sub(1).map(|i| acknowledged[i].0)
    }

    /// How long before `read_at` the version after `version` was acknowledged.
    fn lag_of(&self, version: u64, read_at: Instant) -> Duration {
        let acknowledged = self.acknowledged.lock().expect("not poisoned");
        acknowledged
            .iter()
            .find(|(v, _)| *v > version)
            .map_or(Duration::ZERO, |(_, at)| {
                read_at.saturating_duration_since(*at)
            })
    }
}

/// The checker running: a writer on B and `readers` tasks on A.
#[derive(Debug)]
pub struct Run {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    stalls: Arc<Stalls>,
}

/// What a run found.
#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    /// Reads made.
    pub reads: u64,
    /// Reads served by the source of truth (a miss or a failing cache).
    pub from_source: u64,
    /// Versions Redis acknowledged to B.
    pub acknowledged: usize,
    /// Stale reads: older than the bound even once the time the test's
    /// runtime itself was stalled ([`Stalls`]) is taken out of their lag.
    pub stale: u64,
    /// Reads older than the bound only by the runtime's stalls (a loaded
    /// machine delays the invalidation's handling as much as any timer).
    pub stalled: u64,
    /// The oldest of them: how long before the read the newer version was acknowledged.
    pub worst_lag: Duration,
    /// The first few stale reads: (seconds into the run, version read, version it should have been at least).
    pub examples: Vec<(f64, u64, u64)>,
}

impl Run {
    /// Starts B's writer and A's readers on `key`.
    pub fn start(a: &Cache, b: &Cache, key: &str, readers: usize) -> Run {
        let shared = Arc::new(Shared::default());
        let mut tasks = vec![tokio::spawn(writer(
            b.clone(),
            key.to_string(),
            shared.clone(),
        ))];
        for _ in 0..readers {
            tasks.push(tokio::spawn(reader(
                a.clone(),
                key.to_string(),
                shared.clone(),
            )));
        }
        Run {
            shared,
            tasks,
            started: Instant::now(),
            stalls: Stalls::start(),
        }
    }

    /// Reads so far, and stale reads so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.reads.load(Ordering::Relaxed),
            self.shared.stale.load(Ordering::Relaxed),
        )
    }

    /// Forgets the versions acknowledged in `[from, to]`: writes a failover
    /// may have lost (Redis replicates asynchronously: docs/failure-modes.md,
    /// "What a failover can lose"), so that reading the older value the promoted
    /// replica holds is not taken for a stale read.
    pub fn forget_acknowledged(&self, from: Instant, to: Instant) {
        self.shared
            .acknowledged
            .lock()
            .expect("not poisoned")
            .retain(|(_, at)| *at < from || *at > to);
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Stops the tasks and returns what they found.
    pub async fn finish(self) -> Findings {
        self.shared.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a checker task");
        }
        self.stalls.stop();
        let all_stale = self.shared.stale_reads.lock().expect("not poisoned");
        // A read's lag runs from the newer version's acknowledgement to the
        // read; the part of it the runtime spent stalled is not the tier's.
        let (stale_reads, stalled): (Vec<&StaleRead>, Vec<&StaleRead>) =
            all_stale.iter().partition(|(began, _, _, lag)| {
                let acknowledged = began.checked_sub(*lag).unwrap_or(*began);
                lag.saturating_sub(self.stalls.within(acknowledged, *began)) > BOUND
            });
        Findings {
            reads: self.shared.reads.load(Ordering::Relaxed),
            from_source: self.shared.from_source.load(Ordering::Relaxed),
            acknowledged: self.shared.acknowledged.lock().expect("not poisoned").len(),
            stale: stale_reads.len() as u64,
            stalled: stalled.len() as u64,
            worst_lag: stale_reads.iter().map(|s| s.3).max().unwrap_or_default(),
            examples: stale_reads
                .iter()
                .take(5)
                .map(|(at, read, newest, _)| {
                    (
                        at.duration_since(self.started).as_secs_f64(),
                        *read,
                        *newest,
                    )
                })
                .collect(),
        }
    }
}

async fn writer(b: Cache, key: String, shared: Arc<Shared>) {
    let mut version = 0;
    let mut tick = tokio::time::interval(WRITE_EVERY);
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        version += 1;
        shared.source.store(version, Ordering::SeqCst);
        if b.set(&key, &version, None).await.is_ok() {
            let at = Instant::now();
            shared
                .acknowledged
                .lock()
                .expect("not poisoned")
                .push((version, at));
        }
    }
}

async fn reader(a: Cache, key: String, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let version = match a.get::<u64>(&key).await {
            Ok(Some(version)) => version,
            // A miss or a failing cache: the request reads the source.
            Ok(None) | Err(_) => {
                shared.from_source.fetch_add(1, Ordering::Relaxed);
                shared.source.load(Ordering::SeqCst)
            }
        };
        shared.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(newest) = began
            .checked_sub(BOUND)
            .and_then(|bound| shared.acknowledged_before(bound))
            && version < newest
        {
            shared.stale.fetch_add(1, Ordering::Relaxed);
            let lag = shared.lag_of(version, began);
            shared
                .stale_reads
                .lock()
                .expect("not poisoned")
                .push((began, version, newest, lag));
        }
        tokio::task::yield_now().await;
    }
}

impl std::fmt::Display for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reads {}, from the source of truth {}, versions acknowledged {}; stale reads (older than a version acknowledged > {BOUND:?} before, the runtime's stalls taken out): {} (worst lag {:?}); older only by the runtime's stalls: {}",
            self.reads,
            self.from_source,
            self.acknowledged,
            self.stale,
            self.worst_lag,
            self.stalled
        )?;
        for (at, read, newest) in &self.examples {
            write!(
                f,
                "\n    at {at:.3} s: read version {read}, {newest} was acknowledged before the bound"
            )?;
        }
        Ok(())
    }
}
