//! The event relay: price updates published by any process on Redis reach
//! this process's subscribers and, through `/events` (Server-Sent Events),
//! browsers; [`PAGE`] is a small page that shows them live with the cache's
//! hit rate.
//!
//! Each browser connection is one [`Subscription`]: they share the handle's
//! one pub/sub connection, and a closed tab unsubscribes. When updates may
//! have been missed (Redis restarted, or the browser read too slowly), the
//! browser gets a `gap` event and reloads the prices it shows. `/?updates=N`
//! closes the page's stream after N updates.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use cache_core::Cache;
use cache_core::events::{EventError, Subscription};
use futures_util::{Stream, StreamExt};

use crate::portfolio::{PRICES_CHANNEL, PriceUpdate};

/// Updates a browser may lag behind before it gets a `gap` and reloads.
pub const BROWSER_BUFFER: usize = 64;

/// Subscribes to the price updates for one browser connection.
pub async fn subscribe(cache: &Cache) -> Result<Subscription<PriceUpdate>, EventError> {
    cache
        .events()
        .with_buffer(BROWSER_BUFFER)
        .subscribe::<PriceUpdate>(&[PRICES_CHANNEL])
        .await
}

/// The subscription as Server-Sent Events: `price` events with the update
/// as JSON, `gap` events when updates may have been missed; a malformed
/// message is logged and skipped. A comment every 15 s keeps proxies from
/// closing a quiet stream.
pub fn server_sent_events(
    subscription: Subscription<PriceUpdate>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = subscription.filter_map(|item| async move {
        match item {
            Ok(update) => Event::default().event("price").json_data(&update).ok(),
            Err(gap @ EventError::Gap { .. }) => {
                Some(Event::default().event("gap").data(gap.to_string()))
            }
            Err(other) => {
                tracing::warn!(error = %other, "skipping a price event");
                None
            }
        }
    });
    Sse::new(events.map(Ok)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
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

async function reload() {
  const symbols = Array.from(rows.rows, (row) => row.cells[0].textContent);
  if (symbols.length === 0) return;
  const prices = await (await fetch("/prices?assets=" + symbols.join(","))).json();
  for (const [symbol, price] of Object.entries(prices)) show(symbol, price);
}

// `?updates=N`: close the stream after N updates (a kiosk snapshot, or a
// headless browser that dumps the page once its connections are done).
const limit = Number(new URLSearchParams(location.search).get("updates")) || 0;
let seen = 0;
const events = new EventSource("/events");
events.onopen = () => { document.getElementById("stream").textContent = "live"; };
events.onerror = () => { document.getElementById("stream").textContent = "reconnecting"; };
events.addEventListener("price", (event) => {
  const update = JSON.parse(event.data);
  show(update.symbol, update.price);
  refreshStats();
  seen += 1;
  if (limit > 0 && seen >= limit) {
    events.close();
    document.getElementById("stream").textContent = "closed after " + seen + " updates";
  }
});
events.addEventListener("gap", () => {
  document.getElementById("notice").textContent = "Some updates were missed; prices reloaded.";
  reload();
});
refreshStats();
</script>
</body>
</html>
"#;
