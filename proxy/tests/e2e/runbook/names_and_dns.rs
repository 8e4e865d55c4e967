//! "Names and DNS". The runbook's section, executed.

use super::*;
use crate::dns::{ask, client, start_dns_in};

/// `edgeplane dns` stops as the edge does: SIGHUP (a reload it cannot
/// do) is said and survived; SIGTERM stops answering, closes an idle
/// TCP client at once, writes the responder's own last-known-good file
/// (`<last_known_good>` with `.dns.json`) and exits 0, without an
/// ERROR line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responder_stops_like_the_edge_and_survives_a_reload_signal() {
    let db = PgDb::new(&world(dead_addr(), dead_addr(), dead_addr(), dead_addr(), dead_addr())).await;
    let dir = tempfile::tempdir().unwrap();
    // An interval no test waits for: only the stop writes a change.
    let (mut dns, addr) = start_dns_in(dir.path(), &db.url, "last_known_good_interval_ms = 600000\n");
    let udp = client(addr, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(&udp, "app1.repl.co").await.is_err() {
        assert!(Instant::now() < deadline, "the responder never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lkg = dir.path().join("lkg.dns.json");
    let written_version = || {
        std::fs::read(&lkg)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["version"].as_i64())
    };
    eventually("the first last-known-good write", 10, || written_version().is_some()).await;
    let log = || std::fs::read_to_string(dir.path().join("dns.log")).unwrap();

    signal(dns.0.id() as i32, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log().contains("dns: SIGHUP: the responder reads its config only at start") {
        assert!(Instant::now() < deadline, "SIGHUP not acknowledged:\n{}", log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ask(&udp, "app1.repl.co").await.is_ok(), "still answering after SIGHUP");
    assert!(dns.0.try_wait().unwrap().is_none());

    // A change after that write: only the stop's flush can save it.
    db.client
        .execute(
            "UPDATE regions SET edge_addr = '127.0.0.9:8443' WHERE name = 'us-east1'",
            &[],
        )
        .await
        .unwrap();
    let want = db.version().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(&udp, "app1.repl.co").await.map(|(ip, _)| ip.to_string()) != Ok("127.0.0.9".into()) {
        assert!(Instant::now() < deadline, "the change never reached the responder");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(
        written_version(),
        Some(want),
        "written early: the test would prove nothing"
    );
    // An idle TCP client must not hold the stop for the grace period.
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stopped = Instant::now();
    signal(dns.0.id() as i32, "-TERM");
    let status = exits_within(&mut dns.0, 4, "the responder").await;
    assert!(status.success(), "{status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "took {:?}: the idle TCP client held the stop",
        stopped.elapsed()
    );
    let text = log();
    assert_eq!(
        written_version(),
        Some(want),
        "the stop wrote the newest table:\n{text}"
    );
    assert!(
        text.contains("dns: SIGTERM: no longer answering new queries") && text.contains("dns: stopped"),
        "{text}"
    );
    assert!(!text.contains(" ERROR "), "{text}");
}
