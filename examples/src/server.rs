//! Serving an axum `Router` the way a service on the open internet needs:
//! HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one port, a deadline for the
//! request head, idle connections closed, a cap on open connections below the
//! process's file-descriptor limit, and a shutdown that ends within a bounded
//! grace period.
//!
//! `axum::serve` exposes none of these timeouts, so the accept loop is ours and
//! each connection is served by hyper-util's protocol-detecting builder.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let settings = examples::server::ServerSettings::from_env()?; // HOST, PORT, timeouts
//! examples::server::serve(app, &settings).await?; // until SIGTERM or Ctrl-C
//! # Ok(())
//! # }
//! ```
//!
//! What a connection may cost:
//! - no complete request head within [`ServerSettings::header_read_timeout`]
//!   of being accepted (or, on HTTP/1, of its previous response): closed, so a
//!   half-sent request or a silent client holds its socket that long at most;
//! - a request body not received whole within
//!   [`ServerSettings::body_read_timeout`] of its head: the handler reading it
//!   gets an error (a 400), and the connection is not reused;
//! - no request in flight for [`ServerSettings::idle_timeout`] (HTTP/2 keeps
//!   connections open between requests): shut down gracefully. A request is
//!   in flight until its response body has ended or been dropped, not only
//!   until its head is sent, so a long stream (Server-Sent Events) keeps its
//!   connection busy for as long as it lasts;
//! - once asked to shut down (idle, or the server stopping), a connection has
//!   [`ServerSettings::shutdown_grace`] to finish the requests in flight, then it
//!   is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::env_number;

/// The server's part of every example service's `--help`.
pub const USAGE: &str = "\
Server (HTTP/1.1 and HTTP/2 cleartext on one port):
  HOST                     address to bind: an IP address or a host name [default: 0.0.0.0]
  PORT                     port to listen on [default: 3000]
  HEADER_READ_TIMEOUT_MS   time a client has to send a complete request head, from its
                           connection (or, on HTTP/1, from its previous response) [default: 10000]
  BODY_READ_TIMEOUT_MS     time a request body has to arrive whole, from its head [default: 30000]
  IDLE_TIMEOUT_MS          a connection with no request in flight this long is closed [default: 60000]
  MAX_CONNECTIONS          open connections at most; more wait in the listen backlog
                           (kept 64 below the file-descriptor limit) [default: 10000]
  SHUTDOWN_GRACE_MS        after SIGTERM or Ctrl-C, time the requests in flight have to finish;
                           connections still open then are dropped [default: 10000]
  RUST_LOG                 log filter [default: info]
  LOG_FORMAT               text (coloured only on a terminal) or json (one object per line,
                           for log collectors) [default: text]
";

/// File descriptors kept for everything but client connections: Redis
/// connections (several per cluster node), the listener, the runtime's own.
const RESERVED_FILE_DESCRIPTORS: u64 = 64;

