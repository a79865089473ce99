//! [`CacheBuilder::from_env`]: the environment variables of the guide's
//! configuration table. Read in three steps: which store (cluster URLs, else
//! a URL, else host variables, else the in-memory store), the credentials
//! every Redis endpoint gets unless its URL has its own, then the tuning
//! (timeouts, retries, breaker, caps). Each error names the variable, never
//! its value.

use std::time::Duration;

use super::{Backend, CacheBuilder, RedisEndpoint, Secret};
use crate::error::{Error, Result};

impl CacheBuilder {
    /// Reads the environment (see docs/configuration.md). Fails only on values
    /// that cannot be right; an unreachable Redis is not an error here.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Reads settings through `var`, which returns a variable's value or `None`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut builder = CacheBuilder::new();
        let credentials = Credentials::from_vars(&var);
        if let Some(backend) = backend_from_vars(&var, &credentials)? {
            builder.config.backend = backend;
        }
        builder = tuning_from_vars(&var, builder)?;
        builder.config.validate()?;
        Ok(builder)
    }
}

/// `REDIS_USERNAME` / `REDIS_PASSWORD`: for every endpoint whose URL names none.
struct Credentials {
    username: Option<String>,
    password: Option<Secret>,
}

impl Credentials {
    fn from_vars(var: &impl Fn(&str) -> Option<String>) -> Credentials {
        Credentials {
            username: var("REDIS_USERNAME"),
            password: var("REDIS_PASSWORD").map(Secret::new),
        }
    }

    /// `endpoint`, with these credentials where its URL gave none.
    fn fill(&self, mut endpoint: RedisEndpoint) -> RedisEndpoint {
        if endpoint.username.is_none() {
            endpoint.username = self.username.clone();
        }
        if endpoint.password.is_none() {
            endpoint.password = self.password.clone();
        }
        endpoint
    }
}

/// The store the variables select, by precedence: `REDIS_CLUSTER_URLS`,
/// `REDIS_URL`, `REDIS_HOST` (with `REDIS_PORT`, `REDIS_DB`, `REDIS_TLS`);
/// `None` when none is set (the in-memory store).
fn backend_from_vars(
    var: &impl Fn(&str) -> Option<String>,
    credentials: &Credentials,
) -> Result<Option<Backend>> {
    if let Some(urls) = var("REDIS_CLUSTER_URLS") {
        let nodes = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| RedisEndpoint::parse("REDIS_CLUSTER_URLS", url).map(|e| credentials.fill(e)))
            .collect::<Result<Vec<_>>>()?;
        if nodes.is_empty() {
            return Err(Error::config("REDIS_CLUSTER_URLS", "lists no node"));
        }
        return Ok(Some(Backend::Cluster(nodes)));
    }
    if let Some(url) = var("REDIS_URL") {
        let endpoint = RedisEndpoint::parse("REDIS_URL", &url)?;
        return Ok(Some(Backend::Redis(credentials.fill(endpoint))));
    }
    let Some(host) = var("REDIS_HOST") else {
        return Ok(None);
    };
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
    Ok(Some(Backend::Redis(credentials.fill(endpoint))))
}

