//! Who a request counts against: key extractors.
//!
//! The default is [`PeerIp`]: the TCP peer ([`peer_addr`](crate::peer_addr): axum's
//! `ConnectInfo`, tonic's `TcpConnectInfo`, a plain `SocketAddr`), with
//! one proxy header ([`ForwardedHeader`]) believed only when the peer is a
//! configured trusted proxy, and IPv6 clients grouped by prefix. Every key an extractor returns is
//! checked by the layer: anything longer than [`MAX_KEY_LEN`] or with
//! characters outside `[A-Za-z0-9:._/-]` is replaced by its SHA-256, so no
//! client can steer the Redis key or its size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cache_sync::StateFlag;
use http::{Extensions, HeaderMap, HeaderName, Method, Uri};
use ipnet::IpNet;

use crate::error::{ConfigError, KeyError};

/// Longest client key used as it is; longer keys are hashed.
pub const MAX_KEY_LEN: usize = 128;

/// What an extractor sees of a request.
///
/// Read its fields; build one (in a test or a benchmark of an extractor)
/// with [`RequestInfo::new`]: fields may be added.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (`ConnectInfo`, `MatchedPath`, ...).
    pub extensions: &'a Extensions,
}

impl<'a> RequestInfo<'a> {
    /// What an extractor sees of a request with these parts.
    pub fn new(
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        extensions: &'a Extensions,
    ) -> Self {
        RequestInfo {
            method,
            uri,
            headers,
            extensions,
        }
    }
}

/// Picks the client key of a request. Implemented for [`PeerIp`],
/// [`HeaderKey`], [`RouteAndIp`] and any
/// `Fn(&RequestInfo) -> Result<String, KeyError>` closure.
///
/// ```
/// use rate_limit::{KeyError, KeyExtractor, PeerIp, RequestInfo};
///
/// /// Signed-in users by their id (set by an authentication layer), others by IP.
/// struct UserOrIp(PeerIp);
///
/// struct UserId(u64);
///
/// impl KeyExtractor for UserOrIp {
///     fn extract(&self, request: &RequestInfo<'_>) -> Result<String, KeyError> {
///         match request.extensions.get::<UserId>() {
///             Some(UserId(id)) => Ok(format!("user:{id}")),
///             None => self.0.extract(request),
///         }
///     }
/// }
/// # let _ = UserOrIp(PeerIp::new());
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The client key: requests with the same key share a counter.
    fn extract(&self, request: &RequestInfo<'_>) -> Result<String, KeyError>;
}

impl<F> KeyExtractor for F
where
    F: Fn(&RequestInfo<'_>) -> Result<String, KeyError> + Send + Sync + 'static,
{
    fn extract(&self, request: &RequestInfo<'_>) -> Result<String, KeyError> {
        // Namespaced so a closure's keys never meet the built-in extractors' keys.
        self(request).map(|key| format!("fn:{key}"))
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// No trusted proxy: forwarding headers are ignored.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses CIDRs (`10.0.0.0/8`) or single addresses (`192.0.2.7`).
    /// An empty entry or one that is neither is a [`ConfigError`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use rate_limit::{ErrorKind, TrustedProxies};
    ///
    /// let trusted = TrustedProxies::parse(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])?;
    /// assert!(trusted.contains("10.1.2.3".parse()?));
    /// assert!(trusted.contains("::ffff:192.0.2.7".parse()?)); // IPv4-mapped IPv6 is IPv4
    /// assert!(!trusted.contains("203.0.113.9".parse()?));
    /// assert_eq!(TrustedProxies::parse(["10.0.0.0/33"]).unwrap_err().kind(), ErrorKind::Config);
    /// # Ok(()) }
    /// ```
    pub fn parse<I, S>(cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut networks = Vec::new();
        for cidr in cidrs {
            let text = cidr.as_ref().trim();
            if text.is_empty() {
                return Err(ConfigError::EmptyTrustedProxy);
            }
            let network = match text.parse::<IpNet>() {
                Ok(network) => network,
                Err(source) => text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    ConfigError::TrustedProxy {
                        entry: text.to_string(),
                        source,
                    }
                })?,
            };
            networks.push(network);
        }
        Ok(TrustedProxies { networks })
    }

    /// `true` when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// `true` when `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Which header a trusted proxy gives the client's address in. Exactly one
/// is read: a request carrying another one too (a client can send any
/// header) is judged by this one alone, so the headers are never combined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default): appended to
    /// by nginx (`$proxy_add_x_forwarded_for`), AWS ALB, Google Cloud load
    /// balancers, Envoy, Traefik, Caddy.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239): HAProxy's
    /// `option forwarded`, and proxies configured to write only it.
    Forwarded,
    /// One header holding one address, which the proxy sets (replacing what
    /// the client sent): `X-Real-IP` (nginx `proxy_set_header`),
    /// `CF-Connecting-IP` (Cloudflare), `True-Client-IP`, `Fly-Client-IP`.
    Single(HeaderName),
}

/// The key [`PeerIp`] gives requests whose trusted proxy did not give the
/// client's address ([`KeyError::UnidentifiedClient`]): one shared bucket,
/// apart from every client and from the proxy's own address.
pub const UNIDENTIFIED_KEY: &str = "ip:unidentified";

