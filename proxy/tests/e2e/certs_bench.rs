//! Issue 32's certificate benchmarks, run by hand in release (they write
//! bench/results/certs/; ignored in the suite, and they assert nothing
//! about time):
//!
//! ```sh
//! cargo test --release -p edgeplane-proxy --test e2e certs_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `time_to_first_https_answer`: a new custom_domains row to the first
//!   good HTTPS answer through pebble, 20 domains one after another.
//! - `handshakes_with_200k_certificates`: full and resumed handshake times
//!   for a cached custom-domain certificate against the wildcard, with
//!   200,000 certificate names in the index; the first handshake of an
//!   uncached name (one database round trip); memory per index entry and
//!   per cached certificate (10,000 fetched).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::acme::{cert_edge, https_get, issuer, Pebble};
use crate::harness::*;
use crate::postgres::PgDb;
use crate::{dead_addr, world};

fn results_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/results/certs");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "{name}: n={} median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    )
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
#[ignore]
async fn time_to_first_https_answer() {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let db = PgDb::new(&world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr())).await;
    db.client.execute("DELETE FROM custom_domains", &[]).await.unwrap();
    let edge = cert_edge("us-east1", &db.url, "").await;
    let pebble = Pebble::start(edge.proxy.port(), edge.https.unwrap().port()).await;
    let root = pebble.issuing_root();
    let _issuer = issuer(&db, &pebble, "bench", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut times = Vec::new();
    for i in 0..20 {
        let host = format!("site{i}.example.test");
        let t = Instant::now();
        crate::acme::add_domain(&db, &host).await;
        loop {
            if let Ok(r) = https_get(edge.https.unwrap(), &host, &root).await {
                if r.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{host} never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let text = format!(
        "# A new custom_domains row -> the first good HTTPS answer (pebble, HTTP-01,\n\
         # PEBBLE_VA_NOSLEEP=1, issuer --propagation-ms 200, the client retrying every 20 ms;\n\
         # release build, one edge, loopback). 20 domains one after another.\n{}\nall (ms): {:?}\n",
        summary("time to first answer", times.clone()),
        times.iter().map(|t| (t * 10.0).round() / 10.0).collect::<Vec<_>>()
    );
    print!("{text}");
    std::fs::write(results_dir().join("time_to_first_answer.txt"), text).unwrap();
}

/// Full (or resumed) handshakes of `host` on `addr`, one after another,
/// each with a GET: the client-side time of the handshake alone.
async fn handshakes(addr: std::net::SocketAddr, host: &str, root: &[u8], n: usize, resume: bool) -> Vec<f64> {
    let mut cfg = crate::acme::client_trusting(root, b"http/1.1");
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 1 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        let t = Instant::now();
        let tls = connector.connect(name, tcp).await.unwrap();
        let took = t.elapsed().as_secs_f64() * 1000.0;
        drop(tls);
        if i > 0 {
            out.push(took); // the first only warms (and makes a ticket)
        }
    }
    out
}

#[tokio::test]
#[ignore]
async fn handshakes_with_200k_certificates() {
    use edgeplane_control_sync::certs::SealKey;
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let mut db = PgDb::new(&world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr())).await;
    // The edges' fleet key (crate::acme's).
    let seal = SealKey::parse("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=").unwrap();
    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };
    // 10,000 real pairs (their names also custom domains), then 190,000
    // index-only names (one shared chain: they are never fetched here).
    let started = Instant::now();
    let mut pems = Vec::new();
    {
        let tx = db.client.transaction().await.unwrap();
        let ins = tx
            .prepare(
                "INSERT INTO certificates (hostname, chain_pem, key_sealed, not_before, not_after, source)
                 VALUES ($1, $2, $3, now() - interval '1 day', now() + interval '80 days', 'uploaded')",
            )
            .await
            .unwrap();
        let dom = tx
            .prepare("INSERT INTO custom_domains (hostname, repl_id) VALUES ($1, 'r1')")
            .await
            .unwrap();
        for i in 0..10_000 {
            let host = format!("c{i}.example.org");
            let c = rcgen::generate_simple_self_signed(vec![host.clone()]).unwrap();
            let key = c.key_pair.serialize_pem();
            tx.execute(&dom, &[&host]).await.unwrap();
            tx.execute(&ins, &[&host, &c.cert.pem(), &seal.seal(&host, key.as_bytes())])
                .await
                .unwrap();
            if i < 3 {
                pems.push((host, c.cert.pem()));
            }
        }
        tx.batch_execute(
            "INSERT INTO certificates (hostname, chain_pem, key_sealed, not_before, not_after, source)
             SELECT 'n' || g || '.example.net', 'x', '\\x00', now(), now() + interval '80 days', 'uploaded'
               FROM generate_series(1, 190000) g",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    line(format!("# 200,000 certificate rows written in {:?}", started.elapsed()));
    // Memory: an edge on an empty index, then one on 200,000 names.
    let edge = cert_edge("us-east1", &db.url, "").await;
    let m = edge.metrics().await;
    assert_eq!(metric_value(&m, "edgeplane_certs_cached"), Some(0.0));
    let with_index = rss_kib(edge.pid());
    let empty = {
        let db2 = PgDb::new(&world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr())).await;
        let e = cert_edge("us-east1", &db2.url, "").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_kib(e.pid())
    };
    line(format!(
        "edge RSS: {empty} KiB with an empty index, {with_index} KiB with 200,000 names: {:.0} bytes per index entry",
        (with_index as f64 - empty as f64) * 1024.0 / 200_000.0
    ));
    let addr = edge.https.unwrap();
    let wildcard_root = std::fs::read(edge.dir.path().join("certs/repl.co.crt")).unwrap();
    // First handshake of an uncached name: the fetch (one query) included.
    let (host, pem) = &pems[0];
    let mut first = Vec::new();
    for (h, p) in &pems {
        let t = Instant::now();
        let r = https_get(addr, h, p.as_bytes()).await;
        first.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(r.unwrap().starts_with("HTTP/1.1 200"));
    }
    let m = edge.metrics().await;
    line(format!(
        "first handshake + GET of 3 uncached names: {:?} ms (cert_fetches_total ok = {:?}: one query each)",
        first.iter().map(|t| (t * 100.0).round() / 100.0).collect::<Vec<_>>(),
        metric_with(&m, "edgeplane_cert_fetches_total", &["outcome=\"ok\""])
    ));
    let cached = handshakes(addr, host, pem.as_bytes(), 2000, false).await;
    let wild = handshakes(addr, "app1.repl.co", &wildcard_root, 2000, false).await;
    let cached_r = handshakes(addr, host, pem.as_bytes(), 2000, true).await;
    let wild_r = handshakes(addr, "app1.repl.co", &wildcard_root, 2000, true).await;
    let p99 = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        percentile(&v, 0.99)
    };
    line(summary("full handshake, cached custom certificate", cached.clone()));
    line(summary("full handshake, wildcard certificate     ", wild.clone()));
    line(format!(
        "  p99 ratio custom / wildcard: {:.2}",
        p99(&cached) / p99(&wild)
    ));
    line(summary(
        "resumed handshake, cached custom certificate",
        cached_r.clone(),
    ));
    line(summary("resumed handshake, wildcard certificate     ", wild_r.clone()));
    line(format!(
        "  p99 ratio custom / wildcard: {:.2}",
        p99(&cached_r) / p99(&wild_r)
    ));
    // 10,000 certificates fetched and cached: memory per cached certificate.
    let before = rss_kib(edge.pid());
    let started = Instant::now();
    let names: Vec<String> = (0..10_000).map(|i| format!("c{i}.example.org")).collect();
    let any = futures_util::stream::iter(names.iter().map(|n| crate::certs::any_handshake(addr, n)));
    use futures_util::StreamExt;
    let ok = any
        .buffer_unordered(16)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let m = edge.metrics().await;
    let after = rss_kib(edge.pid());
    line(format!(
        "10,000 uncached names handshaked in {:?} ({ok} ok); certs_cached = {:?}; RSS {before} -> {after} KiB: {:.1} KiB per cached certificate",
        started.elapsed(),
        metric_value(&m, "edgeplane_certs_cached"),
        (after as f64 - before as f64) / 10_000.0
    ));
    let mut f = std::fs::File::create(results_dir().join("handshakes_200k.txt")).unwrap();
    writeln!(
        f,
        "# Release build, one edge (threads = 2, not pinned), loopback, rustls client, one\n\
         # handshake at a time (client-side time of the handshake alone). 200,000 names in the\n\
         # index, 10,000 of them real pairs. Not a timing assertion: figures for bench/results.\n{report}"
    )
    .unwrap();
}
