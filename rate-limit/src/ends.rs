//! The ends of the fixed windows this instance saw start or read: per
//! counter key, when its current window ends, in µs of the limiter's
//! [monotonic](crate::Clock::monotonic) clock. The pipelined fixed window
//! on Redis (`store::redis`) reads a window's end with a `PTTL` only for a
//! key it has no end of: a request of a window whose end is known needs
//! none (the end less now), so a client's requests after its first in a
//! window cost Redis `INCRBY` + `PEXPIRE ... LT`, the naive script's two.
//!
//! An end is learned from Redis' replies, counted from when the call was
//! sent (at most a round trip before Redis ran it): from `PEXPIRE ... LT`'s
//! 1 (it set the whole window: the window starts) or from a `PTTL`. So a
//! known end is at most a round trip early, never late: the safe side for
//! the deny cache's hold, and `Retry-After` rounds up to seconds. A key
//! deleted behind this instance's back (`DEL`, `FLUSHDB`, eviction) and
//! restarted by another instance ends later than known: the reset reported
//! is early until the known end passes (the count stays exact: Redis
//! decides it).
//!
//! **Bounded** as the deny cache is: at most [`DEFAULT_CAPACITY`] keys, in
//! a [`cache_sync::InsertionOrderedMap`] (foldhash seeded at random per
//! map: the keys come from clients), evicted in insertion order, which is
//! nearly end order (a limiter's windows all have one length); an insert
//! first drops the entries whose end has passed. A key evicted, or whose
//! entry was dropped, costs one `PTTL` on its next request. A call cancelled
//! before its reply learns nothing.

use cache_sync::InsertionOrderedMap;
use std::sync::Arc;

use crate::clock::{Clock, monotonic_micros};
pub(crate) use crate::deny::DEFAULT_CAPACITY;
// shuttle's primitives under `--cfg shuttle` (the exact path's tests).
use crate::sync::{RwLock, read, write};

/// What is known of a key's window before a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// Nothing: its end is read with a `PTTL` in the call.
    Unknown,
    /// It ends at this time (µs), after the call was sent.
    Ahead(u64),
    /// It ended by the call: the call's increment most likely starts the
    /// next window, whose end `PEXPIRE`'s reply tells.
    Passed,
}

/// The known window ends of one limiter's counter keys.
pub(crate) struct WindowEnds {
    capacity: usize,
    clock: Arc<dyn Clock>,
    entries: RwLock<InsertionOrderedMap<u64>>,
}

impl WindowEnds {
    pub(crate) fn new(clock: Arc<dyn Clock>, capacity: usize) -> Self {
        WindowEnds {
            capacity: capacity.max(1),
            clock,
            entries: RwLock::default(),
        }
    }

    /// Now on the limiter's monotonic clock, µs.
    pub(crate) fn now(&self) -> u64 {
        monotonic_micros(self.clock.as_ref())
    }

    /// What is known of each key's window at `now` (one lookup per key,
    /// under one read lock), into `known`.
    pub(crate) fn lookup(&self, keys: &[&str], now: u64, known: &mut [Known]) {
        let entries = read(&self.entries);
        if entries.is_empty() {
            known.fill(Known::Unknown);
            return;
        }
        for (known, key) in known.iter_mut().zip(keys) {
            *known = match entries.get(key) {
                None => Known::Unknown,
                Some(&end) if end > now => Known::Ahead(end),
                Some(_) => Known::Passed,
            };
        }
    }

    /// Remembers that `key`'s window ends at `end` (µs), learned at `now`;
    /// an end already passed is not kept.
    pub(crate) fn insert(&self, key: &str, end: u64, now: u64) {
        let mut entries = write(&self.entries);
        entries.pop_oldest_while(|&end| end <= now);
        if end <= now {
            return;
        }
        // A key seen again (a new window) moves to the back of the queue.
        if entries.remove(key).is_none() && entries.len() >= self.capacity {
            entries.pop_oldest();
        }
        entries.insert(key, end);
    }

    /// Keys held, those whose end has passed but are not yet dropped
    /// included.
    #[cfg(all(test, not(shuttle)))]
    pub(crate) fn len(&self) -> usize {
        read(&self.entries).len()
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::Duration;

    fn ends(capacity: usize) -> (WindowEnds, ManualClock) {
        let clock = ManualClock::new();
        (WindowEnds::new(Arc::new(clock.clone()), capacity), clock)
    }

    fn known(ends: &WindowEnds, key: &str) -> Known {
        let mut known = [Known::Unknown];
        ends.lookup(&[key], ends.now(), &mut known);
        known[0]
    }

    #[test]
    fn an_end_is_ahead_until_the_clock_reaches_it() {
        let (ends, clock) = ends(10);
        let now = ends.now();
        assert_eq!(known(&ends, "rl:ip:a"), Known::Unknown);
        ends.insert("rl:ip:a", now + 60_000_000, now);
        assert_eq!(known(&ends, "rl:ip:a"), Known::Ahead(now + 60_000_000));
        assert_eq!(known(&ends, "rl:ip:b"), Known::Unknown);
        clock.advance(Duration::from_secs(60));
        assert_eq!(known(&ends, "rl:ip:a"), Known::Passed);
        // The next window's end replaces it.
        let later = ends.now();
        ends.insert("rl:ip:a", later + 60_000_000, later);
        assert_eq!(known(&ends, "rl:ip:a"), Known::Ahead(later + 60_000_000));
        assert_eq!(ends.len(), 1);
    }

    #[test]
    fn more_keys_than_the_bound_keep_the_map_at_the_bound() {
        let capacity = 1_000;
        let (ends, _clock) = ends(capacity);
        let now = ends.now();
        for i in 0..3 * capacity {
            ends.insert(&format!("rl:ip:{i}"), now + 60_000_000, now);
            assert!(ends.len() <= capacity);
        }
        assert_eq!(ends.len(), capacity);
        // The oldest went, the newest are kept.
        assert_eq!(known(&ends, "rl:ip:0"), Known::Unknown);
        let last = format!("rl:ip:{}", 3 * capacity - 1);
        assert_eq!(known(&ends, &last), Known::Ahead(now + 60_000_000));
        assert!(read(&ends.entries).queued() <= 2 * capacity + 64 + 1);
    }

    #[test]
    fn the_default_bound_is_the_deny_caches() {
        let (ends, _clock) = ends(DEFAULT_CAPACITY);
        let now = ends.now();
        for i in 0..DEFAULT_CAPACITY + 10 {
            ends.insert(&format!("rl:ip:{i}"), now + 1_000_000, now);
        }
        assert_eq!(ends.len(), DEFAULT_CAPACITY);
    }

    #[test]
    fn ended_windows_are_dropped_first_and_never_kept() {
        let (ends, clock) = ends(3);
        let now = ends.now();
        ends.insert("rl:ip:a", now + 1_000_000, now);
        ends.insert("rl:ip:b", now + 2_000_000, now);
        ends.insert("rl:ip:c", now + 5_000_000, now);
        clock.advance(Duration::from_secs(2));
        let later = ends.now();
        // a and b ended: dropped, so c (live) stays though the map was full.
        ends.insert("rl:ip:d", later + 5_000_000, later);
        assert_eq!(ends.len(), 2);
        assert_eq!(known(&ends, "rl:ip:a"), Known::Unknown);
        assert_eq!(known(&ends, "rl:ip:c"), Known::Ahead(now + 5_000_000));
        // An end already passed when learned is not kept.
        ends.insert("rl:ip:e", later, later);
        assert_eq!(known(&ends, "rl:ip:e"), Known::Unknown);
    }
}
