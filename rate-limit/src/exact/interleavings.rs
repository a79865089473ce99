//! The exact path's groups under shuttle's scheduler (`--cfg shuttle`, run
//! by `scripts/test.sh`): four requests arrive at once, the real grouping
//! code ([`Exact::count`]) on shuttle's oneshot channels, mutex, atomics,
//! yield and spawn (see `crate::sync`), the store call replaced by a stub
//! ([`evaluate`]) that the schedule answers with the requests' rows or
//! fails. Each execution draws its own mix: some requests cancelled at a
//! random point (before they start, while they wait in a group, after
//! their group is sent), perhaps the groups' calls dropped with their
//! tasks (a runtime shutting down), on one Redis or on a cluster (two
//! clients, two policies). Each property is its own test, over
//! `SHUTTLE_ITERATIONS` schedules.

use std::sync::atomic::AtomicBool;

use futures_util::future::{Either, select};
use shuttle::rand::{Rng, thread_rng};

use super::*;
use crate::sync::{abort_spawned, explore, spawned};

/// Requests arriving at once in one execution.
const REQUESTS: usize = 4;

/// The stub's failure.
const FAILED: &str = "the store failed";

/// A joined request's answer when its group's task was dropped.
const ABANDONED: &str = "the group's call was abandoned";

shuttle::lazy_static! {
    /// The store calls of this execution, in the order they reached it.
    static ref STORE: Mutex<Vec<StoreCall>> = Mutex::new(Vec::new());
}

/// One call that reached the store: its requests (by id) and clients
/// (first keys), in the order sent.
struct StoreCall {
    requests: Vec<usize>,
    clients: Vec<String>,
}

/// `store::redis::evaluate` in the schedule: notes the call, lets other
/// tasks run, then answers each request with a row that names it (its
/// first number is the request's id), or fails the call.
pub(super) async fn evaluate(
    _: &Cache,
    keys: &[&str],
    quotas: &[Quota],
    _: Option<u64>,
    costs: &[u64],
    _: bool,
    _: Option<&crate::ends::WindowEnds>,
    _: Duration,
) -> Result<Vec<i64>, String> {
    let per_request: Vec<&[&str]> = keys.chunks(quotas.len()).collect();
    assert_eq!(per_request.len(), costs.len(), "a cost per request");
    let requests: Vec<usize> = per_request.iter().map(|keys| id_of(keys)).collect();
    lock(&STORE).push(StoreCall {
        requests: requests.clone(),
        clients: per_request.iter().map(|keys| keys[0].to_string()).collect(),
    });
    for _ in 0..thread_rng().gen_range(0..3) {
        yield_now().await;
    }
    if thread_rng().gen_ratio(1, 4) {
        return Err(FAILED.to_string());
    }
    let row_len = crate::window::row_len(quotas.len());
    Ok(requests
        .iter()
        .flat_map(|&id| {
            let mut row = vec![0; row_len];
            row[0] = id as i64;
            row
        })
        .collect())
}

/// The request whose keys these are: its last key is `r<id>`.
fn id_of(keys: &[&str]) -> usize {
    keys.last()
        .and_then(|key| key.strip_prefix('r'))
        .and_then(|id| id.parse().ok())
        .expect("a request's keys end with its id")
}

/// The limiter's side, shared by the requests of one execution.
struct Limiter {
    exact: Exact,
    cache: Cache,
    quotas: Vec<Quota>,
    counters: Counters,
}

/// How a request ended.
#[derive(Debug)]
enum Outcome {
    /// Its answer.
    Answered(Row),
    /// Cancelled: its future dropped. `started`: it had been polled;
    /// `waiting`: it was still in the open group when dropped.
    Cancelled { started: bool, waiting: bool },
}

/// What one execution did.
struct Run {
    outcomes: Vec<Outcome>,
    calls: Vec<StoreCall>,
    cluster: bool,
    /// Whether the groups' tasks spawned before some point were dropped.
    dropped: bool,
    /// The limiter's calls in flight and whether a group was open, at the end.
    left: (usize, bool),
}

/// Request `id` through the real grouping code; cancelled when `cancel`
/// fires first.
async fn request(
    limiter: Arc<Limiter>,
    id: usize,
    cancel: Option<oneshot::Receiver<()>>,
) -> Outcome {
    let keys = if limiter.exact.cluster {
        Keys::Several(vec![format!("client{}", id % 2), format!("r{id}")])
    } else {
        Keys::One(format!("r{id}"))
    };
    let call = Call {
        cache: &limiter.cache,
        quotas: &limiter.quotas,
        timeout: Duration::from_secs(1),
        clock: None,
        counters: &limiter.counters,
        resets: true,
    };
    let started = AtomicBool::new(false);
    let count = Box::pin(async {
        started.store(true, Ordering::SeqCst);
        limiter.exact.count(&call, keys, 1).await
    });
    let Some(cancel) = cancel else {
        return Outcome::Answered(count.await);
    };
    match select(cancel, count).await {
        Either::Right((row, _)) => Outcome::Answered(row),
        Either::Left((_, count)) => {
            drop(count);
            // After the drop: a joined request leaves the open group only
            // when its group closes, so one still there was waiting in it.
            let waiting = lock(&limiter.exact.open).as_ref().is_some_and(|group| {
                group.joined.iter().any(|joined| {
                    let mut keys = Vec::new();
                    joined.keys.push_into(&mut keys);
                    id_of(&keys) == id
                })
            });
            Outcome::Cancelled {
                started: started.load(Ordering::SeqCst),
                waiting,
            }
        }
    }
}

