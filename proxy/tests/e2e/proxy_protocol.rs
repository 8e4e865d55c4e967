//! An edge behind an L4 balancer (`[edge] proxy_protocol = true`): real v1
//! and v2 headers on plain and TLS listeners give the VM the client's
//! address in `x-forwarded-for` and count the per-IP caps by it; a
//! connection without a valid header (none, truncated, forged) is closed
//! and reaches no VM.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::{dead_addr, world};

fn v1(src: &str, port: u16) -> Vec<u8> {
    let family = if src.contains(':') { "TCP6" } else { "TCP4" };
    let dst = if src.contains(':') { "2001:db8::1" } else { "10.0.0.1" };
    format!("PROXY {family} {src} {dst} {port} 80\r\n").into_bytes()
}

fn v2(src: &str) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = if src.is_ipv6() {
        "[2001:db8::1]:443"
    } else {
        "10.0.0.1:443"
    }
    .parse()
    .unwrap();
    let addrs: ppp::v2::Addresses = (src, dst).into();
    ppp::v2::Builder::with_addresses(0x21, ppp::v2::Protocol::Stream, addrs)
        .build()
        .unwrap()
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\nConnection: close\r\n\r\n";

/// `prefix` then a GET on a new connection; the raw answer (empty when the
/// edge closed without one).
async fn send(addr: SocketAddr, prefix: &[u8], request: &[u8]) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(request);
    raw_exchange(addr, &bytes, Duration::from_secs(5)).await
}

fn forwarded_for(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let body = &text[text.find("\r\n\r\n").expect("a response") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["headers"]["x-forwarded-for"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn proxy_protocol_headers_name_the_client_and_bad_ones_close_the_connection() {
    let vm1 = FakeVm::start("vm-1");
    let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let (edge, der) = Edge::start_tls(
        "us-east1",
        &snap,
        EdgeOpts {
            edge: "proxy_protocol = true",
            limits: "header_timeout_ms = 500\nmax_connections_per_ip = 2",
            ..Default::default()
        },
    )
    .await;

    // v1, IPv4 and IPv6; v2, IPv4 and IPv6: the VM sees the client.
    for (prefix, want) in [
        (v1("203.0.113.7", 51234), "203.0.113.7"),
        (v1("2001:db8::7", 4000), "2001:db8::7"),
        (v2("198.51.100.4:1234"), "198.51.100.4"),
        (v2("[2001:db8::9]:5555"), "2001:db8::9"),
    ] {
        let raw = send(edge.proxy, &prefix, GET).await;
        assert_eq!(
            statuses(&raw).first().copied(),
            Some(200),
            "{}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(forwarded_for(&raw), want);
    }

    // No header, a truncated one, forged ones: closed, no answer, no VM request.
    let before = vm1.requests().await;
    let refused =
        |m: &str| metric_value(m, "edgeplane_connections_refused_total{reason=\"proxy_protocol\"}").unwrap_or(0.0);
    let refused_before = refused(&edge.metrics().await);
    let truncated = v2("198.51.100.4:1234");
    let cases: [(&str, Vec<u8>); 5] = [
        ("no header", Vec::new()),
        ("truncated v1", b"PROXY TCP4 203.0.113.7 10.0".to_vec()),
        ("truncated v2", truncated[..20].to_vec()),
        (
            "forged v1 address",
            b"PROXY TCP4 203.0.113.999 10.0.0.1 1 80\r\n".to_vec(),
        ),
        ("v2 signature, bad version", {
            let mut h = v2("198.51.100.4:1234");
            h[12] = 0x31;
            h
        }),
    ];
    for (name, prefix) in cases {
        let request: &[u8] = if name.starts_with("truncated") { b"" } else { GET };
        let raw = send(edge.proxy, &prefix, request).await;
        assert!(raw.is_empty(), "{name}: answered {}", String::from_utf8_lossy(&raw));
    }
    assert_eq!(vm1.requests().await, before, "a refused connection reached the VM");
    let m = edge.metrics().await;
    assert_eq!(refused(&m) - refused_before, 5.0, "each refusal counted: {m}");

    // TLS: the header precedes the handshake.
    let https = edge.https.expect("https listener");
    let cfg = tls_client_config(&der, &[]);
    let mut tcp = TcpStream::connect(https).await.unwrap();
    tcp.write_all(&v2("[2001:db8::42]:443")).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("app1.repl.co").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    tls.write_all(GET).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw)).await;
    assert_eq!(
        statuses(&raw).first().copied(),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(forwarded_for(&raw), "2001:db8::42");

    // Per-IP caps count the client, not the balancer: two connections held
    // from one client, its third is refused (429) while another client
    // behind the same balancer address is served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(edge.proxy).await.unwrap();
        s.write_all(&v1("198.51.100.1", 1000)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(s);
    }
    let third = send(edge.proxy, &v1("198.51.100.1", 1001), GET).await;
    assert_eq!(
        statuses(&third).first().copied(),
        Some(429),
        "{}",
        String::from_utf8_lossy(&third)
    );
    let other = send(edge.proxy, &v1("198.51.100.2", 1002), GET).await;
    assert_eq!(statuses(&other).first().copied(), Some(200));
}
