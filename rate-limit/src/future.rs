//! The response future of [`RateLimit`](crate::RateLimit).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use crate::response::ResponseBody;

/// The response future of [`RateLimit`](crate::RateLimit): ready at once when the layer
/// answers without awaiting anything (a client the local deny cache already
/// rejects, a request it cannot key), otherwise the store check and the inner
/// service's call.
pub struct ResponseFuture<B, E> {
    kind: Kind<B, E>,
}

type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

enum Kind<B, E> {
    Ready(std::future::Ready<Answer<B, E>>),
    Pending(Pin<Box<dyn Future<Output = Answer<B, E>> + Send>>),
}

impl<B, E> ResponseFuture<B, E> {
    /// A response the layer gives without awaiting anything.
    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        ResponseFuture {
            kind: Kind::Ready(std::future::ready(Ok(response))),
        }
    }

    /// The store check and the inner service's call.
    pub(crate) fn pending(future: impl Future<Output = Answer<B, E>> + Send + 'static) -> Self {
        ResponseFuture {
            kind: Kind::Pending(Box::pin(future)),
        }
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Answer<B, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both kinds are `Unpin`: the ready value and a box.
        match &mut self.get_mut().kind {
            Kind::Ready(ready) => Pin::new(ready).poll(cx),
            Kind::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<B, E> std::fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Ready(_) => "ready",
            Kind::Pending(_) => "pending",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
