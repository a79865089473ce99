//! Pub/sub, as a store gives it to the event bus: publish bytes on a
//! channel, listen to channels and patterns through a bounded queue.
//!
//! Both backends deliver through one [`Hub`] per store: which listener
//! listens to which topic, and each listener's queue. In process the hub is
//! the whole of it (the in-memory store publishes straight into it); on
//! Redis the messages arrive as pushes on one pub/sub connection
//! ([`redis`]) and land in the hub the same way. Dropping a [`Listener`]
//! unsubscribes it.

mod hub;
pub(crate) mod redis;

use std::sync::Arc;
use std::task::{Context, Poll};

pub(crate) use hub::{Counters, Hub, Message, Next, Payload, Queue, Topic};

/// A store's pub/sub as its listeners see it: the hub they are registered
/// in, and the server that must hear of topics nobody listens to any more.
pub(crate) trait PubSub: Send + Sync + 'static {
    /// Where the listeners are registered and the messages delivered.
    fn hub(&self) -> &Hub;
    /// Nobody here listens to `topics` any more: the server stops sending
    /// them. Called from a listener's drop, so it never waits.
    fn release(self: Arc<Self>, topics: Vec<Topic>);
}

/// In process the hub is the whole pub/sub: no server to tell.
impl PubSub for Hub {
    fn hub(&self) -> &Hub {
        self
    }

    fn release(self: Arc<Self>, _topics: Vec<Topic>) {}
}

/// One subscription's end: its bounded queue, registered in a store's hub
/// under its topics. Dropping it unsubscribes: the server-side
/// subscription goes with the last listener of its topic.
pub(crate) struct Listener {
    id: u64,
    queue: Arc<Queue>,
    pubsub: Arc<dyn PubSub>,
}

impl Listener {
    /// Registers a listener to `topics` with a queue of `capacity`
    /// messages; also returns the topics nobody listened to before (the
    /// server must subscribe them).
    pub(crate) fn register(
        pubsub: Arc<dyn PubSub>,
        topics: Vec<Topic>,
        capacity: usize,
    ) -> (Listener, Vec<Topic>) {
        let (id, queue, new) = pubsub.hub().register(topics, capacity);
        (Listener { id, queue, pubsub }, new)
    }

    /// What tells this listener from the others of its store.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The next message or gap; never ends.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        self.queue.poll_next(cx)
    }

    /// The counters of the store's pub/sub, for what the subscription counts.
    pub(crate) fn counters(&self) -> &Counters {
        &self.pubsub.hub().counters
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let unused = self.pubsub.hub().remove(self.id);
        if !unused.is_empty() {
            Arc::clone(&self.pubsub).release(unused);
        }
    }
}
