//! The in-process side of pub/sub: which listener listens to which
//! channel or pattern, and each listener's bounded queue.
//!
//! Both backends deliver through it: Redis pushes land here from the
//! pub/sub connection, the in-memory store publishes straight into it.
//! A delivery never waits for a consumer: a full queue drops its oldest
//! message and remembers how many it dropped, so a slow consumer costs the
//! connection nothing. A payload over the size cap is dropped before it
//! reaches any queue (only its size goes on), so memory stays bounded by
//! queue length x size cap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use crate::stats::{EventConnection, EventStats};
// shuttle's primitives under `--cfg shuttle` (see the tests at the end).
use crate::sync::primitives::{Mutex, lock};

/// What a subscription listens to: a channel name, or a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Channel(String),
    Pattern(String),
}

/// One message as received: shared by every queue it is delivered to.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) channel: Arc<str>,
    pub(crate) payload: Payload,
}

/// What a message carries into the queues.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    /// The bytes as published, at most the size cap.
    Bytes(Arc<[u8]>),
    /// A payload of this many bytes, over the cap: dropped where it
    /// arrived, so that idle subscriptions never hold it.
    Oversized(usize),
}

enum Entry {
    Message(Message),
    /// The connection came back after a loss: messages may have been missed here.
    Reconnected,
}

/// What a subscription yields next.
pub(crate) enum Next {
    Message(Message),
    /// `dropped` messages were dropped from the full queue; `disconnected`:
    /// the connection was lost, so an unknown number more may be missing.
    Gap {
        dropped: u64,
        disconnected: bool,
    },
}

