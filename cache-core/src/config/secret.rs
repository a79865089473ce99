//! [`Secret`]: passwords that never show in `Debug`, `Display`, logs or errors.

use std::fmt;

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// let password = cache_core::Secret::new("s3cret");
    /// assert_eq!(format!("{password:?}"), "<redacted>");
    /// assert_eq!(password.expose(), "s3cret");
    /// # Ok(()) }
    /// ```
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
