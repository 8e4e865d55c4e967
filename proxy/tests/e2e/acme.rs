//! Certificates for custom domains end to end, against a real ACME CA
//! (Debian's `pebble` and `pebble-challtestsrv`, started here on ports the
//! OS chose): a custom domain in the database -> `placectl certs run`
//! orders it -> pebble validates the challenge against an edge (HTTP-01,
//! and separately TLS-ALPN-01) -> the certificate lands in PostgreSQL ->
//! an edge of another region serves it, trusted through pebble's root,
//! without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::postgres::PgDb;
use crate::{dead_addr, free_addr, world};

/// The fleet certificate key every edge and the issuer share in a test.
const SEAL_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// pebble and its DNS server, killed on drop.
pub(crate) struct Pebble {
    _procs: (Proc, Proc),
    pub dir: tempfile::TempDir,
    pub directory: String,
    /// The root of pebble's own TLS listener (for the ACME client).
    pub tls_root: PathBuf,
    management: SocketAddr,
}

/// A free UDP port on loopback (bound, then released).
fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` of 127.0.0.1 (every name resolves there).
    pub async fn start(http_port: u16, tls_port: u16) -> Pebble {
        for b in ["pebble", "pebble-challtestsrv"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {b}")])
                    .output()
                    .unwrap()
                    .status
                    .success(),
                "{b} is needed (scripts/setup.sh installs Debian's pebble)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        // pebble's own listener: a CA and a leaf for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "edgeplane test pebble listener root");
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let tls_root = dir.path().join("listener-root.pem");
        std::fs::write(&tls_root, ca.pem()).unwrap();
        std::fs::write(dir.path().join("listener.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("listener.key"), leaf_key.serialize_pem()).unwrap();
        let (listen, management, dns) = (free_addr(), free_addr(), free_udp());
        let config = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("listener.pem"),
            "privateKey": dir.path().join("listener.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args([
                "-dns01",
                &dns.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args(["-management", &free_addr().to_string()])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .args(["-config", &dir.path().join("pebble.json").display().to_string()])
            .args(["-dnsserver", &dns.to_string()])
            // No sleep before validating, no nonces refused at random: the
            // test measures the edge and the issuer, not pebble's chaos.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let procs = (Proc(dns_server), Proc(pebble));
        eventually("pebble listening", 20, || std::net::TcpStream::connect(listen).is_ok()).await;
        Pebble {
            _procs: procs,
            directory: format!("https://{listen}/dir"),
            tls_root,
            management,
            dir,
        }
    }

    /// The root pebble issues under (PEM), from its management interface.
    pub fn issuing_root(&self) -> Vec<u8> {
        let out = Command::new("curl")
            .args(["-sf", "--cacert", &self.tls_root.display().to_string()])
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pebble's root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

/// An edge on PostgreSQL with a TLS listener (the harness's `*.repl.co`
/// override certificate) and the fleet certificate key.
pub(crate) async fn cert_edge(region: &str, url: &str, tls_extra: &str) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    write_repl_co_cert(dir.path());
    std::fs::write(dir.path().join("seal.key"), format!("{SEAL_KEY}\n")).unwrap();
    cert_edge_in(dir, region, url, tls_extra).await
}

/// [`cert_edge`] in a directory made by it before (a restart: the same
/// last-known-good file and certificate disk cache).
pub(crate) async fn cert_edge_in(dir: tempfile::TempDir, region: &str, url: &str, tls_extra: &str) -> Edge {
    let tls = format!("{TLS_SECTION}\ncert_miss_ttl_ms = 500\n{tls_extra}");
    let placement = format!(
        "source = \"postgres\"\npostgres_url = \"{url}\"\npoll_interval_ms = 200\n\
         connect_timeout_ms = 1000\nlast_known_good = \"lkg.json\"\nlast_known_good_interval_ms = 100\n"
    );
    let opts = EdgeOpts {
        tls: Some(&tls),
        security: "cert_seal_key_file = \"seal.key\"\n",
        ..Default::default()
    };
    Edge::start_in(dir, region, &placement, &opts, true).await
}

/// The fleet key, for tests that run placectl themselves.
pub(crate) fn write_seal_key(dir: &Path) -> PathBuf {
    let p = dir.join("seal.key");
    std::fs::write(&p, SEAL_KEY).unwrap();
    p
}

/// `placectl certs run` against `pebble`, on `db`, logging to
/// `issuer-NAME.log` in pebble's directory; `extra` may set any flag.
pub(crate) fn issuer(db: &PgDb, pebble: &Pebble, name: &str, extra: &[&str]) -> Proc {
    let key = write_seal_key(pebble.dir.path());
    let defaults = [
        ("--propagation-ms", "200"),
        ("--poll-secs", "1"),
        ("--retry-base-secs", "1"),
    ];
    let args: Vec<&str> = defaults
        .iter()
        .filter(|(flag, _)| !extra.contains(flag))
        .flat_map(|(flag, value)| [*flag, *value])
        .collect();
    let child = Command::new(edgeplane_bin().with_file_name("placectl"))
        .args(["certs", "run", "--acme-directory", &pebble.directory])
        .args(["--acme-root", &pebble.tls_root.display().to_string()])
        .args(["--seal-key-file", &key.display().to_string()])
        .args(&args)
        .args(extra)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(issuer_log(pebble, name)).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

fn issuer_log(pebble: &Pebble, name: &str) -> PathBuf {
    pebble.dir.path().join(format!("issuer-{name}.log"))
}

/// A TLS client trusting the PEM certificates of `root_pem`, offering
/// `alpn`.
pub(crate) fn client_trusting(root_pem: &[u8], alpn: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

/// A GET over TLS to `addr` with SNI and Host `host`, trusting `root_pem`:
/// the status line, or the TLS error.
pub(crate) async fn https_get(addr: SocketAddr, host: &str, root_pem: &[u8]) -> Result<String, String> {
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_trusting(root_pem, b"http/1.1")));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(text)
}

/// Adds `host` to `custom_domains` (for the world's repl r1).
pub(crate) async fn add_domain(db: &PgDb, host: &str) {
    db.client
        .execute(
            "INSERT INTO custom_domains (hostname, repl_id) VALUES ($1, 'r1')",
            &[&host],
        )
        .await
        .unwrap();
}

/// Makes `host`'s certificate due for renewal now and wakes the issuer.
async fn make_due(db: &PgDb, host: &str) {
    db.client
        .execute(
            "UPDATE certificates SET renew_after = now() WHERE hostname = $1",
            &[&host],
        )
        .await
        .unwrap();
    db.client
        .execute("SELECT pg_notify('edgeplane_certs_wanted', $1)", &[&host])
        .await
        .unwrap();
}

async fn certificate_revision(db: &PgDb, host: &str) -> Option<i64> {
    db.client
        .query_opt("SELECT revision FROM certificates WHERE hostname = $1", &[&host])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn wait_for_certificate(db: &PgDb, host: &str, pebble: &Pebble, issuer_log: &Path, newer_than: i64) -> i64 {
    for _ in 0..600 {
        if let Some(r) = certificate_revision(db, host).await.filter(|&r| r > newer_than) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no certificate for {host} within 60 s\nissuer:\n{}\npebble:\n{}",
        std::fs::read_to_string(issuer_log).unwrap_or_default(),
        pebble.log()
    );
}

struct Fleet {
    _vms: (FakeVm, FakeVm, FakeVm),
    db: PgDb,
    /// us-east1: the domain's home, and where pebble validates.
    a: Edge,
    /// ap-south1: serves the domain by forwarding to A.
    b: Edge,
}

async fn fleet() -> Fleet {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let db = PgDb::new(&world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr())).await;
    let a = cert_edge("us-east1", &db.url, "").await;
    let b = cert_edge("ap-south1", &db.url, "").await;
    db.set_edge_addr("us-east1", a.proxy).await;
    db.set_edge_addr("ap-south1", b.proxy).await;
    Fleet {
        _vms: (vm1, vm2, vm3),
        db,
        a,
        b,
    }
}

async fn issued_and_served_everywhere(challenge: &str) {
    let f = fleet().await;
    let pebble = Pebble::start(f.a.proxy.port(), f.a.https.unwrap().port()).await;
    let host = "www.example.test";
    let root = pebble.issuing_root();
    add_domain(&f.db, host).await;
    // Before the issuer runs: a permitted name with no certificate fails
    // the handshake at once, counted as not issued (B knows the domain
    // from the world directory once its delta arrives).
    let mut not_issued = 0.0;
    for _ in 0..50 {
        assert!(https_get(f.b.https.unwrap(), host, &root).await.is_err());
        let m = f.b.metrics().await;
        not_issued = metric_with(
            &m,
            "edgeplane_tls_handshakes_total",
            &["cert=\"custom\"", "outcome=\"not_issued\""],
        )
        .unwrap_or(0.0);
        if not_issued >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_issued >= 1.0, "the directory's domain never counted as not issued");
    let metrics_at = free_addr();
    let _issuer = issuer(
        &f.db,
        &pebble,
        challenge,
        &["--challenge", challenge, "--metrics-listen", &metrics_at.to_string()],
    );
    let log = issuer_log(&pebble, challenge);
    let first = wait_for_certificate(&f.db, host, &pebble, &log, 0).await;
    // Every edge serves it from the next handshake, without a restart: B
    // (another region) forwards the request to A, whose VM answers.
    for edge in [&f.b, &f.a] {
        let mut last = String::new();
        for _ in 0..50 {
            match https_get(edge.https.unwrap(), host, &root).await {
                Ok(r) if r.starts_with("HTTP/1.1 200") => {
                    last.clear();
                    assert!(r.contains("x-served-by: vm-1"), "{r}");
                    break;
                }
                other => last = format!("{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(last.is_empty(), "edge {:?}: {last}", edge.https);
    }
    let m = f.b.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_cert_fetches_total", &["outcome=\"ok\""]),
        Some(1.0),
        "{m}"
    );
    if challenge == "tls-alpn-01" {
        let m = f.a.metrics().await;
        let acme = metric_with(
            &m,
            "edgeplane_tls_handshakes_total",
            &["cert=\"acme\"", "outcome=\"served\""],
        );
        assert!(
            acme.unwrap_or(0.0) >= 1.0,
            "the CA's acme-tls/1 handshakes are counted: {m}"
        );
    }
    if challenge == "http-01" {
        let m = f.a.metrics().await;
        assert!(
            metric_value(&m, "edgeplane_acme_challenges_served_total").unwrap() >= 1.0,
            "{m}"
        );
    }
    // Renewal: the issuer renews what is due; every edge moves to the new one.
    make_due(&f.db, host).await;
    let renewed = wait_for_certificate(&f.db, host, &pebble, &log, first).await;
    assert!(renewed > first);
    // Every edge moves to the renewed certificate (a second fetch each).
    eventually_async(&f.b, host, &root, 2).await;
    eventually_async(&f.a, host, &root, 2).await;
    let m = f.b.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_cert_fetches_total", &["outcome=\"ok\""]),
        Some(2.0),
        "{m}"
    );
    // The issuer's metrics say what it did.
    let m = get(metrics_at, "issuer", "/metrics", &[]).await.body_str();
    assert_eq!(metric_value(&m, "edgeplane_acme_lease_held"), Some(1.0), "{m}");
    assert!(metric_with(&m, "edgeplane_acme_orders_total", &["kind=\"new\"", "outcome=\"ok\""]).unwrap() >= 1.0);
    assert_eq!(
        metric_with(
            &m,
            "edgeplane_acme_orders_total",
            &["kind=\"renewal\"", "outcome=\"ok\""]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(metric_with(&m, "edgeplane_certs_expiring", &["within=\"14d\""]).is_some());
    // No challenge of the name left behind.
    let left: i64 =
        f.db.client
            .query_one("SELECT count(*) FROM acme_challenges WHERE hostname = $1", &[&host])
            .await
            .unwrap()
            .get(0);
    assert_eq!(left, 0);
    if challenge == "http-01" {
        // A domain removed from custom_domains is never renewed.
        f.db.client
            .execute("DELETE FROM custom_domains WHERE hostname = $1", &[&host])
            .await
            .unwrap();
        make_due(&f.db, host).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            certificate_revision(&f.db, host).await,
            Some(renewed),
            "renewed after its removal"
        );
    }
}

/// Requests until `edge` has fetched `n` certificates (a handshake needs
/// the new revision).
async fn eventually_async(edge: &Edge, host: &str, root: &[u8], n: u64) {
    for _ in 0..50 {
        let r = https_get(edge.https.unwrap(), host, root).await;
        let m = edge.metrics().await;
        if metric_with(&m, "edgeplane_cert_fetches_total", &["outcome=\"ok\""]) == Some(n as f64) {
            assert!(r.unwrap().starts_with("HTTP/1.1 200"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("edge never fetched certificate #{n} of {host}");
}

#[tokio::test]
async fn a_custom_domain_is_issued_by_http_01_and_served_by_every_edge() {
    issued_and_served_everywhere("http-01").await;
}

#[tokio::test]
async fn a_custom_domain_is_issued_by_tls_alpn_01() {
    issued_and_served_everywhere("tls-alpn-01").await;
}

/// Two issuers: one holds the lease and orders; killed in the middle of an
/// order (its challenge published, the CA not yet told), the other takes
/// the lease over, requeues the orphaned order and finishes it. One
/// certificate per name, and no order ever ran on both.
#[tokio::test]
async fn a_second_issuer_takes_over_an_order_the_first_left_mid_way() {
    let f = fleet().await;
    let pebble = Pebble::start(f.a.proxy.port(), f.a.https.unwrap().port()).await;
    // The first stays mid-order for 30 s (the challenge is published, the
    // CA is told only after the "propagation" wait).
    let first = issuer(&f.db, &pebble, "first", &["--propagation-ms", "30000"]);
    let log1 = issuer_log(&pebble, "first");
    eventually("the first issuer holds the lease", 20, || {
        std::fs::read_to_string(&log1)
            .unwrap_or_default()
            .contains("holding the issuer lease")
    })
    .await;
    let _second = issuer(&f.db, &pebble, "second", &[]);
    let log2 = issuer_log(&pebble, "second");
    let host = "www.example.test";
    add_domain(&f.db, host).await;
    for _ in 0..200 {
        let n: i64 =
            f.db.client
                .query_one("SELECT count(*) FROM acme_challenges WHERE hostname = $1", &[&host])
                .await
                .unwrap()
                .get(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending: String =
        f.db.client
            .query_one("SELECT state FROM cert_orders WHERE hostname = $1", &[&host])
            .await
            .unwrap()
            .get(0);
    assert_eq!(pending, "pending");
    let second_log = std::fs::read_to_string(&log2).unwrap();
    assert!(
        second_log.contains("waiting for the issuer lease") && !second_log.contains("holding"),
        "{second_log}"
    );
    drop(first); // SIGKILL: its session ends, and the lease with it
    wait_for_certificate(&f.db, host, &pebble, &log2, 0).await;
    let second_log = std::fs::read_to_string(&log2).unwrap();
    assert!(second_log.contains("orphaned order(s) requeued"), "{second_log}");
    assert!(
        second_log.contains(&format!("{host}: new certificate stored")),
        "{second_log}"
    );
    let rows: i64 =
        f.db.client
            .query_one("SELECT count(*) FROM certificates WHERE hostname = $1", &[&host])
            .await
            .unwrap()
            .get(0);
    assert_eq!(rows, 1);
    assert!(!std::fs::read_to_string(&log1).unwrap().contains("certificate stored"));
}

/// A hostname's order: state, attempts, last error, and the wait it was
/// given (seconds from its last update to its next try).
async fn order_state(db: &PgDb, host: &str) -> Option<(String, i32, Option<String>, f64)> {
    db.client
        .query_opt(
            "SELECT state, attempts, last_error, extract(epoch FROM next_try_at - updated_at)::float8
               FROM cert_orders WHERE hostname = $1",
            &[&host],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// A domain the CA cannot validate (its challenge port reaches nothing):
/// each failed order is kept with the CA's reason and retried later and
/// later (exponential backoff), `certs ls` and the issuer's metrics say so,
/// and `certs request` clears the wait.
#[tokio::test]
async fn a_failing_domain_backs_off_with_its_reason_kept() {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let db = PgDb::new(&world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr())).await;
    db.client.execute("DELETE FROM custom_domains", &[]).await.unwrap();
    let dead = dead_addr().port();
    let pebble = Pebble::start(dead, dead).await;
    let metrics_at = free_addr();
    let _issuer = issuer(&db, &pebble, "failing", &["--metrics-listen", &metrics_at.to_string()]);
    let host = "broken.example.test";
    add_domain(&db, host).await;
    let mut waits = Vec::new();
    for _ in 0..300 {
        if let Some((s, attempts, _, wait)) = order_state(&db, host).await {
            if s == "failed" && attempts as usize > waits.len() {
                waits.push(wait);
            }
        }
        if waits.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(waits.len() >= 3, "three failed attempts expected, saw {waits:?}");
    // --retry-base-secs 1: waits of [0.5, 1), [1, 2), [2, 4) s.
    assert!(waits[0] < 1.0 && waits[1] >= 1.0 && waits[2] >= 2.0, "{waits:?}");
    let (_, _, last_error, _) = order_state(&db, host).await.unwrap();
    let last_error = last_error.unwrap();
    assert!(
        last_error.contains("connection") || last_error.contains("refused"),
        "{last_error}"
    );
    let ls = db.placectl(&["certs", "ls"]);
    assert!(ls.contains(host) && ls.contains("failed"), "{ls}");
    let m = get(metrics_at, "issuer", "/metrics", &[]).await.body_str();
    assert!(
        metric_with(
            &m,
            "edgeplane_acme_orders_total",
            &["kind=\"new\"", "outcome=\"failed\""]
        )
        .unwrap()
            >= 3.0
    );
    // The gauge is refreshed each pass; between a retry's start and its
    // end the host is not waiting, so look a few times.
    let mut in_backoff = false;
    for _ in 0..50 {
        let m = get(metrics_at, "issuer", "/metrics", &[]).await.body_str();
        if metric_value(&m, "edgeplane_acme_backoff_hosts") == Some(1.0) {
            in_backoff = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_backoff, "edgeplane_acme_backoff_hosts never showed the failing host");
    assert!(db.placectl(&["certs", "request", host]).contains("requested"));
    let attempts: i32 = db
        .client
        .query_one("SELECT attempts FROM cert_orders WHERE hostname = $1", &[&host])
        .await
        .unwrap()
        .get(0);
    assert!(attempts <= 1, "request clears the backoff (attempts {attempts})");
    let out = db.placectl_output(&["certs", "request", "nowhere.example.org"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in custom_domains"));
}

/// The database restarts under a running issuer (its session, and the
/// lease, end): the issuer connects again, takes the lease back, and a
/// domain added after the restart gets its certificate.
#[tokio::test]
async fn the_issuer_survives_a_database_restart() {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let mut pg = crate::pg_server::PrivatePg::start().await;
    let db = PgDb::new_on(
        &pg.admin_url(),
        &world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr()),
    )
    .await;
    let edge = cert_edge("us-east1", &db.url, "").await;
    let pebble = Pebble::start(edge.proxy.port(), edge.https.unwrap().port()).await;
    let _issuer = issuer(&db, &pebble, "restart", &[]);
    let log = issuer_log(&pebble, "restart");
    eventually("the issuer holds the lease", 20, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("holding the issuer lease")
    })
    .await;
    pg.kill();
    pg.run().await;
    let c = crate::postgres::connect(&db.url).await;
    let host = "after.example.test";
    c.execute(
        "INSERT INTO custom_domains (hostname, repl_id) VALUES ($1, 'r1')",
        &[&host],
    )
    .await
    .unwrap();
    let mut issued = false;
    for _ in 0..600 {
        if c.query_opt("SELECT 1 FROM certificates WHERE hostname = $1", &[&host])
            .await
            .unwrap()
            .is_some()
        {
            issued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(issued, "no certificate after the restart:\n{text}");
    assert!(text.contains("connecting again"), "{text}");
    assert_eq!(text.matches("holding the issuer lease").count(), 2, "{text}");
}
