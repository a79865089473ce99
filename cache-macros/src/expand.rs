//! Code generation: the function keeps its signature; its body becomes a
//! future handed to `cache_core::__private::memoize` with the call's key.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::attr::{CachedArgs, Ttl};

/// How a return type is cached.
enum Outcome {
    /// `Result<T, E>`: only `Ok`.
    Ok,
    /// `Option<T>`: only `Some`.
    Some,
    /// Anything else: always.
    Always,
}

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
        _ => false,
    }
}

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

    // The named arguments, in order; `self` is never part of the key.
    let mut names: Vec<Ident> = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(typed) = input else {
            continue;
        };
        match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                names.push(pat.ident.clone());
            }
            pattern if args.key.is_none() => {
                return Err(syn::Error::new_spanned(
                    pattern,
                    "#[cached] cannot put a pattern argument in the key: bind it to a name \
                     (`pair: (u8, u8)`) or give the key yourself with `key = ...`",
                ));
            }
            _ => {}
        }
    }
    for skipped in &args.skip {
        if !names.contains(skipped) {
            return Err(syn::Error::new_spanned(
                skipped,
                format!("`{skipped}` is not an argument of this function"),
            ));
        }
    }
    let key_args: Vec<&Ident> = names.iter().filter(|n| !args.skip.contains(n)).collect();

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
    let (stored, restore) = match outcome(&return_type) {
        Outcome::Ok => (quote!(stored_ok), quote!(restore_ok)),
        Outcome::Some => (quote!(stored_some), quote!(restore_some)),
        Outcome::Always => (quote!(stored_always), quote!(restore_always)),
    };

    let prefix = &args.prefix;
    let ttl = match &args.ttl {
        Ttl::Seconds(seconds) => quote!(::cache_core::__private::Duration::from_secs(#seconds)),
        Ttl::Expr(expr) => quote!(#expr),
    };
    let codec = match args.codec.as_ref().map(|lit| (lit, lit.value())) {
        None => quote!(::core::option::Option::None),
        Some((lit, name)) if name == "msgpack" => {
            quote_spanned!(lit.span()=> ::core::option::Option::Some(::cache_core::Codec::MessagePack))
        }
        Some(_) => quote!(::core::option::Option::Some(::cache_core::Codec::Json)),
    };
    let cache = match &args.cache {
        Some(expr) => quote!(::cache_core::__private::handle(#expr)),
        None => quote!(::cache_core::__private::default_handle()),
    };
    let (checks, key) = match &args.key {
        Some(expr) => (
            Vec::new(),
            quote!(::cache_core::__private::custom_key(#prefix, #expr)),
        ),
        None => (
            // Spanned at each argument, so a non-Serialize one is reported there.
            key_args
                .iter()
                .map(|arg| quote_spanned!(arg.span()=> ::cache_core::__private::assert_serialize(&#arg);))
                .collect(),
            quote!(::cache_core::__private::key(#prefix, &(#(&#key_args,)*))),
        ),
    };
    let function_name = sig.ident.to_string();

    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #(#checks)*
            let __cached_call = ::cache_core::__private::Call {
                cache: #cache,
                key: #key,
                ttl: #ttl,
                codec: #codec,
                function: #function_name,
            };
            ::cache_core::__private::memoize(
                __cached_call,
                async move {
                    // The annotation gives `?` and `return` in the body their type.
                    let __cached_result: #return_type = #block;
                    __cached_result
                },
                ::cache_core::__private::#stored,
                ::cache_core::__private::#restore,
            )
            .await
        }
    })
}
