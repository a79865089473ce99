//! Configuration: the environment variables and the builder that mirrors them.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default timeout of one cache call, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Default timeout of one connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of tries of a call that fails with a transient error.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default first backoff between tries; it doubles on each further try.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Default number of consecutive failures that opens the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default time the breaker stays open before it lets one probe through.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default bound on the number of entries of the in-memory store.
pub const DEFAULT_MEMORY_MAX_ENTRIES: usize = 100_000;
/// Default cap on the size of a value the library reads or writes: 4 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Default bound on a whole [`invalidate_prefix`](crate::Cache::invalidate_prefix)
/// or [`invalidate_all`](crate::Cache::invalidate_all) call.
pub const DEFAULT_INVALIDATE_BUDGET: Duration = Duration::from_secs(30);

/// The longest TTL (and rate-limit window) any call accepts: 100 years of
/// 365 days. Longer ones are an [`ErrorKind::InvalidArgument`](crate::ErrorKind)
/// on every backend, never a panic (the in-memory store adds TTLs to
/// `Instant`s) nor a key left without expiry; for a key that never expires,
/// pass no TTL.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Checks a TTL or window against [`MAX_TTL`]; `argument` names it in the error.
/// What [`Cache::set`](crate::Cache::set), `expire` and `incr_window` call
/// before sending anything, for callers that validate at start-up.
///
/// ```
/// use std::time::Duration;
/// assert!(cache_core::validate_ttl("window", Duration::from_secs(60)).is_ok());
/// let err = cache_core::validate_ttl("window", Duration::MAX).unwrap_err();
/// assert_eq!(err.kind(), cache_core::ErrorKind::InvalidArgument);
/// ```
pub fn validate_ttl(argument: &'static str, ttl: Duration) -> Result<()> {
    if ttl > MAX_TTL {
        return Err(Error::invalid(
            argument,
            format!(
                "{} s is over the maximum of {} s (100 years); pass no TTL for a key that never expires",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Redis's own limit on a string value (`proto-max-bulk-len`'s default).
const MAX_VALUE_BYTES_LIMIT: usize = 512 * 1024 * 1024;

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is handed to the connection.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One Redis server address with its credentials, parsed from a URL or from
/// `REDIS_HOST`-style variables. Its `Display` form hides the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisEndpoint {
    /// `rediss://`: connect with TLS.
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Logical database (standalone only).
    pub db: i64,
    /// ACL user name.
    pub username: Option<String>,
    /// Password (ACL or `requirepass`).
    pub password: Option<Secret>,
}

impl RedisEndpoint {
    /// A plain-TCP endpoint without credentials.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        RedisEndpoint {
            tls: false,
            host: host.into(),
            port,
            db: 0,
            username: None,
            password: None,
        }
    }

    /// Parses `redis://[user[:password]@]host[:port][/db]` or `rediss://...`.
    ///
    /// `setting` names the variable in the error; the URL itself never appears
    /// in it, since it may hold a password.
    pub fn parse(setting: &'static str, input: &str) -> Result<Self> {
        let url = url::Url::parse(input.trim())
            .map_err(|err| Error::config(setting, format!("not a valid URL ({err})")))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(Error::config(
                    setting,
                    format!("unsupported scheme `{other}`: use redis:// or rediss:// (TLS)"),
                ));
            }
        };
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.trim_matches(['[', ']']).to_string(),
            _ => return Err(Error::config(setting, "the URL has no host")),
        };
        let port = url.port().unwrap_or(6379);
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            path => path.parse::<i64>().map_err(|_| {
                Error::config(setting, "the path must be a database number, such as /0")
            })?,
        };
        let decode = |part: &str| -> Result<String> {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|value| value.into_owned())
                .map_err(|_| Error::config(setting, "credentials are not valid UTF-8"))
        };
        let username = match url.username() {
            "" => None,
            user => Some(decode(user)?),
        };
        let password = url.password().map(decode).transpose()?.map(Secret);
        Ok(RedisEndpoint {
            tls,
            host,
            port,
            db,
            username,
            password,
        })
    }

    /// The URL handed to the `redis` crate, credentials included. Never log it.
    pub(crate) fn connection_url(&self) -> Result<url::Url> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut url = url::Url::parse(&format!("{scheme}://{host}:{}/{}", self.port, self.db))
            .map_err(|err| Error::config("redis endpoint", format!("invalid host ({err})")))?;
        if let Some(user) = &self.username {
            url.set_username(user)
                .map_err(|()| Error::config("REDIS_USERNAME", "cannot be used in a URL"))?;
        }
        if let Some(password) = &self.password {
            url.set_password(Some(password.expose()))
                .map_err(|()| Error::config("REDIS_PASSWORD", "cannot be used in a URL"))?;
        }
        Ok(url)
    }
}

