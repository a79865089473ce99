//! The event relay: price updates published by any process on Redis reach
//! this process's [`Relay`] and, through `/events` (Server-Sent Events),
//! browsers; [`PAGE`] is a small page that shows them live with the cache's
//! hit rate.
//!
//! The relay is one [`Subscription`](cache_core::events::Subscription) per
//! process, started with the service, that appends every update to a
//! bounded log ([`REPLAY_EVENTS`] entries) and numbers it. Each browser stream reads that log from its own position,
//! so every event it gets carries an `id:` (`{run}-{seq}`: the relay's run,
//! random per process start, and the entry's number), and a browser that
//! reconnects sends the last one back as `Last-Event-ID` (EventSource does it
//! by itself). The stream then resumes right after it: what was published
//! while the browser was away is sent first, in order. When that cannot be
//! done exactly (the id is from another process or an earlier run, or so old
//! that the log no longer holds what followed it, or the browser read too
//! slowly) the stream says so with a `gap` event and goes on from the newest
//! entry; so does the relay's own subscription when Redis was lost. On a
//! `gap` the page reloads the prices it shows. A reconnecting browser is
//! therefore either caught up or told, never silently behind.
//!
//! Why ids rather than sending the whole current state on every reconnect:
//! the state a page shows (the last price of every symbol published) is
//! nowhere to be read as a whole (the cache has one key per symbol and
//! nothing lists the symbols), and keeping it would need a structure in Redis
//! that every publisher updates atomically. The log needs nothing outside
//! this process and is bounded, and everything it cannot replay is announced.
//!
//! `/?updates=N` closes the page's stream after N updates.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive};
use cache_core::Cache;
use cache_core::events::EventError;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use crate::portfolio::{PRICES_CHANNEL, PriceUpdate};

/// Entries the relay keeps: how far behind a browser may fall, or how many
/// updates may be published while it reconnects, before it gets a `gap`.
pub const REPLAY_EVENTS: usize = 1024;

/// Entries a stream takes from the log at a time (the log's lock is held
/// that long).
const BATCH: usize = 64;

/// A comment this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long the relay waits before subscribing again after a failure.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// What the log holds.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// An update, as published.
    Price(PriceUpdate),
    /// Updates may have been lost here (the bus's gap, or the subscription
    /// ended); the message, the `gap` event's data.
    Gap(String),
}

/// The position of an event in one relay's log: `{run:x}-{seq}` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventId {
    run: u64,
    seq: u64,
}

