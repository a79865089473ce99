//! Test harness: real `redis-server` processes on free loopback ports.
//!
//! Servers are readied by waiting for the server's own "Ready to accept
//! connections" line, not by sleeping, and are killed when dropped. Each child
//! also gets `PR_SET_PDEATHSIG`, so a test binary that dies (or a shared server
//! held in a `static`) never leaves a server behind.
//!
//! Tests share servers through [`shared_server`] and [`shared_cluster`] and keep
//! apart through their own key prefixes ([`unique_prefix`]); tests that kill or
//! restart a server start their own with [`RedisServer::start`].

pub mod http;

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
        match ready_rx.recv_timeout(READY_TIMEOUT) {
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

/// A Redis Cluster of three primaries (no replicas), slots spread by `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them and waits for `cluster_state:ok` on each.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    &bus,
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for node in &self.nodes {
            // Polls the state the cluster reports; there is no event to wait on.
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not reach state ok");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The nodes' URLs, for `REDIS_CLUSTER_URLS` or `CacheBuilder::cluster_urls`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, to inspect or run `redis-cli` against.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Runs `redis-cli -c` (follows MOVED) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut with_c = vec!["-c"];
        with_c.extend_from_slice(args);
        run_cli(self.nodes[0].port(), &with_c)
    }
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

/// One three-node cluster shared by all tests of this binary (use your own prefix).
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<&'static RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| start_shared(RedisCluster::start))
}