/// The client IP: the TCP peer, or, when the peer is a trusted proxy, the
/// address its [`ForwardedHeader`] gives: for `X-Forwarded-For` and
/// `Forwarded`, the rightmost element that is not a trusted proxy. IPv6
/// addresses are grouped by prefix (/56 by default), since one customer
/// usually holds a whole /56 or /64 and could rotate through it.
///
/// The header is read element by element from its right end, where the
/// proxies append: a client's own garbage (non-ASCII bytes, an unterminated
/// quote) to the left of what they appended changes nothing. In `Forwarded`,
/// quoted strings are data (RFC 7239, `\` escapes included): a `,` `;` or
/// `=` that a client slipped into a quoted value (its `Host`, which a proxy
/// copies into `host="..."`) starts no element or parameter. An element a
/// trusted proxy wrote malformed (`for` twice, a quote left open) is
/// unusable, as below. What cannot be told:
///
/// - the configured header is missing from a trusted proxy's request: the
///   proxy is the client (a health check, an internal call); a warning is
///   logged once, since a proxy writing another header than the one
///   configured would otherwise fold every client into its bucket;
/// - the element where the client should be is `unknown`, obfuscated
///   (`for=_hidden`) or not an address, or the single-address header is
///   repeated or holds a list: the request counts against the shared
///   [`UNIDENTIFIED_KEY`] bucket, and a warning is logged once. Such a
///   client never lands in another client's bucket (or the proxy's), and a
///   client can only reach the shared bucket through a proxy that writes it
///   so: a proxy that appends the real address hides anything a client sent.
#[derive(Debug, Clone)]
pub struct PeerIp {
    trusted: TrustedProxies,
    header: ForwardedHeader,
    ipv6_prefix: u8,
    warned: Arc<Warnings>,
}

/// Misconfigurations already logged by one extractor (and its clones).
#[derive(Debug, Default)]
struct Warnings {
    missing_header: StateFlag,
    unidentified: StateFlag,
}

impl Default for PeerIp {
    fn default() -> Self {
        PeerIp {
            trusted: TrustedProxies::none(),
            header: ForwardedHeader::default(),
            ipv6_prefix: 56,
            warned: Arc::default(),
        }
    }
}

/// What the proxy header says about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarded {
    /// The header is not there.
    Absent,
    /// The client's address.
    Client(IpAddr),
    /// The header is there, but the client's place in it is unusable.
    Unidentified,
}

impl PeerIp {
    /// Peer IP, no trusted proxy, IPv6 grouped by /56.
    pub fn new() -> Self {
        Self::default()
    }

    /// Believes the proxy header from these proxies.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// The header trusted proxies give the client's address in (default
    /// [`ForwardedHeader::XForwardedFor`]); no other is read.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by this prefix length (0 to 128; 128 = per address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// The client address of a request: see the type's documentation for
    /// [`KeyError::UnidentifiedClient`].
    pub fn client_ip(&self, request: &RequestInfo<'_>) -> Result<IpAddr, KeyError> {
        let peer = crate::peer::peer_addr(request.extensions)
            .map(|addr| canonical(addr.ip()))
            .ok_or(KeyError::MissingConnectInfo)?;
        if self.trusted.is_empty() || !self.trusted.contains(peer) {
            return Ok(peer);
        }
        let forwarded = match &self.header {
            ForwardedHeader::XForwardedFor => self.walk(x_forwarded_for(request.headers)),
            ForwardedHeader::Forwarded => self.walk(forwarded_for(request.headers)),
            ForwardedHeader::Single(name) => single_address(request.headers, name),
        };
        match forwarded {
            Forwarded::Client(ip) => Ok(canonical(ip)),
            Forwarded::Absent => {
                if self.warned.missing_header.raise() {
                    tracing::warn!(
                        proxy = %peer,
                        header = self.header_name(),
                        "a request from a trusted proxy has no client address header: \
                         counted as the proxy itself; if the proxy writes another header, \
                         configure it with `forwarded_header`"
                    );
                }
                Ok(peer)
            }
            Forwarded::Unidentified => Err(KeyError::UnidentifiedClient),
        }
    }

    fn header_name(&self) -> &str {
        match &self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
            ForwardedHeader::Single(name) => name.as_str(),
        }
    }

    /// From the nearest hop leftwards: the first address that is not a
    /// trusted proxy is the client; an unusable element there means the
    /// client is unknown (what is left of it was written by the client or
    /// its side, so it proves nothing). All trusted: the leftmost.
    /// `hops` are nearest first, and only read as far as the walk goes.
    fn walk(&self, hops: impl Iterator<Item = Option<IpAddr>>) -> Forwarded {
        let mut client = Forwarded::Absent;
        for hop in hops {
            match hop {
                Some(ip) => {
                    let ip = canonical(ip);
                    client = Forwarded::Client(ip);
                    if !self.trusted.contains(ip) {
                        break;
                    }
                }
                None => return Forwarded::Unidentified,
            }
        }
        client
    }

    /// The key of an address: IPv4 as is, IPv6 masked to the prefix.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use rate_limit::PeerIp;
    ///
    /// let peer = PeerIp::new(); // IPv6 grouped by /56
    /// assert_eq!(peer.key_of("203.0.113.9".parse()?), "ip:203.0.113.9");
    /// // Two addresses of one customer's /56 share a bucket.
    /// assert_eq!(peer.key_of("2001:db8:0:1::1".parse()?), peer.key_of("2001:db8:0:ff::2".parse()?));
    /// assert_ne!(PeerIp::new().ipv6_prefix(128).key_of("2001:db8::1".parse()?), PeerIp::new().ipv6_prefix(128).key_of("2001:db8::2".parse()?));
    /// # Ok(()) }
    /// ```
    pub fn key_of(&self, ip: IpAddr) -> String {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                // "ip:" and the dotted quad, written directly: `format!` and
                // the address' `Display` (which renders into a buffer of its
                // own for padding) were a third of the key's cost.
                let mut key = String::with_capacity(18);
                key.push_str("ip:");
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        key.push('.');
                    }
                    if octet >= 100 {
                        key.push(char::from(b'0' + octet / 100));
                    }
                    if octet >= 10 {
                        key.push(char::from(b'0' + octet / 10 % 10));
                    }
                    key.push(char::from(b'0' + octet % 10));
                }
                key
            }
            IpAddr::V6(v6) => {
                let bits = self.ipv6_prefix.min(128);
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(bits))
                };
                let network = Ipv6Addr::from(u128::from(v6) & mask);
                format!("ip:{network}/{bits}")
            }
        }
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, request: &RequestInfo<'_>) -> Result<String, KeyError> {
        match self.client_ip(request) {
            Ok(ip) => Ok(self.key_of(ip)),
            Err(KeyError::UnidentifiedClient) => {
                if self.warned.unidentified.raise() {
                    tracing::warn!(
                        header = self.header_name(),
                        "a trusted proxy forwarded a request without a usable client address \
                         (`unknown`, obfuscated or not an address): such requests share the \
                         `ip:unidentified` bucket"
                    );
                }
                Ok(UNIDENTIFIED_KEY.to_string())
            }
            Err(err) => Err(err),
        }
    }
}

