//! The event bus's memory under a flood of oversized messages from another
//! program. A test binary of its own: the process's resident memory is this
//! test's alone, not shared with tests running beside it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use cache_core::events::EventError;
use futures_util::StreamExt;
use tests::RedisServer;
use tests::suite;

/// The process's resident set, in bytes (`VmRSS` in `/proc/self/status`),
/// once the allocator has handed its free pages back: what is still held,
/// not the high-water mark of the driver's own queue of pushes (unbounded,
/// ahead of the bus, drained as fast as the bus takes them).
fn resident_bytes() -> u64 {
    // SAFETY: malloc_trim only releases free memory; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_dropped_as_they_arrive_and_memory_stays_bounded() {
    const CAP: usize = 64 * 1024;
    const MESSAGE: usize = 1024 * 1024;
    const MESSAGES: u64 = 200;
    // No output buffer limit for pub/sub clients: by default Redis drops a
    // subscriber more than 32 MB behind, and the flood is to arrive whole.
    let server = RedisServer::start_with(&["--client-output-buffer-limit", "pubsub 0 0 0"]);
    let cache = suite::build(
        suite::redis(&server.url())
            .timeout(suite::TIMEOUT)
            .max_value_bytes(CAP),
    )
    .await;
    let bus = cache.events();
    // Two subscriptions nobody reads: everything delivered stays in their buffers.
    let mut idle = bus.subscribe::<String>(&["flood"]).await.unwrap();
    let _other = bus.subscribe::<String>(&["flood"]).await.unwrap();
    let before = resident_bytes();

    // Another program (`redis-cli --pipe`, so that the publishing side's
    // buffers are not this process's) publishes 1 MiB messages, 16 times the cap.
    let port = server.port().to_string();
    let published = tokio::task::spawn_blocking(move || {
        let mut cli = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        let mut stdin = cli.stdin.take().expect("redis-cli's stdin");
        let payload = vec![b'x'; MESSAGE];
        let command = format!("*3\r\n$7\r\nPUBLISH\r\n$5\r\nflood\r\n${MESSAGE}\r\n");
        for _ in 0..MESSAGES {
            stdin.write_all(command.as_bytes()).unwrap();
            stdin.write_all(&payload).unwrap();
            stdin.write_all(b"\r\n").unwrap();
        }
        drop(stdin);
        let output = cli.wait_with_output().expect("redis-cli ends");
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .unwrap();
    assert!(
        published.contains(&format!("errors: 0, replies: {MESSAGES}")),
        "{published}"
    );
    tests::eventually(
        Duration::from_secs(30),
        "every message delivered",
        async || cache.stats().events.received >= 2 * MESSAGES,
    )
    .await;
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "{MESSAGES} messages of {MESSAGE} bytes: resident memory grew by {:.1} MiB",
        grown as f64 / (1024.0 * 1024.0)
    );
    // Queued whole, they held 200 MiB; now the buffers hold their sizes.
    assert!(
        grown < 32 * 1024 * 1024,
        "resident memory grew by {} MiB",
        grown / (1024 * 1024)
    );
    let stats = cache.stats().events;
    // Counted as malformed as they arrived, though nobody read them yet.
    assert_eq!((stats.malformed, stats.dropped), (2 * MESSAGES, 0));

    // A subscriber is told of each, and the stream goes on.
    match tokio::time::timeout(Duration::from_secs(10), idle.next()).await {
        Ok(Some(Err(EventError::Malformed { channel, reason }))) => {
            assert_eq!(channel, "flood");
            assert!(reason.contains("1048576 bytes"), "{reason}");
        }
        other => panic!("expected a malformed item, got {other:?}"),
    }
    assert_eq!(cache.stats().events.malformed, 2 * MESSAGES, "not twice");
    bus.publish("flood", &"small").await.unwrap();
    let mut rest = 0;
    let last = loop {
        match tokio::time::timeout(Duration::from_secs(10), idle.next()).await {
            Ok(Some(Err(EventError::Malformed { .. }))) => rest += 1,
            other => break other,
        }
    };
    assert_eq!(rest, MESSAGES - 1);
    assert!(
        matches!(last, Ok(Some(Ok(ref text))) if text == "small"),
        "{last:?}"
    );
}
