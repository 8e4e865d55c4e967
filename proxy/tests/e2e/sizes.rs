//! Size-aware placement through a real edge (issue 21): VMs of different
//! capacities, repls of different sizes, fake VMs that report (or do not
//! report) `conman_units_reserved`, and what `/balancer`, `/debug/route`
//! and the status page say about it.

use std::net::SocketAddr;

use serde_json::json;

use crate::dead_addr;
use crate::harness::*;

/// Scrapes every 100 ms; placements this edge makes count until the next.
const HEALTH: &str = "\n[health]\nscrape_interval_ms = 100\nscrape_timeout_ms = 100\nstale_after_ms = 5000\n";

/// One cluster with the given VMs (id, capacity, http, metrics); repls
/// `big0..` of `big_size` and `small0..` of size 1, none running.
fn sized_world(vms: &[(&str, u32, SocketAddr, SocketAddr)], big_size: u32) -> serde_json::Value {
    let vm_rows: Vec<_> = vms
        .iter()
        .map(|(id, cap, http, metrics)| {
            json!({"id": id, "cluster": "use1-a", "addr": http.to_string(),
                   "metrics_addr": metrics.to_string(), "state": "active", "capacity": cap})
        })
        .collect();
    let mut repls = Vec::new();
    for i in 0..12 {
        repls.push(json!({"id": format!("b{i}"), "slug": format!("big{i}"), "region": "us-east1", "size": big_size}));
        repls.push(json!({"id": format!("s{i}"), "slug": format!("small{i}"), "region": "us-east1"}));
    }
    json!({
        "regions": [{"name": "us-east1", "edge_addr": dead_addr().to_string()}],
        "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"}],
        "vms": vm_rows,
        "repls": repls,
    })
}

