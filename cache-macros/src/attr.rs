//! Parsing `#[cached(...)]` into [`CachedArgs`], with each mistake reported at
//! the offending token.
//!
//! As in `tracing-attributes`: every option name is a `syn::custom_keyword!`,
//! every option has its own small `Parse` type ([`Setting`] for `name = value`,
//! [`Skip`] for `skip(...)`), and [`CachedArgs`] only collects them, checking
//! in one place that no option is given twice.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitInt, LitStr, Token, parenthesized};

/// The option names.
mod kw {
    syn::custom_keyword!(prefix);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(cache);
    syn::custom_keyword!(key);
    syn::custom_keyword!(codec);
    syn::custom_keyword!(stale);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(compress);
    syn::custom_keyword!(encrypt);
    syn::custom_keyword!(tags);
    syn::custom_keyword!(local);
    syn::custom_keyword!(in_trait);
    syn::custom_keyword!(lock);
}

const OPTIONS: &str = "prefix, ttl, skip, cache, key, codec, local, stale, timeout, compress, \
                       encrypt, tags, lock, in_trait";

/// The attribute's options.
pub(crate) struct CachedArgs {
    pub(crate) prefix: LitStr,
    pub(crate) ttl: Ttl,
    pub(crate) skip: Vec<Ident>,
    pub(crate) cache: Option<Expr>,
    pub(crate) key: Option<Expr>,
    pub(crate) codec: Option<Codec>,
    /// `local = false`: never served from, nor kept in, the local tier.
    pub(crate) local: bool,
    /// The stored-value options (`stale`, `timeout`, `compress`, `encrypt`, `tags`).
    pub(crate) stored: StoredArgs,
    /// `in_trait`: the function is in a trait impl, which can hold only the
    /// trait's items, so no `{name}_key` / `{name}_invalidate` beside it.
    pub(crate) in_trait: bool,
    /// `lock = ...`: across instances, one computation per missing key,
    /// others waiting up to this long.
    pub(crate) lock: Option<Ttl>,
}

/// The options that put an entry in an envelope; all off by default.
#[derive(Default)]
pub(crate) struct StoredArgs {
    pub(crate) stale: Option<Ttl>,
    pub(crate) timeout: Option<Ttl>,
    /// `Some(None)`: `compress` with the default threshold.
    pub(crate) compress: Option<Option<LitInt>>,
    pub(crate) encrypt: bool,
    pub(crate) tags: Option<Vec<Expr>>,
}

impl StoredArgs {
    /// The name of the first option given, in the order of the docs' table.
    fn first(&self) -> Option<&'static str> {
        if self.stale.is_some() {
            Some("stale")
        } else if self.compress.is_some() {
            Some("compress")
        } else if self.encrypt {
            Some("encrypt")
        } else if self.tags.is_some() {
            Some("tags")
        } else {
            None
        }
    }
}

impl Parse for CachedArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let options = Punctuated::<CachedOption, Token![,]>::parse_terminated(input)?;
        let mut given = GivenOptions::default();
        for option in options {
            given.add(option)?;
        }
        given.finish()
    }
}

/// One option as written.
enum CachedOption {
    Prefix(Setting<kw::prefix, Prefix>),
    Ttl(Setting<kw::ttl, Ttl>),
    Skip(Skip),
    Cache(Setting<kw::cache, Expr>),
    Key(Setting<kw::key, Expr>),
    Codec(Setting<kw::codec, Codec>),
    Stale(Setting<kw::stale, Seconds<StaleName>>),
    Timeout(Setting<kw::timeout, Seconds<TimeoutName>>),
    Compress(Compress),
    Encrypt(kw::encrypt),
    Tags(Setting<kw::tags, Tags>),
    Local(Setting<kw::local, Local>),
    InTrait(kw::in_trait),
    Lock(Setting<kw::lock, Seconds<LockName>>),
}

