//! One behavioural suite for `Cache`, run unchanged against the in-memory store,
//! a standalone `redis-server` and a three-node Redis Cluster.

use std::time::Duration;

use cache_core::{Cache, ErrorKind, KeyTtl, MAX_TTL, WindowIncr};
use serde::{Deserialize, Serialize};
use tests::suite::{self, Backend};
use tests::{shared_server, unique_prefix};

/// A fresh handle on the backend and a prefix no other test uses.
type Fixture = (Cache, String);

async fn fixture(backend: Backend, test: &str) -> Fixture {
    (
        suite::build(backend.suite_builder()).await,
        unique_prefix(test),
    )
}

tests::suite!(
    fixture: fixture;
    set_then_get_returns_the_value,
    missing_key_is_none,
    set_with_ttl_really_sets_the_expiry,
    set_without_ttl_is_persistent,
    expired_value_is_not_returned,
    zero_ttl_removes_the_key,
    delete_reports_whether_the_key_existed,
    exists_tracks_the_key,
    expire_sets_a_ttl_on_existing_keys_only,
    incr_counts_from_zero,
    incr_on_a_non_integer_is_a_command_error,
    incr_window_sets_the_window_on_first_hit_only,
    incr_window_repairs_a_counter_without_ttl,
    invalidate_prefix_removes_exactly_the_prefix,
    invalidate_prefix_treats_glob_characters_literally,
    invalidate_prefix_covers_many_keys,
    get_many_and_set_many_keep_key_order,
    undecodable_value_is_a_miss,
    stats_count_hits_and_misses,
    health_reports_a_healthy_store,
    a_ttl_over_the_maximum_is_an_invalid_argument_not_a_panic,
    the_maximum_ttl_itself_is_accepted,
    invalidate_prefix_refuses_an_empty_prefix,
    a_value_over_the_cap_is_refused_on_write,
    an_empty_value_reads_as_a_miss,
    incr_window_replaces_a_foreign_value_with_a_plain_counter,
    incr_windows_count_in_one_pipeline_and_leave_no_counter_without_ttl,
    incr_windows_never_take_an_error_reply_or_foreign_value_for_a_count,
    an_atomic_operation_sees_and_leaves_the_bytes_plain_calls_do,
    an_atomic_operation_spans_the_keys_of_one_hash_tag,
);

/// `SET KEYS[i] ARGV[1] NX` for each key; per key 1 when set, 0 when it
/// existed. Its twin on the in-memory store's entries: the same step.
struct SetAllIfAbsent;

static SET_ALL_NX: std::sync::LazyLock<cache_core::Script> = std::sync::LazyLock::new(|| {
    cache_core::Script::new(
        "local out = {} for i, key in ipairs(KEYS) do \
           if redis.call('SET', key, ARGV[1], 'NX') then out[i] = 1 else out[i] = 0 end \
         end return out",
    )
});

impl cache_core::AtomicOp for SetAllIfAbsent {
    fn script(&self) -> &cache_core::Script {
        &SET_ALL_NX
    }

