//! The soak: `search-service` and `portfolio` (release builds) on one
//! `redis-server` reached through a noxious fault proxy, under mixed traffic
//! (searches and embeddings, some repeated and some new; portfolio
//! summaries, prices, balance writes and price posts; four `/events`
//! streams held open), with one fault every minute from a seeded schedule
//! (the proxy's faults, `CLIENT PAUSE`, a Redis restart), each for 10 s
//! from the minute's 15th second. Minute 0 is fault-free.
//!
//! Every minute it samples each service's resident memory and open
//! descriptors (`/proc/<pid>/status`, `/proc/<pid>/fd`) and live Tokio tasks
//! (`runtime.alive_tasks` of `/stats`), and counts the minute's requests,
//! their p50/p99/slowest latency and the failed ones: a transport error, a
//! status other than 200, 204 and 429, or an answer slower than
//! [`REQUEST_BOUND`] (a request makes a few cache calls, each bounded by
//! the handles' 250 ms timeout), apart for those in flight during a fault
//! or within [`RECOVERY`] of its end (a price post is a `503` while Redis is
//! away: it cannot be published) and the others, which must be none. It
//! prints a Markdown table, the failures by kind, and writes `soak.csv` for
//! `charts`.
//!
//! `soak MINUTES SEARCH_SERVICE PORTFOLIO OUT_DIR [SEED]`; run by
//! `scripts/soak.sh MINUTES`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::RedisServer;
use tests::http::Connection;
use tests::proxy::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request slower than this failed, fault or not.
const REQUEST_BOUND: Duration = Duration::from_secs(2);
/// When in each minute the fault starts, and how long it lasts.
const FAULT_AT: Duration = Duration::from_secs(15);
const FAULT_FOR: Duration = Duration::from_secs(10);
/// Concurrent request loops per service, and the pause between requests.
const WORKERS: usize = 3;
const PAUSE: Duration = Duration::from_millis(8);

/// What happens in a minute of the schedule.
#[derive(Debug, Clone, Copy)]
enum Event {
    Proxy(Fault),
    /// `CLIENT PAUSE 5000 ALL` on the server.
    ClientPause,
    /// The server killed and started again, empty.
    Restart,
}

impl Event {
    fn name(self) -> String {
        match self {
            Event::Proxy(Fault::Latency { .. }) => "latency".into(),
            Event::Proxy(Fault::Bandwidth { .. }) => "bandwidth".into(),
            Event::Proxy(Fault::Blackhole) => "blackhole".into(),
            Event::Proxy(Fault::Partition) => "partition".into(),
            Event::Proxy(Fault::ResetAfter { .. }) => "reset-after".into(),
            Event::Proxy(Fault::SlowClose { .. }) => "slow-close".into(),
            Event::Proxy(Fault::Refuse) => "refused".into(),
            Event::ClientPause => "client-pause".into(),
            Event::Restart => "restart".into(),
        }
    }
}

const EVENTS: [Event; 9] = [
    Event::Proxy(Fault::Latency {
        latency: Duration::from_millis(100),
        jitter: Duration::from_millis(80),
    }),
    Event::Proxy(Fault::Bandwidth { kib_per_s: 1 }),
    Event::Proxy(Fault::Blackhole),
    Event::Proxy(Fault::Partition),
    Event::Proxy(Fault::ResetAfter { bytes: 4096 }),
    Event::Proxy(Fault::SlowClose {
        delay: Duration::from_millis(2000),
    }),
    Event::Proxy(Fault::Refuse),
    Event::ClientPause,
    Event::Restart,
];

/// One minute's requests.
#[derive(Default)]
struct Minute {
    latencies_ms: Vec<f64>,
    /// Failed requests in flight during a fault or within [`RECOVERY`] of its end.
    failed_in_fault: u64,
    /// Failed requests that began anywhere else: none is allowed.
    failed_outside: u64,
}

/// After a fault ends, what the services may take to recover (issue 24).
const RECOVERY: Duration = Duration::from_secs(2);