/// How often an HTTP/2 connection is pinged, and how long the answer may take:
/// a peer that vanished with requests in flight is noticed without TCP's
/// retransmission timeout (minutes).
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Where to listen and what a connection may cost; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Address to bind: an IP address or a host name (`HOST`, default `0.0.0.0`).
    pub host: String,
    /// Port to listen on (`PORT`, default 3000; 0 picks a free one).
    pub port: u16,
    /// Deadline for a complete request head (`HEADER_READ_TIMEOUT_MS`, default 10 s).
    pub header_read_timeout: Duration,
    /// Deadline for a whole request body, from its head (`BODY_READ_TIMEOUT_MS`,
    /// default 30 s).
    pub body_read_timeout: Duration,
    /// A connection with no request in flight this long is shut down
    /// (`IDLE_TIMEOUT_MS`, default 60 s).
    pub idle_timeout: Duration,
    /// Open connections at most (`MAX_CONNECTIONS`, default 10 000); [`serve`]
    /// keeps it 64 below the process's file-descriptor limit.
    pub max_connections: usize,
    /// Time the requests in flight get once shutdown starts (`SHUTDOWN_GRACE_MS`,
    /// default 10 s).
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: "0.0.0.0".to_string(),
            port: 3000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServerSettings {
    /// The settings from the environment variables listed in [`USAGE`], with
    /// the defaults of [`ServerSettings::default`]; a value that does not parse
    /// or is out of range is an error naming the variable.
    pub fn from_env() -> Result<ServerSettings, String> {
        let defaults = ServerSettings::default();
        let host = match std::env::var("HOST") {
            Ok(host) if host.trim().is_empty() => return Err("HOST must not be empty".into()),
            Ok(host) => host.trim().to_string(),
            Err(_) => defaults.host,
        };
        let millis = |name: &str, default: Duration| -> Result<Duration, String> {
            let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
            env_number(name, default).map(Duration::from_millis)
        };
        let settings = ServerSettings {
            host,
            port: env_number("PORT", defaults.port)?,
            header_read_timeout: millis("HEADER_READ_TIMEOUT_MS", defaults.header_read_timeout)?,
            body_read_timeout: millis("BODY_READ_TIMEOUT_MS", defaults.body_read_timeout)?,
            idle_timeout: millis("IDLE_TIMEOUT_MS", defaults.idle_timeout)?,
            max_connections: env_number("MAX_CONNECTIONS", defaults.max_connections)?,
            shutdown_grace: millis("SHUTDOWN_GRACE_MS", defaults.shutdown_grace)?,
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        // A day bounds every duration: far beyond any sensible value, and
        // `Instant + Duration` cannot overflow.
        const DAY: Duration = Duration::from_secs(86_400);
        for (name, value) in [
            ("HEADER_READ_TIMEOUT_MS", self.header_read_timeout),
            ("BODY_READ_TIMEOUT_MS", self.body_read_timeout),
            ("IDLE_TIMEOUT_MS", self.idle_timeout),
        ] {
            if value.is_zero() || value > DAY {
                return Err(format!(
                    "{name} must be 1 to 86400000, got {}",
                    value.as_millis()
                ));
            }
        }
        if self.shutdown_grace > DAY {
            return Err(format!(
                "SHUTDOWN_GRACE_MS must be 0 to 86400000, got {}",
                self.shutdown_grace.as_millis()
            ));
        }
        if self.max_connections == 0 {
            return Err("MAX_CONNECTIONS must be at least 1".into());
        }
        Ok(())
    }
}

/// Binds `settings.host:settings.port` and serves `app` until SIGTERM or
/// Ctrl-C, then shuts down within `settings.shutdown_grace`.
pub async fn serve(app: Router, settings: &ServerSettings) -> std::io::Result<()> {
    let listener = TcpListener::bind((settings.host.as_str(), settings.port)).await?;
    serve_until(listener, app, settings, shutdown_signal()).await
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting,
/// asks every connection to finish (HTTP/1: after its response in flight;
/// HTTP/2: GOAWAY) and returns once all are closed, or after
/// `settings.shutdown_grace`, dropping those still open.
pub async fn serve_until(
    listener: TcpListener,
    app: Router,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Settings built by hand (the fields are public) get the checks of
    // from_env too: an absurd duration would overflow the deadlines.
    settings
        .validate()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let max_connections = connection_cap(settings.max_connections);
    let limits = Limits {
        header_read_timeout: settings.header_read_timeout,
        body_read_timeout: settings.body_read_timeout,
        idle_timeout: settings.idle_timeout,
        shutdown_grace: settings.shutdown_grace,
    };
    tracing::info!(
        address = %listener.local_addr()?,
        header_read_timeout_ms = limits.header_read_timeout.as_millis(),
        body_read_timeout_ms = limits.body_read_timeout.as_millis(),
        idle_timeout_ms = limits.idle_timeout.as_millis(),
        shutdown_grace_ms = limits.shutdown_grace.as_millis(),
        max_connections,
        "listening (HTTP/1.1 and HTTP/2)"
    );

    let builder = Arc::new(connection_builder(&limits));
    let slots = Arc::new(Semaphore::new(max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(finished) = connections.join_next() => {
                if let Err(err) = finished
                    && err.is_panic()
                {
                    tracing::error!(error = %err, "a connection task panicked");
                }
            }
            accepted = accept(&listener, &slots) => {
                let Some((stream, peer, slot)) = accepted else { continue };
                connections.spawn(serve_connection(
                    Arc::clone(&builder),
                    stream,
                    peer,
                    app.clone(),
                    limits,
                    stopping.clone(),
                    slot,
                ));
            }
        }
    }

    // New connections are refused from here on.
    drop(listener);
    let open = connections.len();
    tracing::info!(
        connections = open,
        grace_ms = limits.shutdown_grace.as_millis(),
        "shutting down"
    );
    let _ = stop.send(true);
    // Each connection drops itself at the end of the grace period; the margin
    // only guards against a task that does not return to its loop in time.
    let all_closed = async { while connections.join_next().await.is_some() {} };
    let margin = Duration::from_millis(100);
    if tokio::time::timeout(limits.shutdown_grace + margin, all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "dropping connections still open"
        );
        connections.abort_all();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits for a free connection slot, then for a connection. `None` after an
/// accept error: errors of one connection (reset before it was accepted) are
/// skipped at once, others (out of file descriptors) after a pause, so the
/// loop never spins.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => {
            // Responses are written whole; Nagle would only delay HTTP/2's small frames.
            let _ = stream.set_nodelay(true);
            Some((stream, peer, slot))
        }
        Err(err) => {
            use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
            if !matches!(
                err.kind(),
                ConnectionAborted | ConnectionRefused | ConnectionReset
            ) {
                tracing::warn!(error = %err, "accept failed; pausing 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    }
}

/// The configured cap, kept below the process's file-descriptor limit so that
/// client connections can never starve the service of descriptors it needs
/// itself (Redis reconnections).
fn connection_cap(configured: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which is valid.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !known || limit.rlim_cur == libc::RLIM_INFINITY {
        return configured;
    }
    let available = limit
        .rlim_cur
        .saturating_sub(RESERVED_FILE_DESCRIPTORS)
        .max(1);
    let available = usize::try_from(available).unwrap_or(usize::MAX);
    if available < configured {
        tracing::warn!(
            configured,
            file_descriptor_limit = limit.rlim_cur,
            max_connections = available,
            "MAX_CONNECTIONS lowered below the file-descriptor limit (ulimit -n)"
        );
    }
    configured.min(available)
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    idle_timeout: Duration,
    shutdown_grace: Duration,
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper starts this timer whenever it waits for a request head, so it also
    // closes HTTP/1 keep-alive connections left idle that long.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE);
    builder
}

/// Requests in flight on one connection, and when the last one ended: what
/// tells an idle connection from a busy one.
#[derive(Debug)]
struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `accepted` to the end of the last request; `u64::MAX`
    /// before the first one.
    last_end_ms: AtomicU64,
}

/// Counts a request in flight until dropped (also when the request is cancelled).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.accepted.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.0.last_end_ms.store(elapsed, Ordering::Relaxed);
        // Release: whoever sees the count drop also sees the end time above.
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(u64::MAX),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// When the connection may next be found idle, or `None` if it is idle
    /// now: it sent no request within the header-read timeout of its accept,
    /// or none since the idle timeout.
    fn next_check(&self, limits: &Limits, now: Instant) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(now + limits.idle_timeout);
        }
        let idle_until = match self.last_end_ms.load(Ordering::Relaxed) {
            u64::MAX => self.accepted + limits.header_read_timeout,
            last_end => self.accepted + Duration::from_millis(last_end) + limits.idle_timeout,
        };
        (idle_until > now).then_some(idle_until)
    }
}

