//! Faults between the edge and its VMs, injected by a small TCP proxy
//! ([`FaultProxy`]: pass, delay, stall, reset, truncate) or by VMs that die
//! at the worst moment. Every case must end in a clean answer or a closed
//! connection, never a hung client, and the edge's file descriptors must
//! come back to their baseline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::process_life::{error_lines, metric_sum};
use crate::{dead_addr, world};

/// What the fault proxy does to new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    Pass = 0,
    /// Wait 300 ms before relaying anything.
    Delay = 1,
    /// Accept, read, never answer.
    Stall = 2,
    /// Accept, then reset (RST) at once.
    Reset = 3,
    /// Relay only the first 64 bytes of the answer, then close.
    Truncate = 4,
}

/// A TCP proxy in front of `target` whose behaviour tests switch at will.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    pub accepted: Arc<AtomicU64>,
    live: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let accepted = Arc::new(AtomicU64::new(0));
        let live = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (m, a, lv) = (mode.clone(), accepted.clone(), live.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = l.accept().await else { return };
                a.fetch_add(1, Ordering::Relaxed);
                let mode = m.load(Ordering::Relaxed);
                let h = tokio::spawn(relay(client, target, mode));
                lv.lock().unwrap().push(h.abort_handle());
            }
        });
        FaultProxy {
            addr,
            mode,
            accepted,
            live,
        }
    }

    /// Switches the fault for new connections and closes the open ones
    /// (so the edge's pooled connections cannot dodge it).
    pub async fn set(&self, f: Fault) {
        self.mode.store(f as u8, Ordering::Relaxed);
        for h in self.live.lock().unwrap().drain(..) {
            h.abort();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, mode: u8) {
    match mode {
        m if m == Fault::Reset as u8 => {
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            drop(client);
        }
        m if m == Fault::Stall as u8 => {
            let mut buf = [0u8; 4096];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        m => {
            if m == Fault::Delay as u8 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let Ok(mut up) = TcpStream::connect(target).await else {
                return;
            };
            if m == Fault::Truncate as u8 {
                let (mut cr, mut cw) = client.split();
                let (mut ur, mut uw) = up.split();
                let to_up = tokio::io::copy(&mut cr, &mut uw);
                let to_client = async {
                    let mut buf = [0u8; 64];
                    let mut got = 0;
                    while got < 64 {
                        match ur.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got += n,
                        }
                    }
                    let _ = cw.write_all(&buf[..got]).await;
                };
                tokio::select! { _ = to_up => {}, _ = to_client => {} }
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        }
    }
}

/// A VM that reads a request head and then does `what` to the connection.
async fn dying_vm(what: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                match what {
                    "before-headers" => drop(s),
                    "answer-then-close" => {
                        // Keep-alive by HTTP/1.1's default, then gone: what a
                        // VM whose keep-alive timeout just passed looks like.
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                        let _ = s.flush().await;
                        drop(s);
                    }
                    "mid-body" => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly a part of the body")
                            .await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        drop(s);
                    }
                    _ => {}
                }
            });
        }
    });
    addr
}

/// Sends one request and reads until close; returns the status (if any)
/// and how long it took. Panics if the client would hang.
async fn one(addr: SocketAddr, host: &str) -> (Option<u16>, usize, Duration) {
    let start = Instant::now();
    let raw = raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(9), "client hung for {took:?}");
    (statuses(&raw).first().copied(), raw.len(), took)
}