struct Shared {
    minutes: Mutex<Vec<Minute>>,
    started: Instant,
    stop: AtomicBool,
    events_bytes: AtomicU64,
    /// The fault in force, or the last one: when it began and ended.
    fault: Mutex<Option<(Instant, Option<Instant>)>>,
    /// Failed requests by kind (`POST /prices 503`, `GET /search error`...).
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Shared {
    fn record(&self, began: Instant, took: Duration, failure: Option<String>) {
        let minute = (self.started.elapsed().as_secs() / 60) as usize;
        // In flight at any moment of the fault or of its recovery: a request
        // sent just before the fault began and answered during it counts too.
        let ended = began + took;
        let in_fault = match *self.fault.lock().expect("not poisoned") {
            Some((from, None)) => ended >= from,
            Some((from, Some(to))) => ended >= from && began <= to + RECOVERY,
            None => false,
        };
        let failure =
            failure.or_else(|| (took > REQUEST_BOUND).then(|| "slower than the bound".to_string()));
        let mut minutes = self.minutes.lock().expect("not poisoned");
        while minutes.len() <= minute {
            minutes.push(Minute::default());
        }
        minutes[minute].latencies_ms.push(took.as_secs_f64() * 1e3);
        if let Some(kind) = failure {
            if in_fault {
                minutes[minute].failed_in_fault += 1;
            } else {
                minutes[minute].failed_outside += 1;
            }
            let kind = format!(
                "{kind}{}",
                if in_fault {
                    " (during a fault)"
                } else {
                    " (outside faults)"
                }
            );
            *self
                .failures
                .lock()
                .expect("not poisoned")
                .entry(kind)
                .or_default() += 1;
        }
    }
}

/// A service process, killed when dropped.
struct Service {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM first: the service drains; then it is reaped.
        // SAFETY: a signal to the child this value owns, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &'static str, binary: &Path, redis_url: &str, out: &Path) -> Service {
    let port = tests::free_port();
    let log = std::fs::File::create(out.join(format!("{name}.log"))).expect("log file");
    let mut command = Command::new(binary);
    // SAFETY: prctl is async-signal-safe and touches only this child: it
    // gets SIGTERM when the soak dies, killed or not.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = command
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("REDIS_URL", redis_url)
        .env("RATE_LIMIT", "100000000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("run {}: {err}", binary.display()));
    Service { name, child, port }
}

async fn wait_healthy(service: &Service) {
    let started = Instant::now();
    loop {
        if let Ok(mut conn) = Connection::open(service.port).await
            && let Ok(response) = conn.get("/health", Duration::from_secs(2)).await
            && response.status == 200
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} did not come up",
            service.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The request a worker makes next.
fn next_request(rng: &mut fastrand::Rng, portfolio: bool) -> (&'static str, String, Vec<u8>) {
    if portfolio {
        let user = rng.u32(1..=50);
        match rng.u32(0..10) {
            0..=4 => ("GET", format!("/users/{user}/summary"), Vec::new()),
            5..=6 => ("GET", "/prices?assets=BTC,ETH,SOL".into(), Vec::new()),
            7..=8 => {
                let asset = ["BTC", "ETH", "SOL"][rng.usize(0..3)];
                let body = format!(
                    "{{\"amount\":\"{}.{}\"}}",
                    rng.u32(0..100),
                    rng.u32(0..1000)
                );
                (
                    "PUT",
                    format!("/users/{user}/balances/{asset}"),
                    body.into_bytes(),
                )
            }
            _ => {
                let asset = ["BTC", "ETH", "SOL"][rng.usize(0..3)];
                let body = format!("{{\"price\":\"{}.5\"}}", rng.u32(1000..80000));
                ("POST", format!("/prices/{asset}"), body.into_bytes())
            }
        }
    } else {
        // Mostly repeated queries (hits), some new ones (misses that compute).
        let query = if rng.u32(0..10) < 8 {
            format!("q{}", rng.u32(0..200))
        } else {
            format!("new{}", rng.u64(..))
        };
        match rng.u32(0..4) {
            0 => ("GET", format!("/embed?text={query}"), Vec::new()),
            _ => ("GET", format!("/search?q={query}&k=3"), Vec::new()),
        }
    }
}

async fn worker(port: u16, portfolio: bool, seed: u64, shared: Arc<Shared>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut conn: Option<Connection> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = Connection::open(port).await.ok();
        }
        let (method, path, body) = next_request(&mut rng, portfolio);
        let route = path.split(['?', '/']).nth(1).unwrap_or("").to_string();
        let began = Instant::now();
        let failure = match conn.as_mut() {
            Some(open) => {
                let headers: &[(&str, &str)] = if body.is_empty() {
                    &[]
                } else {
                    &[("content-type", "application/json")]
                };
                match open
                    .send(method, &path, headers, &body, Duration::from_secs(10))
                    .await
                {
                    Ok(response) if matches!(response.status, 200 | 204 | 429) => None,
                    Ok(response) => Some(format!("{method} /{route} {}", response.status)),
                    Err(err) => {
                        conn = None;
                        Some(format!("{method} /{route} {:?}", err.kind()))
                    }
                }
            }
            None => Some(format!("{method} /{route} no connection")),
        };
        shared.record(began, began.elapsed(), failure);
        tokio::time::sleep(PAUSE).await;
    }
}

/// An `/events` stream held open and read; opened again when it ends.
async fn event_stream(port: u16, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let request =
            "GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n";
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 8192];
        while !shared.stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    shared.events_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
    }
}

