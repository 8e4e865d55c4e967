//! WebSocket tunnels over TLS on the edge's own path: the upgrade goes to
//! the VM on the edge's own connection ([`super::upgrade`]), and once the
//! answer is in, the client's TLS stream is taken out of Pingora's session
//! and the tunnel runs as its own task — no HTTP session, codec buffers or
//! request state stay behind an idle `wss://` tunnel.
//!
//! Where it sits: the request filter hands a TLS WebSocket upgrade to
//! [`super::Proxy::tunnel_websocket_tls`], which leaves a [`Handover`] in
//! the request's state; [`super::serve`] finishes the request, takes the
//! stream (`ServerSession::finish`, bytes the client sent past the head
//! included) and calls [`Handover::run`].
//!
//! Invariants: the tunnel holds the two streams, two 4 KiB copy buffers
//! and a share of the connection's admission guard (caps and drain count
//! it); it ends when either side closes, after `limits.tunnel_idle_timeout`
//! with no byte either way, or when the edge stops (after the tunnel's
//! spread delay). Unlike the plain-TCP pump ([`super::tunnel`]) it does not
//! send close frames on a stop: the client sees the connection close.
//!
//! Start at [`Handover::run`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::tunnel::{Tunnel, TunnelStop};
use crate::conn::admission::Admitted;
use crate::metrics::Metrics;

/// Copy buffer per direction (a WebSocket frame larger than this is
/// carried in pieces).
const COPY_BUFFER: usize = 4096;

/// A TLS upgrade answered by the VM, waiting for the client's stream.
pub struct Handover {
    pub(super) tunnel: Tunnel,
    pub(super) idle_timeout: Duration,
    pub(super) read_timeout: Duration,
    pub(super) stop: Option<TunnelStop>,
    pub(super) guard: Option<Arc<Admitted>>,
    pub(super) metrics: Arc<Metrics>,
}

impl Handover {
    /// Relays the answer to `client` and, for a `101`, carries the tunnel
    /// as its own task. `prefix`: bytes the client sent past its request
    /// head (they go to the VM first).
    pub fn run(self, mut client: Stream, prefix: Option<BytesMut>) {
        let Handover {
            tunnel,
            idle_timeout,
            read_timeout,
            stop,
            guard,
            metrics,
        } = self;
        if tunnel.answer.status != 101 {
            tokio::spawn(async move {
                let _ = tunnel.refuse(&mut client, read_timeout).await;
                let _ = client.shutdown().await;
            });
            return;
        }
        metrics.tunnels_active.inc();
        metrics.connections_active.inc();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = pump(tunnel, client, prefix, idle_timeout, stop).await {
                log::debug!("tls tunnel ended: {e}");
            }
            metrics.tunnels_active.dec();
            metrics.connections_active.dec();
        });
    }
}

/// Both ways until either side closes, idles past `idle_timeout`, or the
/// edge stops.
async fn pump(
    tunnel: Tunnel,
    mut client: Stream,
    prefix: Option<BytesMut>,
    idle_timeout: Duration,
    stop: Option<TunnelStop>,
) -> std::io::Result<()> {
    let Tunnel { mut upstream, answer } = tunnel;
    client.write_all(&answer.head).await?;
    client.write_all(&answer.rest).await?;
    client.flush().await?;
    if let Some(p) = prefix.filter(|p| !p.is_empty()) {
        upstream.write_all(&p).await?;
    }
    let last = AtomicU64::new(crate::clock::now_ms());
    let mut client = Active {
        inner: client,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUFFER, COPY_BUFFER);
    tokio::pin!(copy);
    let stopping = async {
        match stop {
            Some(mut s) => {
                let _ = s.watch.wait_for(|v| *v).await;
                tokio::time::sleep(s.delay).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopping);
    loop {
        let idle_ms = crate::clock::now_ms().saturating_sub(last.load(Ordering::Relaxed));
        let wait = idle_timeout.saturating_sub(Duration::from_millis(idle_ms));
        tokio::select! {
            r = &mut copy => return r.map(|_| ()),
            _ = &mut stopping => return Ok(()),
            _ = tokio::time::sleep(wait) => {
                let idle_ms = crate::clock::now_ms().saturating_sub(last.load(Ordering::Relaxed));
                if idle_ms >= idle_timeout.as_millis() as u64 {
                    return Ok(());
                }
            }
        }
    }
}

/// The client stream, noting when a byte last moved either way.
struct Active<'a> {
    inner: Stream,
    last: &'a AtomicU64,
}

impl Active<'_> {
    fn moved(&self) {
        self.last.store(crate::clock::now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Active<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved();
        }
        r
    }
}

impl AsyncWrite for Active<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
