//! HTTP routing through one edge: apps, custom domains, unknown hosts,
//! headers the VM sees, first-request stickiness, limits and reloads.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use serde_json::json;

use crate::harness::*;
use crate::{dead_addr, world};

struct One {
    vm1: FakeVm,
    vm2: FakeVm,
    edge: Edge,
}

async fn one_edge(limits: &str) -> One {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let edge = Edge::start("us-east1", &snap, limits).await;
    One { vm1, vm2, edge }
}

#[tokio::test]
async fn app_reaches_the_vm_that_runs_it_with_clean_headers() {
    let o = one_edge("").await;
    let r = o
        .edge
        .get(
            "app1.repl.co",
            "/hello?x=1",
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Host", "evil.example"),
                ("X-Forwarded-Proto", "https"),
                ("X-Edgeplane-Transfer-From", "spoofed"),
                ("X-Edgeplane-Replay", "vm=vm-2"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.served_by(), Some("vm-1"));
    let seen = r.json();
    assert_eq!(seen["path"], "/hello?x=1");
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "overwritten, not appended: {h}");
    assert_eq!(h["x-forwarded-host"], "app1.repl.co");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["x-request-id"].as_str().unwrap().starts_with("us-east1-test-"));
    for (k, _) in h.as_object().unwrap() {
        assert!(!k.starts_with("x-edgeplane-"), "internal header {k} reached the VM");
    }
    assert_eq!(
        r.header("x-request-id"),
        h["x-request-id"].as_str(),
        "client sees the same request id"
    );
    assert_eq!(o.vm2.requests().await, 0);
}

#[tokio::test]
async fn odd_host_spellings_canonicalise() {
    let o = one_edge("").await;
    let port = o.edge.proxy.port();
    for host in [
        format!("APP1.Repl.Co.:{port}"),
        "app1.REPL.co".to_string(),
        "app1.repl.co.".to_string(),
    ] {
        let r = o.edge.get(&host, "/", &[]).await;
        assert_eq!((r.status, r.served_by()), (200, Some("vm-1")), "host {host}");
    }
}

#[tokio::test]
async fn custom_domain_routes_to_its_repl() {
    let o = one_edge("").await;
    let r = o.edge.get("WWW.Example.com", "/", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-1")));
    assert_eq!(r.json()["host"], "WWW.Example.com");
}

#[tokio::test]
async fn unknown_or_malformed_hosts_reach_no_vm() {
    let o = one_edge("").await;
    for (host, status) in [
        ("nope.repl.co", 404),
        ("example.org", 404),
        ("a.app1.repl.co", 404),
        ("bad_host", 400),
    ] {
        let r = o.edge.get(host, "/", &[]).await;
        assert_eq!(r.status, status, "host {host}");
        assert!(r.body_str().contains("edgeplane"), "branded page");
        assert!(r.header("x-request-id").is_some());
    }
    // Absolute-form target naming another host than Host.
    let r = try_request(
        o.edge.proxy,
        "GET",
        "app1.repl.co",
        "http://evil.example.com/",
        &[],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(o.vm1.requests().await, 0);
    assert_eq!(o.vm2.requests().await, 0);
    let m = o.edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_requests_total", &["code=\"404\"", "kind=\"unknown\""]),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn concurrent_first_requests_of_a_new_repl_land_on_one_vm() {
    let o = one_edge("").await;
    let proxy = o.edge.proxy;
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { get(proxy, "app2.repl.co", "/", &[]).await }))
        .collect();
    let mut vms = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        vms.insert(r.served_by().unwrap().to_string());
    }
    assert_eq!(vms.len(), 1, "first requests spread over {vms:?}");
    assert_eq!(o.vm1.requests().await + o.vm2.requests().await, 100);
}

/// Many requests in flight to one VM at once, wave after wave: the edge
/// keeps the upstream connections they used and the next wave reuses
/// them. With room for only 64 idle connections per VM per thread, each
/// wave past that opened new connections (a connect and a TIME_WAIT
/// socket each; 640 HTTP/2 streams to one app cost 2.4x the CPU).
#[tokio::test]
async fn a_wave_of_concurrent_requests_to_one_vm_reuses_its_connections() {
    const IN_FLIGHT: u64 = 200;
    const WAVES: u64 = 4;
    let o = one_edge("").await;
    for wave in 0..WAVES {
        let sends = (0..IN_FLIGHT).map(|_| {
            let proxy = o.edge.proxy;
            tokio::spawn(async move { get(proxy, "app1.repl.co", "/__fake/slow?ms=300", &[]).await })
        });
        for r in futures_util::future::join_all(sends).await {
            let r = r.unwrap();
            assert_eq!(r.status, 200, "wave {wave}: {}", r.body_str());
        }
    }
    let opened = o.vm1.connections().await;
    println!(
        "{} requests in {WAVES} waves of {IN_FLIGHT}: the VM accepted {opened} connections",
        IN_FLIGHT * WAVES
    );
    assert_eq!(o.vm1.requests().await, IN_FLIGHT * WAVES);
    // The first wave opens one per request; later ones reuse them (a few
    // more where a wave's requests fall unevenly on the edge's threads).
    assert!(
        (IN_FLIGHT..=IN_FLIGHT + IN_FLIGHT / 2).contains(&opened),
        "{opened} connections"
    );
}