/// The elements of every `X-Forwarded-For` line, nearest first (right to
/// left, last line first); `None` for one that is not an address. Nothing
/// when there is no such header.
///
/// Split on the raw bytes, at every `,`: the header has no quoting (a `"` is
/// just a byte of a malformed element), and a non-ASCII byte spoils its own
/// element only, so what a client put there cannot hide or change the
/// address its proxy appended.
fn x_forwarded_for(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    // A constant name: a `&str` would be parsed into a name per request.
    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        // Empty list elements are allowed by RFC 9110 and mean nothing.
        .filter(|element| !element.is_empty())
        .map(|element| match dotted_quad(element) {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => std::str::from_utf8(element).ok().and_then(parse_node),
        })
}

/// A plain IPv4 address (`192.0.2.1`) read from bytes, as the standard
/// parser reads it (four parts of 1 to 3 digits, no leading zero, at most
/// 255); `None` for anything else, which goes to [`parse_node`]. The
/// common element of a forwarded list, without a UTF-8 check and the
/// general parser's work per request.
fn dotted_quad(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    // The part being read: its index, value and digits so far.
    let (mut part, mut value, mut digits) = (0, 0u16, 0);
    for &byte in text {
        match byte {
            b'0'..=b'9' => {
                // A fourth digit, or a digit after a leading zero.
                if digits == 3 || (digits == 1 && value == 0) {
                    return None;
                }
                value = value * 10 + u16::from(byte - b'0');
                digits += 1;
            }
            b'.' if digits > 0 && part < 3 => {
                *octets.get_mut(part)? = u8::try_from(value).ok()?;
                (part, value, digits) = (part + 1, 0, 0);
            }
            _ => return None,
        }
    }
    if part != 3 || digits == 0 {
        return None;
    }
    octets[3] = u8::try_from(value).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// The `for=` nodes of every `Forwarded` element (RFC 7239), nearest first
/// (right to left, last line first); `None` for an element without a usable
/// one (`unknown`, an obfuscated `_name`, no `for`, not an address) or that
/// is malformed. Nothing when there is no such header.
fn forwarded_for(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .rev()
        .flat_map(|line| ForwardedNodes {
            rest: Some(line.as_bytes()),
        })
}

/// The `for=` nodes of one `Forwarded` line, read from its right end.
///
/// Values are tokens or quoted strings (with `\` escapes): a `,` `;` or `=`
/// inside quotes is data, so a client's text that a proxy quotes (its
/// `Host` in `host="..."`) cannot start an element or a parameter of its
/// own. Read from the right because the elements the walk relies on are the
/// trusted proxies' own, appended on the right: a client's malformed text on
/// the left (an unterminated `"`, a stray `\`) is reached only after them,
/// so it cannot swallow them, as it would in a left-to-right reading.
///
/// One pass over the bytes, nothing allocated.
struct ForwardedNodes<'a> {
    /// What is left of the line to read; `None` once it is read, or once it
    /// can no longer be split into elements.
    rest: Option<&'a [u8]>,
}

impl Iterator for ForwardedNodes<'_> {
    type Item = Option<IpAddr>;

    fn next(&mut self) -> Option<Option<IpAddr>> {
        let line = self.rest?;
        let mut element = Element::default();
        let mut pair = Pair::ending_at(line.len());
        let mut at = line.len();
        loop {
            // Only these bytes mean anything outside quotes: skip to the next.
            let next = line[..at]
                .iter()
                .rposition(|&b| matches!(b, b'"' | b'=' | b';' | b','));
            let byte = next.map(|next| {
                at = next;
                line[next]
            });
            match byte {
                Some(b'"') => {
                    let Some(open) = opening_quote(line, at) else {
                        // A quote with no opening: where the elements left
                        // of it start cannot be told. This one is unusable,
                        // and the walk reads no further than that.
                        self.rest = None;
                        return Some(None);
                    };
                    pair.quoted(open, at);
                    at = open;
                }
                Some(b';') => {
                    element.add(line, &pair, at + 1);
                    pair = Pair::ending_at(at);
                }
                Some(b',') | None => {
                    let start = if byte.is_some() { at + 1 } else { 0 };
                    element.add(line, &pair, start);
                    self.rest = byte.map(|_| &line[..at]);
                    // Empty list elements are allowed by RFC 9110 and mean nothing.
                    if !element.empty {
                        return Some(element.node());
                    }
                    self.rest?;
                    element = Element::default();
                    pair = Pair::ending_at(at);
                }
                // `=`, the only other byte the search stops at.
                Some(_) => pair.equals = Some(at),
            }
        }
    }
}