/// The `CACHE_*` settings and the TLS root certificate, on top of `builder`.
fn tuning_from_vars(
    var: &impl Fn(&str) -> Option<String>,
    mut builder: CacheBuilder,
) -> Result<CacheBuilder> {
    if let Some(namespace) = var("CACHE_NAMESPACE") {
        builder = builder.namespace(namespace);
    }
    let config = &mut builder.config;
    if let Some(ms) = var("CACHE_TIMEOUT_MS") {
        config.timeout = parse_millis("CACHE_TIMEOUT_MS", &ms)?;
    }
    if let Some(ms) = var("CACHE_CONNECT_TIMEOUT_MS") {
        config.connect_timeout = parse_millis("CACHE_CONNECT_TIMEOUT_MS", &ms)?;
    }
    if let Some(n) = var("CACHE_MAX_ATTEMPTS") {
        config.max_attempts = parse_number("CACHE_MAX_ATTEMPTS", &n)?;
    }
    if let Some(n) = var("CACHE_BREAKER_THRESHOLD") {
        config.breaker_threshold = parse_number("CACHE_BREAKER_THRESHOLD", &n)?;
    }
    if let Some(ms) = var("CACHE_BREAKER_COOLDOWN_MS") {
        config.breaker_cooldown = parse_millis("CACHE_BREAKER_COOLDOWN_MS", &ms)?;
    }
    if let Some(n) = var("CACHE_MEMORY_MAX_ENTRIES") {
        config.memory_max_entries = parse_number("CACHE_MEMORY_MAX_ENTRIES", &n)?;
    }
    if let Some(n) = var("CACHE_MAX_VALUE_BYTES") {
        config.max_value_bytes = parse_number("CACHE_MAX_VALUE_BYTES", &n)?;
    }
    if let Some(ms) = var("CACHE_INVALIDATE_BUDGET_MS") {
        config.invalidate_budget = parse_millis("CACHE_INVALIDATE_BUDGET_MS", &ms)?;
    }
    if let Some(path) = var("REDIS_TLS_CA_CERT_FILE") {
        let pem = std::fs::read(path.trim()).map_err(|err| {
            Error::config("REDIS_TLS_CA_CERT_FILE", format!("cannot be read ({err})"))
        })?;
        config.tls_ca_cert = Some(pem);
    }
    if let Some(keys) = var("CACHE_ENCRYPTION_KEYS") {
        config.encryption_keys = Some(crate::encryption::EncryptionKeys::parse(&keys)?);
    }
    if let Some(ms) = var("CACHE_ENCRYPTION_MAX_SKEW_MS") {
        config.encryption_max_skew = parse_millis("CACHE_ENCRYPTION_MAX_SKEW_MS", &ms)?;
    }
    if let Some(flag) = var("CACHE_BYPASS") {
        config.bypass = parse_bool("CACHE_BYPASS", &flag)?;
    }
    if let Some(n) = var("CACHE_LOCAL_MAX_ENTRIES") {
        let entries: usize = parse_number("CACHE_LOCAL_MAX_ENTRIES", &n)?;
        let ttl = match var("CACHE_LOCAL_TTL_MS") {
            Some(ms) => parse_millis("CACHE_LOCAL_TTL_MS", &ms)?,
            None => super::DEFAULT_LOCAL_TTL,
        };
        // 0 entries: off, as when unset.
        config.local_tier = (entries > 0).then_some((entries, ttl));
    }
    Ok(builder)
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
    fn local_tier_variables_switch_it_on() {
        assert_eq!(
            from(&[]).unwrap().config().local_tier,
            None,
            "off by default"
        );
        let on = from(&[
            ("CACHE_LOCAL_MAX_ENTRIES", "10000"),
            ("CACHE_LOCAL_TTL_MS", "1500"),
        ]);
        assert_eq!(
            on.unwrap().config().local_tier,
            Some((10_000, Duration::from_millis(1500)))
        );
        let default_ttl = from(&[("CACHE_LOCAL_MAX_ENTRIES", "5")]).unwrap();
        assert_eq!(
            default_ttl.config().local_tier,
            Some((5, crate::config::DEFAULT_LOCAL_TTL))
        );
        let zero = from(&[("CACHE_LOCAL_MAX_ENTRIES", "0")]).unwrap();
        assert_eq!(zero.config().local_tier, None);
        let err = from(&[("CACHE_LOCAL_MAX_ENTRIES", "many")]).unwrap_err();
        assert!(err.to_string().contains("CACHE_LOCAL_MAX_ENTRIES"), "{err}");
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
            assert_eq!(err.kind(), crate::error::ErrorKind::Config, "{var}={value}");
        }
        let err = from(&[("REDIS_HOST", "h"), ("REDIS_PORT", "70000")]).unwrap_err();
        assert!(err.to_string().contains("REDIS_PORT"));
    }

    #[test]
    fn encryption_keys_are_read_and_never_shown() {
        let key = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
        let builder = from(&[("CACHE_ENCRYPTION_KEYS", key)]).unwrap();
        assert!(builder.config().encryption_keys.is_some());
        assert!(!format!("{builder:?}").contains("cw_0x"));
        let err = from(&[("CACHE_ENCRYPTION_KEYS", "hunter2-not-a-key")]).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Config);
        assert!(err.to_string().contains("CACHE_ENCRYPTION_KEYS"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_encryption_skew_is_read_and_bounded() {
        assert_eq!(
            from(&[]).unwrap().config().encryption_max_skew,
            crate::config::DEFAULT_ENCRYPTION_MAX_SKEW
        );
        let builder = from(&[("CACHE_ENCRYPTION_MAX_SKEW_MS", "30000")]).unwrap();
        assert_eq!(
            builder.config().encryption_max_skew,
            Duration::from_secs(30)
        );
        for bad in ["soon", "-1", "86400001"] {
            let err = from(&[("CACHE_ENCRYPTION_MAX_SKEW_MS", bad)]).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::Config, "{bad}");
        }
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
}
