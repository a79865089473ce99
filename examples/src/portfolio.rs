//! The asset-cache pattern of trading and wallet services.
//!
//! - prices per asset under `asset:{symbol}:current_price`, 60 s;
//! - a user's balances under `user:{id}:balances`, 5 min;
//! - derived per-user values under `user:{id}:summary:*`, all dropped with one
//!   `invalidate_prefix` when a balance changes;
//! - bulk lookups deduplicated and read in one round trip (`get_many`), the
//!   misses recomputed from the source and written back in one (`set_many`).
//!
//! The cache is never the source of truth: any cache error falls back to the
//! source, so Redis being down costs latency, never a wrong answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cache_core::Cache;
use serde::{Deserialize, Serialize};

/// Lifetime of a cached price.
pub const PRICE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of cached balances and summaries (a change invalidates them sooner).
pub const USER_TTL: Duration = Duration::from_secs(300);

/// An asset symbol from user input: 1 to 16 of `A-Z0-9`, so it can go into a
/// key as it is without reaching another key space.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Symbol(String);

impl Symbol {
    /// Validates and upper-cases a symbol.
    pub fn parse(input: &str) -> Option<Symbol> {
        let symbol = input.trim().to_ascii_uppercase();
        let valid = (1..=16).contains(&symbol.len())
            && symbol
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        valid.then_some(Symbol(symbol))
    }

    /// The symbol text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The source of truth for balances (a database in a real service).
#[derive(Debug, Default)]
pub struct Ledger {
    balances: RwLock<HashMap<u64, BTreeMap<Symbol, f64>>>,
    reads: AtomicU64,
}

impl Ledger {
    fn balances(&self, user: u64) -> BTreeMap<Symbol, f64> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let balances = self
            .balances
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        balances.get(&user).cloned().unwrap_or_default()
    }

    fn set(&self, user: u64, asset: Symbol, amount: f64) {
        let mut balances = self
            .balances
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        balances.entry(user).or_default().insert(asset, amount);
    }
}

/// The source of truth for prices (an exchange API in a real service):
/// deterministic per symbol, so tests can check the arithmetic.
#[derive(Debug, Default)]
pub struct PriceFeed {
    reads: AtomicU64,
}

impl PriceFeed {
    /// One call to the feed for several symbols.
    fn prices(&self, symbols: &[Symbol]) -> Vec<f64> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        symbols.iter().map(price_of).collect()
    }
}

/// The feed's price of a symbol: 1 to 1000, fixed per symbol.
pub fn price_of(symbol: &Symbol) -> f64 {
    let hash = symbol
        .as_str()
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    1.0 + (hash % 99_900) as f64 / 100.0
}

/// A user's valuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// User id.
    pub user: u64,
    /// Sum of balance times price.
    pub total: f64,
    /// Per asset: balance, price, value.
    pub positions: Vec<Position>,
}

/// One asset of a summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Asset symbol.
    pub asset: Symbol,
    /// Units held.
    pub balance: f64,
    /// Current price.
    pub price: f64,
    /// Balance times price.
    pub value: f64,
}

/// How often the sources were read: what the cache saves.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SourceReads {
    /// Ledger reads.
    pub ledger: u64,
    /// Price feed calls.
    pub feed: u64,
}

/// The service: sources plus the cache in front of them.
#[derive(Debug)]
pub struct Portfolio {
    cache: Cache,
    ledger: Ledger,
    feed: PriceFeed,
}

fn price_key(symbol: &Symbol) -> String {
    format!("asset:{}:current_price", symbol.as_str())
}

fn balances_key(user: u64) -> String {
    format!("user:{user}:balances")
}

fn summary_prefix(user: u64) -> String {
    format!("user:{user}:summary:")
}

impl Portfolio {
    /// A service over `cache`, with empty sources.
    pub fn new(cache: Cache) -> Self {
        Portfolio {
            cache,
            ledger: Ledger::default(),
            feed: PriceFeed::default(),
        }
    }

    /// The cache handle.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Source reads so far.
    pub fn source_reads(&self) -> SourceReads {
        SourceReads {
            ledger: self.ledger.reads.load(Ordering::Relaxed),
            feed: self.feed.reads.load(Ordering::Relaxed),
        }
    }

