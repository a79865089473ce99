//! Timeouts, bounded retries and the circuit breaker around every store call.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::stats::{BreakerState, Counters};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Opens after `threshold` consecutive failures; after `cooldown` lets one probe
/// through (half-open); closes on the probe's success, reopens on its failure.
///
/// The hot path (closed, no failures) is two relaxed atomic loads: no lock.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// When it last opened, in milliseconds since `epoch`.
    opened_at_ms: AtomicU64,
    epoch: Instant,
    threshold: u32,
    cooldown: Duration,
}

/// Permission to make one call. A probe that is dropped before it reports
/// (its caller was cancelled) re-opens the breaker for an immediate new probe,
/// so a cancelled probe can never leave the breaker stuck half-open.
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `None` when the call must not be attempted.
    pub(crate) fn admit(&self) -> Option<Permit<'_>> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Permit {
                breaker: self,
                probe: false,
                reported: false,
            }),
            OPEN => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                let cooldown = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
                if self.now_ms().saturating_sub(opened) < cooldown {
                    return None;
                }
                // Only the caller that wins this exchange probes; the others keep failing fast.
                self.state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .ok()
                    .inspect(|_| crate::telemetry::breaker_changed(BreakerState::HalfOpen))
                    .map(|_| Permit {
                        breaker: self,
                        probe: true,
                        reported: false,
                    })
            }
            _ => None,
        }
    }

    fn succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        // A load first: the common case (closed) writes nothing, so callers on
        // other cores do not fight over the cache line.
        if self.state.load(Ordering::Acquire) != CLOSED
            && self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED
        {
            tracing::info!("cache circuit breaker closed: the store answers again");
            crate::telemetry::breaker_changed(BreakerState::Closed);
        }
    }

    fn failed(&self, probe: bool) {
        if probe {
            self.open("the probe call failed");
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold
            && self
                .state
                .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.opened_at_ms.store(self.now_ms(), Ordering::Release);
            tracing::warn!(
                failures,
                cooldown_ms = self.cooldown.as_millis() as u64,
                "cache circuit breaker opened: calls fail fast until a probe succeeds"
            );
            crate::telemetry::breaker_changed(BreakerState::Open);
        }
    }

    fn open(&self, why: &'static str) {
        self.opened_at_ms.store(self.now_ms(), Ordering::Release);
        if self.state.swap(OPEN, Ordering::AcqRel) != OPEN {
            tracing::warn!(why, "cache circuit breaker opened again");
            crate::telemetry::breaker_changed(BreakerState::Open);
        }
    }
}

impl Permit<'_> {
    pub(crate) fn success(mut self) {
        self.reported = true;
        self.breaker.succeeded();
    }

    pub(crate) fn failure(mut self) {
        self.reported = true;
        self.breaker.failed(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            // Back to open with the cooldown already over: the next call probes.
            let breaker = self.breaker;
            let cooldown = u64::try_from(breaker.cooldown.as_millis()).unwrap_or(u64::MAX);
            breaker
                .opened_at_ms
                .store(breaker.now_ms().saturating_sub(cooldown), Ordering::Release);
            if breaker
                .state
                .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                crate::telemetry::breaker_changed(BreakerState::Open);
            }
        }
    }
}

/// Whether a call may be sent again after a failure whose effect is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// Sending it twice is harmless (GET, SET, DEL, EXPIRE, ...).
    Idempotent,
    /// Sending it twice could count twice (INCR): retried only when the
    /// command surely did not run: the connection was refused or missing,
    /// or the server answered that it did not run it (a redirection,
    /// `TRYAGAIN`, `LOADING`, ...).
    CountsOnce,
}

/// Timeout, retry and breaker settings of one handle.
#[derive(Debug)]
pub(crate) struct Resilience {
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) retry_backoff: Duration,
    pub(crate) breaker: CircuitBreaker,
}

impl Resilience {
    /// Runs `call` under the breaker, within one overall deadline of `timeout`
    /// (the handle's, or less), retrying transient failures with exponential
    /// backoff. Every outcome is counted and reported to the breaker here, and
    /// only here. A zero `timeout` fails at once as a timeout, with no call
    /// and no verdict for the breaker (the store was not asked).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        counters: &Counters,
        idempotence: Idempotence,
        timeout: Duration,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if timeout.is_zero() {
            counters.record_timeout();
            return Err(Error::Timeout(timeout));
        }
        let Some(permit) = self.breaker.admit() else {
            counters.record_breaker_rejection();
            return Err(Error::CircuitOpen);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempt = 1;
        let mut backoff = self.retry_backoff;
        loop {
            match tokio::time::timeout_at(deadline, call()).await {
                // A reply that completed after the deadline (the task was polled
                // late, or a large reply took long to arrive) is a timeout, as
                // the caller's deadline has passed: never a late `Ok`.
                Ok(Ok(value)) if tokio::time::Instant::now() <= deadline => {
                    permit.success();
                    return Ok(value);
                }
                Ok(Ok(_)) | Err(_) => {
                    counters.record_timeout();
                    permit.failure();
                    return Err(Error::Timeout(timeout));
                }
                Ok(Err(err @ (Error::Connection(_) | Error::ReplyTimeout(_)))) => {
                    let may_retry = match (&err, idempotence) {
                        (_, Idempotence::Idempotent) => true,
                        (Error::Connection(cause), Idempotence::CountsOnce) => {
                            crate::error::surely_not_run(cause)
                        }
                        _ => false,
                    };
                    let next_try = tokio::time::Instant::now() + backoff;
                    if may_retry && attempt < self.max_attempts && next_try < deadline {
                        counters.record_retry();
                        tokio::time::sleep_until(next_try).await;
                        attempt += 1;
                        backoff = backoff.saturating_mul(2);
                        continue;
                    }
                    if err.is_timeout() {
                        counters.record_timeout();
                    } else {
                        counters.record_error();
                    }
                    permit.failure();
                    return Err(err);
                }
                Ok(Err(err)) => {
                    // The store answered: it is healthy even if the command was
                    // wrong, or the credentials (an auth error is not retried and
                    // does not open the breaker: the store is up, and every call
                    // reports the refusal rather than a breaker that hides it).
                    counters.record_error();
                    permit.success();
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_consecutive_failures() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            breaker.admit().unwrap().failure();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.admit().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.admit().is_none());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(60));
        breaker.admit().unwrap().failure();
        breaker.admit().unwrap().success();
        breaker.admit().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn after_cooldown_one_probe_goes_through_and_closes_on_success() {
        let breaker = CircuitBreaker::new(1, Duration::ZERO);
        breaker.admit().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        let probe = breaker.admit().expect("cooldown is over: a probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.admit().is_none(), "only one probe at a time");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(60));
        breaker.admit().unwrap().failure();
        breaker.opened_at_ms.store(0, Ordering::Release);
        let breaker_past = CircuitBreaker {
            epoch: Instant::now() - Duration::from_secs(120),
            ..breaker
        };
        let probe = breaker_past.admit().expect("cooldown is over");
        probe.failure();
        assert_eq!(breaker_past.state(), BreakerState::Open);
        assert!(breaker_past.admit().is_none(), "cooldown starts again");
    }

    #[test]
    fn a_dropped_probe_does_not_leave_the_breaker_half_open() {
        let breaker = CircuitBreaker::new(1, Duration::ZERO);
        breaker.admit().unwrap().failure();
        drop(breaker.admit().expect("probe"));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.admit().is_some(), "the next call probes again");
    }
}
