//! Typed events over Redis pub/sub: [`EventBus`], reached as
//! [`Cache::events`](crate::Cache::events).
//!
//! Events are JSON on the wire (exactly `serde_json::to_vec` of the value),
//! so a Python or Node subscriber reads them. A [`Subscription`] is a
//! [`Stream`](futures_util::Stream) of `Result<T, EventError>`:
//!
//! - pub/sub is **at most once**: when messages may have been lost the
//!   stream says so with one [`EventError::Gap`], after a lost connection
//!   (the subscription is back by itself) or when its bounded buffer
//!   overflowed (the oldest messages are dropped, never the connection
//!   blocked);
//! - a message that does not decode as `T` is an [`EventError::Malformed`]
//!   item; the stream goes on. So is one over the handle's
//!   [`max_value_bytes`](crate::Cache::max_value_bytes), whose bytes are
//!   dropped as they arrive, before any buffer: a flood of huge messages
//!   costs buffers nothing;
//! - dropping the stream unsubscribes (the server-side subscription is
//!   reference-counted per channel and pattern).
//!
//! All subscriptions of a handle share one dedicated RESP3 pub/sub
//! connection, opened by the first subscribe. On Redis Cluster channels are
//! sharded (`SPUBLISH` / `SSUBSCRIBE`), which has no patterns. The in-memory
//! backend gives the same semantics within the process: its store's own
//! pub/sub, shared by the handle's clones and its `dedicated()` handles.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::events::EventError> {
//! use cache_core::events::EventError;
//! use futures_util::StreamExt;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Price { symbol: String, price: f64 }
//!
//! let cache = cache_core::Cache::in_memory();
//! let bus = cache.events();
//! let mut prices = bus.subscribe_patterns::<Price>(&["market:*"]).await?;
//! bus.publish("market:BTC", &Price { symbol: "BTC".into(), price: 72000.0 }).await?;
//! match prices.next().await {
//!     Some(Ok(price)) => assert_eq!(price.symbol, "BTC"),
//!     Some(Err(EventError::Gap { .. })) => { /* messages may have been missed: resync */ }
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
pub use crate::stats::{EventConnection, EventStats};
use crate::store::pubsub::{Listener, Next, Payload, Topic};

/// Default length of a subscription's buffer, in messages.
pub const DEFAULT_EVENT_BUFFER: usize = 1024;

/// Longest channel name or pattern accepted, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 1024;

/// What went wrong with an event, or what a subscriber must know.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// Messages may have been missed before the next item: pub/sub is at
    /// most once. Resynchronise from the source of truth if that matters.
    #[error(
        "events may have been missed: {dropped} dropped from a full buffer{}",
        if *disconnected { ", and the connection to Redis was lost" } else { "" }
    )]
    Gap {
        /// Messages this subscription dropped because its buffer was full
        /// (its consumer was slower than the publishers).
        dropped: u64,
        /// The connection to Redis was lost and is back: an unknown number
        /// of messages published meanwhile were not received.
        disconnected: bool,
    },
    /// A message that does not decode as the subscription's type; the
    /// stream goes on with the next one.
    #[error("event on channel `{channel}` could not be decoded: {reason}")]
    Malformed {
        /// The channel it was published on.
        channel: String,
        /// Why it did not decode.
        reason: String,
    },
    /// A channel name or pattern that is empty or too long; nothing was sent.
    #[error("invalid event channel: {reason}")]
    InvalidChannel {
        /// What is wrong with it.
        reason: String,
    },
    /// An event over the handle's [`max_value_bytes`](crate::Cache::max_value_bytes); nothing was sent.
    #[error("event of {bytes} bytes is over the cap of {max} bytes")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The cap.
        max: usize,
    },
    /// The value could not be encoded as JSON.
    #[error("event could not be encoded as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// Pattern subscriptions on Redis Cluster: sharded pub/sub has no patterns.
    #[error(
        "pattern subscriptions are not available on Redis Cluster (sharded pub/sub has no patterns)"
    )]
    PatternsUnsupported,
    /// Redis could not be reached, refused the command or timed out.
    #[error(transparent)]
    Cache(#[from] crate::error::Error),
}

/// What an [`EventError`] is about, for callers that branch on it.
///
/// New kinds may be added: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventErrorKind {
    /// Messages may have been missed ([`EventError::Gap`]).
    Gap,
    /// A message that does not decode ([`EventError::Malformed`]).
    Malformed,
    /// A channel or an event the bus refuses; nothing was sent
    /// ([`EventError::InvalidChannel`], [`EventError::TooLarge`]).
    InvalidArgument,
    /// The value could not be encoded ([`EventError::Encode`]).
    Encode,
    /// Not available on this backend ([`EventError::PatternsUnsupported`]).
    Unsupported,
    /// The store failed ([`EventError::Cache`]): its own kind.
    Cache(crate::error::ErrorKind),
}