impl fmt::Display for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:***@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, None) => {}
        }
        write!(f, "{}:{}/{}", self.host, self.port, self.db)
    }
}

/// Which store a [`Cache`](crate::Cache) talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded in-memory store: one process, no network.
    Memory,
    /// One Redis server (or a primary behind a proxy).
    Redis(RedisEndpoint),
    /// Redis Cluster, discovered from these seed nodes.
    Cluster(Vec<RedisEndpoint>),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Memory => f.write_str("in-memory"),
            Backend::Redis(endpoint) => write!(f, "redis {endpoint}"),
            Backend::Cluster(nodes) => {
                f.write_str("redis cluster ")?;
                for (i, node) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{node}")?;
                }
                Ok(())
            }
        }
    }
}

/// Everything a [`Cache`](crate::Cache) is built from. Filled by
/// [`CacheBuilder`] or by [`Cache::from_env`](crate::Cache::from_env).
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub(crate) backend: Backend,
    pub(crate) namespace: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) retry_backoff: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) memory_max_entries: usize,
    pub(crate) bypass: bool,
    /// PEM root certificate(s) for `rediss://` instead of the system's trust store.
    pub(crate) tls_ca_cert: Option<Vec<u8>>,
    pub(crate) codec: crate::Codec,
    pub(crate) max_value_bytes: usize,
    pub(crate) invalidate_budget: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: Backend::Memory,
            namespace: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            memory_max_entries: DEFAULT_MEMORY_MAX_ENTRIES,
            bypass: false,
            tls_ca_cert: None,
            codec: crate::Codec::Json,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            invalidate_budget: DEFAULT_INVALIDATE_BUDGET,
        }
    }
}

/// Builds a [`Cache`](crate::Cache) in code, with the same settings as the
/// environment variables (see the README's configuration table).
///
/// ```
/// # async fn run() -> Result<(), cache_core::Error> {
/// use std::time::Duration;
/// let cache = cache_core::Cache::builder()
///     .redis_url("redis://127.0.0.1:6379/0")?
///     .namespace("billing")
///     .timeout(Duration::from_millis(100))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct CacheBuilder {
    config: CacheConfig,
}

