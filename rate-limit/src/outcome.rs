//! Charging by outcome: a request is charged when it is admitted (so
//! concurrent requests cannot pass the limit together) and given back, all
//! or part, when its response is not one the layer charges.
//!
//! The refund is held by a [`PendingCharge`] from the admission on: when
//! the response comes it gives back what the response does not keep; when
//! the response future is dropped first (the client went away) or the
//! inner service fails, its `Drop` gives back the whole charge on a task of
//! its own. Either way it is given back once: the charge is taken out of
//! the guard by the first of them. An instance that dies mid-request gives
//! nothing back: the charge stands until its window ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_sync::StateFlag;
use http::{Extensions, HeaderMap, Response, StatusCode};

use crate::layer::Shared;
use crate::limiter::Charge;
use crate::telemetry;

/// What a `charge_if` / `charge_by_response` closure sees of a response.
///
/// Read its fields; build one (in a test) with [`ResponseInfo::new`]: fields
/// may be added.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ResponseInfo<'a> {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (a handler may put the cost it measured there).
    pub extensions: &'a Extensions,
}

impl<'a> ResponseInfo<'a> {
    /// What a closure sees of a response with these parts.
    pub fn new(status: StatusCode, headers: &'a HeaderMap, extensions: &'a Extensions) -> Self {
        ResponseInfo {
            status,
            headers,
            extensions,
        }
    }

    pub(crate) fn of<B>(response: &'a Response<B>) -> Self {
        ResponseInfo::new(response.status(), response.headers(), response.extensions())
    }
}

/// How much of an admitted request's charge (its cost, the second
/// argument) its response keeps.
pub(crate) type SettleFn = dyn Fn(&ResponseInfo<'_>, u64) -> u64 + Send + Sync;

/// The layer's count of refunds.
#[derive(Default)]
pub(crate) struct Refunds {
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Failing refunds: logged once per change.
    failing: StateFlag,
}

/// An admitted request's charge until its response settles it; given back
/// whole if dropped unsettled.
pub(crate) struct PendingCharge {
    shared: Arc<Shared>,
    plan: usize,
    charge: Option<Charge>,
}

impl PendingCharge {
    pub(crate) fn new(shared: Arc<Shared>, plan: usize, charge: Charge) -> Self {
        PendingCharge {
            shared,
            plan,
            charge: Some(charge),
        }
    }

    /// The units charged.
    pub(crate) fn cost(&self) -> u64 {
        self.charge.as_ref().map_or(0, Charge::cost)
    }

    /// Keeps `kept` units (at most the cost) and gives the rest back,
    /// awaiting the refund (on a task of its own: dropping this future
    /// leaves it running).
    pub(crate) async fn settle(mut self, kept: u64) {
        let Some(charge) = self.charge.take() else {
            return;
        };
        let units = charge.cost().saturating_sub(kept);
        if units == 0 {
            return;
        }
        if let Some(task) = give_back(self.shared.clone(), self.plan, charge, units) {
            let _ = task.await;
        }
    }
}

impl Drop for PendingCharge {
    fn drop(&mut self) {
        if let Some(charge) = self.charge.take() {
            let units = charge.cost();
            give_back(self.shared.clone(), self.plan, charge, units);
        }
    }
}

/// Spawns the refund of `units` of `charge`; `None` (the refund counted as
/// failed) outside a Tokio runtime.
fn give_back(
    shared: Arc<Shared>,
    plan: usize,
    charge: Charge,
    units: u64,
) -> Option<tokio::task::JoinHandle<()>> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        note(&shared, plan, false);
        return None;
    };
    Some(runtime.spawn(async move {
        let given = shared.plan(plan).limiter.refund(&charge, units).await;
        note(&shared, plan, given);
    }))
}

/// Counts a refund; a failed one is logged once per change, never an error
/// to the client.
fn note(shared: &Shared, plan: usize, given: bool) {
    let refunds = &shared.refunds;
    telemetry::refunded(shared.plan(plan).name, given);
    if given {
        refunds.done.fetch_add(1, Ordering::Relaxed);
        if refunds.failing.lower() {
            tracing::info!("rate limiter refunds work again");
        }
    } else {
        refunds.failed.fetch_add(1, Ordering::Relaxed);
        if refunds.failing.raise() {
            tracing::warn!(
                "rate limiter refund failed: the charge stands until its window ends \
                 (counted in refund_errors)"
            );
        }
    }
}
