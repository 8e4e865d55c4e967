//! The responder's listeners and its process life, in the edge's way
//! (docs/contract.md §9 "Process life"):
//! - **SIGTERM**: stop receiving and accepting at once, let every TCP
//!   client get the answer to the query it is in (an idle one is closed),
//!   for at most `edge.grace_period_ms`; write the newest table to the
//!   last-known-good file; exit 0. A UDP answer is one datagram: nothing
//!   of it to drain.
//! - **SIGINT**: exit at once (as the edge's fast stop).
//! - **SIGHUP**: the responder reads its config only at start, so a reload
//!   changes nothing; it says so (WARN) and keeps answering instead of
//!   dying of the signal's default action.
//! - **SIGQUIT**: there is no binary upgrade for the responder; it says so
//!   and keeps answering (restart it: resolvers retry).
//!
//! Every loop holds one [`Shutdown`] handle from one [`Stopper`]. Start at
//! [`run`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

use edgeplane_config::Config;

use super::{DnsError, Responder, TCP_IDLE, UDP_PLAIN_MAX};
use crate::shutdown::{Shutdown, Stopper};

/// Pause after a failed receive or accept (a persistent error, such as
/// running out of descriptors, must not spin or flood the log).
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Binds every `[dns] listen` address, serves until a stop signal, and
/// stops as the module docs say.
pub(super) async fn run(
    cfg: &Config,
    responder: Arc<Responder>,
    sync: Arc<edgeplane_control_sync::SyncStatus>,
) -> Result<(), DnsError> {
    let stopper = Stopper::default();
    let mut tasks = JoinSet::new();
    for &want in &cfg.dns.listen {
        let (udp, tcp) = bind_pair(want).await?;
        let addr = udp.local_addr().map_err(|err| DnsError::Listen { addr: want, err })?;
        println!("edgeplane: dns listening on udp {addr} tcp {addr}");
        tasks.spawn(serve_udp(udp, responder.clone(), stopper.handle()));
        tasks.spawn(serve_tcp(tcp, responder.clone(), stopper.handle()));
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut term = signal(SignalKind::terminate()).map_err(DnsError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DnsError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DnsError::Runtime)?;
    let mut quit = signal(SignalKind::quit()).map_err(DnsError::Runtime)?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => {
                log::info!("dns: SIGINT: exiting now");
                std::process::exit(0);
            }
            _ = hup.recv() => log::warn!(
                "dns: SIGHUP: the responder reads its config only at start; restart it to apply a change \
                 (still answering with the config it started with)"
            ),
            _ = quit.recv() => log::warn!(
                "dns: SIGQUIT: the responder has no binary upgrade; restart it instead (still answering)"
            ),
        }
    }
    let grace = cfg.edge.grace_period;
    log::info!("dns: SIGTERM: no longer answering new queries; finishing TCP queries (up to {grace:?})");
    stopper.stop();
    let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log::warn!("dns: TCP clients still open after {grace:?}; closing them");
    }
    let flushed =
        tokio::task::spawn_blocking(move || sync.flush_last_known_good(crate::placement::STOP_FLUSH_LIMIT)).await;
    if let Err(e) = flushed {
        log::error!("dns: last-known-good flush on stop failed: {e}");
    }
    log::info!("dns: stopped");
    Ok(())
}

async fn serve_udp(sock: tokio::net::UdpSocket, r: Arc<Responder>, mut stop: Shutdown) {
    let mut buf = vec![0u8; 4096];
    loop {
        let received = tokio::select! {
            _ = stop.recv() => return,
            received = sock.recv_from(&mut buf) => received,
        };
        let (n, peer) = match received {
            Ok(x) => x,
            Err(e) => {
                log::warn!("dns: udp receive: {e}");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        if let Some(out) = r.handle(&buf[..n], Some(UDP_PLAIN_MAX)) {
            let _ = sock.send_to(&out, peer).await;
        }
    }
}

/// One TCP client: length-prefixed queries until it goes idle, leaves, or
/// the stop begins while it is between queries.
async fn serve_tcp_conn(mut s: tokio::net::TcpStream, r: Arc<Responder>, mut stop: Shutdown) {
    loop {
        let mut len = [0u8; 2];
        tokio::select! {
            _ = stop.recv() => return,
            read = tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)) => match read {
                Ok(Ok(_)) => {}
                _ => return,
            },
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(out) = r.handle(&msg, None) else {
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Accepts until the stop, then waits for its clients' current queries.
async fn serve_tcp(l: tokio::net::TcpListener, r: Arc<Responder>, mut stop: Shutdown) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.recv() => break,
            accepted = l.accept() => accepted,
            // Reap finished clients so the set stays the size of the open ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match accepted {
            Ok((s, _)) => {
                conns.spawn(serve_tcp_conn(s, r.clone(), stop.clone()));
            }
            Err(e) => {
                log::warn!("dns: tcp accept: {e}");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    drop(l);
    while conns.join_next().await.is_some() {}
}

/// Binds UDP and TCP on the same address; for port 0, retries until the
/// port the OS gave UDP is free for TCP too.
async fn bind_pair(want: SocketAddr) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), DnsError> {
    let mut last = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind(want)
            .await
            .map_err(|err| DnsError::Listen { addr: want, err })?;
        let addr = udp.local_addr().map_err(|err| DnsError::Listen { addr: want, err })?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(err) if want.port() == 0 => last = Some(err),
            Err(err) => return Err(DnsError::Listen { addr, err }),
        }
    }
    Err(DnsError::Listen {
        addr: want,
        err: last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")),
    })
}
