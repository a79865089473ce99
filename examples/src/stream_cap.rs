//! A cap on the event streams open at once: per client and in total.
//!
//! A Server-Sent Events stream holds a connection (a file descriptor) and a
//! little memory for as long as the browser keeps it open, so without a cap
//! one client opening thousands of idle `/events` streams takes every
//! connection slot and the service stops answering anyone else. A
//! [`StreamPermit`] counts one open stream until it is dropped;
//! [`StreamPermit::hold`] puts it in the stream, hence in the response
//! body, so it is released when the stream ends, when
//! the client goes away, or when the request is cancelled before the stream
//! started.
//!
//! The rate limiter counts requests per window, which does not bound how
//! many stay open (a stream is one request however long it lasts), so this
//! small counter stands in until rate-limit has a concurrency limit; the
//! client key is the rate limiter's ([`rate_limit::PeerIp`]), so both agree
//! on who a client is.
//!
//! ```
//! use examples::stream_cap::{CapReached, StreamCap};
//!
//! let cap = StreamCap::new(1, 10);
//! let first = cap.try_open("ip:203.0.113.9".into()).unwrap();
//! assert_eq!(cap.try_open("ip:203.0.113.9".into()).unwrap_err(), CapReached::Client);
//! drop(first); // the stream ended
//! assert!(cap.try_open("ip:203.0.113.9".into()).is_ok());
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::Stream;

/// Open streams per client and in total, each at most its cap. Shared (an
/// `Arc`) by the handler and the permits it hands out.
#[derive(Debug)]
pub struct StreamCap {
    per_client: usize,
    total: usize,
    open: Mutex<Open>,
}

/// The counts. A client has an entry only while it has a stream open, so
/// the map never holds more entries than the total cap.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<String, usize>,
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    /// The client has its cap of streams open already: a `429`.
    #[error("too many event streams open from this client")]
    Client,
    /// The service has its cap of streams open already: a `503`.
    #[error("too many event streams open")]
    Total,
}

impl StreamCap {
    /// At most `per_client` streams per client key and `total` in all (each
    /// at least 1).
    pub fn new(per_client: usize, total: usize) -> Arc<StreamCap> {
        Arc::new(StreamCap {
            per_client: per_client.max(1),
            total: total.max(1),
            open: Mutex::default(),
        })
    }

    /// Counts one more stream of `client`, or says which cap it would pass.
    pub fn try_open(self: &Arc<Self>, client: String) -> Result<StreamPermit, CapReached> {
        let mut open = self.lock();
        let of_client = open.by_client.get(&client).copied().unwrap_or(0);
        if of_client >= self.per_client {
            return Err(CapReached::Client);
        }
        if open.total >= self.total {
            return Err(CapReached::Total);
        }
        open.total += 1;
        open.by_client.insert(client.clone(), of_client + 1);
        Ok(StreamPermit {
            cap: Arc::clone(self),
            client,
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.lock().total
    }

    /// Clients with at least one stream open now.
    pub fn clients(&self) -> usize {
        self.lock().by_client.len()
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // The counts are updated whole under the lock: a poisoned one is consistent.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub struct StreamPermit {
    cap: Arc<StreamCap>,
    client: String,
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

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.cap.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_client.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_and_the_total_are_capped_and_released_on_drop() {
        let cap = StreamCap::new(2, 3);
        let a1 = cap.try_open("a".into()).unwrap();
        let a2 = cap.try_open("a".into()).unwrap();
        assert_eq!(cap.try_open("a".into()).unwrap_err(), CapReached::Client);
        let b1 = cap.try_open("b".into()).unwrap();
        assert_eq!(cap.try_open("c".into()).unwrap_err(), CapReached::Total);
        assert_eq!(
            cap.try_open("a".into()).unwrap_err(),
            CapReached::Client,
            "the client's own cap is named first"
        );
        assert_eq!((cap.open_streams(), cap.clients()), (3, 2));

        drop(a1);
        let c1 = cap.try_open("c".into()).unwrap();
        assert_eq!((cap.open_streams(), cap.clients()), (3, 3));
        drop((a2, b1, c1));
        assert_eq!(
            (cap.open_streams(), cap.clients()),
            (0, 0),
            "no entry is left for a client without a stream"
        );
    }

    #[test]
    fn the_map_never_holds_more_clients_than_the_total_cap() {
        let cap = StreamCap::new(1, 100);
        let mut permits = Vec::new();
        for client in 0..10_000 {
            if let Ok(permit) = cap.try_open(format!("ip:{client}")) {
                permits.push(permit);
            }
        }
        assert_eq!(permits.len(), 100);
        assert_eq!(cap.clients(), 100);
        permits.clear();
        assert_eq!(cap.clients(), 0);
    }

    #[tokio::test]
    async fn a_held_stream_counts_until_it_ends_or_is_dropped() {
        use futures_util::StreamExt;

        let cap = StreamCap::new(2, 2);
        let mut ending = cap
            .try_open("a".into())
            .unwrap()
            .hold(futures_util::stream::iter([1, 2]));
        let endless = cap
            .try_open("a".into())
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
        let cap = StreamCap::new(1, 1);
        let permit = cap.try_open("a".into()).unwrap();
        // A handler future holding the permit, dropped before it finished.
        let request = tokio::spawn(async move {
            let _permit = permit;
            std::future::pending::<()>().await;
        });
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        assert_eq!(cap.open_streams(), 0);
        assert!(cap.try_open("a".into()).is_ok());
    }
}