impl EventError {
    /// The kind of error, to match on.
    ///
    /// ```
    /// use cache_core::events::{EventError, EventErrorKind};
    ///
    /// let gap = EventError::Gap { dropped: 3, disconnected: false };
    /// assert_eq!(gap.kind(), EventErrorKind::Gap);
    /// ```
    pub fn kind(&self) -> EventErrorKind {
        match self {
            EventError::Gap { .. } => EventErrorKind::Gap,
            EventError::Malformed { .. } => EventErrorKind::Malformed,
            EventError::InvalidChannel { .. } | EventError::TooLarge { .. } => {
                EventErrorKind::InvalidArgument
            }
            EventError::Encode(_) => EventErrorKind::Encode,
            EventError::PatternsUnsupported => EventErrorKind::Unsupported,
            EventError::Cache(err) => EventErrorKind::Cache(err.kind()),
        }
    }

    /// `true` for [`EventError::Gap`].
    pub fn is_gap(&self) -> bool {
        matches!(self, EventError::Gap { .. })
    }
}

impl Cache {
    /// The handle's typed event bus (Redis pub/sub, or in process on the
    /// in-memory backend): see [`events`](crate::events).
    pub fn events(&self) -> EventBus {
        EventBus::new(self.clone())
    }
}

/// Publishes and subscribes to typed events: see the [module docs](self).
/// Cheap to clone; clones and the handle's clones share one connection.
#[derive(Clone)]
pub struct EventBus {
    cache: Cache,
    buffer: usize,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("cache", &self.cache)
            .field("buffer", &self.buffer)
            .finish()
    }
}

impl EventBus {
    pub(crate) fn new(cache: Cache) -> EventBus {
        EventBus {
            cache,
            buffer: DEFAULT_EVENT_BUFFER,
        }
    }

    /// The same bus, whose next subscriptions buffer up to `messages`
    /// messages each (default [`DEFAULT_EVENT_BUFFER`]; at least 1). A full
    /// buffer drops its oldest message and its stream yields a
    /// [`EventError::Gap`] with the count.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::events::EventError> {
    /// use cache_core::events::EventError;
    /// use futures_util::StreamExt;
    ///
    /// let bus = cache_core::Cache::in_memory().events();
    /// let mut slow = bus.clone().with_buffer(2).subscribe::<u32>(&["ticks"]).await?;
    /// for tick in 1..=3 {
    ///     bus.publish("ticks", &tick).await?; // the third drops the oldest, never blocks
    /// }
    /// assert!(matches!(slow.next().await, Some(Err(EventError::Gap { dropped: 1, disconnected: false }))));
    /// assert_eq!(slow.next().await.transpose()?, Some(2));
    /// assert_eq!(slow.next().await.transpose()?, Some(3));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_buffer(mut self, messages: usize) -> EventBus {
        self.buffer = messages.max(1);
        self
    }

    /// Publishes `event` as JSON on `channel` (`PUBLISH`, `SPUBLISH` on a
    /// cluster), within the handle's timeout and under its circuit breaker;
    /// never retried once sent (it could arrive twice). Returns how many
    /// subscribers Redis delivered it to (connections; on the in-memory
    /// backend, subscriptions). Channels are not namespaced: they are the
    /// contract with other programs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::events::EventError> {
    /// use cache_core::events::EventError;
    ///
    /// let bus = cache_core::Cache::in_memory().events();
    /// assert_eq!(bus.publish("orders", &"nobody listens").await?, 0);
    /// let _orders = bus.subscribe::<String>(&["orders"]).await?;
    /// assert_eq!(bus.publish("orders", &"order 1").await?, 1);
    /// assert!(matches!(bus.publish("", &1).await, Err(EventError::InvalidChannel { .. })));
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        event: &T,
    ) -> Result<u64, EventError> {
        check_channel(channel)?;
        let payload = serde_json::to_vec(event).map_err(EventError::Encode)?;
        let max = self.cache.max_value_bytes();
        if payload.len() > max {
            return Err(EventError::TooLarge {
                bytes: payload.len(),
                max,
            });
        }
        Ok(self.cache.publish_bytes(channel, &payload).await?)
    }

    /// Subscribes to events of type `T` on `channels` (exact names). The
    /// server has confirmed the subscription when this returns, so anything
    /// published afterwards is received.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::events::EventError> {
    /// use cache_core::events::EventError;
    /// use futures_util::StreamExt;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Order { id: u64 }
    ///
    /// let bus = cache_core::Cache::in_memory().events();
    /// let mut orders = bus.subscribe::<Order>(&["trading:orders"]).await?;
    /// bus.publish("trading:orders", &Order { id: 7 }).await?;
    /// bus.publish("trading:orders", "not an order").await?; // another program's mistake
    /// bus.publish("trading:orders", &Order { id: 8 }).await?;
    /// assert_eq!(orders.next().await.transpose()?, Some(Order { id: 7 }));
    /// assert!(matches!(orders.next().await, Some(Err(EventError::Malformed { .. }))));
    /// assert_eq!(orders.next().await.transpose()?, Some(Order { id: 8 })); // the stream goes on
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        channels: &[&str],
    ) -> Result<Subscription<T>, EventError> {
        let topics = topics(channels, |c| Topic::Channel(c.to_string()))?;
        self.subscribe_topics(topics).await
    }

    /// Subscribes to events of type `T` on every channel matching one of
    /// `patterns` (Redis globs: `market:*`, `h?llo`, `[ab]*`). Not on Redis
    /// Cluster: [`EventError::PatternsUnsupported`].
    pub async fn subscribe_patterns<T: DeserializeOwned>(
        &self,
        patterns: &[&str],
    ) -> Result<Subscription<T>, EventError> {
        if !self.cache.subscribes_patterns() {
            return Err(EventError::PatternsUnsupported);
        }
        let topics = topics(patterns, |p| Topic::Pattern(p.to_string()))?;
        self.subscribe_topics(topics).await
    }

    async fn subscribe_topics<T: DeserializeOwned>(
        &self,
        topics: Vec<Topic>,
    ) -> Result<Subscription<T>, EventError> {
        let listener = self.cache.subscribe_bytes(topics, self.buffer).await?;
        Ok(Subscription {
            listener,
            max_bytes: self.cache.max_value_bytes(),
            _type: PhantomData,
        })
    }
}

