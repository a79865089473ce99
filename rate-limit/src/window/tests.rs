use super::*;
use proptest::prelude::*;

const W: u64 = 1000; // ms
const START: u64 = 1_700_000_000_000_000; // µs, a whole second

fn quota(limit: u64, algorithm: Algorithm) -> Quota {
    Quota::new(limit, Duration::from_millis(W)).algorithm(algorithm)
}

/// Runs single requests at `times` (µs) of `cost` on one policy; returns
/// the admitted ones.
fn run(quota: &Quota, requests: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut state = [State::Empty];
    requests
        .iter()
        .filter(|&&(at, cost)| {
            evaluate(std::slice::from_ref(quota), &mut state, at, &[cost])[0] == 1
        })
        .copied()
        .collect()
}

fn at_ms(ms: u64) -> u64 {
    START + ms * 1000
}

#[test]
fn requests_up_to_the_limit_pass_with_decreasing_remaining() {
    let reset = Duration::from_secs(60);
    let remaining: Vec<u64> = (1..=5)
        .map(|count| Decision::for_count(count, 5, reset))
        .inspect(|d| assert!(d.allowed))
        .map(|d| d.remaining)
        .collect();
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    let over = Decision::for_count(6, 5, reset);
    assert!(!over.allowed);
    assert_eq!(over.remaining, 0);
}

#[test]
fn retry_after_rounds_up_and_is_never_zero() {
    let d = |ms| Decision::for_count(9, 5, Duration::from_millis(ms));
    assert_eq!(d(1500).retry_after_seconds(), 2);
    assert_eq!(d(2000).retry_after_seconds(), 2);
    assert_eq!(d(1).retry_after_seconds(), 1);
    assert_eq!(d(0).retry_after_seconds(), 1);
    assert_eq!(d(0).reset_seconds(), 0);
}

/// The edge burst: the limit at the end of one window and the limit again
/// at the start of the next. The fixed window lets all through; the sliding
/// window and GCRA do not.
#[test]
fn the_edge_burst_passes_the_fixed_window_only() {
    let mut requests = vec![(at_ms(0), 1)];
    requests.extend((0..9).map(|_| (at_ms(990), 1)));
    requests.extend((0..10).map(|_| (at_ms(1010), 1)));
    let admitted = |algorithm| run(&quota(10, algorithm), &requests).len();
    assert_eq!(admitted(Algorithm::FixedWindow), 20);
    assert_eq!(admitted(Algorithm::SlidingWindow), 10);
    // GCRA: the first unit came back long ago; around the edge 10 pass
    // (the limit), not 19.
    assert_eq!(admitted(Algorithm::Gcra), 11);
}

