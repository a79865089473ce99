//! The rate-limit header fields every response carries.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::window::{Decision, ceil_seconds};

/// `X-RateLimit-Limit`: the limit per window.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests left in the window.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until the window ends.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (IETF draft): `"<name>";q=<limit>;w=<window s>`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft): `"<name>";r=<remaining>;t=<reset s>`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Which header sets responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSets {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    pub legacy: bool,
    /// `RateLimit-Policy` and `RateLimit` (IETF draft).
    pub ietf: bool,
}

impl Default for HeaderSets {
    fn default() -> Self {
        HeaderSets {
            legacy: true,
            ietf: true,
        }
    }
}

/// The header values fixed for a layer, rendered once when it is built.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTemplate {
    sets: HeaderSets,
    name: String,
    limit: HeaderValue,
    policy: Option<HeaderValue>,
}

impl HeaderTemplate {
    /// `name` must be a header-safe token (checked by the builder).
    pub(crate) fn new(
        sets: HeaderSets,
        name: &str,
        limit: u64,
        window: std::time::Duration,
    ) -> Self {
        let policy = format!("\"{name}\";q={limit};w={}", ceil_seconds(window));
        HeaderTemplate {
            sets,
            name: name.to_string(),
            limit: HeaderValue::from(limit),
            policy: HeaderValue::from_str(&policy).ok(),
        }
    }

    /// Writes the enabled header sets for `decision`.
    pub(crate) fn write(&self, headers: &mut HeaderMap, decision: &Decision) {
        let reset = decision.reset_seconds();
        headers.reserve(5);
        if self.sets.legacy {
            headers.insert(X_RATELIMIT_LIMIT, self.limit.clone());
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset));
        }
        if self.sets.ietf
            && let Some(policy) = &self.policy
        {
            let mut state = String::with_capacity(self.name.len() + 48);
            // Writing into a String cannot fail.
            let _ = write!(
                state,
                "\"{}\";r={};t={reset}",
                self.name, decision.remaining
            );
            if let Ok(state) = HeaderValue::from_maybe_shared(Bytes::from(state)) {
                headers.insert(RATELIMIT_POLICY, policy.clone());
                headers.insert(RATELIMIT, state);
            }
        }
    }
}
