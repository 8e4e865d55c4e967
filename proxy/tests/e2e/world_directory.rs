//! Every app routable from every edge on the production source: two
//! PostgreSQL-synced edges in two regions (one database per test, the
//! regional loads of a real control plane). An app homed in the other
//! region, asked by slug or by custom domain, takes one affinity hop to its
//! home edge; apps created, renamed, given a domain and moved later are
//! routed right from both edges within one delta; unknown hosts are 404s
//! that touch no VM; and edges whose databases disagree about an app's
//! home never bounce it back and forth.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::dead_addr;
use crate::harness::*;
use crate::postgres::{pg_world, two_edges, vms, PgDb};

/// Polls `host` at `edge` until the answer satisfies `ok` (10 s).
async fn wait_answer(edge: &Edge, host: &str, what: &str, ok: impl Fn(&Resp) -> bool) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = edge.get(host, "/", &[]).await;
        if ok(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{host}: {what} never happened (last {} {:?}: {})",
            r.status,
            r.served_by(),
            r.body_str()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn snapshot_counts(v: &serde_json::Value) -> (u64, u64) {
    (
        v["counts"]["repls"].as_u64().unwrap(),
        v["counts"]["directory"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn other_regions_apps_are_forwarded_once_by_slug_and_domain_and_follow_every_change() {
    let (vm1, vm2, vm3) = vms().await;
    let mut seed = pg_world(&vm1, &vm2, &vm3, dead_addr());
    seed["custom_domains"]
        .as_array_mut()
        .unwrap()
        .push(json!({"hostname": "shop.example.org", "repl_id": "r3"}));
    let (db, a, b) = two_edges(&seed).await;

    // Each edge holds its own region's repls whole and the other's by name.
    let snap = get(a.admin, "admin", "/debug/snapshot", &[]).await.json();
    assert_eq!(
        snapshot_counts(&snap),
        (3, 3),
        "A: r1, r2 and the tombstoned r4 whole; app3, moved and shop.example.org by name: {snap}"
    );
    let snap = get(b.admin, "admin", "/debug/snapshot", &[]).await.json();
    assert_eq!(
        snapshot_counts(&snap),
        (2, 3),
        "B: r3, r4; app1, app2, www.example.com: {snap}"
    );

    // By slug and by custom domain: one hop, served by the home region's VM.
    let r = a.get("app3.repl.co", "/x", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-3")), "{}", r.body_str());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-forwarded-host"], "app3.repl.co");
    let r = a.get("shop.example.org", "/", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-3")), "{}", r.body_str());
    // (B learns A's address from a delta.)
    wait_answer(&b, "www.example.com", "the other way round", |r| {
        r.served_by() == Some("vm-1")
    })
    .await;
    let ma = a.metrics().await;
    assert_eq!(
        metric_with(
            &ma,
            "edgeplane_forwards_total",
            &["to_region=\"ap-south1\"", "reason=\"affinity\""]
        ),
        Some(2.0),
        "{ma}"
    );
    let mb = b.metrics().await;
    assert_eq!(
        metric_with(&mb, "edgeplane_forwards_total", &["to_region=\"us-east1\""]),
        Some(1.0),
        "B forwarded www.example.com once and nothing else: {mb}"
    );

    // Created in ap-south1 after both loaded: routed from A within one delta.
    db.client
        .batch_execute(
            "BEGIN;
             INSERT INTO repls (id, slug, region) VALUES ('r9', 'late', 'ap-south1');
             INSERT INTO containers (repl_id, vm_id) VALUES ('r9', 'vm-3');
             COMMIT;",
        )
        .await
        .unwrap();
    wait_answer(&a, "late.repl.co", "a new app of ap-south1 served via A", |r| {
        r.served_by() == Some("vm-3")
    })
    .await;

    // Renamed: the new slug routes, the old one is a 404 on both edges.
    db.client
        .execute("UPDATE repls SET slug = 'later' WHERE id = 'r9'", &[])
        .await
        .unwrap();
    wait_answer(&a, "later.repl.co", "the renamed app", |r| {
        r.served_by() == Some("vm-3")
    })
    .await;
    for e in [&a, &b] {
        wait_answer(e, "late.repl.co", "the old slug gone", |r| r.status == 404).await;
    }

    // Given a custom domain.
    db.client
        .execute(
            "INSERT INTO custom_domains (hostname, repl_id) VALUES ('late.example.net', 'r9')",
            &[],
        )
        .await
        .unwrap();
    wait_answer(&a, "late.example.net", "the new domain", |r| {
        r.served_by() == Some("vm-3")
    })
    .await;

    // Moved to us-east1 (pinned to use1-b, vm-2's cluster): A now serves it
    // itself, by slug and by domain; B forwards it (tombstone, then
    // affinity once the tombstone is gone).
    let out = db.placectl(&["transfer", "r9", "--to", "use1-b"]);
    assert!(out.contains("region us-east1"), "{out}");
    wait_answer(&a, "later.repl.co", "served in its new home", |r| {
        r.served_by() == Some("vm-2")
    })
    .await;
    wait_answer(&a, "late.example.net", "its domain too", |r| {
        r.served_by() == Some("vm-2")
    })
    .await;
    wait_answer(&b, "later.repl.co", "B follows it to us-east1", |r| {
        r.served_by() == Some("vm-2")
    })
    .await;
    db.client
        .execute("DELETE FROM tombstones WHERE repl_id = 'r9'", &[])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let route = get(b.admin, "admin", "/debug/route?host=late.example.net", &[])
            .await
            .body_str();
        if route.contains("(affinity") {
            break;
        }
        assert!(Instant::now() < deadline, "B still routes by tombstone: {route}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let before = metric_with(&b.metrics().await, "edgeplane_forwards_total", &["reason=\"affinity\""]).unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = b.get("late.example.net", "/", &[]).await;
        assert_eq!((r.status, r.served_by()), (200, Some("vm-2")), "{}", r.body_str());
        let now = metric_with(&b.metrics().await, "edgeplane_forwards_total", &["reason=\"affinity\""]).unwrap_or(0.0);
        if now > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never forwarded by affinity after the tombstone went"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Deleted: a 404 everywhere, and no VM hears of it.
    db.client
        .execute("DELETE FROM repls WHERE id = 'r9'", &[])
        .await
        .unwrap();
    for e in [&a, &b] {
        wait_answer(e, "later.repl.co", "the deleted app gone", |r| r.status == 404).await;
        wait_answer(e, "late.example.net", "its domain gone", |r| r.status == 404).await;
    }
    let served: Vec<u64> = futures_util::future::join_all([&vm1, &vm2, &vm3].map(|v| v.requests())).await;
    for host in ["nope.repl.co", "nobody.example.org"] {
        for e in [&a, &b] {
            let r = e.get(host, "/", &[]).await;
            assert_eq!(r.status, 404, "{host}");
        }
    }
    let after: Vec<u64> = futures_util::future::join_all([&vm1, &vm2, &vm3].map(|v| v.requests())).await;
    assert_eq!(served, after, "unknown hosts touched a VM");
}

#[tokio::test]
async fn edges_whose_databases_disagree_never_bounce_a_request() {
    // A's database says app3 is homed in ap-south1; B's, that it is homed
    // in us-east1. A forwards once; B must not forward it back.
    let (vm1, vm2, vm3) = vms().await;
    let seed_b = {
        let mut w = pg_world(&vm1, &vm2, &vm3, dead_addr());
        w["repls"][2]["region"] = "us-east1".into();
        w["containers"].as_array_mut().unwrap().retain(|c| c["repl_id"] != "r3");
        w
    };
    let db_b = PgDb::new(&seed_b).await;
    let b = Edge::start_pg(tempfile::tempdir().unwrap(), "ap-south1", &db_b.url, true).await;
    let db_a = PgDb::new(&pg_world(&vm1, &vm2, &vm3, b.proxy)).await;
    let a = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db_a.url, true).await;
    let route = get(b.admin, "admin", "/debug/route?host=app3.repl.co", &[])
        .await
        .body_str();
    assert!(route.contains("home region \"us-east1\""), "B's view: {route}");
    let before: Vec<u64> = futures_util::future::join_all([&vm1, &vm2, &vm3].map(|v| v.requests())).await;
    let r = a.get("app3.repl.co", "/", &[]).await;
    assert_eq!(r.status, 508, "{}", r.body_str());
    let after: Vec<u64> = futures_util::future::join_all([&vm1, &vm2, &vm3].map(|v| v.requests())).await;
    assert_eq!(before, after, "no VM was asked");
    let ma = a.metrics().await;
    assert_eq!(
        metric_with(&ma, "edgeplane_forwards_total", &["to_region=\"ap-south1\""]),
        Some(1.0),
        "{ma}"
    );
    let mb = b.metrics().await;
    assert_eq!(
        metric_value(&mb, "edgeplane_forwards_total"),
        None,
        "B forwarded nothing: {mb}"
    );
    assert_eq!(
        metric_with(&mb, "edgeplane_requests_total", &["code=\"508\""]),
        Some(1.0),
        "{mb}"
    );
}
