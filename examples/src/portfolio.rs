//! The asset-cache pattern of trading and wallet services.
//!
//! - prices per asset under `asset:{symbol}:current_price`, 60 s;
//! - a user's balances under `user:{id}:balances`, 5 min;
//! - derived per-user values under `user:{id}:summary:*`, tagged `user:{id}`,
//!   all made misses with one `invalidate_tag` (one Redis `SET`) when a
//!   balance changes; `invalidate_prefix` would walk the whole keyspace with
//!   SCAN on every change;
//! - bulk lookups deduplicated and read in one round trip (`get_many`), the
//!   misses recomputed from the source and written back in one (`set_many`).
//!
//! The cache is never the source of truth: any cache error falls back to the
//! source, so Redis being down costs latency, never a wrong answer.
//!
//! Money is exact: amounts, prices and values are [`Decimal`]s, never `f64`
//! (`0.1 + 0.2` must not become `0.30000000000000004` in a cached total), and
//! they are written to JSON as decimal strings (`"246.9"`). A string is the
//! only JSON form every reader keeps exact: JavaScript's `JSON.parse`,
//! Python's `json` and Go's `encoding/json` read a JSON number as a binary
//! double unless told otherwise, while a string makes them pick a decimal type
//! (`decimal.Decimal(s)`, `BigDecimal`). Integer minor units would not fit
//! either: assets have different scales (8 decimals for bitcoin, 18 for ether,
//! whose 10^18 units per coin overflow a `u64` past 18 coins). Every value is
//! written in its shortest form (`normalize`: no trailing zeros, never `-0`),
//! so equal amounts are equal strings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cache_core::Cache;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lifetime of a cached price.
pub const PRICE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of cached balances and summaries (a change invalidates them sooner).
pub const USER_TTL: Duration = Duration::from_secs(300);
/// The channel price updates are published on (one channel, not one per
/// asset: sharded pub/sub on a cluster has no patterns). JSON, as
/// [`PriceUpdate`], so that any program can publish or read it.
pub const PRICES_CHANNEL: &str = "market:prices";

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

/// Units of an asset held: a decimal from 0 to [`Amount::MAX`] with at most
/// [`Amount::MAX_DECIMAL_PLACES`] decimal places, kept exact and in its
/// shortest form. In JSON, a decimal string (`"2.5"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Amount(Decimal);

/// Why an amount was refused; the message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a decimal number.
    #[error(
        "amount must be a decimal number, as a string such as \"2.5\" (exact) or a JSON number"
    )]
    NotADecimal,
    /// Below zero.
    #[error("amount must not be negative, got {0}")]
    Negative(String),
    /// More decimal places than any asset has.
    #[error("amount has more than 18 decimal places")]
    TooPrecise,
    /// Beyond [`Amount::MAX`].
    #[error("amount must be at most 1000000000000000")]
    TooLarge,
}

impl Amount {
    /// The largest amount: 10^15 units. Every value (amount times a price of
    /// at most 1000) then stays far inside what a `Decimal` holds.
    pub const MAX: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0);
    /// Most decimal places an amount may have (an ether has 18).
    pub const MAX_DECIMAL_PLACES: u32 = 18;
    /// Nothing held.
    pub const ZERO: Amount = Amount(Decimal::ZERO);

    /// Parses a plain decimal (`"2.5"`, `"-0"`; no exponent), refusing any
    /// digit it could not keep.
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        let decimal = Decimal::from_str_exact(text.trim()).map_err(|_| AmountError::NotADecimal)?;
        Amount::try_from(decimal)
    }

    /// An amount from a JSON request body: a decimal string (exact), or a
    /// JSON number, read as the shortest decimal that gives the same double
    /// (`0.1` is 0.1; digits beyond a double's 15 to 17 are already lost, so
    /// send a string for those).
    pub fn from_json(value: &Value) -> Result<Amount, AmountError> {
        match value {
            Value::String(text) => Amount::parse(text),
            Value::Number(number) => {
                if let Some(n) = number.as_u64() {
                    Amount::try_from(Decimal::from(n))
                } else if let Some(n) = number.as_i64() {
                    Amount::try_from(Decimal::from(n))
                } else {
                    let float = number.as_f64().ok_or(AmountError::NotADecimal)?;
                    if float < 0.0 {
                        return Err(AmountError::Negative(float.to_string()));
                    }
                    if float > 1e15 {
                        return Err(AmountError::TooLarge);
                    }
                    // Display of an f64 is its shortest round-trip decimal, never an exponent.
                    Amount::parse(&float.to_string())
                }
            }
            _ => Err(AmountError::NotADecimal),
        }
    }

    /// The decimal value.
    pub fn value(self) -> Decimal {
        self.0
    }
}

impl TryFrom<Decimal> for Amount {
    type Error = AmountError;

