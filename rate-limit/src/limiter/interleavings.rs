//! The count of requests at the store under shuttle's scheduler
//! (`--cfg shuttle`, run by `scripts/test.sh`): requests enter and leave
//! at once, one of them cancelled at the store, with the count two short
//! of [`IN_FLIGHT`]. Under every schedule tried, no more than the bound
//! are at the store together, a request is refused only when the bound is
//! reached, and every slot is given back (no leak, no double give-back).

use super::*;
use crate::sync::explore;

#[test]
fn requests_enter_and_leave_the_store_at_once() {
    explore(|| {
        let count = Arc::new(AtomicUsize::new(IN_FLIGHT - 2));
        let at_store = Arc::new(AtomicUsize::new(0));
        let requests: Vec<_> = (0..3)
            .map(|i| {
                let (count, at_store) = (count.clone(), at_store.clone());
                shuttle::future::spawn(async move {
                    let Some(entered) = InFlight::enter(&count) else {
                        return false;
                    };
                    let together = at_store.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(together <= 2, "{together} at the store, 2 slots");
                    if i == 0 {
                        // Cancelled at the store: its future, and the guard, dropped.
                        at_store.fetch_sub(1, Ordering::SeqCst);
                        drop(entered);
                        return true;
                    }
                    shuttle::future::yield_now().await;
                    at_store.fetch_sub(1, Ordering::SeqCst);
                    drop(entered);
                    true
                })
            })
            .collect();
        shuttle::future::block_on(async move {
            let mut admitted = 0;
            for request in requests {
                admitted += usize::from(request.await.expect("no request panics"));
            }
            assert!(admitted >= 2, "a request was refused with a slot free");
            assert_eq!(
                count.load(Ordering::SeqCst),
                IN_FLIGHT - 2,
                "every slot given back"
            );
        });
    });
}
