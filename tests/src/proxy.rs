//! Network faults between a client and `redis-server`: a [`FaultProxy`] is a
//! TCP proxy of [noxious](https://docs.rs/noxious) (the Rust port of
//! Shopify's Toxiproxy) run in this process, on a loopback port below the
//! ephemeral range ([`proxy_port`]), whose [`Fault`]s are Toxiproxy's
//! toxics: latency with jitter, a bandwidth limit, a blackhole, a
//! partition, a close after N bytes of replies, a slow close; or refused
//! connections. The proxy reaches the server on a loopback address of its
//! own (the server is made to listen there too), so that the server can
//! close every connection of the proxy (`CLIENT KILL LADDR`) when noxious
//! lost track of one.
//!
//! A fault begins by closing the connections open through the proxy, and
//! every connection opened until [`FaultProxy::heal`] meets it from its
//! first byte. noxious 1.0.4 can change the toxics of open connections, but
//! a connection whose server keeps sending (a subscription, the local
//! tier's tracking connection) went on receiving through a blackhole added
//! that way (about 4 KB/s of messages in the test that found it), and a
//! change drops the bytes inside the toxics it replaces (Toxiproxy flushes
//! them); so toxics are only ever set on a fresh proxy. Healing closes the
//! connections too: a blackhole drops bytes by definition, and a connection
//! that lost a reply must not hand the next one to the wrong request (TCP
//! never loses one while it keeps the connection). The client sees what a
//! network that fails and recovers with a reset shows it; a silent fault
//! of a connection that stays open from before is not reproduced.
//!
//! [`ProxiedCluster`] puts one proxy in front of each node of a
//! [`RedisCluster`] and makes each node announce its
//! proxy's port (`cluster-announce-port`), so that a cluster client's slot
//! map points at the proxies.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use noxious::proxy::{ProxyConfig, ProxyRunner, Runner, Toxics};
use noxious::signal::{Close, Stop, Stopper};
use noxious::socket::TcpListener;
use noxious::toxic::{StreamDirection, Toxic, ToxicEvent, ToxicEventResult, ToxicKind};

use crate::{RedisCluster, parse_cluster_nodes};

/// What goes wrong on the wire, in Toxiproxy's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every chunk of replies waits `latency` ± `jitter` (noxious delays
    /// chunk after chunk, so under load a reply can wait up to about twice
    /// the latency). Toxic `latency`, downstream. Keep `jitter` at most
    /// `latency`: noxious 1.0.4 subtracts it unchecked (a panic of the
    /// connection's task).
    Latency {
        /// Added delay.
        latency: Duration,
        /// Uniform ± around it.
        jitter: Duration,
    },
    /// Replies trickle at this many KiB/s. Toxic `bandwidth`, downstream.
    /// Use 1: noxious 1.0.4 sends 100 bytes per 100 ms step whatever the
    /// rate, and at 2 KiB/s or more a reply chunk over 100 × rate bytes
    /// runs its sleep below zero (a panic of the connection's task, which
    /// then ends like a reset).
    Bandwidth {
        /// KiB per second.
        kib_per_s: u64,
    },
    /// The connection stays open and nothing comes back: replies are
    /// dropped (requests still reach Redis and run). Toxic `timeout` 0,
    /// downstream.
    Blackhole,
    /// Requests are dropped: they never reach Redis, so nothing comes back;
    /// connections open (the proxy still accepts), as when a host is cut
    /// off by a firewall that drops packets. Toxic `timeout` 0, upstream.
    Partition,
    /// Each connection is closed after this many bytes of replies (from the
    /// fault's start, or the connection's), in the middle of a reply when
    /// one is that long. Toxic `limit_data`, downstream.
    ResetAfter {
        /// Reply bytes let through per connection.
        bytes: u64,
    },
    /// A connection that Redis (or the client) closes stays open this much
    /// longer. Toxic `slow_close`, downstream.
    SlowClose {
        /// Delay of the close.
        delay: Duration,
    },
    /// The proxy stops listening and closes every connection: new ones
    /// are refused, as with a server that is down.
    Refuse,
}

