//! The failure budget of one memoized call tree: a memoized call and the
//! memoized calls its body makes one after another (in the same task) lose
//! at most the outermost handle's call timeout in all to cache operations
//! that fail; once it is spent they skip the cache.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use crate::cache::Cache;
use crate::error::Result;

tokio::task_local! {
    /// How much longer the memoized calls in the body of the outermost one
    /// may wait on cache operations that fail; set while that body runs.
    static BUDGET: Cell<Duration>;
}

/// The failure budget one memoized call spends from.
pub(super) enum Budget {
    /// The outermost memoized call of the task keeps its own, and lends what
    /// is left to its body (for the memoized calls the body makes) while the
    /// body runs. A hit never runs a body, so it never enters a task-local scope.
    Own(Duration),
    /// A call inside such a body spends the task's.
    Task,
}

impl Budget {
    pub(super) fn for_this_task(cache: &Cache) -> Budget {
        if BUDGET.try_with(|_| ()).is_ok() {
            Budget::Task
        } else {
            Budget::Own(cache.timeout())
        }
    }

    fn left(&self) -> Duration {
        match self {
            Budget::Own(left) => *left,
            Budget::Task => BUDGET.try_with(Cell::get).unwrap_or(Duration::MAX),
        }
    }

    fn charge(&mut self, spent: Duration) {
        match self {
            Budget::Own(left) => *left = left.saturating_sub(spent),
            Budget::Task => {
                let _ = BUDGET.try_with(|budget| budget.set(budget.get().saturating_sub(spent)));
            }
        }
    }

    /// Runs one cache operation within what is left, and charges the budget
    /// with the time it took if it failed.
    pub(super) async fn spend<T, F, Fut>(&mut self, op: F) -> Result<T>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // Tokio's clock, as the handle's timeouts use it.
        let started = tokio::time::Instant::now();
        let result = op(self.left()).await;
        if result.is_err() {
            self.charge(started.elapsed());
        }
        result
    }

    /// Runs the function's body, lending it the budget if it is this call's own.
    pub(super) async fn run<F: Future>(&mut self, body: F) -> F::Output {
        let Budget::Own(left) = self else {
            return body.await;
        };
        let mut scoped = std::pin::pin!(BUDGET.scope(Cell::new(*left), body));
        let output = scoped.as_mut().await;
        if let Some(rest) = scoped.as_mut().take_value() {
            *left = rest.get();
        }
        output
    }
}
