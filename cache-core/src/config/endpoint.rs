//! [`RedisEndpoint`]: one Redis server, parsed from a `redis://` or
//! `rediss://` URL, shown without its password.

use std::fmt;

use super::Secret;
use crate::error::{Error, Result};

/// One Redis server address with its credentials, parsed from a URL or from
/// `REDIS_HOST`-style variables. Its `Display` form hides the password.
///
/// New fields may be added: build one with [`new`](Self::new) or
/// [`parse`](Self::parse), then set the public fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    ///
    /// ```
    /// use cache_core::{Cache, RedisEndpoint, Secret};
    ///
    /// let mut endpoint = RedisEndpoint::new("cache.internal", 6379);
    /// endpoint.password = Some(Secret::new("s3cret"));
    /// let builder = Cache::builder().redis(endpoint);
    /// # let _ = builder;
    /// ```
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
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::RedisEndpoint;
    ///
    /// let endpoint = RedisEndpoint::parse("REDIS_URL", "rediss://app:s3cret@cache.internal:6380/2")?;
    /// assert!(endpoint.tls);
    /// assert_eq!((endpoint.host.as_str(), endpoint.port, endpoint.db), ("cache.internal", 6380, 2));
    /// assert_eq!(endpoint.username.as_deref(), Some("app"));
    /// assert!(!endpoint.to_string().contains("s3cret")); // Display hides the password
    /// # Ok(()) }
    /// ```
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
        let password = url.password().map(decode).transpose()?.map(Secret::new);
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

#[cfg(test)]
mod tests {
    use super::*;

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
