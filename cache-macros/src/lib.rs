//! The `#[cached]` attribute: memoize an async function in Redis (or the
//! in-memory store). Use it through `cache_core::cached`; the runtime it
//! calls lives in `cache_core`, whose crate page covers the handle itself.
//!
//! # 1. A memoized function
//!
//! The attribute needs a `prefix` and a `ttl`; the function runs once per
//! distinct argument list until the entry expires. Without `cache = ...` it
//! uses the handle given to `cache_core::set_default`; with none set, the
//! function just runs.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use cache_core::{Cache, cached};
//!
//! # #[derive(Debug)]
//! # struct EmbedError;
//! static EMBED_CALLS: AtomicUsize = AtomicUsize::new(0);
//!
//! #[cached(prefix = "embedding", ttl = 86400)]
//! async fn embed(text: &str) -> Result<Vec<f32>, EmbedError> {
//!     EMBED_CALLS.fetch_add(1, Ordering::Relaxed);
//!     Ok(vec![text.len() as f32])
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), EmbedError> {
//! cache_core::set_default(Cache::in_memory()); // the handle `embed` uses
//! embed("hello").await?;
//! embed("hello").await?; // a hit: the body does not run again
//! assert_eq!(EMBED_CALLS.load(Ordering::Relaxed), 1);
//! # Ok(()) }
//! ```
//!
//! # 2. Methods, handles and keys
//!
//! `self` is never part of the key; `cache = ...` picks the handle
//! (`Cache`, `&Cache`, `Option<Cache>` or `Option<&Cache>`), `skip(...)`
//! leaves arguments out of the key, `key = ...` replaces the hash with a
//! readable suffix.
//!
//! ```
//! use std::time::Duration;
//! use cache_core::{Cache, cached};
//!
//! struct SearchService {
//!     cache: Cache,
//! }
//!
//! impl SearchService {
//!     #[cached(prefix = "search", ttl = 3600, cache = &self.cache)]
//!     async fn search(&self, query: &str, top_k: usize) -> Vec<String> {
//!         vec![query.to_owned(); top_k]
//!     }
//!
//!     // Key `profile:{user_id}`; `request_id` is not part of it.
//!     #[cached(prefix = "profile", ttl = Duration::from_secs(90), key = user_id,
//!              skip(request_id), cache = &self.cache)]
//!     async fn profile(&self, user_id: u64, request_id: &str) -> Option<String> {
//!         Some(format!("user {user_id}"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! let service = SearchService { cache: Cache::in_memory() };
//! assert_eq!(service.search("rust", 2).await, ["rust", "rust"]);
//! assert_eq!(service.profile(7, "req-1").await.as_deref(), Some("user 7"));
//! assert_eq!(service.cache.get::<String>("profile:7").await?.as_deref(), Some("user 7"));
//! # Ok(()) }
//! ```
//!
//! # 3. Options
//!
//! | option | meaning |
//! | --- | --- |
//! | `prefix = "name"` | required: the key prefix |
//! | `ttl = 3600` or `ttl = <Duration expr>` | required: lifetime of an entry (seconds, or a `Duration`) |
//! | `skip(a, b)` | leave these arguments out of the key |
//! | `cache = <expr>` | use this handle (`Cache`, `&Cache`, `Option<Cache>` or `Option<&Cache>`, such as `&self.cache`) instead of the default one |
//! | `key = <expr>` | key `{prefix}:{expr}` (anything `Display`) instead of the hash of the arguments |
//! | `codec = "msgpack"` | MessagePack values (feature `msgpack` of `redis-cache-core`); JSON by default |
//! | `local = false` | never served from, nor kept in, the handle's local tier (see `CacheBuilder::local_tier`) |
//! | `stale = secs` or `<Duration expr>` | keep serving a value this long past `ttl` while one background refresh runs (and while refreshes fail) |
//! | `timeout = secs` or `<Duration expr>` | with `stale`: bound on a background refresh (also its lease) |
//! | `compress` or `compress = bytes` | lz4-compress values from 1 KiB (or from `bytes`) |
//! | `encrypt` | store a Fernet token of the value, with the handle's `EncryptionKeys` |
//! | `tags = [expr, ...]` | tags (anything `Display`, computed from the arguments) that `Cache::invalidate_tag` drops together |
//!
//! The last four wrap the entry in `cache_core::envelope`. With `stale`,
//! the body may run in a background task: it must be `Send + 'static`, so
//! take arguments by value (`String`, `Cache`, `Arc<Self>`).
//!
//! ```
//! use cache_core::{Cache, cached};
//!
//! #[cached(prefix = "quote", ttl = 5, stale = 300, timeout = 2, cache = cache, skip(cache))]
//! async fn quote(cache: Cache, symbol: String) -> Result<u64, String> {
//!     Ok(symbol.len() as u64 * 1000)
//! }
//!
//! #[cached(prefix = "summary", ttl = 300, tags = [format!("user:{user_id}")], cache = cache,
//!          skip(cache))]
//! async fn summary(cache: &Cache, user_id: u64) -> String {
//!     format!("summary of {user_id}")
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! let cache = Cache::in_memory();
//! assert_eq!(quote(cache.clone(), "BTC".into()).await, Ok(3000));
//! assert_eq!(summary(&cache, 7).await, "summary of 7");
//! cache.invalidate_tag("user:7").await?; // the next `summary(&cache, 7)` runs the body
//! # Ok(()) }
//! ```
//!
//! Malformed attributes are compile errors pointing at the mistake: an
//! unknown or repeated option, `skip(a, a)`, a value of the wrong kind.
//!
//! # 4. Key
//!
//! `{namespace:}{prefix}:{lowercase hex SHA-256 of the RFC 8785 (JCS)
//! canonical JSON array of the key arguments}`: `embed("hello")` is stored
//! under `embedding:` + sha256(`["hello"]`); maps and struct fields are
//! sorted, floats take their ECMAScript form, integers stay exact.
//! `cache_core::key_for(prefix, &(args,))` computes it (and says what it does
//! with each type); `cache_core::invalidate_memoized(&cache, prefix, &(args,))`
//! drops one entry. A call whose arguments have no canonical form (NaN,
//! infinity) runs uncached.
//!
//! # 5. Behaviour
//!
//! - `Result<T, E>`: only `Ok` is cached. `Option<T>`: only `Some`. Anything
//!   else: always. The stored value is `T` (or the whole value).
//! - Any cache failure (unreachable, slow, open breaker, an entry that does not
//!   decode) runs the function: callers never see a cache error. An entry that
//!   does not decode is overwritten. A memoized call and the memoized calls in
//!   its body lose at most one call timeout in all to a failing cache.
//! - Concurrent calls with the same key in one process run the body once; a
//!   leader that panics or is cancelled hands over to a follower.
//! - With no default handle set (and no `cache = ...`), or when the handle is
//!   bypassed (`CACHE_BYPASS=true`), the function just runs.
#![warn(missing_docs)]

mod attr;
mod expand;

use proc_macro::TokenStream;
use syn::{ItemFn, parse_macro_input};

/// Memoizes an async function or method in a `cache_core::Cache`.
///
/// `prefix` and `ttl` are required; the entry's key is `{prefix}:{hash of
/// the arguments}` (`self` and `skip(...)` arguments left out). `Result`
/// functions cache `Ok` only, `Option` functions `Some` only. A cache that
/// fails makes the function run: callers never see a cache error. The
/// [crate docs](crate) walk through every option (`cache`, `skip`, `key`,
/// `codec`, `local`, `stale`, `timeout`, `compress`, `encrypt`, `tags`),
/// the key and the behaviour.
///
/// ```
/// use cache_core::{Cache, cached};
///
/// #[cached(prefix = "square", ttl = 60, cache = cache, skip(cache))]
/// async fn square(cache: &Cache, n: u64) -> u64 {
///     n * n
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::Error> {
/// let cache = Cache::in_memory();
/// assert_eq!(square(&cache, 12).await, 144);
/// // Stored under `square:` + sha256 of the canonical JSON `[12]`:
/// let key = cache_core::key_for("square", &(12,))?;
/// assert_eq!(cache.get::<u64>(&key).await?, Some(144));
/// # Ok(()) }
/// ```
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as attr::CachedArgs);
    let function = parse_macro_input!(item as ItemFn);
    expand::expand(args, function)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
