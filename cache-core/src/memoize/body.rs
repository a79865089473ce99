//! The body of a memoized call: what runs on a miss in the call itself and,
//! with `stale`, in a background refresh.
//!
//! A refresh runs in a task of its own, after the call has returned, so it
//! needs a body that owns what it uses (`Send + 'static`); a call that
//! never refreshes may borrow (`&self`, `&str` arguments). The engine takes
//! either: an [`Inline`] future, run in the call only, or a [`Detached`]
//! closure that makes an owned future when one is needed, in the call (a
//! miss) or for a refresh (`#[cached(stale = ...)]` gives it owned copies of
//! borrowed arguments, [`OwnedArg`]; `get_or_set` takes such a closure).

use std::borrow::Borrow;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use serde::Serialize;

use crate::codec::Codec;

/// A refresh's run of the body: the codec bytes of what its result stores
/// (`None` when there is nothing to store: `Err`, `None`, a value that does
/// not encode).
pub(crate) type Refresh = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send + 'static>>;

/// The body of a memoized call, whose result is an `R` that stores a `V`.
pub trait Body<R, V> {
    /// The body run in the call.
    type Future: Future<Output = R>;

    /// The body, to run in the call (on a miss).
    fn run(self) -> Self::Future;

    /// The body as a background refresh, if it can be one: its result's
    /// stored part (`stored`), encoded with `codec`.
    fn refresh(
        self,
        stored: fn(&R) -> Option<&V>,
        codec: Codec,
        function: &'static str,
    ) -> Option<Refresh>;
}

/// A body that runs in the call only: it may borrow.
#[derive(Debug)]
pub struct Inline<Fut>(pub Fut);

impl<R, V, Fut: Future<Output = R>> Body<R, V> for Inline<Fut> {
    type Future = Fut;

    fn run(self) -> Fut {
        self.0
    }

    fn refresh(self, _: fn(&R) -> Option<&V>, _: Codec, _: &'static str) -> Option<Refresh> {
        None
    }
}

/// A body that may also run in a background refresh: a closure that makes
/// an owned future (the closure itself may borrow: it is called in the call).
///
/// What a refresh needs of it (`Send + 'static`) is checked where it is
/// made ([`Detached::new`]) and kept as a function pointer, not as bounds of
/// the [`Body`] impl: a caller's future that holds a body whose impl asked
/// for `'static` would fail to prove `Send` wherever the closure captures a
/// reference (the compiler sees such lifetimes as "any lifetime" there).
pub struct Detached<F, R, V> {
    body: F,
    refresh: MakeRefresh<F, R, V>,
}

/// How a [`Detached`] body becomes a refresh: its part to store, encoded.
type MakeRefresh<F, R, V> = fn(F, fn(&R) -> Option<&V>, Codec, &'static str) -> Refresh;

impl<F, R, V> std::fmt::Debug for Detached<F, R, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detached").finish_non_exhaustive()
    }
}

impl<F, Fut, R, V> Detached<F, R, V>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: 'static,
    V: Serialize + 'static,
{
    /// The body `make` makes, when it is needed.
    pub fn new(make: F) -> Detached<F, R, V> {
        Detached {
            body: make,
            refresh: |make, stored, codec, function| {
                let body = make();
                Box::pin(async move {
                    let result = body.await;
                    encode(stored(&result)?, codec, function)
                })
            },
        }
    }
}

impl<R, V, F, Fut> Body<R, V> for Detached<F, R, V>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    type Future = Fut;

    fn run(self) -> Fut {
        (self.body)()
    }

    fn refresh(
        self,
        stored: fn(&R) -> Option<&V>,
        codec: Codec,
        function: &'static str,
    ) -> Option<Refresh> {
        Some((self.refresh)(self.body, stored, codec, function))
    }
}

/// The codec bytes of a result's stored part; `None` (logged: a type the
/// codec cannot write is a bug) when it does not encode.
pub(crate) fn encode<V: Serialize + ?Sized>(
    value: &V,
    codec: Codec,
    function: &'static str,
) -> Option<Vec<u8>> {
    match codec.encode(value) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            tracing::warn!(function, error = %err, "result could not be encoded; not cached");
            None
        }
    }
}

/// An owned copy of a borrowed argument (`&str` -> `String`, `&T` -> `T`
/// for `T: Clone`, through [`ToOwned`]), lent out again as the borrow the
/// function's body expects: how `#[cached(stale = ...)]` gives a refresh
/// task arguments the call only borrowed.
pub struct OwnedArg<T: ?Sized + ToOwned> {
    owned: T::Owned,
    _borrowed: PhantomData<fn(&T)>,
}

impl<T: ?Sized + ToOwned> OwnedArg<T> {
    /// Copies `borrowed`.
    pub fn new(borrowed: &T) -> OwnedArg<T> {
        OwnedArg {
            owned: borrowed.to_owned(),
            _borrowed: PhantomData,
        }
    }

    /// The copy, as the argument's type.
    pub fn get(&self) -> &T {
        self.owned.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_static<T: Send + 'static>(_: &T) {}

    #[test]
    fn owned_arguments_outlive_the_borrow() {
        let text = String::from("hello");
        let owned = OwnedArg::new(text.as_str());
        drop(text);
        is_static(&owned);
        assert_eq!(owned.get(), "hello");
        let numbers = OwnedArg::new(&[1, 2, 3][..]);
        assert_eq!(numbers.get(), [1, 2, 3]);
    }
}
