//! Control-plane certificates on real edges without a CA: uploaded with
//! `placectl certs upload`, fetched on the first handshake, kept on disk
//! across a restart while the database is away, bad uploads and keys that
//! do not open refused with the previous certificate still serving, and an
//! SNI flood that never reaches the database.

use std::time::Duration;

use futures_util::StreamExt;

use crate::acme::{cert_edge, cert_edge_in, https_get, write_seal_key};
use crate::harness::*;
use crate::pg_server::PrivatePg;
use crate::postgres::PgDb;
use crate::{dead_addr, world};

/// Three fake VMs, a database seeded with the test world, and one edge of
/// us-east1 on it with the fleet key (`tls_extra`: more `[tls]` lines).
async fn one_edge(tls_extra: &str) -> ((FakeVm, FakeVm, FakeVm), PgDb, Edge) {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let db = PgDb::new(&world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr())).await;
    let edge = cert_edge("us-east1", &db.url, tls_extra).await;
    ((vm1, vm2, vm3), db, edge)
}

/// A self-signed pair for `host`: (chain PEM, key PEM).
fn pair(host: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

/// `placectl certs upload` of `(chain, key)` for `host`, sealed with the
/// fleet key (or with `other_key`).
fn upload(db: &PgDb, host: &str, pem: &(String, String), other_key: bool) -> std::process::Output {
    let d = tempfile::tempdir().unwrap();
    let key = if other_key {
        let p = d.path().join("other.key");
        std::fs::write(&p, "00".repeat(32)).unwrap();
        p
    } else {
        write_seal_key(d.path())
    };
    std::fs::write(d.path().join("c.pem"), &pem.0).unwrap();
    std::fs::write(d.path().join("k.pem"), &pem.1).unwrap();
    let arg = |n: &str| d.path().join(n).display().to_string();
    db.placectl_output(&[
        "certs",
        "upload",
        host,
        &arg("c.pem"),
        &arg("k.pem"),
        "--seal-key-file",
        &key.display().to_string(),
    ])
}

fn uploaded(db: &PgDb, host: &str, pem: &(String, String)) {
    let out = upload(db, host, pem, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Retries a GET over TLS until it answers 200 (the delta has to arrive).
async fn served(edge: &Edge, host: &str, root: &str) {
    let mut last = String::new();
    for _ in 0..100 {
        match https_get(edge.https.unwrap(), host, root.as_bytes()).await {
            Ok(r) if r.starts_with("HTTP/1.1 200") => return,
            other => last = format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{host} never served over TLS: {last}");
}

fn fetches(metrics: &str, outcome: &str) -> f64 {
    metric_with(
        metrics,
        "edgeplane_cert_fetches_total",
        &[&format!("outcome=\"{outcome}\"")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_restart_without_the_database_serves_every_certificate_served_before() {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let mut pg = PrivatePg::start().await;
    let db = PgDb::new_on(
        &pg.admin_url(),
        &world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr()),
    )
    .await;
    let edge = cert_edge("us-east1", &db.url, "").await;
    let www = pair("www.example.com");
    uploaded(&db, "www.example.com", &www);
    served(&edge, "www.example.com", &www.0).await;
    let Edge { proc, dir, .. } = edge;
    drop(proc);
    assert!(
        std::fs::read_dir(dir.path().join("lkg.json.certs")).unwrap().count() == 1,
        "the fetched certificate is on disk"
    );
    pg.kill();
    // Started while the database is away: the last-known-good table routes
    // and the disk cache's certificate handshakes.
    let edge = cert_edge_in(dir, "us-east1", &db.url, "").await;
    let r = https_get(edge.https.unwrap(), "www.example.com", www.0.as_bytes()).await;
    assert!(r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200")), "{r:?}");
    assert_eq!(metric_value(&edge.metrics().await, "edgeplane_certs_cached"), Some(1.0));
    // The database returns: a new domain works within one interval.
    pg.run().await;
    let db2 = crate::postgres::connect(&db.url).await;
    db2.execute(
        "INSERT INTO custom_domains (hostname, repl_id) VALUES ('shop.example.com', 'r1')",
        &[],
    )
    .await
    .unwrap();
    let shop = pair("shop.example.com");
    uploaded(&db, "shop.example.com", &shop);
    served(&edge, "shop.example.com", &shop.0).await;
}

#[tokio::test]
async fn bad_certificates_are_refused_and_the_previous_one_keeps_serving() {
    let (_vms, db, edge) = one_edge("").await;
    let good = pair("www.example.com");
    uploaded(&db, "www.example.com", &good);
    served(&edge, "www.example.com", &good.0).await;
    // Each refused by placectl with the reason; nothing is stored.
    let other = pair("www.example.com");
    let expired = {
        let mut p = rcgen::CertificateParams::new(vec!["www.example.com".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let k = rcgen::KeyPair::generate().unwrap();
        (p.self_signed(&k).unwrap().pem(), k.serialize_pem())
    };
    let cases = [
        (("not a pem".to_string(), good.1.clone()), "no PEM certificate"),
        ((good.0.clone(), other.1.clone()), "does not belong"),
        (expired, "expired"),
        (pair("api.example.com"), "does not name www.example.com"),
    ];
    for (pem, why) in &cases {
        let out = upload(&db, "www.example.com", pem, false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{why}: {err}");
    }
    let out = upload(&db, "nobody.example.org", &pair("nobody.example.org"), false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in custom_domains"));
    // A key sealed with another fleet key: the edge refuses the new copy,
    // counts it, and the one it had keeps serving.
    let replacement = pair("www.example.com");
    assert!(upload(&db, "www.example.com", &replacement, true).status.success());
    let mut bad = 0.0;
    for _ in 0..100 {
        let r = https_get(edge.https.unwrap(), "www.example.com", good.0.as_bytes()).await;
        assert!(r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200")), "{r:?}");
        bad = fetches(&edge.metrics().await, "bad");
        if bad >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bad, 1.0, "the sealed key that does not open is counted");
    // Within the miss interval the edge does not ask again.
    for _ in 0..5 {
        let _ = https_get(edge.https.unwrap(), "www.example.com", good.0.as_bytes()).await;
    }
    assert_eq!(fetches(&edge.metrics().await, "bad"), 1.0);
}

/// 10,000 handshakes for random names under the hosting suffix (served by
/// the wildcard) and outside every table: no certificate fetch, no wake of
/// the issuer, no order; a real custom domain keeps handshaking meanwhile.
#[tokio::test]
async fn an_sni_flood_never_reaches_the_database() {
    let _alone = CPU_HEAVY.lock().await;
    let (_vms, db, edge) = one_edge("").await;
    let www = pair("www.example.com");
    uploaded(&db, "www.example.com", &www);
    served(&edge, "www.example.com", &www.0).await;
    let (listener, mut conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    let (tx, mut wakes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut m = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = m.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener.batch_execute("LISTEN edgeplane_certs_wanted").await.unwrap();
    let addr = edge.https.unwrap();
    let flood = |i: usize| {
        let name = if i.is_multiple_of(2) {
            format!("r{i:x}q.repl.co")
        } else {
            format!("x{i:x}.nowhere-{i}.example")
        };
        async move { any_handshake(addr, &name).await }
    };
    let started = std::time::Instant::now();
    let results: Vec<bool> = futures_util::stream::iter(0..10_000)
        .map(flood)
        .buffer_unordered(32)
        .collect()
        .await;
    let ok = results.iter().filter(|&&b| b).count();
    assert_eq!(
        ok, 5_000,
        "every suffix name handshakes on the wildcard, no other name does"
    );
    // A real custom domain right after (and its certificate still cached).
    let r = https_get(addr, "www.example.com", www.0.as_bytes()).await;
    assert!(r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200")), "{r:?}");
    let m = edge.metrics().await;
    for o in ["ok", "missing", "bad", "error"] {
        assert_eq!(fetches(&m, o), if o == "ok" { 1.0 } else { 0.0 }, "fetches {o}: {m}");
    }
    assert_eq!(
        metric_with(
            &m,
            "edgeplane_tls_handshakes_total",
            &["cert=\"none\"", "outcome=\"unknown_name\""]
        ),
        Some(5_000.0)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(wakes.try_recv().is_err(), "no name of the flood woke the issuer");
    let orders: i64 = db
        .client
        .query_one("SELECT count(*) FROM cert_orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 0);
    eprintln!("10,000 flood handshakes in {:?}", started.elapsed());
}

/// A TLS handshake for SNI `name` that accepts any certificate: whether
/// the edge had one to present.
pub(crate) async fn any_handshake(addr: std::net::SocketAddr, name: &str) -> bool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    connector.connect(sni, tcp).await.is_ok()
}

/// Accepts any server certificate (the flood only counts handshakes).
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A wildcard certificate uploaded for a suffix is loaded by every edge
/// before any handshake asks for it (and then serves any one label under
/// it), and is never evicted.
#[tokio::test]
async fn wildcards_from_the_control_plane_are_loaded_before_any_handshake() {
    let (_vms, db, edge) = one_edge("cert_cache_entries = 1\n").await;
    let wild = pair("*.example.net");
    uploaded(&db, "*.example.net", &wild);
    let mut loaded = false;
    for _ in 0..100 {
        if fetches(&edge.metrics().await, "ok") == 1.0 {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(loaded, "the wildcard was not loaded ahead of handshakes");
    // Two exact names through an LRU of one entry: the wildcard stays.
    for host in ["www.example.com", "shop.example.com"] {
        if host != "www.example.com" {
            crate::acme::add_domain(&db, host).await;
        }
        let p = pair(host);
        uploaded(&db, host, &p);
        served(&edge, host, &p.0).await;
    }
    for name in ["a.example.net", "b.example.net"] {
        let r = https_get(edge.https.unwrap(), name, wild.0.as_bytes()).await;
        // The app is unknown (404), but the handshake used the wildcard.
        assert!(r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 404")), "{name}: {r:?}");
    }
    assert!(https_get(edge.https.unwrap(), "a.b.example.net", wild.0.as_bytes())
        .await
        .is_err());
    assert_eq!(fetches(&edge.metrics().await, "ok"), 3.0, "no wildcard fetched twice");
}

/// `tls.certs_dir`'s exact name wins over the control plane's (the
/// operator's override), and HTTP/2 connections get the same certificates
/// as HTTP/1.1 (one resolver for every ALPN).
#[tokio::test]
async fn the_override_directory_wins_and_http2_gets_the_same_certificates() {
    let (_vms, db, edge) = one_edge("").await;
    let from_db = pair("www.example.com");
    uploaded(&db, "www.example.com", &from_db);
    served(&edge, "www.example.com", &from_db.0).await;
    // HTTP/2 by ALPN, same certificate.
    let h2 = alpn_handshake(edge.https.unwrap(), "www.example.com", &from_db.0, b"h2").await;
    assert_eq!(h2.as_deref(), Ok(&b"h2"[..]));
    // The operator drops a pair for the same name into certs_dir.
    let over = pair("www.example.com");
    let certs = edge.dir.path().join("certs");
    std::fs::write(certs.join("www.example.com.key"), &over.1).unwrap();
    std::fs::write(certs.join("www.example.com.crt"), &over.0).unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if alpn_handshake(edge.https.unwrap(), "www.example.com", &over.0, b"h2")
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the override directory's certificate never served");
    let r = https_get(edge.https.unwrap(), "www.example.com", from_db.0.as_bytes()).await;
    assert!(r.is_err(), "the database's certificate still served: {r:?}");
}

/// A handshake offering one ALPN protocol, trusting `root_pem`: the
/// protocol the edge chose.
async fn alpn_handshake(
    addr: std::net::SocketAddr,
    host: &str,
    root_pem: &str,
    alpn: &[u8],
) -> Result<Vec<u8>, String> {
    let cfg = crate::acme::client_trusting(root_pem.as_bytes(), alpn);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let sni = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = connector.connect(sni, tcp).await.map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec())
}

/// A browser opens several connections at once: every first handshake of
/// an uncached name succeeds, and the database is asked once.
#[tokio::test]
async fn concurrent_first_handshakes_share_one_fetch() {
    let (_vms, db, edge) = one_edge("").await;
    let www = pair("www.example.com");
    uploaded(&db, "www.example.com", &www);
    // Wait for the index to hold the name (no handshake yet).
    wait_snapshot(&edge, |s| s["counts"]["certificates"] == 1).await;
    let addr = edge.https.unwrap();
    let all =
        futures_util::future::join_all((0..8).map(|_| https_get(addr, "www.example.com", www.0.as_bytes()))).await;
    for r in &all {
        assert!(r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200")), "{r:?}");
    }
    assert_eq!(
        fetches(&edge.metrics().await, "ok"),
        1.0,
        "one database question for eight handshakes"
    );
}