impl CacheBuilder {
    /// A builder for the in-memory store with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the environment (see the README's table). Fails only on values
    /// that cannot be right; an unreachable Redis is not an error here.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Reads settings through `var`, which returns a variable's value or `None`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut builder = CacheBuilder::new();
        let username = var("REDIS_USERNAME");
        let password = var("REDIS_PASSWORD").map(Secret);
        let with_credentials = |mut endpoint: RedisEndpoint| {
            if endpoint.username.is_none() {
                endpoint.username = username.clone();
            }
            if endpoint.password.is_none() {
                endpoint.password = password.clone();
            }
            endpoint
        };
        if let Some(urls) = var("REDIS_CLUSTER_URLS") {
            let nodes = urls
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(|url| RedisEndpoint::parse("REDIS_CLUSTER_URLS", url).map(&with_credentials))
                .collect::<Result<Vec<_>>>()?;
            if nodes.is_empty() {
                return Err(Error::config("REDIS_CLUSTER_URLS", "lists no node"));
            }
            builder.config.backend = Backend::Cluster(nodes);
        } else if let Some(url) = var("REDIS_URL") {
            let endpoint = RedisEndpoint::parse("REDIS_URL", &url)?;
            builder.config.backend = Backend::Redis(with_credentials(endpoint));
        } else if let Some(host) = var("REDIS_HOST") {
            let mut endpoint = RedisEndpoint::new(host, 6379);
            if let Some(port) = var("REDIS_PORT") {
                endpoint.port = parse_number("REDIS_PORT", &port)?;
            }
            if let Some(db) = var("REDIS_DB") {
                endpoint.db = parse_number("REDIS_DB", &db)?;
            }
            if let Some(tls) = var("REDIS_TLS") {
                endpoint.tls = parse_bool("REDIS_TLS", &tls)?;
            }
            builder.config.backend = Backend::Redis(with_credentials(endpoint));
        }
        if let Some(namespace) = var("CACHE_NAMESPACE") {
            builder = builder.namespace(namespace);
        }
        if let Some(ms) = var("CACHE_TIMEOUT_MS") {
            builder.config.timeout = parse_millis("CACHE_TIMEOUT_MS", &ms)?;
        }
        if let Some(ms) = var("CACHE_CONNECT_TIMEOUT_MS") {
            builder.config.connect_timeout = parse_millis("CACHE_CONNECT_TIMEOUT_MS", &ms)?;
        }
        if let Some(n) = var("CACHE_MAX_ATTEMPTS") {
            builder.config.max_attempts = parse_number("CACHE_MAX_ATTEMPTS", &n)?;
        }
        if let Some(n) = var("CACHE_BREAKER_THRESHOLD") {
            builder.config.breaker_threshold = parse_number("CACHE_BREAKER_THRESHOLD", &n)?;
        }
        if let Some(ms) = var("CACHE_BREAKER_COOLDOWN_MS") {
            builder.config.breaker_cooldown = parse_millis("CACHE_BREAKER_COOLDOWN_MS", &ms)?;
        }
        if let Some(n) = var("CACHE_MEMORY_MAX_ENTRIES") {
            builder.config.memory_max_entries = parse_number("CACHE_MEMORY_MAX_ENTRIES", &n)?;
        }
        if let Some(n) = var("CACHE_MAX_VALUE_BYTES") {
            builder.config.max_value_bytes = parse_number("CACHE_MAX_VALUE_BYTES", &n)?;
        }
        if let Some(ms) = var("CACHE_INVALIDATE_BUDGET_MS") {
            builder.config.invalidate_budget = parse_millis("CACHE_INVALIDATE_BUDGET_MS", &ms)?;
        }
        if let Some(path) = var("REDIS_TLS_CA_CERT_FILE") {
            let pem = std::fs::read(path.trim()).map_err(|err| {
                Error::config("REDIS_TLS_CA_CERT_FILE", format!("cannot be read ({err})"))
            })?;
            builder.config.tls_ca_cert = Some(pem);
        }
        if let Some(flag) = var("CACHE_BYPASS") {
            builder.config.bypass = parse_bool("CACHE_BYPASS", &flag)?;
        }
        builder.validate()?;
        Ok(builder)
    }

    /// Uses one Redis server given as `redis://` or `rediss://` URL.
    pub fn redis_url(mut self, url: &str) -> Result<Self> {
        self.config.backend = Backend::Redis(RedisEndpoint::parse("redis_url", url)?);
        Ok(self)
    }

    /// Uses one Redis server.
    pub fn redis(mut self, endpoint: RedisEndpoint) -> Self {
        self.config.backend = Backend::Redis(endpoint);
        self
    }

    /// Uses Redis Cluster, discovered from these seed node URLs.
    pub fn cluster_urls<I, S>(mut self, urls: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = urls
            .into_iter()
            .map(|url| RedisEndpoint::parse("cluster_urls", url.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if nodes.is_empty() {
            return Err(Error::config("cluster_urls", "lists no node"));
        }
        self.config.backend = Backend::Cluster(nodes);
        Ok(self)
    }

    /// Uses the embedded in-memory store.
    pub fn in_memory(mut self) -> Self {
        self.config.backend = Backend::Memory;
        self
    }

    /// Puts `{namespace}:` in front of every key, so that services sharing a
    /// Redis do not collide. Trailing colons are ignored.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        let namespace = namespace.trim_end_matches(':');
        self.config.namespace = (!namespace.is_empty()).then(|| namespace.to_string());
        self
    }

    /// The deadline of each call, from its start until the store's reply is
    /// in, retries included (default 250 ms); see [`Cache::timeout`](crate::Cache::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Bounds each connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Tries of a call failing with a transient error, the first included (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The first backoff between tries; it doubles each time (default 10 ms).
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.config.retry_backoff = backoff;
        self
    }

    /// Consecutive failures that open the circuit breaker (default 5).
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.config.breaker_threshold = failures;
        self
    }

    /// How long the breaker stays open before one probe call (default 1 s).
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.breaker_cooldown = cooldown;
        self
    }

    /// Bound on the in-memory store's entries (default 100 000); the oldest go first.
    pub fn memory_max_entries(mut self, entries: usize) -> Self {
        self.config.memory_max_entries = entries;
        self
    }

    /// Cap on the size of a stored value, in bytes (default 4 MiB). A read
    /// transfers at most this much plus one byte: a larger value is a miss
    /// (counted in [`Stats::oversized`](crate::Stats::oversized)), which
    /// `#[cached]` overwrites; a write of a larger value is an
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind) and sends nothing.
    /// It also bounds the time spent decoding a value.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.config.max_value_bytes = bytes;
        self
    }

    /// Bound on a whole [`invalidate_prefix`](crate::Cache::invalidate_prefix)
    /// or [`invalidate_all`](crate::Cache::invalidate_all) call (default 30 s);
    /// each of its SCAN + UNLINK steps is also bounded by the call timeout.
    pub fn invalidate_budget(mut self, budget: Duration) -> Self {
        self.config.invalidate_budget = budget;
        self
    }

    /// Trusts these PEM root certificates for `rediss://` (a private CA)
    /// instead of the system's trust store. Needs the `tls` feature.
    pub fn tls_ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.config.tls_ca_cert = Some(pem.into());
        self
    }

    /// The encoding of values written and read through this handle (default JSON).
    pub fn codec(mut self, codec: crate::Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// Turns memoization off: `#[cached]` functions always run their body.
    /// Direct `Cache` calls are unaffected.
    pub fn bypass(mut self, bypass: bool) -> Self {
        self.config.bypass = bypass;
        self
    }

    /// The settings gathered so far.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        if c.timeout.is_zero() {
            return Err(Error::config("timeout", "must be greater than zero"));
        }
        if c.connect_timeout.is_zero() {
            return Err(Error::config(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if c.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        if c.breaker_threshold == 0 {
            return Err(Error::config("breaker_threshold", "must be at least 1"));
        }
        let uses_tls = match &c.backend {
            Backend::Memory => false,
            Backend::Redis(endpoint) => endpoint.tls,
            Backend::Cluster(nodes) => nodes.iter().any(|n| n.tls),
        };
        if uses_tls && !cfg!(feature = "tls") {
            return Err(Error::config(
                "rediss",
                "TLS needs the `tls` feature of cache-core (cache-core = { features = [\"tls\"] })",
            ));
        }
        if c.max_value_bytes == 0 || c.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
            return Err(Error::config(
                "max_value_bytes",
                "must be between 1 and 512 MiB (Redis's own limit for a string)",
            ));
        }
        if c.invalidate_budget.is_zero() {
            return Err(Error::config(
                "invalidate_budget",
                "must be greater than zero",
            ));
        }
        // The handle adds these to `Instant`s: past MAX_TTL (100 years) is a
        // mistake, and far enough past it a panic at the first call.
        for (setting, duration) in [
            ("timeout", c.timeout),
            ("connect_timeout", c.connect_timeout),
            ("retry_backoff", c.retry_backoff),
            ("invalidate_budget", c.invalidate_budget),
        ] {
            if duration > MAX_TTL {
                return Err(Error::config(
                    setting,
                    "must be at most 100 years (cache_core::MAX_TTL)",
                ));
            }
        }
        if c.memory_max_entries == 0 {
            return Err(Error::config("memory_max_entries", "must be at least 1"));
        }
        Ok(())
    }

    /// Builds the handle. Never fails because Redis is unreachable: the
    /// connection is made in the background and calls fail (fast) until it is up.
    /// Must run inside a Tokio runtime.
    pub async fn build(self) -> Result<crate::Cache> {
        self.validate()?;
        crate::Cache::from_config(self.config)
    }
}

