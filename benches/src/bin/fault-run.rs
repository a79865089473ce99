//! Fault runs of `search-service` under steady load on loopback.
//!
//! - `standalone` (the default): Redis is killed, restarted on the same port,
//!   then paused with `CLIENT PAUSE`.
//! - `cluster`: a Redis Cluster of three primaries and three replicas (node
//!   timeout 1 s); the primary that holds the rate limiter's counter is killed
//!   and its replica takes over; later another primary hands over to its
//!   replica with a planned `CLUSTER FAILOVER`.
//!
//! Reports failures and latency per phase, the slowest requests of each phase
//! with the time they were sent, and how long the service took to use Redis
//! again. A request counts in the phase it was sent in, except that one still
//! in flight when a fault starts counts in that fault's phase: the steady
//! phase holds only requests that never met a fault. Bounded: 10 to 15 s of load.
//!
//! `./scripts/fault-run.sh [standalone|cluster]` (builds both in release, then
//! runs this as `fault-run [--scenario standalone|cluster] [service binary]`).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::http::Connection;
use tests::{RedisCluster, RedisServer};

const CLIENTS: usize = 16;
const WORDS: &[&str] = &[
    "redis",
    "cache",
    "window",
    "rate",
    "limit",
    "cluster",
    "slot",
    "scan",
    "keys",
    "ttl",
    "embedding",
    "vector",
    "bm25",
    "proxy",
    "ipv6",
    "breaker",
    "retry",
    "backoff",
    "json",
    "portfolio",
    "price",
    "balance",
    "health",
    "shutdown",
    "lua",
    "script",
    "token",
    "bucket",
];

/// Node timeout of the cluster scenario's cluster.
const NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Where the search service's rate limiter counts the load (one client IP).
const LIMITER_KEY: &str = "rate:ip:127.0.0.1";

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A phase of the run: its name, when it started (ms into the run), and
/// whether it is a fault (requests in flight when it starts belong to it).
struct Phase {
    name: &'static str,
    start_ms: u64,
    fault: bool,
}

/// One request: when it was sent (ms into the run), its latency, and whether it got a 200.
type Sample = (u64, Duration, bool);

/// The phase a request belongs to.
fn phase_of(phases: &[Phase], sent_ms: u64, latency: Duration) -> usize {
    let sent = phases
        .iter()
        .rposition(|phase| sent_ms >= phase.start_ms)
        .unwrap_or(0);
    let ended_ms = sent_ms + latency.as_millis() as u64;
    phases
        .iter()
        .enumerate()
        .skip(sent + 1)
        .find(|(_, phase)| phase.fault && phase.start_ms <= ended_ms)
        .map_or(sent, |(index, _)| index)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The run's clock and the phases as they happen.
struct Run {
    started: Instant,
    phases: Vec<Phase>,
    /// Lines printed under the table.
    notes: Vec<String>,
}

impl Run {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn begin(&mut self, name: &'static str, fault: bool) {
        let start_ms = self.now_ms();
        self.phases.push(Phase {
            name,
            start_ms,
            fault,
        });
    }

    async fn at(&self, ms: u64) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            self.started + Duration::from_millis(ms),
        ))
        .await;
    }
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = match args.iter().position(|a| a == "--scenario") {
        Some(index) => {
            let value = args.get(index + 1).cloned().unwrap_or_default();
            args.drain(index..=(index + 1).min(args.len() - 1));
            value
        }
        None => "standalone".to_string(),
    };
    let binary = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/search-service".into());
    let timeout_ms: u64 = std::env::var("CACHE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);

    match scenario.as_str() {
        "standalone" => {
            let mut redis = RedisServer::start();
            let service = start_service(&binary, ("REDIS_URL", redis.url()), timeout_ms).await;
            let (run, samples) = with_load(service.1, |run| standalone(run, &mut redis)).await;
            let title = "Redis killed, restarted, paused";
            report(title, timeout_ms, &run, &samples);
            write_samples("standalone", title, &run, &samples);
        }
        "cluster" => {
            let mut cluster = RedisCluster::start_with_node_timeout(NODE_TIMEOUT);
            let urls = cluster.urls().join(",");
            let service = start_service(&binary, ("REDIS_CLUSTER_URLS", urls), timeout_ms).await;
            let (run, samples) = with_load(service.1, |run| failovers(run, &mut cluster)).await;
            let title = "Redis Cluster: a primary killed, then a planned failover";
            report(title, timeout_ms, &run, &samples);
            write_samples("cluster", title, &run, &samples);
        }
        other => panic!("unknown scenario {other:?}: standalone or cluster"),
    }
}

