//! Who a request counts against: key extractors.
//!
//! The default is [`PeerIp`]: the TCP peer from axum's `ConnectInfo`, with
//! proxy headers believed only when the peer is a configured trusted proxy,
//! and IPv6 clients grouped by prefix. Every key an extractor returns is
//! checked by the layer: anything longer than [`MAX_KEY_LEN`] or with
//! characters outside `[A-Za-z0-9:._/-]` is replaced by its SHA-256, so no
//! client can steer the Redis key or its size.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use http::{Extensions, HeaderMap, Method, Uri};
use ipnet::IpNet;

/// Longest client key used as it is; longer keys are hashed.
pub const MAX_KEY_LEN: usize = 128;

/// What an extractor sees of a request.
#[derive(Debug, Clone, Copy)]
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

/// Why no key could be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The peer address is not in the request: the server was not started
    /// with `into_make_service_with_connect_info::<SocketAddr>()`.
    #[error(
        "the peer address is missing: serve the app with \
         `app.into_make_service_with_connect_info::<SocketAddr>()` so the rate limiter can key by client IP"
    )]
    MissingConnectInfo,
    /// Any other reason, from a custom extractor.
    #[error("{0}")]
    Other(String),
}

/// Picks the client key of a request. Implemented for [`PeerIp`],
/// [`HeaderKey`], [`RouteAndIp`] and any
/// `Fn(&RequestInfo) -> Result<String, KeyError>` closure.
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
    pub fn parse<I, S>(cidrs: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut networks = Vec::new();
        for cidr in cidrs {
            let text = cidr.as_ref().trim();
            if text.is_empty() {
                return Err("an empty trusted-proxy CIDR".to_string());
            }
            let network = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{text}` is not a CIDR or an IP address"))?;
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

/// The client IP: the TCP peer, or, when the peer is a trusted proxy, the
/// rightmost address of `X-Forwarded-For` (or `Forwarded`) that is not a
/// trusted proxy. IPv6 addresses are grouped by prefix (/56 by default), since
/// one customer usually holds a whole /56 or /64 and could rotate through it.
#[derive(Debug, Clone)]
pub struct PeerIp {
    trusted: TrustedProxies,
    ipv6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        PeerIp {
            trusted: TrustedProxies::none(),
            ipv6_prefix: 56,
        }
    }
}

impl PeerIp {
    /// Peer IP, no trusted proxy, IPv6 grouped by /56.
    pub fn new() -> Self {
        Self::default()
    }

    /// Believes forwarding headers from these proxies.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// Groups IPv6 clients by this prefix length (0 to 128; 128 = per address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// The client address of a request.
    pub fn client_ip(&self, request: &RequestInfo<'_>) -> Result<IpAddr, KeyError> {
        let peer = request
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| canonical(addr.ip()))
            .ok_or(KeyError::MissingConnectInfo)?;
        if self.trusted.is_empty() || !self.trusted.contains(peer) {
            return Ok(peer);
        }
        let chain = forwarded_chain(request.headers);
        // Walk from the nearest hop: the first address not ours is the client.
        let mut client = peer;
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) => {
                    client = canonical(*ip);
                    if !self.trusted.contains(client) {
                        break;
                    }
                }
                // An entry we cannot read ends the walk: nothing left of it is trustworthy.
                None => break,
            }
        }
        Ok(client)
    }

    /// The key of an address: IPv4 as is, IPv6 masked to the prefix.
    pub fn key_of(&self, ip: IpAddr) -> String {
        match canonical(ip) {
            IpAddr::V4(v4) => format!("ip:{v4}"),
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
        self.client_ip(request).map(|ip| self.key_of(ip))
    }
}

/// The addresses of `X-Forwarded-For` (or, without it, `Forwarded`), left to
/// right; `None` for an entry that is not an address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| {
            value
                .to_str()
                .map(|text| text.split(',').map(parse_hop).collect::<Vec<_>>())
                .unwrap_or_else(|_| vec![None])
        })
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all("forwarded")
        .iter()
        .flat_map(|value| match value.to_str() {
            Ok(text) => text
                .split(',')
                .map(|element| {
                    element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                        .and_then(|(_, value)| parse_hop(value))
                })
                .collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:443`, `"[2001:db8::1]:443"`, `2001:db8::1`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|inner| inner.parse().ok())
}

/// A header's value (an API key, a tenant id), hashed so the raw secret
/// never becomes a Redis key; requests without it fall back to the peer IP.
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: http::HeaderName,
    fallback: PeerIp,
}

impl HeaderKey {
    /// Keys by the header `name`.
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

/// Per route and client IP: each endpoint has its own budget per client. Uses
/// axum's matched route template (`/users/{id}`) when present, so that
/// `/users/1` and `/users/2` share one budget; the route is hashed.
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

impl KeyExtractor for RouteAndIp {
    fn extract(&self, request: &RequestInfo<'_>) -> Result<String, KeyError> {
        let route = request
            .extensions
            .get::<axum::extract::MatchedPath>()
            .map(|path| path.as_str().to_string())
            .unwrap_or_else(|| request.uri.path().to_string());
        let route = format!("{} {route}", request.method);
        Ok(format!(
            "route:{}:{}",
            &cache_core::sha256_hex(route.as_bytes())[..16],
            self.ip.extract(request)?
        ))
    }
}

/// The key as used in Redis: itself when short and plain, else its hash.
pub(crate) fn sanitize(key: String) -> String {
    let plain = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'/' | b'-'));
    if plain && !key.is_empty() && key.len() <= MAX_KEY_LEN {
        key
    } else {
        format!("sha256:{}", cache_core::sha256_hex(key.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(peer: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap, Extensions) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        (Method::GET, Uri::from_static("/x"), map, extensions)
    }

    fn key(extractor: &impl KeyExtractor, peer: &str, headers: &[(&str, &str)]) -> String {
        let (method, uri, headers, extensions) = request_from(peer, headers);
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

    #[test]
    fn forwarding_headers_from_a_trusted_proxy_give_the_rightmost_untrusted_address() {
        let ip = PeerIp::new().trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).unwrap());
        // The client spoofed 6.6.6.6; the proxy 10.0.0.2 appended the real 198.51.100.4.
        let xff = [("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.0.0.2")];
        assert_eq!(key(&ip, "10.0.0.1:5000", &xff), "ip:198.51.100.4");
        let forwarded = [(
            "forwarded",
            r#"for=6.6.6.6, for="198.51.100.4:443";proto=https"#,
        )];
        assert_eq!(key(&ip, "10.0.0.1:5000", &forwarded), "ip:198.51.100.4");
        // An untrusted peer's headers are ignored.
        assert_eq!(key(&ip, "192.0.2.1:5000", &xff), "ip:192.0.2.1");
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            key(&ip, "10.0.0.1:5000", &[("x-forwarded-for", "nonsense")]),
            "ip:10.0.0.1"
        );
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
        assert_eq!(err, KeyError::MissingConnectInfo);
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
    fn odd_or_long_keys_are_hashed() {
        assert_eq!(sanitize("ip:192.0.2.1".into()), "ip:192.0.2.1");
        let odd = sanitize("fn:a b*".into());
        assert!(odd.starts_with("sha256:") && odd.len() == 7 + 64);
        assert!(sanitize("x".repeat(500)).starts_with("sha256:"));
        assert!(sanitize(String::new()).starts_with("sha256:"));
    }

    #[test]
    fn bad_trusted_proxy_cidrs_are_errors() {
        assert!(TrustedProxies::parse([""]).is_err());
        assert!(TrustedProxies::parse(["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(["10.0.0.0/8", "::1"]).is_ok());
    }
}
