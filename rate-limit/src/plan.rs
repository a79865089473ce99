//! Plans: named sets of policies a layer declares at build time, one of
//! them chosen per request by the layer's `plan_for` closure (typically from
//! what an authentication layer put into the request's extensions).
//!
//! Each plan counts under keys of its own, `{prefix}@{plan}:{client}` (or
//! `{prefix}@{plan}:{{client}}:{policy}`): `@` is in no prefix, no plan name
//! and no sanitized client key, so no plan reaches another plan's keys or
//! the default plan's (`{prefix}:{client}`, as without plans). A client that
//! changes plan starts a fresh count under the new plan's keys; what it
//! used under the old one stays there until its windows end (and counts
//! again if it changes back within them).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cache_sync::StateFlag;

use crate::headers::HeaderTemplate;
use crate::key::RequestInfo;
use crate::limiter::Limiter;
use crate::prefix::PrefixClaim;

/// The name of a layer's own policies when it declares plans: the plan of
/// requests `plan_for` names no plan for (or an unknown one).
pub const DEFAULT_PLAN: &str = "default";

/// What `plan_for` chose, resolved against the declared plans.
pub(crate) enum Selected {
    /// None named: the default plan.
    Default,
    /// The declared plan at this index.
    Plan(usize),
    /// A name the layer does not declare: the default plan.
    Unknown(String),
}

/// `plan_for`'s closure, resolving the name it returns against the plans.
pub(crate) type SelectFn = dyn Fn(&RequestInfo<'_>, &[Plan]) -> Selected + Send + Sync;

/// A declared plan: its own limiter (keys, policies, deny cache), headers
/// and 429 bodies.
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) limiter: Limiter,
    pub(crate) headers: HeaderTemplate,
    pub(crate) limited_bodies: Vec<Bytes>,
    /// The plan's key prefix on its store, held while the layer lives.
    pub(crate) _prefix_claim: PrefixClaim,
}

/// A layer's plans and how a request's is chosen.
pub(crate) struct Plans {
    pub(crate) select: Box<SelectFn>,
    pub(crate) list: Vec<Plan>,
    /// Requests that named an undeclared plan.
    pub(crate) unknown: AtomicU64,
    /// Logged once: a mistake in the application's mapping, not an event.
    pub(crate) unknown_logged: StateFlag,
}

impl Plans {
    /// The index of the request's plan: 0 for the default plan, `i + 1` for
    /// the declared plan `i`.
    pub(crate) fn choose(&self, info: &RequestInfo<'_>) -> usize {
        match (self.select)(info, &self.list) {
            Selected::Default => 0,
            Selected::Plan(index) => index + 1,
            Selected::Unknown(name) => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
                if self.unknown_logged.raise() {
                    // Its first 64 characters: it may come from a client.
                    let name: String = name.chars().take(64).collect();
                    tracing::warn!(
                        plan = ?name,
                        "rate limiter: plan_for named a plan the layer does not declare; \
                         counted under the default plan (logged once)"
                    );
                }
                0
            }
        }
    }
}

/// Boxes `select`, which names a plan (or none), as a [`SelectFn`].
pub(crate) fn selector<F, N>(select: F) -> Box<SelectFn>
where
    F: Fn(&RequestInfo<'_>) -> Option<N> + Send + Sync + 'static,
    N: AsRef<str>,
{
    Box::new(move |info: &RequestInfo<'_>, plans: &[Plan]| {
        let Some(name) = select(info) else {
            return Selected::Default;
        };
        let name = name.as_ref();
        match plans.iter().position(|plan| plan.name == name) {
            Some(index) => Selected::Plan(index),
            None if name == DEFAULT_PLAN => Selected::Default,
            None => Selected::Unknown(name.to_string()),
        }
    })
}