#[test]
fn gcra_gives_one_unit_back_per_emission_interval() {
    let q = quota(10, Algorithm::Gcra);
    let mut state = [State::Empty];
    let burst = evaluate(&[q], &mut state, at_ms(0), &[1; 11]);
    let admitted: Vec<i64> = burst.chunks(5).map(|row| row[0]).collect();
    assert_eq!(admitted, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
    let last = &burst[50..55];
    assert_eq!(last[3], 100, "retry after one interval (100 ms)");
    assert_eq!(evaluate(&[q], &mut state, at_ms(99), &[1])[0], 0);
    assert_eq!(evaluate(&[q], &mut state, at_ms(100), &[1])[0], 1);
    assert_eq!(evaluate(&[q], &mut state, at_ms(100), &[1])[0], 0);
}

#[test]
fn the_sliding_window_weighs_the_previous_window() {
    let q = quota(10, Algorithm::SlidingWindow);
    let mut state = [State::Empty];
    // 10 in window 0 at its start; at 1.5 windows half of them still weigh.
    evaluate(&[q], &mut state, at_ms(0), &[1; 10]);
    let rows = evaluate(&[q], &mut state, at_ms(1500), &[1; 6]);
    let admitted: Vec<i64> = rows.chunks(5).map(|row| row[0]).collect();
    assert_eq!(admitted, [1, 1, 1, 1, 1, 0]);
    // 5 (weighted) + 5: the next passes when 1 of the previous slid out: at 1.6.
    assert_eq!(rows[25 + 3], 100);
}

#[test]
fn a_request_rejected_by_one_policy_is_charged_to_none() {
    let quotas = [
        quota(2, Algorithm::FixedWindow),
        quota(100, Algorithm::Gcra),
    ];
    let mut states = [State::Empty; 2];
    let rows = evaluate(&quotas, &mut states, at_ms(0), &[1, 1, 1, 1]);
    let admitted: Vec<i64> = rows.chunks(9).map(|row| row[0]).collect();
    assert_eq!(admitted, [1, 1, 0, 0]);
    // GCRA charged twice only: 98 left.
    assert_eq!(rows[27 + 5], 98);
    let outcome = outcome(&quotas, &rows[27..36]).unwrap();
    assert_eq!(outcome.decision.policy, 0, "the fixed window rejects");
    assert_eq!(outcome.decision.retry_after, Duration::from_millis(1000));
    assert_eq!(outcome.blocked, Duration::from_millis(1000));
}

#[test]
fn the_reported_policy_is_the_closest_to_its_limit() {
    let quotas = [
        quota(10, Algorithm::FixedWindow),
        quota(1000, Algorithm::FixedWindow),
    ];
    let mut states = [State::Empty; 2];
    let rows = evaluate(&quotas, &mut states, at_ms(0), &[1]);
    let decision = outcome(&quotas, &rows).unwrap().decision;
    assert_eq!((decision.policy, decision.remaining), (0, 9));
    let rows = evaluate(&quotas, &mut states, at_ms(0), &[600]);
    assert_eq!(rows[0], 0, "600 over the 10 of the first");
    assert_eq!(rows[3], -1, "never passes the first policy");
}

fn requests() -> impl Strategy<Value = (u64, Vec<(u64, u64)>)> {
    (1u64..=12).prop_flat_map(|limit| {
        let request = (0u64..400_000, 0..=limit + 1);
        (Just(limit), prop::collection::vec(request, 1..120))
    })
}

/// Arrival times from gaps (µs), in order.
fn timeline(gaps: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut at = START;
    gaps.iter()
        .map(|&(gap, cost)| {
            at += gap;
            (at, cost)
        })
        .collect()
}

/// What holds for every algorithm: nothing over the quota ever passes, and a
/// rejected request's wait is exact: a moment earlier it is still rejected,
/// at the end of it it passes.
fn check_waits(quota: &Quota, requests: &[(u64, u64)]) -> Result<(), TestCaseError> {
    let mut state = State::Empty;
    for &(at, cost) in requests {
        let c = check(quota, state, at, cost);
        if cost > quota.limit() {
            prop_assert!(!c.admits);
            prop_assert_eq!(c.retry_ms, NEVER);
            continue;
        }
        if c.admits {
            state = c.next;
            continue;
        }
        prop_assert!(c.retry_ms > 0 && c.retry_ms != NEVER);
        let later = at + c.retry_ms * 1000;
        prop_assert!(
            check(quota, state, later, cost).admits,
            "passes after {} ms",
            c.retry_ms
        );
        prop_assert!(
            !check(quota, state, later - 1000, cost).admits,
            "not 1 ms earlier"
        );
    }
    Ok(())
}

fn sliding_bound(admitted: &[(u64, u64)], limit: u64) -> Result<(), TestCaseError> {
    let ms = |at: u64| at / 1000;
    for &(start, _) in admitted {
        let aligned: u64 = admitted
            .iter()
            .filter(|(at, _)| ms(*at) / W == ms(start) / W)
            .map(|(_, c)| c)
            .sum();
        prop_assert!(aligned <= limit);
        // Spans starting at any ms up to a window before this admission.
        for offset in [0, 1, 250, 500, 999] {
            let Some(from) = ms(start).checked_sub(offset) else {
                continue;
            };
            let span: u64 = admitted
                .iter()
                .filter(|(at, _)| ms(*at) >= from && ms(*at) < from + W)
                .map(|(_, c)| c)
                .sum();
            let f = from % W;
            prop_assert!(
                span * W <= limit * W + limit * f,
                "{span} in [{from}, +{W}) ms"
            );
        }
    }
    Ok(())
}

fn gcra_bound(admitted: &[(u64, u64)], limit: u64) -> Result<(), TestCaseError> {
    let (interval, _) = gcra_params(limit, W);
    for (i, &(first, _)) in admitted.iter().enumerate() {
        let mut sum = 0;
        for &(at, cost) in &admitted[i..] {
            sum += cost;
            prop_assert!(sum * interval <= limit * interval + (at - first));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn waits_are_exact((limit, gaps) in requests(), algorithm in 0..3u8) {
        let algorithm = [Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::Gcra][algorithm as usize];
        check_waits(&quota(limit, algorithm), &timeline(&gaps))?;
    }

    /// Fixed window: at most the limit per window (each window starts at the
    /// first request after the previous one ended), so at most twice the
    /// limit in any span of one window.
    #[test]
    fn the_fixed_window_never_admits_more_than_the_limit_per_window((limit, gaps) in requests()) {
        let q = quota(limit, Algorithm::FixedWindow);
        let requests = timeline(&gaps);
        let mut state = State::Empty;
        let mut per_window: std::collections::HashMap<u64, u64> = Default::default();
        for &(at, cost) in &requests {
            let c = check(&q, state, at, cost);
            if c.admits {
                state = c.next;
                *per_window.entry(expires_ms(&q, state)).or_default() += cost;
            }
        }
        prop_assert!(per_window.values().all(|&sum| sum <= limit));
        let admitted = run(&q, &requests);
        for &(start, _) in &admitted {
            let sum: u64 = admitted.iter().filter(|(at, _)| *at >= start && *at < start + W * 1000).map(|(_, c)| c).sum();
            prop_assert!(sum <= 2 * limit);
        }
    }

    /// Sliding window: at most the limit per aligned window, and in any span
    /// of one window starting at fraction f of an aligned one, at most
    /// `limit × (1 + f)` (exactly the limit when the span is aligned).
    #[test]
    fn the_sliding_window_bounds_every_span((limit, gaps) in requests()) {
        let q = quota(limit, Algorithm::SlidingWindow);
        sliding_bound(&run(&q, &timeline(&gaps)), limit)?;
    }

    /// GCRA: in any span of d µs, at most `limit + d / interval` units.
    #[test]
    fn gcra_never_exceeds_the_burst_plus_the_rate((limit, gaps) in requests()) {
        let q = quota(limit, Algorithm::Gcra);
        gcra_bound(&run(&q, &timeline(&gaps)), limit)?;
    }

    /// Several policies, all-or-nothing: what passes keeps within every
    /// policy's own bound.
    #[test]
    fn several_policies_each_keep_their_bound((limit, gaps) in requests(), other in 1u64..12) {
        let quotas = [
            quota(limit, Algorithm::FixedWindow),
            quota(other, Algorithm::SlidingWindow),
            quota(limit + other, Algorithm::Gcra),
        ];
        let mut states = [State::Empty; 3];
        let admitted: Vec<(u64, u64)> = timeline(&gaps)
            .into_iter()
            .filter(|&(at, cost)| evaluate(&quotas, &mut states, at, &[cost])[0] == 1)
            .collect();
        prop_assert!(admitted.iter().all(|&(_, cost)| cost <= limit.min(other)));
        for &(start, _) in &admitted {
            let sum: u64 = admitted.iter().filter(|(at, _)| *at >= start && *at < start + W * 1000).map(|(_, c)| c).sum();
            prop_assert!(sum <= 2 * limit);
        }
        sliding_bound(&admitted, other)?;
        gcra_bound(&admitted, limit + other)?;
    }

    /// A batch evaluated at once gives what the same requests one by one give.
    #[test]
    fn a_batch_is_the_sequence_of_its_requests(costs in prop::collection::vec(0u64..4, 1..30), algorithm in 0..3u8) {
        let algorithm = [Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::Gcra][algorithm as usize];
        let quotas = [quota(7, algorithm), quota(20, Algorithm::Gcra)];
        let mut batch = [State::Empty; 2];
        let mut single = [State::Empty; 2];
        let rows = evaluate(&quotas, &mut batch, at_ms(3), &costs);
        let singles: Vec<i64> = costs.iter().flat_map(|&c| evaluate(&quotas, &mut single, at_ms(3), &[c])).collect();
        prop_assert_eq!(rows, singles);
        prop_assert_eq!(batch, single);
    }
}

/// A fixed-window count expiring more than a window from now (the window
/// was shortened) is counted on, in a window from now, as the script does.
#[test]
fn a_fixed_count_expiring_past_the_window_is_kept_for_one_window() {
    let q = quota(5, Algorithm::FixedWindow);
    let now = at_ms(0);
    let state = State::Fixed {
        count: 5,
        expires_ms: now / 1000 + 10 * W,
    };
    let c = check(&q, state, now, 1);
    assert!(!c.admits);
    assert_eq!((c.remaining, c.reset_ms, c.retry_ms), (0, W, W));
    let c = check(
        &q,
        State::Fixed {
            count: 3,
            expires_ms: now / 1000 + 10 * W,
        },
        now,
        1,
    );
    assert!(c.admits);
    assert_eq!(
        c.next,
        State::Fixed {
            count: 4,
            expires_ms: now / 1000 + W
        }
    );
}

/// A sliding window in the future (the clock stepped back) counts as the
/// current one: no fresh budget.
#[test]
fn a_sliding_window_in_the_future_is_the_current_one() {
    let q = quota(3, Algorithm::SlidingWindow);
    let now = at_ms(0);
    let future = State::Sliding {
        index: now / 1000 / W + 5,
        current: 3,
        previous: 0,
    };
    assert!(!check(&q, future, now, 1).admits);
    assert_eq!(
        repaired(&q, future, now),
        State::Sliding {
            index: now / 1000 / W,
            current: 3,
            previous: 0
        }
    );
}

/// What the script rewrites when it reads it: counts above the limit and a
/// GCRA TAT past the tolerance are brought in range, with the same answers.
#[test]
fn out_of_range_states_are_brought_in_range() {
    let now = at_ms(0);
    let sliding = quota(3, Algorithm::SlidingWindow);
    let over = State::Sliding {
        index: now / 1000 / W,
        current: 100,
        previous: 7,
    };
    let fixed = repaired(&sliding, over, now);
    assert_eq!(
        fixed,
        State::Sliding {
            index: now / 1000 / W,
            current: 3,
            previous: 3
        }
    );
    assert_eq!(
        check(&sliding, over, now, 1),
        check(&sliding, fixed, now, 1)
    );
    let gcra = quota(3, Algorithm::Gcra);
    let (_, tolerance) = gcra_params(3, W);
    let far = State::Gcra {
        tat_us: now + 100 * tolerance,
    };
    let clamped = repaired(&gcra, far, now);
    assert_eq!(
        clamped,
        State::Gcra {
            tat_us: now + tolerance
        }
    );
    assert_eq!(check(&gcra, far, now, 1), check(&gcra, clamped, now, 1));
}

/// Durations and times at their largest saturate instead of overflowing.
#[test]
fn the_largest_durations_and_times_do_not_overflow() {
    let d = Decision::for_count(9, 5, Duration::MAX);
    assert_eq!(d.reset_seconds(), u64::MAX);
    assert_eq!(d.retry_after_seconds(), u64::MAX);
    assert_eq!(ceil_seconds(Duration::MAX), u64::MAX);
    let body = crate::response::too_many_requests_body(5, Duration::MAX);
    assert!(!body.is_empty());
    // A custom clock at the end of time.
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let q = quota(10, algorithm);
        let mut state = [State::Empty];
        let rows = evaluate(&[q], &mut state, u64::MAX - 5, &[1; 12]);
        // No panic; past the end of time GCRA's TAT cannot grow (saturated).
        assert_eq!(rows[0], 1, "{algorithm:?}");
    }
}
