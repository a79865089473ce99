//! The rate-limit header fields every response carries.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::window::{Decision, ceil_seconds};

/// `X-RateLimit-Limit`: the limit per window.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests left in the window.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until the window ends, or the Unix time it
/// ends at with [`ResetFormat::EpochSeconds`].
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (IETF draft): `"<name>";q=<limit>;w=<window s>`, one
/// item per policy of the layer.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft): `"<name>";r=<remaining>;t=<reset s>`, for the
/// policy closest to its limit.
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

/// What `X-RateLimit-Reset` carries. The header has no standard: some APIs
/// send a delay, GitHub sends a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResetFormat {
    /// Seconds until the window ends, rounded up (the default; the same
    /// number as `RateLimit`'s `t=`, and immune to clock skew).
    #[default]
    SecondsUntilReset,
    /// The Unix time (seconds since 1970-01-01 UTC, rounded up) when the
    /// window ends, as GitHub's API sends it.
    EpochSeconds,
}

/// The header values fixed for a layer, rendered once when it is built.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTemplate {
    sets: HeaderSets,
    reset_format: ResetFormat,
    /// Per policy: its name and its limit.
    policies: Vec<(String, HeaderValue)>,
    policy: Option<HeaderValue>,
}

impl HeaderTemplate {
    /// `policies`: (name, limit, window); names must be header-safe tokens
    /// (checked by the builder).
    pub(crate) fn new(
        sets: HeaderSets,
        reset_format: ResetFormat,
        policies: &[(&str, u64, std::time::Duration)],
    ) -> Self {
        let policy = policies
            .iter()
            .map(|(name, limit, window)| {
                format!("\"{name}\";q={limit};w={}", ceil_seconds(*window))
            })
            .collect::<Vec<_>>()
            .join(", ");
        HeaderTemplate {
            sets,
            reset_format,
            policies: policies
                .iter()
                .map(|(name, limit, _)| (name.to_string(), HeaderValue::from(*limit)))
                .collect(),
            policy: HeaderValue::from_str(&policy).ok(),
        }
    }

    /// Writes the enabled header sets for `decision`.
    pub(crate) fn write(&self, headers: &mut HeaderMap, decision: &Decision) {
        let Some((name, limit)) = self.policies.get(decision.policy) else {
            return;
        };
        let reset = decision.reset_seconds();
        headers.reserve(5);
        if self.sets.legacy {
            headers.insert(X_RATELIMIT_LIMIT, limit.clone());
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
            let reset_value = match self.reset_format {
                ResetFormat::SecondsUntilReset => reset,
                ResetFormat::EpochSeconds => epoch_seconds_after(decision.reset_after),
            };
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset_value));
        }
        if self.sets.ietf
            && let Some(policy) = &self.policy
        {
            let mut state = String::with_capacity(name.len() + 48);
            // Writing into a String cannot fail.
            let _ = write!(state, "\"{name}\";r={};t={reset}", decision.remaining);
            if let Ok(state) = HeaderValue::from_maybe_shared(Bytes::from(state)) {
                headers.insert(RATELIMIT_POLICY, policy.clone());
                headers.insert(RATELIMIT, state);
            }
        }
    }
}

/// The Unix time `after` from now, in whole seconds rounded up (a client
/// waiting until then is never early).
fn epoch_seconds_after(after: std::time::Duration) -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ceil_seconds(since_epoch.saturating_add(after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn reset_of(format: ResetFormat, reset_after: Duration) -> u64 {
        let template = HeaderTemplate::new(
            HeaderSets::default(),
            format,
            &[("p", 10, Duration::from_secs(60))],
        );
        let mut headers = HeaderMap::new();
        template.write(&mut headers, &Decision::for_count(3, 10, reset_after));
        headers[X_RATELIMIT_RESET]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn the_reset_header_is_seconds_until_reset_or_epoch_seconds() {
        let after = Duration::from_millis(41_500);
        assert_eq!(reset_of(ResetFormat::SecondsUntilReset, after), 42);
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let epoch = reset_of(ResetFormat::EpochSeconds, after);
        let later = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(epoch >= ceil_seconds(before + after), "{epoch}");
        assert!(epoch <= ceil_seconds(later + after), "{epoch}");
    }
}
