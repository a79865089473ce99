//! The one error type of this crate.

use std::time::Duration;

/// What went wrong, for callers that want to branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration (environment or builder) is invalid.
    Config,
    /// The store could not be reached, or the connection broke.
    Connection,
    /// The call did not finish within its timeout.
    Timeout,
    /// The circuit breaker is open: the call was not attempted.
    CircuitOpen,
    /// The store answered with an error (wrong type, not an integer, ...).
    Command,
    /// A value could not be encoded.
    Encode,
    /// The store refused the credentials (`WRONGPASS`, `NOAUTH`) or the ACL
    /// user's permissions (`NOPERM`). Not retried: only a configuration change helps.
    Auth,
    /// An argument is out of range (a TTL over [`MAX_TTL`](crate::MAX_TTL), an
    /// empty prefix, a value over the handle's size cap). Nothing was sent.
    InvalidArgument,
}

/// An error from a [`Cache`](crate::Cache) call or from building one.
///
/// Messages never contain passwords: configuration errors name the variable,
/// not its value, and connection errors come from addresses without credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid configuration, naming the variable or builder setting at fault.
    #[error("invalid cache configuration: {setting}: {reason}")]
    Config {
        /// The environment variable or builder setting.
        setting: &'static str,
        /// What is wrong with it (never its value when it may hold a secret).
        reason: String,
    },
    /// The store could not be reached or the connection broke.
    #[error("cache store unreachable: {0}")]
    Connection(#[source] redis::RedisError),
    /// The call did not complete in time.
    #[error("cache call timed out after {0:?}")]
    Timeout(Duration),
    /// The circuit breaker is open, so the call was not attempted.
    #[error("cache circuit breaker is open: calls are suspended until the store recovers")]
    CircuitOpen,
    /// The store rejected the command.
    #[error("cache store rejected the command: {0}")]
    Command(String),
    /// The value could not be encoded.
    #[error("could not encode the cache value: {0}")]
    Encode(String),
    /// The store refused the credentials or the user's permissions; the text
    /// is the server's reply, which never holds the password.
    #[error("cache store refused the credentials: {0}")]
    Auth(String),
    /// An argument is out of range; nothing was sent to the store.
    #[error("invalid cache call: {argument}: {reason}")]
    InvalidArgument {
        /// The argument at fault (`ttl`, `prefix`, `value`, ...).
        argument: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The kind of error, to match on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::Config,
            Error::Connection(_) => ErrorKind::Connection,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::CircuitOpen => ErrorKind::CircuitOpen,
            Error::Command(_) => ErrorKind::Command,
            Error::Encode(_) => ErrorKind::Encode,
            Error::Auth(_) => ErrorKind::Auth,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
        }
    }

    /// `true` when the call timed out.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// `true` when the store could not be reached (refused, reset, broken pipe).
    pub fn is_connection(&self) -> bool {
        self.kind() == ErrorKind::Connection
    }

    /// `true` when the circuit breaker refused the call without trying it.
    pub fn is_circuit_open(&self) -> bool {
        self.kind() == ErrorKind::CircuitOpen
    }

    /// `true` when the store refused the credentials or the user's permissions.
    pub fn is_auth(&self) -> bool {
        self.kind() == ErrorKind::Auth
    }

    /// `true` when the store itself is unhealthy (unreachable, slow, breaker open),
    /// as opposed to a bad command or value. These count towards the breaker.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::CircuitOpen
        )
    }

    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            setting,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(argument: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        if is_auth_error(&err) {
            // Checked first: the driver files a failed AUTH as a reason to reconnect.
            return Error::Auth(err.to_string());
        }
        if err.is_timeout() {
            // The connection's own response timeout; the duration is the handle's.
            return Error::Connection(err);
        }
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
            || is_transient_server_error(&err)
        {
            Error::Connection(err)
        } else {
            Error::Command(err.to_string())
        }
    }
}

/// A refused `AUTH` (at connection set-up) or a command the ACL user may not run.
fn is_auth_error(err: &redis::RedisError) -> bool {
    is_refused_login(err) || err.code() == Some("NOPERM")
}

/// The server refused the connection's login: only a new connection can fix it.
pub(crate) fn is_refused_login(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// Server replies that mean "not now" rather than "never": a cluster in transition,
/// a replica promoted, a dataset still loading.
fn is_transient_server_error(err: &redis::RedisError) -> bool {
    matches!(
        err.code(),
        Some("TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN" | "BUSY" | "READONLY")
    )
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<redis::ParsingError> for Error {
    fn from(err: redis::ParsingError) -> Self {
        Error::Command(format!("unexpected reply: {err}"))
    }
}