impl CacheConfig {
    /// The store this configuration selects.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

fn parse_number<T: std::str::FromStr>(setting: &'static str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::config(setting, "must be a whole number in range"))
}

fn parse_millis(setting: &'static str, value: &str) -> Result<Duration> {
    parse_number::<u64>(setting, value).map(Duration::from_millis)
}

fn parse_bool(setting: &'static str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::config(setting, "must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<CacheBuilder> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CacheBuilder::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn no_redis_variables_selects_the_memory_store() {
        let builder = from(&[]).unwrap();
        assert_eq!(builder.config().backend, Backend::Memory);
    }

    /// The endpoint `url` gives, with the user, password and db of the tests below.
    fn assert_endpoint(url: &str, tls: bool) {
        let builder = from(&[("REDIS_URL", url)]).unwrap();
        let Backend::Redis(endpoint) = &builder.config().backend else {
            panic!("expected a standalone backend");
        };
        assert_eq!(endpoint.tls, tls);
        assert_eq!(endpoint.host, "cache.internal");
        assert_eq!(endpoint.port, 6380);
        assert_eq!(endpoint.db, 4);
        assert_eq!(endpoint.username.as_deref(), Some("app"));
        assert_eq!(
            endpoint.password.as_ref().map(Secret::expose),
            Some("s3cr@t")
        );
    }

