//! The exact path on Redis ([`Counting::Exact`](crate::limiter)): each
//! request counted in an atomic script step at the store, with flat
//! combining of the requests that arrive while the connection is busy.
//!
//! - A request that finds none of the limiter's calls in flight sends its
//!   own at once: under light load, one call per request and nothing waits.
//! - One that finds calls in flight (the connection is busy: what it sends
//!   now only queues behind them) opens a group, or joins the open one. The
//!   request that opened it yields once to the runtime, which meanwhile runs
//!   its other ready tasks and reads the sockets (the requests arriving then
//!   join), and then sends the whole group as one script call, handing each
//!   request its row. Requests of one client and cost fold into one step on
//!   its key (one `INCRBY` of their total: pipelined with its `PEXPIRE`,
//!   and a `PTTL` while its window's end is unknown, for requests of cost
//!   1; in `counter.lua` for others), so a hot
//!   client costs Redis one step per group, not one per request.
//!
//! No task or queue of the limiter waits for requests: the group is
//! gathered by one of its requests, on its own task, during one yield (the
//! batched layer before it parked and woke a batcher task per call, and
//! made requests wait for the call in flight).
//!
//! **Bounded.** A group holds at most [`MAX_GROUP`] requests (one finding it
//! full sends alone); its call has the store timeout, which bounds every
//! request's wait in it (one timer per group). A joined request that is
//! cancelled before the call is sent is left out of it; if the request that
//! opened the group is cancelled before it sends, each joined request sends
//! its own call. A group's call, once sent, runs on a task of its own: a
//! request of the group that is cancelled (its client hung up) takes no
//! other request's answer with it.
//!
//! On a Redis Cluster a script call reaches one hash slot, so a group holds
//! the requests of one client.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cache_core::Cache;

use crate::clock::{Clock, now_micros};
use crate::ends::{DEFAULT_CAPACITY, WindowEnds};
use crate::limiter::{Count, Counters, Keys};
use crate::quota::Quota;
// tokio's and std's pieces, or shuttle's under `--cfg shuttle` (see the
// tests at the end): the grouping below runs under many interleavings.
use crate::sync::{AtomicUsize, Mutex, Runtime, lock, oneshot, yield_now};

// The store call: Redis', or in the interleavings tests a stub that the
// schedule answers (rows or a failure), or drops with its task.
#[cfg(not(all(test, shuttle)))]
use crate::store::redis::evaluate;
#[cfg(all(test, shuttle))]
use interleavings::evaluate;

/// Requests one group holds at most, its sender included.
pub(crate) const MAX_GROUP: usize = 128;

/// A request's row (see `window::row_len`), or why the store gave none.
pub(crate) type Row = Result<Vec<i64>, String>;

/// The limiter's calls in flight and its open group.
pub(crate) struct Exact {
    /// The window ends its calls learned (the pipelined fixed window's).
    ends: Arc<WindowEnds>,
    /// Script calls of the limiter at the store (shared with the tasks
    /// that carry groups' calls).
    calls: Arc<AtomicUsize>,
    /// The group gathering requests, if one is open.
    open: Mutex<Option<Group>>,
    /// Script calls reach one hash slot: a group holds one client.
    cluster: bool,
}

/// Requests joined to a group, besides the one that sends it.
struct Group {
    /// On a cluster, the client of the group (its first key).
    client: Option<String>,
    joined: Vec<Joined>,
}

/// Where a request found its place.
enum Place {
    /// In the open group: its answer will come.
    Joined(oneshot::Receiver<Answer>),
    /// The group is full (or another client's, on a cluster): its own call.
    Alone(Keys),
    /// It opened the group, and sends it.
    Opened(Keys),
}

/// A request waiting for its group's call.
struct Joined {
    keys: Keys,
    cost: u64,
    answer: oneshot::Sender<Answer>,
}

