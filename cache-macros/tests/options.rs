//! Every option, in every form it takes, expands to code that compiles and
//! memoizes, with its `{name}_key` and `{name}_invalidate` (on the in-memory
//! store; the Redis behaviour is `tests/tests/cached.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{Cache, cached};

#[cached(
    prefix = "everything",
    ttl = Duration::from_millis(60_000),
    cache = &cache,
    skip(cache, calls, verbose),
    codec = "json",
)]
async fn everything(cache: Cache, calls: &AtomicUsize, text: &str, verbose: bool) -> Option<usize> {
    let _ = verbose;
    calls.fetch_add(1, Ordering::Relaxed);
    Some(text.len())
}

#[cached(prefix = "user", ttl = 60, key = format!("user:{id}"), cache = Some(cache), skip(calls))]
async fn custom_key(cache: &Cache, calls: &AtomicUsize, id: u64) -> Result<u64, String> {
    calls.fetch_add(1, Ordering::Relaxed);
    Ok(id)
}

#[cached(prefix = "quote", ttl = 5, stale = 60, local = false, cache = cache)]
async fn quote(cache: Cache, symbol: String) -> u64 {
    symbol.len() as u64
}

// `stale` with borrowed arguments and `&self`: the refresh gets owned copies.
#[derive(Clone)]
struct Quotes {
    scale: u64,
}

impl Quotes {
    #[cached(prefix = "borrowed", ttl = 5, stale = Duration::from_secs(60), timeout = 2,
             lock = 5, cache = cache)]
    async fn quote(&self, cache: &Cache, symbol: &str, venues: &[String]) -> u64 {
        self.scale * (symbol.len() + venues.len()) as u64
    }
}

trait Scorer {
    async fn score(&self, cache: &Cache, word: String) -> u32;
}

struct Length;

impl Scorer for Length {
    #[cached(prefix = "score", ttl = 60, cache = cache, in_trait)]
    async fn score(&self, cache: &Cache, word: String) -> u32 {
        word.len() as u32
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_option_compiles_and_memoizes() {
    let cache = Cache::in_memory();
    let calls = AtomicUsize::new(0);
    assert_eq!(
        everything(cache.clone(), &calls, "abc", true).await,
        Some(3)
    );
    // `verbose` is skipped: same key, a hit.
    assert_eq!(
        everything(cache.clone(), &calls, "abc", false).await,
        Some(3)
    );
    assert_eq!(calls.load(Ordering::Relaxed), 1);

    let calls = AtomicUsize::new(0);
    assert_eq!(custom_key(&cache, &calls, 7).await, Ok(7));
    assert_eq!(custom_key(&cache, &calls, 7).await, Ok(7));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(cache.exists("user:user:7").await.ok(), Some(true));
    assert_eq!(custom_key_key(7).ok().as_deref(), Some("user:user:7"));
    assert_eq!(custom_key_invalidate(&cache, 7).await.ok(), Some(true));

    // `local = false` beside `stale`; the `cache = ...` argument is not in the key.
    assert_eq!(quote(cache.clone(), "BTC".into()).await, 3);
    let key = quote_key("BTC".into()).ok();
    assert_eq!(key, cache_core::key_for("quote", &("BTC",)).ok());
    assert_eq!(
        cache.exists(&key.unwrap_or_default()).await.ok(),
        Some(true)
    );

    let quotes = Quotes { scale: 10 };
    let venues = vec!["XNYS".to_string()];
    assert_eq!(quotes.quote(&cache, "BTC", &venues).await, 40);
    assert_eq!(quotes.quote(&cache, "BTC", &venues).await, 40);
    assert_eq!(
        Quotes::quote_key("BTC", &venues).ok(),
        cache_core::key_for("borrowed", &("BTC", &venues)).ok()
    );

    assert_eq!(Length.score(&cache, "four".into()).await, 4);
    let quotes = Quotes { scale: 10 };
    let venues = vec!["XNYS".to_string()];
    assert_eq!(quotes.quote(&cache, "BTC", &venues).await, 40);
    assert_eq!(quotes.quote(&cache, "BTC", &venues).await, 40);
    assert_eq!(
        Quotes::quote_key("BTC", &venues).ok(),
        cache_core::key_for("borrowed", &("BTC", &venues)).ok()
    );

    assert_eq!(Length.score(&cache, "four".into()).await, 4);
    let key = cache_core::key_for("score", &("four",)).ok();
    assert_eq!(
        cache.exists(&key.unwrap_or_default()).await.ok(),
        Some(true)
    );
}