    /// Current prices of `symbols` (duplicates read once): one cache round
    /// trip for all, one feed call and one cache write for the misses.
    pub async fn prices(&self, symbols: &[Symbol]) -> BTreeMap<Symbol, f64> {
        let unique: Vec<Symbol> = symbols
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let keys: Vec<String> = unique.iter().map(price_key).collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let cached: Vec<Option<f64>> = match self.cache.get_many(&key_refs).await {
            Ok(values) => values,
            Err(err) => {
                tracing::debug!(error = %err, "price cache unavailable; reading the feed");
                vec![None; unique.len()]
            }
        };
        let mut prices = BTreeMap::new();
        let mut missing = Vec::new();
        for (symbol, price) in unique.into_iter().zip(cached) {
            match price {
                Some(price) => {
                    prices.insert(symbol, price);
                }
                None => missing.push(symbol),
            }
        }
        if !missing.is_empty() {
            let fresh = self.feed.prices(&missing);
            let keys: Vec<String> = missing.iter().map(price_key).collect();
            let entries: Vec<(&str, f64)> = keys
                .iter()
                .map(String::as_str)
                .zip(fresh.iter().copied())
                .collect();
            if let Err(err) = self.cache.set_many(&entries, Some(PRICE_TTL)).await {
                tracing::debug!(error = %err, "could not cache prices");
            }
            prices.extend(missing.into_iter().zip(fresh));
        }
        prices
    }

    /// A user's balances, from the cache or the ledger.
    pub async fn balances(&self, user: u64) -> BTreeMap<Symbol, f64> {
        let key = balances_key(user);
        if let Ok(Some(balances)) = self.cache.get(&key).await {
            return balances;
        }
        let balances = self.ledger.balances(user);
        let _ = self.cache.set(&key, &balances, Some(USER_TTL)).await;
        balances
    }

    /// A user's valuation, from the cache or recomputed from balances and prices.
    pub async fn summary(&self, user: u64) -> Summary {
        let key = format!("{}valuation", summary_prefix(user));
        if let Ok(Some(summary)) = self.cache.get(&key).await {
            return summary;
        }
        let balances = self.balances(user).await;
        let symbols: Vec<Symbol> = balances.keys().cloned().collect();
        let prices = self.prices(&symbols).await;
        let positions: Vec<Position> = balances
            .into_iter()
            .map(|(asset, balance)| {
                let price = prices.get(&asset).copied().unwrap_or(0.0);
                Position {
                    asset,
                    balance,
                    price,
                    value: balance * price,
                }
            })
            .collect();
        let summary = Summary {
            user,
            total: positions.iter().map(|p| p.value).sum(),
            positions,
        };
        let _ = self.cache.set(&key, &summary, Some(USER_TTL)).await;
        summary
    }

    /// Records a new balance and drops what was derived from the old one:
    /// the cached balances and every `user:{id}:summary:*` entry.
    pub async fn set_balance(&self, user: u64, asset: Symbol, amount: f64) {
        self.ledger.set(user, asset, amount);
        let _ = self.cache.delete(&balances_key(user)).await;
        if let Err(err) = self.cache.invalidate_prefix(&summary_prefix(user)).await {
            // The summary expires within USER_TTL anyway; say so loudly.
            tracing::warn!(user, error = %err, "could not invalidate the user's summaries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_validated() {
        assert_eq!(Symbol::parse(" btc ").map(|s| s.0), Some("BTC".into()));
        for bad in ["", "B*", "user:1", "A".repeat(17).as_str(), "ÉTH"] {
            assert_eq!(Symbol::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bulk_prices_are_deduplicated_and_cached() {
        let portfolio = Portfolio::new(Cache::in_memory());
        let btc = Symbol::parse("BTC").unwrap();
        let eth = Symbol::parse("ETH").unwrap();
        let prices = portfolio
            .prices(&[btc.clone(), eth.clone(), btc.clone()])
            .await;
        assert_eq!(prices.len(), 2);
        assert_eq!(prices[&btc], price_of(&btc));
        assert_eq!(portfolio.source_reads().feed, 1);
        portfolio.prices(&[eth, btc]).await;
        assert_eq!(
            portfolio.source_reads().feed,
            1,
            "second lookup is all hits"
        );
    }

    #[tokio::test]
    async fn a_balance_change_invalidates_the_summary() {
        let portfolio = Portfolio::new(Cache::in_memory());
        let btc = Symbol::parse("BTC").unwrap();
        portfolio.set_balance(7, btc.clone(), 2.0).await;
        let first = portfolio.summary(7).await;
        assert_eq!(first.total, 2.0 * price_of(&btc));
        portfolio.summary(7).await;
        assert_eq!(
            portfolio.source_reads().ledger,
            1,
            "second summary is a hit"
        );
        portfolio.set_balance(7, btc.clone(), 3.0).await;
        assert_eq!(portfolio.summary(7).await.total, 3.0 * price_of(&btc));
        assert_eq!(portfolio.source_reads().ledger, 2);
    }
}
