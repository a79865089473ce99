//! The default key extractor (`PeerIp`) on its own, per proxy header: what
//! reading `X-Forwarded-For` or `Forwarded` adds to a request behind a
//! trusted proxy. Baseline in the same run: the same extractor on a peer that
//! is not a trusted proxy (no header read). No HTTP, no store.
//!
//! `cargo run --release -p benches --bin client-key` prints nanoseconds per
//! key; `client-key VARIANT CALLS` runs one variant `CALLS` times, for
//! counting instructions under callgrind (a run with 0 calls measures the
//! set-up, to subtract):
//!
//! ```text
//! valgrind --tool=callgrind target/release/client-key forwarded-host 100000
//! ```

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::ConnectInfo;
use http::{Extensions, HeaderMap, HeaderValue, Method, Uri};
use rate_limit::{ForwardedHeader, KeyExtractor, PeerIp, RequestInfo, TrustedProxies};

/// Keys per round of the timed run.
const CALLS: u32 = 1_000_000;
const ROUNDS: usize = 5;

/// A variant: its name, the header read, the peer, and the header lines.
struct Variant {
    name: &'static str,
    header: ForwardedHeader,
    peer: &'static str,
    lines: &'static [(&'static str, &'static str)],
}

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "peer (baseline)",
        header: ForwardedHeader::XForwardedFor,
        peer: "203.0.113.9:50000",
        lines: &[("x-forwarded-for", "198.51.100.4")],
    },
    Variant {
        name: "x-forwarded-for",
        header: ForwardedHeader::XForwardedFor,
        peer: "10.0.0.1:50000",
        lines: &[("x-forwarded-for", "198.51.100.4, 10.0.0.2")],
    },
    Variant {
        name: "forwarded",
        header: ForwardedHeader::Forwarded,
        peer: "10.0.0.1:50000",
        lines: &[("forwarded", "for=198.51.100.4;proto=https, for=10.0.0.2")],
    },
    Variant {
        name: "forwarded-host",
        header: ForwardedHeader::Forwarded,
        peer: "10.0.0.1:50000",
        lines: &[(
            "forwarded",
            r#"for="198.51.100.4:4711";proto=https;host="shop.example.com", for=10.0.0.2;proto=https"#,
        )],
    },
    Variant {
        name: "forwarded-ipv6",
        header: ForwardedHeader::Forwarded,
        peer: "10.0.0.1:50000",
        lines: &[("forwarded", r#"for="[2001:db8:cafe::17]:4711";by=10.0.0.2"#)],
    },
];

/// The request parts and the extractor of a variant.
fn prepare(variant: &Variant) -> (PeerIp, HeaderMap, Extensions) {
    let extractor = PeerIp::new()
        .trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).expect("CIDR"))
        .forwarded_header(variant.header.clone());
    let mut headers = HeaderMap::new();
    for (name, value) in variant.lines {
        headers.append(*name, HeaderValue::from_static(value));
    }
    let mut extensions = Extensions::new();
    extensions.insert(ConnectInfo(
        variant.peer.parse::<SocketAddr>().expect("address"),
    ));
    (extractor, headers, extensions)
}

/// `calls` keys of the variant; the last one.
fn extract(variant: &Variant, calls: u32) -> String {
    let (extractor, headers, extensions) = prepare(variant);
    let (method, uri) = (Method::GET, Uri::from_static("/"));
    let request = RequestInfo::new(&method, &uri, &headers, &extensions);
    let mut key = String::new();
    for _ in 0..calls {
        key = extractor.extract(black_box(&request)).expect("a key");
    }
    key
}

fn main() {
    let mut args = std::env::args().skip(1);
    if let Some(name) = args.next() {
        let variant = VARIANTS
            .iter()
            .find(|v| v.name.split(' ').next() == Some(name.as_str()))
            .unwrap_or_else(|| {
                let names: Vec<_> = VARIANTS.iter().map(|v| v.name).collect();
                panic!("usage: client-key [{} CALLS]", names.join("|"))
            });
        let calls = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        println!("{}", extract(variant, calls));
        return;
    }
    println!("PeerIp::extract, {CALLS} keys per round, best of {ROUNDS} rounds");
    println!("| variant | key | ns per key |");
    println!("| --- | --- | ---: |");
    for variant in &VARIANTS {
        let mut best = f64::INFINITY;
        let mut key = String::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            key = extract(variant, CALLS);
            best = best.min(started.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS));
        }
        println!("| {} | `{key}` | {best:.1} |", variant.name);
    }
}
