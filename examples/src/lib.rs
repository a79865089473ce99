//! The example services' shared parts: their domains ([`search`], [`portfolio`]
//! and its live updates, [`relay`], behind a [`stream_cap`]), the serving every
//! service of this kind needs ([`server`]: HTTP/1.1 and HTTP/2, timeouts,
//! bounded shutdown), their logs ([`LogFormat`]) and their command line
//! ([`parse_args`]). Each binary's `main.rs` (`src/bin/`) shows the rest: the
//! metrics recorder, the cache, the rate limiter, the router, serving and
//! graceful shutdown.
#![warn(missing_docs)]

pub mod metrics;
pub mod portfolio;
pub mod relay;
pub mod search;
pub mod server;
pub mod stream_cap;

/// The README and the guide's pages (`docs/`) as doc tests: `cargo test --doc`
/// compiles every Rust block of them (and runs those not marked `no_run`), so
/// the code a user copies builds against these crates.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../README.md")]
    mod readme {}
    #[doc = include_str!("../../docs/README.md")]
    mod index {}
    #[doc = include_str!("../../docs/cache.md")]
    mod cache {}
    #[doc = include_str!("../../docs/memoization.md")]
    mod memoization {}
    #[doc = include_str!("../../docs/keys.md")]
    mod keys {}
    #[doc = include_str!("../../docs/stored-values.md")]
    mod stored_values {}
    #[doc = include_str!("../../docs/rate-limiting.md")]
    mod rate_limiting {}
    #[doc = include_str!("../../docs/local-tier.md")]
    mod local_tier {}
    #[doc = include_str!("../../docs/events.md")]
    mod events {}
    #[doc = include_str!("../../docs/metrics.md")]
    mod metrics {}
    #[doc = include_str!("../../docs/failure-modes.md")]
    mod failure_modes {}
    #[doc = include_str!("../../docs/configuration.md")]
    mod configuration {}
    #[doc = include_str!("../../docs/example-services.md")]
    mod example_services {}
    #[doc = include_str!("../../docs/testing.md")]
    mod testing {}
    #[doc = include_str!("../../docs/verification-under-faults.md")]
    mod verification_under_faults {}
}

use std::io::IsTerminal;

/// The cache's part of every example service's `--help` (with [`server::USAGE`]).
pub const CACHE_USAGE: &str = "\
Cache (the embedded in-memory store when none of the first three is set):
  REDIS_CLUSTER_URLS       comma-separated seed node URLs: Redis Cluster
  REDIS_URL                redis://[user[:password]@]host[:port][/db], or rediss:// for TLS
  REDIS_HOST               host, with REDIS_PORT, REDIS_DB, REDIS_USERNAME, REDIS_PASSWORD
  CACHE_TIMEOUT_MS and the rest: see docs/configuration.md
";

/// How the services write their logs to stdout (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `text` (the default): one line per event, for people. Coloured only
    /// when stdout is a terminal and `NO_COLOR` is not set, so a file or a
    /// pipe never gets escape codes.
    Text,
    /// `json`: one JSON object per line (`timestamp`, `level`, `target`,
    /// the event's fields, `message` among them, flattened, and its spans),
    /// for log collectors.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` from the environment: `text` (or unset) or `json`;
    /// anything else is an error naming the variable.
    pub fn from_env() -> Result<LogFormat, String> {
        match std::env::var("LOG_FORMAT") {
            Err(_) => Ok(LogFormat::Text),
            Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
                "" | "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("LOG_FORMAT must be text or json, got {value:?}")),
            },
        }
    }
}

/// Logs to stdout in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => {
            let colour = std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

/// Reads a number from the environment, with a default; a value that does not
/// parse is an error naming the variable.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a number, got {value:?}")),
        Err(_) => Ok(default),
    }
}

/// What an example service's command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invocation {
    /// No arguments: serve (configuration comes from the environment).
    Serve,
    /// `--help` or `-h`: print the usage and exit.
    Help,
}

/// Reads the arguments after the program name: none, or `--help` / `-h`.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Invocation, String> {
    let mut invocation = Invocation::Serve;
    for arg in args {
        match arg.as_str() {
            "--help" | "-h" => invocation = Invocation::Help,
            other => {
                return Err(format!(
                    "unexpected argument {other:?}: settings come from the environment"
                ));
            }
        }
    }
    Ok(invocation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_line_is_help_or_nothing() {
        assert_eq!(parse_args(args(&[])), Ok(Invocation::Serve));
        assert_eq!(parse_args(args(&["--help"])), Ok(Invocation::Help));
        assert_eq!(parse_args(args(&["-h"])), Ok(Invocation::Help));
        assert!(parse_args(args(&["--port", "80"])).is_err());
    }
}