/// What the right-to-left scan saw of one `name=value` pair.
struct Pair {
    /// Where it ends (its `;` or `,`, or the line's end).
    end: usize,
    /// The leftmost `=` outside quotes.
    equals: Option<usize>,
    /// Quoted strings in it.
    quotes: u32,
    /// The leftmost quoted string (opening and closing `"`).
    first: (usize, usize),
}

impl Pair {
    fn ending_at(end: usize) -> Self {
        Pair {
            end,
            equals: None,
            quotes: 0,
            first: (0, 0),
        }
    }

    fn quoted(&mut self, open: usize, close: usize) {
        self.quotes = self.quotes.saturating_add(1);
        self.first = (open, close);
    }
}

/// One element's `for` node so far, read pair by pair.
struct Element<'a> {
    /// No pair yet but empty ones.
    empty: bool,
    /// A malformed pair, or `for` twice.
    malformed: bool,
    node: Option<ParamValue<'a>>,
}

impl<'a> Element<'a> {
    /// Adds the pair from `start` on (RFC 7239 allows empty pairs: `a=b;;c=d`).
    /// Malformed: no `=`, a quote in the name, a value that is neither a
    /// token nor one quoted string, `for` twice (RFC 7239 allows each
    /// parameter once; a second can only come from a client's text a proxy
    /// copied unquoted).
    fn add(&mut self, line: &'a [u8], pair: &Pair, start: usize) {
        let (start, end) = trimmed(line, start, pair.end);
        if start == end {
            return;
        }
        self.empty = false;
        let Some(equals) = pair.equals else {
            self.malformed = true;
            return;
        };
        let (value_start, value_end) = trimmed(line, equals + 1, end);
        let value = match pair.quotes {
            0 => ParamValue::Plain(&line[value_start..value_end]),
            1 if pair.first == (value_start, value_end - 1) => {
                ParamValue::Quoted(&line[value_start + 1..value_end - 1])
            }
            _ => {
                self.malformed = true;
                return;
            }
        };
        if line[start..equals]
            .trim_ascii()
            .eq_ignore_ascii_case(b"for")
        {
            self.malformed |= self.node.is_some();
            self.node = Some(value);
        }
    }

    fn node(&self) -> Option<IpAddr> {
        if self.malformed {
            return None;
        }
        self.node?.address()
    }
}

impl Default for Element<'_> {
    fn default() -> Self {
        Element {
            empty: true,
            malformed: false,
            node: None,
        }
    }
}

/// `line[start..end]` without the whitespace at both ends, as a range.
fn trimmed(line: &[u8], start: usize, end: usize) -> (usize, usize) {
    let text = &line[start..end];
    let leading = text.len() - text.trim_ascii_start().len();
    let trailing = text.len() - text.trim_ascii_end().len();
    if leading == text.len() {
        return (start, start);
    }
    (start + leading, end - trailing)
}

/// Where the quoted string that ends with the `"` at `close` begins: the
/// nearest `"` left of it that is not escaped. `None` when there is none, or
/// when `close` is itself escaped (a `\"` outside a quoted string).
fn opening_quote(text: &[u8], close: usize) -> Option<usize> {
    if escaped(text, close) {
        return None;
    }
    let mut end = close;
    loop {
        let at = text[..end].iter().rposition(|&b| b == b'"')?;
        if !escaped(text, at) {
            return Some(at);
        }
        end = at;
    }
}