/// Starts the service on a free port with `backend` set, and waits until it accepts connections.
async fn start_service(binary: &str, backend: (&str, String), timeout_ms: u64) -> (Service, u16) {
    let port = tests::free_port();
    let service = Service(
        Command::new(binary)
            .env(backend.0, backend.1)
            .env("PORT", port.to_string())
            .env("RATE_LIMIT", "100000000")
            .env("CACHE_TIMEOUT_MS", timeout_ms.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start {binary}: {err}")),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Connection::open(port).await.is_err() {
        assert!(Instant::now() < deadline, "service did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (service, port)
}

/// Runs `script` while the clients load the service on `port`; the load
/// stops when the script returns.
async fn with_load<F, Fut>(port: u16, script: F) -> (Run, Vec<Sample>)
where
    F: FnOnce(Run) -> Fut,
    Fut: std::future::Future<Output = Run>,
{
    let run = Run {
        started: Instant::now(),
        phases: vec![Phase {
            name: "steady",
            start_ms: 0,
            fault: false,
        }],
        notes: Vec::new(),
    };
    let started = run.started;
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (samples, stop) = (samples.clone(), stop.clone());
            tokio::spawn(async move {
                let mut conn = Connection::open(port).await.expect("connect");
                let mut i = client;
                while !stop.load(Ordering::Relaxed) {
                    let q = format!(
                        "{}+{}",
                        WORDS[i % WORDS.len()],
                        WORDS[(i * 7 + 3) % WORDS.len()]
                    );
                    i += CLIENTS;
                    let sent = started.elapsed();
                    let result = conn
                        .get(&format!("/search?q={q}&k=5"), Duration::from_secs(5))
                        .await;
                    let ok = matches!(&result, Ok(r) if r.status == 200);
                    if result.is_err() {
                        conn = Connection::open(port).await.expect("reconnect");
                    }
                    let latency = started.elapsed() - sent;
                    samples
                        .lock()
                        .expect("samples")
                        .push((sent.as_millis() as u64, latency, ok));
                }
            })
        })
        .collect();
    let run = script(run).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    (run, samples)
}

/// Kill at 2 s, restart at 4 s, `CLIENT PAUSE 1500` at 7 s, end at 10 s.
async fn standalone(mut run: Run, redis: &mut RedisServer) -> Run {
    run.at(2000).await;
    redis.kill();
    run.begin("Redis killed", true);
    run.at(4000).await;
    redis.restart();
    run.begin("Redis restarted", false);
    let restarted = Instant::now();
    // The restarted server is empty: the first key the service writes shows it is back.
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let reused_after = loop {
        let size: u64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        if size > 0 {
            break Some(restarted.elapsed());
        }
        if restarted.elapsed() > Duration::from_secs(3) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    run.notes.push(match reused_after {
        Some(after) => format!(
            "service wrote to Redis again {:.0} ms after the restart",
            ms(after)
        ),
        None => "service did NOT use Redis within 3 s of the restart".to_string(),
    });
    run.at(7000).await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    run.begin("`CLIENT PAUSE` 1500 ms", true);
    run.at(8500).await;
    run.begin("after the pause", false);
    run.at(10_000).await;
    run
}

/// `keyspace_hits` of the node on `port`: grows when a client reads from it.
fn keyspace_hits(port: u16) -> u64 {
    RedisServer::cli_on(port, &["INFO", "stats"])
        .lines()
        .find_map(|line| line.strip_prefix("keyspace_hits:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Kill at 2 s the primary holding the limiter's counter; its replica is
/// promoted by the cluster; 2 s after that, a planned `CLUSTER FAILOVER` of
/// another primary; the run ends 2 s after that switch.
///
/// The cluster is polled from this task's thread (the runtime's workers carry
/// the load), as `redis-cli` calls; there is no event to wait on.
async fn failovers(mut run: Run, cluster: &mut RedisCluster) -> Run {
    let victim = cluster.primary_for_key(LIMITER_KEY);
    let replica = cluster.replica_of(victim).expect("a replica");
    let hits_before = keyspace_hits(replica);
    run.at(2000).await;
    let killed = Instant::now();
    cluster.node_mut(victim).kill();
    run.begin("primary killed", true);
    let mut read_after = None;
    let promoted_after = loop {
        if read_after.is_none() && keyspace_hits(replica) > hits_before {
            read_after = Some(killed.elapsed());
        }
        // Promoted as soon as a node reports it a primary; the rest of the
        // cluster learns it within a gossip round.
        if cluster.primaries().contains(&replica) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no failover within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    run.begin("replica promoted", false);
    while read_after.is_none() && killed.elapsed() < promoted_after + Duration::from_secs(5) {
        if keyspace_hits(replica) > hits_before {
            read_after = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    run.notes.push(format!(
        "replica promoted {:.0} ms after the kill (node timeout {} ms); the service read from it {}",
        ms(promoted_after),
        NODE_TIMEOUT.as_millis(),
        match read_after {
            Some(after) => format!("{:.0} ms after the kill", ms(after)),
            None => "NOT within 5 s of the promotion".to_string(),
        }
    ));

    run.at(run.now_ms() + 2000).await;
    let other = cluster
        .primaries()
        .into_iter()
        .find(|&port| port != replica)
        .expect("another primary");
    let standby = cluster.replica_of(other).expect("a replica");
    let requested = Instant::now();
    let reply = RedisServer::cli_on(standby, &["CLUSTER", "FAILOVER"]);
    assert_eq!(reply.trim(), "OK", "CLUSTER FAILOVER: {reply}");
    run.begin("`CLUSTER FAILOVER` (planned)", true);
    cluster.wait_until(Duration::from_secs(20), |c| {
        c.primaries().contains(&standby)
    });
    let switched_after = requested.elapsed();
    run.begin("after the planned failover", false);
    run.notes.push(format!(
        "planned failover: the replica took over {:.0} ms after CLUSTER FAILOVER",
        ms(switched_after)
    ));
    run.at(run.now_ms() + 2000).await;
    run
}

/// With `BENCH_SAMPLES_DIR` set, writes every request of the run to
/// `fault-<scenario>.csv` there, for the chart `scripts/bench.sh` draws:
/// `# title`, `# phase,<start ms>,<fault>,<name>` lines, then
/// `sent_ms,latency_us,ok` rows.
fn write_samples(scenario: &str, title: &str, run: &Run, samples: &[Sample]) {
    use std::fmt::Write as _;
    let Some(dir) = std::env::var_os("BENCH_SAMPLES_DIR") else {
        return;
    };
    let mut csv = format!("# {title}\n");
    for phase in &run.phases {
        let _ = writeln!(
            csv,
            "# phase,{},{},{}",
            phase.start_ms, phase.fault, phase.name
        );
    }
    csv.push_str("sent_ms,latency_us,ok\n");
    for (sent, latency, ok) in samples {
        let _ = writeln!(csv, "{sent},{},{}", latency.as_micros(), u8::from(*ok));
    }
    let path = std::path::Path::new(&dir).join(format!("fault-{scenario}.csv"));
    if let Err(err) = std::fs::write(&path, csv) {
        eprintln!("writing {}: {err}", path.display());
    }
}

fn report(title: &str, timeout_ms: u64, run: &Run, samples: &[Sample]) {
    let phases = &run.phases;
    println!(
        "\nfault run ({title}): {CLIENTS} keep-alive clients on /search, cache call timeout {timeout_ms} ms"
    );
    println!("| phase | starts at | requests | failed | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut total_failed = 0;
    let mut by_phase: Vec<Vec<(u64, Duration)>> = phases.iter().map(|_| Vec::new()).collect();
    for (index, phase) in phases.iter().enumerate() {
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|(sent, latency, _)| phase_of(phases, *sent, *latency) == index)
            .collect();
        let failed = mine.iter().filter(|(_, _, ok)| !ok).count();
        total_failed += failed;
        let mut latencies: Vec<Duration> = mine.iter().map(|(_, latency, _)| *latency).collect();
        latencies.sort();
        by_phase[index] = mine
            .iter()
            .map(|(sent, latency, _)| (*sent, *latency))
            .collect();
        println!(
            "| {} | {:.1} s | {} | {failed} | {:.1} ms | {:.1} ms | {:.1} ms |",
            phase.name,
            phase.start_ms as f64 / 1e3,
            latencies.len(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
        );
    }
    for note in &run.notes {
        println!("{note}");
    }
    println!("failed requests in total: {total_failed}");
    // The slowest requests of each phase with the time they were sent: an
    // outlier at a phase's start and one in its middle have different causes.
    println!("slowest requests per phase (sent at: latency):");
    for (phase, mut slowest) in phases.iter().zip(by_phase) {
        slowest.sort_by_key(|(_, latency)| std::cmp::Reverse(*latency));
        let listed: Vec<String> = slowest
            .iter()
            .take(4)
            .map(|(sent, latency)| format!("{sent} ms: {:.1} ms", ms(*latency)))
            .collect();
        println!("  {}: {}", phase.name, listed.join(", "));
    }
}

#[cfg(test)]
mod attribution {
    use super::*;

    #[test]
    fn a_request_in_flight_when_a_fault_starts_belongs_to_the_fault() {
        let phases = [
            Phase {
                name: "steady",
                start_ms: 0,
                fault: false,
            },
            Phase {
                name: "killed",
                start_ms: 2000,
                fault: true,
            },
            Phase {
                name: "restarted",
                start_ms: 4000,
                fault: false,
            },
        ];
        let ms = Duration::from_millis;
        assert_eq!(phase_of(&phases, 1000, ms(5)), 0);
        assert_eq!(phase_of(&phases, 1999, ms(250)), 1, "in flight at the kill");
        assert_eq!(
            phase_of(&phases, 3990, ms(250)),
            1,
            "a recovery is not a fault"
        );
        assert_eq!(phase_of(&phases, 4001, ms(1)), 2);
    }
}
