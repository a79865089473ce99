//! The function API: [`Cache::get_or_set`] and [`Cache::try_get_or_set`],
//! `#[cached]` for a key and a closure.

use std::borrow::Cow;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::body::Detached;
use super::decoded::keep_clone;
use super::engine::{Call, memoize};
use super::key::CallKey;
use super::options::EntryOptions;
use super::{restore_always, restore_ok, stored_always, stored_ok};
use crate::cache::Cache;

impl Cache {
    /// The value under `key`, or, when there is none, the value `compute`
    /// makes, stored as `options` say: what `#[cached]` does for a function,
    /// for a key and a closure (dynamic keys, a handler, a closure over
    /// state). The key is used as given, with the handle's namespace in
    /// front, as [`get`](Self::get) and [`set`](Self::set) use it;
    /// [`key_for`](crate::key_for) builds the hashed key of an argument
    /// list, as `#[cached]` does.
    ///
    /// Every guarantee of `#[cached]` holds:
    ///
    /// - **fail-open**: the cache unreachable, slow (the handle's timeout,
    ///   one budget for the call and the memoized calls `compute` makes),
    ///   its breaker open, a value that does not decode: `compute` runs and
    ///   its value is returned; this call never fails;
    /// - **single-flight**: concurrent calls of one key on this handle (and
    ///   its clones) run `compute` once, the others get its value;
    /// - the **local tier** serves the value without a round trip (a clone
    ///   of the value decoded once: hence `T: Clone`);
    /// - [`EntryOptions`] adds stale-while-revalidate and fail-safe
    ///   (`stale`, `timeout`), tags, compression, encryption, and one
    ///   computation per key across instances (`lock`);
    /// - metrics and the `cache.memoized` span, with the options'
    ///   [`label`](EntryOptions::label) as their `prefix` (default
    ///   `"get_or_set"`; never the key).
    ///
    /// `compute` is called at most once, in this call (a miss) or, with
    /// `stale`, to refresh the value in a background task after this call
    /// has returned: so the future it makes owns what it uses
    /// (`Send + 'static`, as for `tokio::spawn`): clone what it needs into
    /// it. The closure itself may borrow.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use cache_core::{Cache, EntryOptions};
    ///
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct User { id: u64, name: String }
    ///
    /// struct Db; // a connection pool, say
    /// impl Db {
    ///     async fn user(&self, id: u64) -> User { User { id, name: "Ada".into() } }
    /// }
    ///
    /// let cache = Cache::in_memory();
    /// let db = Arc::new(Db);
    /// let options = EntryOptions::ttl(Duration::from_secs(60))
    ///     .stale(Duration::from_secs(300))
    ///     .tags(["user:42"]);
    /// let user: User = cache
    ///     .get_or_set("user:42", &options, || {
    ///         let db = db.clone(); // the future owns its copy
    ///         async move { db.user(42).await }
    ///     })
    ///     .await;
    /// assert_eq!(user.name, "Ada");
    /// # }
    /// ```
    pub async fn get_or_set<T, F, Fut>(&self, key: &str, options: &EntryOptions, compute: F) -> T
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let call = Call {
            cache: Some(Cow::Borrowed(self)),
            key: Ok(CallKey::Stored(Cow::Borrowed(key))),
            options: Cow::Borrowed(options),
            function: options.label,
        };
        memoize(
            call,
            Detached::new(compute),
            stored_always,
            restore_always,
            Some(keep_clone()),
        )
        .await
    }

    /// [`get_or_set`](Self::get_or_set) for a computation that may fail:
    /// an `Ok` is stored and returned, an `Err` is returned and never
    /// stored (with `stale`, a failed refresh leaves the old value in
    /// place). Concurrent callers of the key share an `Ok`; after an `Err`
    /// each computes for itself.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use cache_core::{Cache, EntryOptions};
    ///
    /// let cache = Cache::in_memory();
    /// let options = EntryOptions::ttl(Duration::from_secs(60));
    /// let failed: Result<u64, String> = cache
    ///     .try_get_or_set("rate:EUR", &options, || async { Err("upstream down".to_string()) })
    ///     .await;
    /// assert!(failed.is_err());
    /// assert_eq!(cache.get::<u64>("rate:EUR").await.unwrap(), None); // not stored
    /// let rate = cache
    ///     .try_get_or_set("rate:EUR", &options, || async { Ok::<u64, String>(108) })
    ///     .await;
    /// assert_eq!(rate, Ok(108));
    /// assert_eq!(cache.get::<u64>("rate:EUR").await.unwrap(), Some(108));
    /// # }
    /// ```
    pub async fn try_get_or_set<T, E, F, Fut>(
        &self,
        key: &str,
        options: &EntryOptions,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let call = Call {
            cache: Some(Cow::Borrowed(self)),
            key: Ok(CallKey::Stored(Cow::Borrowed(key))),
            options: Cow::Borrowed(options),
            function: options.label,
        };
        memoize(
            call,
            Detached::new(compute),
            stored_ok,
            restore_ok,
            Some(keep_clone()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn calls_run_in_spawned_tasks() {
        let cache = Cache::in_memory();
        let options: &'static EntryOptions =
            Box::leak(Box::new(EntryOptions::ttl(Duration::from_secs(60))));
        let task = tokio::spawn(async move {
            let a = cache.get_or_set("k", options, || async { 1u32 }).await;
            let b: Result<u32, String> =
                cache.try_get_or_set("k", options, || async { Ok(2) }).await;
            (a, b)
        });
        assert_eq!(task.await.unwrap(), (1, Ok(1)));
    }

    async fn run_in_tasks<F, Fut>(op: F)
    where
        F: Fn(usize) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        tokio::spawn(async move { op(0).await }).await.unwrap();
    }

    #[tokio::test]
    async fn calls_run_in_tasks_made_by_a_closure() {
        let cache = Cache::in_memory();
        let options: &'static EntryOptions =
            Box::leak(Box::new(EntryOptions::ttl(Duration::from_secs(60))));
        let compute = move || async move { vec![1.0f32] };
        run_in_tasks(move |_| {
            let c = cache.clone();
            async move {
                assert_eq!(c.get_or_set("k", options, compute).await.len(), 1);
            }
        })
        .await;
    }
}