fn check_channel(channel: &str) -> Result<(), EventError> {
    if channel.is_empty() {
        return Err(EventError::InvalidChannel {
            reason: "a channel name or pattern cannot be empty".into(),
        });
    }
    if channel.len() > MAX_CHANNEL_BYTES {
        return Err(EventError::InvalidChannel {
            reason: format!(
                "{} bytes, over the limit of {MAX_CHANNEL_BYTES}",
                channel.len()
            ),
        });
    }
    Ok(())
}

fn topics(names: &[&str], topic: impl Fn(&str) -> Topic) -> Result<Vec<Topic>, EventError> {
    if names.is_empty() {
        return Err(EventError::InvalidChannel {
            reason: "no channel given".into(),
        });
    }
    let mut topics: Vec<Topic> = Vec::with_capacity(names.len());
    for name in names {
        check_channel(name)?;
        let topic = topic(name);
        // A name given twice is one subscription, not two copies of each message.
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    Ok(topics)
}

/// A stream of the events of type `T` on some channels or patterns, from
/// [`EventBus::subscribe`] or [`EventBus::subscribe_patterns`].
///
/// Never ends by itself. Dropping it unsubscribes: the server-side
/// subscription goes when the last subscription of the handle to that
/// channel or pattern is dropped.
pub struct Subscription<T> {
    /// Its end in the store's pub/sub: dropped with it, which unsubscribes.
    listener: Listener,
    max_bytes: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.listener.id())
            .finish()
    }
}

impl<T: DeserializeOwned> futures_util::Stream for Subscription<T> {
    type Item = Result<T, EventError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match std::task::ready!(self.listener.poll_next(cx)) {
            Next::Gap {
                dropped,
                disconnected,
            } => {
                let gaps = &self.listener.counters().gaps;
                gaps.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::event_gap(disconnected);
                Err(EventError::Gap {
                    dropped,
                    disconnected,
                })
            }
            Next::Message(message) => match &message.payload {
                Payload::Bytes(bytes) => serde_json::from_slice(bytes).map_err(|err| {
                    let malformed = &self.listener.counters().malformed;
                    malformed.fetch_add(1, Ordering::Relaxed);
                    EventError::Malformed {
                        channel: message.channel.to_string(),
                        reason: err.to_string(),
                    }
                }),
                // Counted as malformed where it arrived (see `Hub::deliver`).
                Payload::Oversized(bytes) => Err(EventError::Malformed {
                    channel: message.channel.to_string(),
                    reason: format!(
                        "{bytes} bytes, over the cap of {} bytes; dropped as it arrived",
                        self.max_bytes
                    ),
                }),
            },
        };
        Poll::Ready(Some(item))
    }
}