/// One subscription's bounded queue.
pub(crate) struct Queue {
    capacity: usize,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    entries: VecDeque<Entry>,
    /// Messages dropped since the last gap was yielded.
    dropped: u64,
    /// A reconnect marker was itself dropped from the full queue.
    disconnected: bool,
    waker: Option<Waker>,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Queue {
            capacity: capacity.max(1),
            state: Mutex::default(),
        }
    }

    /// Appends, dropping the oldest entry when full; returns the messages dropped (0 or 1).
    fn push(&self, entry: Entry) -> u64 {
        // Every update below leaves the state whole: a poisoned lock is usable.
        let mut state = lock(&self.state);
        let mut dropped = 0;
        if state.entries.len() >= self.capacity {
            match state.entries.pop_front() {
                Some(Entry::Message(_)) => {
                    state.dropped += 1;
                    dropped = 1;
                }
                Some(Entry::Reconnected) => state.disconnected = true,
                None => {}
            }
        }
        state.entries.push_back(entry);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        dropped
    }

    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut state = lock(&self.state);
        // Dropped entries were the oldest: the gap comes before what is left.
        if state.dropped > 0 || state.disconnected {
            let gap = Next::Gap {
                dropped: std::mem::take(&mut state.dropped),
                disconnected: std::mem::take(&mut state.disconnected),
            };
            return Poll::Ready(gap);
        }
        match state.entries.pop_front() {
            Some(Entry::Message(message)) => Poll::Ready(Next::Message(message)),
            Some(Entry::Reconnected) => Poll::Ready(Next::Gap {
                dropped: 0,
                disconnected: true,
            }),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Every listener of one store, by topic; the reference counts of the
/// server-side subscriptions are the lengths of these lists.
#[derive(Default)]
struct Registry {
    next_id: u64,
    queues: HashMap<u64, (Arc<Queue>, Vec<Topic>)>,
    listeners: HashMap<Topic, Vec<u64>>,
}

/// The bus's counters, read by [`Cache::stats`](crate::Cache::stats):
/// `published` counted by the store's publish, `gaps` and `malformed` by
/// the subscription that yields them, the rest here as messages arrive.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

const IDLE: u8 = 0;
const CONNECTED: u8 = 1;
const DISCONNECTED: u8 = 2;

/// The registry, the counters and the connection state of one store's
/// pub/sub: in process, all of it.
#[derive(Default)]
pub(crate) struct Hub {
    registry: Mutex<Registry>,
    pub(crate) counters: Counters,
    connection: AtomicU8,
    /// Woken when the connection is lost (see `redis::revive`), and when the bus closes.
    pub(crate) lost: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Hub {
    /// Registers a subscription to `topics`; returns its id, its queue and
    /// the topics nobody listened to before (the server must subscribe them).
    pub(crate) fn register(
        &self,
        topics: Vec<Topic>,
        capacity: usize,
    ) -> (u64, Arc<Queue>, Vec<Topic>) {
        let mut registry = lock(&self.registry);
        let id = registry.next_id;
        registry.next_id += 1;
        let queue = Arc::new(Queue::new(capacity));
        let mut new = Vec::new();
        for topic in &topics {
            let listeners = registry.listeners.entry(topic.clone()).or_default();
            if listeners.is_empty() {
                new.push(topic.clone());
            }
            listeners.push(id);
        }
        registry.queues.insert(id, (queue.clone(), topics));
        (id, queue, new)
    }

    /// Removes a subscription; returns the topics nobody listens to any more.
    pub(crate) fn remove(&self, id: u64) -> Vec<Topic> {
        let mut registry = lock(&self.registry);
        let Some((_, topics)) = registry.queues.remove(&id) else {
            return Vec::new();
        };
        let mut unused = Vec::new();
        for topic in topics {
            if let Some(listeners) = registry.listeners.get_mut(&topic) {
                listeners.retain(|listener| *listener != id);
                if listeners.is_empty() {
                    registry.listeners.remove(&topic);
                    unused.push(topic);
                }
            }
        }
        unused
    }

    /// Of `topics`, those nobody listens to now.
    pub(crate) fn unused(&self, topics: Vec<Topic>) -> Vec<Topic> {
        let registry = lock(&self.registry);
        topics
            .into_iter()
            .filter(|topic| !registry.listeners.contains_key(topic))
            .collect()
    }

    /// Every topic someone listens to.
    pub(crate) fn topics(&self) -> Vec<Topic> {
        lock(&self.registry).listeners.keys().cloned().collect()
    }

    /// What [`Cache::stats`](crate::Cache::stats) reports of the bus.
    pub(crate) fn stats(&self) -> EventStats {
        let counters = &self.counters;
        EventStats {
            subscriptions: lock(&self.registry).queues.len() as u64,
            connection: self.connection(),
            published: counters.published.load(Ordering::Relaxed),
            received: counters.received.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            gaps: counters.gaps.load(Ordering::Relaxed),
            malformed: counters.malformed.load(Ordering::Relaxed),
            reconnects: counters.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Delivers a message received on `topic`; returns the queues reached.
    pub(crate) fn deliver(&self, topic: &Topic, message: &Message) -> u64 {
        let registry = lock(&self.registry);
        let Some(listeners) = registry.listeners.get(topic) else {
            return 0;
        };
        self.push_to(&registry, listeners, message)
    }

    /// The in-memory store's publish: to the channel's listeners and to
    /// every matching pattern's, as Redis does; returns the queues reached.
    pub(crate) fn publish(&self, channel: &str, payload: &[u8]) -> u64 {
        let message = Message {
            channel: Arc::from(channel),
            payload: Payload::Bytes(Arc::from(payload)),
        };
        let reached = self.deliver_matching(&message);
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        reached
    }

    fn deliver_matching(&self, message: &Message) -> u64 {
        let registry = lock(&self.registry);
        let mut reached = 0;
        for (topic, listeners) in &registry.listeners {
            let listens = match topic {
                Topic::Channel(channel) => **channel == *message.channel,
                Topic::Pattern(pattern) => {
                    glob_match(pattern.as_bytes(), message.channel.as_bytes())
                }
            };
            if listens {
                reached += self.push_to(&registry, listeners, message);
            }
        }
        reached
    }

    fn push_to(&self, registry: &Registry, listeners: &[u64], message: &Message) -> u64 {
        let mut reached = 0;
        for id in listeners {
            if let Some((queue, _)) = registry.queues.get(id) {
                let dropped = queue.push(Entry::Message(message.clone()));
                self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                reached += 1;
            }
        }
        self.counters.received.fetch_add(reached, Ordering::Relaxed);
        if let Payload::Oversized(_) = message.payload {
            // Counted here, as it arrives: an idle subscription shows it too.
            self.counters
                .malformed
                .fetch_add(reached, Ordering::Relaxed);
        }
        reached
    }

    /// The first connection is up.
    pub(crate) fn connected(&self) {
        let _ =
            self.connection
                .compare_exchange(IDLE, CONNECTED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The pub/sub connection broke: until it is back, messages are lost.
    /// Returns `false` when it was already known to be down.
    pub(crate) fn disconnected(&self) -> bool {
        let was = self.connection.swap(DISCONNECTED, Ordering::AcqRel);
        if was != DISCONNECTED {
            self.lost.notify_one();
        }
        was != DISCONNECTED
    }

    /// The server confirmed a subscription: after a loss, that is the
    /// connection back with its subscriptions, so every subscription gets a
    /// gap marker, in order before any message of the new connection.
    /// Returns `true` when this ended a loss.
    pub(crate) fn confirmed(&self) -> bool {
        if self
            .connection
            .compare_exchange(DISCONNECTED, CONNECTED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.connected();
            return false;
        }
        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        let registry = lock(&self.registry);
        for (queue, _) in registry.queues.values() {
            let dropped = queue.push(Entry::Reconnected);
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        true
    }

    /// The bus is gone: its reviving task ends.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lost.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn is_disconnected(&self) -> bool {
        self.connection.load(Ordering::Acquire) == DISCONNECTED
    }

    fn connection(&self) -> EventConnection {
        match self.connection.load(Ordering::Acquire) {
            CONNECTED => EventConnection::Connected,
            DISCONNECTED => EventConnection::Disconnected,
            _ => EventConnection::Idle,
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscriptions", &lock(&self.registry).queues.len())
            .field("connection", &self.connection())
            .finish()
    }
}

/// Redis' glob matching (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a-z]`,
/// and `\` to escape, for the in-memory store's patterns. Iterative with
/// one backtrack point, so a pattern of many stars stays linear-ish.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, text[t])
                        && matched
                    {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                byte => {
                    if byte == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|byte| *byte == b'*')
}

/// `[...]` at `pattern[start]` against `byte`: whether it matches, and
/// where the pattern goes on. An unclosed class runs to the end, as in Redis.
fn class_match(pattern: &[u8], start: usize, byte: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == byte;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (low, high) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            matched |= (low..=high).contains(&byte);
            i += 3;
        } else {
            matched |= pattern[i] == byte;
            i += 1;
        }
    }
    Some((matched != negate, (i + 1).min(pattern.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("market:*", "market:BTC", true),
            ("market:*", "market:", true),
            ("market:*", "trading:orders", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("h[ae]llo", "hello", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("*:*:end", "x:y:z:end", true),
            ("*a*b", "xxaxxbxb", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                *expected,
                "{pattern} ~ {text}"
            );
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_reports_how_many() {
        let queue = Queue::new(2);
        let message = |n: u8| Message {
            channel: Arc::from("c"),
            payload: Payload::Bytes(Arc::from(vec![n])),
        };
        for n in 0..5 {
            queue.push(Entry::Message(message(n)));
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            queue.poll_next(&mut cx),
            Poll::Ready(Next::Gap {
                dropped: 3,
                disconnected: false
            })
        ));
        for n in 3..5 {
            match queue.poll_next(&mut cx) {
                Poll::Ready(Next::Message(Message {
                    payload: Payload::Bytes(bytes),
                    ..
                })) => assert_eq!(*bytes, [n]),
                _ => panic!("message {n} expected"),
            }
        }
        assert!(queue.poll_next(&mut cx).is_pending());
    }
}

/// The hub under shuttle's scheduler (`--cfg shuttle`, run by
/// `scripts/test.sh`): a subscription with a queue of 2 while messages are
/// delivered and the connection is lost and comes back, all at once. Under
/// every schedule tried, the consumer is woken for what arrives (shuttle
/// fails a run where every task waits), sees the messages in order, and
/// accounts for every one of them (received, or counted in a gap), and the
/// loss shows as a gap that says so.
#[cfg(all(test, shuttle))]
mod interleavings {
    use super::*;
    use crate::sync::primitives::explore;

    const MESSAGES: u8 = 4;

    #[test]
    fn deliveries_a_reconnect_and_a_consumer() {
        explore(|| {
            shuttle::future::block_on(async {
                let hub = Arc::new(Hub::default());
                let topic = Topic::Channel("c".to_owned());
                let (_, queue, _) = hub.register(vec![topic.clone()], 2);
                hub.connected();
                let publisher = shuttle::future::spawn({
                    let hub = hub.clone();
                    async move {
                        for n in 0..MESSAGES {
                            let message = Message {
                                channel: Arc::from("c"),
                                payload: Payload::Bytes(Arc::from(vec![n])),
                            };
                            hub.deliver(&topic, &message);
                        }
                    }
                });
                let connection = shuttle::future::spawn({
                    let hub = hub.clone();
                    async move {
                        assert!(hub.disconnected());
                        assert!(hub.confirmed(), "the loss ends");
                    }
                });
                let (mut received, mut dropped, mut lost) = (Vec::new(), 0, false);
                while received.len() as u64 + dropped < u64::from(MESSAGES) || !lost {
                    match std::future::poll_fn(|cx| queue.poll_next(cx)).await {
                        Next::Message(Message {
                            payload: Payload::Bytes(bytes),
                            ..
                        }) => received.push(bytes[0]),
                        Next::Message(_) => panic!("only small payloads were sent"),
                        Next::Gap {
                            dropped: n,
                            disconnected,
                        } => {
                            dropped += n;
                            lost |= disconnected;
                        }
                    }
                }
                publisher.await.expect("the publisher");
                connection.await.expect("the connection");
                assert!(received.windows(2).all(|w| w[0] < w[1]), "{received:?}");
                assert_eq!(received.len() as u64 + dropped, u64::from(MESSAGES));
                assert_eq!(
                    hub.counters.dropped.load(Ordering::Relaxed),
                    dropped,
                    "the bus counts what the gaps report"
                );
            });
        });
    }
}