impl Fault {
    fn toxic(self) -> Option<Toxic> {
        let ms = |d: Duration| d.as_millis() as u64;
        let (kind, direction) = match self {
            Fault::Latency { latency, jitter } => (
                ToxicKind::Latency {
                    latency: ms(latency),
                    jitter: ms(jitter),
                },
                StreamDirection::Downstream,
            ),
            Fault::Bandwidth { kib_per_s } => (
                ToxicKind::Bandwidth { rate: kib_per_s },
                StreamDirection::Downstream,
            ),
            Fault::Blackhole => (
                ToxicKind::Timeout { timeout: 0 },
                StreamDirection::Downstream,
            ),
            Fault::Partition => (ToxicKind::Timeout { timeout: 0 }, StreamDirection::Upstream),
            Fault::ResetAfter { bytes } => {
                (ToxicKind::LimitData { bytes }, StreamDirection::Downstream)
            }
            Fault::SlowClose { delay } => (
                ToxicKind::SlowClose { delay: ms(delay) },
                StreamDirection::Downstream,
            ),
            Fault::Refuse => return None,
        };
        Some(toxic(kind, direction))
    }
}

fn toxic(kind: ToxicKind, direction: StreamDirection) -> Toxic {
    Toxic {
        name: format!("{}_{direction}", kind.get_name()),
        kind,
        toxicity: 1.0,
        direction,
    }
}

/// One running noxious proxy and how to stop it.
struct Running {
    /// noxious takes toxic changes here; they are not used (see the module
    /// docs), but the proxy stops when this side is dropped.
    events: bmrng::RequestSender<ToxicEvent, ToxicEventResult>,
    stopper: Stopper,
    closed: Close,
}

/// A noxious TCP proxy on `127.0.0.1:{port}` in front of `127.0.0.1:{upstream}`.
///
/// Its tasks run on the Tokio runtime that started it: create it inside the
/// test's runtime.
pub struct FaultProxy {
    port: u16,
    upstream: u16,
    /// The loopback address the proxy reaches the server on, its own among
    /// the proxies of this process: the server sees the proxy's connections
    /// arrive there (`laddr` in `CLIENT LIST`).
    upstream_ip: String,
    running: tokio::sync::Mutex<Option<Running>>,
    fault: Mutex<Option<(Fault, Instant)>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("upstream", &self.upstream)
            .field("fault", &self.fault())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.stopper.stop();
        }
    }
}

impl FaultProxy {
    /// Starts a proxy to the `redis-server` on `127.0.0.1:{upstream}`, on a
    /// port of [`proxy_port`]. The server is made to listen on one more
    /// loopback address too (`CONFIG SET bind`), the proxy's own, so that
    /// the server can close the proxy's connections by that address when
    /// noxious lost track of one (`CLIENT KILL LADDR`).
    pub async fn start(upstream: u16) -> FaultProxy {
        let mut last_error = None;
        for _ in 0..64 {
            match Self::start_on(proxy_port(), upstream).await {
                Ok(proxy) => return proxy,
                Err(err) => last_error = Some(err),
            }
        }
        panic!("no fault proxy could listen: {last_error:?}");
    }

    /// Starts a proxy listening on `port`.
    pub async fn start_on(port: u16, upstream: u16) -> io::Result<FaultProxy> {
        let upstream_ip = proxy_ip();
        bind_address(upstream, &upstream_ip)?;
        let running = listen(port, &upstream_ip, upstream, Vec::new()).await?;
        Ok(FaultProxy {
            port,
            upstream,
            upstream_ip,
            running: tokio::sync::Mutex::new(Some(running)),
            fault: Mutex::new(None),
        })
    }