async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Activity::new();
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut request = request.map(|body| {
                // Most requests (GETs) have no body: no timer for them.
                if body.is_end_stream() {
                    axum::body::Body::new(body)
                } else {
                    axum::body::Body::new(DeadlineBody::new(body, limits.body_read_timeout))
                }
            });
            // The rate limiter's default key: the TCP peer, as axum::serve would give it.
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = activity.begin();
            let mut app = app.clone();
            async move {
                // The body keeps the request in flight: a streaming response
                // (Server-Sent Events) is not idle while its head is long sent.
                let response = app.call(request).await;
                response.map(|response| response.map(|body| InFlightBody::new(body, in_flight)))
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);

    // The first request must arrive within the header-read timeout, whatever
    // the protocol: before hyper knows it, only this deadline runs.
    let mut check_idle_at = activity.accepted + limits.header_read_timeout.min(limits.idle_timeout);
    let mut drop_at: Option<Instant> = None;
    if *stopping.borrow() {
        drop_at = Some(Instant::now() + limits.shutdown_grace);
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(check_idle_at), if drop_at.is_none() => {
                let now = Instant::now();
                match activity.next_check(&limits, now) {
                    Some(next) => check_idle_at = next,
                    None => {
                        tracing::debug!(%peer, "closing an idle connection");
                        drop_at = Some(now + limits.shutdown_grace);
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            _ = stopping.changed(), if drop_at.is_none() => {
                drop_at = Some(Instant::now() + limits.shutdown_grace);
                connection.as_mut().graceful_shutdown();
            }
            () = sleep_until_some(drop_at) => {
                tracing::debug!(%peer, "dropping a connection still open after the grace period");
                return;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its request in flight until it has ended
    /// (its last frame polled, or an error) or is dropped (sent, or the
    /// connection gone).
    struct InFlightBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> InFlightBody<B> {
    fn new(inner: B, in_flight: InFlight) -> InFlightBody<B> {
        // An empty body is never polled: the request ends with its head.
        let in_flight = (!inner.is_end_stream()).then_some(in_flight);
        InFlightBody { inner, in_flight }
    }
}

impl<B: Body> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.in_flight.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body that must arrive whole before a deadline: hyper bounds
    /// the wait for a request head, not for the body after it.
    struct DeadlineBody {
        #[pin]
        inner: Incoming,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
    }
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: tokio::time::sleep(timeout),
            timeout,
        }
    }
}

/// The error a handler reading a [`DeadlineBody`] gets once its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
struct BodyTimeout(Duration);

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if this.deadline.poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimeout(*this.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settings_built_by_hand_are_checked_before_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = ServerSettings {
            idle_timeout: Duration::MAX,
            ..ServerSettings::default()
        };
        let serving = serve_until(listener, Router::new(), &settings, std::future::pending());
        let err = tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("refused at once, not served")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("IDLE_TIMEOUT_MS"), "{err}");
    }

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let zero_timeout = ServerSettings {
            header_read_timeout: Duration::ZERO,
            ..ServerSettings::default()
        };
        assert!(
            zero_timeout
                .validate()
                .unwrap_err()
                .contains("HEADER_READ_TIMEOUT_MS")
        );
        let huge_grace = ServerSettings {
            shutdown_grace: Duration::from_secs(86_401),
            ..ServerSettings::default()
        };
        assert!(
            huge_grace
                .validate()
                .unwrap_err()
                .contains("SHUTDOWN_GRACE_MS")
        );
        let no_connections = ServerSettings {
            max_connections: 0,
            ..ServerSettings::default()
        };
        assert!(no_connections.validate().is_err());
        assert_eq!(ServerSettings::default().validate(), Ok(()));
    }

    #[test]
    fn a_connection_without_a_request_is_idle_and_a_busy_one_is_not() {
        let activity = Activity::new();
        let limits = limits();
        let later = activity.accepted + limits.header_read_timeout;
        assert_eq!(
            activity.next_check(&limits, activity.accepted),
            Some(later),
            "the first request may take the header-read timeout"
        );
        assert_eq!(
            activity.next_check(&limits, later),
            None,
            "never sent a request"
        );

        let request = activity.begin();
        assert_eq!(
            activity.next_check(&limits, later),
            Some(later + limits.idle_timeout),
            "a request in flight: look again later"
        );
        drop(request);
        let ended = Instant::now();
        let next = activity.next_check(&limits, later);
        assert!(
            next.is_some_and(|at| at <= ended + limits.idle_timeout
                && at + Duration::from_secs(1) > ended + limits.idle_timeout),
            "idle from the end of the last request: {next:?}"
        );
        assert_eq!(
            activity.next_check(&limits, ended + limits.idle_timeout),
            None,
            "idle for the whole idle timeout"
        );
    }

    fn in_flight(activity: &Activity) -> usize {
        activity.in_flight.load(Ordering::Acquire)
    }

    #[tokio::test]
    async fn a_response_body_keeps_its_request_in_flight_until_it_ends_or_is_dropped() {
        use http_body_util::BodyExt;

        let chunks = || {
            let chunks = ["data: 1\n\n", "data: 2\n\n"].map(Ok::<_, std::convert::Infallible>);
            axum::body::Body::from_stream(futures_util::stream::iter(chunks))
        };
        let activity = Activity::new();
        let mut body = InFlightBody::new(chunks(), activity.begin());
        assert_eq!(in_flight(&activity), 1, "head sent, body not yet");
        body.frame().await.unwrap().unwrap();
        assert_eq!(in_flight(&activity), 1, "one frame of two sent");
        body.frame().await.unwrap().unwrap();
        assert!(body.frame().await.is_none());
        assert_eq!(in_flight(&activity), 0, "ended with its last frame");
        drop(body);
        assert_eq!(in_flight(&activity), 0, "released once");

        let body = InFlightBody::new(chunks(), activity.begin());
        assert_eq!(in_flight(&activity), 1);
        drop(body);
        assert_eq!(
            in_flight(&activity),
            0,
            "a body dropped half way (client gone)"
        );

        let empty = InFlightBody::new(axum::body::Body::empty(), activity.begin());
        assert_eq!(in_flight(&activity), 0, "an empty body ends with the head");
        drop(empty);
        assert_eq!(in_flight(&activity), 0);
    }

    #[test]
    fn the_connection_cap_stays_below_the_descriptor_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in connection_cap.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(connection_cap(1), 1);
        if limit.rlim_cur != libc::RLIM_INFINITY {
            let cap = connection_cap(usize::MAX) as u64;
            assert_eq!(
                cap,
                limit
                    .rlim_cur
                    .saturating_sub(RESERVED_FILE_DESCRIPTORS)
                    .max(1)
            );
        }
    }
}
