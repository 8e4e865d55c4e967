//! TLS on the client side of the load generators: the stream a WebSocket
//! tunnel rides on (plain TCP or rustls over TCP), the client config that
//! trusts the comparison's own certificate, and the handshake generator.
//!
//! - [`client_config`]: trust exactly one PEM certificate (the harness
//!   writes a self-signed `*.repl.co` one for every peer), offer `alpn`,
//!   session resumption on or off.
//! - [`connect`]: TCP connect + handshake with the Host as SNI.
//! - [`handshakes`]: new connections in a closed loop, each one request
//!   with `Connection: close` read to the end: what a proxy spends per
//!   connection, full or resumed (every resumed one is checked to be).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

/// A load generator's connection: plain TCP or TLS over TCP.
pub type BenchStream = tokio_util::either::Either<TcpStream, TlsStream<TcpStream>>;

/// Why a TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}: no certificate in it")]
    NoCertificate(String),
    #[error("{0}: {1}")]
    Bad(String, String),
}

/// A rustls client config trusting the certificates in `ca_pem`, offering
/// `alpn`; `resume` keeps session tickets (false: every connection is a
/// full handshake).
pub fn client_config(ca_pem: &Path, alpn: &[&str], resume: bool) -> Result<Arc<rustls::ClientConfig>, TlsClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let name = ca_pem.display().to_string();
    let pem = std::fs::read(ca_pem).map_err(|source| TlsClientError::Read {
        path: name.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pemfile_certs(&pem) {
        roots
            .add(der)
            .map_err(|e| TlsClientError::Bad(name.clone(), e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsClientError::NoCertificate(name));
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// The DER certificates of a PEM file (base64 between BEGIN/END CERTIFICATE).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// TCP connect to `addr` and a TLS handshake naming `host`.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    cfg: &Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("server name: {e}"))?;
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// What a handshake run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandshakeResult {
    pub resume: bool,
    pub concurrency: usize,
    /// Connections that completed a handshake and a 200, after warm-up.
    pub connections: u64,
    /// All completed connections, warm-up included (what the proxy's CPU covers).
    pub connections_total: u64,
    /// Of `connections_total`, how many resumed a session.
    pub resumed: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_sec: f64,
}

/// One connection: handshake, one request, the answer read to its end.
/// Returns whether the session was resumed.
async fn one(addr: SocketAddr, host: &str, cfg: &Arc<rustls::ClientConfig>) -> Result<bool, String> {
    let mut tls = connect(addr, host, cfg).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(512);
    // A peer that closes without close_notify still gave its answer.
    let _ = tls.read_to_end(&mut answer).await;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        ));
    }
    Ok(resumed)
}

/// `concurrency` clients making new connections back to back for
/// `warmup + duration`.
pub async fn handshakes(
    addr: SocketAddr,
    host: String,
    cfg: Arc<rustls::ClientConfig>,
    resume: bool,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> HandshakeResult {
    let t0 = Instant::now();
    let (record_from, end) = (t0 + warmup, t0 + warmup + duration);
    let host = Arc::new(host);
    let progress = Arc::new(super::Progress::default());
    let ticker = super::report_progress("tls-handshakes", end - t0, progress.clone());
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (host, cfg, progress) = (host.clone(), cfg.clone(), progress.clone());
            tokio::spawn(async move {
                let (mut measured, mut total, mut resumed, mut errors) = (0u64, 0u64, 0u64, 0u64);
                while Instant::now() < end {
                    let started = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(10), one(addr, &host, &cfg)).await {
                        Ok(Ok(r)) => {
                            progress.answer();
                            total += 1;
                            resumed += u64::from(r);
                            measured += u64::from(started >= record_from);
                        }
                        _ => {
                            progress.error();
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (measured, total, resumed, errors)
            })
        })
        .collect();
    let mut r = HandshakeResult {
        resume,
        concurrency,
        seconds: duration.as_secs_f64(),
        ..Default::default()
    };
    for t in tasks {
        if let Ok((m, total, resumed, e)) = t.await {
            r.connections += m;
            r.connections_total += total;
            r.resumed += resumed;
            r.errors += e;
        }
    }
    ticker.abort();
    r.per_sec = r.connections as f64 / r.seconds.max(1e-9);
    r
}