    fn try_from(decimal: Decimal) -> Result<Amount, AmountError> {
        // Also what makes "-0" zero and "2.50" 2.5.
        let decimal = decimal.normalize();
        if decimal.is_sign_negative() {
            return Err(AmountError::Negative(decimal.to_string()));
        }
        if decimal.scale() > Amount::MAX_DECIMAL_PLACES {
            return Err(AmountError::TooPrecise);
        }
        if decimal > Amount::MAX {
            return Err(AmountError::TooLarge);
        }
        Ok(Amount(decimal))
    }
}

impl From<Amount> for Decimal {
    fn from(amount: Amount) -> Decimal {
        amount.0
    }
}

/// The source of truth for balances (a database in a real service).
#[derive(Debug, Default)]
pub struct Ledger {
    balances: RwLock<HashMap<u64, BTreeMap<Symbol, Amount>>>,
    reads: AtomicU64,
}

impl Ledger {
    fn balances(&self, user: u64) -> BTreeMap<Symbol, Amount> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let balances = self
            .balances
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        balances.get(&user).cloned().unwrap_or_default()
    }

    fn set(&self, user: u64, asset: Symbol, amount: Amount) {
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
    fn prices(&self, symbols: &[Symbol]) -> Vec<Decimal> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        symbols.iter().map(price_of).collect()
    }
}

/// The feed's price of a symbol: 1.00 to 999.99 in cents, fixed per symbol.
pub fn price_of(symbol: &Symbol) -> Decimal {
    let hash = symbol
        .as_str()
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let cents = 100 + i64::from((hash % 99_900) as u32);
    Decimal::new(cents, 2).normalize()
}

/// A user's valuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// User id.
    pub user: u64,
    /// Sum of the positions' values (`"0"` for no position).
    pub total: Decimal,
    /// Per asset: balance, price, value.
    pub positions: Vec<Position>,
}

/// One asset of a summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Asset symbol.
    pub asset: Symbol,
    /// Units held.
    pub balance: Amount,
    /// Current price.
    pub price: Decimal,
    /// Balance times price, exact.
    pub value: Decimal,
}

/// A new price of an asset, as published on [`PRICES_CHANNEL`]:
/// `{"symbol":"BTC","price":"71234.5"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceUpdate {
    /// The asset.
    pub symbol: Symbol,
    /// Its new price, exact.
    pub price: Decimal,
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

