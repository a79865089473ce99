//! The TCP peer of a request, wherever the server put it: axum's
//! `ConnectInfo<SocketAddr>`, a plain `SocketAddr` extension (a hyper
//! server's own code inserts it), or, with the `tonic` feature, tonic's
//! `TcpConnectInfo` and its TLS wrapper.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use http::Extensions;

/// The peer address of a request, from its extensions: axum's
/// `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), a `SocketAddr`
/// inserted by the server (hyper: `request.extensions_mut().insert(peer)`
/// in the connection's service), or, with the crate's `tonic` feature,
/// tonic 0.14's `TcpConnectInfo` and `TlsConnectInfo<TcpConnectInfo>`,
/// which its server inserts by itself. `None` when none of them is there.
/// [`PeerIp`](crate::PeerIp) keys by it; custom extractors can too.
///
/// ```
/// use std::net::SocketAddr;
/// use rate_limit::peer_addr;
///
/// let peer: SocketAddr = "203.0.113.9:50000".parse()?;
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(peer); // what a plain hyper server's code adds
/// assert_eq!(peer_addr(request.extensions()), Some(peer));
/// assert_eq!(peer_addr(http::Request::new(()).extensions()), None);
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
pub fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    if let Some(ConnectInfo(addr)) = extensions.get::<ConnectInfo<SocketAddr>>() {
        return Some(*addr);
    }
    if let Some(addr) = extensions.get::<SocketAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "tonic")]
    {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        if let Some(tcp) = extensions.get::<TcpConnectInfo>() {
            return tcp.remote_addr();
        }
        if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
            return tls.get_ref().remote_addr();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axum_connect_info_comes_before_a_plain_socket_addr() {
        let axum: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let plain: SocketAddr = "192.0.2.2:2".parse().unwrap();
        let mut extensions = Extensions::new();
        extensions.insert(plain);
        assert_eq!(peer_addr(&extensions), Some(plain));
        extensions.insert(ConnectInfo(axum));
        assert_eq!(peer_addr(&extensions), Some(axum));
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_tcp_connect_info_gives_the_remote_address() {
        use tonic::transport::server::TcpConnectInfo;
        let remote: SocketAddr = "192.0.2.3:3".parse().unwrap();
        let mut extensions = Extensions::new();
        extensions.insert(TcpConnectInfo {
            local_addr: Some("127.0.0.1:50051".parse().unwrap()),
            remote_addr: Some(remote),
        });
        assert_eq!(peer_addr(&extensions), Some(remote));
    }
}
