//! The `#[cached]` attribute: memoize an async function in Redis (or the
//! in-memory store). Use it through `cache_core::cached`; the runtime it calls
//! lives in `cache_core`.
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
//! struct SearchService {
//!     cache: Cache,
//! }
//!
//! impl SearchService {
//!     // `self` is never part of the key; `cache = ...` picks the handle.
//!     #[cached(prefix = "search", ttl = 3600, cache = &self.cache)]
//!     async fn search(&self, query: &str, top_k: usize) -> Vec<String> {
//!         vec![query.to_owned(); top_k]
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), EmbedError> {
//! cache_core::set_default(Cache::in_memory()); // the handle `embed` uses
//! embed("hello").await?;
//! embed("hello").await?; // a hit: the body does not run again
//! assert_eq!(EMBED_CALLS.load(Ordering::Relaxed), 1);
//!
//! let service = SearchService { cache: Cache::in_memory() };
//! assert_eq!(service.search("rust", 2).await, ["rust", "rust"]);
//! # Ok(()) }
//! ```
//!
//! # Options
//!
//! | option | meaning |
//! | --- | --- |
//! | `prefix = "name"` | required: the key prefix |
//! | `ttl = 3600` or `ttl = <Duration expr>` | required: lifetime of an entry (seconds, or a `Duration`) |
//! | `skip(a, b)` | leave these arguments out of the key |
//! | `cache = <expr>` | use this handle (`Cache`, `&Cache`, `Option<Cache>` or `Option<&Cache>`, such as `&self.cache`) instead of the default one |
//! | `key = <expr>` | key `{prefix}:{expr}` (anything `Display`) instead of the hash of the arguments |
//! | `codec = "msgpack"` | MessagePack values (feature `msgpack` of `cache-core`); JSON by default |
//! | `local = false` | never served from, nor kept in, the handle's local tier (see `CacheBuilder::local_tier`) |
//!
//! # Key
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
//! # Behaviour
//!
//! - `Result<T, E>`: only `Ok` is cached. `Option<T>`: only `Some`. Anything
//!   else: always. The stored value is `T` (or the whole value).
//! - Any cache failure (unreachable, slow, open breaker, an entry that does not
//!   decode) runs the function: callers never see a cache error. An entry that
//!   does not decode is overwritten. A memoized call and the memoized calls in
//!   its body lose at most one call timeout in all to a failing cache.
//! - Concurrent calls with the same key in one process run the body once.
//! - With no default handle set (and no `cache = ...`), or when the handle is
//!   bypassed (`CACHE_BYPASS=true`), the function just runs.
#![warn(missing_docs)]

mod attr;
mod expand;

use proc_macro::TokenStream;
use syn::{ItemFn, parse_macro_input};

/// Memoizes an async function or method; see the [crate docs](crate) for options and behaviour.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as attr::CachedArgs);
    let function = parse_macro_input!(item as ItemFn);
    expand::expand(args, function)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
