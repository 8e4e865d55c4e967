//! Full duplex, end to end: the edge reads the VM's answer while it still
//! sends the request body, so an early answer reaches the client and a
//! streaming upload and a streaming answer both flow; and tunnels keep
//! carrying bytes through the stop delay after SIGTERM, ws and wss alike.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use crate::harness::*;
use crate::{dead_addr, world};

/// Reads from `s` until a whole response head is in (or 5 s pass).
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), s.read(&mut b))
            .await
            .expect("no answer head in time")
            .unwrap();
        assert!(n > 0, "closed before an answer: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn an_answer_before_the_body_ends_reaches_the_client() {
    let (vm1, _vm2, edge) = crate::websocket::setup().await;
    let before = vm1.requests().await;
    let mut s = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    // 10 MB declared, 64 KiB sent: the VM answers 413 without reading.
    s.write_all(b"POST /__fake/early?status=413 HTTP/1.1\r\nHost: app1.repl.co\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-served-by: vm-1"),
        "the VM's own answer: {head}"
    );
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert_eq!(vm1.requests().await, before + 1);
    // The rest of the body is not read: the edge closes the connection.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut b = [0u8; 4096];
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => rest.extend_from_slice(&b[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stayed open");
    let m = edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_requests_total", &["code=\"413\"", "outcome=\"proxied\""]),
        Some(1.0),
        "{m}"
    );
    assert!(!m.contains("code=\"502\""), "no 502 for an early answer: {m}");
}

#[tokio::test]
async fn a_streaming_answer_flows_while_the_body_streams() {
    let (_vm1, _vm2, edge) = crate::websocket::setup().await;
    let mut s = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    s.write_all(b"POST /__fake/echo-stream HTTP/1.1\r\nHost: app1.repl.co\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // Ping-pong: each piece must come back before the next is sent, which
    // a proxy that sends the whole body first can never do.
    let mut got = String::new();
    let mut head_seen = false;
    for i in 0..10 {
        let piece = format!("piece-{i};");
        s.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !got.contains(&piece) {
            let mut b = [0u8; 4096];
            let n = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), s.read(&mut b))
                .await
                .unwrap_or_else(|_| panic!("piece {i} did not come back while the body was still streaming: {got}"))
                .unwrap();
            assert!(n > 0, "closed: {got}");
            got.push_str(&String::from_utf8_lossy(&b[..n]));
            head_seen |= got.starts_with("HTTP/1.1 200");
        }
    }
    assert!(head_seen, "{got}");
    s.write_all(b"0\r\n\r\n").await.unwrap();
    // The answer ends with the body, and the connection carries another request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.ends_with("0\r\n\r\n") {
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), s.read(&mut b))
            .await
            .expect("the answer did not end")
            .unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    assert!(!got.to_ascii_lowercase().contains("connection: close"), "{got}");
    s.write_all(b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"), "after {got}");
}

/// One open tunnel of the stop test: its name and stream.
enum Socket {
    Plain(Box<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>),
    Tls(Box<Wss>),
}

impl Socket {
    async fn send(&mut self, m: Message) {
        match self {
            Socket::Plain(ws) => ws.send(m).await.unwrap(),
            Socket::Tls(ws) => ws.send(m).await.unwrap(),
        }
    }
    async fn next(&mut self) -> Option<Message> {
        match self {
            Socket::Plain(ws) => ws.next().await.map(|m| m.unwrap()),
            Socket::Tls(ws) => ws.next().await.map(|m| m.unwrap()),
        }
    }
}

/// Echoes every 50 ms until the close frame comes; each echo within
/// 100 ms. Returns (echoes after the stop, close code).
async fn echo_until_closed(mut ws: Socket, stopped: Instant) -> (usize, u16) {
    let mut after_stop = 0;
    for i in 0.. {
        let text = format!("ping {i}");
        ws.send(Message::text(text.clone())).await;
        let sent = Instant::now();
        loop {
            let m = tokio::time::timeout(Duration::from_millis(100), ws.next())
                .await
                .unwrap_or_else(|_| panic!("no echo within 100 ms, {:?} after the stop", stopped.elapsed()));
            match m {
                Some(Message::Text(t)) if t.as_str() == text => {
                    if sent > stopped {
                        after_stop += 1;
                    }
                    break;
                }
                Some(Message::Close(frame)) => return (after_stop, frame.map_or(0, |f| f.code.into())),
                Some(_) => continue,
                None => panic!("the tunnel ended without a close frame"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

/// SIGTERM with ten ws and ten wss tunnels open: every tunnel keeps
/// echoing within 100 ms through its stop delay (spread over up to 10 s),
/// then gets close 1001; the edge exits once they are closed.
#[tokio::test]
async fn tunnels_keep_echoing_through_the_stop_delay_then_close_with_1001() {
    let vm1 = FakeVm::start("vm-1");
    let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let (mut edge, der) = Edge::start_tls(
        "us-east1",
        &snap,
        EdgeOpts {
            edge: "grace_period_ms = 20000",
            ..Default::default()
        },
    )
    .await;
    let https = edge.https.expect("https listener");
    let mut sockets = Vec::new();
    for _ in 0..10 {
        let tcp = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
        let req = "ws://app1.repl.co/shell".into_client_request().unwrap();
        sockets.push(Socket::Plain(Box::new(
            tokio_tungstenite::client_async(req, tcp).await.unwrap().0,
        )));
        let (wss, _) = wss_connect(https, &der, "app1.repl.co", "wss://app1.repl.co/shell").await;
        sockets.push(Socket::Tls(Box::new(wss)));
    }
    let stopped = Instant::now();
    signal(edge.pid(), "-TERM");
    let results = futures_util::future::join_all(
        sockets
            .into_iter()
            .enumerate()
            .map(|(i, ws)| async move { (i % 2 == 1, echo_until_closed(ws, stopped).await) }),
    )
    .await;
    for (tls, (_, code)) in &results {
        assert_eq!(*code, 1001, "tls={tls}");
    }
    let echoed = |tls: bool| {
        results
            .iter()
            .filter(|(t, _)| *t == tls)
            .map(|(_, (n, _))| n)
            .sum::<usize>()
    };
    eprintln!(
        "duplex: after SIGTERM, ws tunnels echoed {} times and wss {} (each within 100 ms), all 1001; last close {:?} after the signal",
        echoed(false),
        echoed(true),
        stopped.elapsed()
    );
    assert!(echoed(false) >= 5, "ws tunnels echoed during their delay: {results:?}");
    assert!(echoed(true) >= 5, "wss tunnels echoed during their delay: {results:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(18),
        "closed by the delay, not the grace period"
    );
    for _ in 0..100 {
        if edge.proc.0.try_wait().unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the edge did not exit after its last tunnel closed");
}