/// The tag of everything derived from a user's balances.
fn user_tag(user: u64) -> String {
    format!("user:{user}")
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
    pub async fn prices(&self, symbols: &[Symbol]) -> BTreeMap<Symbol, Decimal> {
        let unique: Vec<Symbol> = symbols
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let keys: Vec<String> = unique.iter().map(price_key).collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let cached: Vec<Option<Decimal>> = match self.cache.get_many(&key_refs).await {
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
            let entries: Vec<(&str, Decimal)> = keys
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
    pub async fn balances(&self, user: u64) -> BTreeMap<Symbol, Amount> {
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
                let price = prices.get(&asset).copied().unwrap_or(Decimal::ZERO);
                Position {
                    asset,
                    balance,
                    price,
                    // At most 10^15 x 1000 (Amount::MAX, the feed's prices), and
                    // the sum below would need 10^10 such positions to reach
                    // Decimal::MAX: saturating never changes a result, it only
                    // keeps arithmetic from panicking.
                    value: balance.value().saturating_mul(price).normalize(),
                }
            })
            .collect();
        let total = positions
            .iter()
            .fold(Decimal::ZERO, |total, p| total.saturating_add(p.value));
        let summary = Summary {
            user,
            total: total.normalize(),
            positions,
        };
        let _ = self
            .cache
            .set_tagged(&key, &summary, &[user_tag(user)], Some(USER_TTL))
            .await;
        summary
    }

    /// A new price from the market: cached for every instance, and published
    /// on [`PRICES_CHANNEL`] for the instances' live subscribers (their
    /// `/events` streams). Summaries valued at the old price expire within
    /// [`USER_TTL`].
    pub async fn publish_price(
        &self,
        update: &PriceUpdate,
    ) -> Result<(), cache_core::events::EventError> {
        self.cache
            .set(&price_key(&update.symbol), &update.price, Some(PRICE_TTL))
            .await?;
        self.cache.events().publish(PRICES_CHANNEL, update).await?;
        Ok(())
    }

    /// Records a new balance and drops what was derived from the old one:
    /// the cached balances, and every entry tagged `user:{id}` (the
    /// summaries) becomes a miss.
    pub async fn set_balance(&self, user: u64, asset: Symbol, amount: Amount) {
        self.ledger.set(user, asset, amount);
        let _ = self.cache.delete(&balances_key(user)).await;
        if let Err(err) = self.cache.invalidate_tag(&user_tag(user)).await {
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

    fn amount(text: &str) -> Amount {
        Amount::parse(text).unwrap()
    }

    fn decimal(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    #[tokio::test]
    async fn a_balance_change_invalidates_the_summary() {
        let portfolio = Portfolio::new(Cache::in_memory());
        let btc = Symbol::parse("BTC").unwrap();
        portfolio.set_balance(7, btc.clone(), amount("2")).await;
        let first = portfolio.summary(7).await;
        assert_eq!(first.total, decimal("2") * price_of(&btc));
        portfolio.summary(7).await;
        assert_eq!(
            portfolio.source_reads().ledger,
            1,
            "second summary is a hit"
        );
        portfolio.set_balance(7, btc.clone(), amount("3")).await;
        assert_eq!(
            portfolio.summary(7).await.total,
            decimal("3") * price_of(&btc)
        );
        assert_eq!(portfolio.source_reads().ledger, 2);
    }

    #[test]
    fn amounts_are_exact_non_negative_decimals_in_their_shortest_form() {
        assert_eq!(Amount::MAX, decimal("1000000000000000"));
        assert_eq!(amount(" 2.50 ").value().to_string(), "2.5");
        assert_eq!(amount("-0").value().to_string(), "0", "minus zero is zero");
        assert_eq!(
            amount("0.000000000000000001").value(),
            decimal("0.000000000000000001")
        );
        assert_eq!(amount("1000000000000000").value(), Amount::MAX);
        assert_eq!(
            Amount::parse("-0.01"),
            Err(AmountError::Negative("-0.01".into()))
        );
        assert_eq!(
            Amount::parse("0.0000000000000000001"),
            Err(AmountError::TooPrecise)
        );
        assert_eq!(
            Amount::parse("1000000000000000.1"),
            Err(AmountError::TooLarge)
        );
        for bad in ["", "abc", "1e3", "NaN", "0x10", "1.2.3"] {
            assert_eq!(Amount::parse(bad), Err(AmountError::NotADecimal), "{bad:?}");
        }
        // More digits than a Decimal keeps: refused, never rounded.
        assert_eq!(
            Amount::parse("0.00000000000000000000000000001"),
            Err(AmountError::NotADecimal)
        );
    }

    #[test]
    fn amounts_from_json_take_strings_exactly_and_numbers_by_their_shortest_form() {
        let from = |json: &str| Amount::from_json(&serde_json::from_str(json).unwrap());
        assert_eq!(from(r#""0.1""#), Ok(amount("0.1")));
        assert_eq!(
            from("0.1"),
            Ok(amount("0.1")),
            "the double nearest 0.1 reads as 0.1"
        );
        assert_eq!(from("2"), Ok(amount("2")));
        assert_eq!(from("1e-7"), Ok(amount("0.0000001")));
        assert_eq!(from("-0.0"), Ok(Amount::ZERO));
        assert_eq!(from("-5"), Err(AmountError::Negative("-5".into())));
        assert_eq!(
            from("-3746.7"),
            Err(AmountError::Negative("-3746.7".into()))
        );
        assert_eq!(from("1e300"), Err(AmountError::TooLarge));
        assert_eq!(from("18446744073709551615"), Err(AmountError::TooLarge));
        for bad in ["null", "true", "[1]", r#"{"v":1}"#] {
            assert_eq!(from(bad), Err(AmountError::NotADecimal), "{bad}");
        }
        // Cached balances decode through the same checks: a foreign negative entry is refused.
        assert!(serde_json::from_str::<Amount>(r#""-1""#).is_err());
        assert_eq!(serde_json::to_string(&amount("2.50")).unwrap(), r#""2.5""#);
    }

    #[tokio::test]
    async fn totals_are_exact_and_an_empty_portfolio_totals_zero() {
        let portfolio = Portfolio::new(Cache::in_memory());
        let empty = portfolio.summary(1).await;
        assert_eq!(
            serde_json::to_value(&empty).unwrap()["total"],
            "0",
            "not -0.0 (the f64 sum of nothing)"
        );

        let (a, b) = (Symbol::parse("A").unwrap(), Symbol::parse("B").unwrap());
        assert_eq!(
            (price_of(&a), price_of(&b)),
            (decimal("3.82"), decimal("3.83"))
        );
        portfolio.set_balance(2, a, amount("0.1")).await;
        portfolio.set_balance(2, b, amount("0.2")).await;
        let summary = serde_json::to_value(portfolio.summary(2).await).unwrap();
        // In f64: 0.1 * 3.82 + 0.2 * 3.83 = 1.1480000000000001.
        assert_eq!(summary["total"], "1.148", "{summary}");
        assert_eq!(summary["positions"][0]["value"], "0.382", "{summary}");
        assert_eq!(summary["positions"][1]["balance"], "0.2", "{summary}");
    }
}
