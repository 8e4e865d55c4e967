//! WebSockets through the edge with a real client: echo of text and a
//! 1 MiB binary message, close from either side, workspace token checks.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::{dead_addr, world};

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(edge: &Edge, url: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let stream = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    let req = url.into_client_request().unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
    assert_eq!(
        resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()),
        Some("vm-1")
    );
    Ok(ws)
}

async fn next_data(ws: &mut Ws) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message in time")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// One edge of us-east1 in the standard world, with vm-1 and vm-2 up.
pub(crate) async fn setup() -> (FakeVm, FakeVm, Edge) {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let edge = Edge::start(
        "us-east1",
        &world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr()),
        "",
    )
    .await;
    (vm1, vm2, edge)
}

async fn tunnels(edge: &Edge) -> f64 {
    metric_value(&edge.metrics().await, "edgeplane_websocket_tunnels_active").unwrap()
}

async fn wait_tunnels(edge: &Edge, n: f64) {
    for _ in 0..100 {
        if tunnels(edge).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tunnels never reached {n}");
}

#[tokio::test]
async fn echoes_text_and_a_mebibyte_and_client_close_reaches_the_vm() {
    let (_vm1, _vm2, edge) = setup().await;
    let mut ws = connect(&edge, "ws://APP1.repl.co/chat").await.unwrap();
    assert_eq!(tunnels(&edge).await, 1.0);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_data(&mut ws).await {
        Message::Binary(b) => assert!(b[..] == big[..], "1 MiB echo differs"),
        other => panic!("{other:?}"),
    }
    // Client closes: the VM's close reply comes back through the edge.
    ws.close(None).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(_) => {}
        other => panic!("expected the VM's close reply, got {other:?}"),
    }
    wait_tunnels(&edge, 0.0).await;
}

#[tokio::test]
async fn vm_close_reaches_the_client() {
    let (_vm1, _vm2, edge) = setup().await;
    let mut ws = connect(&edge, "ws://app1.repl.co/").await.unwrap();
    ws.send(Message::text("close-me")).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Library(4000)),
        other => panic!("expected the VM's close, got {other:?}"),
    }
    // Keep polling so the client's close reply is flushed; the stream ends
    // once the VM has it and drops the connection through the edge.
    let end = tokio::time::timeout(Duration::from_secs(10), async { while ws.next().await.is_some() {} }).await;
    assert!(end.is_ok(), "the tunnel did not end after the close handshake");
    wait_tunnels(&edge, 0.0).await;
}

#[tokio::test]
async fn workspace_session_needs_a_valid_token() {
    let (vm1, _vm2, edge) = setup().await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let token = edgeplane_token::v1::mint(WS_KEY.as_bytes(), "r1", exp);
    let mut ws = connect(&edge, &format!("ws://edge.internal/__ws/r1?token={token}"))
        .await
        .unwrap();
    ws.send(Message::text("in the workspace")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("in the workspace"));
    drop(ws);

    let before = vm1.requests().await;
    let wrong = edgeplane_token::v1::mint(WS_KEY.as_bytes(), "r2", exp);
    for url in [
        "ws://edge.internal/__ws/r1".to_string(),
        format!("ws://edge.internal/__ws/r1?token={wrong}"),
    ] {
        let stream = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
        match tokio_tungstenite::client_async(url.as_str().into_client_request().unwrap(), stream).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{url}")
            }
            other => panic!("expected 401 for {url}, got {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(vm1.requests().await, before, "a refused session touched the VM");
}