#[tokio::test]
async fn vm_faults_end_cleanly_and_file_descriptors_come_back() {
    let vm2 = FakeVm::start("vm-2");
    let fault = FaultProxy::start(vm2.http).await;
    let before_headers = dying_vm("before-headers").await;
    // app1 runs on vm-1 (the fault proxy in front of vm-2's server);
    // app2 runs on "vm-2" (a VM that dies before its headers).
    let mut snap = world(fault.addr, before_headers, dead_addr(), dead_addr(), dead_addr());
    snap["containers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"repl_id": "r2", "vm_id": "vm-2"}));
    let edge = Edge::start(
        "us-east1",
        &snap,
        "upstream_read_timeout_ms = 1000\nupstream_connect_timeout_ms = 500",
    )
    .await;
    // Warm up, then take the baseline.
    assert_eq!(one(edge.proxy, "app1.repl.co").await.0, Some(200));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = fd_count(edge.pid());

    let mut results = Vec::new();
    for (name, f, want) in [
        ("delay 300 ms", Fault::Delay, Some(200)),
        ("stall", Fault::Stall, Some(504)),
        ("reset", Fault::Reset, Some(502)),
        ("pass", Fault::Pass, Some(200)),
    ] {
        fault.set(f).await;
        let (status, _, took) = one(edge.proxy, "app1.repl.co").await;
        println!("fault: {name:24} -> {status:?} in {took:?}");
        assert_eq!(status, want, "{name}");
        results.push(name);
    }
    // Truncated answer: the client gets at most what arrived and a close.
    fault.set(Fault::Truncate).await;
    let (status, len, took) = one(edge.proxy, "app1.repl.co").await;
    println!("fault: truncate                 -> {status:?} {len} bytes in {took:?}");
    fault.set(Fault::Pass).await;

    // A VM that closes before answering: 502.
    let (status, _, took) = one(edge.proxy, "app2.repl.co").await;
    println!("fault: vm dies before headers   -> {status:?} in {took:?}");
    assert_eq!(status, Some(502));

    // A VM that dies mid-body: the client's connection is closed, short.
    let mid = dying_vm("mid-body").await;
    let mut snap2 = snap.clone();
    snap2["vms"][1]["addr"] = mid.to_string().into();
    write_snapshot(&edge.snapshot_path(), &snap2);
    wait_snapshot(&edge, |s| s["version"].as_u64().unwrap_or(0) >= 2).await;
    let (status, len, took) = one(edge.proxy, "app2.repl.co").await;
    println!("fault: vm dies mid-body         -> {status:?} {len} bytes in {took:?}");
    assert_eq!(status, Some(200), "headers had been sent");

    // An idle pooled connection the VM closed: the next request still works.
    fault.set(Fault::Pass).await;
    assert_eq!(one(edge.proxy, "app1.repl.co").await.0, Some(200));
    drop(vm2); // the server behind the proxy is gone; pooled connections die
    let (status, _, _) = one(edge.proxy, "app1.repl.co").await;
    println!("fault: pooled connection's VM killed -> {status:?}");
    assert!(matches!(status, Some(502) | Some(504)), "{status:?}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after = fd_count(edge.pid());
    for _ in 0..40 {
        if after <= baseline + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = fd_count(edge.pid());
    }
    println!("fault: file descriptors baseline {baseline}, after {after}");
    assert!(
        fault.accepted.load(Ordering::Relaxed) >= 6,
        "the faults went through the proxy"
    );
    assert!(after <= baseline + 2, "fds leaked: {baseline} -> {after}");
}

#[tokio::test]
async fn a_vm_killed_with_a_websocket_open_ends_the_tunnel() {
    let vm1 = FakeVm::start("vm-1");
    let vm2 = FakeVm::start("vm-2");
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let edge = Edge::start("us-east1", &snap, "").await;
    let baseline = fd_count(edge.pid());
    let stream = TcpStream::connect(edge.proxy).await.unwrap();
    let req = "ws://app1.repl.co/".into_client_request().unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    drop(vm1);
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the client was left hanging after its VM died");
    drop(ws);
    let mut after = fd_count(edge.pid());
    for _ in 0..40 {
        if after <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = fd_count(edge.pid());
    }
    println!("fault: websocket vm killed, fds baseline {baseline}, after {after}");
    assert!(after <= baseline, "tunnel fds leaked: {baseline} -> {after}");
}

/// A VM that closes each connection right after answering (its keep-alive
/// timeout passed as the edge pooled it): a GET sent at once meets the
/// closed pooled connection and goes again on a new one (counted as a pool
/// reuse race, no ERROR); a POST is never sent on an unchecked pooled
/// connection; after a pause the liveness check catches the close.
#[tokio::test]
async fn a_pooled_connection_the_vm_closed_is_never_an_error_for_the_client() {
    let vm = dying_vm("answer-then-close").await;
    let snap = world(vm, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let edge = Edge::start("us-east1", &snap, "").await;
    let post = |n: usize| {
        format!("POST /p{n} HTTP/1.1\r\nHost: app1.repl.co\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    };
    for round in 0..20 {
        assert_eq!(one(edge.proxy, "app1.repl.co").await.0, Some(200), "GET {round}");
        let raw = raw_exchange(edge.proxy, post(round).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(statuses(&raw).first().copied(), Some(200), "POST {round}");
        if round % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let m = edge.metrics().await;
    let races = metric_sum(&m, "edgeplane_log_events_total", &["pool_reuse_race"]);
    println!("pool: 40 requests to a VM that closes after each answer, {races} retried on a new connection");
    assert!(
        races >= 1.0,
        "a GET right after an answer meets the closed connection: {m}"
    );
    assert!(error_lines(&edge).is_empty(), "{:?}", error_lines(&edge));
}
