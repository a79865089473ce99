//! Test harness: real `redis-server` processes on free loopback ports.
//!
//! Servers are readied by waiting for the server's own "Ready to accept
//! connections" line, not by sleeping, and are killed when dropped. Each child
//! also gets `PR_SET_PDEATHSIG`, so a test binary that dies (or a shared server
//! held in a `static`) never leaves a server behind.
//!
//! Tests share servers through [`shared_server`] and [`shared_cluster`] and keep
//! apart through their own key prefixes ([`unique_prefix`]); tests that kill or
//! restart a server start their own with [`RedisServer::start`]. A test
//! whose tool is missing fails unless its skip is allowed ([`skip`]).
//!
//! Network faults between a client and a server come from [`proxy`]
//! (noxious, Toxiproxy's Rust port, in process); [`history`] checks a rate
//! limiter's recorded decisions and [`coherence`] a local tier's reads.

pub mod coherence;
pub mod history;
pub mod http;
pub mod proxy;
pub mod skip;
pub mod stalls;
pub mod suite;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Awaits `future` for at most `limit`, and fails the test naming `what`
/// past it: a wait on a signal that never comes (because something
/// regressed) fails instead of hanging the suite.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("not within {limit:?}: {what}"),
    }
}

/// Checks `done` every few milliseconds until it holds, and fails the test
/// naming `what` after `limit`; returns how long it took. For states with
/// no signal to wait on (a server's reports, a background task's effect);
/// where there is a signal, wait on it with [`within`].
pub async fn eventually(
    limit: Duration,
    what: &str,
    mut done: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// A name no other test in this process (or another process) uses, for key prefixes.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free loopback port (the OS picks it; a race with another process is
/// handled by retrying the start).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local address").port()
}

/// One `redis-server` process on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    tls: bool,
}

/// A started `redis-server` that may not be ready yet, and the line that says it is.
struct Launch {
    child: Child,
    ready: mpsc::Receiver<Result<(), String>>,
}

impl RedisServer {
    /// Starts a standalone server on a free port and waits until it is ready.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server on a given port (one nothing listens on yet), for tests
    /// where the client is configured before the server exists.
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir: std::env::temp_dir().join(format!("redis-test-{}-{port}", std::process::id())),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: false,
        };
        server.restart();
        server
    }

    /// Starts a server with extra `redis-server` arguments (`["--requirepass", "x"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("redis-test-{}-{port}", std::process::id()));
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra: extra.clone(),
                tls: false,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let launch = self.launch()?;
        self.await_ready(launch)
    }

    /// Starts the process without waiting for it: several servers can then
    /// get ready at the same time (see [`await_ready`](Self::await_ready)).
    fn launch(&mut self) -> Result<Launch, String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("redis-server");
        if self.tls {
            // TLS only: the plain port is off, the TLS port is the server's port.
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.dir.join("ca.crt"));
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--logfile", ""])
            .args(["--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only this child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|err| {
            format!("cannot run redis-server ({err}); run ./scripts/test.sh, which installs it")
        })?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        // Keeps draining the log after the ready line, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = ready_tx.send(Ok(()));
                } else if log.len() < 8192 {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
            let _ = ready_tx.send(Err(log));
        });
        Ok(Launch {
            child,
            ready: ready_rx,
        })
    }

    /// Waits for a launched server's "Ready to accept connections" line.
    fn await_ready(&mut self, launch: Launch) -> Result<(), String> {
        let Launch { mut child, ready } = launch;
        match ready.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            Ok(Err(log)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("redis-server exited on port {}:\n{log}", self.port))
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "redis-server on port {} was not ready in time",
                    self.port
                ))
            }
        }
    }

    /// Starts a TLS-only server with a certificate for `127.0.0.1` and
    /// `localhost`, signed by a throwaway CA made with `openssl`; returns the
    /// server and the CA certificate (PEM) a client must trust.
    pub fn start_tls() -> (RedisServer, Vec<u8>) {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server directory");
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run openssl (installed by ./scripts/test.sh)");
            assert!(status.success(), "openssl {args:?} failed");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=redis-test-ca",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write the SAN extension");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let ca = std::fs::read(dir.join("ca.crt")).expect("read the CA certificate");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra: Vec::new(),
            tls: true,
        };
        server.restart();
        (server, ca)
    }

    /// `false` once [`kill`](Self::kill)ed (until [`restart`](Self::restart)).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let mut last_error = String::new();
        for _ in 0..20 {
            match self.spawn() {
                Ok(()) => return,
                Err(err) => last_error = err,
            }
        }
        panic!(
            "redis-server did not restart on port {}: {last_error}",
            self.port
        );
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(self.port, args)
    }

    /// Runs `redis-cli` against the server on `port` of 127.0.0.1.
    pub fn cli_on(port: u16, args: &[&str]) -> String {
        run_cli(port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A Redis Cluster of three primaries, each with one replica, slots spread by
/// `redis-cli --cluster create --cluster-replicas 1`.
///
/// Roles change when a primary fails over, so they are read from the cluster
/// itself (`CLUSTER NODES`), never remembered from start-up.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// (announced port, the node's own port) of nodes that announce another
    /// port than their own (a proxy's: [`proxy::ProxiedCluster`]): what the
    /// cluster reports is read back in the nodes' own ports.
    announced: Vec<(u16, u16)>,
}

/// One node as a live member of the cluster sees it (a line of `CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's id.
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// A primary (`master` flag), as opposed to a replica.
    pub primary: bool,
    /// Flagged `fail` (agreed down) or `fail?` (suspected down).
    pub failing: bool,
    /// Flagged `fail`: a majority of primaries agreed it is down.
    pub failed: bool,
    /// For a replica, the id of its primary.
    pub primary_id: Option<String>,
    /// Serves at least one slot.
    pub has_slots: bool,
}

