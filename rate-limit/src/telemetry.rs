//! Metrics of the layer (cargo feature `metrics`): what it decided for each
//! request, and its calls to the store. Without the feature every probe is
//! an empty inline function and no clock is read for it. The guide's
//! docs/metrics.md lists the names and labels.
//!
//! Labels are the outcome, the layer's policy names and the store call's
//! result: never a client key, an address or a path.

/// What the layer did with a request: the `outcome` label of `ratelimit.decisions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every policy admitted it.
    Allowed,
    /// Rejected (429) on the store's count, or because it costs more than a
    /// policy's whole quota.
    Limited,
    /// Rejected (429) by the local deny cache, without a store call.
    LimitedLocally,
    /// Over a limit in shadow mode: let through, only reported.
    Shadow,
    /// The store failed and the layer let the request through.
    FailOpen,
    /// The store failed and the layer answered 503.
    FailClosed,
}

impl Outcome {
    #[cfg(feature = "metrics")]
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::LimitedLocally => "limited_locally",
            Outcome::Shadow => "shadow",
            Outcome::FailOpen => "fail_open",
            Outcome::FailClosed => "fail_closed",
        }
    }
}

/// Counts one decision; `policy` is the index of the policy it reports
/// (none when the store failed).
#[inline]
pub(crate) fn decided(limiter: &crate::limiter::Limiter, outcome: Outcome, policy: Option<usize>) {
    #[cfg(feature = "metrics")]
    {
        let outcome = outcome.as_str();
        match policy.and_then(|index| limiter.policies.get(index)) {
            Some(policy) => metrics::counter!(
                "ratelimit.decisions",
                "outcome" => outcome,
                "policy" => policy.name.clone()
            )
            .increment(1),
            None => metrics::counter!("ratelimit.decisions", "outcome" => outcome).increment(1),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (limiter, outcome, policy);
}

/// Counts one decision of a layer with plans: labelled with the plan too
/// (plans are declared, so the labels stay bounded).
#[inline]
pub(crate) fn decided_in(
    limiter: &crate::limiter::Limiter,
    plan: Option<&str>,
    outcome: Outcome,
    policy: Option<usize>,
) {
    let Some(plan) = plan else {
        return decided(limiter, outcome, policy);
    };
    #[cfg(feature = "metrics")]
    {
        let outcome = outcome.as_str();
        let plan = plan.to_string();
        match policy.and_then(|index| limiter.policies.get(index)) {
            Some(policy) => metrics::counter!(
                "ratelimit.decisions",
                "outcome" => outcome,
                "policy" => policy.name.clone(),
                "plan" => plan
            )
            .increment(1),
            None => metrics::counter!("ratelimit.decisions", "outcome" => outcome, "plan" => plan)
                .increment(1),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (limiter, plan, outcome, policy);
}

/// Counts one refund of a charge by outcome (`ratelimit.refunds`, `result`
/// `ok` or `error`, and the plan if the layer has plans).
pub(crate) fn refunded(plan: Option<&str>, given: bool) {
    #[cfg(feature = "metrics")]
    {
        let result = if given { "ok" } else { "error" };
        match plan {
            Some(plan) => {
                metrics::counter!("ratelimit.refunds", "result" => result, "plan" => plan.to_string())
                    .increment(1)
            }
            None => metrics::counter!("ratelimit.refunds", "result" => result).increment(1),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (plan, given);
}

/// What became of a concurrency limit's lease: the `event` label of
/// `ratelimit.leases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseEvent {
    /// Taken by an admitted request.
    Granted,
    /// Refused: the client had every slot taken.
    Refused,
    /// Found expired when released: the response outlasted the lease TTL.
    Expired,
}

/// Counts one lease event (with the plan, on a layer with plans).
#[inline]
pub(crate) fn lease(plan: Option<&str>, event: LeaseEvent) {
    #[cfg(feature = "metrics")]
    {
        let event = match event {
            LeaseEvent::Granted => "granted",
            LeaseEvent::Refused => "refused",
            LeaseEvent::Expired => "expired",
        };
        match plan {
            Some(plan) => metrics::counter!(
                "ratelimit.leases",
                "event" => event,
                "plan" => plan.to_string()
            )
            .increment(1),
            None => metrics::counter!("ratelimit.leases", "event" => event).increment(1),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (plan, event);
}

/// A store call in progress: started before it is sent, finished with its
/// answer (`ratelimit.store.calls`, `ratelimit.store.duration`).
pub(crate) struct StoreCall {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl StoreCall {
    #[inline]
    pub(crate) fn start() -> StoreCall {
        StoreCall {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    /// Records the call with its answer, and hands the answer back.
    #[inline]
    pub(crate) fn finish<T, E>(self, answer: Result<T, E>) -> Result<T, E> {
        #[cfg(feature = "metrics")]
        {
            let result = if answer.is_ok() { "ok" } else { "error" };
            metrics::counter!("ratelimit.store.calls", "result" => result).increment(1);
            metrics::histogram!("ratelimit.store.duration", "result" => result)
                .record(self.started.elapsed().as_secs_f64());
        }
        answer
    }
}
