//! `[limits]` enforced on real connections: the total request-head
//! deadline (slowloris), slow bodies, body size, requests per connection,
//! and the global and per-IP connection caps.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;
use crate::{dead_addr, world};

async fn setup(limits: &str) -> (FakeVm, FakeVm, Edge) {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let edge = Edge::start("us-east1", &snap, limits).await;
    (vm1, vm2, edge)
}

/// Reads until EOF (or 10 s), returning what arrived and when it ended.
async fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (out, Instant::now())
}

#[tokio::test]
async fn slowloris_head_is_cut_at_its_deadline_while_normal_traffic_flows() {
    let (vm1, _vm2, edge) = setup("header_timeout_ms = 1000").await;
    let mut slow = TcpStream::connect(edge.proxy).await.unwrap();
    let start = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\n")
        .await
        .unwrap();
    // A header line every 200 ms: each read is quick, the head never ends.
    let trickle = tokio::spawn(async move {
        for i in 0..40 {
            if slow.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow
    });
    // Normal requests keep their latency meanwhile.
    for _ in 0..5 {
        let t = Instant::now();
        let r = edge.get("app1.repl.co", "/", &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "normal request slowed: {:?}",
            t.elapsed()
        );
    }
    let mut slow = trickle.await.unwrap();
    let (raw, ended) = read_until_closed(&mut slow).await;
    let took = ended - start;
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"),
        "got {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        took < Duration::from_secs(9),
        "cut after {took:?}, not at its 1 s deadline"
    );
    assert_eq!(vm1.requests().await, 5, "the slow request never reached the VM");
}

#[tokio::test]
async fn slow_body_is_cut_with_408_and_big_bodies_get_413() {
    let (_vm1, _vm2, edge) = setup("body_timeout_ms = 1000\nmax_body_bytes = 1000").await;
    let mut s = TcpStream::connect(edge.proxy).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: app1.repl.co\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let start = Instant::now();
    let (raw, ended) = read_until_closed(&mut s).await;
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(ended - start < Duration::from_secs(5));

    let big = vec![b'x'; 5000];
    let r = try_request(edge.proxy, "POST", "app1.repl.co", "/", &[], &big)
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    // Chunked: counted as it arrives.
    let mut chunked = b"POST / HTTP/1.1\r\nHost: app1.repl.co\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"258\r\n");
        chunked.extend_from_slice(&[b'y'; 600]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let raw = raw_exchange(edge.proxy, &chunked, Duration::from_secs(5)).await;
    assert_eq!(
        statuses(&raw).first(),
        Some(&413),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    let m = edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_client_timeouts_total", &["phase=\"body\""]),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_connection_carries_at_most_max_requests() {
    let (_vm1, _vm2, edge) = setup("max_requests_per_connection = 3").await;
    let mut s = TcpStream::connect(edge.proxy).await.unwrap();
    let mut answered = 0;
    let mut buf = vec![0u8; 65536];
    for i in 0..5 {
        if s.write_all(b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                assert!(text.starts_with("http/1.1 200"), "request {i}: {text}");
                answered += 1;
                if answered == 3 {
                    assert!(text.contains("connection: close"), "the last one says close: {text}");
                }
            }
            _ => break,
        }
    }
    assert_eq!(answered, 3);
}

async fn connect_from(ip: &str, to: std::net::SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// A request on an established connection; the status, or None if closed.
async fn status_on(s: &mut TcpStream) -> Option<u16> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    statuses(&buf[..n]).first().copied()
}

#[tokio::test]
async fn per_ip_and_global_connection_caps() {
    let (_vm1, _vm2, edge) = setup("max_connections = 8\nmax_connections_per_ip = 5").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from("127.0.0.1", edge.proxy).await;
        assert_eq!(status_on(&mut s).await, Some(200));
        held.push(s);
    }
    let mut sixth = connect_from("127.0.0.1", edge.proxy).await;
    let (raw, _) = read_until_closed(&mut sixth).await;
    assert_eq!(statuses(&raw), vec![429], "{:?}", String::from_utf8_lossy(&raw));
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.2", edge.proxy).await;
        assert_eq!(status_on(&mut s).await, Some(200), "another address has its own cap");
        held.push(s);
    }
    let mut ninth = connect_from("127.0.0.3", edge.proxy).await;
    let (raw, _) = read_until_closed(&mut ninth).await;
    assert_eq!(statuses(&raw), vec![503], "global cap");
    // Counted before slots are given back: retries below may meet the caps
    // again until the edge has seen the closes.
    let m = edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_connections_refused_total", &["max_connections_per_ip"]),
        Some(1.0)
    );
    assert_eq!(
        metric_with(
            &m,
            "edgeplane_connections_refused_total",
            &["reason=\"max_connections\""]
        ),
        Some(1.0)
    );
    // Closing connections gives their slots back.
    held.truncate(4);
    let mut again = None;
    for _ in 0..40 {
        let mut s = connect_from("127.0.0.1", edge.proxy).await;
        if status_on(&mut s).await == Some(200) {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "slots were not given back");
}
