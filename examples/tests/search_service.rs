//! End-to-end: the README's run command starts a service that answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The service binary, killed when dropped.
struct Service {
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(envs: &[(&str, &str)]) -> Service {
    let port = tests::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_search-service"));
    cmd.env_clear()
        .env("PORT", port.to_string())
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut service = Service {
        child: cmd.spawn().expect("start search-service"),
        port,
    };
    let stdout = service.child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    // Waits for the service's own "listening" line.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let ready = line.contains("listening");
        log.push(line);
        if ready {
            return service;
        }
    }
    panic!("search-service did not start:\n{}", log.join("\n"));
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn starts_on_the_in_memory_store_without_redis_and_answers() {
    let service = start(&[]);
    let (status, body) = http_get(service.port, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"healthy\":true"), "{body}");
    assert!(body.contains("in-memory"), "{body}");
}

#[test]
fn uses_redis_when_redis_url_is_set_and_never_logs_the_password() {
    let server = tests::RedisServer::start_with(&["--requirepass", "svc-Secret-1"]);
    let url = format!("redis://:svc-Secret-1@127.0.0.1:{}", server.port());
    let service = start(&[("REDIS_URL", &url)]);
    let (status, body) = http_get(service.port, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"healthy\":true"), "{body}");
    assert!(
        body.contains(&format!("127.0.0.1:{}", server.port())),
        "{body}"
    );
    assert!(!body.contains("svc-Secret-1"), "{body}");
}