impl Parse for CachedOption {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(kw::prefix) {
            input.parse().map(Self::Prefix)
        } else if input.peek(kw::ttl) {
            input.parse().map(Self::Ttl)
        } else if input.peek(kw::skip) {
            input.parse().map(Self::Skip)
        } else if input.peek(kw::cache) {
            input.parse().map(Self::Cache)
        } else if input.peek(kw::key) {
            input.parse().map(Self::Key)
        } else if input.peek(kw::codec) {
            input.parse().map(Self::Codec)
        } else if input.peek(kw::stale) {
            input.parse().map(Self::Stale)
        } else if input.peek(kw::timeout) {
            input.parse().map(Self::Timeout)
        } else if input.peek(kw::compress) {
            input.parse().map(Self::Compress)
        } else if input.peek(kw::encrypt) {
            input.parse().map(Self::Encrypt)
        } else if input.peek(kw::tags) {
            input.parse().map(Self::Tags)
        } else if input.peek(kw::local) {
            input.parse().map(Self::Local)
        } else if input.peek(kw::in_trait) {
            input.parse().map(Self::InTrait)
        } else if input.peek(kw::lock) {
            input.parse().map(Self::Lock)
        } else {
            let unknown: proc_macro2::TokenTree = input.parse()?;
            Err(syn::Error::new_spanned(
                &unknown,
                format!("unknown option `{unknown}`; expected one of: {OPTIONS}"),
            ))
        }
    }
}

impl CachedOption {
    /// The option's name and where it is written: what a "given twice" error points at.
    fn keyword(&self) -> (&'static str, Span) {
        match self {
            Self::Prefix(setting) => ("prefix", setting.keyword.span),
            Self::Ttl(setting) => ("ttl", setting.keyword.span),
            Self::Skip(skip) => ("skip", skip.keyword.span),
            Self::Cache(setting) => ("cache", setting.keyword.span),
            Self::Key(setting) => ("key", setting.keyword.span),
            Self::Codec(setting) => ("codec", setting.keyword.span),
            Self::Stale(setting) => ("stale", setting.keyword.span),
            Self::Timeout(setting) => ("timeout", setting.keyword.span),
            Self::Compress(compress) => ("compress", compress.keyword.span),
            Self::Encrypt(keyword) => ("encrypt", keyword.span),
            Self::Tags(setting) => ("tags", setting.keyword.span),
            Self::Local(setting) => ("local", setting.keyword.span),
            Self::InTrait(keyword) => ("in_trait", keyword.span),
            Self::Lock(setting) => ("lock", setting.keyword.span),
        }
    }
}

/// The options seen so far, each at most once.
#[derive(Default)]
struct GivenOptions {
    seen: Vec<&'static str>,
    prefix: Option<LitStr>,
    ttl: Option<Ttl>,
    skip: Vec<Ident>,
    cache: Option<Expr>,
    key: Option<Expr>,
    codec: Option<Codec>,
    stored: StoredArgs,
    /// Where `timeout` is written: it needs `stale`.
    timeout_span: Option<Span>,
    /// `local = ...` and where it is written: `local = true` is refused
    /// beside the stored-value options, which bypass the local tier.
    local: Option<(bool, Span)>,
    in_trait: bool,
    lock: Option<Ttl>,
}

impl GivenOptions {
    /// Records `option`, or points at it if its name was given before.
    fn add(&mut self, option: CachedOption) -> syn::Result<()> {
        let (name, span) = option.keyword();
        if self.seen.contains(&name) {
            return Err(syn::Error::new(span, format!("duplicate `{name}` option")));
        }
        self.seen.push(name);
        match option {
            CachedOption::Prefix(setting) => self.prefix = Some(setting.value.0),
            CachedOption::Ttl(setting) => self.ttl = Some(setting.value),
            CachedOption::Skip(skip) => self.skip = skip.names,
            CachedOption::Cache(setting) => self.cache = Some(setting.value),
            CachedOption::Key(setting) => self.key = Some(setting.value),
            CachedOption::Codec(setting) => self.codec = Some(setting.value),
            CachedOption::Stale(setting) => self.stored.stale = Some(setting.value.ttl),
            CachedOption::Timeout(setting) => {
                self.timeout_span = Some(setting.keyword.span);
                self.stored.timeout = Some(setting.value.ttl);
            }
            CachedOption::Compress(compress) => self.stored.compress = Some(compress.threshold),
            CachedOption::Encrypt(_) => self.stored.encrypt = true,
            CachedOption::Tags(setting) => self.stored.tags = Some(setting.value.0),
            CachedOption::Local(setting) => {
                self.local = Some((setting.value.0, setting.keyword.span));
            }
            CachedOption::InTrait(_) => self.in_trait = true,
            CachedOption::Lock(setting) => self.lock = Some(setting.value.ttl),
        }
        Ok(())
    }

