//! A history checker for the rate limiter in exact mode: every decision of
//! every instance is recorded as the client saw it, and the checker finds a
//! window of a client that admitted more than its limit (decisions served
//! while failing open excepted), or a client denied while its window had
//! room, beyond each algorithm's stated slack (docs/rate-limiting.md).
//!
//! The workload makes windows known from the client's side: each client
//! sends **bursts**, one per round, starting just after a multiple of the
//! window on the system clock (which the scripts' Redis `TIME` reads too,
//! on this machine), two windows apart. A decision's Redis time is unknown
//! but lies between when its request was sent and when its answer came:
//! every bound below holds for any Redis times inside those intervals, so
//! the checker never reports what the limiter may rightly have done.
//!
//! - **Over-admission**: a window admits at most its limit. Fixed window:
//!   it starts at the burst's first counted request, so every decision
//!   answered before the burst's first send plus one window is inside it.
//!   Sliding window: the previous aligned window is empty (the previous
//!   burst is two windows back), so the aligned window of the burst's start
//!   admits at most the limit. GCRA: from a full bucket, decisions spread
//!   over `d` admit at most `limit + d / (window / limit)`.
//! - **False denial**: a denial needs the limit reached, so at least
//!   `limit` decisions of the burst were counted, admitted or possibly
//!   counted (failed open or failed: their script may have run). Checked
//!   only for bursts nothing before could reach into (the previous burst
//!   answered more than a window before), and with no state lost.
//! - **State lost** (a Redis restart without persistence, a failover that
//!   dropped replicated writes): docs/failure-modes.md states a client can then get up to
//!   its limit again; a burst with such an event gets `limit` more per
//!   event, and no false-denial check (the instances' deny caches still
//!   hold what the lost state said).
//! - **Shared counting** (the opt-in mode that answers from each instance's
//!   counts): its stated over-admission bound is given as the burst's
//!   [`slack`](BurstContext::slack), admitted on top of the limit in any
//!   window; its fixed window is [aligned](Algorithm::Aligned) to the clock.

use std::fmt::Write as _;

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted and counted (`200` with `X-RateLimit-Limit`).
    Admitted,
    /// Admitted while the store failed (`200` without rate-limit headers):
    /// not counted by the limiter, maybe counted by Redis.
    FailedOpen,
    /// Rejected (`429`).
    Denied,
    /// No decision seen (a transport error, a timeout, a `5xx`): may have
    /// been counted.
    Failed,
}

/// The limiting algorithm of a client's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Window from the client's first request.
    Fixed,
    /// Cloudflare's counter over aligned windows.
    Sliding,
    /// Generic cell rate.
    Gcra,
    /// A fixed window aligned to the clock (window `k` covers
    /// `[k × window, (k + 1) × window)`): the shared counting's.
    Aligned,
}

/// One decision, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Which instance answered.
    pub instance: usize,
    /// The client key.
    pub client: String,
    /// Round (burst) number.
    pub round: u64,
    /// When the request was sent, ms since the Unix epoch (system clock).
    pub sent_ms: f64,
    /// When its answer came, ms since the Unix epoch.
    pub received_ms: f64,
    /// What it was.
    pub outcome: Outcome,
}

/// A client's policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Requests per window.
    pub limit: u64,
    /// The window, ms.
    pub window_ms: f64,
}

/// What the checker found wrong, with the decisions that show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// What broke.
    pub what: String,
    /// The fewest decisions that show it.
    pub decisions: Vec<Decision>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.what)?;
        let first = self
            .decisions
            .iter()
            .map(|d| d.sent_ms)
            .fold(f64::INFINITY, f64::min);
        for d in &self.decisions {
            writeln!(
                f,
                "    instance {} sent +{:.1} ms, answered +{:.1} ms: {:?}",
                d.instance,
                d.sent_ms - first,
                d.received_ms - first,
                d.outcome
            )?;
        }
        Ok(())
    }
}

/// What the checker was told about a burst beside its decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BurstContext {
    /// Events during the burst that may have lost the limiter's state.
    pub losses: u64,
    /// When the client's previous burst was answered in full (ms since the
    /// epoch), if it had one.
    pub previous_answered_ms: Option<f64>,
    /// Admissions a window may have beyond its limit by the mode's stated
    /// bound: 0 in exact mode; the shared counting's
    /// `(instances − 1) × allowance`.
    pub slack: u64,
}