fn vm<'a>(b: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    b["clusters"][0]["vms"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["id"] == id))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test]
async fn big_repls_land_on_the_big_vm_and_a_full_one_means_503_while_small_repls_still_land() {
    let (small, big) = (FakeVm::start("vm-small"), FakeVm::start("vm-big"));
    for v in [&small, &big] {
        v.control(json!({"containers": 0, "units": 0})).await;
    }
    let world = sized_world(
        &[
            ("vm-small", 100, small.http, small.metrics),
            ("vm-big", 400, big.http, big.metrics),
        ],
        150,
    );
    let edge = Edge::start("us-east1", &world, HEALTH).await;
    edge.wait_balancer("both VMs sampled with units", |b| {
        vm(b, "vm-small")["units_source"] == "conman_units_reserved"
            && vm(b, "vm-big")["units_source"] == "conman_units_reserved"
    })
    .await;

    // Two repls of 150 fit the 400-unit VM, never the 100-unit one.
    for i in 0..2 {
        let r = edge.get(&format!("big{i}.repl.co"), "/", &[]).await;
        assert_eq!((r.status, r.served_by()), (200, Some("vm-big")), "big{i}");
    }
    // A third does not fit (300 + 150 > 400): 503 with Retry-After, and
    // the decision says why.
    let r = edge.get("big2.repl.co", "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert!(r.header("retry-after").is_some());
    let route = get(edge.admin, "admin", "/debug/route?host=big2.repl.co", &[]).await;
    let text = route.body_str();
    assert!(text.contains("is full: no VM has room for size 150"), "{text}");
    assert!(text.contains("vm-big 300/400 units reserved"), "{text}");
    // Small repls still land, on the emptier share: the small VM (0/100)
    // before the big one (300/400).
    for i in 0..3 {
        let r = edge.get(&format!("small{i}.repl.co"), "/", &[]).await;
        assert_eq!((r.status, r.served_by()), (200, Some("vm-small")), "small{i}");
    }
    let m = edge.metrics().await;
    assert_eq!(
        metric_value(&m, "edgeplane_balancer_cluster_full_total"),
        Some(1.0),
        "{m}"
    );

    // The big VM reports itself full: /balancer and the status page say so.
    big.control(json!({"containers": 2, "units": 400})).await;
    let b = edge
        .wait_balancer("the big VM full", |b| vm(b, "vm-big")["units_reserved"] == 400)
        .await;
    assert_eq!(vm(&b, "vm-big")["capacity"], 400);
    assert_eq!(vm(&b, "vm-big")["room"], 0);
    assert_eq!(vm(&b, "vm-big")["not_candidate"], "full");
    assert_eq!(vm(&b, "vm-small")["not_candidate"], serde_json::Value::Null);
    let page = get(edge.admin, "admin", "/", &[]).await.body_str();
    assert!(
        page.contains("<td class=\"units\">400 / 400</td><td class=\"why\">full</td>"),
        "{page}"
    );
    assert_eq!(edge.get("big3.repl.co", "/", &[]).await.status, 503);
    assert_eq!(edge.get("small5.repl.co", "/", &[]).await.served_by(), Some("vm-small"));
}

#[tokio::test]
async fn a_vm_that_does_not_report_units_is_placed_on_by_container_count() {
    let (a, b) = (FakeVm::start("vm-a"), FakeVm::start("vm-b"));
    // vm-a: 10 containers, no units metric (an older conman); vm-b: 2
    // containers that hold 60 units. By share, vm-a (10/100) is emptier.
    a.control(json!({"containers": 10})).await;
    b.control(json!({"containers": 2, "units": 60})).await;
    let world = sized_world(
        &[("vm-a", 100, a.http, a.metrics), ("vm-b", 100, b.http, b.metrics)],
        100,
    );
    let edge = Edge::start("us-east1", &world, HEALTH).await;
    let bal = edge
        .wait_balancer("samples", |b| {
            vm(b, "vm-a")["units_source"] == "containers" && vm(b, "vm-b")["units_reserved"] == 60
        })
        .await;
    assert_eq!(vm(&bal, "vm-a")["units_reserved"], 10, "{bal:#}");
    assert_eq!(edge.get("small0.repl.co", "/", &[]).await.served_by(), Some("vm-a"));
    // vm-a fills by container count: 99 of 100. A repl of 1 now goes to
    // vm-b (60/100 beats 99/100); one of 100 fits neither.
    a.control(json!({"containers": 99})).await;
    edge.wait_balancer("vm-a at 99", |b| vm(b, "vm-a")["units_reserved"] == 99)
        .await;
    assert_eq!(edge.get("small1.repl.co", "/", &[]).await.served_by(), Some("vm-b"));
    assert_eq!(edge.get("big0.repl.co", "/", &[]).await.status, 503);
}

/// The production path: sizes and capacities read from PostgreSQL (full
/// load and deltas), requests over HTTPS with HTTP/2. VMs without a
/// metrics address: the reserved units come from the table's containers.
#[tokio::test]
async fn sizes_from_postgres_over_https_h2_follow_deltas() {
    use crate::http2::{h2_connect, h2_get};
    use crate::postgres::{wait_metric, PgDb};
    let (small, big) = (FakeVm::start("vm-small"), FakeVm::start("vm-big"));
    let world = json!({
        "regions": [{"name": "us-east1", "edge_addr": dead_addr().to_string()}],
        "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"}],
        "vms": [{"id": "vm-small", "cluster": "use1-a", "addr": small.http.to_string(), "state": "active", "capacity": 100},
                {"id": "vm-big", "cluster": "use1-a", "addr": big.http.to_string(), "state": "active", "capacity": 400}],
        "repls": [{"id": "run", "slug": "running", "region": "us-east1", "size": 300},
                  {"id": "b0", "slug": "big0", "region": "us-east1", "size": 150},
                  {"id": "s0", "slug": "small0", "region": "us-east1"},
                  {"id": "s1", "slug": "small1", "region": "us-east1"}],
        "containers": [{"repl_id": "run", "vm_id": "vm-big"}],
    });
    let db = PgDb::new(&world).await;
    let (edge, der) = Edge::start_pg_tls("us-east1", &db.url).await;
    let https = edge.https.expect("https listener");
    // The probe places small0: vm-small (0/100) is emptier than vm-big (300/400).
    let (mut send, _driver, _) = h2_connect(https, "small0.repl.co", &der).await;
    let (status, headers, _) = h2_get(&mut send, "small0.repl.co", "/", &[]).await.unwrap();
    assert_eq!((status, headers["x-served-by"].to_str().unwrap()), (200, "vm-small"));
    // 150 fits neither 100 - 1 nor 400 - 300.
    let (status, headers, _) = h2_get(&mut send, "big0.repl.co", "/", &[]).await.unwrap();
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    // The control plane grows the big VM: the delta carries the capacity.
    db.client
        .execute("UPDATE vms SET capacity = 500 WHERE id = 'vm-big'", &[])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, headers, _) = h2_get(&mut send, "big0.repl.co", "/", &[]).await.unwrap();
        if status == 200 {
            assert_eq!(headers["x-served-by"].to_str().unwrap(), "vm-big");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "big0 never placed after the capacity grew"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The database refuses a size below 1; the edge skips (and counts) one
    // no VM of the region could ever hold, and keeps serving the rest.
    let err = db
        .client
        .execute("UPDATE repls SET size = 0 WHERE id = 's1'", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().and_then(|e| e.constraint()),
        Some("repls_size_positive"),
        "{err:?}"
    );
    db.client
        .execute("UPDATE repls SET size = 600 WHERE id = 's1'", &[])
        .await
        .unwrap();
    wait_metric(
        &edge,
        "edgeplane_sync_rows_skipped_total",
        &["table=\"repls\"", "reason=\"bad_value\""],
        |v| v >= 1.0,
        "the oversize row was not skipped",
    )
    .await;
    let (status, _, _) = h2_get(&mut send, "small0.repl.co", "/", &[]).await.unwrap();
    assert_eq!(status, 200);
}
