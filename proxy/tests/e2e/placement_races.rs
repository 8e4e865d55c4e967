//! No request stranded by a placement race: a VM that answers
//! `x-edgeplane-replay` gets the request sent where it says, once (each
//! target kind, bodies under and over `limits.replay_body_bytes`, a replay
//! loop, an unknown target, WebSocket upgrades), and the client never sees
//! the header; a VM picked for a new repl that refuses, resets or never
//! answers the SYN costs the client nothing while another VM of the subset
//! is healthy — and the repl's next connections go to the VM that answered.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;
use crate::{dead_addr, world};

/// The standard world plus cluster `use1-b` (vm-2 alone).
fn world_two_clusters(vm1: SocketAddr, vm2: SocketAddr, vm3: SocketAddr, edge_b: SocketAddr) -> serde_json::Value {
    let mut w = world(vm1, vm2, vm3, dead_addr(), edge_b);
    w["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "use1-b", "region": "us-east1", "state": "active"}));
    w["vms"][1]["cluster"] = "use1-b".into();
    w
}

fn replays(m: &str, outcome: &str) -> f64 {
    metric_with(m, "edgeplane_replays_total", &[&format!("outcome=\"{outcome}\"")]).unwrap_or(0.0)
}

async fn post(edge: &Edge, host: &str, body: &[u8]) -> Resp {
    // try_request writes the Content-Length itself (a second, even an
    // identical one, is refused: two lengths are a smuggling signature).
    try_request(
        edge.proxy,
        "POST",
        host,
        "/submit",
        &[("content-type", "application/octet-stream")],
        body,
    )
    .await
    .unwrap()
}

/// The answer to a WebSocket upgrade of `host` through `edge`: the 101's
/// `x-served-by`, or the refusal's status.
async fn upgrade(edge: &Edge, host: &str) -> Result<String, u16> {
    let stream = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    let mut req = format!("ws://{host}/socket").into_client_request().unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((mut ws, resp)) => {
            use futures_util::{SinkExt, StreamExt};
            ws.send("ping".into()).await.unwrap();
            let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap();
            assert_eq!(echo.unwrap().unwrap().into_text().unwrap().as_str(), "ping");
            assert!(resp.headers().get("x-edgeplane-replay").is_none());
            Ok(resp.headers()["x-served-by"].to_str().unwrap().to_string())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert!(resp.headers().get("x-edgeplane-replay").is_none(), "{resp:?}");
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn a_vm_that_asks_for_a_replay_gets_the_request_sent_where_it_says_once() {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    // Edge B (ap-south1) already knows app1 moved there, running on vm-3;
    // edge A's table still has it on vm-1.
    let mut b_view = world_two_clusters(vm1.http, vm2.http, vm3.http, dead_addr());
    b_view["repls"][0]["region"] = "ap-south1".into();
    b_view["containers"][0]["vm_id"] = "vm-3".into();
    let b = Edge::start("ap-south1", &b_view, "").await;
    let a = Edge::start(
        "us-east1",
        &world_two_clusters(vm1.http, vm2.http, vm3.http, b.proxy),
        "replay_body_bytes = 1024",
    )
    .await;
    let check = |r: &Resp, vm: &str, status: u16| {
        assert_eq!((r.status, r.served_by()), (status, Some(vm)), "{}", r.body_str());
        assert!(
            r.header("x-edgeplane-replay").is_none(),
            "the client saw the replay header"
        );
    };

    // vm=: the named VM, told who asked; one request id end to end.
    vm1.control(json!({"replay": "vm=vm-2"})).await;
    let r = a.get("app1.repl.co", "/", &[]).await;
    check(&r, "vm-2", 200);
    let seen = r.json();
    assert_eq!(seen["headers"]["x-edgeplane-replay-src"], "vm=vm-1");
    assert_eq!(r.header("x-request-id"), seen["headers"]["x-request-id"].as_str());
    // A body under the limit is replayed whole; one over it is not.
    let r = post(&a, "app1.repl.co", &[7u8; 1000]).await;
    check(&r, "vm-2", 200);
    assert_eq!(r.json()["body_bytes"], 1000);
    let r = post(&a, "app1.repl.co", &[7u8; 5000]).await;
    check(&r, "vm-1", 409);
    // A client's own replay-src header never reaches a VM.
    vm1.control(json!({"replay": ""})).await;
    let r = a
        .get("app1.repl.co", "/", &[("x-edgeplane-replay-src", "vm=forged")])
        .await;
    check(&r, "vm-1", 200);
    assert!(r.json()["headers"].get("x-edgeplane-replay-src").is_none());

    // cluster=: a VM the balancer picks there (use1-b holds vm-2 only).
    vm1.control(json!({"replay": "cluster=use1-b"})).await;
    check(&a.get("app1.repl.co", "/", &[]).await, "vm-2", 200);

    // region=: that region's edge, with a signed hop; B serves it from vm-3.
    vm1.control(json!({"replay": "region=ap-south1"})).await;
    let r = a.get("app1.repl.co", "/", &[("x-forwarded-for", "6.6.6.6")]).await;
    check(&r, "vm-3", 200);
    let seen = r.json();
    assert_eq!(seen["headers"]["x-edgeplane-replay-src"], "vm=vm-1");
    assert_eq!(
        seen["headers"]["x-forwarded-for"], "127.0.0.1",
        "the client as edge A saw it"
    );

    // Unknown target: the VM's own answer.
    vm1.control(json!({"replay": "vm=nope"})).await;
    check(&a.get("app1.repl.co", "/", &[]).await, "vm-1", 409);

    // A loop: vm-1 says vm-2, vm-2 says vm-1; one replay, then vm-2's answer.
    vm1.control(json!({"replay": "vm=vm-2"})).await;
    vm2.control(json!({"replay": "vm=vm-1"})).await;
    let before = (vm1.requests().await, vm2.requests().await);
    check(&a.get("app1.repl.co", "/", &[]).await, "vm-2", 409);
    assert_eq!(
        (vm1.requests().await, vm2.requests().await),
        (before.0 + 1, before.1 + 1),
        "each VM asked once"
    );

    // WebSocket upgrades: refused with the header, replayed the same way.
    vm2.control(json!({"replay": ""})).await;
    assert_eq!(upgrade(&a, "app1.repl.co").await, Ok("vm-2".into()));
    vm1.control(json!({"replay": "cluster=nowhere"})).await;
    assert_eq!(upgrade(&a, "app1.repl.co").await, Err(409));

    let m = a.metrics().await;
    assert_eq!(
        (
            replays(&m, "replayed"),
            replays(&m, "body_too_large"),
            replays(&m, "unknown_target"),
            replays(&m, "again")
        ),
        (6.0, 1.0, 2.0, 1.0),
        "{m}"
    );
    assert_eq!(
        metric_with(&m, "edgeplane_forwards_total", &["reason=\"replay\""]),
        Some(1.0),
        "{m}"
    );
}

/// A loopback address whose accept queue is full: SYNs to it are dropped,
/// so a connect there times out (a VM that never answers the SYN).
fn syn_blackhole() -> SocketAddr {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue; keep everything open for the life of the test process.
    for _ in 0..4 {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            std::mem::forget(c);
        }
    }
    std::mem::forget(s);
    addr
}

/// A loopback address that accepts and at once resets every connection.
async fn resetting_vm() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let s = s.into_std().unwrap();
            let s = socket2::Socket::from(s);
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    addr
}

/// Twenty repls that are not running, pinned to use1-a, whose VMs are a
/// healthy vm-1 and `bad`; app1 runs on `bad`.
fn bad_vm_world(good: SocketAddr, bad: SocketAddr) -> serde_json::Value {
    let mut w = world(good, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    w["vms"][1]["addr"] = bad.to_string().into();
    w["vms"][1]["cluster"] = "use1-a".into();
    w["containers"] = json!([{"repl_id": "r1", "vm_id": "vm-2"}]);
    let repls = w["repls"].as_array_mut().unwrap();
    for i in 0..20 {
        repls.push(
            json!({"id": format!("new-{i}"), "slug": format!("new-{i}"), "region": "us-east1", "cluster": "use1-a"}),
        );
    }
    w
}

async fn retries_land_on_the_healthy_vm(bad: SocketAddr, what: &str) {
    let good = FakeVm::start("vm-1");
    let edge = Edge::start(
        "us-east1",
        &bad_vm_world(good.http, bad),
        "upstream_connect_timeout_ms = 300\n[balancer]\npolicy = \"round-robin\"\neject_after_failures = 1000",
    )
    .await;
    // Round-robin over the two members: every other new repl is first
    // picked on the bad VM.
    for i in 0..20 {
        let r = edge.get(&format!("new-{i}.repl.co"), "/", &[]).await;
        assert_eq!(
            (r.status, r.served_by()),
            (200, Some("vm-1")),
            "{what}: new-{i}: {}",
            r.body_str()
        );
    }
    let m = edge.metrics().await;
    let retries = metric_value(&m, "edgeplane_connect_retries_total").unwrap_or(0.0);
    assert!(
        (5.0..=15.0).contains(&retries),
        "{what}: about half retried, got {retries}: {m}"
    );
    // The pick memory now names the VM that answered: no more retries.
    for i in 0..20 {
        let r = edge.get(&format!("new-{i}.repl.co"), "/", &[]).await;
        assert_eq!(r.served_by(), Some("vm-1"), "{what}: second request of new-{i}");
    }
    let m = edge.metrics().await;
    assert_eq!(
        metric_value(&m, "edgeplane_connect_retries_total"),
        Some(retries),
        "{what}: {m}"
    );
    assert_eq!(good.requests().await, 40);
    // A running container's VM is never swapped.
    let r = edge.get("app1.repl.co", "/", &[]).await;
    assert!(
        r.status == 502 || r.status == 504,
        "{what}: running on the bad VM: {}",
        r.status
    );
    assert_eq!(good.requests().await, 40, "{what}: app1 was not moved");
}

#[tokio::test]
async fn a_refusing_vm_costs_new_repls_nothing() {
    retries_land_on_the_healthy_vm(dead_addr(), "refused").await;
}

#[tokio::test]
async fn a_resetting_vm_costs_new_repls_nothing() {
    retries_land_on_the_healthy_vm(resetting_vm().await, "reset").await;
}

#[tokio::test]
async fn a_vm_that_never_answers_the_syn_costs_new_repls_nothing() {
    retries_land_on_the_healthy_vm(syn_blackhole(), "no SYN-ACK").await;
}

#[tokio::test]
async fn websocket_upgrades_of_new_repls_retry_too() {
    let good = FakeVm::start("vm-1");
    let edge = Edge::start(
        "us-east1",
        &bad_vm_world(good.http, dead_addr()),
        "[balancer]\npolicy = \"round-robin\"",
    )
    .await;
    for i in 0..6 {
        assert_eq!(
            upgrade(&edge, &format!("new-{i}.repl.co")).await,
            Ok("vm-1".into()),
            "new-{i}"
        );
    }
    let m = edge.metrics().await;
    assert_eq!(
        metric_value(&m, "edgeplane_connect_retries_total"),
        Some(3.0),
        "every other one: {m}"
    );
}