/// Checks one burst of one client; returns what broke.
pub fn check_burst(policy: Policy, context: BurstContext, burst: &[Decision]) -> Vec<Violation> {
    let mut found = Vec::new();
    if burst.is_empty() {
        return found;
    }
    let mut sorted: Vec<Decision> = burst.to_vec();
    sorted.sort_by(|a, b| a.received_ms.total_cmp(&b.received_ms));
    let first_sent = sorted
        .iter()
        .map(|d| d.sent_ms)
        .fold(f64::INFINITY, f64::min);
    let w = policy.window_ms;
    let limit = policy.limit;
    let slack_for_losses = limit * context.losses + context.slack;
    let admitted: Vec<&Decision> = sorted
        .iter()
        .filter(|d| d.outcome == Outcome::Admitted)
        .collect();
    // Nothing of the previous burst can weigh on this one: its windows (its
    // bucket) ended before this burst began.
    let clean_before = context
        .previous_answered_ms
        .is_none_or(|answered| match policy.algorithm {
            Algorithm::Fixed | Algorithm::Gcra => answered + w <= first_sent,
            Algorithm::Sliding => answered < ((first_sent / w).floor() - 1.0) * w,
            Algorithm::Aligned => answered < (first_sent / w).floor() * w,
        });
    // A fixed window begun by the previous burst may end inside this one.
    let windows = if clean_before || policy.algorithm != Algorithm::Fixed {
        1
    } else {
        2
    };
    // Over-admission.
    match policy.algorithm {
        Algorithm::Fixed | Algorithm::Sliding | Algorithm::Aligned => {
            // Decisions surely inside the burst's first window.
            let end = match policy.algorithm {
                Algorithm::Fixed => first_sent + w,
                _ => ((first_sent / w).floor() + 1.0) * w,
            };
            let inside: Vec<&Decision> = admitted
                .iter()
                .copied()
                .filter(|d| d.received_ms < end)
                .collect();
            if inside.len() as u64 > windows * limit + slack_for_losses {
                found.push(Violation {
                    what: format!(
                        "{:?}: {} admitted in one window of {w} ms, limit {limit}{}",
                        policy.algorithm,
                        inside.len(),
                        losses_note(context)
                    ),
                    decisions: inside
                        .iter()
                        .take((windows * limit + slack_for_losses + 1) as usize)
                        .map(|d| (*d).clone())
                        .collect(),
                });
            }
        }
        Algorithm::Gcra => {
            // The smallest run of admitted decisions that breaks
            // count <= limit + span / T, with span from the first's send to
            // the last's answer (the widest their Redis times can be apart).
            let interval = w / limit as f64;
            let mut worst: Option<(usize, usize)> = None;
            for i in 0..admitted.len() {
                for j in i..admitted.len() {
                    let span = (admitted[j].received_ms - admitted[i].sent_ms).max(0.0);
                    let allowed = limit + (span / interval).floor() as u64 + slack_for_losses;
                    if (j - i + 1) as u64 > allowed && worst.is_none_or(|(a, b)| j - i < b - a) {
                        worst = Some((i, j));
                    }
                }
            }
            if let Some((i, j)) = worst {
                found.push(Violation {
                    what: format!(
                        "Gcra: {} admitted within {:.1} ms, limit {limit} per {w} ms{}",
                        j - i + 1,
                        admitted[j].received_ms - admitted[i].sent_ms,
                        losses_note(context)
                    ),
                    decisions: admitted[i..=j].iter().map(|d| (*d).clone()).collect(),
                });
            }
        }
    }
    // False denial.
    if context.losses == 0 && clean_before {
        let maybe_counted = sorted
            .iter()
            .filter(|d| d.outcome != Outcome::Denied)
            .count() as u64;
        if let Some(denied) = sorted.iter().find(|d| d.outcome == Outcome::Denied)
            && maybe_counted < limit
        {
            found.push(Violation {
                what: format!(
                    "{:?}: denied with room: at most {maybe_counted} of the burst counted, limit {limit}",
                    policy.algorithm
                ),
                decisions: std::iter::once(denied.clone())
                    .chain(sorted.iter().filter(|d| d.outcome != Outcome::Denied).cloned())
                    .collect(),
            });
        }
    }
    found
}

fn losses_note(context: BurstContext) -> String {
    let mut note = String::new();
    if context.slack > 0 {
        let _ = write!(note, " + {} by the mode's bound", context.slack);
    }
    if context.losses > 0 {
        let _ = write!(
            note,
            " (with {} loss(es) of state allowed for)",
            context.losses
        );
    }
    note
}