/// Whether the byte at `at` is escaped: an odd run of `\` right before it.
/// Inside a quoted string every `\` starts a pair, and the byte before the
/// run is no `\`, so the run is read in pairs from its start.
fn escaped(text: &[u8], at: usize) -> bool {
    text[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// A parameter's value: a token, or the inside of a quoted string.
#[derive(Debug, Clone, Copy)]
enum ParamValue<'a> {
    /// As written (a token, or what proxies write unquoted though it is no
    /// token: `for=192.0.2.1:443`).
    Plain(&'a [u8]),
    /// Between the quotes, escapes not yet removed.
    Quoted(&'a [u8]),
}

/// Longest address with a port a quoted `for` value holds once unescaped
/// (`[ffff:...:255.255.255.255]:65535` is 53 bytes); longer is no address.
const MAX_NODE_LEN: usize = 64;

impl ParamValue<'_> {
    /// The address it names, unescaped first when quoted (in a buffer on
    /// the stack: nothing is allocated).
    fn address(self) -> Option<IpAddr> {
        let text = match self {
            ParamValue::Plain(text) => text,
            ParamValue::Quoted(inner) if !inner.contains(&b'\\') => inner,
            ParamValue::Quoted(inner) => {
                let mut buffer = [0u8; MAX_NODE_LEN];
                let mut len = 0;
                let mut bytes = inner.iter();
                while let Some(&b) = bytes.next() {
                    // The closing quote was not escaped: a `\` is followed by a byte.
                    let b = if b == b'\\' { *bytes.next()? } else { b };
                    *buffer.get_mut(len)? = b;
                    len += 1;
                }
                return parse_node(std::str::from_utf8(&buffer[..len]).ok()?);
            }
        };
        parse_node(std::str::from_utf8(text).ok()?)
    }
}

/// A header holding one address, set by the proxy.
fn single_address(headers: &HeaderMap, name: &HeaderName) -> Forwarded {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Forwarded::Absent;
    };
    // Two lines or a list: the proxy appended instead of replacing, and the
    // client wrote the other one. Which is which cannot be told.
    if values.next().is_some() {
        return Forwarded::Unidentified;
    }
    value
        .to_str()
        .ok()
        .and_then(|text| parse_node(text.trim()))
        .map_or(Forwarded::Unidentified, Forwarded::Client)
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:443`,
/// `[2001:db8::1]:443`, `[2001:db8::1]`, `2001:db8::1`. The port may be
/// obfuscated (`:_port`). `unknown` and obfuscated names (`_hidden`) are not
/// addresses.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    // IPv4 with a port: exactly one colon.
    let (host, _port) = text.split_once(':')?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A header's value (an API key, a tenant id), hashed so the raw secret
/// never becomes a Redis key; requests without it fall back to the peer IP.
///
/// **The header is not authenticated here.** Whatever a client sends is its
/// key, so a client can rotate values to get a fresh budget with every
/// request, or send someone else's key to spend that budget. Use it only
/// behind something that rejects unknown keys before this layer counts (an
/// authentication layer outside it), or stack it with a per-IP layer
/// ([`PeerIp`]) that bounds what any one address can do.
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: http::HeaderName,
    fallback: PeerIp,
}

impl HeaderKey {
    /// Keys by the header `name`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use rate_limit::{HeaderKey, PeerIp, RateLimitLayer, TrustedProxies};
    ///
    /// // Per API key, behind an authentication layer that rejects unknown keys.
    /// let per_key = HeaderKey::new(http::HeaderName::from_static("x-api-key"))
    ///     .fallback(PeerIp::new().trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"])?));
    /// let layer = RateLimitLayer::builder(cache_core::Cache::in_memory()).key_extractor(per_key).build()?;
    /// # let _ = layer;
    /// # Ok(()) }
    /// ```
    pub fn new(name: http::HeaderName) -> Self {
        HeaderKey {
            name,
            fallback: PeerIp::new(),
        }
    }

    /// How to key requests without the header.
    pub fn fallback(mut self, fallback: PeerIp) -> Self {
        self.fallback = fallback;
        self
    }
}

impl KeyExtractor for HeaderKey {
    fn extract(&self, request: &RequestInfo<'_>) -> Result<String, KeyError> {
        match request.headers.get(&self.name) {
            Some(value) if !value.is_empty() => Ok(format!(
                "{}:{}",
                self.name.as_str(),
                &cache_core::sha256_hex(value.as_bytes())[..32]
            )),
            _ => self.fallback.extract(request),
        }
    }
}

/// Per route and client IP: each endpoint (method and route) has its own
/// budget per client, keyed by axum's matched route template (`/users/{id}`),
/// so that `/users/1` and `/users/2` share one budget; the route is hashed.
/// `HEAD` counts as `GET`, since axum answers it with the `GET` handler.
///
/// The template comes from axum's `MatchedPath`, which axum sets for layers
/// added inside a `Router` (`Router::route_layer` or `Router::layer`). A
/// request without one (no route matched it, or the layer wraps the whole
/// service from outside the `Router`) is never keyed by its raw path, which
/// would give every distinct URL (`/users/0`, `/users/1`, ...) a budget of its
/// own: all such requests of a client share one budget, [`UNMATCHED_ROUTE`].
/// With `Router::route_layer`, requests no route matches never reach the layer.
#[derive(Debug, Clone, Default)]
pub struct RouteAndIp {
    ip: PeerIp,
}

impl RouteAndIp {
    /// Route and peer IP with the given IP settings.
    pub fn new(ip: PeerIp) -> Self {
        RouteAndIp { ip }
    }
}

/// The route [`RouteAndIp`] uses for requests without axum's `MatchedPath`.
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl KeyExtractor for RouteAndIp {
    fn extract(&self, request: &RequestInfo<'_>) -> Result<String, KeyError> {
        let route = request
            .extensions
            .get::<axum::extract::MatchedPath>()
            .map_or(UNMATCHED_ROUTE, |path| path.as_str());
        // axum answers HEAD with the GET handler: one endpoint, one budget.
        let method = if request.method == Method::HEAD {
            &Method::GET
        } else {
            request.method
        };
        let route = format!("{method} {route}");
        Ok(format!(
            "route:{}:{}",
            &cache_core::sha256_hex(route.as_bytes())[..16],
            self.ip.extract(request)?
        ))
    }
}

/// The key as used in Redis: itself when short and plain, else its hash.
pub(crate) fn sanitize(key: String) -> String {
    let plain = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| PLAIN_KEY_BYTES[usize::from(b)]);
    if plain {
        key
    } else {
        format!("sha256:{}", cache_core::sha256_hex(key.as_bytes()))
    }
}

