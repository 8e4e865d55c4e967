//! The PROXY protocol (v1 text and v2 binary) on the proxy listeners, for an
//! edge behind an L4 load balancer (`[edge] proxy_protocol = true`,
//! docs/contract.md §5 and §6): every connection starts with the balancer's
//! header, whose source address is the client from then on.
//!
//! Where it sits: `EdgeApp::process_new` ([`crate::http::EdgeApp`]) calls [`accept`]
//! before admission (the per-IP caps count the real client) and before TLS
//! (the header precedes the handshake). Parsing is the `ppp` crate's.
//!
//! Invariants:
//! - The header is never optional on such a listener: a connection without
//!   a valid one, or whose header does not arrive within the head deadline,
//!   is closed (an optional header would let any client forge its address).
//! - No byte after the header is lost: what was read past it is put back
//!   into the stream (Pingora's `rewind`).
//! - The source address replaces the socket's peer address in the stream's
//!   socket digest, so `x-forwarded-for`, the per-IP caps, the logs and the
//!   access log all see the client. A v2 `LOCAL` header (the balancer's own
//!   health check) and v1 `UNKNOWN` keep the socket's address.
//!
//! Start at [`accept`].

use std::net::SocketAddr;
use std::time::Duration;

use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{SocketDigest, Stream};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

/// The longest header accepted: a v1 header is at most 107 bytes; a v2
/// header's addresses and TLVs (AWS NLB, GCP add a few) stay well under this.
pub const MAX_HEADER_BYTES: usize = 1024;

/// Why a connection's header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete PROXY protocol header")]
    Closed,
    #[error("not a valid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("PROXY protocol header longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error("the listener's stream is not a TCP socket")]
    NotTcp,
}

/// What a complete header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's address.
    Client(SocketAddr),
    /// No client address (v2 `LOCAL`, v1 `UNKNOWN`): the socket's stands.
    Balancer,
}

/// Pure: the header at the start of `buf`, with its length, `Ok(None)`
/// while it is incomplete, or why it can never be valid.
pub fn parse(buf: &[u8]) -> Result<Option<(Source, usize)>, HeaderError> {
    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        return Ok(None);
    }
    match header {
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (v2::Command::Local, _) => Source::Balancer,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Source::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Source::Client(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, other) => {
                    return Err(HeaderError::Invalid(format!("unsupported v2 addresses {other:?}")))
                }
            };
            Ok(Some((source, h.len())))
        }
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => Source::Client(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Source::Client(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => Source::Balancer,
            };
            Ok(Some((source, h.header.len())))
        }
        HeaderResult::V2(Err(e)) => Err(HeaderError::Invalid(e.to_string())),
        HeaderResult::V1(Err(e)) => Err(HeaderError::Invalid(e.to_string())),
    }
}

/// Reads the header off `stream` within `deadline`, puts back what was read
/// past it, and makes its source the stream's peer address.
pub async fn accept(stream: Stream, deadline: Duration) -> Result<(Stream, Source), HeaderError> {
    let mut l4 = stream
        .into_any()
        .downcast::<L4Stream>()
        .map_err(|_| HeaderError::NotTcp)?;
    let read = async {
        let mut buf = Vec::with_capacity(128);
        let mut chunk = [0u8; 256];
        loop {
            let n = l4.read(&mut chunk).await?;
            if n == 0 {
                return Err(HeaderError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some((source, len)) = parse(&buf)? {
                return Ok((source, len, buf));
            }
            if buf.len() > MAX_HEADER_BYTES {
                return Err(HeaderError::TooLong);
            }
        }
    };
    let (source, len, buf) = tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| HeaderError::Timeout(deadline))??;
    l4.rewind(&buf[len..]);
    if let Source::Client(addr) = source {
        use std::os::fd::AsRawFd;
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(addr)));
        pingora_core::protocols::GetSocketDigest::set_socket_digest(&mut *l4, digest);
    }
    Ok((l4, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(command: u8, src: &str, dst: &str) -> Vec<u8> {
        let addrs: v2::Addresses = (src.parse::<SocketAddr>().unwrap(), dst.parse::<SocketAddr>().unwrap()).into();
        v2::Builder::with_addresses(0x20 | command, v2::Protocol::Stream, addrs)
            .build()
            .unwrap()
    }

    #[test]
    fn v1_and_v2_headers_name_the_client() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(v1).unwrap(),
            Some((Source::Client("203.0.113.7:51234".parse().unwrap()), 42))
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert_eq!(
            parse(v6).unwrap().map(|(s, _)| s),
            Some(Source::Client("[2001:db8::7]:4000".parse().unwrap()))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Some((Source::Balancer, 15)));

        let mut h = v2_header(1, "[2001:db8::9]:5555", "[2001:db8::1]:443");
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01"); // a TLS hello follows
        assert_eq!(
            parse(&h).unwrap(),
            Some((Source::Client("[2001:db8::9]:5555".parse().unwrap()), len))
        );
        let local = v2_header(0, "10.0.0.2:1", "10.0.0.1:80");
        assert_eq!(parse(&local).unwrap().map(|(s, _)| s), Some(Source::Balancer));
    }

    #[test]
    fn partial_headers_wait_and_forged_ones_are_refused() {
        let full = v2_header(1, "198.51.100.4:1234", "10.0.0.1:80");
        for cut in [1, 5, 12, 15, full.len() - 1] {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None);
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.999 10.0.0.1 1 80\r\n",
            b"PROXY TCP9 1.2.3.4 10.0.0.1 1 80\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 99999 80\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