    /// The arguments, once the required options are known to be there.
    fn finish(self) -> syn::Result<CachedArgs> {
        // Nothing to point at but the attribute itself.
        let missing = |message: &str| syn::Error::new(Span::call_site(), message);
        let prefix = self.prefix.ok_or_else(|| {
            missing("missing `prefix = \"...\"`: the key prefix, such as `prefix = \"embedding\"`")
        })?;
        let ttl = self.ttl.ok_or_else(|| {
            missing("missing `ttl = ...`: seconds (`ttl = 3600`) or a `Duration` expression")
        })?;
        if let (Some(span), None) = (self.timeout_span, &self.stored.stale) {
            return Err(syn::Error::new(
                span,
                "`timeout` bounds the background refresh of `stale`: add `stale = ...`",
            ));
        }
        if let (Some((true, span)), Some(option)) = (self.local, self.stored.first()) {
            return Err(syn::Error::new(
                span,
                format!(
                    "`local = true` does not work beside `{option}` yet: entries with `stale`, \
                     `compress`, `encrypt` or `tags` are never kept in the local tier; \
                     remove `local = true`"
                ),
            ));
        }
        Ok(CachedArgs {
            stored: self.stored,
            prefix,
            ttl,
            skip: self.skip,
            cache: self.cache,
            key: self.key,
            codec: self.codec,
            local: self.local.is_none_or(|(local, _)| local),
            in_trait: self.in_trait,
            lock: self.lock,
        })
    }
}

/// `keyword = value`, such as `ttl = 60`.
struct Setting<K, V> {
    keyword: K,
    value: V,
}

impl<K: Parse, V: Parse> Parse for Setting<K, V> {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let keyword = input.parse()?;
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Self { keyword, value })
    }
}

/// `skip(a, b)`: arguments left out of the key, each named once.
struct Skip {
    keyword: kw::skip,
    names: Vec<Ident>,
}

impl Parse for Skip {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let keyword: kw::skip = input.parse()?;
        if !input.peek(syn::token::Paren) {
            return Err(input.error("`skip` takes a list of arguments, such as `skip(a, b)`"));
        }
        let content;
        parenthesized!(content in input);
        let mut names: Vec<Ident> = Vec::new();
        for name in Punctuated::<Ident, Token![,]>::parse_terminated(&content)? {
            if names.contains(&name) {
                return Err(syn::Error::new_spanned(
                    &name,
                    format!("`{name}` is skipped twice"),
                ));
            }
            names.push(name);
        }
        Ok(Self { keyword, names })
    }
}

/// The value of `prefix = "..."`. It is part of every key: non-empty, no
/// spaces or glob characters, so that `invalidate_prefix` and other services
/// can match it literally.
struct Prefix(LitStr);

impl Parse for Prefix {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lit: LitStr = input.parse().map_err(|error| {
            syn::Error::new(
                error.span(),
                "`prefix` takes a string literal, such as `prefix = \"embedding\"`",
            )
        })?;
        let value = lit.value();
        if value.is_empty() {
            return Err(syn::Error::new_spanned(&lit, "`prefix` must not be empty"));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| c.is_whitespace() || matches!(c, '*' | '?' | '[' | ']' | '\\'))
        {
            return Err(syn::Error::new_spanned(
                &lit,
                format!("`prefix` must not contain {bad:?}"),
            ));
        }
        Ok(Self(lit))
    }
}

/// How long entries live.
pub(crate) enum Ttl {
    /// `ttl = 3600`: whole seconds.
    Seconds(LitInt),
    /// `ttl = Duration::from_millis(500)`, or any expression of type `Duration`.
    Expr(Expr),
}

impl Parse for Ttl {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        match input.parse()? {
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
                Ok(Self::Seconds(seconds))
            }
            Expr::Lit(other) => Err(syn::Error::new_spanned(
                other,
                "`ttl` takes whole seconds (`ttl = 3600`) or a `Duration` expression",
            )),
            expr => Ok(Self::Expr(expr)),
        }
    }
}