impl EventId {
    fn parse(text: &str) -> Option<EventId> {
        let (run, seq) = text.trim().split_once('-')?;
        Some(EventId {
            run: u64::from_str_radix(run, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{}", self.run, self.seq)
    }
}

/// The last [`REPLAY_EVENTS`] entries, numbered from 1; `head` is the
/// number of the newest (0 before the first).
#[derive(Debug, Default)]
struct Log {
    head: u64,
    entries: VecDeque<Entry>,
}

/// What a stream at some position finds in the log.
#[derive(Debug, PartialEq)]
enum Read {
    /// The entries after the position (at most [`BATCH`]), numbered from
    /// `first`; empty when the stream is at the head.
    Entries { first: u64, entries: Vec<Entry> },
    /// Entries after the position were dropped from the log: the oldest
    /// still there is numbered `oldest`.
    Lagged { oldest: u64 },
}

impl Log {
    fn push(&mut self, entry: Entry) -> u64 {
        if self.entries.len() == REPLAY_EVENTS {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
        self.head += 1;
        self.head
    }

    /// Number of the oldest entry held (`head + 1` when empty).
    fn oldest(&self) -> u64 {
        self.head + 1 - self.entries.len() as u64
    }

    /// Whether a stream that has seen up to `seq` can go on exactly: every
    /// entry after it is still held.
    fn holds_after(&self, seq: u64) -> bool {
        // An id comes from the client: no arithmetic on it may overflow.
        seq <= self.head && seq.saturating_add(1) >= self.oldest()
    }

    fn read_after(&self, seq: u64) -> Read {
        let oldest = self.oldest();
        if seq + 1 < oldest {
            return Read::Lagged { oldest };
        }
        let skip = usize::try_from(seq + 1 - oldest).unwrap_or(usize::MAX);
        Read::Entries {
            first: seq + 1,
            entries: self
                .entries
                .iter()
                .skip(skip)
                .take(BATCH)
                .cloned()
                .collect(),
        }
    }
}

/// The process's one subscription to [`PRICES_CHANNEL`], its log, and the
/// browser streams reading it. Started once per process with
/// [`Relay::start`]; cheap to share (`Arc`).
#[derive(Debug)]
pub struct Relay {
    run: u64,
    log: Mutex<Log>,
    /// The log's head, sent after each push: what idle streams wait on.
    head: watch::Sender<u64>,
    subscribed: AtomicBool,
}

impl Relay {
    /// Subscribes to the price updates on `cache`'s event bus, in a task that
    /// runs as long as the process (and subscribes again, recording a gap,
    /// should its subscription fail or end). Needs a Tokio runtime.
    pub fn start(cache: &Cache) -> Arc<Relay> {
        let relay = Arc::new(Relay::new());
        tokio::spawn(Arc::clone(&relay).subscribe(cache.clone()));
        relay
    }

    fn new() -> Relay {
        Relay {
            // Random: ids of another process or an earlier run never match.
            run: fastrand::u64(..),
            log: Mutex::default(),
            head: watch::Sender::new(0),
            subscribed: AtomicBool::new(false),
        }
    }

    async fn subscribe(self: Arc<Self>, cache: Cache) {
        let mut subscribed_before = false;
        let mut failing = false;
        loop {
            match cache
                .events()
                .subscribe::<PriceUpdate>(&[PRICES_CHANNEL])
                .await
            {
                Ok(mut subscription) => {
                    if failing {
                        tracing::info!("price updates subscribed again");
                        failing = false;
                    }
                    if subscribed_before {
                        self.push(Entry::Gap(
                            "events may have been missed: the relay's subscription was lost \
                             and is back"
                                .into(),
                        ));
                    }
                    subscribed_before = true;
                    self.subscribed.store(true, Ordering::Release);
                    while let Some(item) = subscription.next().await {
                        match item {
                            Ok(update) => self.push(Entry::Price(update)),
                            Err(gap @ EventError::Gap { .. }) => {
                                self.push(Entry::Gap(gap.to_string()))
                            }
                            Err(other) => tracing::warn!(error = %other, "skipping a price event"),
                        }
                    }
                    // The bus ends a subscription only when it is shut down.
                    self.subscribed.store(false, Ordering::Release);
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "could not subscribe to price updates; retrying every second");
                        failing = true;
                    }
                }
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // Entries are pushed whole under the lock: a poisoned log is consistent.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, entry: Entry) {
        let head = self.lock().push(entry);
        self.head.send_replace(head);
    }

    /// Whether the relay is subscribed (streams opened now miss nothing).
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Entries received so far (updates and gaps).
    pub fn received(&self) -> u64 {
        self.lock().head
    }

    fn id(&self, seq: u64) -> String {
        EventId { run: self.run, seq }.to_string()
    }

    /// A browser's stream of Server-Sent Events: `price` events with the
    /// update as JSON and `gap` events, each with its `id:`. With the
    /// `Last-Event-ID` of an earlier stream it resumes after that event (or
    /// starts with a `gap` if it cannot); without one it starts with an
    /// event that carries only the current id, so that even a browser that
    /// reconnects before its first update resumes exactly. Its position is
    /// fixed here: what is published after this call is in the stream.
    pub fn stream(
        self: &Arc<Self>,
        last_event_id: Option<&str>,
    ) -> impl Stream<Item = Event> + Send + 'static {
        let (position, first) = {
            let log = self.lock();
            let resume = last_event_id
                .and_then(EventId::parse)
                .filter(|id| id.run == self.run && log.holds_after(id.seq));
            match (resume, last_event_id) {
                (Some(id), _) => (id.seq, None),
                (None, None) => (log.head, Some(Event::default().id(self.id(log.head)))),
                (None, Some(_)) => (
                    log.head,
                    Some(gap_event(
                        self.id(log.head),
                        "events may have been missed: Last-Event-ID is from another process, \
                         an earlier run, or too long ago",
                    )),
                ),
            }
        };
        let reader = Reader {
            relay: Arc::clone(self),
            position,
            head: self.head.subscribe(),
            pending: first.into_iter().collect(),
        };
        futures_util::stream::unfold(reader, |mut reader| async move {
            let event = reader.next().await?;
            Some((event, reader))
        })
    }
}

/// One stream's position in the log.
struct Reader {
    relay: Arc<Relay>,
    /// The number of the last entry sent.
    position: u64,
    head: watch::Receiver<u64>,
    pending: VecDeque<Event>,
}

impl Reader {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            // Marked seen before the log is read: a push after this wakes
            // `changed` below, so no update is left waiting.
            self.head.borrow_and_update();
            let read = self.relay.lock().read_after(self.position);
            match read {
                Read::Lagged { oldest } => {
                    self.position = oldest - 1;
                    let id = self.relay.id(self.position);
                    self.pending.push_back(gap_event(
                        id,
                        "events may have been missed: this stream fell behind, and the \
                         relay dropped what it had not read",
                    ));
                }
                Read::Entries { first, entries } if !entries.is_empty() => {
                    for (seq, entry) in (first..).zip(entries) {
                        self.position = seq;
                        let id = self.relay.id(seq);
                        let event = match entry {
                            Entry::Price(update) => {
                                Event::default().event("price").id(id).json_data(&update)
                            }
                            Entry::Gap(reason) => Ok(gap_event(id, &reason)),
                        };
                        match event {
                            Ok(event) => self.pending.push_back(event),
                            Err(err) => tracing::warn!(error = %err, "skipping a price event"),
                        }
                    }
                }
                Read::Entries { .. } => self.head.changed().await.ok()?,
            }
        }
    }
}

fn gap_event(id: String, message: &str) -> Event {
    Event::default().event("gap").id(id).data(message)
}

/// A relay stream as the `/events` response, with a comment every 15 s
/// that keeps proxies from closing a quiet stream.
pub fn server_sent_events(
    events: impl Stream<Item = Event> + Send + 'static,
) -> axum::response::sse::Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    axum::response::sse::Sse::new(events.map(Ok)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// The live page, served at `/`: prices from `/events`, the hit rate from `/stats`.
pub const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Live prices</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; }
  table { border-collapse: collapse; }
  td, th { padding: .25rem 1rem; border-bottom: 1px solid #ddd; text-align: right; }
  #notice { color: #a60; }
</style>
</head>
<body>
<h1>Live prices</h1>
<p>Stream: <span id="stream">connecting</span> &middot; cache hit rate: <span id="hit-rate">-</span></p>
<p id="notice"></p>
<table>
  <thead><tr><th>Asset</th><th>Price</th></tr></thead>
  <tbody id="prices"></tbody>
</table>
<script>
"use strict";
const rows = document.getElementById("prices");
const setStatus = (text) => { document.getElementById("stream").textContent = text; };
// Per symbol, the number of the stream update that last set it: a reload
// answered after a newer update must not overwrite it.
const updatedAt = new Map();
let updates = 0;

function show(symbol, price) {
  let cell = document.getElementById("price-" + symbol);
  if (!cell) {
    const row = rows.insertRow();
    row.insertCell().textContent = symbol;
    cell = row.insertCell();
    cell.id = "price-" + symbol;
  }
  cell.textContent = price;
}

async function refreshStats() {
  try {
    const stats = await (await fetch("/stats")).json();
    document.getElementById("hit-rate").textContent =
      (100 * stats.hit_rate).toFixed(1) + " %";
  } catch (err) {
    document.getElementById("hit-rate").textContent = "unavailable";
  }
}

// Updates may have been missed: say so, and read the shown prices again.
async function resync() {
  document.getElementById("notice").textContent =
    "Some updates may have been missed; the prices shown were reloaded.";
  const symbols = Array.from(rows.rows, (row) => row.cells[0].textContent);
  if (symbols.length === 0) return;
  const asked = updates;
  const prices = await (await fetch("/prices?assets=" + symbols.join(","))).json();
  for (const [symbol, price] of Object.entries(prices)) {
    if ((updatedAt.get(symbol) ?? -1) < asked) show(symbol, price);
  }
}

// `?updates=N`: close the stream after N updates (a kiosk snapshot, or a
// headless browser that dumps the page once its connections are done).
const limit = Number(new URLSearchParams(location.search).get("updates")) || 0;
let seen = 0;

// EventSource reconnects by itself after a lost connection, sending the id
// of the last event it got (Last-Event-ID): the server resumes after it, or
// sends `gap`. It gives up on an answer other than 200 (429 or 503: too many
// streams): then a new stream is opened later, which cannot resume, so the
// page resyncs.
function connect(afterRefusal) {
  const events = new EventSource("/events");
  events.onopen = () => {
    setStatus("live");
    if (afterRefusal) resync();
    afterRefusal = false;
  };
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) {
      setStatus("refused; retrying in 10 s");
      setTimeout(() => connect(true), 10000);
    } else {
      setStatus("reconnecting");
    }
  };
  events.addEventListener("price", (event) => {
    const update = JSON.parse(event.data);
    updates += 1;
    updatedAt.set(update.symbol, updates);
    show(update.symbol, update.price);
    refreshStats();
    seen += 1;
    if (limit > 0 && seen >= limit) {
      events.close();
      setStatus("closed after " + seen + " updates");
    }
  });
  events.addEventListener("gap", resync);
}
connect(false);
refreshStats();
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portfolio::Symbol;
    use rust_decimal::Decimal;

    fn update(symbol: &str, price: i64) -> PriceUpdate {
        PriceUpdate {
            symbol: Symbol::parse(symbol).unwrap(),
            price: Decimal::from(price),
        }
    }

    #[test]
    fn event_ids_read_back_and_refuse_anything_else() {
        let id = EventId {
            run: 0xbeef,
            seq: 42,
        };
        assert_eq!(id.to_string(), "beef-42");
        assert_eq!(EventId::parse(" beef-42 "), Some(id));
        for bad in ["", "beef", "-42", "beef-", "xyz-1", "beef-4.2", "1-2-3"] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_log_keeps_the_newest_entries_and_says_when_a_reader_lagged() {
        let mut log = Log::default();
        assert!(log.holds_after(0), "an empty log: nothing missed yet");
        assert!(!log.holds_after(1), "a position beyond the head is foreign");
        for price in 1..=(REPLAY_EVENTS as i64 + 10) {
            log.push(Entry::Price(update("BTC", price)));
        }
        let head = REPLAY_EVENTS as u64 + 10;
        assert_eq!(log.head, head);
        assert_eq!(log.oldest(), 11);
        assert!(log.holds_after(10) && log.holds_after(head));
        assert!(!log.holds_after(9), "entry 10 was dropped");
        assert_eq!(log.read_after(9), Read::Lagged { oldest: 11 });
        match log.read_after(head - 2) {
            Read::Entries { first, entries } => {
                assert_eq!(first, head - 1);
                assert_eq!(
                    entries,
                    vec![
                        Entry::Price(update("BTC", head as i64 - 1)),
                        Entry::Price(update("BTC", head as i64)),
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        match log.read_after(10) {
            Read::Entries { first, entries } => {
                assert_eq!((first, entries.len()), (11, BATCH), "a batch at a time");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            log.read_after(head),
            Read::Entries {
                first: head + 1,
                entries: Vec::new()
            }
        );
    }

    /// The text of the next event, within a second.
    async fn next_text(stream: &mut (impl Stream<Item = Event> + Unpin)) -> String {
        let event = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("an event within a second")
            .expect("the stream goes on");
        // Event's Display is not public: render it as the response would.
        let body = axum::response::IntoResponse::into_response(server_sent_events(
            futures_util::stream::iter([event]),
        ))
        .into_body();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_stream_resumes_after_its_last_event_id_or_says_it_cannot() {
        let relay = Arc::new(Relay::new());
        let run = format!("{:x}", relay.run);
        relay.push(Entry::Price(update("BTC", 1)));

        let mut fresh = Box::pin(relay.stream(None));
        assert_eq!(next_text(&mut fresh).await, format!("id: {run}-1\n\n"));
        relay.push(Entry::Price(update("ETH", 2)));
        assert_eq!(
            next_text(&mut fresh).await,
            format!("event: price\nid: {run}-2\ndata: {{\"symbol\":\"ETH\",\"price\":\"2\"}}\n\n")
        );
        drop(fresh);

        // Published while the browser was away: sent first, in order.
        relay.push(Entry::Price(update("SOL", 3)));
        relay.push(Entry::Gap(
            "events may have been missed: the connection to Redis was lost".into(),
        ));
        let mut resumed = Box::pin(relay.stream(Some(&format!("{run}-2"))));
        assert!(
            next_text(&mut resumed)
                .await
                .contains(&format!("id: {run}-3\ndata: {{\"symbol\":\"SOL\""))
        );
        let gap = next_text(&mut resumed).await;
        assert!(
            gap.starts_with(&format!("event: gap\nid: {run}-4\n")),
            "{gap}"
        );

        // An id of another run, or one the log no longer covers: a gap at the head.
        for foreign in [
            "0-2".to_string(),
            format!("{run}-99"),
            format!("{run}-{}", u64::MAX),
            "garbage".into(),
        ] {
            let mut stream = Box::pin(relay.stream(Some(&foreign)));
            let text = next_text(&mut stream).await;
            assert!(
                text.starts_with(&format!("event: gap\nid: {run}-4\n")),
                "{foreign}: {text}"
            );
        }
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_the_log_gets_a_gap_then_the_rest() {
        let relay = Arc::new(Relay::new());
        let run = format!("{:x}", relay.run);
        let mut slow = Box::pin(relay.stream(None));
        assert_eq!(next_text(&mut slow).await, format!("id: {run}-0\n\n"));
        for price in 0..(REPLAY_EVENTS as i64 + 1) {
            relay.push(Entry::Price(update("BTC", price)));
        }
        let gap = next_text(&mut slow).await;
        assert!(
            gap.starts_with(&format!("event: gap\nid: {run}-1\n")),
            "{gap}"
        );
        let next = next_text(&mut slow).await;
        assert!(next.contains(&format!("id: {run}-2\n")), "{next}");
    }

    #[tokio::test]
    async fn the_relay_numbers_what_is_published_on_the_bus() {
        let cache = Cache::in_memory();
        let relay = Relay::start(&cache);
        let subscribed = async {
            while !relay.is_subscribed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), subscribed)
            .await
            .expect("subscribed");
        let mut stream = Box::pin(relay.stream(None));
        next_text(&mut stream).await;
        cache
            .events()
            .publish(PRICES_CHANNEL, &update("BTC", 7))
            .await
            .unwrap();
        let text = next_text(&mut stream).await;
        assert!(
            text.contains("\"symbol\":\"BTC\",\"price\":\"7\""),
            "{text}"
        );
        assert_eq!(relay.received(), 1);
    }
}
