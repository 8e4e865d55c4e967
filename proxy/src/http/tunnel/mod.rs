//! WebSocket tunnels the edge carries itself, plain and TLS alike: once
//! the VM has answered an upgrade with `101` ([`super::forward`] opened the
//! connection, sent the edited head and read the answer, with the same
//! retries and replays as any request), the tunnel leaves the HTTP
//! machinery and runs as its own task ([`spawn`]) holding only the two
//! streams, the [`Pump`], a [`TunnelGuard`] (the gauges and a share of the
//! connection's admission slot) and a [`TunnelStop`].
//!
//! Why not Pingora's upgrade path: it keeps two 64 KiB body buffers per
//! upgraded connection (about 220 KiB resident per idle tunnel, measured)
//! and hops every chunk through a channel; workspaces hold tens of
//! thousands of mostly idle tunnels. Here an idle tunnel holds no buffer:
//! 3.35 KiB and 2 descriptors for plain ws, the TLS state for wss
//! (bench/results/tunnels/).
//!
//! The client side comes two ways: on a plain-TCP listener, a duplicate of
//! the accepted socket ([`client_socket`]; Pingora's own handle closes with
//! the request); on a TLS listener, the TLS stream itself, which the
//! request hands back to [`super::serve`] ([`super::serve::Next::HandOver`])
//! once Pingora's session lets go of it, with any bytes read past the head.
//!
//! Ends: either side closes (what it sent is delivered first), no byte
//! either way for `limits.tunnel_idle_timeout_ms`, or the edge stops: after
//! the tunnel's own delay (spread over half the grace period, at most 10 s,
//! so clients do not all reconnect at once; bytes keep flowing meanwhile)
//! each direction gets a close frame (1001, or 1012 on an upgrade) at its
//! next frame boundary, and the tunnel ends once both went out, at most
//! [`DRAIN_LIMIT`] later.
//!
//! Start at [`spawn`].

mod pump;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::client::Conn;
use crate::clock::entropy;
use crate::conn::admission::Admitted;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::ws_frames::{CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART};
pub use pump::{Pump, Step};

/// Longest a tunnel waits for a frame boundary once it is told to close.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Longest spread of tunnel closes after a stop (and at most half the
/// grace period).
pub const MAX_CLOSE_DELAY: Duration = Duration::from_secs(10);

/// Set when SIGQUIT (graceful upgrade) arrives: tunnels then close with
/// 1012 "service restart" instead of 1001 "going away".
pub static UPGRADING: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// The close code tunnels send when the process stops.
pub fn close_code() -> u16 {
    if UPGRADING.load(Ordering::Relaxed) {
        CLOSE_SERVICE_RESTART
    } else {
        CLOSE_GOING_AWAY
    }
}

/// A masking key for a frame the edge sends to a VM (RFC 6455 §5.3).
pub fn mask_key() -> [u8; 4] {
    (entropy() as u32).to_be_bytes()
}

/// How a tunnel learns that the edge is stopping, and how long it waits
/// before closing.
pub struct TunnelStop {
    pub shutdown: Shutdown,
    pub delay: Duration,
}

impl TunnelStop {
    /// A random delay within half of `grace_period`, at most
    /// [`MAX_CLOSE_DELAY`].
    pub fn new(shutdown: Shutdown, grace_period: Duration) -> TunnelStop {
        let spread = (grace_period / 2).min(MAX_CLOSE_DELAY).as_millis().max(1) as u64;
        TunnelStop {
            shutdown,
            delay: Duration::from_millis(entropy() % spread),
        }
    }
}

/// What an open tunnel keeps counted for its whole life: the open-tunnel
/// and open-connection gauges (the client connection outlives its request)
/// and a share of the connection's admission slot (caps and drain count it).
pub struct TunnelGuard {
    metrics: Arc<Metrics>,
    _admitted: Option<Arc<Admitted>>,
}

impl TunnelGuard {
    pub fn new(metrics: Arc<Metrics>, admitted: Option<Arc<Admitted>>) -> TunnelGuard {
        metrics.tunnels_active.inc();
        metrics.connections_active.inc();
        TunnelGuard {
            metrics,
            _admitted: admitted,
        }
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.metrics.tunnels_active.dec();
        self.metrics.connections_active.dec();
    }
}

/// A `101` from the VM, on its connection, waiting for the client's stream.
pub struct Opened {
    pub conn: Conn,
    /// The answer head as the client gets it.
    pub head: Vec<u8>,
}