/// The value of `codec = "..."`, with the literal's span so that a build
/// without the `msgpack` feature is reported there.
pub(crate) enum Codec {
    Json(Span),
    MessagePack(Span),
}

impl Parse for Codec {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        const EXPECTED: &str = "`codec` is \"json\" or \"msgpack\"";
        let lit: LitStr = input
            .parse()
            .map_err(|error| syn::Error::new(error.span(), EXPECTED))?;
        match lit.value().as_str() {
            "json" => Ok(Self::Json(lit.span())),
            "msgpack" => Ok(Self::MessagePack(lit.span())),
            _ => Err(syn::Error::new_spanned(&lit, EXPECTED)),
        }
    }
}

/// The option a [`Seconds`] value belongs to, for its messages.
pub(crate) trait OptionName {
    const NAME: &'static str;
}

pub(crate) struct StaleName;
impl OptionName for StaleName {
    const NAME: &'static str = "stale";
}

pub(crate) struct TimeoutName;
impl OptionName for TimeoutName {
    const NAME: &'static str = "timeout";
}

pub(crate) struct LockName;
impl OptionName for LockName {
    const NAME: &'static str = "lock";
}

/// A duration of option `N`: whole seconds (at least 1) or a `Duration`
/// expression, as for `ttl`.
pub(crate) struct Seconds<N> {
    pub(crate) ttl: Ttl,
    name: std::marker::PhantomData<N>,
}

impl<N: OptionName> Parse for Seconds<N> {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let ttl = match input.parse()? {
            Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(seconds),
                ..
            }) => {
                if seconds.base10_parse::<u64>()? == 0 {
                    return Err(syn::Error::new_spanned(
                        &seconds,
                        format!("`{}` must be at least 1 second", N::NAME),
                    ));
                }
                Ttl::Seconds(seconds)
            }
            Expr::Lit(other) => {
                return Err(syn::Error::new_spanned(
                    other,
                    format!(
                        "`{0}` takes whole seconds (`{0} = 300`) or a `Duration` expression",
                        N::NAME
                    ),
                ));
            }
            expr => Ttl::Expr(expr),
        };
        Ok(Self {
            ttl,
            name: std::marker::PhantomData,
        })
    }
}

/// `compress`, or `compress = 4096` (the threshold in bytes).
struct Compress {
    keyword: kw::compress,
    threshold: Option<LitInt>,
}

impl Parse for Compress {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let keyword = input.parse()?;
        if !input.peek(Token![=]) {
            return Ok(Self {
                keyword,
                threshold: None,
            });
        }
        input.parse::<Token![=]>()?;
        const EXPECTED: &str =
            "`compress` takes a threshold in bytes (`compress = 4096`), or nothing (1 KiB)";
        let threshold: LitInt = input
            .parse()
            .map_err(|error| syn::Error::new(error.span(), EXPECTED))?;
        threshold
            .base10_parse::<usize>()
            .map_err(|_| syn::Error::new_spanned(&threshold, EXPECTED))?;
        Ok(Self {
            keyword,
            threshold: Some(threshold),
        })
    }
}

/// `tags = [expr, ...]`: expressions over the arguments, each `Display`.
pub(crate) struct Tags(Vec<Expr>);

impl Parse for Tags {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        const EXPECTED: &str =
            "`tags` takes a list of expressions, such as `tags = [format!(\"user:{user_id}\")]`";
        if !input.peek(syn::token::Bracket) {
            return Err(input.error(EXPECTED));
        }
        let content;
        syn::bracketed!(content in input);
        let tags: Vec<Expr> = Punctuated::<Expr, Token![,]>::parse_terminated(&content)?
            .into_iter()
            .collect();
        if tags.is_empty() {
            return Err(syn::Error::new(
                content.span(),
                "`tags` must name at least one tag",
            ));
        }
        Ok(Self(tags))
    }
}

/// The value of `local = true|false`.
pub(crate) struct Local(bool);

impl Parse for Local {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let lit: syn::LitBool = input.parse().map_err(|error| {
            syn::Error::new(
                error.span(),
                "`local` is `true` or `false` (`local = false`: never from the local tier)",
            )
        })?;
        Ok(Self(lit.value))
    }
}
