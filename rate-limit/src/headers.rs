//! The rate-limit header fields every response carries, rendered without
//! an allocation of their own: the fixed values once per layer, the numbers
//! into a per-thread buffer that the values share (see [`Rendered`]).

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
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

/// Which header sets responses carry: the IETF pair, the legacy
/// `X-RateLimit-*` three, both (the default) or none.
///
/// ```
/// use rate_limit::{HeaderSets, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory())
///     .headers(HeaderSets::IETF) // RateLimit-Policy and RateLimit only
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), rate_limit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSets {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    pub legacy: bool,
    /// `RateLimit-Policy` and `RateLimit` (IETF draft).
    pub ietf: bool,
}

impl HeaderSets {
    /// Both sets (the default).
    pub const BOTH: HeaderSets = HeaderSets {
        legacy: true,
        ietf: true,
    };
    /// `RateLimit-Policy` and `RateLimit` only.
    pub const IETF: HeaderSets = HeaderSets {
        legacy: false,
        ietf: true,
    };
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` only.
    pub const LEGACY: HeaderSets = HeaderSets {
        legacy: true,
        ietf: false,
    };
    /// No rate-limit header field (a 429 still carries `Retry-After`).
    pub const NONE: HeaderSets = HeaderSets {
        legacy: false,
        ietf: false,
    };
}

impl Default for HeaderSets {
    fn default() -> Self {
        HeaderSets::BOTH
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
    /// Per policy: its limit, and the start of its `RateLimit` value
    /// (`"<name>";r=`).
    policies: Vec<(HeaderValue, Box<[u8]>)>,
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
                .map(|(name, limit, _)| {
                    let state = format!("\"{name}\";r=").into_bytes().into_boxed_slice();
                    (HeaderValue::from(*limit), state)
                })
                .collect(),
            policy: HeaderValue::from_str(&policy).ok(),
        }
    }

    /// The same template, the policies at `concurrent` (indices into
    /// `policies`, as given to [`new`](Self::new)) being
    /// [concurrency limits](crate::Quota::concurrent): their
    /// `RateLimit-Policy` items say `qu="concurrent-requests"` (the IETF
    /// draft's quota unit for requests in flight) and carry no window.
    pub(crate) fn with_concurrency(
        mut self,
        policies: &[(&str, u64, std::time::Duration)],
        concurrent: &[usize],
    ) -> Self {
        if concurrent.is_empty() {
            return self;
        }
        let policy = policies
            .iter()
            .enumerate()
            .map(|(i, (name, limit, window))| match concurrent.contains(&i) {
                true => format!("\"{name}\";q={limit};qu=\"concurrent-requests\""),
                false => format!("\"{name}\";q={limit};w={}", ceil_seconds(*window)),
            })
            .collect::<Vec<_>>()
            .join(", ");
        self.policy = HeaderValue::from_str(&policy).ok();
        self
    }

    /// Writes the enabled header sets for `decision`.
    pub(crate) fn write(&self, headers: &mut HeaderMap, decision: &Decision) {
        let HeaderSets { legacy, ietf } = self.sets;
        if !legacy && !ietf {
            return;
        }
        let Some((limit, state)) = self.policies.get(decision.policy) else {
            return;
        };
        let reset = decision.reset_seconds();
        // Room for these fields and one more, grown at once while the map
        // holds few: the router adds `content-length` after this layer,
        // which would otherwise grow the map when it is full (a handler's
        // map holds six fields before it grows). `try_reserve`: a map at
        // `http`'s bound of 32 768 fields is left to the inserts below.
        let _ = headers.try_reserve(3 * usize::from(legacy) + 2 * usize::from(ietf) + 1);
        Rendered::with(|rendered| {
            // `RateLimit`'s value holds both numbers: the legacy fields are
            // slices of it, rendered once.
            let numbers = rendered.state(state, decision.remaining, reset);
            if legacy {
                headers.insert(X_RATELIMIT_LIMIT, limit.clone());
                if let Some(remaining) = numbers.remaining() {
                    headers.insert(X_RATELIMIT_REMAINING, remaining);
                }
                let reset = match self.reset_format {
                    ResetFormat::SecondsUntilReset => numbers.reset(),
                    ResetFormat::EpochSeconds => {
                        rendered.value(&[], epoch_seconds_after(decision.reset_after), &[])
                    }
                };
                if let Some(reset) = reset {
                    headers.insert(X_RATELIMIT_RESET, reset);
                }
            }
            if ietf
                && let Some(policy) = &self.policy
                && let Some(state) = numbers.whole()
            {
                headers.insert(RATELIMIT_POLICY, policy.clone());
                headers.insert(RATELIMIT, state);
            }
        });
    }
}

/// `RateLimit`'s value for one response (`"<name>";r=<remaining>;t=<reset>`),
/// and where its two numbers are in it.
struct StateValue {
    value: Bytes,
    remaining: std::ops::Range<usize>,
    reset: std::ops::Range<usize>,
}

impl StateValue {
    /// The whole `RateLimit` value.
    fn whole(&self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.value.clone()).ok()
    }

    /// The remaining requests alone (`X-RateLimit-Remaining`).
    fn remaining(&self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.value.slice(self.remaining.clone())).ok()
    }

    /// The seconds until reset alone (`X-RateLimit-Reset`).
    fn reset(&self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.value.slice(self.reset.clone())).ok()
    }
}

/// `number` as a header value (`Retry-After`), rendered into this thread's
/// buffer.
pub(crate) fn number_value(number: u64) -> HeaderValue {
    Rendered::with(|rendered| rendered.value(&[], number, &[]))
        // Digits are always a valid value.
        .unwrap_or_else(|| HeaderValue::from(number))
}

/// This thread's buffer of rendered header values: each value is a slice
/// of it (a shared, reference-counted buffer), so rendering one allocates
/// nothing; a buffer full enough is left to the values that hold it (freed
/// with the last of them) and a new one taken.
pub(crate) struct Rendered(BytesMut);

/// The buffer's size: about a hundred responses' values.
const RENDERED_BUFFER: usize = 4096;

/// The longest value: a 64-byte policy name in quotes and two 20-digit numbers.
const LONGEST_VALUE: usize = 128;

thread_local! {
    static RENDERED: RefCell<Rendered> = RefCell::new(Rendered(BytesMut::new()));
}

impl Rendered {
    /// Runs `render` with this thread's buffer.
    fn with<T>(render: impl FnOnce(&mut Rendered) -> T) -> T {
        RENDERED.with(|rendered| match rendered.try_borrow_mut() {
            Ok(mut rendered) => render(&mut rendered),
            // Not reentrant; should a header be rendered while one is, it gets
            // a buffer of its own.
            Err(_) => render(&mut Rendered(BytesMut::new())),
        })
    }

    /// `prefix`, `number`, then each (text, number) of `rest`, as one value.
    fn value(&mut self, prefix: &[u8], number: u64, rest: &[(&[u8], u64)]) -> Option<HeaderValue> {
        let buffer = self.room();
        let mut digits = itoa::Buffer::new();
        buffer.put_slice(prefix);
        buffer.put_slice(digits.format(number).as_bytes());
        for (text, number) in rest {
            buffer.put_slice(text);
            buffer.put_slice(digits.format(*number).as_bytes());
        }
        let value: Bytes = buffer.split().freeze();
        HeaderValue::from_maybe_shared(value).ok()
    }

    /// `RateLimit`'s value: `prefix` (`"<name>";r=`), `remaining`, `;t=`,
    /// `reset`.
    fn state(&mut self, prefix: &[u8], remaining: u64, reset: u64) -> StateValue {
        let buffer = self.room();
        let mut digits = itoa::Buffer::new();
        buffer.put_slice(prefix);
        let remaining_at = buffer.len();
        buffer.put_slice(digits.format(remaining).as_bytes());
        let remaining_end = buffer.len();
        buffer.put_slice(b";t=");
        let reset_at = buffer.len();
        buffer.put_slice(digits.format(reset).as_bytes());
        StateValue {
            remaining: remaining_at..remaining_end,
            reset: reset_at..buffer.len(),
            value: buffer.split().freeze(),
        }
    }

    /// The buffer, with room for the longest value.
    fn room(&mut self) -> &mut BytesMut {
        let buffer = &mut self.0;
        if buffer.capacity() - buffer.len() < LONGEST_VALUE {
            *buffer = BytesMut::with_capacity(RENDERED_BUFFER);
        }
        buffer
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

    fn written(sets: HeaderSets, decision: &Decision) -> HeaderMap {
        let template = HeaderTemplate::new(
            sets,
            ResetFormat::default(),
            &[
                ("burst", 10, Duration::from_secs(1)),
                ("hourly", 1000, Duration::from_secs(3600)),
            ],
        );
        let mut headers = HeaderMap::new();
        template.write(&mut headers, decision);
        headers
    }

    #[test]
    fn each_header_set_writes_its_fields_and_none_writes_nothing() {
        let mut decision = Decision::for_count(7, 1000, Duration::from_millis(41_500));
        decision.policy = 1;
        let both = written(HeaderSets::BOTH, &decision);
        assert_eq!(both[X_RATELIMIT_LIMIT], "1000");
        assert_eq!(both[X_RATELIMIT_REMAINING], "993");
        assert_eq!(both[X_RATELIMIT_RESET], "42");
        assert_eq!(
            both[RATELIMIT_POLICY],
            r#""burst";q=10;w=1, "hourly";q=1000;w=3600"#
        );
        assert_eq!(both[RATELIMIT], r#""hourly";r=993;t=42"#);
        assert_eq!(both.len(), 5);
        let ietf = written(HeaderSets::IETF, &decision);
        assert_eq!(ietf.len(), 2);
        assert_eq!(ietf[RATELIMIT], r#""hourly";r=993;t=42"#);
        let legacy = written(HeaderSets::LEGACY, &decision);
        assert_eq!(legacy.len(), 3);
        assert_eq!(legacy[X_RATELIMIT_LIMIT], "1000");
        assert_eq!(legacy[X_RATELIMIT_REMAINING], "993");
        assert_eq!(legacy[X_RATELIMIT_RESET], "42");
        assert!(written(HeaderSets::NONE, &decision).is_empty());
    }

    /// Values rendered one after another share the thread's buffer and stay
    /// what they were when the buffer moves on to a new one.
    #[test]
    fn values_rendered_into_the_shared_buffer_stay_intact() {
        let mut kept = Vec::new();
        for remaining in (0..2_000u64).map(|i| i * 7_919 % 100_003) {
            let mut decision = Decision::for_count(0, 1 << 52, Duration::from_secs(3600));
            decision.remaining = u64::MAX - remaining;
            kept.push((remaining, written(HeaderSets::BOTH, &decision)));
        }
        for (remaining, headers) in kept {
            let number = (u64::MAX - remaining).to_string();
            assert_eq!(headers[X_RATELIMIT_REMAINING], number.as_str());
            assert_eq!(headers[X_RATELIMIT_RESET], "3600");
            assert_eq!(
                headers[RATELIMIT],
                format!(r#""burst";r={number};t=3600"#).as_str()
            );
        }
    }

    /// An RFC 9651 List field as (item string, [(parameter, value)]), the
    /// values rendered as `sfv` shows them; panics if it does not parse.
    fn parsed_list(value: &HeaderValue) -> Vec<(String, Vec<(String, String)>)> {
        let list: sfv::List = sfv::Parser::new(value.as_bytes())
            .parse()
            .unwrap_or_else(|err| panic!("{value:?} is not an RFC 9651 List: {err}"));
        list.into_iter()
            .map(|entry| {
                let sfv::ListEntry::Item(item) = entry else {
                    panic!("an inner list in {value:?}");
                };
                let name = item.bare_item.as_string().expect("a String item").as_str();
                let params = item
                    .params
                    .iter()
                    .map(|(key, value)| {
                        let value = match (value.as_integer(), value.as_string()) {
                            (Some(n), _) => i64::from(n).to_string(),
                            (_, Some(s)) => format!("{:?}", s.as_str()),
                            _ => panic!("{key:?}: neither an Integer nor a String"),
                        };
                        (key.as_str().to_string(), value)
                    })
                    .collect();
                (name.to_string(), params)
            })
            .collect()
    }

    /// `RateLimit-Policy` and `RateLimit` are RFC 9651 Lists of String
    /// items with Integer `q`, `w`, `r`, `t` parameters, and a concurrency
    /// limit's item the String `qu="concurrent-requests"`, no window.
    #[test]
    fn the_ietf_fields_are_rfc_9651_lists_for_rates_and_concurrency() {
        let described = [
            ("burst", 10, Duration::from_secs(1)),
            ("streams", 2, Duration::from_secs(60)),
        ];
        let template = HeaderTemplate::new(HeaderSets::IETF, ResetFormat::default(), &described)
            .with_concurrency(&described, &[1]);
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for policy in [0, 1] {
            let mut decision = Decision::for_count(1, 2, Duration::from_millis(2_500));
            decision.policy = policy;
            let mut headers = HeaderMap::new();
            template.write(&mut headers, &decision);
            assert_eq!(
                parsed_list(&headers[RATELIMIT_POLICY]),
                [
                    ("burst".to_string(), pairs(&[("q", "10"), ("w", "1")])),
                    (
                        "streams".to_string(),
                        pairs(&[("q", "2"), ("qu", "\"concurrent-requests\"")])
                    ),
                ]
            );
            let name = described[policy].0.to_string();
            assert_eq!(
                parsed_list(&headers[RATELIMIT]),
                [(name, pairs(&[("r", "1"), ("t", "3")]))]
            );
        }
    }

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
