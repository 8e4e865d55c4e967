//! HTTPS: certificates chosen by SNI from a directory and reloaded without
//! a restart; plain HTTP redirected when configured.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use crate::{dead_addr, world};

/// Writes a self-signed pair for `names`; returns the certificate DER.
fn write_pair(dir: &Path, file: &str, names: &[&str]) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    std::fs::write(dir.join(format!("{file}.key")), c.key_pair.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{file}.crt")), c.cert.pem()).unwrap();
    c.cert.der().to_vec()
}

/// One HTTPS GET with SNI `sni`, trusting exactly `trusted`. Returns the
/// raw answer and the certificate the edge presented.
fn https_get(addr: SocketAddr, sni: &str, trusted: &[Vec<u8>], path: &str) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots.add(rustls::pki_types::CertificateDer::from(der.clone())).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(std::io::Error::other)?;
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((out, cert))
}

pub(crate) async fn https(
    addr: SocketAddr,
    sni: &str,
    trusted: &[Vec<u8>],
    path: &str,
) -> std::io::Result<(Resp, Vec<u8>)> {
    let (sni, trusted, path) = (sni.to_string(), trusted.to_vec(), path.to_string());
    tokio::task::spawn_blocking(move || {
        let (raw, cert) = https_get(addr, &sni, &trusted, &path)?;
        Ok((parse_response(&raw)?, cert))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_a_new_one_is_served_without_restart() {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let wildcard = write_pair(&certs, "repl.co", &["*.repl.co"]);
    let custom = write_pair(&certs, "www.example.com", &["www.example.com"]);
    let tls = "listen = [\"127.0.0.1:0\"]\ncerts_dir = \"certs\"\nreload_interval_ms = 200";
    let edge = Edge::start_opts(
        dir,
        "us-east1",
        &snap,
        &EdgeOpts {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;
    let addr = edge.https.expect("https listener");
    let trusted = vec![wildcard.clone(), custom.clone()];

    let (r, cert) = https(addr, "app1.repl.co", &trusted, "/x").await.unwrap();
    assert_eq!((r.status, r.served_by()), (200, Some("vm-1")));
    assert_eq!(cert, wildcard, "the wildcard certificate serves a slug host");
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");

    let (r, cert) = https(addr, "www.example.com", &trusted, "/").await.unwrap();
    assert_eq!((r.status, r.served_by()), (200, Some("vm-1")));
    assert_eq!(cert, custom, "the custom domain gets its own certificate");

    assert!(
        https(addr, "unknown.example.org", &trusted, "/").await.is_err(),
        "no certificate for the name: the handshake fails"
    );

    // Rotate the wildcard certificate; the edge picks it up by itself.
    let rotated = write_pair(&certs, "repl.co", &["*.repl.co"]);
    let trusted = vec![wildcard.clone(), rotated.clone(), custom.clone()];
    let mut served = Vec::new();
    for _ in 0..100 {
        if let Ok((_, c)) = https(addr, "app2.repl.co", &trusted, "/").await {
            served = c;
            if served == rotated {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, rotated, "rotated certificate never served");
    // A broken pair is skipped; the others keep serving.
    std::fs::write(certs.join("broken.crt"), "not a certificate").unwrap();
    std::fs::write(certs.join("broken.key"), "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (r, _) = https(addr, "www.example.com", &trusted, "/").await.unwrap();
    assert_eq!(r.status, 200);
    let m = edge.metrics().await;
    assert!(
        metric_value(&m, "edgeplane_tls_reload_errors_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, "edgeplane_tls_certificates"), Some(2.0));
    assert!(metric_value(&m, "edgeplane_tls_handshake_errors_total").unwrap_or(0.0) >= 1.0);
}

#[tokio::test]
async fn plain_http_redirects_to_https_except_acme_challenges() {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    write_pair(&certs, "repl.co", &["*.repl.co"]);
    let tls = "listen = [\"127.0.0.1:0\"]\ncerts_dir = \"certs\"\nredirect_http = true";
    let edge = Edge::start_opts(
        dir,
        "us-east1",
        &snap,
        &EdgeOpts {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await;
    let port = edge.https.unwrap().port();
    let r = edge.get("app1.repl.co", "/a?b=1", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://app1.repl.co:{port}/a?b=1").as_str())
    );
    assert_eq!(vm1.requests().await, 0);
    // ACME HTTP-01 is the edge's own (from the fleet's challenge table,
    // tests/e2e/acme.rs): an unknown token is a 404, not a redirect, and
    // never reaches the app.
    let r = edge.get("app1.repl.co", "/.well-known/acme-challenge/tok", &[]).await;
    assert_eq!((r.status, r.served_by()), (404, None));
    assert_eq!(vm1.requests().await, 0);
    // Unknown hosts are still 404, not redirected.
    assert_eq!(edge.get("nope.repl.co", "/", &[]).await.status, 404);
}

/// A WebSocket over TLS: the upgrade is answered by the VM, text and a
/// 256 KiB binary message echo through the edge, the close handshake
/// completes, and the tunnel gauge goes back to zero.
#[tokio::test]
async fn websocket_over_tls_echoes_and_closes() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let (edge, wildcard) = Edge::start_tls("us-east1", &snap, EdgeOpts::default()).await;
    let addr = edge.https.expect("https listener");
    let echoed = tokio::task::spawn_blocking(move || {
        let cfg = tls_client_config(&wildcard, &[]);
        let name = rustls::pki_types::ServerName::try_from("app1.repl.co").unwrap();
        let conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let tls = rustls::StreamOwned::new(conn, tcp);
        let req = "wss://app1.repl.co/chat".into_client_request().unwrap();
        let (mut ws, resp) = tokio_tungstenite::tungstenite::client(req, tls).unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()["x-served-by"], "vm-1");
        ws.send(Message::text("hello over tls")).unwrap();
        let mut got = Vec::new();
        let big: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).unwrap();
        while got.len() < 2 {
            if let m @ (Message::Text(_) | Message::Binary(_)) = ws.read().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got[0], Message::text("hello over tls"));
        assert!(
            matches!(&got[1], Message::Binary(b) if b[..] == big[..]),
            "256 KiB echo differs"
        );
        ws.close(None).unwrap();
        loop {
            match ws.read() {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        true
    })
    .await
    .unwrap();
    assert!(echoed);
    for _ in 0..100 {
        if metric_value(&edge.metrics().await, "edgeplane_websocket_tunnels_active") == Some(0.0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the TLS tunnel never closed");
}

/// One `GET /` for app1 on a new TLS connection made with `cfg`, checked
/// to answer 200; returns the connection (for its handshake's details).
async fn get_app1_over_tls(
    addr: std::net::SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("app1.repl.co").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw)).await;
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    tls
}

/// A returning client resumes its TLS session (a reconnecting WebSocket or
/// a new tab skips the full handshake).
#[tokio::test]
async fn a_returning_client_resumes_its_tls_session() {
    let vm1 = FakeVm::start("vm-1");
    let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let (edge, der) = Edge::start_tls("us-east1", &snap, EdgeOpts::default()).await;
    let addr = edge.https.expect("https listener");
    // One client config: its session store keeps what the edge hands out.
    let cfg = tls_client_config(&der, &[b"http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tls = get_app1_over_tls(addr, cfg.clone()).await;
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    assert_eq!(
        kinds,
        vec![Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)],
        "the second connection resumes"
    );
}

/// SIGTERM with a `wss://` tunnel open: the client gets close frame 1001
/// within the grace period, as on plain WebSockets, and the edge exits.
#[tokio::test]
async fn sigterm_closes_a_tls_websocket_with_1001() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let vm1 = FakeVm::start("vm-1");
    let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let (mut edge, der) = Edge::start_tls(
        "us-east1",
        &snap,
        EdgeOpts {
            edge: "grace_period_ms = 3000",
            ..Default::default()
        },
    )
    .await;
    let addr = edge.https.expect("https listener");
    let (mut ws, _) = wss_connect(addr, &der, "app1.repl.co", "wss://app1.repl.co/chat").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let stopped_at = std::time::Instant::now();
    signal(edge.pid(), "-TERM");
    let code = next_close_code(&mut ws).await;
    assert_eq!(code, 1001);
    assert!(
        stopped_at.elapsed() < Duration::from_secs(3),
        "closed after the grace period"
    );
    drop(ws);
    for _ in 0..100 {
        if edge.proc.0.try_wait().unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the edge did not exit after its last tunnel closed");
}

/// The edge picks the cipher suite: AES-128-GCM for a client that asks
/// for AES-256 first (rustls's own default order; its SHA-384 key schedule
/// costs the edge more), and a client that offers only AES-256 still
/// connects with it.
#[tokio::test]
async fn the_edge_prefers_aes_128_but_still_speaks_aes_256() {
    use rustls::CipherSuite as C;
    let vm1 = FakeVm::start("vm-1");
    let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let (edge, der) = Edge::start_tls("us-east1", &snap, EdgeOpts::default()).await;
    let addr = edge.https.expect("https listener");
    let only_aes_256 = {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384],
            ..rustls::crypto::ring::default_provider()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(der.clone())).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        std::sync::Arc::new(cfg)
    };
    let default_order = tls_client_config(&der, &[b"http/1.1"]);
    assert_eq!(
        default_order.crypto_provider().cipher_suites[0].suite(),
        C::TLS13_AES_256_GCM_SHA384,
        "the client asks for AES-256 first"
    );
    for (cfg, want) in [
        (default_order, C::TLS13_AES_128_GCM_SHA256),
        (only_aes_256, C::TLS13_AES_256_GCM_SHA384),
    ] {
        let tls = get_app1_over_tls(addr, cfg).await;
        let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, want);
    }
}
