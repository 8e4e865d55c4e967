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
//! with no byte either way, or when the edge stops: after the tunnel's
//! spread delay each direction gets a close frame (1001, or 1012 on an
//! upgrade) at its next frame boundary, as on the plain-TCP pump
//! ([`super::tunnel`]).
//!
//! Start at [`Handover::run`].

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tunnel::{going_away, mask_key, Tunnel, TunnelStop, DRAIN_LIMIT};
use crate::conn::admission::Admitted;
use crate::metrics::Metrics;
use crate::ws_frames::{close_frame_to_client, close_frame_to_server, FrameCursor};

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

/// Both ways until either side closes or idles past `idle_timeout`. On a
/// stop (after the tunnel's delay) each direction is read only up to its
/// next frame boundary, gets a close frame with the stop's code there, and
/// the tunnel ends once both have one (at most [`DRAIN_LIMIT`] later).
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
    // Client-to-VM and VM-to-client frames, followed as they pass.
    let (mut to_vm, mut to_client) = (FrameCursor::default(), FrameCursor::default());
    to_client.advance(&answer.rest);
    if let Some(p) = prefix.filter(|p| !p.is_empty()) {
        upstream.write_all(&p).await?;
        to_vm.advance(&p);
    }
    let (code, delay, mut watch) = match stop {
        Some(s) => (s.code, s.delay, Some(s.watch)),
        None => (going_away as fn() -> u16, Duration::ZERO, None),
    };
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut vm_read, mut vm_write) = upstream.split();
    let (mut from_client, mut from_vm) = ([0u8; COPY_BUFFER], [0u8; COPY_BUFFER]);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut stopping: Option<tokio::time::Instant> = None;
    let (mut closed_to_vm, mut closed_to_client) = (false, false);
    loop {
        if let Some(deadline) = stopping {
            // Insert the close frames where each direction is between frames.
            if !closed_to_client && to_client.at_boundary() {
                client_write.write_all(&close_frame_to_client(code())).await?;
                client_write.flush().await?;
                closed_to_client = true;
            }
            if !closed_to_vm && to_vm.at_boundary() {
                vm_write.write_all(&close_frame_to_server(code(), mask_key())).await?;
                closed_to_vm = true;
            }
            if (closed_to_client && closed_to_vm) || tokio::time::Instant::now() >= deadline {
                let _ = client_write.shutdown().await;
                let _ = vm_write.shutdown().await;
                return Ok(());
            }
        }
        // While stopping, read no further than the current frame's end.
        let limit = |c: &FrameCursor| match stopping {
            Some(_) => (c.to_boundary().min(COPY_BUFFER as u64)) as usize,
            None => COPY_BUFFER,
        };
        let (client_limit, vm_limit) = (limit(&to_vm), limit(&to_client));
        tokio::select! {
            r = client_read.read(&mut from_client[..client_limit]), if client_limit > 0 && !closed_to_vm => {
                let n = r?;
                if n == 0 {
                    let _ = vm_write.shutdown().await;
                    return Ok(());
                }
                vm_write.write_all(&from_client[..n]).await?;
                to_vm.advance(&from_client[..n]);
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
            }
            r = vm_read.read(&mut from_vm[..vm_limit]), if vm_limit > 0 && !closed_to_client => {
                let n = r?;
                if n == 0 {
                    let _ = client_write.shutdown().await;
                    return Ok(());
                }
                client_write.write_all(&from_vm[..n]).await?;
                client_write.flush().await?;
                to_client.advance(&from_vm[..n]);
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
            }
            r = async { watch.as_mut().expect("guarded").wait_for(|v| *v).await.map(|_| ()) }, if watch.is_some() && stopping.is_none() => {
                watch = None;
                if r.is_ok() {
                    tokio::time::sleep(delay).await;
                    stopping = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                }
            }
            _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)), if stopping.is_some() => {}
            _ = &mut idle => return Ok(()),
        }
    }
}
