//! A minimal keep-alive HTTP/1.1 client for tests and load generation on
//! loopback: requests with custom headers, responses with status, headers and
//! body; no client library whose own overhead would blur a measurement.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One persistent connection.
pub struct Connection {
    stream: TcpStream,
    /// Bytes read past the end of the previous response.
    buffer: Vec<u8>,
}

/// A response's status, headers and body.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The header lines as received, parsed on lookup (a load generator
    /// should spend as little as possible per response).
    head: String,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_lines(&self.head)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// A header parsed as a number; panics (in a test) when absent or not a number.
    pub fn number(&self, name: &str) -> u64 {
        self.header(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("header {name} missing or not a number: {}", self.head))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn header_lines(head: &str) -> impl Iterator<Item = (&str, &str)> {
    head.split('\n')
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
}

/// One request on a fresh connection.
pub async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut conn = Connection::open(port).await.expect("connect");
    conn.request(path, headers, std::time::Duration::from_secs(10))
        .await
        .expect("request")
}

impl Connection {
    /// Connects to `127.0.0.1:port`.
    pub async fn open(port: u16) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends `GET path` and reads the whole response, within `timeout`.
    pub async fn get(&mut self, path: &str, timeout: Duration) -> std::io::Result<Response> {
        self.request(path, &[], timeout).await
    }

    /// Sends `GET path` with extra headers and reads the whole response, within `timeout`.
    pub async fn request(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> std::io::Result<Response> {
        self.send("GET", path, headers, b"", timeout).await
    }

    /// Sends `method path` with extra headers and `body` (with its
    /// `Content-Length` when not empty) and reads the whole response, within `timeout`.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Response> {
        tokio::time::timeout(timeout, self.exchange(method, path, headers, body))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))?
    }

    /// Reads more bytes into the buffer; end of stream is an error.
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).await?;
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end])
            .map_err(|_| std::io::Error::other("response head is not UTF-8"))?;
        let (status_line, fields) = head.split_once('\n').unwrap_or((head, ""));
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let head = fields.to_string();
        let length = header_lines(&head)
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0usize);
        let body_start = head_end + 4;
        while self.buffer.len() < body_start + length {
            self.fill().await?;
        }
        let body = self.buffer[body_start..body_start + length].to_vec();
        self.buffer.drain(..body_start + length);
        Ok(Response { status, head, body })
    }
}

/// Serves `GET /`, answering `ok`, behind `layer` (a rate limiter, say) on
/// a free loopback port, as [`serve`] does; returns the port.
pub async fn serve_layer<L>(layer: L) -> u16
where
    L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<axum::extract::Request> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Response:
        axum::response::IntoResponse + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Error:
        Into<std::convert::Infallible> + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
{
    serve(
        axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .layer(layer),
    )
    .await
}

/// Serves `app` on a free loopback port (with `ConnectInfo`, as the rate
/// limiter's key extractors need) until the runtime ends; returns the port.
pub async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral loopback port");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("the test server runs until the runtime ends");
    });
    port
}
