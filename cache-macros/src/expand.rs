//! Code generation: the function keeps its signature; its body goes to
//! `cache_core::__private::memoize` (the engine behind `Cache::get_or_set`
//! too) with the call's key and `EntryOptions`: as a future, or, with
//! `stale`, as a closure that makes an owned future (owned copies of
//! borrowed arguments), which a background refresh can run after the call
//! returned. Beside it go `{name}_key` and `{name}_invalidate`, which build
//! the key from the same tokens, so the three can never disagree on it.

use proc_macro2::{TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::{Expr, FnArg, GenericParam, Ident, ItemFn, Pat, ReturnType, Signature, Type};

use crate::attr::{CachedArgs, Codec, Ttl};

/// How a return type is cached.
enum Outcome {
    /// `Result<T, E>`: only `Ok`.
    Ok,
    /// `Option<T>`: only `Some`.
    Some,
    /// Anything else: always.
    Always,
}

impl Outcome {
    /// The `__private` functions that pick what is stored and rebuild the return value.
    fn store_and_restore(&self) -> (TokenStream, TokenStream) {
        match self {
            Self::Ok => (quote!(stored_ok), quote!(restore_ok)),
            Self::Some => (quote!(stored_some), quote!(restore_some)),
            Self::Always => (quote!(stored_always), quote!(restore_always)),
        }
    }
}

/// What is cached for this return type, told by its last path segment.
fn outcome(ty: &Type) -> Outcome {
    let Type::Path(path) = ty else {
        return Outcome::Always;
    };
    match path
        .path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .as_deref()
    {
        Some("Result") => Outcome::Ok,
        Some("Option") => Outcome::Some,
        _ => Outcome::Always,
    }
}

/// `impl Trait` anywhere in the type: there is nothing to decode a stored value into.
fn contains_impl_trait(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(_) => true,
        Type::Path(path) => path
            .path
            .segments
            .iter()
            .any(|segment| match &segment.arguments {
                syn::PathArguments::AngleBracketed(args) => args.args.iter().any(|arg| match arg {
                    syn::GenericArgument::Type(ty) => contains_impl_trait(ty),
                    _ => false,
                }),
                _ => false,
            }),
        Type::Tuple(tuple) => tuple.elems.iter().any(contains_impl_trait),
        Type::Array(array) => contains_impl_trait(&array.elem),
        Type::Paren(paren) => contains_impl_trait(&paren.elem),
        Type::Reference(reference) => contains_impl_trait(&reference.elem),
        Type::Slice(slice) => contains_impl_trait(&slice.elem),
        _ => false,
    }
}

/// The memoized function and the two functions beside it, or the first
/// mistake in it.
pub(crate) fn expand(args: CachedArgs, function: ItemFn) -> syn::Result<TokenStream> {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[cached] works on `async fn` only",
        ));
    }
    let arguments = Arguments::of(&sig, &args)?;
    let return_type = return_type(&sig)?;
    let (stored, restore) = outcome(&return_type).store_and_restore();
    let serialize_checks = serialize_checks(&args, &arguments.key);
    let key = key(&args, &sig, &arguments);
    let siblings = if args.in_trait {
        TokenStream::new()
    } else {
        siblings(&args, &attrs, &vis, &sig, &arguments, &key)
    };
    let handle = match &args.cache {
        Some(expr) if borrowable_handle(expr, &sig) => {
            quote!(::cache_core::__private::handle_ref(#expr))
        }
        Some(expr) => quote!(::core::option::Option::map(
            ::cache_core::__private::handle(#expr),
            ::cache_core::__private::Cow::Owned,
        )),
        None => quote!(::core::option::Option::map(
            ::cache_core::__private::default_handle(),
            ::cache_core::__private::Cow::Owned,
        )),
    };
    let call_key = call_key(&args, &sig, &arguments);
    let options = entry_options(&args);
    let function_name = sig.ident.to_string();
    let body = body(&args, &sig, &block, &return_type)?;

    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #serialize_checks
            let __cached_handle: ::core::option::Option<
                ::cache_core::__private::Cow<'_, ::cache_core::Cache>,
            > = #handle;
            // Before the body takes the arguments: the key and the tags are made of them.
            #options
            let __cached_key = #call_key;
            let __cached_call = ::cache_core::__private::Call {
                cache: __cached_handle,
                key: __cached_key,
                options: __cached_options,
                function: #function_name,
            };
            ::cache_core::__private::memoize(
                __cached_call,
                #body,
                ::cache_core::__private::#stored,
                ::cache_core::__private::#restore,
                {
                    // Autoref specialization: `Clone` values are kept decoded.
                    #[allow(unused_imports)]
                    use ::cache_core::__private::{KeepBytes as _, KeepClone as _};
                    #[allow(clippy::needless_borrow)]
                    let __cached_keep = (&::cache_core::__private::probe::<#return_type, _>(
                        ::cache_core::__private::#stored,
                    ))
                        .keep();
                    __cached_keep
                },
            )
            .await
        }

        #siblings
    })
}