    #[test]
    fn redis_url_is_parsed_with_user_password_and_db() {
        assert_endpoint("redis://app:s3cr%40t@cache.internal:6380/4", false);
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_url_without_the_tls_feature_names_the_feature() {
        let err = from(&[("REDIS_URL", "rediss://app:s3cr%40t@cache.internal:6380/4")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`tls` feature"), "{err}");
        assert!(!err.contains("s3cr"), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn rediss_url_is_parsed_with_user_password_and_db() {
        assert_endpoint("rediss://app:s3cr%40t@cache.internal:6380/4", true);
    }

    #[test]
    fn host_variables_build_an_endpoint() {
        let builder = from(&[
            ("REDIS_HOST", "10.0.0.5"),
            ("REDIS_PORT", "7000"),
            ("REDIS_DB", "2"),
            ("REDIS_USERNAME", "svc"),
            ("REDIS_PASSWORD", "hunter2"),
        ])
        .unwrap();
        let Backend::Redis(endpoint) = &builder.config().backend else {
            panic!("expected a standalone backend");
        };
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port, endpoint.db),
            ("10.0.0.5", 7000, 2)
        );
        assert_eq!(endpoint.username.as_deref(), Some("svc"));
        assert_eq!(
            endpoint.password.as_ref().map(Secret::expose),
            Some("hunter2")
        );
    }

    #[test]
    fn cluster_urls_take_precedence_and_get_the_password() {
        let builder = from(&[
            ("REDIS_CLUSTER_URLS", "redis://a:7000, redis://b:7001"),
            ("REDIS_URL", "redis://ignored"),
            ("REDIS_PASSWORD", "pw"),
        ])
        .unwrap();
        let Backend::Cluster(nodes) = &builder.config().backend else {
            panic!("expected a cluster backend");
        };
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].host, "b");
        assert!(
            nodes
                .iter()
                .all(|n| n.password.as_ref().map(Secret::expose) == Some("pw"))
        );
    }

    #[test]
    fn malformed_url_names_the_variable_and_hides_the_value() {
        let err = from(&[("REDIS_URL", "http://user:topsecret@host")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("REDIS_URL"), "{text}");
        assert!(!text.contains("topsecret"), "{text}");
        let err = from(&[("REDIS_URL", "redis://:topsecret@host:notaport")]).unwrap_err();
        assert!(err.to_string().contains("REDIS_URL"));
        assert!(!err.to_string().contains("topsecret"));
        let err = from(&[("REDIS_URL", "redis://host/db")]).unwrap_err();
        assert!(err.to_string().contains("database number"));
    }

    #[test]
    fn bad_numbers_are_errors_naming_the_variable() {
        for (var, value) in [
            ("CACHE_TIMEOUT_MS", "fast"),
            ("CACHE_TIMEOUT_MS", "0"),
            ("CACHE_MAX_ATTEMPTS", "0"),
            ("CACHE_BYPASS", "maybe"),
        ] {
            let err = from(&[(var, value)]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config, "{var}={value}");
        }
        let err = from(&[("REDIS_HOST", "h"), ("REDIS_PORT", "70000")]).unwrap_err();
        assert!(err.to_string().contains("REDIS_PORT"));
    }

    #[test]
    fn password_never_appears_in_debug_or_display() {
        let builder = from(&[("REDIS_URL", "redis://admin:pa55word-xyz@h:1/0")]).unwrap();
        let debug = format!("{builder:?}");
        let display = builder.config().backend.to_string();
        assert!(!debug.contains("pa55word-xyz"), "{debug}");
        assert!(!display.contains("pa55word-xyz"), "{display}");
        assert!(display.contains("admin:***@"), "{display}");
    }

    #[test]
    fn connection_url_keeps_credentials_for_the_driver() {
        let endpoint = RedisEndpoint::parse("t", "redis://u:p%3Aw@h:1/3").unwrap();
        let url = endpoint.connection_url().unwrap();
        assert_eq!(url.username(), "u");
        let password = percent_encoding::percent_decode_str(url.password().unwrap());
        assert_eq!(password.decode_utf8().unwrap(), "p:w");
        assert_eq!(url.path(), "/3");
    }
}

#[cfg(test)]
mod duration_bounds {
    use std::time::Duration;

    use super::*;

    /// Durations the handle adds to `Instant`s: an absurd one must be a
    /// configuration error at build time, never a panic at the first call.
    #[tokio::test]
    async fn durations_that_would_overflow_a_clock_are_refused_at_build() {
        type Set = fn(CacheBuilder, Duration) -> CacheBuilder;
        let setters: [(&str, Set); 4] = [
            ("timeout", CacheBuilder::timeout),
            ("connect_timeout", CacheBuilder::connect_timeout),
            ("retry_backoff", CacheBuilder::retry_backoff),
            ("invalidate_budget", CacheBuilder::invalidate_budget),
        ];
        for (name, set) in setters {
            for huge in [Duration::MAX, MAX_TTL + Duration::from_secs(1)] {
                let err = set(crate::Cache::builder(), huge)
                    .build()
                    .await
                    .expect_err(name);
                assert_eq!(err.kind(), crate::ErrorKind::Config, "{name}: {err}");
                assert!(err.to_string().contains(name), "{name}: {err}");
            }
            // The largest accepted value works, without a panic.
            let cache = set(crate::Cache::builder(), MAX_TTL).build().await.unwrap();
            cache.set("k", &1, None).await.unwrap();
            assert_eq!(cache.invalidate_prefix("k").await.unwrap(), 1);
        }
    }
}