#[tokio::test]
async fn dead_vm_is_a_clean_502() {
    let vm1 = FakeVm::start("vm-1");
    let snap = world(dead_addr(), vm1.http, dead_addr(), dead_addr(), dead_addr());
    let mut snap = snap;
    // app1 runs on vm-1, whose address nothing listens on.
    snap["vms"][0]["addr"] = dead_addr().to_string().into();
    let edge = Edge::start("us-east1", &snap, "upstream_connect_timeout_ms = 500").await;
    let r = edge.get("app1.repl.co", "/", &[]).await;
    assert_eq!(r.status, 502);
    assert!(r.body_str().contains("502"));
    let m = edge.metrics().await;
    assert!(
        metric_with(&m, "edgeplane_upstream_errors_total", &["reason=\"connect_refused\""]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let o = one_edge("max_headers = 20").await;
    let many: Vec<(String, String)> = (0..30).map(|i| (format!("x-h{i}"), "v".to_string())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = o.edge.get("app1.repl.co", "/", &refs).await;
    assert_eq!(r.status, 431);
    let big = "x".repeat(70 * 1024);
    let o2 = one_edge("").await;
    let r = o2.edge.get("app1.repl.co", "/", &[("x-big", &big)]).await;
    assert!(r.status == 431 || r.status == 400, "got {}", r.status);
    assert_eq!(o.vm1.requests().await + o2.vm1.requests().await, 0);
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let o = one_edge("keepalive_idle_ms = 1000").await;
    let mut s = tokio::net::TcpStream::connect(o.edge.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The connection stays open for a second request...
    s.write_all(b"GET /2 HTTP/1.1\r\nHost: app1.repl.co\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // ...but not forever once idle.
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection was not closed: {closed:?}"
    );
}

#[tokio::test]
async fn bad_snapshot_is_rejected_whole_and_old_table_serves() {
    let o = one_edge("").await;
    let path = o.edge.snapshot_path();
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut bad = good.clone();
    bad["repls"][0]["slug"] = "renamed".into();
    bad["repls"][1]["slug"] = "app3".into(); // duplicate of r3's slug
    write_snapshot(&path, &bad);
    wait_snapshot(&o.edge, |v| v["rejected_loads"] == 1).await;
    let r = o.edge.get("app1.repl.co", "/", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-1")), "old table still serves");
    assert_eq!(
        o.edge.get("renamed.repl.co", "/", &[]).await.status,
        404,
        "nothing of the bad file applied"
    );
    let m = o.edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_sync_errors_total", &["reason=\"invalid_snapshot\""]),
        Some(1.0),
        "{m}"
    );

    let mut next = good.clone();
    next["repls"][0]["slug"] = "renamed".into();
    write_snapshot(&path, &next);
    wait_snapshot(&o.edge, |v| v["version"] == 2).await;
    let r = o.edge.get("renamed.repl.co", "/", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-1")));
    assert_eq!(o.edge.get("app1.repl.co", "/", &[]).await.status, 404);
    let m = o.edge.metrics().await;
    assert_eq!(metric_value(&m, "edgeplane_snapshot_version"), Some(2.0));
}

#[tokio::test]
async fn admin_endpoints_explain_and_report() {
    let o = one_edge("").await;
    let r = get(o.edge.admin, "admin", "/debug/route?host=APP1.repl.co&path=%2F", &[]).await;
    let text = r.body_str();
    assert!(text.contains("slug \"app1\" -> repl \"r1\""), "{text}");
    assert!(text.contains("=> vm vm-1"), "{text}");
    assert_eq!(get(o.edge.admin, "admin", "/healthz", &[]).await.status, 200);
    let snap = get(o.edge.admin, "admin", "/debug/snapshot", &[]).await.json();
    // r1, r2 and r4 (tombstoned from here) whole; app3 and moved by name.
    assert_eq!(
        (&snap["counts"]["repls"], &snap["counts"]["directory"]),
        (&json!(3), &json!(2)),
        "{snap}"
    );
    let page = get(o.edge.admin, "admin", "/", &[]).await.body_str();
    assert!(page.contains("us-east1") && page.contains("use1-a"), "{page}");
    let m = o.edge.metrics().await;
    for name in [
        "edgeplane_request_duration_seconds",
        "edgeplane_websocket_tunnels_active",
        "edgeplane_snapshot_version",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
}

#[test]
fn check_reports_config_errors_as_file_line_key_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[edge]\nregion = \"us-east1\"\nlisten = [\"nope\"]\n").unwrap();
    let out = std::process::Command::new(edgeplane_bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!("{}:3: edge.listen: \"nope\" is not an ip:port address", cfg.display())
    );

    let ok = std::process::Command::new(edgeplane_bin())
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/edgeplane.toml"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let summary = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(
        summary.contains("3 repls") && summary.contains("2 names of other regions' apps"),
        "{summary}"
    );
}

fn examples(file: &str) -> String {
    format!("{}/../config/examples/{file}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn snapshot_dump_round_trips_the_example_snapshot() {
    let out = std::process::Command::new(edgeplane_bin())
        .args(["snapshot", "dump", "-c", &examples("edgeplane.toml")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use edgeplane_control_sync::directory::Name;
    use edgeplane_control_sync::RoutingTable;
    let dumped: edgeplane_control_sync::Snapshot = serde_json::from_slice(&out.stdout).unwrap();
    let original: edgeplane_control_sync::Snapshot =
        serde_json::from_str(&std::fs::read_to_string(examples("snapshot.json")).unwrap()).unwrap();
    // The dump is what the edge holds: its region's rows whole, the other
    // region's apps as directory names. Read back, it routes every host of
    // the original the same way.
    assert!(dumped.directory.is_some(), "no directory in the dump");
    let a = RoutingTable::build(&original, "us-east1", 1).unwrap();
    let b = RoutingTable::build(&dumped, "us-east1", 1).unwrap();
    assert_eq!(a.counts(), b.counts());
    for r in &original.repls {
        let home = |t: &RoutingTable| match t.repl_by_slug(&r.slug) {
            Some(x) => t.region(x.region).name.to_string(),
            None => t.region(t.home_region(Name::Slug(&r.slug)).unwrap()).name.to_string(),
        };
        assert_eq!(home(&a), r.region, "{}", r.slug);
        assert_eq!(home(&b), r.region, "{} after the round trip", r.slug);
    }
    let rows = |t: &RoutingTable| edgeplane_control_sync::Snapshot {
        directory: None,
        ..t.to_snapshot()
    };
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn route_cli_prints_every_step() {
    let out = std::process::Command::new(edgeplane_bin())
        .args(["route", "-c", &examples("edgeplane.toml"), "Moved.Repl.Co.:8080"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1], " 1. host: \"Moved.Repl.Co.:8080\" -> \"moved.repl.co\"",
        "{text}"
    );
    assert!(
        lines[3].contains("tombstone: moved from \"use1-a\" to \"aps1-a\""),
        "{text}"
    );
    assert_eq!(
        *lines.last().unwrap(),
        "=> forward to region ap-south1 edge 127.0.0.1:8081 (tombstone, hop 1)"
    );
}

#[tokio::test]
async fn fake_vm_reports_what_control_sets() {
    let vm = FakeVm::start("vm-x");
    let m = get(vm.metrics, "vm", "/metrics", &[]).await.body_str();
    assert_eq!(metric_value(&m, "conman_containers"), Some(0.0));
    assert_eq!(metric_value(&m, "conman_ready"), Some(1.0));
    let body = br#"{"containers": 42, "cpu": 0.75, "ready": false}"#;
    let r = try_request(
        vm.metrics,
        "POST",
        "vm",
        "/control",
        &[("content-type", "application/json")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let m = get(vm.metrics, "vm", "/metrics", &[]).await.body_str();
    assert_eq!(metric_value(&m, "conman_containers"), Some(42.0));
    assert_eq!(metric_value(&m, "conman_cpu_utilization"), Some(0.75));
    assert_eq!(metric_value(&m, "conman_ready"), Some(0.0));
    let bad = try_request(vm.metrics, "POST", "vm", "/control", &[], b"{nope")
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    // Every HTTP request is echoed and counted.
    let r = try_request(vm.http, "POST", "app1.repl.co", "/p?q=1", &[], b"12345")
        .await
        .unwrap();
    assert_eq!(r.served_by(), Some("vm-x"));
    assert_eq!(
        (r.json()["method"].as_str(), r.json()["body_bytes"].as_u64()),
        (Some("POST"), Some(5))
    );
    assert_eq!(vm.requests().await, 1);
}