/// `Some(error)` when `function` is an `#[async_trait]` method: that macro
/// runs first and hands over a plain `fn` returning `Pin<Box<dyn Future>>`,
/// a future there is nothing to memoize of. The error says what to do instead.
pub(crate) fn async_trait_method(function: &ItemFn) -> Option<syn::Error> {
    let sig = &function.sig;
    (sig.asyncness.is_none()
        && returns_boxed_future(&sig.output)
        && body_is_boxed_async(&function.block))
    .then(|| {
        syn::Error::new_spanned(
            &sig.ident,
            "#[cached] cannot memoize an `#[async_trait]` method: `#[async_trait]` has turned it \
             into a `fn` returning `Pin<Box<dyn Future>>`. Put `#[cached]` on an inherent \
             `async fn` and call that from the trait method, or drop `#[async_trait]` and write \
             a native `async fn` in the trait (Rust 1.75+) with `#[cached(..., in_trait)]`",
        )
    })
}

/// `-> Pin<Box<dyn Future<...> ...>>`, whatever the paths are written as.
fn returns_boxed_future(output: &ReturnType) -> bool {
    let ReturnType::Type(_, ty) = output else {
        return false;
    };
    let Some(boxed) = single_type_argument(ty, "Pin") else {
        return false;
    };
    let Some(Type::TraitObject(object)) = single_type_argument(boxed, "Box") else {
        return false;
    };
    object.bounds.iter().any(|bound| {
        matches!(bound, syn::TypeParamBound::Trait(bound)
            if bound.path.segments.last().is_some_and(|segment| segment.ident == "Future"))
    })
}

