//! Property tests of the proxy header parsers: `Forwarded` against a plain
//! left-to-right reference split that honours quoted strings (RFC 7239 and
//! RFC 9110's quoted-string and quoted-pair), and both list headers against
//! a client's arbitrary bytes left of what its proxy appended.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use http::{Extensions, HeaderMap, HeaderValue, Method, Uri};
use proptest::prelude::*;

use super::*;

/// `text` split at every `separator` outside a quoted string, read left to
/// right the textbook way.
fn split_quoted(text: &[u8], separator: u8) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escape) = (0, false, false);
    for (at, &b) in text.iter().enumerate() {
        if escape {
            escape = false;
        } else if quoted && b == b'\\' {
            escape = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if !quoted && b == separator {
            pieces.push(&text[start..at]);
            start = at + 1;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// A value without its quotes and escapes.
fn unquote(value: &[u8]) -> Vec<u8> {
    let Some(inner) = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
    else {
        return value.to_vec();
    };
    let mut out = Vec::new();
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        out.push(if b == b'\\' {
            *bytes.next().unwrap()
        } else {
            b
        });
    }
    out
}

/// The reference: each element's `for` node, left to right.
fn reference(line: &[u8]) -> Vec<Option<IpAddr>> {
    split_quoted(line, b',')
        .into_iter()
        .filter(|element| !element.trim_ascii().is_empty())
        .map(|element| {
            let mut node = None;
            for pair in split_quoted(element, b';') {
                let pair = pair.trim_ascii();
                if let Some(at) = pair.iter().position(|&b| b == b'=')
                    && pair[..at].eq_ignore_ascii_case(b"for")
                {
                    node = Some(unquote(&pair[at + 1..]));
                }
            }
            std::str::from_utf8(&node?).ok().and_then(parse_node)
        })
        .collect()
}

/// A token (RFC 9110 tchar).
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

/// Any text a header value may hold, made of the pieces that could fool a
/// parser (separators, quotes, escapes, `for=` with an address) and of
/// arbitrary bytes (controls other than tab excepted).
fn text() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            ",", ";", "=", "\"", "\\", " ", "\t", "for=", "for=6.6.6.6",
            "For=\"[2001:db8::6]:1\"", "unknown", ", ", "\\\"",
        ])
        .prop_map(|piece| piece.as_bytes().to_vec()),
        2 => (0x20u8..0x7f).prop_map(|b| vec![b]),
        1 => (0x80u8..=0xff).prop_map(|b| vec![b]),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

/// `inner` as a quoted string: `"` and `\` escaped, and some other bytes
/// escaped too (a quoted-pair may escape any byte).
fn quoted(inner: &[u8], escape_more: &[bool]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for (at, &b) in inner.iter().enumerate() {
        if b == b'"' || b == b'\\' || escape_more.get(at).copied().unwrap_or(false) {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

/// A `for` node as a proxy writes it: an address (with a port or not), or
/// what stands for none.
fn node() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|ip| Ipv4Addr::from(ip).to_string()),
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((ip, port)).to_string()),
        any::<[u16; 8]>().prop_map(|ip| format!("[{}]", Ipv6Addr::from(ip))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((
            Ipv6Addr::from(ip),
            port
        ))
        .to_string()),
        Just("unknown".to_string()),
        Just("_hidden".to_string()),
        token(),
    ]
}

/// A parameter's value: a token, or any text quoted.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        token().prop_map(String::into_bytes),
        (text(), prop::collection::vec(any::<bool>(), 256))
            .prop_map(|(inner, more)| quoted(&inner, &more)),
    ]
}

/// A well-formed element: some parameters, at most one of them `for`
/// (written plain when it is a token or an IPv4 address with a port, as
/// proxies do, or quoted).
fn element() -> impl Strategy<Value = Vec<u8>> {
    let other = (
        prop::sample::select(vec!["by", "proto", "host", "secret", "For-x"]),
        value(),
    );
    let for_value = (
        node(),
        any::<bool>(),
        prop::collection::vec(any::<bool>(), 64),
    )
        .prop_map(|(node, quote, more)| {
            let plain = !node.contains(['[', ']']) && !node.contains("::");
            if quote || !plain {
                quoted(node.as_bytes(), &more)
            } else {
                node.into_bytes()
            }
        });
    (
        prop::collection::vec(other, 0..4),
        prop::option::of((for_value, any::<prop::sample::Index>(), any::<bool>())),
    )
        .prop_map(|(others, for_pair)| {
            let mut pairs: Vec<Vec<u8>> = others
                .into_iter()
                .map(|(name, value)| [name.as_bytes(), b"=", value.as_slice()].concat())
                .collect();
            if let Some((value, at, upper)) = for_pair {
                let name: &[u8] = if upper { b"For=" } else { b"for=" };
                pairs.insert(at.index(pairs.len() + 1), [name, value.as_slice()].concat());
            }
            pairs.join(&b';')
        })
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("generated bytes are a header value")
}