/// What a joined request is told.
enum Answer {
    /// Its row, or the call's failure.
    Row(Row),
    /// The group was not sent (its sender was cancelled first): send your
    /// own call, with your keys back.
    Alone(Keys),
}

/// What a call needs of the limiter.
pub(crate) struct Call<'a> {
    pub(crate) cache: &'a Cache,
    pub(crate) quotas: &'a [Quota],
    pub(crate) timeout: Duration,
    /// The clock whose time is sent to the scripts (an authoritative one),
    /// read when the call is sent; `None`: Redis' own clock.
    pub(crate) clock: Option<&'a dyn Clock>,
    pub(crate) counters: &'a Counters,
    /// The caller reads the reset of every request (see `evaluate`).
    pub(crate) resets: bool,
}

impl Exact {
    /// `clock`: the limiter's, whose monotonic reading the known window
    /// ends are kept on.
    pub(crate) fn new(cluster: bool, clock: Arc<dyn Clock>) -> Self {
        Exact {
            ends: Arc::new(WindowEnds::new(clock, DEFAULT_CAPACITY)),
            calls: Arc::default(),
            open: Mutex::new(None),
            cluster,
        }
    }

    /// The row of one request of `cost` on `keys`: at once, or with the
    /// requests arriving while the connection is busy (see the module).
    pub(crate) async fn count(&self, call: &Call<'_>, keys: Keys, cost: u64) -> Row {
        if self.calls.load(Ordering::Relaxed) == 0 {
            return self.alone(call, &keys, cost).await;
        }
        let place = {
            let mut open = lock(&self.open);
            match open.as_mut() {
                Some(group)
                    if group.joined.len() + 1 < MAX_GROUP
                        && group.client.as_deref().is_none_or(|c| c == keys.first()) =>
                {
                    let (answer, told) = oneshot::channel();
                    group.joined.push(Joined { keys, cost, answer });
                    Place::Joined(told)
                }
                // Full, or another client's on a cluster.
                Some(_) => Place::Alone(keys),
                None => {
                    *open = Some(Group {
                        client: self.cluster.then(|| keys.first().to_string()),
                        joined: Vec::new(),
                    });
                    Place::Opened(keys)
                }
            }
        };
        let told = match place {
            Place::Joined(told) => told,
            Place::Alone(keys) => return self.alone(call, &keys, cost).await,
            Place::Opened(keys) => return self.send_group(call, keys, cost).await,
        };
        match told.await {
            Ok(Answer::Row(row)) => row,
            Ok(Answer::Alone(keys)) => self.alone(call, &keys, cost).await,
            // Every group answers its requests before it goes (see
            // `Opened` and `GroupCall`); unless its task was torn down
            // with the runtime.
            Err(_) => Err("the group's call was abandoned".to_string()),
        }
    }

    /// One call for one request.
    async fn alone(&self, call: &Call<'_>, keys: &Keys, cost: u64) -> Row {
        let _call = InCall::enter(&*self.calls);
        call.counters.add(Count::StoreCalls);
        let now = call.clock.map(now_micros);
        let strs = keys.strs();
        evaluate(
            call.cache,
            strs.as_slice(),
            call.quotas,
            now,
            &[cost],
            call.resets,
            Some(&self.ends),
            call.timeout,
        )
        .await
        .map_err(|err| err.to_string())
    }

