//! [`EntryOptions`]: how one memoized entry is stored and served, for
//! [`Cache::get_or_set`](crate::Cache::get_or_set) and
//! [`Cache::try_get_or_set`](crate::Cache::try_get_or_set). `#[cached]`
//! builds the same value from its attribute.

use std::time::Duration;

use crate::codec::Codec;

/// Values of at least this many bytes are compressed under a bare `compress`.
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 1024;

/// How long a background refresh holds its lease without a `timeout`.
pub const DEFAULT_REFRESH_LEASE: Duration = Duration::from_secs(10);

/// The `prefix` label of the metrics and span of a
/// [`get_or_set`](crate::Cache::get_or_set) call that set no
/// [`label`](EntryOptions::label).
pub const DEFAULT_LABEL: &str = "get_or_set";

/// How [`Cache::get_or_set`](crate::Cache::get_or_set) and
/// [`Cache::try_get_or_set`](crate::Cache::try_get_or_set) store and serve
/// one entry: the options of `#[cached]`, as a value. Start with
/// [`EntryOptions::ttl`] and add to it:
///
/// ```
/// use std::time::Duration;
/// use cache_core::EntryOptions;
///
/// let options = EntryOptions::ttl(Duration::from_secs(60))
///     .stale(Duration::from_secs(300)) // served past ttl while one refresh runs
///     .tags(["user:42"])                // dropped by cache.invalidate_tag("user:42")
///     .lock(Duration::from_secs(5));    // one computation per key across instances
/// # let _ = options;
/// ```
///
/// `stale`, `compress`, `encrypt` and `tags` wrap the entry in the
/// [`envelope`](crate::envelope) and keep it out of the local tier (its
/// freshness and tags are decided at each read); without them the entry is
/// the codec's bytes, as [`Cache::set`](crate::Cache::set) writes them.
/// Cheap to build; build it once and pass it by reference when it does not
/// change from call to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOptions {
    pub(crate) ttl: Duration,
    pub(crate) stale: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) compress_from: Option<usize>,
    pub(crate) encrypt: bool,
    pub(crate) tags: Vec<String>,
    pub(crate) lock: Option<Duration>,
    pub(crate) local: bool,
    pub(crate) codec: Option<Codec>,
    pub(crate) label: &'static str,
}

impl EntryOptions {
    /// Options of an entry that lives `ttl` (at most [`MAX_TTL`](crate::MAX_TTL):
    /// a longer one is not stored, and the value is returned all the same).
    /// A zero `ttl` stores nothing.
    pub const fn ttl(ttl: Duration) -> EntryOptions {
        EntryOptions {
            ttl,
            stale: None,
            timeout: None,
            compress_from: None,
            encrypt: false,
            tags: Vec::new(),
            lock: None,
            local: true,
            codec: None,
            label: DEFAULT_LABEL,
        }
    }

    /// Stale-while-revalidate and fail-safe: for `stale` past its `ttl` a
    /// value is still returned at once while one background refresh per key
    /// (across instances: a lease in the store) computes the next, and it
    /// keeps being returned while the refresh fails. Near the end of `ttl` a
    /// refresh may start early (XFetch), the earlier the slower the value
    /// was to compute. The store keeps the entry `ttl + stale`.
    #[must_use]
    pub const fn stale(mut self, stale: Duration) -> EntryOptions {
        self.stale = Some(stale);
        self
    }

    /// Bounds a background refresh (with [`stale`](Self::stale); nothing to
    /// bound without it): one that takes longer is dropped, the stale value
    /// stays, and its lease lapses after this long so that a later call
    /// tries again. Default: [`DEFAULT_REFRESH_LEASE`].
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> EntryOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Tags of the entry: [`Cache::invalidate_tag`](crate::Cache::invalidate_tag)
    /// of any of them makes it a miss, on every instance, with one write. At
    /// most 255 tags (more: the value is returned, not stored).
    #[must_use]
    pub fn tags<I, S>(mut self, tags: I) -> EntryOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Compresses values of at least [`DEFAULT_COMPRESS_THRESHOLD`] bytes (lz4).
    #[must_use]
    pub const fn compress(self) -> EntryOptions {
        self.compress_from(DEFAULT_COMPRESS_THRESHOLD)
    }

    /// Compresses values of at least `bytes` bytes (lz4).
    #[must_use]
    pub const fn compress_from(mut self, bytes: usize) -> EntryOptions {
        self.compress_from = Some(bytes);
        self
    }

    /// Stores the value as a Fernet token made with the handle's
    /// [`EncryptionKeys`](crate::EncryptionKeys); an entry that is not
    /// encrypted, or that no key authenticates, is a miss. Without keys
    /// nothing is stored (the value is returned all the same).
    #[must_use]
    pub const fn encrypt(mut self) -> EntryOptions {
        self.encrypt = true;
        self
    }

    /// Across instances, one computation per key: a miss takes a lease in
    /// the store for at most `bound` (`SET NX PX`) and computes; the other
    /// instances' misses wait up to `bound` for its value (woken by a
    /// message on the event bus when it is written, with a slow poll
    /// behind it), and compute themselves only when the lease lapses (its
    /// holder died, or took longer than `bound`) or `bound` passes. Within
    /// one instance, concurrent calls of a key share one computation with or
    /// without it. Costs a miss two more round trips (the lease, its
    /// release) and a publish.
    #[must_use]
    pub const fn lock(mut self, bound: Duration) -> EntryOptions {
        self.lock = Some(bound);
        self
    }

    /// `false`: never served from, nor kept in, the handle's local tier
    /// (`#[cached(local = false)]`). Default `true`; entries with `stale`,
    /// `compress`, `encrypt` or `tags` are never kept there either way.
    #[must_use]
    pub const fn local(mut self, local: bool) -> EntryOptions {
        self.local = local;
        self
    }

    /// The value's encoding, for this entry only (default: the handle's).
    #[must_use]
    pub const fn codec(mut self, codec: Codec) -> EntryOptions {
        self.codec = Some(codec);
        self
    }

    /// The `prefix` label of the call's metrics (`cache.memoized.calls`,
    /// `cache.memoized.duration`, `cache.singleflight.joins`) and
    /// `cache.memoized` span. Default [`DEFAULT_LABEL`]; a `&'static str`,
    /// so that a label is never made of a key (one series per key would
    /// grow without bound).
    #[must_use]
    pub const fn label(mut self, label: &'static str) -> EntryOptions {
        self.label = label;
        self
    }

    /// `true` when the entry is wrapped in the envelope (any of `stale`,
    /// `compress`, `encrypt`, `tags`).
    pub(crate) const fn enveloped(&self) -> bool {
        self.stale.is_some()
            || self.compress_from.is_some()
            || self.encrypt
            || !self.tags.is_empty()
    }

    /// Served from, and kept in, the local tier.
    pub(crate) fn uses_local_tier(&self) -> bool {
        self.local && !self.enveloped()
    }
}