/// The bytes a key is used with as is (`A-Z a-z 0-9 : . _ / -`), one
/// lookup per byte: every request's key is checked.
const PLAIN_KEY_BYTES: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        plain[b] = byte.is_ascii_alphanumeric() || matches!(byte, b':' | b'.' | b'_' | b'/' | b'-');
        b += 1;
    }
    plain
};

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;

    use super::*;

    #[test]
    fn an_ipv4_key_is_the_dotted_quad() {
        let peer = PeerIp::new();
        for octet in 0..=255u8 {
            let ip = std::net::Ipv4Addr::new(octet, 0, 255 - octet, octet / 3);
            assert_eq!(peer.key_of(IpAddr::V4(ip)), format!("ip:{ip}"));
        }
    }

    #[test]
    fn trusted_proxies_parse_errors_are_typed() {
        assert_eq!(
            TrustedProxies::parse(["10.0.0.0/8", " "]),
            Err(ConfigError::EmptyTrustedProxy)
        );
        let err = TrustedProxies::parse(["proxy.local"]).unwrap_err();
        assert!(matches!(&err, ConfigError::TrustedProxy { entry, .. } if entry == "proxy.local"));
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn a_custom_reason_keeps_its_source() {
        let parse = "x".parse::<u32>().unwrap_err();
        let err = KeyError::other(parse.clone());
        assert_eq!(err.to_string(), parse.to_string());
        let KeyError::Other(inner) = &err else {
            panic!("{err:?}");
        };
        assert!(inner.downcast_ref::<std::num::ParseIntError>().is_some());
        assert_eq!(KeyError::other("no tenant").to_string(), "no tenant");
    }

    fn request_from(peer: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap, Extensions) {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        request_with_bytes(peer, &headers)
    }

    fn request_with_bytes(
        peer: &str,
        headers: &[(&str, &[u8])],
    ) -> (Method, Uri, HeaderMap, Extensions) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        (Method::GET, Uri::from_static("/x"), map, extensions)
    }

    fn key(extractor: &impl KeyExtractor, peer: &str, headers: &[(&str, &str)]) -> String {
        keyed(extractor, request_from(peer, headers))
    }

    fn keyed(
        extractor: &impl KeyExtractor,
        (method, uri, headers, extensions): (Method, Uri, HeaderMap, Extensions),
    ) -> String {
        extractor
            .extract(&RequestInfo {
                method: &method,
                uri: &uri,
                headers: &headers,
                extensions: &extensions,
            })
            .unwrap()
    }

    #[test]
    fn forwarding_headers_are_ignored_without_trusted_proxies() {
        let ip = PeerIp::new();
        assert_eq!(
            key(&ip, "203.0.113.9:5000", &[("x-forwarded-for", "1.2.3.4")]),
            "ip:203.0.113.9"
        );
        assert_eq!(
            key(&ip, "203.0.113.9:5000", &[("forwarded", "for=1.2.3.4")]),
            "ip:203.0.113.9"
        );
    }

    fn behind(header: ForwardedHeader) -> PeerIp {
        PeerIp::new()
            .trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).unwrap())
            .forwarded_header(header)
    }

    #[test]
    fn forwarding_headers_from_a_trusted_proxy_give_the_rightmost_untrusted_address() {
        let ip = behind(ForwardedHeader::XForwardedFor);
        // The client spoofed 6.6.6.6; the proxy 10.0.0.2 appended the real 198.51.100.4.
        let xff = [("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.0.0.2")];
        assert_eq!(key(&ip, "10.0.0.1:5000", &xff), "ip:198.51.100.4");
        // The same chain over several header lines, with ports and IPv6.
        let lines = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.4:5123, 10.0.0.2"),
        ];
        assert_eq!(key(&ip, "10.0.0.1:5000", &lines), "ip:198.51.100.4");
        let v6 = [("x-forwarded-for", "[2001:db8::1]:443")];
        assert_eq!(key(&ip, "10.0.0.1:5000", &v6), "ip:2001:db8::/56");
        let forwarded = behind(ForwardedHeader::Forwarded);
        let chain = [(
            "forwarded",
            r#"for=6.6.6.6, For="198.51.100.4:443";proto=https, for=10.0.0.2"#,
        )];
        assert_eq!(key(&forwarded, "10.0.0.1:5000", &chain), "ip:198.51.100.4");
        let v6 = [("forwarded", r#"for="[2001:db8::1]:_port";by=_lb"#)];
        assert_eq!(key(&forwarded, "10.0.0.1:5000", &v6), "ip:2001:db8::/56");
        // An untrusted peer's headers are ignored.
        assert_eq!(key(&ip, "192.0.2.1:5000", &xff), "ip:192.0.2.1");
        // All hops trusted: the leftmost is the client.
        let internal = [("x-forwarded-for", "10.9.9.9, 10.0.0.2")];
        assert_eq!(key(&ip, "10.0.0.1:5000", &internal), "ip:10.9.9.9");
    }

    #[test]
    fn only_the_configured_header_is_read() {
        // Behind a proxy that writes only `Forwarded`, a client's own
        // X-Forwarded-For picks nothing, rotating or naming a victim.
        let forwarded = behind(ForwardedHeader::Forwarded);
        let spoofed = [
            ("x-forwarded-for", "203.0.113.66"),
            ("forwarded", "for=198.51.100.4"),
        ];
        assert_eq!(key(&forwarded, "10.0.0.1:1", &spoofed), "ip:198.51.100.4");
        // And the other way round.
        let xff = behind(ForwardedHeader::XForwardedFor);
        let spoofed = [
            ("forwarded", "for=203.0.113.66"),
            ("x-forwarded-for", "198.51.100.4"),
        ];
        assert_eq!(key(&xff, "10.0.0.1:1", &spoofed), "ip:198.51.100.4");
        // A single-address header: only it.
        let real_ip = behind(ForwardedHeader::Single(HeaderName::from_static(
            "x-real-ip",
        )));
        let headers = [
            ("x-forwarded-for", "203.0.113.66"),
            ("x-real-ip", "198.51.100.4"),
        ];
        assert_eq!(key(&real_ip, "10.0.0.1:1", &headers), "ip:198.51.100.4");
        // Without the configured header, the trusted peer is the client.
        assert_eq!(
            key(&real_ip, "10.0.0.1:1", &[("x-forwarded-for", "1.2.3.4")]),
            "ip:10.0.0.1"
        );
    }

    #[test]
    fn a_client_element_the_proxy_does_not_give_is_unidentified_not_the_proxy() {
        let xff = behind(ForwardedHeader::XForwardedFor);
        let forwarded = behind(ForwardedHeader::Forwarded);
        for value in [
            "nonsense",
            "unknown",
            "_hidden",
            "1.2.3.4, unknown, 10.0.0.2",
        ] {
            assert_eq!(
                key(&xff, "10.0.0.1:1", &[("x-forwarded-for", value)]),
                UNIDENTIFIED_KEY,
                "{value}"
            );
        }
        for value in [
            "for=unknown",
            "for=_hidden",
            r#"for="_hidden:_port""#,
            "for=1.2.3.4, proto=https",
            "for=1.2.3.4, for=",
            "for=1.2.3.4, for=unknown;by=10.0.0.2",
        ] {
            assert_eq!(
                key(&forwarded, "10.0.0.1:1", &[("forwarded", value)]),
                UNIDENTIFIED_KEY,
                "{value}"
            );
        }
        let real_ip = behind(ForwardedHeader::Single(HeaderName::from_static(
            "x-real-ip",
        )));
        for headers in [
            &[("x-real-ip", "unknown")][..],
            &[("x-real-ip", "1.2.3.4, 198.51.100.4")][..],
            &[("x-real-ip", "1.2.3.4"), ("x-real-ip", "198.51.100.4")][..],
        ] {
            assert_eq!(
                key(&real_ip, "10.0.0.1:1", headers),
                UNIDENTIFIED_KEY,
                "{headers:?}"
            );
        }
        // `client_ip` says why.
        let (method, uri, headers, extensions) =
            request_from("10.0.0.1:1", &[("x-forwarded-for", "unknown")]);
        let info = RequestInfo {
            method: &method,
            uri: &uri,
            headers: &headers,
            extensions: &extensions,
        };
        assert!(matches!(
            xff.client_ip(&info),
            Err(KeyError::UnidentifiedClient)
        ));
    }

    #[test]
    fn a_clients_garbage_left_of_the_proxys_element_changes_nothing() {
        let xff = behind(ForwardedHeader::XForwardedFor);
        let forwarded = behind(ForwardedHeader::Forwarded);
        // Non-ASCII bytes in the client's part of the same line.
        let request = request_with_bytes(
            "10.0.0.1:1",
            &[("x-forwarded-for", b"\xff\xfe caf\xc3\xa9, 198.51.100.4")],
        );
        assert_eq!(keyed(&xff, request), "ip:198.51.100.4");
        let request = request_with_bytes(
            "10.0.0.1:1",
            &[("forwarded", b"for=\"\xff\", for=198.51.100.4")],
        );
        assert_eq!(keyed(&forwarded, request), "ip:198.51.100.4");
        // An obfuscated or unknown element the client wrote, and an unterminated quote.
        for value in [
            "for=_hidden, for=198.51.100.4",
            "for=unknown, for=198.51.100.4",
            r#"for="1.2.3.4, for=198.51.100.4"#,
        ] {
            assert_eq!(
                key(&forwarded, "10.0.0.1:1", &[("forwarded", value)]),
                "ip:198.51.100.4",
                "{value}"
            );
        }
        assert_eq!(
            key(
                &xff,
                "10.0.0.1:1",
                &[("x-forwarded-for", "unknown, _hidden, 198.51.100.4")]
            ),
            "ip:198.51.100.4"
        );
    }

    #[test]
    fn quoted_forwarded_values_are_data_not_elements_or_parameters() {
        let forwarded = behind(ForwardedHeader::Forwarded);
        let cases = [
            // Issue 20: a proxy quotes the client's Host, which holds `,` `;` `=`.
            r#"proto=http;host="a,for=6.6.6.6;x=";for=203.0.113.9"#,
            // Escaped quotes and backslashes inside the quoted Host.
            r#"host="a\",for=6.6.6.6;x=\"";for=203.0.113.9"#,
            r#"host="a\\";for=203.0.113.9"#,
            r#"for=203.0.113.9;host="\\\"\\,for=6.6.6.6""#,
            // The client's own element left of the proxy's, an open quote in it.
            r#"for="6.6.6.6, proto=http;host="a,for=6.6.6.6;x=";for=203.0.113.9"#,
            r#"x="\, for=203.0.113.9;host=",for=6.6.6.6""#,
            // Empty pairs, case, a quoted and escaped address.
            r#"proto=https;;FOR="\203.0.113.9:4711";"#,
        ];
        for value in cases {
            assert_eq!(
                key(&forwarded, "10.0.0.1:1", &[("forwarded", value)]),
                "ip:203.0.113.9",
                "{value}"
            );
        }
        // The client's text on a line of its own, before the proxy's.
        let lines = [
            ("forwarded", r#"for="6.6.6.6"#),
            ("forwarded", r#"host="x,for=6.6.6.6";for=203.0.113.9"#),
        ];
        assert_eq!(key(&forwarded, "10.0.0.1:1", &lines), "ip:203.0.113.9");
    }

    #[test]
    fn a_forwarded_element_a_proxy_wrote_malformed_is_unidentified() {
        let forwarded = behind(ForwardedHeader::Forwarded);
        for value in [
            // A proxy that copies the Host into quotes without escaping it.
            r#"host="x";for=6.6.6.6;y="";for=203.0.113.9"#,
            r#"for=203.0.113.9;host="a\""#,
            // Text after a quoted string, a quote inside a token, no `=`.
            r#"for="203.0.113.9"x"#,
            r#"for=203.0.113.9;host=a"b"#,
            "for=203.0.113.9;secure",
            // A closing quote with no opening one.
            r#"for=203.0.113.9;host=\""#,
        ] {
            assert_eq!(
                key(&forwarded, "10.0.0.1:1", &[("forwarded", value)]),
                UNIDENTIFIED_KEY,
                "{value}"
            );
        }
    }

    #[test]
    fn x_forwarded_for_and_single_address_headers_have_no_quoting() {
        // No proxy quotes these: a `"` is a byte of a malformed element, and
        // a client's cannot join its element to the proxy's.
        let xff = behind(ForwardedHeader::XForwardedFor);
        for value in [
            r#""6.6.6.6, 198.51.100.4"#,
            r#"6.6.6.6", 198.51.100.4"#,
            r#"6.6.6.6\, 198.51.100.4"#,
        ] {
            assert_eq!(
                key(&xff, "10.0.0.1:1", &[("x-forwarded-for", value)]),
                "ip:198.51.100.4",
                "{value}"
            );
        }
        let real_ip = behind(ForwardedHeader::Single(HeaderName::from_static(
            "x-real-ip",
        )));
        for value in [r#""198.51.100.4""#, r#"6.6.6.6";198.51.100.4"#] {
            assert_eq!(
                key(&real_ip, "10.0.0.1:1", &[("x-real-ip", value)]),
                UNIDENTIFIED_KEY,
                "{value}"
            );
        }
    }

    #[test]
    fn ipv6_clients_in_one_56_share_a_key_and_mapped_ipv4_is_ipv4() {
        let ip = PeerIp::new();
        let a = key(&ip, "[2001:db8:1:2300::1]:1", &[]);
        let b = key(&ip, "[2001:db8:1:23ff:ffff::9]:1", &[]);
        let c = key(&ip, "[2001:db8:1:2400::1]:1", &[]);
        assert_eq!(a, "ip:2001:db8:1:2300::/56");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(key(&ip, "[::ffff:192.0.2.1]:1", &[]), "ip:192.0.2.1");
        assert_eq!(
            key(&PeerIp::new().ipv6_prefix(128), "[2001:db8::1]:1", &[]),
            "ip:2001:db8::1/128"
        );
    }

    #[test]
    fn missing_connect_info_is_an_error_not_a_shared_bucket() {
        let (method, uri, headers, extensions) = (
            Method::GET,
            Uri::from_static("/"),
            HeaderMap::new(),
            Extensions::new(),
        );
        let err = PeerIp::new()
            .extract(&RequestInfo {
                method: &method,
                uri: &uri,
                headers: &headers,
                extensions: &extensions,
            })
            .unwrap_err();
        assert!(matches!(err, KeyError::MissingConnectInfo));
        assert!(
            err.to_string()
                .contains("into_make_service_with_connect_info")
        );
    }

    #[test]
    fn header_keys_are_hashed_and_fall_back_to_the_ip() {
        let extractor = HeaderKey::new(http::HeaderName::from_static("x-api-key"));
        let k = key(
            &extractor,
            "192.0.2.1:1",
            &[("x-api-key", "secret-key-123")],
        );
        assert!(k.starts_with("x-api-key:") && !k.contains("secret"), "{k}");
        assert_eq!(key(&extractor, "192.0.2.1:1", &[]), "ip:192.0.2.1");
    }

    #[test]
    fn route_and_ip_never_keys_by_the_raw_path() {
        let extractor = RouteAndIp::default();
        let keys: std::collections::HashSet<String> = (0..5)
            .map(|i| {
                let (method, _, headers, extensions) = request_from("192.0.2.1:1", &[]);
                let uri: Uri = format!("/users/{i}").parse().unwrap();
                keyed(&extractor, (method, uri, headers, extensions))
            })
            .collect();
        assert_eq!(keys.len(), 1, "without MatchedPath, one budget: {keys:?}");
    }

    #[test]
    fn the_dotted_quad_fast_path_reads_exactly_what_the_standard_parser_reads() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.39.16",
            "256.0.0.1",
            "01.2.3.4",
            "1.2.3.00",
            "1.2.3",
            "1.2.3.4.",
            ".1.2.3",
            "1..2.3",
            "1.2.3.4 ",
            "1.2.3.1000",
            "1.2.3.+4",
            "1.2.3.4:80",
            "",
        ] {
            assert_eq!(dotted_quad(text.as_bytes()), text.parse().ok(), "{text:?}");
        }
    }

    #[test]
    fn odd_or_long_keys_are_hashed() {
        assert_eq!(sanitize("ip:192.0.2.1".into()), "ip:192.0.2.1");
        let odd = sanitize("fn:a b*".into());
        assert!(odd.starts_with("sha256:") && odd.len() == 7 + 64);
        assert!(sanitize("x".repeat(500)).starts_with("sha256:"));
        assert!(sanitize(String::new()).starts_with("sha256:"));
        // Byte by byte: exactly `A-Z a-z 0-9 : . _ / -` pass as they are.
        for byte in 0..=u8::MAX {
            let key = format!("k{}", char::from(byte));
            let plain = byte.is_ascii_alphanumeric() || b":._/-".contains(&byte);
            assert_eq!(sanitize(key.clone()) == key, plain, "byte {byte}");
        }
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(sanitize(longest.clone()), longest);
    }

    #[test]
    fn bad_trusted_proxy_cidrs_are_errors() {
        assert!(TrustedProxies::parse([""]).is_err());
        assert!(TrustedProxies::parse(["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(["10.0.0.0/8", "::1"]).is_ok());
    }
}