/// (resident KiB, open descriptors) of a process.
fn process_figures(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

async fn alive_tasks(port: u16) -> Option<u64> {
    let mut conn = Connection::open(port).await.ok()?;
    let response = conn.get("/stats", Duration::from_secs(5)).await.ok()?;
    let stats: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
    stats["runtime"]["alive_tasks"].as_u64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (minutes, search_bin, portfolio_bin, out) = match args.as_slice() {
        [minutes, search, portfolio, out, ..] => (
            minutes.parse::<u64>().expect("MINUTES is a number"),
            PathBuf::from(search),
            PathBuf::from(portfolio),
            PathBuf::from(out),
        ),
        _ => panic!("usage: soak MINUTES SEARCH_SERVICE PORTFOLIO OUT_DIR [SEED]"),
    };
    let seed: u64 = args
        .get(4)
        .map(|s| s.parse().expect("SEED is a number"))
        .unwrap_or_else(|| fastrand::u64(..));
    std::fs::create_dir_all(&out).expect("out dir");
    let mut redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port()).await;
    let search = spawn("search-service", &search_bin, &proxy.url(), &out);
    let portfolio = spawn("portfolio", &portfolio_bin, &proxy.url(), &out);
    wait_healthy(&search).await;
    wait_healthy(&portfolio).await;
    let shared = Arc::new(Shared {
        minutes: Mutex::new(Vec::new()),
        started: Instant::now(),
        stop: AtomicBool::new(false),
        events_bytes: AtomicU64::new(0),
        fault: Mutex::new(None),
        failures: Mutex::new(std::collections::BTreeMap::new()),
    });
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        tasks.push(tokio::spawn(worker(
            search.port,
            false,
            seed ^ w as u64,
            shared.clone(),
        )));
        tasks.push(tokio::spawn(worker(
            portfolio.port,
            true,
            seed ^ (100 + w as u64),
            shared.clone(),
        )));
    }
    for _ in 0..4 {
        tasks.push(tokio::spawn(event_stream(portfolio.port, shared.clone())));
    }
    let mut schedule = fastrand::Rng::with_seed(seed);
    let mut order: Vec<Event> = Vec::new();
    println!(
        "\nsoak: {minutes} min, seed {seed}, a fault for {FAULT_FOR:?} from the {}th second of every minute but the first",
        FAULT_AT.as_secs()
    );
    println!(
        "| minute | fault | requests | failed during the fault | failed outside | p50 ms | p99 ms | slowest ms | search RSS MiB | search fds | search tasks | portfolio RSS MiB | portfolio fds | portfolio tasks |"
    );
    println!(
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut csv = String::from(
        "minute,fault,requests,failed,failed_outside,p50_ms,p99_ms,max_ms,search_rss_kib,search_fds,search_tasks,portfolio_rss_kib,portfolio_fds,portfolio_tasks\n",
    );
    for minute in 0..minutes {
        let minute_start = shared.started + Duration::from_secs(60 * minute);
        let fault = if minute == 0 {
            None
        } else {
            if order.is_empty() {
                order = EVENTS.to_vec();
                schedule.shuffle(&mut order);
            }
            order.pop()
        };
        if let Some(event) = fault {
            tokio::time::sleep_until((minute_start + FAULT_AT).into()).await;
            *shared.fault.lock().expect("not poisoned") = Some((Instant::now(), None));
            match event {
                Event::Proxy(fault) => proxy.apply(fault).await,
                Event::ClientPause => {
                    let ms = FAULT_FOR.as_millis().to_string();
                    redis.cli(&["CLIENT", "PAUSE", &ms, "ALL"]);
                }
                Event::Restart => redis.kill(),
            }
            tokio::time::sleep(FAULT_FOR).await;
            match event {
                Event::Proxy(_) => proxy.heal().await,
                Event::ClientPause => {}
                Event::Restart => {
                    redis.restart();
                    proxy
                        .bind_upstream()
                        .expect("the restarted server listens for the proxy");
                }
            }
            if let Some((_, end)) = shared.fault.lock().expect("not poisoned").as_mut() {
                *end = Some(Instant::now());
            }
        }
        tokio::time::sleep_until((minute_start + Duration::from_secs(60)).into()).await;
        let (search_rss, search_fds) = process_figures(search.child.id());
        let (portfolio_rss, portfolio_fds) = process_figures(portfolio.child.id());
        let search_tasks = alive_tasks(search.port).await.unwrap_or(0);
        let portfolio_tasks = alive_tasks(portfolio.port).await.unwrap_or(0);
        let (requests, failed, failed_outside, p50, p99, max) = {
            let mut minutes = shared.minutes.lock().expect("not poisoned");
            let this = minutes.get_mut(minute as usize);
            let mut latencies = this
                .as_ref()
                .map(|m| m.latencies_ms.clone())
                .unwrap_or_default();
            latencies.sort_by(f64::total_cmp);
            let failed = this.as_ref().map_or(0, |m| m.failed_in_fault);
            let failed_outside = this.map_or(0, |m| m.failed_outside);
            (
                latencies.len(),
                failed,
                failed_outside,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                latencies.last().copied().unwrap_or(0.0),
            )
        };
        let fault_name = fault.map_or("none".to_string(), Event::name);
        println!(
            "| {minute} | {fault_name} | {requests} | {failed} | {failed_outside} | {p50:.1} | {p99:.1} | {max:.0} | {:.1} | {search_fds} | {search_tasks} | {:.1} | {portfolio_fds} | {portfolio_tasks} |",
            search_rss as f64 / 1024.0,
            portfolio_rss as f64 / 1024.0,
        );
        csv.push_str(&format!(
            "{minute},{fault_name},{requests},{failed},{failed_outside},{p50:.2},{p99:.2},{max:.1},{search_rss},{search_fds},{search_tasks},{portfolio_rss},{portfolio_fds},{portfolio_tasks}\n"
        ));
        std::fs::write(out.join("soak.csv"), &csv).expect("write soak.csv");
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    println!("\nfailed requests by kind:");
    for (kind, count) in shared.failures.lock().expect("not poisoned").iter() {
        println!("- {kind}: {count}");
    }
    println!(
        "\nevent stream bytes received: {}; samples: {}",
        shared.events_bytes.load(Ordering::Relaxed),
        out.join("soak.csv").display()
    );
    drop(search);
    drop(portfolio);
}