/// The cluster's node timeout for the shared cluster: long enough that a
/// loaded machine never makes it fail over by mistake.
const SHARED_NODE_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisCluster {
    /// Three primaries and three replicas with a 5 s node timeout (what
    /// [`shared_cluster`] runs); waits until the cluster is ok and every
    /// replica is in sync.
    pub fn start() -> RedisCluster {
        Self::start_with_node_timeout(SHARED_NODE_TIMEOUT)
    }

    /// As [`start`](Self::start), with `cluster-node-timeout` set: a primary
    /// that stops answering is failed over about this long plus a second
    /// (the replica's election delay) after it died.
    pub fn start_with_node_timeout(node_timeout: Duration) -> RedisCluster {
        // `redis-cli --cluster create` fails now and then on a loaded machine
        // (a node slow to answer while the others wait): new nodes, new try.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(node_timeout) {
                Ok(cluster) => {
                    cluster.wait_until(READY_TIMEOUT, RedisCluster::is_settled);
                    return cluster;
                }
                Err(failure) => failures.push(failure),
            }
        }
        panic!("cluster create failed three times: {failures:#?}");
    }

    fn try_start(node_timeout: Duration) -> Result<RedisCluster, String> {
        /// How long `redis-cli --cluster create` may take (a few seconds
        /// on a loaded machine).
        const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(60);
        let timeout_ms = node_timeout.as_millis().to_string();
        let args = |bus: &str| -> Vec<String> {
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout_ms,
                "--cluster-port",
                bus,
                // A replica syncs at once instead of waiting 5 s for others to join the transfer.
                "--repl-diskless-sync-delay",
                "0",
                // A replica may always take over, however long its link was down.
                "--cluster-replica-validity-factor",
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        // All six processes start at once and get ready together.
        let mut launched = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let extra = args(&free_port().to_string());
            let mut server = RedisServer {
                child: None,
                port,
                dir: std::env::temp_dir().join(format!("redis-test-{}-{port}", std::process::id())),
                extra,
                tls: false,
            };
            let launch = server.launch();
            launched.push((server, launch));
        }
        let nodes: Vec<RedisServer> = launched
            .into_iter()
            .map(|(mut server, launch)| {
                match launch.and_then(|launch| server.await_ready(launch)) {
                    Ok(()) => server,
                    // A port taken meanwhile by another process: this one alone, on new ports.
                    Err(_) => {
                        let extra = args(&free_port().to_string());
                        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                        RedisServer::start_with(&extra)
                    }
                }
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        // Bounded: a node that never answers must fail this try, not hang
        // the suite (coreutils' `timeout` ends it with status 124).
        let output = Command::new("timeout")
            .arg(CLUSTER_CREATE_TIMEOUT.as_secs().to_string())
            .arg("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("run redis-cli --cluster create: {err}"))?;
        if output.status.code() == Some(124) {
            return Err(format!(
                "redis-cli --cluster create took over {CLUSTER_CREATE_TIMEOUT:?}"
            ));
        }
        if !output.status.success() {
            // The nodes are stopped when they are dropped here.
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(RedisCluster {
            nodes,
            announced: Vec::new(),
        })
    }

    /// `CLUSTER NODES` as the node on `port` reports it, in the nodes' own ports.
    fn nodes_seen_by(&self, node: &RedisServer) -> Vec<ClusterNode> {
        let mut view = parse_cluster_nodes(&node.cli(&["CLUSTER", "NODES"]));
        for n in &mut view {
            n.port = self.own_port(n.port);
        }
        view
    }

    /// The node's own port behind an announced one.
    fn own_port(&self, announced: u16) -> u16 {
        self.announced
            .iter()
            .find(|(a, _)| *a == announced)
            .map_or(announced, |(_, own)| *own)
    }

    /// Records that the node on `own` announces `announced` (a proxy's port).
    pub(crate) fn set_announced(&mut self, announced: u16, own: u16) {
        self.announced.retain(|(_, o)| *o != own);
        self.announced.push((announced, own));
    }

    /// Every running node reports `cluster_state:ok`, sees every other running
    /// node as healthy and in the same role (primary, or replica of the same
    /// primary) as all the others do, and every replica's link to its primary is up.
    pub fn is_settled(&self) -> bool {
        let running: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.is_running()).collect();
        let mut views = Vec::new();
        for node in &running {
            if !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                return false;
            }
            let replication = node.cli(&["INFO", "replication"]);
            if replication.contains("role:slave") && !replication.contains("master_link_status:up")
            {
                return false;
            }
            views.push(self.nodes_seen_by(node));
        }
        // Gossip spreads a role change node by node: wait until every view agrees.
        running.iter().all(|node| {
            let seen: Vec<Option<(bool, Option<String>)>> = views
                .iter()
                .map(|view| {
                    view.iter()
                        .find(|n| n.port == node.port() && !n.failing)
                        .map(|n| (n.primary, n.primary_id.clone()))
                })
                .collect();
            seen.iter().all(|role| role.is_some() && *role == seen[0])
        })
    }

    /// Polls `ready` (the cluster's own reports: there is no event to wait on)
    /// until it holds; panics after `limit`. Returns how long it took.
    pub fn wait_until(&self, limit: Duration, ready: impl Fn(&RedisCluster) -> bool) -> Duration {
        let started = Instant::now();
        while !ready(self) {
            assert!(
                started.elapsed() < limit,
                "the cluster did not settle within {limit:?}: {:?}",
                self.view()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    /// The cluster as the first running node sees it.
    pub fn view(&self) -> Vec<ClusterNode> {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(|node| self.nodes_seen_by(node))
            .unwrap_or_default()
    }

    /// Ports of the primaries that serve slots and are not failing.
    pub fn primaries(&self) -> Vec<u16> {
        self.view()
            .into_iter()
            .filter(|n| n.primary && n.has_slots && !n.failing)
            .map(|n| n.port)
            .collect()
    }

    /// The port of a replica of the primary on `primary_port`.
    pub fn replica_of(&self, primary_port: u16) -> Option<u16> {
        let view = self.view();
        let primary = view.iter().find(|n| n.port == primary_port)?;
        view.iter()
            .find(|n| n.primary_id.as_deref() == Some(primary.id.as_str()))
            .map(|n| n.port)
    }

    /// The primary that serves the slot of `key`.
    pub fn primary_for_key(&self, key: &str) -> u16 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        let slot: u16 = node
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT");
        let text = node.cli(&["CLUSTER", "NODES"]);
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            for range in &fields[8..] {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(low), Ok(high)) = (low.parse::<u16>(), high.parse::<u16>())
                    && (low..=high).contains(&slot)
                {
                    return self.own_port(address_port(fields[1]).expect("node address"));
                }
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// The nodes' URLs, for `REDIS_CLUSTER_URLS` or `CacheBuilder::cluster_urls`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `CONFIG SET parameter value` on every running node.
    pub fn config_set(&self, parameter: &str, value: &str) {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let reply = node.cli(&["CONFIG", "SET", parameter, value]);
            assert_eq!(
                reply.trim(),
                "OK",
                "CONFIG SET {parameter} on {}",
                node.port()
            );
        }
    }

    /// The nodes, to inspect or run `redis-cli` against.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node on `port`, to kill or restart it.
    pub fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("a node of this cluster")
    }

    /// Runs `redis-cli -c` (follows MOVED) against the first running node.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut with_c = vec!["-c"];
        with_c.extend_from_slice(args);
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        run_cli(node.port(), &with_c)
    }
}

fn address_port(address: &str) -> Option<u16> {
    // ip:port@cport[,hostname]
    let host_port = address.split('@').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

/// Parses `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            Some(ClusterNode {
                id: fields[0].to_string(),
                port: address_port(fields[1])?,
                primary: flags.contains(&"master"),
                failing: flags.iter().any(|f| f.starts_with("fail")),
                failed: flags.contains(&"fail"),
                primary_id: (fields[3] != "-").then(|| fields[3].to_string()),
                has_slots: fields.len() > 8,
            })
        })
        .collect()
}

/// Starts `make` on a thread that lives as long as the process: the child's
/// death signal fires when the thread that spawned it exits, so shared servers
/// must not be spawned from a test's own thread.
fn start_shared<T: Send + Sync + 'static>(make: fn() -> T) -> &'static T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let value: &'static T = Box::leak(Box::new(make()));
        let _ = tx.send(value);
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("shared server thread")
}

/// One standalone server shared by all tests of this binary (use your own prefix).
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<&'static RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| start_shared(RedisServer::start))
}

/// One cluster (three primaries, three replicas) shared by all tests of this
/// binary (use your own prefix; never kill its nodes).
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<&'static RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| start_shared(RedisCluster::start))
}