    /// Makes the server listen on the proxy's address again: after a
    /// restart (the server starts with its own `--bind` only).
    pub fn bind_upstream(&self) -> io::Result<()> {
        bind_address(self.upstream, &self.upstream_ip)
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the server behind it.
    pub fn upstream(&self) -> u16 {
        self.upstream
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The fault in force and since when.
    pub fn fault(&self) -> Option<(Fault, Instant)> {
        *self.fault.lock().expect("not poisoned")
    }

    /// Applies `fault`: the proxy closes every connection through it and
    /// listens again with the fault's toxic on every new one (see the
    /// module docs for why a fault does not reach the open connections).
    /// [`Fault::Refuse`] leaves it stopped. A fault in force is replaced.
    pub async fn apply(&self, fault: Fault) {
        let mut running = self.running.lock().await;
        if let Some(proxy) = running.take() {
            self.stop(proxy).await;
        }
        if let Some(toxic) = fault.toxic() {
            *running = Some(self.listen_again(vec![toxic]).await);
        }
        *self.fault.lock().expect("not poisoned") = Some((fault, Instant::now()));
    }

    /// Ends the fault in force: the proxy closes every connection through it
    /// (see the module docs) and listens again without toxics. Nothing
    /// happens when no fault is in force.
    pub async fn heal(&self) {
        if self.fault.lock().expect("not poisoned").take().is_none() {
            return;
        }
        let mut running = self.running.lock().await;
        if let Some(proxy) = running.take() {
            self.stop(proxy).await;
        }
        *running = Some(self.listen_again(Vec::new()).await);
    }

    /// Stops a proxy: its listener and every connection (each connection's
    /// stop is a fork of the proxy's), and waits until the listener is gone.
    /// noxious 1.0.4 misses the stop of a connection it accepted just
    /// before it and connects upstream during it (the connection's stop is
    /// forked after the signal went out), and such a connection lives on
    /// untouched by every later fault: so the server then closes every
    /// connection made to the proxy's address (`CLIENT KILL LADDR`), with
    /// `redis-cli` on a blocking thread: run on the runtime's, it held up
    /// the tasks queued behind it (on a loaded machine, a second for the six
    /// proxies of a cluster), which the tests' bounds then blamed on the
    /// component whose call waited.
    async fn stop(&self, proxy: Running) {
        let Running {
            events,
            stopper,
            closed,
        } = proxy;
        stopper.stop();
        let _ = tokio::time::timeout(Duration::from_secs(5), closed.recv()).await;
        drop(events);
        let laddr = format!("{}:{}", self.upstream_ip, self.upstream);
        let upstream = self.upstream;
        tokio::task::spawn_blocking(move || {
            crate::RedisServer::cli_on(upstream, &["CLIENT", "KILL", "LADDR", &laddr]);
        })
        .await
        .expect("redis-cli CLIENT KILL");
    }

    /// Listens on the proxy's port again, which this process just released
    /// (retried for a moment).
    async fn listen_again(&self, toxics: Vec<Toxic>) -> Running {
        let started = Instant::now();
        loop {
            match listen(self.port, &self.upstream_ip, self.upstream, toxics.clone()).await {
                Ok(proxy) => return proxy,
                Err(err) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "the fault proxy cannot listen on {} again: {err}",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
}

/// A port for a proxy, below the kernel's ephemeral range: healing closes
/// a proxy's listener and binds its port again, and an ephemeral port
/// released for that moment could be handed to another test's
/// [`free_port`](crate::free_port) (whose redis-server would then answer
/// this test's clients). Each process takes its ports in turn from a slice
/// of 64 of its own (by process id); a port in use fails to bind and the
/// caller tries the next.
pub fn proxy_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let slices = (ephemeral_low.saturating_sub(10_000) / 64).max(1);
    let slice = (std::process::id() % u32::from(slices)) as u16;
    10_000 + slice * 64 + NEXT.fetch_add(1, Ordering::Relaxed) % 64
}

fn proxy_name(port: u16) -> String {
    format!("redis-{port}")
}

/// Adds `ip` to the addresses the `redis-server` on `port` listens on.
fn bind_address(port: u16, ip: &str) -> io::Result<()> {
    let bind = crate::RedisServer::cli_on(port, &["CONFIG", "GET", "bind"]);
    let bind = bind
        .lines()
        .nth(1)
        .unwrap_or("127.0.0.1")
        .trim()
        .to_string();
    if bind.split_whitespace().any(|address| address == ip) {
        return Ok(());
    }
    let reply =
        crate::RedisServer::cli_on(port, &["CONFIG", "SET", "bind", &format!("{bind} {ip}")]);
    if reply.trim() == "OK" {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the server on {port} cannot listen on {ip}: {reply}"
        )))
    }
}

/// A loopback address of its own for each proxy of this process
/// (127.0.0.2 to 127.0.0.254, in turn).
fn proxy_ip() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    format!("127.0.0.{}", 2 + NEXT.fetch_add(1, Ordering::Relaxed) % 253)
}

