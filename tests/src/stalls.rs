//! When the test's runtime ran late: a task asks to be woken every
//! [`TICK`] and records each wake-up that comes late, as the stretch of
//! time it should have run in and did not. A timer or a push the library
//! handles is as late then, so a duration beyond a bound is the library's
//! only for the part the runtime was not stalled. The checkers print the
//! stalls with their figures: on a quiet machine they are a few
//! milliseconds; on two cores shared with builds, tens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often [`Stalls`] asks to be woken.
pub const TICK: Duration = Duration::from_millis(10);

/// The runtime's late wake-ups since [`start`](Stalls::start).
#[derive(Debug, Default)]
pub struct Stalls {
    /// (woke, late by), in order.
    late: Mutex<Vec<(Instant, Duration)>>,
    stop: AtomicBool,
}

impl Stalls {
    /// Starts recording on the current runtime, until [`stop`](Self::stop).
    pub fn start() -> Arc<Stalls> {
        let stalls = Arc::new(Stalls::default());
        let ticker = stalls.clone();
        tokio::spawn(async move {
            while !ticker.stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                tokio::time::sleep(TICK).await;
                let late = asked.elapsed().saturating_sub(TICK);
                // A timer's granularity is a millisecond: under that is on time.
                if late > Duration::from_millis(2) {
                    ticker
                        .late
                        .lock()
                        .expect("not poisoned")
                        .push((Instant::now(), late));
                }
            }
        });
        stalls
    }

    /// Stops recording (the ticking task ends at its next wake-up).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// How long the runtime was stalled between `from` and `to`.
    pub fn within(&self, from: Instant, to: Instant) -> Duration {
        self.late
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(woke, late)| {
                let start = (*woke - *late).max(from);
                (*woke).min(to).saturating_duration_since(start)
            })
            .sum()
    }

    /// The longest stall between `from` and `to`.
    pub fn longest(&self, from: Instant, to: Instant) -> Duration {
        self.late
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(woke, _)| *woke >= from && *woke < to)
            .map(|(_, late)| *late)
            .max()
            .unwrap_or_default()
    }
}
