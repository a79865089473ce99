//! The rate-limit header fields every response carries.

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

fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// Writes the header sets for `decision` under policy `name` and `window`.
pub(crate) fn write(
    headers: &mut HeaderMap,
    sets: HeaderSets,
    name: &str,
    window: std::time::Duration,
    decision: &Decision,
) {
    let reset = decision.reset_seconds();
    if sets.legacy {
        headers.insert(X_RATELIMIT_LIMIT, number(decision.limit));
        headers.insert(X_RATELIMIT_REMAINING, number(decision.remaining));
        headers.insert(X_RATELIMIT_RESET, number(reset));
    }
    if sets.ietf {
        let policy = format!("\"{name}\";q={};w={}", decision.limit, ceil_seconds(window));
        let state = format!("\"{name}\";r={};t={reset}", decision.remaining);
        // The policy name is validated at build time to be a header-safe token.
        if let (Ok(policy), Ok(state)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, state);
        }
    }
}
