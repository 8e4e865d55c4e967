//! Two edges, two regions: affinity and tombstone forwards with the signed
//! hop header, spoofed hop headers, and the forward-loop limit.

use crate::harness::*;
use crate::{dead_addr, world};

struct Two {
    _vms: (FakeVm, FakeVm),
    vm3: FakeVm,
    a: Edge,
    b: Edge,
}

/// Edge B (ap-south1) first, so edge A's snapshot can name B's address.
async fn two_regions() -> Two {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let b = Edge::start(
        "ap-south1",
        &world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr()),
        "",
    )
    .await;
    let a = Edge::start(
        "us-east1",
        &world(vm1.http, vm2.http, vm3.http, dead_addr(), b.proxy),
        "",
    )
    .await;
    Two {
        _vms: (vm1, vm2),
        vm3,
        a,
        b,
    }
}

#[tokio::test]
async fn repl_homed_elsewhere_is_forwarded_once_and_served_there() {
    let t = two_regions().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A client forging a hop header (bad signature) changes nothing.
    let forged = format!("v1;ap-south1;1;{now};AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let r =
        t.a.get(
            "app3.repl.co",
            "/x",
            &[("x-edgeplane-hop", &forged), ("x-forwarded-for", "6.6.6.6")],
        )
        .await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-3")), "{}", r.body_str());
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "client IP as edge A saw it: {h}");
    assert_eq!(h["x-forwarded-host"], "app3.repl.co");
    for (k, _) in h.as_object().unwrap() {
        assert!(!k.starts_with("x-edgeplane-"), "{k} reached the VM");
    }
    // One request id end to end.
    assert_eq!(r.header("x-request-id"), h["x-request-id"].as_str());
    let ma = t.a.metrics().await;
    assert_eq!(
        metric_with(
            &ma,
            "edgeplane_forwards_total",
            &["to_region=\"ap-south1\"", "reason=\"affinity\""]
        ),
        Some(1.0),
        "{ma}"
    );
    let mb = t.b.metrics().await;
    assert_eq!(
        metric_with(
            &mb,
            "edgeplane_requests_total",
            &["kind=\"app\"", "outcome=\"proxied\""]
        ),
        Some(1.0),
        "{mb}"
    );
    assert_eq!(t.vm3.requests().await, 1);
}

#[tokio::test]
async fn tombstoned_repl_is_forwarded_to_its_new_region() {
    let t = two_regions().await;
    let r = t.a.get("moved.repl.co", "/", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-3")));
    let m = t.a.metrics().await;
    assert_eq!(metric_value(&m, "edgeplane_tombstone_hits_total"), Some(1.0));
    assert_eq!(
        metric_with(&m, "edgeplane_forwards_total", &["reason=\"tombstone\""]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_validly_signed_hop_is_never_bounced_by_affinity() {
    let t = two_regions().await;
    // Edge B receives a request for a repl homed in us-east1 that already
    // carries a valid hop: it must answer 508, not send it back.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hop = edgeplane_proxy::route::signing::sign_hop(HOP_SECRET.as_bytes(), "us-east1", 1, now, "app1.repl.co");
    let r = t.b.get("app1.repl.co", "/", &[("x-edgeplane-hop", &hop)]).await;
    assert_eq!(r.status, 508);
    // Without the hop header B forwards it to A's region edge (a dead
    // address in B's snapshot): the attempt itself shows the affinity path.
    let m = t.b.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_requests_total", &["code=\"508\""]),
        Some(1.0),
        "{m}"
    );
    // Hop count at max_hops also stops a tombstone forward.
    let hop2 = edgeplane_proxy::route::signing::sign_hop(HOP_SECRET.as_bytes(), "ap-south1", 2, now, "moved.repl.co");
    assert_eq!(
        t.a.get("moved.repl.co", "/", &[("x-edgeplane-hop", &hop2)])
            .await
            .status,
        508
    );
}
