//! Every store call of a handle: under its timeout, retries and circuit
//! breaker, the in-memory store's at once; a refused login noted once.

use std::time::Duration;

use super::Cache;
use crate::error::{Error, Result};
use crate::resilience::Idempotence;
use crate::store::Store;

impl Cache {
    pub(crate) async fn run<'a, T, F>(&'a self, idempotence: Idempotence, call: F) -> Result<T>
    where
        F: FnMut(&'a dyn Store) -> crate::store::StoreFuture<'a, T>,
    {
        self.run_within(idempotence, self.timeout(), call).await
    }

    /// [`run`](Self::run) with a deadline of its own, at most the handle's
    /// timeout; a zero one fails at once as a timeout, without a store call.
    pub(super) async fn run_within<'a, T, F>(
        &'a self,
        idempotence: Idempotence,
        timeout: Duration,
        call: F,
    ) -> Result<T>
    where
        F: FnMut(&'a dyn Store) -> crate::store::StoreFuture<'a, T>,
    {
        let mut call = call;
        let store: &'a dyn Store = self.inner.store.as_ref();
        if self.inner.reach.in_process() {
            // No network: nothing to time out, retry or break.
            let result = call(store).await;
            if result.is_err() {
                self.inner.counters.record_error();
            }
            return result;
        }
        let timeout = timeout.min(self.timeout());
        let started = tokio::time::Instant::now();
        let mut result = self
            .inner
            .resilience
            .run(
                &self.inner.counters,
                idempotence,
                timeout,
                || store.ping(),
                || call(store),
            )
            .await;
        if let Err(Error::Connection(cause)) = &result
            && cause
                .redis()
                .is_some_and(|cause| cause.kind() == redis::ErrorKind::ClusterConnectionNotFound)
        {
            // The cluster client does not say why it has no connection: a
            // refused password must not pass for an outage. Within what is
            // left of the deadline.
            let left = timeout.saturating_sub(started.elapsed());
            if let Ok(Ok(Some(reply))) = tokio::time::timeout(left, store.refused_login()).await {
                result = Err(Error::Auth(reply.into()));
            }
        }
        self.note_auth(&result);
        result
    }

    /// Logs a refusal of the credentials once per change, at error level, with
    /// the user name (never the password): unlike a slow store, it will not
    /// get better by itself.
    pub(super) fn note_auth<T>(&self, result: &Result<T>) {
        let failing = &self.inner.auth_failing;
        match result {
            Err(Error::Auth(reply)) => {
                if failing.raise() {
                    tracing::error!(
                        backend = %self.inner.backend,
                        user = self.user_name(),
                        reply = %reply,
                        "the cache store refused the credentials: check REDIS_USERNAME / REDIS_PASSWORD and the user's ACL"
                    );
                }
            }
            Ok(_) => {
                if failing.lower() {
                    tracing::info!(backend = %self.inner.backend, "the cache store accepts the credentials again");
                }
            }
            Err(_) => {}
        }
    }

    /// The ACL user the handle logs in as (`default` when none is configured).
    pub(super) fn user_name(&self) -> &str {
        self.inner.backend.user_name().unwrap_or("default")
    }
}
