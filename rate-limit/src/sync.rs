//! The primitives the limiter's shared state (the deny cache, the count of
//! requests at the store, the exact path's groups) is built on: std's and
//! tokio's own, or, in a build with `--cfg shuttle` (`scripts/test.sh`),
//! shuttle's, whose scheduler runs that state under many interleavings
//! (this crate's tests only). Any other build uses std's and tokio's items
//! themselves (re-exports), so it pays nothing.

#[cfg(not(all(test, shuttle)))]
pub(crate) use cache_sync::{read, write};
#[cfg(not(all(test, shuttle)))]
pub(crate) use std::sync::atomic::AtomicUsize;
#[cfg(not(all(test, shuttle)))]
pub(crate) use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(all(test, shuttle)))]
pub(crate) use {cache_sync::lock, std::sync::Mutex};
#[cfg(not(all(test, shuttle)))]
pub(crate) use {tokio::runtime::Handle as Runtime, tokio::sync::oneshot, tokio::task::yield_now};

#[cfg(all(test, shuttle))]
pub(crate) use shuttle::future::yield_now;
#[cfg(all(test, shuttle))]
pub(crate) use shuttle::sync::atomic::AtomicUsize;
#[cfg(all(test, shuttle))]
pub(crate) use shuttle::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `cache_sync::lock` for shuttle's mutex.
#[cfg(all(test, shuttle))]
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// tokio's `Handle` for shuttle's executor: a task spawned here is kept,
/// for the test to wait for ([`spawned`]) or to drop ([`abort_spawned`]),
/// as a runtime shutting down drops its tasks.
#[cfg(all(test, shuttle))]
pub(crate) struct Runtime;

#[cfg(all(test, shuttle))]
shuttle::lazy_static! {
    /// The tasks spawned in this execution (shuttle's statics live one).
    static ref SPAWNED: Mutex<Vec<shuttle::future::JoinHandle<()>>> = Mutex::new(Vec::new());
}

#[cfg(all(test, shuttle))]
impl Runtime {
    pub(crate) fn try_current() -> Result<Runtime, std::convert::Infallible> {
        Ok(Runtime)
    }

    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = shuttle::future::spawn(task);
        lock(&SPAWNED).push(handle);
    }
}

/// The tasks spawned so far, to wait for.
#[cfg(all(test, shuttle))]
pub(crate) fn spawned() -> Vec<shuttle::future::JoinHandle<()>> {
    std::mem::take(&mut *lock(&SPAWNED))
}

/// Drops the tasks spawned so far at their next await point.
#[cfg(all(test, shuttle))]
pub(crate) fn abort_spawned() {
    let aborts: Vec<_> = lock(&SPAWNED)
        .iter()
        .map(|task| task.abort_handle())
        .collect();
    for abort in aborts {
        abort.abort();
    }
}

/// tokio's oneshot channel itself, with points where the scheduler may
/// switch tasks around a send and a check for a dropped receiver: a
/// request cancelled while its group is sent and the group's sender
/// interleave.
#[cfg(all(test, shuttle))]
pub(crate) mod oneshot {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (Sender(sender), Receiver(receiver))
    }

    pub(crate) struct Sender<T>(tokio::sync::oneshot::Sender<T>);

    impl<T> Sender<T> {
        pub(crate) fn send(self, value: T) -> Result<(), T> {
            shuttle::thread::yield_now();
            let sent = self.0.send(value);
            shuttle::thread::yield_now();
            sent
        }

        pub(crate) fn is_closed(&self) -> bool {
            shuttle::thread::yield_now();
            self.0.is_closed()
        }
    }

    pub(crate) struct Receiver<T>(tokio::sync::oneshot::Receiver<T>);

    impl<T> Future for Receiver<T> {
        type Output = Result<T, tokio::sync::oneshot::error::RecvError>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            Pin::new(&mut self.0).poll(cx)
        }
    }
}

/// `cache_sync::read` for shuttle's lock.
#[cfg(all(test, shuttle))]
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `cache_sync::write` for shuttle's lock.
#[cfg(all(test, shuttle))]
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `test` under shuttle's random scheduler: `SHUTTLE_ITERATIONS`
/// schedules (default 2 000) drawn from `SHUTTLE_SEED` (default 24).
/// A failure prints the schedule that broke, for `shuttle::replay`.
#[cfg(all(test, shuttle))]
pub(crate) fn explore(test: impl Fn() + Send + Sync + 'static) {
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let iterations = usize::try_from(setting("SHUTTLE_ITERATIONS", 2_000)).unwrap_or(2_000);
    shuttle::check_random_with_seed(test, setting("SHUTTLE_SEED", 24), iterations);
}