/// Formats every violation with the seed that replays the schedule.
pub fn report(seed: u64, violations: &[Violation]) -> String {
    let mut text = format!(
        "{} violation(s); replay with seed {seed}:\n",
        violations.len()
    );
    for v in violations {
        let _ = write!(text, "{v}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(sent: f64, received: f64, outcome: Outcome) -> Decision {
        Decision {
            instance: 0,
            client: "c".into(),
            round: 0,
            sent_ms: 10_000.0 + sent,
            received_ms: 10_000.0 + received,
            outcome,
        }
    }

    const FIXED: Policy = Policy {
        algorithm: Algorithm::Fixed,
        limit: 2,
        window_ms: 1000.0,
    };

    #[test]
    fn an_exact_burst_passes() {
        let burst = [
            d(0.0, 5.0, Outcome::Admitted),
            d(0.0, 6.0, Outcome::Admitted),
            d(0.0, 7.0, Outcome::Denied),
            d(1.0, 8.0, Outcome::FailedOpen),
        ];
        for algorithm in [Algorithm::Fixed, Algorithm::Sliding, Algorithm::Gcra] {
            let policy = Policy { algorithm, ..FIXED };
            assert_eq!(check_burst(policy, BurstContext::default(), &burst), []);
        }
    }

    #[test]
    fn one_admitted_too_many_is_found_with_the_decisions_that_show_it() {
        let burst = [
            d(0.0, 5.0, Outcome::Admitted),
            d(0.0, 6.0, Outcome::Admitted),
            d(0.0, 7.0, Outcome::Admitted),
        ];
        for algorithm in [Algorithm::Fixed, Algorithm::Sliding, Algorithm::Gcra] {
            let policy = Policy { algorithm, ..FIXED };
            let found = check_burst(policy, BurstContext::default(), &burst);
            assert_eq!(found.len(), 1, "{algorithm:?}");
            assert_eq!(found[0].decisions.len(), 3, "{algorithm:?}");
        }
    }

    #[test]
    fn a_lost_state_allows_the_limit_again_and_no_denial_check() {
        let burst = [
            d(0.0, 5.0, Outcome::Admitted),
            d(0.0, 6.0, Outcome::Admitted),
            d(0.0, 7.0, Outcome::Admitted),
            d(0.0, 8.0, Outcome::Denied),
        ];
        let context = BurstContext {
            losses: 1,
            ..BurstContext::default()
        };
        assert_eq!(check_burst(FIXED, context, &burst), []);
    }

    #[test]
    fn a_denial_with_room_is_found_unless_failures_may_have_counted() {
        let burst = [d(0.0, 5.0, Outcome::Admitted), d(0.0, 6.0, Outcome::Denied)];
        let found = check_burst(FIXED, BurstContext::default(), &burst);
        assert_eq!(found.len(), 1);
        assert!(found[0].what.contains("denied with room"), "{}", found[0]);
        let with_failure = [
            d(0.0, 5.0, Outcome::Admitted),
            d(0.0, 300.0, Outcome::Failed),
            d(0.0, 6.0, Outcome::Denied),
        ];
        assert_eq!(
            check_burst(FIXED, BurstContext::default(), &with_failure),
            []
        );
    }

    #[test]
    fn a_denial_is_not_judged_when_the_previous_burst_reached_into_the_window() {
        let burst = [d(0.0, 5.0, Outcome::Admitted), d(0.0, 6.0, Outcome::Denied)];
        let context = BurstContext {
            previous_answered_ms: Some(10_000.0 - 500.0),
            ..BurstContext::default()
        };
        assert_eq!(check_burst(FIXED, context, &burst), []);
    }

    #[test]
    fn a_fixed_window_decision_answered_after_a_window_may_be_the_next_windows() {
        let burst = [
            d(0.0, 5.0, Outcome::Admitted),
            d(0.0, 6.0, Outcome::Admitted),
            d(0.0, 1500.0, Outcome::Admitted),
        ];
        assert_eq!(check_burst(FIXED, BurstContext::default(), &burst), []);
    }

    #[test]
    fn the_shared_modes_slack_is_allowed_on_aligned_windows_and_no_more() {
        let aligned = Policy {
            algorithm: Algorithm::Aligned,
            ..FIXED
        };
        let context = BurstContext {
            slack: 1,
            ..BurstContext::default()
        };
        let three = [
            d(0.0, 5.0, Outcome::Admitted),
            d(0.0, 6.0, Outcome::Admitted),
            d(0.0, 7.0, Outcome::Admitted),
            d(0.0, 8.0, Outcome::Denied),
        ];
        assert_eq!(check_burst(aligned, context, &three), []);
        let four = [&three[..3], &[d(0.0, 8.0, Outcome::Admitted)]].concat();
        let found = check_burst(aligned, context, &four);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].what.contains("+ 1 by the mode's bound"),
            "{}",
            found[0]
        );
        // The aligned window ends on the clock's second (10 000 ms is one):
        // what is answered past it is the next window's.
        let across = [&three[..3], &[d(980.0, 1001.0, Outcome::Admitted)]].concat();
        assert_eq!(check_burst(aligned, context, &across), []);
        // A denial with room is a violation in this mode too.
        let denied = [d(0.0, 5.0, Outcome::Admitted), d(0.0, 6.0, Outcome::Denied)];
        assert_eq!(check_burst(aligned, context, &denied).len(), 1);
    }

    #[test]
    fn gcra_allows_one_more_per_interval_of_spread() {
        let policy = Policy {
            algorithm: Algorithm::Gcra,
            ..FIXED
        };
        // Interval 500 ms: three admitted over 500 ms are allowed, not over 100 ms.
        let spread = [
            d(0.0, 5.0, Outcome::Admitted),
            d(0.0, 6.0, Outcome::Admitted),
            d(490.0, 500.0, Outcome::Admitted),
        ];
        assert_eq!(check_burst(policy, BurstContext::default(), &spread), []);
        let tight = [
            d(0.0, 5.0, Outcome::Admitted),
            d(0.0, 6.0, Outcome::Admitted),
            d(90.0, 100.0, Outcome::Admitted),
        ];
        assert_eq!(
            check_burst(policy, BurstContext::default(), &tight).len(),
            1
        );
    }
}
