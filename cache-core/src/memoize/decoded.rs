//! Decoded values in the local tier for `#[cached]` functions: when the
//! value type is `Clone`, a local hit is a clone of the value decoded once,
//! not a decoding of its bytes on every call.
//!
//! The generated code picks, by autoref specialization on the concrete
//! type, [`KeepClone`] (the type is `Clone + Send + Sync + 'static`) over
//! [`KeepBytes`] (any other type: the local tier keeps the bytes only):
//!
//! ```text
//! use ::cache_core::__private::{KeepBytes as _, KeepClone as _};
//! (&::cache_core::__private::probe::<ReturnType, _>(stored)).keep()
//! ```

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::local::Decoded;

/// How the local tier keeps and serves values of type `V` decoded.
pub struct Keep<V> {
    pub(super) keep: fn(&V) -> Decoded,
    pub(super) take: fn(&(dyn Any + Send + Sync)) -> Option<V>,
}

impl<V> Keep<V> {
    /// `value` as the local tier keeps it.
    pub(super) fn decoded(&self, value: &V) -> Decoded {
        (self.keep)(value)
    }

    /// A clone of the kept value, if it is a `V`.
    pub(super) fn take(&self, decoded: &Decoded) -> Option<V> {
        (self.take)(decoded.as_ref())
    }
}

/// Names the value type `V` of a memoized function, from its `stored`
/// function, for [`KeepClone`] / [`KeepBytes`] to be chosen on.
pub struct Probe<V>(PhantomData<fn() -> V>);

/// The [`Probe`] of the values `stored` picks out of an `R`.
pub fn probe<R, V>(stored: fn(&R) -> Option<&V>) -> Probe<V> {
    let _ = stored;
    Probe(PhantomData)
}

/// Chosen when `V` is `Clone`: the local tier keeps the value decoded.
pub trait KeepClone<V> {
    /// How to keep values decoded.
    fn keep(&self) -> Option<Keep<V>>;
}

impl<V: Clone + Send + Sync + 'static> KeepClone<V> for Probe<V> {
    fn keep(&self) -> Option<Keep<V>> {
        Some(keep_clone())
    }
}

/// How the local tier keeps `Clone` values decoded: a hit is a clone.
pub(crate) fn keep_clone<V: Clone + Send + Sync + 'static>() -> Keep<V> {
    Keep {
        keep: |value| Arc::new(value.clone()),
        take: |decoded| decoded.downcast_ref::<V>().cloned(),
    }
}

/// Chosen otherwise: the local tier keeps the bytes, decoded on each hit.
pub trait KeepBytes<V> {
    /// `None`: values are not kept decoded.
    fn keep(&self) -> Option<Keep<V>>;
}

impl<V> KeepBytes<V> for &Probe<V> {
    fn keep(&self) -> Option<Keep<V>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memoize::{stored_always, stored_ok};

    struct NotClone;

    #[test]
    // The borrow is the specialization: without it `KeepBytes` is never picked.
    #[allow(clippy::needless_borrow)]
    fn clone_types_are_kept_decoded_and_others_are_not() {
        #[allow(unused_imports)]
        use super::{KeepBytes as _, KeepClone as _};
        let keep = (&probe::<Result<Vec<f32>, String>, _>(stored_ok)).keep();
        let keep = keep.expect("Vec<f32> is Clone");
        let decoded = keep.decoded(&vec![1.0, 2.0]);
        assert_eq!(keep.take(&decoded), Some(vec![1.0, 2.0]));
        let other: Decoded = Arc::new(7_u8);
        assert_eq!(keep.take(&other), None, "another type is not served");
        assert!((&probe::<NotClone, _>(stored_always)).keep().is_none());
    }
}
