//! The fast backend of the comparison runs (`edgeplane-bench backend`): the
//! cheapest HTTP/1.1 and WebSocket echo server we can write, so that what the
//! load runs measure is the proxy in front of it, not the server behind.
//!
//! - HTTP: every request head (GET/HEAD without a body; pipelining works)
//!   gets the same canned `200` with a 2-byte body and keep-alive. No parsing
//!   beyond finding the end of the head; a request with a body is answered
//!   and the connection closed (the load generators never send one).
//! - WebSocket: a head carrying `Upgrade: websocket` gets a `101` and the
//!   connection becomes a tungstenite echo (every text/binary message back).
//!   Small read buffers keep the backend's own memory per idle tunnel low.
//!
//! Where it sits: started by [`crate::compare`] as its own process pinned to
//! the load generator's core; the proxies under test point at it (the
//! edgeplane world points all its VMs at it). Start at [`serve`].

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The canned response: what a "tiny 200" means in every comparison.
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";

/// WebSocket settings for echo peers holding many idle tunnels.
pub fn small_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
}

/// Binds `listen`, prints `backend listening on <addr>` and serves forever.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let l = TcpListener::bind(listen).await?;
    println!("backend listening on {}", l.local_addr()?);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors: back off instead of spinning.
                log::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(connection(s));
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn header_value<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (k, v) = line.split_at(colon);
        k.eq_ignore_ascii_case(name.as_bytes()).then(|| v[1..].trim_ascii())
    })
}

async fn connection(mut s: TcpStream) {
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(RESPONSE.len() * 4);
    loop {
        let mut consumed = 0;
        out.clear();
        while let Some(end) = find_head_end(&buf[consumed..]) {
            let head = &buf[consumed..consumed + end];
            if header_value(head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")) {
                let Some(key) = header_value(head, "sec-websocket-key") else {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let accept = derive_accept_key(key);
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                drop(buf);
                return echo(s).await;
            }
            let has_body = header_value(head, "content-length").is_some_and(|v| v != b"0")
                || header_value(head, "transfer-encoding").is_some();
            out.extend_from_slice(RESPONSE);
            consumed += end;
            if has_body {
                let _ = s.write_all(&out).await;
                return;
            }
        }
        buf.drain(..consumed);
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            return;
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn echo(s: TcpStream) {
    let mut ws = WebSocketStream::from_raw_socket(s, Role::Server, Some(small_ws_config())).await;
    while let Some(Ok(m)) = ws.next().await {
        let echo = matches!(m, Message::Text(_) | Message::Binary(_));
        if matches!(m, Message::Close(_)) {
            let _ = ws.flush().await;
            return;
        }
        if echo && ws.send(m).await.is_err() {
            return;
        }
    }
}