    fn twin(
        &self,
        entries: &mut cache_core::Entries<'_>,
        keys: &[&str],
        args: &[i64],
    ) -> cache_core::Result<Vec<i64>> {
        let value = args[0].to_string();
        Ok(keys
            .iter()
            .map(|key| {
                if entries.get(key).is_some() {
                    0
                } else {
                    entries.set(key, value.as_bytes(), None);
                    1
                }
            })
            .collect())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Asset {
    id: u32,
    symbol: String,
    price: f64,
    tags: Vec<String>,
}

mod behaviour {
    use super::*;

    fn asset() -> Asset {
        Asset {
            id: 42,
            symbol: "BTC".into(),
            price: 72000.5,
            tags: vec!["crypto".into(), "l1".into()],
        }
    }

    pub async fn set_then_get_returns_the_value((cache, p): Fixture) {
        let key = format!("{p}:asset");
        cache.set(&key, &asset(), None).await.unwrap();
        assert_eq!(cache.get::<Asset>(&key).await.unwrap(), Some(asset()));
        cache
            .set(&format!("{p}:f"), &72000.0_f64, None)
            .await
            .unwrap();
        assert_eq!(
            cache.get::<f64>(&format!("{p}:f")).await.unwrap(),
            Some(72000.0)
        );
        cache.set(&format!("{p}:s"), "text", None).await.unwrap();
        assert_eq!(
            cache
                .get::<String>(&format!("{p}:s"))
                .await
                .unwrap()
                .as_deref(),
            Some("text")
        );
    }

    pub async fn missing_key_is_none((cache, p): Fixture) {
        assert_eq!(
            cache.get::<Asset>(&format!("{p}:nothing")).await.unwrap(),
            None
        );
    }

    pub async fn set_with_ttl_really_sets_the_expiry((cache, p): Fixture) {
        let key = format!("{p}:ttl");
        cache
            .set(&key, &1, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        match cache.ttl(&key).await.unwrap() {
            KeyTtl::Expires(left) => {
                assert!(left <= Duration::from_secs(60), "{left:?}");
                assert!(left > Duration::from_secs(58), "{left:?}");
            }
            other => panic!("expected an expiry, got {other:?}"),
        }
    }

    pub async fn set_without_ttl_is_persistent((cache, p): Fixture) {
        let key = format!("{p}:forever");
        cache.set(&key, &1, None).await.unwrap();
        assert_eq!(cache.ttl(&key).await.unwrap(), KeyTtl::Persistent);
        assert_eq!(
            cache.ttl(&format!("{p}:absent")).await.unwrap(),
            KeyTtl::Missing
        );
    }

    pub async fn expired_value_is_not_returned((cache, p): Fixture) {
        let key = format!("{p}:short");
        cache
            .set(&key, &"v", Some(Duration::from_millis(30)))
            .await
            .unwrap();
        // Expiry is the behaviour under test: wait for the key's own deadline, bounded.
        tests::eventually(
            Duration::from_secs(5),
            "the value expires with its TTL",
            async || cache.get::<String>(&key).await.unwrap().is_none(),
        )
        .await;
        assert!(!cache.exists(&key).await.unwrap());
    }

    pub async fn zero_ttl_removes_the_key((cache, p): Fixture) {
        let key = format!("{p}:zero");
        cache.set(&key, &1, None).await.unwrap();
        cache.set(&key, &2, Some(Duration::ZERO)).await.unwrap();
        assert!(!cache.exists(&key).await.unwrap());
    }

    pub async fn delete_reports_whether_the_key_existed((cache, p): Fixture) {
        let key = format!("{p}:del");
        cache.set(&key, &1, None).await.unwrap();
        assert!(cache.delete(&key).await.unwrap());
        assert!(!cache.delete(&key).await.unwrap());
        assert_eq!(cache.get::<i32>(&key).await.unwrap(), None);
    }

    pub async fn exists_tracks_the_key((cache, p): Fixture) {
        let key = format!("{p}:ex");
        assert!(!cache.exists(&key).await.unwrap());
        cache.set(&key, &1, None).await.unwrap();
        assert!(cache.exists(&key).await.unwrap());
    }

    pub async fn expire_sets_a_ttl_on_existing_keys_only((cache, p): Fixture) {
        let key = format!("{p}:exp");
        assert!(!cache.expire(&key, Duration::from_secs(30)).await.unwrap());
        cache.set(&key, &1, None).await.unwrap();
        assert!(cache.expire(&key, Duration::from_secs(30)).await.unwrap());
        assert!(matches!(
            cache.ttl(&key).await.unwrap(),
            KeyTtl::Expires(left) if left > Duration::from_secs(28) && left <= Duration::from_secs(30)
        ));
    }

    pub async fn incr_counts_from_zero((cache, p): Fixture) {
        let key = format!("{p}:n");
        assert_eq!(cache.incr(&key, 1).await.unwrap(), 1);
        assert_eq!(cache.incr(&key, 5).await.unwrap(), 6);
        assert_eq!(cache.incr(&key, -10).await.unwrap(), -4);
        assert_eq!(cache.get::<i64>(&key).await.unwrap(), Some(-4));
    }

    pub async fn incr_on_a_non_integer_is_a_command_error((cache, p): Fixture) {
        let key = format!("{p}:text");
        cache.set(&key, "abc", None).await.unwrap();
        let err = cache.incr(&key, 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Command, "{err}");
    }

    pub async fn incr_window_sets_the_window_on_first_hit_only((cache, p): Fixture) {
        let key = format!("{p}:win");
        let window = Duration::from_secs(60);
        let first = cache.incr_window(&key, 1, window).await.unwrap();
        assert_eq!(first.count, 1);
        assert!(first.reset_after <= window && first.reset_after > Duration::from_secs(58));
        let third = cache.incr_window(&key, 2, window).await.unwrap();
        assert_eq!(third.count, 3);
        assert!(third.reset_after <= first.reset_after);
        assert!(matches!(cache.ttl(&key).await.unwrap(), KeyTtl::Expires(_)));
    }

    pub async fn incr_window_repairs_a_counter_without_ttl((cache, p): Fixture) {
        let key = format!("{p}:legacy");
        assert_eq!(cache.incr(&key, 7).await.unwrap(), 7);
        assert_eq!(cache.ttl(&key).await.unwrap(), KeyTtl::Persistent);
        let hit = cache
            .incr_window(&key, 1, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(hit.count, 8);
        assert!(
            matches!(cache.ttl(&key).await.unwrap(), KeyTtl::Expires(left) if left <= Duration::from_secs(10))
        );
    }

    pub async fn incr_window_replaces_a_foreign_value_with_a_plain_counter((cache, p): Fixture) {
        let window = Duration::from_secs(60);
        let max = (1u64 << 53).to_string();
        for (n, foreign) in ["abc", "-5", "\"12\"", max.as_str()]
            .into_iter()
            .enumerate()
        {
            let key = format!("{p}:foreign:{n}");
            cache
                .set_bytes(&key, foreign.as_bytes(), None)
                .await
                .unwrap();
            let first = cache.incr_window(&key, 2, window).await.unwrap();
            assert_eq!(first.count, 2, "{foreign} replaced");
            // What Redis holds, and what the in-memory twin writes: the count in decimal.
            assert_eq!(
                cache.get_bytes(&key).await.unwrap().as_deref(),
                Some(&b"2"[..])
            );
            assert!(
                matches!(cache.ttl(&key).await.unwrap(), KeyTtl::Expires(left) if left <= window)
            );
            assert_eq!(cache.incr_window(&key, 1, window).await.unwrap().count, 3);
        }
    }

    /// The rate limiter's pipelined counters: one call counts several
    /// keys (`INCRBY`, `PEXPIRE ... LT`, `PTTL` each on Redis); every
    /// counter gets an expiry, a counter left without one (its `PEXPIRE`
    /// lost with a connection) gets one from the next increment, one past
    /// the window (a longer window's) is brought down to it, and a running
    /// window is never extended.
    pub async fn incr_windows_count_in_one_pipeline_and_leave_no_counter_without_ttl(
        (cache, p): Fixture,
    ) {
        let window = Duration::from_secs(60);
        let timeout = Duration::from_secs(5);
        // One hash tag: one slot on a cluster.
        let key = |name: &str| format!("{{{p}}}:{name}");
        let (fresh, lost, longer) = (key("fresh"), key("lost"), key("long"));
        assert_eq!(cache.incr(&lost, 4).await.unwrap(), 4);
        assert_eq!(cache.ttl(&lost).await.unwrap(), KeyTtl::Persistent);
        cache
            .set_bytes(&longer, b"2", Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        let keys = [fresh.as_str(), lost.as_str(), longer.as_str()];
        let found = cache
            .incr_windows_within(&keys, &[1, 1, 3], window, &[true; 3], timeout)
            .await
            .unwrap()
            .expect("Redis 7 takes PEXPIRE ... LT");
        let counts: Vec<u64> = found
            .iter()
            .map(|found| match *found {
                WindowIncr::Counted {
                    count,
                    left_ms: Some(left_ms),
                } => {
                    assert!(left_ms > 0 && left_ms <= 60_000, "{left_ms}");
                    count
                }
                _ => panic!("{found:?}"),
            })
            .collect();
        assert_eq!(counts, [1, 5, 5]);
        for key in keys {
            assert!(
                matches!(cache.ttl(key).await.unwrap(), KeyTtl::Expires(left) if left <= window),
                "{key}"
            );
        }
        // A running window keeps its end.
        let KeyTtl::Expires(before) = cache.ttl(&fresh).await.unwrap() else {
            panic!("no expiry");
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let again = cache
            .incr_windows_within(&[fresh.as_str()], &[1], window, &[true], timeout)
            .await
            .unwrap()
            .unwrap();
        let WindowIncr::Counted {
            count: 2,
            left_ms: Some(left_ms),
        } = again[0]
        else {
            panic!("{again:?}");
        };
        assert!(
            Duration::from_millis(left_ms) <= before,
            "{left_ms} ms after {before:?}"
        );
        // Without the TTL read: counted, the expiry set all the same. The
        // increment that starts the window knows its end from `PEXPIRE`'s
        // reply (it set the whole window); the next one's end is unread on
        // Redis (no PTTL), read anyway in memory.
        let unread = key("unread");
        let found = cache
            .incr_windows_within(&[unread.as_str()], &[2], window, &[false], timeout)
            .await
            .unwrap()
            .unwrap();
        let memory = *cache.backend() == cache_core::Backend::Memory;
        let WindowIncr::Counted {
            count: 2,
            left_ms: Some(left_ms),
        } = found[0]
        else {
            panic!("{found:?}");
        };
        assert!(left_ms > 59_000 && left_ms <= 60_000, "{left_ms}");
        let found = cache
            .incr_windows_within(&[unread.as_str()], &[1], window, &[false], timeout)
            .await
            .unwrap()
            .unwrap();
        let WindowIncr::Counted { count: 3, left_ms } = found[0] else {
            panic!("{found:?}");
        };
        assert_eq!(left_ms.is_some(), memory, "{left_ms:?}");
        // The TTL read per key: a pipeline of keys with and without it.
        let (read, skipped) = (key("read"), key("skipped"));
        let found = cache
            .incr_windows_within(
                &[fresh.as_str(), read.as_str(), skipped.as_str()],
                &[1, 1, 1],
                window,
                &[true, true, false],
                timeout,
            )
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(found[0], WindowIncr::Counted { count: 3, left_ms: Some(ms) } if ms > 0 && ms <= 60_000),
            "{found:?}"
        );
        assert!(
            matches!(found[1], WindowIncr::Counted { count: 1, left_ms: Some(ms) } if ms > 0 && ms <= 60_000),
            "{found:?}"
        );
        assert_eq!(
            found[2],
            WindowIncr::Counted {
                count: 1,
                left_ms: Some(60_000)
            },
            "a window started: its end from PEXPIRE's reply"
        );
        let err = cache
            .incr_windows_within(&[fresh.as_str()], &[1], window, &[true, false], timeout)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(
            matches!(cache.ttl(&unread).await.unwrap(), KeyTtl::Expires(left) if left <= window),
            "an expiry without the read"
        );
        assert!(
            matches!(
                cache.ttl_within(&unread, timeout).await.unwrap(),
                KeyTtl::Expires(left) if left <= window
            ),
            "ttl_within reads it"
        );
        // Arguments are checked before anything is sent.
        for (by, window) in [
            (0, window),
            (1, Duration::ZERO),
            (1, cache_core::MAX_WINDOW * 2),
        ] {
            let err = cache
                .incr_windows_within(&[fresh.as_str()], &[by], window, &[true], timeout)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        }
    }

    /// What is no counter comes back as such, never as a count: on Redis
    /// the error replies of the pipeline (`WRONGTYPE`, not an integer) and
    /// integers out of range (negative, past 2^53), left for the caller to
    /// replace; the in-memory twin replaces them itself.
    pub async fn incr_windows_never_take_an_error_reply_or_foreign_value_for_a_count(
        (cache, p): Fixture,
    ) {
        let window = Duration::from_secs(60);
        let max = (1u64 << 53).to_string();
        let memory = *cache.backend() == cache_core::Backend::Memory;
        for (n, foreign) in ["abc", "-5", "1.5", max.as_str()].into_iter().enumerate() {
            let key = format!("{p}:foreign:{n}");
            cache
                .set_bytes(&key, foreign.as_bytes(), None)
                .await
                .unwrap();
            let found = cache
                .incr_windows_within(
                    &[key.as_str()],
                    &[1],
                    window,
                    &[true],
                    Duration::from_secs(5),
                )
                .await
                .unwrap()
                .unwrap();
            if memory {
                assert_eq!(
                    found,
                    [WindowIncr::Counted {
                        count: 1,
                        left_ms: Some(60_000)
                    }],
                    "{foreign}"
                );
            } else {
                assert_eq!(found, [WindowIncr::NotACounter], "{foreign}");
            }
        }
    }

    pub async fn an_atomic_operation_sees_and_leaves_the_bytes_plain_calls_do((cache, p): Fixture) {
        let timeout = Duration::from_secs(1);
        let (written, free) = (format!("{p}:written"), format!("{p}:free"));
        cache.set_bytes(&written, b"x", None).await.unwrap();
        let reply = cache
            .run_atomic(&SetAllIfAbsent, &[&written], &[7], timeout)
            .await
            .unwrap();
        assert_eq!(reply, [0], "a key set by set_bytes is seen");
        let reply = cache
            .run_atomic(&SetAllIfAbsent, &[&free], &[7], timeout)
            .await
            .unwrap();
        assert_eq!(reply, [1]);
        assert_eq!(
            cache.get::<i64>(&free).await.unwrap(),
            Some(7),
            "read back as plain JSON"
        );
        assert_eq!(cache.ttl(&free).await.unwrap(), KeyTtl::Persistent);
    }

    pub async fn an_atomic_operation_spans_the_keys_of_one_hash_tag((cache, p): Fixture) {
        let timeout = Duration::from_secs(1);
        let keys: Vec<String> = (0..4).map(|n| format!("{p}:{{client}}:{n}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        cache.set_bytes(keys[2], b"1", None).await.unwrap();
        let reply = cache
            .run_atomic(&SetAllIfAbsent, &keys, &[5], timeout)
            .await
            .unwrap();
        assert_eq!(reply, [1, 1, 0, 1]);
    }

    pub async fn invalidate_prefix_removes_exactly_the_prefix((cache, p): Fixture) {
        for i in 0..5 {
            let key = format!("{p}:user:7:summary:{i}");
            cache.set(&key, &i, None).await.unwrap();
        }
        cache
            .set(&format!("{p}:user:7:balance"), &1, None)
            .await
            .unwrap();
        cache
            .set(&format!("{p}:user:70:summary:0"), &1, None)
            .await
            .unwrap();
        let removed = cache
            .invalidate_prefix(&format!("{p}:user:7:summary:"))
            .await
            .unwrap();
        assert_eq!(removed, 5);
        assert!(
            !cache
                .exists(&format!("{p}:user:7:summary:0"))
                .await
                .unwrap()
        );
        assert!(cache.exists(&format!("{p}:user:7:balance")).await.unwrap());
        assert!(
            cache
                .exists(&format!("{p}:user:70:summary:0"))
                .await
                .unwrap()
        );
    }

    pub async fn invalidate_prefix_treats_glob_characters_literally((cache, p): Fixture) {
        cache
            .set(&format!("{p}:user:[1]:a"), &1, None)
            .await
            .unwrap();
        cache.set(&format!("{p}:user:1:a"), &1, None).await.unwrap();
        cache.set(&format!("{p}:user:*x"), &1, None).await.unwrap();
        cache.set(&format!("{p}:user:yx"), &1, None).await.unwrap();
        let removed = cache
            .invalidate_prefix(&format!("{p}:user:[1]"))
            .await
            .unwrap();
        assert_eq!(removed, 1, "[1] is literal, not a character class");
        assert!(cache.exists(&format!("{p}:user:1:a")).await.unwrap());
        let removed = cache
            .invalidate_prefix(&format!("{p}:user:*"))
            .await
            .unwrap();
        assert_eq!(removed, 1, "* is literal, not a wildcard");
        assert!(cache.exists(&format!("{p}:user:yx")).await.unwrap());
    }

    pub async fn invalidate_prefix_covers_many_keys((cache, p): Fixture) {
        // Enough keys to land on every cluster primary and take many SCAN pages.
        let entries: Vec<(String, u32)> = (0..3000).map(|i| (format!("{p}:bulk:{i}"), i)).collect();
        let refs: Vec<(&str, u32)> = entries.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        cache
            .set_many(&refs, Some(Duration::from_secs(300)))
            .await
            .unwrap();
        cache.set(&format!("{p}:keep"), &1, None).await.unwrap();
        let removed = cache
            .invalidate_prefix(&format!("{p}:bulk:"))
            .await
            .unwrap();
        assert_eq!(removed, 3000);
        for (key, _) in entries.iter().step_by(97) {
            assert!(!cache.exists(key).await.unwrap(), "{key} survived");
        }
        assert!(cache.exists(&format!("{p}:keep")).await.unwrap());
    }

    pub async fn get_many_and_set_many_keep_key_order((cache, p): Fixture) {
        let keys: Vec<String> = (0..20).map(|i| format!("{p}:m:{i}")).collect();
        let entries: Vec<(&str, u32)> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(i, k)| (k.as_str(), i as u32))
            .collect();
        cache
            .set_many(&entries, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let values: Vec<Option<u32>> = cache.get_many(&refs).await.unwrap();
        let expected: Vec<Option<u32>> = (0..20u32).map(|i| (i % 3 != 0).then_some(i)).collect();
        assert_eq!(values, expected);
        assert!(matches!(
            cache.ttl(&keys[1]).await.unwrap(),
            KeyTtl::Expires(_)
        ));
    }

    pub async fn undecodable_value_is_a_miss((cache, p): Fixture) {
        let key = format!("{p}:corrupt");
        cache
            .set_bytes(&key, b"\xff\x00not json", None)
            .await
            .unwrap();
        assert_eq!(cache.get::<Asset>(&key).await.unwrap(), None);
        cache
            .set(&key, &"a string, not an Asset", None)
            .await
            .unwrap();
        assert_eq!(cache.get::<Asset>(&key).await.unwrap(), None);
        assert_eq!(cache.stats().decode_errors, 2);
        assert_eq!(cache.stats().misses, 2);
    }

    pub async fn stats_count_hits_and_misses((cache, p): Fixture) {
        let key = format!("{p}:s");
        let _ = cache.get::<u8>(&key).await.unwrap();
        cache.set(&key, &1u8, None).await.unwrap();
        let _ = cache.get::<u8>(&key).await.unwrap();
        let _ = cache.get::<u8>(&key).await.unwrap();
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.errors), (2, 1, 0));
        assert!((stats.hit_rate() - 2.0 / 3.0).abs() < 1e-9);
    }

    /// Every call that takes a TTL or window refuses one over `MAX_TTL` with
    /// the same error on every backend, sends nothing, and leaves no key.
    pub async fn a_ttl_over_the_maximum_is_an_invalid_argument_not_a_panic((cache, p): Fixture) {
        let key = format!("{p}:huge");
        cache.set(&key, &1, None).await.unwrap();
        for ttl in [
            MAX_TTL + Duration::from_millis(1),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            let errors = [
                cache
                    .set(&format!("{p}:new"), &1, Some(ttl))
                    .await
                    .unwrap_err(),
                cache
                    .set_bytes(&format!("{p}:new"), b"1", Some(ttl))
                    .await
                    .unwrap_err(),
                cache
                    .set_many(&[(format!("{p}:new").as_str(), 1)], Some(ttl))
                    .await
                    .unwrap_err(),
                cache.expire(&key, ttl).await.unwrap_err(),
                cache
                    .incr_window(&format!("{p}:win"), 1, ttl)
                    .await
                    .unwrap_err(),
            ];
            for err in errors {
                assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{ttl:?}: {err}");
                assert!(err.to_string().contains("maximum"), "{err}");
            }
        }
        assert!(!cache.exists(&format!("{p}:new")).await.unwrap());
        assert!(!cache.exists(&format!("{p}:win")).await.unwrap());
        assert_eq!(cache.ttl(&key).await.unwrap(), KeyTtl::Persistent);
        let err = cache_core::validate_ttl("window", Duration::MAX).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    /// The largest TTL, and the largest window of a counter, are accepted.
    pub async fn the_maximum_ttl_itself_is_accepted((cache, p): Fixture) {
        let key = format!("{p}:longest");
        cache.set(&key, &1, Some(MAX_TTL)).await.unwrap();
        assert!(matches!(
            cache.ttl(&key).await.unwrap(),
            KeyTtl::Expires(left) if left > MAX_TTL - Duration::from_secs(60)
        ));
        assert!(cache.expire(&key, MAX_TTL).await.unwrap());
        let hit = cache
            .incr_window(&format!("{p}:w"), 1, cache_core::MAX_WINDOW)
            .await
            .unwrap();
        assert_eq!(hit.count, 1);
    }

    /// `invalidate_prefix("")` would match every key of every service.
    pub async fn invalidate_prefix_refuses_an_empty_prefix((cache, p): Fixture) {
        let key = format!("{p}:kept");
        cache.set(&key, &1, None).await.unwrap();
        let err = cache.invalidate_prefix("").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("invalidate_all"), "{err}");
        assert!(cache.exists(&key).await.unwrap());
    }

    /// A value the handle would never read back is not written.
    pub async fn a_value_over_the_cap_is_refused_on_write((cache, p): Fixture) {
        let cap = cache.max_value_bytes();
        assert_eq!(cap, cache_core::DEFAULT_MAX_VALUE_BYTES);
        let big = vec![b'x'; cap + 1];
        let err = cache
            .set_bytes(&format!("{p}:big"), &big, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        let text = "y".repeat(cap);
        let err = cache
            .set(&format!("{p}:big"), &text, None)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "JSON adds quotes: {err}"
        );
        assert!(!cache.exists(&format!("{p}:big")).await.unwrap());
        let just = vec![b'z'; cap];
        cache
            .set_bytes(&format!("{p}:cap"), &just, None)
            .await
            .unwrap();
        assert_eq!(
            cache
                .get_bytes(&format!("{p}:cap"))
                .await
                .unwrap()
                .map(|b| b.len()),
            Some(cap)
        );
        assert_eq!(cache.stats().oversized, 0);
    }

    /// Reads are capped with `GETRANGE`, which answers "" for a missing key;
    /// an empty value is a miss on every backend alike.
    pub async fn an_empty_value_reads_as_a_miss((cache, p): Fixture) {
        let key = format!("{p}:empty");
        cache.set_bytes(&key, b"", None).await.unwrap();
        assert_eq!(cache.get_bytes(&key).await.unwrap(), None);
        assert_eq!(cache.get::<String>(&key).await.unwrap(), None);
    }

    pub async fn health_reports_a_healthy_store((cache, _p): Fixture) {
        let health = cache.health().await;
        assert!(health.healthy, "{health:?}");
        assert!(health.latency.is_some());
        assert_eq!(health.breaker, cache_core::BreakerState::Closed);
        assert_eq!(health.error_kind, None);
    }
}

/// The namespace is a real key prefix in Redis, visible to any other client.
#[tokio::test]
async fn namespace_is_put_in_front_of_every_key() {
    let server = shared_server();
    let ns = unique_prefix("ns");
    let cache = suite::build(suite::redis(&server.url()).namespace(format!("{ns}:"))).await;
    cache.set("price", &5, None).await.unwrap();
    assert_eq!(server.cli(&["GET", &format!("{ns}:price")]).trim(), "5");
    let plain = suite::build(suite::redis(&server.url())).await;
    plain
        .set(&format!("{ns}-other:price"), &6, None)
        .await
        .unwrap();
    assert_eq!(cache.invalidate_all().await.unwrap(), 1);
    assert_eq!(
        server.cli(&["GET", &format!("{ns}-other:price")]).trim(),
        "6"
    );
}

/// Values are plain JSON, readable by any Redis client.
#[tokio::test]
async fn values_are_stored_as_plain_json_with_pttl() {
    let server = shared_server();
    let p = unique_prefix("json");
    let cache = suite::build(suite::redis(&server.url())).await;
    cache
        .set(
            &format!("{p}:a"),
            &vec![1.5, 2.0],
            Some(Duration::from_secs(90)),
        )
        .await
        .unwrap();
    assert_eq!(server.cli(&["GET", &format!("{p}:a")]).trim(), "[1.5,2.0]");
    let pttl: u64 = server
        .cli(&["PTTL", &format!("{p}:a")])
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 88_000 && pttl <= 90_000, "{pttl}");
}

/// `rediss://` connects over TLS and verifies the server against the given CA.
#[tokio::test]
async fn rediss_connects_over_tls_and_verifies_the_certificate() {
    let (server, ca) = tests::RedisServer::start_tls();
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let cache = suite::build(
        suite::redis(&url)
            .tls_ca_cert_pem(ca)
            .timeout(suite::TIMEOUT),
    )
    .await;
    cache.set("over-tls", &"yes", None).await.unwrap();
    assert_eq!(
        cache.get::<String>("over-tls").await.unwrap().as_deref(),
        Some("yes")
    );

    // Without trusting the CA the handshake must fail: the certificate is checked.
    let untrusted = suite::build(suite::redis(&url).timeout(Duration::from_millis(500))).await;
    let err = untrusted.get::<String>("over-tls").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

/// Two handles on one Redis (standalone or cluster) with a namespace of the
/// test's own: `small` caps values at `cap` bytes, `writer` has the default
/// cap, as another service or a foreign client writing bigger values would.
async fn small_and_writer(redis: Backend, ns: &str, cap: usize) -> (Cache, Cache) {
    let builder = || redis.suite_builder().namespace(ns);
    let small = suite::build(builder().max_value_bytes(cap)).await;
    let writer = suite::build(builder()).await;
    (small, writer)
}

/// A Redis-only behaviour takes the backend (the in-memory store has no
/// other writer whose values could exceed the cap).
async fn redis_backend(backend: Backend, _test: &str) -> Backend {
    backend
}

tests::suite!(
    redis_only fixture: redis_backend;
    a_value_over_the_cap_is_a_counted_miss,
    get_many_reads_values_over_the_cap_as_misses,
    cached_overwrites_a_value_over_the_cap,
    invalidate_all_removes_the_namespace_and_nothing_else,
);

mod redis_behaviour {
    use super::*;

    pub async fn a_value_over_the_cap_is_a_counted_miss(redis: Backend) {
        let (small, writer) = small_and_writer(redis, &unique_prefix("cap"), 1024).await;
        // 1 023 characters and two quotes: one byte over.
        writer.set("big", &"x".repeat(1023), None).await.unwrap();
        writer.set("fits", &"x".repeat(1022), None).await.unwrap();
        assert_eq!(small.get::<String>("big").await.unwrap(), None);
        assert_eq!(small.get_bytes("big").await.unwrap(), None);
        assert_eq!(
            small.get::<String>("fits").await.unwrap().map(|s| s.len()),
            Some(1022)
        );
        let stats = small.stats();
        assert_eq!(
            (stats.oversized, stats.misses, stats.hits),
            (2, 1, 1),
            "{stats:?}"
        );
        assert_eq!(stats.errors, 0);
    }

    pub async fn get_many_reads_values_over_the_cap_as_misses(redis: Backend) {
        let (small, writer) = small_and_writer(redis, &unique_prefix("capmany"), 100).await;
        let big = "b".repeat(200);
        writer
            .set_many(
                &[("a", "small"), ("b", big.as_str()), ("c", "small too")],
                None,
            )
            .await
            .unwrap();
        let values: Vec<Option<String>> =
            small.get_many(&["a", "b", "missing", "c"]).await.unwrap();
        assert_eq!(
            values,
            vec![Some("small".into()), None, None, Some("small too".into())]
        );
        assert_eq!(small.stats().oversized, 1);
        assert_eq!(small.stats().misses, 2);
    }

    /// A huge foreign value under a memoized key is a miss like any other: the
    /// body runs and its result replaces the value (no "failed read, no write").
    pub async fn cached_overwrites_a_value_over_the_cap(redis: Backend) {
        #[cache_core::cached(prefix = "capped", ttl = 60, cache = cache, skip(cache))]
        async fn double(cache: &Cache, n: u64) -> u64 {
            n * 2
        }
        let (small, writer) = small_and_writer(redis, &unique_prefix("capmemo"), 1024).await;
        let key = cache_core::key_for("capped", &(21u64,)).unwrap();
        // Valid JSON for another value (7 and padding): read whole, it would be a hit.
        let mut foreign = b"7".to_vec();
        foreign.resize(4096, b' ');
        writer.set_bytes(&key, &foreign, None).await.unwrap();
        assert_eq!(writer.get::<u64>(&key).await.unwrap(), Some(7));
        assert_eq!(double(&small, 21).await, 42);
        assert_eq!(small.stats().oversized, 1);
        assert_eq!(
            writer.get::<u64>(&key).await.unwrap(),
            Some(42),
            "overwritten"
        );
        assert_eq!(double(&small, 21).await, 42);
        assert_eq!(small.stats().hits, 1);
    }

    /// With a namespace, `invalidate_all` removes that namespace's keys only.
    pub async fn invalidate_all_removes_the_namespace_and_nothing_else(redis: Backend) {
        let ns = unique_prefix("all");
        let (mine, _) = small_and_writer(redis, &ns, 1024).await;
        let (neighbour, _) = small_and_writer(redis, &format!("{ns}x"), 1024).await;
        for i in 0..50 {
            mine.set(&format!("k{i}"), &i, None).await.unwrap();
        }
        neighbour.set("k0", &0, None).await.unwrap();
        assert_eq!(mine.invalidate_all().await.unwrap(), 50);
        assert!(!mine.exists("k7").await.unwrap());
        assert!(neighbour.exists("k0").await.unwrap());
    }
}

/// Without a namespace `invalidate_all` empties the store (the in-memory one
/// here: on a shared Redis it would remove the other tests' keys).
#[tokio::test]
async fn invalidate_all_without_a_namespace_removes_every_key() {
    let cache = Cache::in_memory();
    for i in 0..10 {
        cache.set(&format!("k{i}"), &i, None).await.unwrap();
    }
    assert_eq!(cache.invalidate_all().await.unwrap(), 10);
    assert!(!cache.exists("k3").await.unwrap());
}

/// A memoized result over the cap is returned and not cached, on every
/// backend, and is not reported as the cache being unavailable.
#[tokio::test]
async fn a_memoized_result_over_the_cap_is_returned_uncached() {
    #[cache_core::cached(prefix = "too-big", ttl = 60, cache = cache, skip(cache, calls))]
    async fn big(cache: &Cache, calls: &std::sync::atomic::AtomicU32, n: usize) -> String {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        "x".repeat(n)
    }
    let calls = std::sync::atomic::AtomicU32::new(0);
    for cache in [
        suite::build(Cache::builder().max_value_bytes(100)).await,
        small_and_writer(Backend::Standalone, &unique_prefix("toobig"), 100)
            .await
            .0,
        small_and_writer(Backend::Cluster, &unique_prefix("toobig"), 100)
            .await
            .0,
    ] {
        calls.store(0, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(big(&cache, &calls, 200).await.len(), 200);
        assert_eq!(big(&cache, &calls, 200).await.len(), 200);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "not cached"
        );
        assert_eq!(big(&cache, &calls, 20).await.len(), 20);
        assert_eq!(big(&cache, &calls, 20).await.len(), 20);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "small ones are"
        );
        assert_eq!(cache.stats().hits, 1);
    }
}

/// `run_atomic` on Redis: keys get the namespace, integers go in and come
/// out, a flushed script cache is reloaded (nothing runs twice); in memory
/// the twin answers the same.
#[tokio::test]
async fn atomic_ops_run_with_namespaced_keys_and_survive_script_flush() {
    /// `INCRBY KEYS[1] ARGV[1]`, with the number of keys and `ARGV[2]` back.
    struct IncrBy;
    static INCR_BY: std::sync::LazyLock<cache_core::Script> = std::sync::LazyLock::new(|| {
        cache_core::Script::new(
            "return {redis.call('INCRBY', KEYS[1], ARGV[1]), #KEYS, tonumber(ARGV[2])}",
        )
    });
    impl cache_core::AtomicOp for IncrBy {
        fn script(&self) -> &cache_core::Script {
            &INCR_BY
        }
        fn twin(
            &self,
            entries: &mut cache_core::Entries<'_>,
            keys: &[&str],
            args: &[i64],
        ) -> cache_core::Result<Vec<i64>> {
            let now = entries
                .get(keys[0])
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                .unwrap_or(0)
                + args[0];
            entries.set(keys[0], now.to_string().as_bytes(), None);
            Ok(vec![now, keys.len() as i64, args[1]])
        }
    }
    let server = tests::RedisServer::start();
    let ns = unique_prefix("script");
    let cache = suite::build(suite::redis(&server.url()).namespace(&ns)).await;
    let timeout = Duration::from_secs(2);
    let run = || cache.run_atomic(&IncrBy, &["counter"], &[5, -7], timeout);
    assert_eq!(run().await.unwrap(), vec![5, 1, -7]);
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    assert_eq!(run().await.unwrap(), vec![10, 1, -7], "counted once");
    assert_eq!(server.cli(&["GET", &format!("{ns}:counter")]).trim(), "10");
    let memory = Cache::builder()
        .namespace(&ns)
        .in_memory()
        .build()
        .await
        .unwrap();
    let run = || memory.run_atomic(&IncrBy, &["counter"], &[5, -7], timeout);
    assert_eq!(run().await.unwrap(), vec![5, 1, -7]);
    assert_eq!(run().await.unwrap(), vec![10, 1, -7]);
    assert_eq!(
        memory.get_bytes("counter").await.unwrap().as_deref(),
        Some(&b"10"[..])
    );
}
