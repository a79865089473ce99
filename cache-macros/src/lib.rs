//! The `#[cached]` attribute. Use it through `cache_core::cached`.

use proc_macro::TokenStream;

/// Memoizes an async function in the default [`Cache`](https://docs.rs/cache-core).
///
/// Not implemented yet: the attribute currently leaves the function unchanged.
#[proc_macro_attribute]
pub fn cached(_attr: TokenStream, item: TokenStream) -> TokenStream {
    item
}
