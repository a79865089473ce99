//! The one error type of this crate, and the causes it carries.

use std::time::Duration;

/// What went wrong, for callers that want to branch on it.
///
/// New kinds may be added: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration (environment or builder) is invalid.
    Config,
    /// The store could not be reached, or the connection broke.
    Connection,
    /// The call did not finish within its timeout: the handle's, or the
    /// store client's own wait for a reply.
    Timeout,
    /// The circuit breaker is open: the call was not attempted.
    CircuitOpen,
    /// The store answered with an error (wrong type, not an integer, ...).
    Command,
    /// A value could not be encoded.
    Encode,
    /// The store refused the credentials (`WRONGPASS`, `NOAUTH`, a long
    /// command refused before a login) or the ACL user's permissions
    /// (`NOPERM`). Not retried: only a configuration change helps.
    Auth,
    /// An argument is out of range (a TTL over [`MAX_TTL`](crate::MAX_TTL), an
    /// empty prefix, a value over the handle's size cap). Nothing was sent.
    InvalidArgument,
}

/// An error from a [`Cache`](crate::Cache) call or from building one.
///
/// Match on [`kind`](Error::kind) to branch; the variants keep the cause
/// (see [`std::error::Error::source`]) for logs and for callers that want
/// the driver's error itself.
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
    Connection(#[source] StoreError),
    /// The call did not complete within the handle's timeout (or the
    /// deadline given to the call), which is the duration here.
    #[error("cache call timed out after {0:?}")]
    Timeout(Duration),
    /// The store client gave up waiting for a reply (the cluster client's own
    /// response timeout). [`ErrorKind::Timeout`], like [`Error::Timeout`].
    #[error("cache store did not reply in time: {0}")]
    ReplyTimeout(#[source] StoreError),
    /// The circuit breaker is open, so the call was not attempted.
    #[error("cache circuit breaker is open: calls are suspended until the store recovers")]
    CircuitOpen,
    /// The store rejected the command, or answered with something unexpected.
    #[error("cache store rejected the command: {0}")]
    Command(#[source] CommandError),
    /// The value (or a memoized call's key) could not be encoded.
    #[error("could not encode the cache value: {0}")]
    Encode(#[source] EncodeError),
    /// The store refused the credentials or the user's permissions; the
    /// cause is the server's reply, which never holds the password.
    #[error("cache store refused the credentials: {0}")]
    Auth(#[source] StoreError),
    /// An argument is out of range; nothing was sent to the store.
    #[error("invalid cache call: {argument}: {reason}")]
    InvalidArgument {
        /// The argument at fault (`ttl`, `prefix`, `value`, ...).
        argument: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why the store did not carry out a command: the cause of [`Error::Command`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The store's error reply (`WRONGTYPE`, `ERR value is not an integer`, ...).
    #[error("{0}")]
    Rejected(#[source] StoreError),
    /// A reply of another shape than the command's.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(#[source] StoreError),
    /// The key holds something else than an integer, or one out of range
    /// (the in-memory store's answer to an increment; Redis says it in a
    /// [`Rejected`](CommandError::Rejected)).
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// The increment would overflow a 64-bit integer (the in-memory store's
    /// answer; Redis says it in a [`Rejected`](CommandError::Rejected)).
    #[error("increment or decrement would overflow")]
    Overflow,
}

/// What the store's client reported: the cause of [`Error::Connection`],
/// [`Error::ReplyTimeout`], [`Error::Auth`] and [`CommandError`]'s variants.
///
/// Opaque, so that the client library's types stay out of this crate's API:
/// its message (`Display`) and, for an error reply, the server's code.
#[derive(Debug)]
pub struct StoreError(Driver);

#[derive(Debug)]
enum Driver {
    Redis(redis::RedisError),
    Parsing(redis::ParsingError),
    /// A reply of the right type but the wrong shape, found by this crate.
    Shape(&'static str),
}

impl StoreError {
    /// The code of the server's error reply (`WRONGTYPE`, `NOPERM`,
    /// `CLUSTERDOWN`, ...), if the cause is one.
    pub fn code(&self) -> Option<&str> {
        match &self.0 {
            Driver::Redis(err) => err.code(),
            Driver::Parsing(_) | Driver::Shape(_) => None,
        }
    }

    /// A reply whose shape is not what `what` answers.
    pub(crate) fn unexpected(what: &'static str) -> StoreError {
        StoreError(Driver::Shape(what))
    }

    /// The client's error, for this crate's own decisions (retry, login).
    pub(crate) fn redis(&self) -> Option<&redis::RedisError> {
        match &self.0 {
            Driver::Redis(err) => Some(err),
            Driver::Parsing(_) | Driver::Shape(_) => None,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Driver::Redis(err) => err.fmt(f),
            Driver::Parsing(err) => err.fmt(f),
            Driver::Shape(what) => write!(f, "not the reply of {what}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // Transparent: the client's error is this one; what caused it is next.
        match &self.0 {
            Driver::Redis(err) => err.source(),
            Driver::Parsing(err) => err.source(),
            Driver::Shape(_) => None,
        }
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        StoreError(Driver::Redis(err))
    }
}

/// Why a value or a key could not be encoded: the cause of [`Error::Encode`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// `serde_json` refused the value (a map with non-string keys, a
    /// `Serialize` impl that failed, ...).
    #[error("JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// `rmp-serde` refused the value.
    #[cfg(feature = "msgpack")]
    #[error("MessagePack: {0}")]
    MessagePack(#[source] rmp_serde::encode::Error),
    /// The arguments of a memoized call have no canonical (RFC 8785) JSON
    /// form: a NaN or infinite float, a map key that is not a string or an
    /// integer, ... The call runs uncached.
    #[error("arguments have no canonical JSON form: {0}")]
    NotCanonical(#[source] serde_json::Error),
    /// A custom key (`key = ...`) came out empty.
    #[error("the custom key is empty")]
    EmptyKey,
}

/// Why stored bytes are not a value of the expected type in the expected
/// encoding: the error of [`Codec::decode`](crate::Codec::decode). A cache
/// read treats it as a miss.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not JSON, not the expected type, or more than one JSON value.
    #[error("not a JSON value of the expected type: {0}")]
    Json(#[source] serde_json::Error),
    /// Not MessagePack of the expected type.
    #[cfg(feature = "msgpack")]
    #[error("not a MessagePack value of the expected type: {0}")]
    MessagePack(#[source] rmp_serde::decode::Error),
    /// The bytes do not start with this library's MessagePack header
    /// (`0xC1 0x01`): another writer's value, or another layout version.
    #[cfg(feature = "msgpack")]
    #[error("not a MessagePack entry of this library (header 0xC1 0x01 missing)")]
    MissingHeader,
    /// Bytes are left after the value.
    #[error("bytes left after the value")]
    TrailingBytes,
}

impl Error {
    /// The kind of error, to match on.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::Error> {
    /// use std::time::Duration;
    /// use cache_core::{Cache, ErrorKind};
    ///
    /// let cache = Cache::in_memory();
    /// match cache.expire("k", Duration::MAX).await {
    ///     Ok(_) => unreachable!("a TTL over MAX_TTL is refused"),
    ///     Err(err) => match err.kind() {
    ///         ErrorKind::InvalidArgument => { /* a mistake in the call: fix the code */ }
    ///         ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::CircuitOpen => { /* Redis is unwell: degrade */ }
    ///         _ => { /* ErrorKind is non_exhaustive */ }
    ///     },
    /// }
    /// # Ok(()) }
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::Config,
            Error::Connection(_) => ErrorKind::Connection,
            Error::Timeout(_) | Error::ReplyTimeout(_) => ErrorKind::Timeout,
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
            return Error::Auth(err.into());
        }
        if err.is_timeout() {
            // The client's own response timeout (set on cluster connections).
            return Error::ReplyTimeout(err.into());
        }
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
            || is_transient_server_error(&err)
        {
            Error::Connection(err.into())
        } else {
            Error::Command(CommandError::Rejected(err.into()))
        }
    }
}

impl From<redis::ParsingError> for Error {
    fn from(err: redis::ParsingError) -> Self {
        Error::Command(CommandError::UnexpectedReply(StoreError(Driver::Parsing(
            err,
        ))))
    }
}

impl From<CommandError> for Error {
    fn from(err: CommandError) -> Self {
        Error::Command(err)
    }
}

impl From<EncodeError> for Error {
    fn from(err: EncodeError) -> Self {
        Error::Encode(err)
    }
}

/// A refused `AUTH` (at connection set-up) or a command the ACL user may not run.
fn is_auth_error(err: &redis::RedisError) -> bool {
    is_refused_login(err) || err.code() == Some("NOPERM")
}

/// The server refused the connection's login: only a new connection can fix it.
///
/// A connection that has not logged in gets `NOAUTH`, except for a command
/// of more than 10 arguments (or one over 16 KiB, a rate limiter's script
/// call): Redis and Valkey refuse to read it, answer "Protocol error:
/// unauthenticated multibulk length" (or "bulk length") and close the
/// connection. The same missing password.
pub(crate) fn is_refused_login(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH"))
        || (err.code() == Some("ERR")
            && err
                .detail()
                .is_some_and(|detail| detail.starts_with("Protocol error: unauthenticated")))
}

/// Server replies that mean "not now" rather than "never": a cluster in transition,
/// a replica promoted, a dataset still loading.
/// A server's refusal that passes with time or with the cluster's map: the
/// command did not run. (A cluster client with retries follows redirections
/// itself; a counter's, without, passes them on.)
fn is_transient_server_error(err: &redis::RedisError) -> bool {
    matches!(
        err.code(),
        Some(
            "TRYAGAIN"
                | "CLUSTERDOWN"
                | "LOADING"
                | "MASTERDOWN"
                | "BUSY"
                | "READONLY"
                | "MOVED"
                | "ASK"
        )
    )
}

/// The command surely did not run: the connection was refused, the cluster
/// client had none to send it on, or the server refused it without running
/// it. Only then may a command that counts be sent again.
pub(crate) fn surely_not_run(err: &StoreError) -> bool {
    let Some(err) = err.redis() else {
        return false;
    };
    err.is_connection_refusal()
        || err.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || is_transient_server_error(err)
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_timeout_of_the_driver_is_a_timeout() {
        let timeout = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "response timed out",
        ));
        assert!(timeout.is_timeout(), "{timeout:?}");
        let err = Error::from(timeout);
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.is_unavailable());
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn an_unauthenticated_long_command_is_a_refused_login() {
        for detail in [
            "Protocol error: unauthenticated multibulk length",
            "Protocol error: unauthenticated bulk length",
        ] {
            let reply = redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "ERR",
                detail.to_string(),
            ));
            assert!(is_refused_login(&reply), "{reply:?}");
            assert_eq!(Error::from(reply).kind(), ErrorKind::Auth);
        }
        let other = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "ERR",
            "Protocol error: invalid multibulk length".to_string(),
        ));
        assert_eq!(Error::from(other).kind(), ErrorKind::Command);
    }

    #[test]
    fn a_command_error_keeps_the_server_reply_as_its_source() {
        let reply = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        let err = Error::from(reply);
        assert_eq!(err.kind(), ErrorKind::Command, "{err}");
        let Error::Command(CommandError::Rejected(cause)) = &err else {
            panic!("{err:?}");
        };
        assert!(cause.to_string().contains("WRONGTYPE"), "{cause}");
    }
}
