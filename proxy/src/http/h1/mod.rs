//! The edge's own HTTP/1.1 server: one loop per client connection (plain
//! and TLS listeners) that reads a head, runs the request path on it and
//! goes on to the next request, keeping its buffers for the connection's
//! whole life. HTTP/2 stays on Pingora's session; both reach the request
//! path through [`super::downstream::Downstream`].
//!
//! Why its own: Pingora's codec builds a fresh session per request (new
//! buffers, a header map and a case map, the head copied), 3.43 µs and 30
//! allocations per request against 0.92 µs and none for a loop like this
//! one (`bench/benches/h1_codec.rs`, docs/architecture.md "HTTP/1 codec").
//!
//! Files: [`head`] parses a head in place with the edge's framing rules
//! (pure); [`conn`] is the connection: body in, answer out.
//!
//! Invariants (as the request path had them on Pingora's codec):
//! - a connection waiting for a request gives up after
//!   `limits.keepalive_idle` (the first one too); a head, once its first
//!   byte arrived, has `limits.header_timeout_ms` in all ([`ConnStream`]);
//! - a head the edge will not serve gets 400 (431 when too large, 405 for
//!   `CONNECT`) and the connection closes; the client's fault: counted, at
//!   debug;
//! - the listeners' stop drops a connection waiting for its next request
//!   at once, and one never served after `FRESH_CONNECTION_GRACE`; a
//!   request in progress finishes with `connection: close`;
//! - pipelined requests are served in order (the bytes after a request
//!   stay in the read buffer for the next head);
//! - a connection that closes with a request body still unread lingers
//!   ([`linger`]), so the answer is not lost to a reset.
//!
//! Start at [`EdgeHttp::serve_h1`].

pub mod conn;
pub mod head;
pub mod offline;

use std::sync::Arc;

use pingora_core::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::serve::{EdgeHttp, Next};
use crate::conn::ConnStream;
use conn::{H1Conn, HEAD_CHUNK};
use head::Parsed;

/// Head bytes read past `limits.max_header_bytes` (which counts header
/// lines only) before the edge gives up on a head: room for the request
/// line and the line ends.
pub const HEAD_SLACK: usize = 16 * 1024;

/// Longest a closing connection keeps reading a body nobody will read.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// Most bytes read and dropped while lingering.
pub const LINGER_BYTES: usize = 256 * 1024;

/// Closes a connection whose client may still be sending a body the edge
/// will not read (it answered first): closing at once would make the
/// kernel answer those bytes with a reset, which can destroy the answer
/// before the client reads it. Half-close, then read and drop what comes
/// for at most [`LINGER`] and [`LINGER_BYTES`] (nginx's lingering close).
async fn linger(io: &mut ConnStream) {
    use tokio::io::AsyncWriteExt;
    let _ = io.shutdown().await;
    let until = tokio::time::Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match tokio::time::timeout_at(until, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => break,
        }
    }
}

/// How waiting for a head ended.
enum Wait {
    /// A head is in the connection's request head.
    Head,
    /// Nothing more on this connection (closed, idle, timed out, stopped).
    Closed,
    /// A head the edge refuses, with this status.
    Refused(u16),
}

impl EdgeHttp {
    /// Serves one HTTP/1.1 connection until it closes (see the module docs).
    pub async fn serve_h1(self: &Arc<Self>, io: ConnStream, shutdown: &ShutdownWatch) {
        let limits = self.proxy.limits();
        let mut c = H1Conn::new(io, limits.max_requests_per_connection);
        let mut fresh = true;
        loop {
            match self.wait_for_head(&mut c, fresh, &limits).await {
                Wait::Head => {}
                Wait::Closed => return,
                Wait::Refused(status) => {
                    crate::logging::LOG_EVENTS.with_label_values(&["client_error"]).inc();
                    log::debug!("refusing a request head: {status}");
                    c.refuse(status).await;
                    return;
                }
            }
            fresh = false;
            c.start_request(limits.keepalive_idle.as_secs().max(1));
            if c.head.req.method == http::Method::CONNECT {
                crate::logging::LOG_EVENTS.with_label_values(&["client_error"]).inc();
                c.refuse(405).await;
                return;
            }
            let (tls, body_done) = (c.io.is_tls(), c.body_done());
            match self.handle(&mut c, tls, body_done, shutdown).await {
                Next::Reuse if c.reusable() => c.reuses_left -= 1,
                Next::HandOver(tunnel) => {
                    let prefix = c.rbuf.split();
                    super::tunnel::spawn(c.io, *tunnel, &prefix);
                    return;
                }
                // A body the edge did not read may still be on its way.
                _ if !c.body_done() => return linger(&mut c.io).await,
                // A complete answer on a connection that ends: closed
                // cleanly (TLS close_notify, then FIN).
                Next::Reuse => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut c.io).await;
                    return;
                }
                // A failure, or a plain tunnel that took a duplicate of the
                // socket (a shutdown would end the tunnel too): dropped.
                Next::Close => return,
            }
        }
    }

    /// Reads until a whole head is parsed into `c.head`.
    async fn wait_for_head(&self, c: &mut H1Conn, fresh: bool, limits: &edgeplane_config::LimitsConfig) -> Wait {
        let max_head = limits.max_header_bytes + HEAD_SLACK;
        loop {
            if !c.rbuf.is_empty() {
                match head::parse(&mut c.rbuf, &mut c.head, max_head) {
                    Ok(Parsed::Complete(_)) => return Wait::Head,
                    Ok(Parsed::Partial) => {}
                    Err(e) => {
                        // Not the bytes: a head may carry credentials.
                        log::debug!("{e}");
                        return Wait::Refused(e.status());
                    }
                }
            }
            if c.rbuf.capacity() - c.rbuf.len() < 1024 {
                c.rbuf.reserve(HEAD_CHUNK);
            }
            let read = if c.rbuf.is_empty() {
                // Between requests: idle time is bounded, and a stop ends
                // the wait (a fresh connection gets a grace first).
                let idle = if fresh {
                    limits.keepalive_idle
                } else {
                    c.idle_timeout().unwrap_or(limits.keepalive_idle)
                };
                let stopped = async {
                    self.stop.wait().await;
                    if fresh {
                        tokio::time::sleep(super::app::FRESH_CONNECTION_GRACE).await;
                    }
                };
                tokio::select! {
                    // Biased: a head already on its way is read before a stop is seen.
                    biased;
                    r = c.wait.within(idle, c.io.read_buf(&mut c.rbuf)) => match r {
                        Ok(r) => r,
                        Err(_) => return Wait::Closed,
                    },
                    _ = stopped => return Wait::Closed,
                }
            } else {
                // Inside a head: its deadline is the connection's (408).
                c.io.read_buf(&mut c.rbuf).await
            };
            match read {
                Ok(0) => {
                    if !c.rbuf.is_empty() {
                        log::debug!("the client closed in the middle of a request head");
                    }
                    return Wait::Closed;
                }
                Ok(_) => {}
                Err(e) => {
                    log::debug!("reading a request head: {e}");
                    return Wait::Closed;
                }
            }
        }
    }
}
