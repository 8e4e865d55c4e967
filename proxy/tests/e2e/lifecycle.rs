//! Graceful operations on a real process: SIGTERM drains (requests in
//! flight finish, WebSocket tunnels get close frame 1001, the process exits
//! as soon as they are done), and `serve
//! --upgrade` hands the listeners to a new binary under load, five times
//! in a row, without a refused or failed request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::{dead_addr, world};

/// A VM that answers every request after `delay` (for requests in flight).
async fn slow_vm(delay: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                tokio::time::sleep(delay).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nx-served-by: slow\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_and_closes_tunnels_with_1001() {
    let vm2 = FakeVm::start("vm-2");
    let slow = slow_vm(Duration::from_millis(1500)).await;
    let mut snap = world(slow, vm2.http, dead_addr(), dead_addr(), dead_addr());
    snap["containers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"repl_id": "r2", "vm_id": "vm-2"}));
    let dir = tempfile::tempdir().unwrap();
    let mut edge = Edge::start_opts(
        dir,
        "us-east1",
        &snap,
        &EdgeOpts {
            edge: "grace_period_ms = 3000",
            ..Default::default()
        },
    )
    .await;
    let stream = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    let req = format!("ws://{}/", "app2.repl.co").into_client_request().unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let proxy = edge.proxy;
    let in_flight = tokio::spawn(async move { try_request(proxy, "GET", "app1.repl.co", "/", &[], &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = Instant::now();
    signal(edge.pid(), "-TERM");

    // The tunnel gets a close frame with 1001 within the grace period.
    let code = next_close_code(&mut ws).await;
    assert_eq!(code, 1001);
    assert!(
        stopped_at.elapsed() < Duration::from_secs(3),
        "closed after the grace period"
    );

    let r = in_flight.await.unwrap().expect("request in flight was dropped");
    assert_eq!((r.status, r.body_str().as_str()), (200, "slow"));

    // Listeners close at once; the process exits as soon as the request
    // and the tunnel are done, before the grace period (3 s) ends.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = edge.proc.0.try_wait().unwrap() {
            let took = stopped_at.elapsed();
            println!("drain: exited {status} after {took:?}");
            assert!(status.success(), "exit status {status}");
            assert!(
                took < Duration::from_millis(2800),
                "waited out the grace period: {took:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "edge did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn five_binary_upgrades_under_load_lose_no_request() {
    let _alone = CPU_HEAVY.lock().await;
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start_opts(
        dir,
        "us-east1",
        &snap,
        &EdgeOpts {
            edge: "grace_period_ms = 1000",
            ..Default::default()
        },
    )
    .await;
    // The new process must find the same addresses to take the sockets
    // over: pin the ports the OS chose for the first one.
    edge.pin_ports();
    let cfg = edge.config_path();

    let proxy = edge.proxy;
    let load = Load::start(proxy, "app1.repl.co", 4);
    let mut current = edge.proc;
    let mut old = Vec::new();
    for round in 1..=5 {
        let before = load.ok();
        let mut next = spawn_upgrade(&cfg);
        // One command: the new process finds the old one by its pid file
        // and asks it to hand over (crate::upgrade).
        let addrs = tokio::task::spawn_blocking(move || {
            let a = read_lines(&mut next, 2, |l| {
                l.strip_prefix("edgeplane: proxy listening on ")
                    .map(str::to_string)
                    .or_else(|| l.strip_prefix("edgeplane: admin listening on ").map(str::to_string))
            });
            (next, a)
        })
        .await
        .unwrap();
        let (next, printed) = addrs;
        assert_eq!(
            printed[0],
            proxy.to_string(),
            "round {round}: the new process serves the same address"
        );
        old.push(std::mem::replace(&mut current, Proc(next)));
        // Wait until the new process itself answers on the admin listener
        // and some load went through since the hand-over began.
        eventually("load continues", 20, || load.ok() > before + 20).await;
        println!(
            "upgrade: round {round} done, {} ok, {} failed",
            load.ok(),
            load.failed.load(Ordering::Relaxed)
        );
    }
    // Every old process stops accepting as it hands over, finishes its
    // drain and exits by itself while the load still runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, p) in old.iter_mut().enumerate() {
        while p.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "old process {i} never exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (ok, failed) = load.stop().await;
    println!("upgrade: 5 upgrades, {ok} requests ok, {failed} failed");
    assert!(ok > 200, "too little load to judge: {ok}");
    assert_eq!(failed, 0, "requests failed or were refused during upgrades");
    drop(old);
    drop(current);
}