    /// Opened a group: lets the requests arriving meanwhile join it, then
    /// sends them and this one (`keys`, `cost`) in one call, on a task of
    /// its own (see the module).
    async fn send_group(&self, call: &Call<'_>, keys: Keys, cost: u64) -> Row {
        let opened = Opened(self);
        yield_now().await;
        let mut joined = opened.close();
        // A request cancelled while waiting is left out: never counted.
        joined.retain(|joined| !joined.answer.is_closed());
        let runtime = Runtime::try_current();
        let (false, Ok(runtime)) = (joined.is_empty(), runtime) else {
            // Alone after all (or, outside a runtime, every request alone).
            for joined in joined {
                let _ = joined.answer.send(Answer::Alone(joined.keys));
            }
            return self.alone(call, &keys, cost).await;
        };
        let (answer, told) = oneshot::channel();
        let mut group = GroupCall {
            cache: call.cache.clone(),
            quotas: call.quotas.to_vec(),
            timeout: call.timeout,
            resets: call.resets,
            ends: Arc::clone(&self.ends),
            keys: Vec::with_capacity(1 + joined.len()),
            costs: Vec::with_capacity(1 + joined.len()),
            answers: Vec::with_capacity(1 + joined.len()),
        };
        group.push(keys, cost, answer);
        for joined in joined {
            group.push(joined.keys, joined.cost, joined.answer);
        }
        let in_call = InCall::enter(Arc::clone(&self.calls));
        call.counters.add(Count::StoreCalls);
        let now = call.clock.map(now_micros);
        runtime.spawn(async move {
            let _in_call = in_call;
            group.send(now).await;
        });
        match told.await {
            Ok(Answer::Row(row)) => row,
            Ok(Answer::Alone(_)) | Err(_) => Err("the group's call was abandoned".to_string()),
        }
    }
}

/// A group's call, on the task that carries it: what it sends, and where
/// each request's row goes (the opener's first).
struct GroupCall {
    cache: Cache,
    quotas: Vec<Quota>,
    timeout: Duration,
    resets: bool,
    ends: Arc<WindowEnds>,
    keys: Vec<Keys>,
    costs: Vec<u64>,
    answers: Vec<oneshot::Sender<Answer>>,
}

impl GroupCall {
    fn push(&mut self, keys: Keys, cost: u64, answer: oneshot::Sender<Answer>) {
        self.keys.push(keys);
        self.costs.push(cost);
        self.answers.push(answer);
    }

    /// Sends the call at `now` (`None`: Redis' clock) and hands each
    /// request its row, or the call's failure.
    async fn send(self, now: Option<u64>) {
        let mut all: Vec<&str> = Vec::with_capacity(self.keys.len() * self.quotas.len());
        for keys in &self.keys {
            keys.push_into(&mut all);
        }
        let result = evaluate(
            &self.cache,
            &all,
            &self.quotas,
            now,
            &self.costs,
            self.resets,
            Some(&self.ends),
            self.timeout,
        )
        .await;
        match result {
            Ok(rows) => {
                let mut rows = rows.chunks(crate::window::row_len(self.quotas.len()));
                for answer in self.answers {
                    let row = rows.next().unwrap_or_default().to_vec();
                    let _ = answer.send(Answer::Row(Ok(row)));
                }
            }
            Err(err) => {
                let err = err.to_string();
                for answer in self.answers {
                    let _ = answer.send(Answer::Row(Err(err.clone())));
                }
            }
        }
    }
}

/// The script calls in flight, while it lives.
struct InCall<C: std::ops::Deref<Target = AtomicUsize>>(C);

impl<C: std::ops::Deref<Target = AtomicUsize>> InCall<C> {
    fn enter(calls: C) -> Self {
        calls.fetch_add(1, Ordering::Relaxed);
        InCall(calls)
    }
}

impl<C: std::ops::Deref<Target = AtomicUsize>> Drop for InCall<C> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open group of the request that opened it, until it closes it: if
/// that request is cancelled first, the group's requests are told to send
/// their own calls.
struct Opened<'a>(&'a Exact);

impl Opened<'_> {
    /// Closes the group: later requests open another. Its joined requests.
    fn close(self) -> Vec<Joined> {
        let joined = self.take();
        std::mem::forget(self);
        joined
    }

    fn take(&self) -> Vec<Joined> {
        lock(&self.0.open)
            .take()
            .map(|group| group.joined)
            .unwrap_or_default()
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        for joined in self.take() {
            let _ = joined.answer.send(Answer::Alone(joined.keys));
        }
    }
}

#[cfg(all(test, shuttle))]
#[path = "exact/interleavings.rs"]
mod interleavings;
