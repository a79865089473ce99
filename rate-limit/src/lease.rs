//! [`LeaseGuard`]: the lease an admitted request holds on its client's
//! [concurrency limits](crate::Quota::concurrent), carried by the response
//! body and released when the body ends, fails or is dropped.
//!
//! **Released once, whatever happens.** The guard releases on the body's
//! end of stream or error, and in `Drop`: a response future dropped before
//! the inner service answered (the client hung up), an inner service
//! error, a body dropped half read. On Redis the release is a store call,
//! queued on a task of its own by `Drop`, so it survives the future or body
//! being dropped; without a Tokio runtime to run it (the guard dropped
//! outside one), and when the store cannot be reached, the lease expires
//! with its TTL instead: the bound on a leak, as for an instance that dies.
//!
//! **Renewed while it streams.** A body still yielding frames past half
//! its lease TTL renews the lease (its expiry a TTL from then, one store
//! call per half TTL, on a task of its own): a stream longer than the TTL
//! keeps its slot as long as it sends something at least once per TTL (a
//! Server-Sent Events keep-alive does). One silent for a whole TTL loses it.

use std::sync::Arc;

use crate::layer::Shared;
use crate::limiter::Lease;

/// The lease a response of a layer with a
/// [concurrency limit](crate::Quota::concurrent) holds, inside its body
/// ([`ResponseBody::Leased`](crate::ResponseBody::Leased)); released when
/// the body ends, fails or is dropped.
pub struct LeaseGuard {
    shared: Arc<Shared>,
    /// The plan whose limiter took the lease (0: the layer's own policies):
    /// it renews and releases it, on that plan's keys.
    plan: usize,
    lease: Option<Lease>,
    /// When the lease is due for renewal (the clock's monotonic µs).
    renew_at: u64,
}

impl LeaseGuard {
    pub(crate) fn new(shared: Arc<Shared>, plan: usize, lease: Lease) -> Self {
        let limiter = shared.plan(plan).limiter;
        let renew_at = limiter
            .monotonic_now()
            .saturating_add(limiter.renewal_interval_us());
        LeaseGuard {
            shared,
            plan,
            lease: Some(lease),
            renew_at,
        }
    }

    /// A frame of the body went out: renews the lease if it is due.
    pub(crate) fn on_frame(&mut self) {
        let Some(lease) = &self.lease else {
            return;
        };
        let limiter = self.shared.plan(self.plan).limiter;
        let now = limiter.monotonic_now();
        if now < self.renew_at {
            return;
        }
        self.renew_at = now.saturating_add(limiter.renewal_interval_us());
        let (keys, id) = lease.renewal(limiter);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (shared, plan) = (Arc::clone(&self.shared), self.plan);
            runtime.spawn(async move { shared.plan(plan).limiter.renew(&keys, id).await });
        }
    }

    /// Releases the lease, the first time only: at once in memory, on a
    /// task of its own on Redis.
    pub(crate) fn release(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let limiter = self.shared.plan(self.plan).limiter;
        let Some(lease) = limiter.release_now(lease) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (shared, plan) = (Arc::clone(&self.shared), self.plan);
                runtime.spawn(async move { shared.plan(plan).limiter.release(lease).await });
            }
            Err(_) => tracing::debug!(
                prefix = %limiter.prefix,
                "lease dropped outside a Tokio runtime: it expires with its TTL"
            ),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("held", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}