async fn listen(
    port: u16,
    upstream_ip: &str,
    upstream: u16,
    toxics: Vec<Toxic>,
) -> io::Result<Running> {
    let config = ProxyConfig {
        name: proxy_name(port),
        listen: format!("127.0.0.1:{port}"),
        upstream: format!("{upstream_ip}:{upstream}"),
        enabled: true,
        rand_seed: None,
    };
    let mut initial = Toxics::empty();
    for toxic in toxics {
        match toxic.direction {
            StreamDirection::Upstream => initial.upstream.push(toxic),
            StreamDirection::Downstream => initial.downstream.push(toxic),
        }
    }
    let (listener, info) = ProxyRunner::initialize_proxy::<TcpListener>(config, initial).await?;
    let (events, receiver) = bmrng::channel(4);
    let (stop, stopper) = Stop::new();
    let (closed, closer) = Close::new();
    tokio::spawn(ProxyRunner::run_proxy(
        listener, info, receiver, stop, closer,
    ));
    Ok(Running {
        events,
        stopper,
        closed,
    })
}

/// A [`RedisCluster`] whose clients go through one [`FaultProxy`] per node:
/// each node announces its proxy's port, so `CLUSTER SLOTS`, `CLUSTER NODES`
/// and redirections name the proxies. The nodes talk to each other directly
/// (the cluster bus is not proxied), and the harness reaches them directly
/// (`redis-cli`), so a fault cuts only the clients off.
pub struct ProxiedCluster {
    /// The cluster behind the proxies.
    pub cluster: RedisCluster,
    proxies: Vec<FaultProxy>,
}

impl std::fmt::Debug for ProxiedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxiedCluster")
            .field("proxies", &self.proxies)
            .finish()
    }
}

impl ProxiedCluster {
    /// Puts proxies in front of `cluster`'s nodes and waits until every node
    /// reports every node at its proxy's port.
    pub async fn start(mut cluster: RedisCluster) -> ProxiedCluster {
        let mut proxies = Vec::new();
        for node in cluster.nodes() {
            let proxy = FaultProxy::start(node.port()).await;
            let port = proxy.port().to_string();
            let reply = node.cli(&["CONFIG", "SET", "cluster-announce-port", &port]);
            assert_eq!(
                reply.trim(),
                "OK",
                "cluster-announce-port on {}",
                node.port()
            );
            proxies.push(proxy);
        }
        for proxy in &proxies {
            cluster.set_announced(proxy.port(), proxy.upstream());
        }
        let announced: Vec<u16> = proxies.iter().map(FaultProxy::port).collect();
        let started = Instant::now();
        // Gossip carries each node's announced port to the others.
        loop {
            let settled = cluster.nodes().iter().all(|node| {
                let view = parse_cluster_nodes(&node.cli(&["CLUSTER", "NODES"]));
                view.len() == announced.len() && view.iter().all(|n| announced.contains(&n.port))
            });
            if settled {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the nodes did not announce their proxies' ports"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ProxiedCluster { cluster, proxies }
    }

    /// The proxies' URLs: the seed nodes a client is given.
    pub fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(FaultProxy::url).collect()
    }

    /// Every proxy, in the order of the cluster's nodes.
    pub fn proxies(&self) -> &[FaultProxy] {
        &self.proxies
    }

    /// The proxy in front of the node on `node_port`.
    pub fn proxy_of(&self, node_port: u16) -> &FaultProxy {
        self.proxies
            .iter()
            .find(|p| p.upstream() == node_port)
            .expect("a node of this cluster")
    }

    /// After the node on `node_port` was restarted: it announces its proxy's
    /// port again and listens on the proxy's address (both are run-time
    /// settings a restart forgets).
    pub fn reannounce(&self, node_port: u16) {
        let proxy = self.proxy_of(node_port);
        let port = proxy.port().to_string();
        let reply = crate::RedisServer::cli_on(
            node_port,
            &["CONFIG", "SET", "cluster-announce-port", &port],
        );
        assert_eq!(reply.trim(), "OK", "cluster-announce-port on {node_port}");
        proxy
            .bind_upstream()
            .expect("the restarted node listens for its proxy");
    }

    /// Applies `fault` on every proxy.
    pub async fn apply_all(&self, fault: Fault) {
        for proxy in &self.proxies {
            proxy.apply(fault).await;
        }
    }

    /// Heals every proxy.
    pub async fn heal_all(&self) {
        for proxy in &self.proxies {
            proxy.heal().await;
        }
    }
}