/// The one type argument of `ty` when it is a path ending in `name<T>`.
fn single_type_argument<'t>(ty: &'t Type, name: &str) -> Option<&'t Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let segment = path.path.segments.last()?;
    if segment.ident != name {
        return None;
    }
    let syn::PathArguments::AngleBracketed(arguments) = &segment.arguments else {
        return None;
    };
    arguments.args.iter().find_map(|argument| match argument {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

/// A body that ends in `Box::pin(async ...)`, as `#[async_trait]` writes it.
fn body_is_boxed_async(block: &syn::Block) -> bool {
    let Some(syn::Stmt::Expr(Expr::Call(call), None)) = block.stmts.last() else {
        return false;
    };
    let Expr::Path(function) = &*call.func else {
        return false;
    };
    let segments: Vec<String> = function
        .path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    segments.ends_with(&["Box".to_owned(), "pin".to_owned()])
        && matches!(call.args.first(), Some(Expr::Async(_)))
}

/// The function's arguments as the key sees them.
struct Arguments {
    /// The named arguments that make up a hashed key, in order: `self`, the
    /// skipped ones and the handle are never part of it.
    key: Vec<Ident>,
    /// Those of [`Self::key`] whose type holds an `impl Trait`: an unnamed
    /// type parameter, whose name goes in the key as a named one's does.
    impl_trait: Vec<Ident>,
    /// What `{name}_key` and `{name}_invalidate` take: every argument but
    /// `self`, the skipped ones and the handle, as written.
    addressing: Vec<syn::PatType>,
}

impl Arguments {
    fn of(sig: &Signature, args: &CachedArgs) -> syn::Result<Arguments> {
        let handle = handle_argument(sig, args);
        let mut names: Vec<Ident> = Vec::new();
        let mut impl_trait = Vec::new();
        let mut addressing = Vec::new();
        for input in &sig.inputs {
            let FnArg::Typed(typed) = input else {
                continue;
            };
            match &*typed.pat {
                Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                    let name = &pat.ident;
                    names.push(name.clone());
                    if args.skip.contains(name) || handle.as_ref() == Some(name) {
                        continue;
                    }
                    if contains_impl_trait(&typed.ty) {
                        impl_trait.push(name.clone());
                    }
                    addressing.push(typed.clone());
                }
                pattern if args.key.is_none() => {
                    return Err(syn::Error::new_spanned(
                        pattern,
                        "#[cached] cannot put a pattern argument in the key: bind it to a name \
                         (`pair: (u8, u8)`) or give the key yourself with `key = ...`",
                    ));
                }
                _ => addressing.push(typed.clone()),
            }
        }
        if let Some(unknown) = args.skip.iter().find(|skipped| !names.contains(skipped)) {
            return Err(syn::Error::new_spanned(
                unknown,
                format!("`{unknown}` is not an argument of this function"),
            ));
        }
        if let Some(expr) = &args.key {
            let left_out = args.skip.iter().chain(handle.as_ref());
            if let Some(name) = left_out.into_iter().find(|name| mentions(expr, name)) {
                return Err(syn::Error::new_spanned(
                    expr,
                    format!(
                        "`key = ...` uses `{name}`, which is left out of the key (by `skip` or \
                         as the `cache = ...` handle): take it out of `skip(...)`, or out of `key`"
                    ),
                ));
            }
        }
        names.retain(|name| !args.skip.contains(name) && handle.as_ref() != Some(name));
        Ok(Arguments {
            key: names,
            impl_trait,
            addressing,
        })
    }
}

/// Whether the handle `cache = ...` names can be lent to the call rather
/// than cloned (a clone is an atomic increment and decrement per call): an
/// argument of type `&Cache`, or `&self.field` on a `&self` method. The
/// body copies such a reference, so lending it conflicts with nothing; a
/// handle the body may move (`cache: Cache`, `self: Arc<Self>`) is cloned.
fn borrowable_handle(expr: &Expr, sig: &Signature) -> bool {
    match expr {
        Expr::Path(path) => {
            let Some(name) = path.path.get_ident().filter(|_| path.qself.is_none()) else {
                return false;
            };
            sig.inputs.iter().any(|input| match input {
                FnArg::Typed(typed) => {
                    matches!(&*typed.pat, Pat::Ident(pat) if pat.ident == *name)
                        && matches!(&*typed.ty, Type::Reference(reference)
                            if reference.mutability.is_none()
                                && matches!(&*reference.elem, Type::Path(elem)
                                    if elem.path.segments.last().is_some_and(|last| last.ident == "Cache")))
                }
                FnArg::Receiver(_) => false,
            })
        }
        Expr::Reference(reference) if reference.mutability.is_none() => {
            let shared_self = matches!(sig.receiver(), Some(receiver)
                if receiver.reference.is_some() && receiver.mutability.is_none());
            let mut inner = &*reference.expr;
            while let Expr::Field(field) = inner {
                inner = &field.base;
            }
            shared_self
                && !std::ptr::eq(inner, &*reference.expr)
                && matches!(inner, Expr::Path(path) if path.path.is_ident("self"))
        }
        _ => false,
    }
}

/// The argument that `cache = x` names (or `&x`, `Some(x)`, `Some(&x)`,
/// `x.clone()`): the handle is never part of the key, so it is left out as
/// if skipped.
fn handle_argument(sig: &Signature, args: &CachedArgs) -> Option<Ident> {
    let mut expr = args.cache.as_ref()?;
    loop {
        match expr {
            Expr::Reference(reference) => expr = &reference.expr,
            Expr::Paren(paren) => expr = &paren.expr,
            Expr::Group(group) => expr = &group.expr,
            Expr::MethodCall(call) if call.method == "clone" && call.args.is_empty() => {
                expr = &call.receiver;
            }
            Expr::Call(call)
                if call.args.len() == 1
                    && matches!(&*call.func, Expr::Path(path)
                        if path.path.segments.last().is_some_and(|last| last.ident == "Some")) =>
            {
                expr = &call.args[0];
            }
            _ => break,
        }
    }
    let Expr::Path(path) = expr else {
        return None;
    };
    let name = path.path.get_ident().filter(|_| path.qself.is_none())?;
    sig.inputs
        .iter()
        .any(|input| {
            matches!(input, FnArg::Typed(typed)
                if matches!(&*typed.pat, Pat::Ident(pat) if pat.ident == *name))
        })
        .then(|| name.clone())
}

/// Whether the expression names the argument `name`: see [`mentions_tokens`].
fn mentions(expr: &Expr, name: &Ident) -> bool {
    mentions_tokens(quote!(#expr), name)
}

/// Whether the tokens name the argument `name`: as a token (in macro calls
/// too; not a field, method or path segment of that name, as in `x.name` or
/// `a::name`), or inside a format string (`"user:{name}"`).
fn mentions_tokens(tokens: TokenStream, name: &Ident) -> bool {
    fn in_tokens(tokens: TokenStream, name: &Ident) -> bool {
        // The two punctuation marks just before the token, if any.
        let mut before: [Option<char>; 2] = [None, None];
        tokens.into_iter().any(|token| {
            let found = match &token {
                TokenTree::Ident(ident) => {
                    let member = before[1] == Some('.') || before == [Some(':'), Some(':')];
                    !member && ident == name
                }
                TokenTree::Group(group) => in_tokens(group.stream(), name),
                TokenTree::Literal(literal) => in_format_string(&literal.to_string(), name),
                TokenTree::Punct(_) => false,
            };
            let punct = match &token {
                TokenTree::Punct(punct) => Some(punct.as_char()),
                _ => None,
            };
            before = [before[1], punct];
            found
        })
    }
    fn in_format_string(literal: &str, name: &Ident) -> bool {
        let name = name.to_string();
        literal.match_indices('{').any(|(at, _)| {
            let rest = &literal[at + 1..];
            rest.strip_prefix(name.as_str())
                .is_some_and(|after| after.starts_with('}') || after.starts_with(':'))
                && !literal[..at].ends_with('{')
        })
    }
    in_tokens(tokens, name)
}

/// Whether the `key = ...` expression uses `self`: then `{name}_key` and
/// `{name}_invalidate` are methods too.
fn key_uses_self(args: &CachedArgs) -> bool {
    fn in_tokens(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|token| match token {
            TokenTree::Ident(ident) => ident == "self",
            TokenTree::Group(group) => in_tokens(group.stream()),
            _ => false,
        })
    }
    args.key
        .as_ref()
        .is_some_and(|expr| in_tokens(quote!(#expr)))
}

/// The type cached values decode into.
fn return_type(sig: &Signature) -> syn::Result<Type> {
    let return_type: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if contains_impl_trait(&return_type) {
        return Err(syn::Error::new_spanned(
            &return_type,
            "#[cached] needs a concrete return type to decode cached values into",
        ));
    }
    Ok(return_type)
}

/// Without `key = ...`, one check per key argument, spanned at it, so that
/// one that is not `Serialize` is reported there rather than at the attribute.
fn serialize_checks(args: &CachedArgs, key_args: &[Ident]) -> TokenStream {
    if args.key.is_some() {
        return TokenStream::new();
    }
    key_args
        .iter()
        .map(|arg| quote_spanned!(arg.span()=> ::cache_core::__private::assert_serialize(&#arg);))
        .collect()
}

/// The expression that builds the call's key (`Result<String>`, no
/// namespace), over the arguments by name: the function, `{name}_key` and
/// `{name}_invalidate` all use it.
///
/// A hashed key hashes the key arguments; a generic function's adds, last,
/// one array with each type parameter's `type_name` (a const parameter's
/// value) and each `impl Trait` argument's type name, so that `f(1u8)` and
/// `f(1.0f64)`, whose arguments have the same JSON, get keys of their own.
fn key(args: &CachedArgs, sig: &Signature, arguments: &Arguments) -> TokenStream {
    let prefix = &args.prefix;
    if let Some(expr) = &args.key {
        return quote!(::cache_core::__private::custom_key(#prefix, #expr));
    }
    let hashed = hashed_arguments(sig, arguments);
    quote!(::cache_core::__private::key(#prefix, &#hashed))
}

/// The tuple a hashed key is the canonical JSON of: the key arguments, and
/// for a generic function the names of its types (see [`key`]).
fn hashed_arguments(sig: &Signature, arguments: &Arguments) -> TokenStream {
    let key_args = &arguments.key;
    let types: Vec<TokenStream> = sig
        .generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(ty) => {
                let name = &ty.ident;
                Some(quote!(::core::any::type_name::<#name>()))
            }
            GenericParam::Const(constant) => {
                let name = &constant.ident;
                Some(quote!(#name))
            }
            GenericParam::Lifetime(_) => None,
        })
        .chain(
            arguments
                .impl_trait
                .iter()
                .map(|arg| quote!(::core::any::type_name_of_val(&#arg))),
        )
        .collect();
    let types = (!types.is_empty()).then(|| quote!((#(#types,)*),));
    quote!((#(&#key_args,)* #types))
}

/// `{name}_key(args…)` and `{name}_invalidate(&cache, args…)`, beside the
/// function (associated functions beside a method): they take the
/// arguments that make up the key, as the function declares them, and
/// build the key from the same tokens as the function does, so a caller
/// never rebuilds a key by hand, whatever `key = ...` and `skip(...)` say.
fn siblings(
    args: &CachedArgs,
    attrs: &[syn::Attribute],
    vis: &syn::Visibility,
    sig: &Signature,
    arguments: &Arguments,
    key: &TokenStream,
) -> TokenStream {
    let name = &sig.ident;
    let key_fn = format_ident!("{}_key", name, span = name.span());
    let invalidate_fn = format_ident!("{}_invalidate", name, span = name.span());
    let generics = &sig.generics;
    let where_clause = &sig.generics.where_clause;
    let receiver = key_uses_self(args).then(|| quote!(&self,));
    let params = &arguments.addressing;
    let handle = if arguments
        .addressing
        .iter()
        .any(|arg| matches!(&*arg.pat, Pat::Ident(pat) if pat.ident == "cache"))
    {
        format_ident!("__cached_handle")
    } else {
        format_ident!("cache")
    };
    // What the function is compiled under, its siblings are too; and the
    // lints it allows, they allow (they copy its argument list).
    let kept: Vec<&syn::Attribute> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg") || attr.path().is_ident("allow"))
        .collect();
    let key_doc = format!(
        " The key under which `#[cached]` fn `{name}` stores its result for these \
         arguments, without the handle's namespace (as `Cache::get` and `Cache::delete` \
         take keys). Fails as the call would: an argument with no canonical JSON form."
    );
    let invalidate_doc = format!(
        " Drops the entry `#[cached]` fn `{name}` stored in `{handle}` for these \
         arguments, so that the next call runs the body; `Ok(true)` if there was one."
    );
    // Spanned at the function's name: a sibling the place cannot hold (a
    // trait impl without `in_trait`) is reported there, not at the attribute.
    quote_spanned! {name.span()=>
        #[doc = #key_doc]
        #(#kept)*
        #[allow(
            dead_code,
            unused_variables,
            unused_mut,
            clippy::too_many_arguments,
            clippy::needless_lifetimes,
            clippy::ptr_arg
        )]
        #vis fn #key_fn #generics (#receiver #(#params),*)
            -> ::core::result::Result<::std::string::String, ::cache_core::Error>
            #where_clause
        {
            #key
        }

        #[doc = #invalidate_doc]
        #(#kept)*
        #[allow(
            dead_code,
            unused_variables,
            unused_mut,
            clippy::too_many_arguments,
            clippy::needless_lifetimes,
            clippy::ptr_arg
        )]
        #vis async fn #invalidate_fn #generics (
            #receiver
            #handle: &::cache_core::Cache,
            #(#params),*
        ) -> ::core::result::Result<bool, ::cache_core::Error>
            #where_clause
        {
            ::cache_core::__private::invalidate(#handle, #key).await
        }
    }
}

/// The expression of the call's key for the engine (`Result<CallKey>`):
/// with `key = ...` the key as given; else the arguments, left unhashed when
/// the handle's local tier may serve the call (a local hit needs no SHA-256).
fn call_key(args: &CachedArgs, sig: &Signature, arguments: &Arguments) -> TokenStream {
    let prefix = &args.prefix;
    if let Some(expr) = &args.key {
        return quote!(::cache_core::__private::custom_call_key(#prefix, #expr));
    }
    let hashed = hashed_arguments(sig, arguments);
    let local = args.local;
    quote!(::cache_core::__private::call_key(
        ::core::option::Option::as_deref(&__cached_handle),
        #local,
        #prefix,
        &#hashed,
    ))
}

/// The statement that binds `__cached_options` (a `Cow<EntryOptions>`)
/// to the options of the attribute: `ttl`, then what else it says, and the
/// prefix as the label of the call's metrics. Built once, in a `static`,
/// when every value is a literal (no tags, no `Duration` expressions); for
/// each call otherwise.
fn entry_options(args: &CachedArgs) -> TokenStream {
    let options = entry_options_expr(args);
    let literal = |ttl: &Option<&Ttl>| ttl.is_none_or(|ttl| matches!(ttl, Ttl::Seconds(_)));
    let stored = &args.stored;
    let constant = literal(&Some(&args.ttl))
        && literal(&stored.stale.as_ref())
        && literal(&stored.timeout.as_ref())
        && literal(&args.lock.as_ref())
        && stored.tags.is_none();
    if constant {
        quote! {
            static __CACHED_OPTIONS: ::cache_core::__private::EntryOptions = #options;
            let __cached_options = ::cache_core::__private::Cow::Borrowed(&__CACHED_OPTIONS);
        }
    } else {
        quote! {
            let __cached_options = ::cache_core::__private::Cow::Owned(#options);
        }
    }
}

/// The `EntryOptions` expression of the attribute.
fn entry_options_expr(args: &CachedArgs) -> TokenStream {
    let duration = |ttl: &Ttl| match ttl {
        Ttl::Seconds(seconds) => quote!(::cache_core::__private::Duration::from_secs(#seconds)),
        Ttl::Expr(expr) => quote!(#expr),
    };
    let ttl = duration(&args.ttl);
    let stored = &args.stored;
    let mut options = quote!(::cache_core::__private::EntryOptions::ttl(#ttl));
    if let Some(stale) = &stored.stale {
        let stale = duration(stale);
        options.extend(quote!(.stale(#stale)));
    }
    if let Some(timeout) = &stored.timeout {
        let timeout = duration(timeout);
        options.extend(quote!(.timeout(#timeout)));
    }
    match &stored.compress {
        None => {}
        Some(None) => options.extend(quote!(.compress())),
        Some(Some(bytes)) => options.extend(quote!(.compress_from(#bytes))),
    }
    if stored.encrypt {
        options.extend(quote!(.encrypt()));
    }
    if let Some(tags) = &stored.tags {
        let tags = tags.iter().map(|tag| {
            quote_spanned!(syn::spanned::Spanned::span(tag)=> ::std::string::ToString::to_string(&(#tag)))
        });
        options.extend(quote!(.tags([#(#tags),*])));
    }
    if let Some(lock) = &args.lock {
        let lock = duration(lock);
        options.extend(quote!(.lock(#lock)));
    }
    if !args.local {
        options.extend(quote!(.local(false)));
    }
    match &args.codec {
        None => {}
        Some(Codec::Json(span)) => {
            options.extend(quote_spanned!(*span=> .codec(::cache_core::__private::Codec::Json)));
        }
        Some(Codec::MessagePack(span)) => {
            options.extend(
                quote_spanned!(*span=> .codec(::cache_core::__private::Codec::MessagePack)),
            );
        }
    }
    let prefix = &args.prefix;
    options.extend(quote!(.label(#prefix)));
    options
}

/// The body for the engine. Without `stale` a future that may borrow
/// (`Inline`); with it a closure that, when called (on a miss, or for a
/// background refresh), copies the borrowed arguments the body uses
/// (`&str` -> `String`, `&T` -> `T` for `T: Clone`, `&self` -> `Self` for
/// `Self: Clone`) and makes an owned future that lends them to the body as
/// the borrows it was written for (`Detached`).
fn body(
    args: &CachedArgs,
    sig: &Signature,
    block: &syn::Block,
    return_type: &Type,
) -> syn::Result<TokenStream> {
    if args.stored.stale.is_none() {
        return Ok(quote! {
            ::cache_core::__private::Inline(async move {
                // The annotation gives `?` and `return` in the body their type.
                let __cached_result: #return_type = #block;
                __cached_result
            })
        });
    }
    let mut copies = TokenStream::new();
    let mut lends = TokenStream::new();
    let block_tokens = quote!(#block);
    let mut block = block_tokens.clone();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                if !in_tokens_self(block_tokens.clone()) {
                    continue;
                }
                if receiver.mutability.is_some() && receiver.reference.is_some() {
                    return Err(syn::Error::new_spanned(
                        receiver,
                        "`stale` refreshes in a background task, which gets a copy of `self`: \
                         `&mut self` cannot be copied for it; take `&self` (with `Self: Clone`) \
                         or `self: Arc<Self>`",
                    ));
                }
                let renamed = format_ident!("__cached_self", span = receiver.self_token.span);
                block = rename_self(block, &renamed);
                if receiver.reference.is_some() {
                    copies.extend(quote_spanned! {receiver.self_token.span=>
                        let #renamed = ::cache_core::__private::OwnedArg::new(self);
                    });
                    lends.extend(quote!(let #renamed = #renamed.get();));
                } else {
                    copies.extend(quote!(let #renamed = self;));
                }
            }
            FnArg::Typed(typed) => {
                let (Pat::Ident(pat), Type::Reference(reference)) = (&*typed.pat, &*typed.ty)
                else {
                    // Owned (or a pattern): the closure moves it.
                    continue;
                };
                let name = &pat.ident;
                if !mentions_tokens(block_tokens.clone(), name) {
                    continue;
                }
                if reference.mutability.is_some() {
                    return Err(syn::Error::new_spanned(
                        &typed.ty,
                        format!(
                            "`stale` refreshes in a background task with owned copies of the \
                             arguments: `&mut` argument `{name}` cannot be copied for it"
                        ),
                    ));
                }
                copies.extend(quote_spanned! {syn::spanned::Spanned::span(&typed.ty)=>
                    let #name = ::cache_core::__private::OwnedArg::new(#name);
                });
                lends.extend(quote!(let #name = #name.get();));
            }
        }
    }
    Ok(quote! {
        ::cache_core::__private::Detached::new(move || {
            #copies
            async move {
                #lends
                let __cached_result: #return_type = #block;
                __cached_result
            }
        })
    })
}

/// Whether the tokens use `self` (not `Self`, not a `self::` path).
fn in_tokens_self(tokens: TokenStream) -> bool {
    let mut tokens = tokens.into_iter().peekable();
    while let Some(token) = tokens.next() {
        match token {
            TokenTree::Ident(ident)
                if ident == "self"
                    && !matches!(tokens.peek(), Some(TokenTree::Punct(p)) if p.as_char() == ':') =>
            {
                return true;
            }
            TokenTree::Group(group) if in_tokens_self(group.stream()) => return true,
            _ => {}
        }
    }
    false
}

/// The tokens with `self` (the receiver; not `Self`, not a `self::` path)
/// renamed, for a body moved into a closure, where `self` cannot be bound.
fn rename_self(tokens: TokenStream, renamed: &Ident) -> TokenStream {
    let mut out = TokenStream::new();
    let mut tokens = tokens.into_iter().peekable();
    while let Some(token) = tokens.next() {
        let token = match token {
            TokenTree::Ident(ident)
                if ident == "self"
                    && !matches!(tokens.peek(), Some(TokenTree::Punct(p)) if p.as_char() == ':') =>
            {
                let mut renamed = renamed.clone();
                renamed.set_span(ident.span());
                TokenTree::Ident(renamed)
            }
            TokenTree::Group(group) => {
                let mut inner = proc_macro2::Group::new(
                    group.delimiter(),
                    rename_self(group.stream(), renamed),
                );
                inner.set_span(group.span());
                TokenTree::Group(inner)
            }
            other => other,
        };
        out.extend([token]);
    }
    out
}
