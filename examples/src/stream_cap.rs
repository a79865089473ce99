//! A cap on the event streams open at once in this instance.
//!
//! A Server-Sent Events stream holds a connection (a file descriptor) and a
//! little memory for as long as the browser keeps it open, so without a cap
//! many clients opening idle `/events` streams take every connection slot
//! and the service stops answering anyone else. A [`StreamPermit`] counts
//! one open stream until it is dropped; [`StreamPermit::hold`] puts it in
//! the stream, hence in the response body, so it is released when the
//! stream ends, when the client goes away, or when the request is cancelled
//! before the stream started.
//!
//! The cap per client is not here: it is the rate limiter's concurrency
//! limit ([`rate_limit::Quota::concurrent`]), which holds across every
//! instance sharing the store. This one is the instance's own resource.
//!
//! ```
//! use examples::stream_cap::StreamCap;
//!
//! let cap = StreamCap::new(1);
//! let first = cap.try_open().unwrap();
//! assert!(cap.try_open().is_none());
//! drop(first); // the stream ended
//! assert!(cap.try_open().is_some());
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open streams, at most the cap: a semaphore of that many permits, shared
/// (an `Arc`) by the handler and the permits it hands out.
#[derive(Debug)]
pub struct StreamCap {
    total: usize,
    permits: Arc<Semaphore>,
}

impl StreamCap {
    /// At most `total` streams open at once (at least 1).
    pub fn new(total: usize) -> Arc<StreamCap> {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(StreamCap {
            total,
            permits: Arc::new(Semaphore::new(total)),
        })
    }

    /// Counts one more stream, or `None` at the cap.
    pub fn try_open(&self) -> Option<StreamPermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(StreamPermit { _permit: permit })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.total - self.permits.available_permits()
    }
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub struct StreamPermit {
    _permit: OwnedSemaphorePermit,
}

impl StreamPermit {
    /// `stream`, with this permit: counted until the stream ends or is dropped.
    pub fn hold<S: Stream>(self, stream: S) -> Held<S> {
        Held {
            inner: stream,
            permit: Some(self),
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream holding its [`StreamPermit`] ([`StreamPermit::hold`]).
    #[derive(Debug)]
    pub struct Held<S> {
        #[pin]
        inner: S,
        permit: Option<StreamPermit>,
    }
}

impl<S: Stream> Stream for Held<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let next = this.inner.poll_next(cx);
        if matches!(next, Poll::Ready(None)) {
            this.permit.take();
        }
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_capped_and_released_on_drop() {
        let cap = StreamCap::new(2);
        let a = cap.try_open().unwrap();
        let b = cap.try_open().unwrap();
        assert!(cap.try_open().is_none());
        assert_eq!(cap.open_streams(), 2);
        drop(a);
        let c = cap.try_open().unwrap();
        drop((b, c));
        assert_eq!(cap.open_streams(), 0);
    }

    #[tokio::test]
    async fn a_held_stream_counts_until_it_ends_or_is_dropped() {
        use futures_util::StreamExt;

        let cap = StreamCap::new(2);
        let mut ending = cap
            .try_open()
            .unwrap()
            .hold(futures_util::stream::iter([1, 2]));
        let endless = cap
            .try_open()
            .unwrap()
            .hold(futures_util::stream::pending::<i32>());
        assert_eq!(cap.open_streams(), 2);
        assert_eq!(ending.next().await, Some(1));
        assert_eq!(cap.open_streams(), 2, "not ended yet");
        assert_eq!(ending.next().await, Some(2));
        assert_eq!(ending.next().await, None);
        assert_eq!(cap.open_streams(), 1, "released at its end");
        drop(endless);
        assert_eq!(cap.open_streams(), 0, "released when dropped (client gone)");
        drop(ending);
        assert_eq!(cap.open_streams(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_request_releases_its_permit() {
        let cap = StreamCap::new(1);
        let permit = cap.try_open().unwrap();
        // A handler future holding the permit, dropped before it finished.
        let request = tokio::spawn(async move {
            let _permit = permit;
            std::future::pending::<()>().await;
        });
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        assert_eq!(cap.open_streams(), 0);
        assert!(cap.try_open().is_some());
    }
}
