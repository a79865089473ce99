//! Timeouts, bounded retries and the circuit breaker around every store call.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::stats::{BreakerState, Counters};
// shuttle's under `--cfg shuttle` (see the tests at the end).
use crate::sync::primitives::{AtomicU8, AtomicU32, AtomicU64};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Opens after `threshold` consecutive failures; after `cooldown` lets one probe
/// through (half-open); closes on the probe's success, reopens on its failure.
/// Calls that arrive while the probe is out wait for its verdict (within
/// their own deadline) rather than fail: after an outage, traffic comes
/// back in bursts, and all but the first call of a burst would otherwise
/// fail although the store answers again.
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
    /// Wakes the calls waiting for the probe when it reports or vanishes.
    probe_settled: Notify,
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
            probe_settled: Notify::new(),
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
        self.try_admit().ok()
    }

    /// The permit, or the state that refused it, as it was seen: whoever
    /// waits for a verdict decides on that one observation.
    fn try_admit(&self) -> std::result::Result<Permit<'_>, u8> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(Permit {
                breaker: self,
                probe: false,
                reported: false,
            }),
            OPEN => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                let cooldown = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
                if self.now_ms().saturating_sub(opened) < cooldown {
                    return Err(OPEN);
                }
                // Only the caller that wins this exchange probes; the others
                // see the probe out (or its verdict in already).
                match self.state.compare_exchange(
                    OPEN,
                    HALF_OPEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        crate::telemetry::breaker_changed(BreakerState::HalfOpen);
                        Ok(Permit {
                            breaker: self,
                            probe: true,
                            reported: false,
                        })
                    }
                    Err(seen) => Err(seen),
                }
            }
            seen => Err(seen),
        }
    }

    /// [`admit`](Self::admit), or, while a probe is out, the permit the
    /// probe's verdict gives: a plain one when it closed the breaker, the
    /// next probe when it vanished. `None` when the breaker is open, or
    /// stays half-open until `deadline`.
    pub(crate) async fn admit_until(&self, deadline: tokio::time::Instant) -> Option<Permit<'_>> {
        match self.admit() {
            Some(permit) => Some(permit),
            None => tokio::time::timeout_at(deadline, self.after_probe())
                .await
                .ok()
                .flatten(),
        }
    }

    /// Waits while a probe is out, then [`admit`](Self::admit)s.
    async fn after_probe(&self) -> Option<Permit<'_>> {
        loop {
            // Registered before the state is read again: a verdict in
            // between still wakes it (`notify_waiters` reaches every
            // `Notified` that exists when it is called).
            let settled = self.probe_settled.notified();
            // Decided on what `try_admit` saw, never on a second look at
            // the state: the verdict may come in between (the scheduler
            // below found waiters turned away by a probe that had closed
            // the breaker, or had vanished, since they looked).
            match self.try_admit() {
                Ok(permit) => return Some(permit),
                Err(HALF_OPEN) => settled.await,
                // A probe closed it after this call's first look.
                Err(CLOSED) => {}
                // Open, and cooling down.
                Err(_) => return None,
            }
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
        if self.probe {
            self.breaker.probe_settled.notify_waiters();
        }
    }

    pub(crate) fn failure(mut self) {
        self.reported = true;
        self.breaker.failed(self.probe);
        if self.probe {
            self.breaker.probe_settled.notify_waiters();
        }
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
            breaker.probe_settled.notify_waiters();
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

/// How one call ended, before the breaker hears of it.
enum Attempts<T> {
    /// The store answered with a value.
    Value(T),
    /// The store answered with an error: it is healthy, even if the command
    /// was wrong, or the credentials (an auth error is not retried and does
    /// not open the breaker: the store is up, and every call reports the
    /// refusal rather than a breaker that hides it).
    Answered(Error),
    /// No answer in time, or the connection failed: counted against the store.
    Failed(Error),
}

impl Resilience {
    /// Runs `call` under the breaker, within one overall deadline of `timeout`
    /// (the handle's, or less), retrying transient failures with exponential
    /// backoff. Every outcome is counted and reported to the breaker here, and
    /// only here. A zero `timeout` fails at once as a timeout, with no call
    /// and no verdict for the breaker (the store was not asked). While the
    /// breaker's probe is out, the call waits for its verdict within the
    /// same deadline ([`CircuitBreaker::admit_until`]); one still waiting at
    /// the deadline fails as [`Error::CircuitOpen`].
    ///
    /// The breaker's probe of a call that counts once first runs `check` (a
    /// PING), with retries, within the same deadline: while the breaker kept
    /// calls away nothing used the connection, so it may have died unnoticed
    /// (the server restarted, the network closed it), and a counting call is
    /// not sent again after such a failure (it may have counted). The check
    /// meets the dead connection instead, makes the driver reconnect, and is
    /// retried on the new one; the counting call then goes out once, on a
    /// connection that just answered. When the check fails, the call is not
    /// sent at all and the probe fails.
    pub(crate) async fn run<T, F, Fut, C, CheckFut>(
        &self,
        counters: &Counters,
        idempotence: Idempotence,
        timeout: Duration,
        mut check: C,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
        C: FnMut() -> CheckFut,
        CheckFut: Future<Output = Result<()>>,
    {
        if timeout.is_zero() {
            counters.record_timeout();
            return Err(Error::Timeout(timeout));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(permit) = self.breaker.admit_until(deadline).await else {
            counters.record_breaker_rejection();
            return Err(Error::CircuitOpen);
        };
        if permit.probe && idempotence == Idempotence::CountsOnce {
            // The store answering with an error (a refused login) is an
            // answer: the connection works, and the call reports the refusal.
            let checked = self
                .attempts(
                    counters,
                    Idempotence::Idempotent,
                    timeout,
                    deadline,
                    &mut check,
                )
                .await;
            if let Attempts::Failed(err) = checked {
                permit.failure();
                return Err(err);
            }
        }
        match self
            .attempts(counters, idempotence, timeout, deadline, &mut call)
            .await
        {
            Attempts::Value(value) => {
                permit.success();
                Ok(value)
            }
            Attempts::Answered(err) => {
                counters.record_error();
                permit.success();
                Err(err)
            }
            Attempts::Failed(err) => {
                permit.failure();
                Err(err)
            }
        }
    }

    /// Sends `call` until it is answered, retrying what `idempotence`
    /// allows while `deadline` leaves room; counts timeouts, retries and
    /// failures (an error the store answered is counted by the caller).
    async fn attempts<T, F, Fut>(
        &self,
        counters: &Counters,
        idempotence: Idempotence,
        timeout: Duration,
        deadline: tokio::time::Instant,
        call: &mut F,
    ) -> Attempts<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        let mut backoff = self.retry_backoff;
        loop {
            match tokio::time::timeout_at(deadline, call()).await {
                // A reply that completed after the deadline (the task was polled
                // late, or a large reply took long to arrive) is a timeout, as
                // the caller's deadline has passed: never a late `Ok`.
                Ok(Ok(value)) if tokio::time::Instant::now() <= deadline => {
                    return Attempts::Value(value);
                }
                Ok(Ok(_)) | Err(_) => {
                    counters.record_timeout();
                    return Attempts::Failed(Error::Timeout(timeout));
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
                    return Attempts::Failed(err);
                }
                Ok(Err(err)) => return Attempts::Answered(err),
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

    /// A breaker with a cooldown of a minute that opened long ago: the next
    /// call probes, and a failed probe starts a cooldown that lasts.
    fn open_past_its_cooldown() -> CircuitBreaker {
        let breaker = CircuitBreaker {
            epoch: Instant::now() - Duration::from_secs(120),
            ..CircuitBreaker::new(1, Duration::from_secs(60))
        };
        breaker.admit().unwrap().failure();
        breaker.opened_at_ms.store(0, Ordering::Release);
        breaker
    }

    #[tokio::test(start_paused = true)]
    async fn calls_during_the_probe_wait_for_its_verdict() {
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(1);

        // The probe closes the breaker: the waiter goes through.
        let breaker = open_past_its_cooldown();
        let probe = breaker.admit().expect("probe");
        let (waiter, ()) = tokio::join!(breaker.admit_until(deadline()), async {
            tokio::task::yield_now().await;
            probe.success();
        });
        assert!(!waiter.expect("a permit").probe);

        // The probe fails: the waiter is refused then, not at its deadline.
        let breaker = open_past_its_cooldown();
        let probe = breaker.admit().expect("probe");
        let started = tokio::time::Instant::now();
        let (waiter, ()) = tokio::join!(breaker.admit_until(deadline()), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            probe.failure();
        });
        assert!(waiter.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(10));

        // The probe vanishes (cancelled): the waiter is the next probe.
        let breaker = open_past_its_cooldown();
        let probe = breaker.admit().expect("probe");
        let (waiter, ()) = tokio::join!(breaker.admit_until(deadline()), async {
            tokio::task::yield_now().await;
            drop(probe);
        });
        assert!(waiter.expect("the next probe").probe);

        // The probe never reports: the waiter gives up at its deadline.
        let breaker = open_past_its_cooldown();
        let _probe = breaker.admit().expect("probe");
        let started = tokio::time::Instant::now();
        assert!(breaker.admit_until(deadline()).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(1));
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

/// The breaker's probe and the calls waiting for it, under shuttle's
/// scheduler (`--cfg shuttle`, run by `scripts/test.sh`): three calls
/// arrive at once when the cooldown is over; the one that probes succeeds,
/// fails or is cancelled. Under every schedule tried, one probe is out at a
/// time, no waiter sleeps through the verdict (they wait without a
/// deadline here: shuttle fails a run where every task waits), a closed
/// breaker lets every waiter through, a failed probe turns them away, and
/// a cancelled one hands the probe on.
#[cfg(all(test, shuttle))]
mod interleavings {
    use super::*;
    use crate::sync::primitives::explore;
    use shuttle::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[derive(Clone, Copy, PartialEq)]
    enum Verdict {
        Success,
        Failure,
        Cancelled,
    }

    fn calls_during_a_probe(verdict: Verdict) {
        explore(move || {
            shuttle::future::block_on(async move {
                let breaker = Arc::new(CircuitBreaker {
                    epoch: Instant::now() - Duration::from_secs(120),
                    ..CircuitBreaker::new(1, Duration::from_secs(60))
                });
                breaker.admit().expect("closed").failure();
                breaker.opened_at_ms.store(0, Ordering::Release);
                let probes_out = Arc::new(AtomicUsize::new(0));
                let cancelled = Arc::new(AtomicUsize::new(0));
                let calls: Vec<_> = (0..3)
                    .map(|_| {
                        let (breaker, probes_out, cancelled) =
                            (breaker.clone(), probes_out.clone(), cancelled.clone());
                        shuttle::future::spawn(async move {
                            let Some(permit) = breaker.after_probe().await else {
                                return false;
                            };
                            if !permit.probe {
                                permit.success();
                                return true;
                            }
                            assert_eq!(probes_out.fetch_add(1, Ordering::SeqCst), 0, "one probe");
                            shuttle::future::yield_now().await;
                            probes_out.fetch_sub(1, Ordering::SeqCst);
                            match verdict {
                                Verdict::Success => permit.success(),
                                Verdict::Failure => permit.failure(),
                                Verdict::Cancelled
                                    if cancelled.fetch_add(1, Ordering::SeqCst) == 0 =>
                                {
                                    drop(permit);
                                    return false;
                                }
                                Verdict::Cancelled => permit.success(),
                            }
                            verdict != Verdict::Failure
                        })
                    })
                    .collect();
                let mut through = 0;
                for call in calls {
                    through += usize::from(call.await.expect("no call panics"));
                }
                match verdict {
                    Verdict::Success => {
                        assert_eq!(through, 3);
                        assert_eq!(breaker.state(), BreakerState::Closed);
                    }
                    Verdict::Failure => {
                        assert_eq!(through, 0);
                        assert_eq!(breaker.state(), BreakerState::Open);
                    }
                    Verdict::Cancelled => {
                        assert_eq!(through, 2, "the others went through after the next probe");
                        assert_eq!(breaker.state(), BreakerState::Closed);
                    }
                }
            });
        });
    }

    #[test]
    fn calls_behind_a_probe_that_succeeds() {
        calls_during_a_probe(Verdict::Success);
    }

    #[test]
    fn calls_behind_a_probe_that_fails() {
        calls_during_a_probe(Verdict::Failure);
    }

    #[test]
    fn calls_behind_a_probe_that_is_cancelled() {
        calls_during_a_probe(Verdict::Cancelled);
    }
}
