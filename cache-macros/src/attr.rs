//! Parsing `#[cached(...)]` into [`CachedArgs`], with each mistake reported at
//! the offending token.

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitInt, LitStr, Token, parenthesized};

/// How long entries live.
pub(crate) enum Ttl {
    /// `ttl = 3600`: whole seconds.
    Seconds(LitInt),
    /// `ttl = Duration::from_millis(500)`, or any expression of type `Duration`.
    Expr(Expr),
}

/// The attribute's options.
pub(crate) struct CachedArgs {
    pub(crate) prefix: LitStr,
    pub(crate) ttl: Ttl,
    pub(crate) skip: Vec<Ident>,
    pub(crate) cache: Option<Expr>,
    pub(crate) key: Option<Expr>,
    pub(crate) codec: Option<LitStr>,
}

const OPTIONS: &str = "prefix, ttl, skip, cache, key, codec";

impl Parse for CachedArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut prefix: Option<LitStr> = None;
        let mut ttl: Option<Ttl> = None;
        let mut skip: Option<Vec<Ident>> = None;
        let mut cache: Option<Expr> = None;
        let mut key: Option<Expr> = None;
        let mut codec: Option<LitStr> = None;

        while !input.is_empty() {
            let name: Ident = input.parse()?;
            let duplicate = || syn::Error::new_spanned(&name, format!("duplicate `{name}` option"));
            match name.to_string().as_str() {
                "prefix" => {
                    if prefix.is_some() {
                        return Err(duplicate());
                    }
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    validate_prefix(&lit)?;
                    prefix = Some(lit);
                }
                "ttl" => {
                    if ttl.is_some() {
                        return Err(duplicate());
                    }
                    input.parse::<Token![=]>()?;
                    let expr: Expr = input.parse()?;
                    ttl = Some(match expr {
                        Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Int(seconds),
                            ..
                        }) => {
                            if seconds.base10_parse::<u64>()? == 0 {
                                return Err(syn::Error::new_spanned(
                                    &seconds,
                                    "`ttl` must be at least 1 second",
                                ));
                            }
                            Ttl::Seconds(seconds)
                        }
                        Expr::Lit(other) => {
                            return Err(syn::Error::new_spanned(
                                other,
                                "`ttl` takes whole seconds (`ttl = 3600`) or a `Duration` expression",
                            ));
                        }
                        expr => Ttl::Expr(expr),
                    });
                }
                "skip" => {
                    if skip.is_some() {
                        return Err(duplicate());
                    }
                    let content;
                    parenthesized!(content in input);
                    let names = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                    skip = Some(names.into_iter().collect());
                }
                "cache" => {
                    if cache.is_some() {
                        return Err(duplicate());
                    }
                    input.parse::<Token![=]>()?;
                    cache = Some(input.parse()?);
                }
                "key" => {
                    if key.is_some() {
                        return Err(duplicate());
                    }
                    input.parse::<Token![=]>()?;
                    key = Some(input.parse()?);
                }
                "codec" => {
                    if codec.is_some() {
                        return Err(duplicate());
                    }
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    if !matches!(lit.value().as_str(), "json" | "msgpack") {
                        return Err(syn::Error::new_spanned(
                            &lit,
                            "`codec` is \"json\" or \"msgpack\"",
                        ));
                    }
                    codec = Some(lit);
                }
                _ => {
                    return Err(syn::Error::new_spanned(
                        &name,
                        format!("unknown option `{name}`; expected one of: {OPTIONS}"),
                    ));
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }

        // Nothing to point at but the attribute itself.
        let missing = |message: &str| syn::Error::new(proc_macro2::Span::call_site(), message);
        let prefix = prefix.ok_or_else(|| {
            missing("missing `prefix = \"...\"`: the key prefix, such as `prefix = \"embedding\"`")
        })?;
        let ttl = ttl.ok_or_else(|| {
            missing("missing `ttl = ...`: seconds (`ttl = 3600`) or a `Duration` expression")
        })?;
        Ok(CachedArgs {
            prefix,
            ttl,
            skip: skip.unwrap_or_default(),
            cache,
            key,
            codec,
        })
    }
}

/// A prefix is part of every key: non-empty, no spaces or glob characters, so
/// that `invalidate_prefix` and other services can match it literally.
fn validate_prefix(lit: &LitStr) -> syn::Result<()> {
    let value = lit.value();
    if value.is_empty() {
        return Err(syn::Error::new_spanned(lit, "`prefix` must not be empty"));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '*' | '?' | '[' | ']' | '\\'))
    {
        return Err(syn::Error::new_spanned(
            lit,
            format!("`prefix` must not contain {bad:?}"),
        ));
    }
    Ok(())
}