/// Everything a tunnel task takes.
pub struct Tunnel {
    pub opened: Opened,
    pub idle_timeout: Duration,
    pub stop: TunnelStop,
    pub guard: TunnelGuard,
}

/// Runs the tunnel on `client` as its own task. `prefix`: bytes the client
/// sent past its request head (they go to the VM first).
pub fn spawn<C>(client: C, tunnel: Tunnel, prefix: &[u8])
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Tunnel {
        opened,
        idle_timeout,
        stop,
        guard,
    } = tunnel;
    let Opened { conn, mut head } = opened;
    let frames = conn.rbuf.len();
    head.extend_from_slice(&conn.rbuf);
    let pump = Pump::new(client, conn.io, &head, prefix, frames);
    tokio::spawn(async move {
        let _guard = guard;
        match run(pump, idle_timeout, stop).await {
            Ok((up, down)) => log::debug!("tunnel ended after {up} bytes up, {down} down"),
            Err(e) => log::debug!("tunnel ended: {e}"),
        }
    });
}

/// Where a tunnel is in its stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// The stop was seen: bytes flow until the tunnel's delay passes.
    Delaying,
    /// Close frames are on their way (at most [`DRAIN_LIMIT`]).
    Closing,
}

/// The tunnel's loop: the pump against its timers. No arm waits inside
/// itself, so bytes flow whatever the clocks do.
async fn run<C, V>(mut pump: Pump<C, V>, idle_timeout: Duration, mut stop: TunnelStop) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    V: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::time::{sleep, sleep_until, Instant};
    let idle = sleep(idle_timeout);
    let timer = sleep_until(Instant::now() + Duration::from_secs(86_400 * 365));
    tokio::pin!(idle, timer);
    let mut phase = Phase::Open;
    loop {
        tokio::select! {
            r = pump.step() => match r? {
                Step::Moved => idle.as_mut().reset(Instant::now() + idle_timeout),
                Step::Ended => break,
            },
            _ = stop.shutdown.recv(), if phase == Phase::Open => {
                phase = Phase::Delaying;
                timer.as_mut().reset(Instant::now() + stop.delay);
            }
            _ = &mut timer, if phase != Phase::Open => {
                if phase == Phase::Closing {
                    break;
                }
                phase = Phase::Closing;
                pump.close_with(close_code(), mask_key());
                timer.as_mut().reset(Instant::now() + DRAIN_LIMIT);
            }
            _ = &mut idle => break,
        }
    }
    Ok(pump.carried())
}

/// Duplicates an accepted client socket so the tunnel owns a handle of its
/// own (registered with this thread's reactor).
pub fn client_socket(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<TcpStream> {
    let std_stream = std::net::TcpStream::from(fd.try_clone_to_owned()?);
    std_stream.set_nonblocking(true)?;
    TcpStream::from_std(std_stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// During the stop's delay the tunnel still carries bytes both ways;
    /// only after it do the close frames go out.
    #[tokio::test(start_paused = true)]
    async fn bytes_flow_during_the_stop_delay_then_both_sides_get_a_close() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (vm, mut vm_peer) = tokio::io::duplex(1024);
        let stopper = crate::shutdown::Stopper::default();
        let stop = TunnelStop {
            shutdown: stopper.handle(),
            delay: Duration::from_secs(8),
        };
        let pump = Pump::new(client, vm, b"", b"", 0);
        let task = tokio::spawn(run(pump, Duration::from_secs(3600), stop));
        stopper.stop();
        tokio::time::sleep(Duration::from_secs(4)).await;
        // Mid-delay: an echo round trip still works.
        client_peer
            .write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
            .await
            .unwrap();
        let mut up = [0u8; 8];
        vm_peer.read_exact(&mut up).await.unwrap();
        vm_peer.write_all(&[0x81, 2, b'h', b'i']).await.unwrap();
        let mut down = [0u8; 4];
        client_peer.read_exact(&mut down).await.unwrap();
        assert_eq!(down, [0x81, 2, b'h', b'i']);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut close = [0u8; 4];
        client_peer.read_exact(&mut close).await.unwrap();
        assert_eq!(close, crate::ws_frames::close_frame_to_client(1001));
        let mut to_vm = [0u8; 8];
        vm_peer.read_exact(&mut to_vm).await.unwrap();
        assert_eq!(&to_vm[..2], &[0x88, 0x82]);
        let carried = task.await.unwrap().unwrap();
        assert_eq!(carried, (8, 4));
    }
}