/// One execution: [`REQUESTS`] requests at once, each cancelled at a random
/// point with odds 1/3, the groups' tasks dropped with odds 1/4, on a
/// cluster with odds 1/3; waits for every task, the groups' included.
fn run() -> Run {
    shuttle::future::block_on(async {
        let mut rng = thread_rng();
        let cluster = rng.gen_ratio(1, 3);
        let dropped = rng.gen_ratio(1, 4);
        let limiter = Arc::new(Limiter {
            exact: Exact::new(cluster, Arc::new(crate::clock::SystemClock)),
            cache: Cache::in_memory(),
            quotas: vec![Quota::per_second(10); if cluster { 2 } else { 1 }],
            counters: Counters::default(),
        });
        let mut others = Vec::new();
        let requests: Vec<_> = (0..REQUESTS)
            .map(|id| {
                let cancel = rng.gen_ratio(1, 3).then(|| {
                    let (cancel, cancelled) = oneshot::channel();
                    others.push(shuttle::future::spawn(async move {
                        for _ in 0..thread_rng().gen_range(0..4) {
                            yield_now().await;
                        }
                        let _ = cancel.send(());
                    }));
                    cancelled
                });
                shuttle::future::spawn(request(limiter.clone(), id, cancel))
            })
            .collect();
        if dropped {
            others.push(shuttle::future::spawn(async {
                for _ in 0..thread_rng().gen_range(0..6) {
                    yield_now().await;
                }
                for _ in 0..6 {
                    abort_spawned();
                    yield_now().await;
                }
            }));
        }
        let mut outcomes = Vec::new();
        for request in requests {
            outcomes.push(request.await.expect("no request panics"));
        }
        for other in others {
            other.await.expect("no canceller panics");
        }
        // The groups' tasks: done, or dropped (then `Err(Cancelled)`).
        loop {
            let groups = spawned();
            if groups.is_empty() {
                break;
            }
            for group in groups {
                let _ = group.await;
            }
        }
        let left = (
            limiter.exact.calls.load(Ordering::SeqCst),
            lock(&limiter.exact.open).is_some(),
        );
        Run {
            outcomes,
            calls: std::mem::take(&mut *lock(&STORE)),
            cluster,
            dropped,
            left,
        }
    })
}

/// How many of `run`'s calls carried request `id`.
fn times_sent(run: &Run, id: usize) -> usize {
    run.calls
        .iter()
        .flat_map(|call| &call.requests)
        .filter(|&&sent| sent == id)
        .count()
}

/// No lost wake-up: every request that was not cancelled is answered (a
/// request left waiting would leave every task blocked, which shuttle
/// reports as a deadlock), once, with its own row, the store's failure,
/// or (only when the group's task was dropped) the group's abandonment.
#[test]
fn every_request_is_answered_once_with_its_own_row() {
    explore(|| {
        let run = run();
        for (id, outcome) in run.outcomes.iter().enumerate() {
            match outcome {
                Outcome::Answered(Ok(row)) => {
                    let policies = if run.cluster { 2 } else { 1 };
                    assert_eq!(row.len(), crate::window::row_len(policies));
                    assert_eq!(row[0], id as i64, "request {id} was given another's row");
                }
                Outcome::Answered(Err(err)) => assert!(
                    err == FAILED || (err == ABANDONED && run.dropped),
                    "request {id}: {err}"
                ),
                Outcome::Cancelled { .. } => {}
            }
        }
    });
}

/// No double count: whoever is cancelled, and when, each request reaches
/// the store at most once, and a request answered by the store reached it
/// exactly once.
#[test]
fn each_request_is_sent_to_the_store_at_most_once() {
    explore(|| {
        let run = run();
        for (id, outcome) in run.outcomes.iter().enumerate() {
            let sent = times_sent(&run, id);
            assert!(sent <= 1, "request {id} sent {sent} times");
            if let Outcome::Answered(Ok(_)) = outcome {
                assert_eq!(sent, 1, "request {id} answered without reaching the store");
            }
            if let Outcome::Answered(Err(err)) = outcome
                && err == FAILED
            {
                assert_eq!(sent, 1, "request {id} failed without reaching the store");
            }
        }
    });
}

/// A request cancelled before it started, or while it waited in the open
/// group, never reaches the store: it is not counted.
#[test]
fn a_request_cancelled_before_it_is_sent_is_not_counted() {
    explore(|| {
        let run = run();
        for (id, outcome) in run.outcomes.iter().enumerate() {
            if let Outcome::Cancelled { started, waiting } = *outcome
                && (!started || waiting)
            {
                assert_eq!(
                    times_sent(&run, id),
                    0,
                    "request {id}, cancelled (started: {started}, waiting: {waiting}), was counted"
                );
            }
        }
    });
}

/// No leaked slot: once every request has finished or been dropped (and
/// the groups' tasks with them), no call of the limiter is counted in
/// flight and no group is open, so the next request goes alone again.
#[test]
fn the_groups_leave_nothing_behind() {
    explore(|| {
        let run = run();
        assert_eq!(run.left, (0, false), "(calls in flight, a group open)");
    });
}

/// On a cluster a script call reaches one hash slot: every call holds the
/// requests of one client.
#[test]
fn on_a_cluster_every_call_holds_one_client() {
    explore(|| {
        let run = run();
        if run.cluster {
            for call in &run.calls {
                assert!(
                    call.clients.iter().all(|client| *client == call.clients[0]),
                    "one call for {:?}",
                    call.clients
                );
            }
        }
    });
}