/// The key of a request from the trusted proxy 10.0.0.1 with these lines.
fn key_behind(header: ForwardedHeader, name: &str, lines: &[&[u8]]) -> String {
    let extractor = PeerIp::new()
        .trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).unwrap())
        .forwarded_header(header);
    let mut headers = HeaderMap::new();
    for line in lines {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            header_value(line),
        );
    }
    let mut extensions = Extensions::new();
    extensions.insert(ConnectInfo("10.0.0.1:5000".parse::<SocketAddr>().unwrap()));
    extractor
        .extract(&RequestInfo {
            method: &Method::GET,
            uri: &Uri::from_static("/"),
            headers: &headers,
            extensions: &extensions,
        })
        .unwrap()
}

/// An address outside the trusted 10.0.0.0/8.
fn client() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (11u8..=223, any::<[u8; 3]>())
            .prop_map(|(a, [b, c, d])| IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
        (0x2001u16..0x3fff, any::<[u16; 7]>()).prop_map(|(first, rest)| {
            let mut segments = [first; 8];
            segments[1..].copy_from_slice(&rest);
            IpAddr::V6(Ipv6Addr::from(segments))
        }),
    ]
}

/// The address as a `Forwarded` node (IPv6 in brackets, quoted).
fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// On well-formed lines the parser finds what the reference finds, in
    /// reverse (it reads from the right).
    #[test]
    fn forwarded_nodes_match_a_reference_split_that_honours_quotes(
        elements in prop::collection::vec(element(), 0..5),
        spaces in prop::collection::vec(prop::sample::select(vec!["", " ", "  ", "\t"]), 5),
    ) {
        let mut line = Vec::new();
        for (at, element) in elements.iter().enumerate() {
            if at > 0 {
                line.push(b',');
                line.extend_from_slice(spaces[at].as_bytes());
            }
            line.extend_from_slice(element);
        }
        let mut headers = HeaderMap::new();
        headers.append("forwarded", header_value(&line));
        let mut nodes: Vec<Option<IpAddr>> = forwarded_for(&headers).collect();
        nodes.reverse();
        prop_assert_eq!(nodes, reference(&line), "{}", String::from_utf8_lossy(&line));
    }

    /// Whatever a client wrote (on the line the proxy appends to, or a line
    /// of its own), and whatever Host the proxy quotes, the key is the
    /// address the proxy gave.
    #[test]
    fn a_clients_bytes_never_change_the_address_its_proxy_appended(
        own in text(),
        host in text(),
        more in prop::collection::vec(any::<bool>(), 256),
        ip in client(),
        same_line in any::<bool>(),
    ) {
        let proxy = [
            b"proto=https;host=".as_slice(),
            quoted(&host, &more).as_slice(),
            b";for=",
            forwarded_node(ip).as_bytes(),
        ]
        .concat();
        let expected = PeerIp::new().key_of(ip);
        let key = if same_line {
            let line = [own.as_slice(), b", ", proxy.as_slice()].concat();
            key_behind(ForwardedHeader::Forwarded, "forwarded", &[&line])
        } else {
            key_behind(ForwardedHeader::Forwarded, "forwarded", &[&own, &proxy])
        };
        prop_assert_eq!(&key, &expected);

        let appended = [own.as_slice(), b", ", ip.to_string().as_bytes()].concat();
        let key = key_behind(ForwardedHeader::XForwardedFor, "x-forwarded-for", &[&appended]);
        prop_assert_eq!(&key, &expected);
    }

    /// The IPv4 fast path of `X-Forwarded-For` reads digits and dots as
    /// the standard parser does: the same address, or none (then the
    /// standard parser decides), never one it would not give.
    #[test]
    fn the_dotted_quad_fast_path_agrees_with_the_standard_parser(
        text in "[0-9.]{0,19}|[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}",
        octets in any::<[u8; 4]>(),
    ) {
        prop_assert_eq!(dotted_quad(text.as_bytes()), text.parse::<Ipv4Addr>().ok(), "{}", text);
        let address = Ipv4Addr::from(octets);
        prop_assert_eq!(dotted_quad(address.to_string().as_bytes()), Some(address));
    }
}
