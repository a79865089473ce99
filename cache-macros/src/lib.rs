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
//! readable suffix. When `cache = x` names an argument (as `x`, `&x`,
//! `Some(x)`, `Some(&x)` or `x.clone()`), that argument is left out of the
//! key without `skip(x)`: a handle is never part of it.
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
//! | `lock = secs` or `<Duration expr>` | across instances, one computation per missing key: a miss takes a lease in Redis, the others wait up to this long for its value |
//! | `in_trait` | the method is in a trait impl: no `{name}_key` / `{name}_invalidate` beside it (see 5) |
//!
//! The four from `stale` wrap the entry in `cache_core::envelope`, and such
//! entries are never kept in the local tier: `local = true` beside them is a
//! compile error. With `stale`, the body may run in a background task after
//! the call returned: it gets owned copies of what it borrows (`&str` ->
//! `String`, `&T` -> `T` for `T: Clone`, `&self` -> a copy for
//! `Self: Clone`), made for a miss or a refresh only; a `&mut` argument is
//! a compile error. The attribute expands to the engine behind
//! `Cache::get_or_set`, which gives the same guarantees to a key and a
//! closure.
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
//! unknown or repeated option, `skip(a, a)`, a value of the wrong kind, a
//! `key = ...` that uses a skipped argument, `#[cached]` under
//! `#[async_trait]` (it sees a `fn` returning a boxed future: put it on an
//! inherent `async fn`, or use a native `async fn` in the trait).
//!
//! # 4. Key
//!
//! `{namespace:}{prefix}:{lowercase hex SHA-256 of the RFC 8785 (JCS)
//! canonical JSON array of the key arguments}`: `embed("hello")` is stored
//! under `embedding:` + sha256(`["hello"]`); maps and struct fields are
//! sorted, floats take their ECMAScript form, integers stay exact.
//! `cache_core::key_for(prefix, &(args,))` computes it (and says what it does
//! with each type). A call whose arguments have no canonical form (NaN,
//! infinity) runs uncached.
//!
//! A generic function's array holds one more element, last: an array of
//! each type parameter's `std::any::type_name` (a const parameter's value),
//! then each `impl Trait` argument's type name, in declaration order. So
//! `f::<u8>(1)` hashes `[1,["u8"]]` and `f::<f64>(1.0)` hashes
//! `[1,["f64"]]`: the same JSON arguments of different types never share an
//! entry. The type parameters of an enclosing `impl<T>` block are not seen
//! by the attribute: when a method's result depends on them, say so in
//! `key = ...`.
//!
//! # 5. Addressing entries: `{name}_key` and `{name}_invalidate`
//!
//! Beside each memoized function the attribute writes two functions that
//! take the arguments that make up its key (every argument but `self`, the
//! `skip(...)` ones and the `cache = ...` one, with their declared types):
//!
//! - `{name}_key(args…) -> Result<String, cache_core::Error>`: the key the
//!   function stores its result under, `key = ...`, `skip` and type names
//!   included, **without** the handle's namespace (as `Cache::get` and
//!   `Cache::delete` take keys);
//! - `async {name}_invalidate(&cache, args…) -> Result<bool, cache_core::Error>`:
//!   drops that entry from `cache`, so the next call runs the body.
//!
//! Beside a method they are associated functions (`Self::search_key(...)`),
//! or methods when `key = ...` uses `self`. A trait impl can hold only the
//! trait's items: there, write `in_trait` and no siblings are generated
//! (put `#[cached]` on an inherent method the trait method calls when you
//! need them). A hand-written function of either name beside a memoized one
//! no longer compiles: it is what they replace.
//!
//! ```
//! use cache_core::{Cache, cached};
//!
//! #[cached(prefix = "prices", ttl = 60, key = "all", cache = cache)]
//! async fn prices(cache: &Cache) -> Vec<u64> {
//!     vec![72_000, 3_500]
//! }
//!
//! struct SearchService;
//!
//! impl SearchService {
//!     #[cached(prefix = "search", ttl = 3600, cache = cache)]
//!     async fn search(&self, cache: &Cache, query: &str, top_k: usize) -> Vec<String> {
//!         vec![query.to_owned(); top_k]
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_core::Error> {
//! let cache = Cache::in_memory();
//! prices(&cache).await;
//! assert_eq!(prices_key()?, "prices:all");
//! assert!(prices_invalidate(&cache).await?); // the next call runs the body
//!
//! SearchService.search(&cache, "rust", 2).await;
//! let key = SearchService::search_key("rust", 2)?;
//! assert_eq!(key, cache_core::key_for("search", &("rust", 2))?);
//! assert!(SearchService::search_invalidate(&cache, "rust", 2).await?);
//! # Ok(()) }
//! ```
//!
//! `cache_core::invalidate_memoized(&cache, prefix, &(args,))` hashes what
//! it is given: it addresses only functions without `key = ...` or type
//! parameters.
//!
//! # 6. Behaviour
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
/// the arguments}` (`self`, `skip(...)` arguments and the `cache = ...`
/// argument left out; a generic function's type names put in). `Result`
/// functions cache `Ok` only, `Option` functions `Some` only. A cache that
/// fails makes the function run: callers never see a cache error. Beside
/// the function go `{name}_key(args…)`, the key it stores under (namespace
/// excluded), and `{name}_invalidate(&cache, args…)`, which drops that entry
/// (associated functions beside a method; none with `in_trait`). The
/// [crate docs](crate) walk through every option (`cache`, `skip`, `key`,
/// `codec`, `local`, `stale`, `timeout`, `compress`, `encrypt`, `tags`,
/// `in_trait`), the key, these two functions and the behaviour.
///
/// ```
/// use cache_core::{Cache, cached};
///
/// #[cached(prefix = "square", ttl = 60, cache = cache)] // `cache` is not part of the key
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
/// assert_eq!(square_key(12)?, key);
/// assert!(square_invalidate(&cache, 12).await?);
/// # Ok(()) }
/// ```
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as attr::CachedArgs);
    let function = parse_macro_input!(item as ItemFn);
    if let Some(error) = expand::async_trait_method(&function) {
        // The method stays as `#[async_trait]` wrote it, so that the trait
        // impl reports this error and nothing else.
        let mut tokens = error.into_compile_error();
        tokens.extend(quote::ToTokens::into_token_stream(function));
        return tokens.into();
    }
    expand::expand(args, function)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
