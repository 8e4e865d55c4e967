//! WebSocket load through a proxy to an echo server.
//!
//! - [`echo`]: `connections` tunnels, each sending one binary message of
//!   `size` bytes and waiting for its echo, in a closed loop; round trips/s
//!   and latency percentiles.
//! - Either over plain TCP (`ws://`) or TLS (`wss://`, [`super::tls`]).
//! - [`open_idle`] + [`check_all`]: hold `n` tunnels open without traffic
//!   (the caller measures the proxy meanwhile), then send one message on
//!   every tunnel and count the ones that echo it back intact.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use tokio_util::either::Either;

use super::tls::BenchStream;
use super::{micros, Percentiles};
use crate::backend::small_ws_config;

/// One client end of a tunnel.
pub type Tunnel = WebSocketStream<BenchStream>;

/// Where tunnels go.
#[derive(Debug, Clone)]
pub struct WsTarget {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// `Some`: `wss://`, over TLS with this client config (ALPN http/1.1).
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// Opens one tunnel (TCP connect + upgrade), with a deadline.
pub async fn connect(t: &WsTarget) -> Result<Tunnel, String> {
    let fut = async {
        let s: BenchStream = match &t.tls {
            Some(cfg) => Either::Right(super::tls::connect(t.addr, &t.host, cfg).await?),
            None => {
                let s = TcpStream::connect(t.addr).await.map_err(|e| format!("connect: {e}"))?;
                let _ = s.set_nodelay(true);
                Either::Left(s)
            }
        };
        let scheme = if t.tls.is_some() { "wss" } else { "ws" };
        let mut req = format!("{scheme}://{}{}", t.host, t.path)
            .into_client_request()
            .map_err(|e| format!("request: {e}"))?;
        req.headers_mut()
            .insert("host", t.host.parse().map_err(|_| "bad host".to_string())?);
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, s, Some(small_ws_config()))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        if resp.status().as_u16() != 101 {
            return Err(format!("upgrade answered {}", resp.status()));
        }
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "upgrade timed out".to_string())?
}

/// Result of an echo run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WsEchoResult {
    pub connections: usize,
    pub size: usize,
    /// Round trips after warm-up (what the latency figures describe).
    pub round_trips: u64,
    /// Round trips in all, warm-up included (what the proxy's CPU covers).
    pub round_trips_total: u64,
    pub errors: u64,
    pub seconds: f64,
    pub round_trips_per_sec: f64,
    pub latency: Percentiles,
}

/// Sends one message and waits for the same bytes back.
async fn round_trip(ws: &mut Tunnel, payload: &[u8]) -> Result<(), String> {
    ws.send(Message::Binary(payload.to_vec().into()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) if b.as_ref() == payload => return Ok(()),
            Some(Ok(Message::Binary(_))) => return Err("echo differs".into()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Err(format!("unexpected {m:?}")),
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("closed".into()),
        }
    }
}

/// Closed-loop echo over `connections` tunnels for `warmup + duration`.
pub async fn echo(t: WsTarget, connections: usize, size: usize, warmup: Duration, duration: Duration) -> WsEchoResult {
    let t = Arc::new(t);
    let t0 = Instant::now();
    let (record_from, end) = (t0 + warmup, t0 + warmup + duration);
    let progress = Arc::new(super::Progress::default());
    let ticker = super::report_progress("ws-load", end - t0, progress.clone());
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let (t, progress) = (t.clone(), progress.clone());
            tokio::spawn(async move {
                let payload: Vec<u8> = (0..size).map(|b| (b + i) as u8).collect();
                let mut samples = Vec::with_capacity(16 * 1024);
                let mut errors = 0u64;
                let mut warm = 0u64;
                let mut ws = None;
                while Instant::now() < end {
                    if ws.is_none() {
                        match connect(&t).await {
                            Ok(w) => ws = Some(w),
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let sent = Instant::now();
                    let ok = round_trip(ws.as_mut().unwrap(), &payload).await.is_ok();
                    if ok {
                        progress.answer();
                    } else {
                        progress.error();
                    }
                    if sent < record_from {
                        if ok {
                            warm += 1;
                        } else {
                            ws = None;
                        }
                        continue;
                    }
                    if ok {
                        samples.push(micros(sent.elapsed()));
                    } else {
                        errors += 1;
                        ws = None;
                    }
                }
                if let Some(mut w) = ws {
                    let _ = w.close(None).await;
                }
                (samples, errors, warm)
            })
        })
        .collect();
    let mut all = Vec::new();
    let (mut errors, mut warm) = (0, 0);
    for task in tasks {
        if let Ok((s, e, w)) = task.await {
            all.extend(s);
            errors += e;
            warm += w;
        }
    }
    ticker.abort();
    let seconds = duration.as_secs_f64();
    WsEchoResult {
        connections,
        size,
        round_trips: all.len() as u64,
        round_trips_total: all.len() as u64 + warm,
        errors,
        seconds,
        round_trips_per_sec: all.len() as f64 / seconds,
        latency: Percentiles::of(&mut all),
    }
}

/// Opens `n` tunnels, `concurrency` upgrades at a time. Returns the open
/// ones and the number that failed.
pub async fn open_idle(t: &WsTarget, n: usize, concurrency: usize) -> (Vec<Tunnel>, usize) {
    let t = Arc::new(t.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (t, sem) = (t.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire().await;
                connect(&t).await
            })
        })
        .collect();
    let mut open = Vec::with_capacity(n);
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(ws)) => open.push(ws),
            _ => failed += 1,
        }
    }
    (open, failed)
}

/// Sends a distinct small message on every tunnel (`concurrency` at a time)
/// and counts the echoes that came back intact.
pub async fn check_all(tunnels: Vec<Tunnel>, concurrency: usize) -> (usize, usize, Vec<Tunnel>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = tunnels
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire().await;
                let payload = format!("tunnel-{i}").into_bytes();
                let ok = tokio::time::timeout(Duration::from_secs(10), round_trip(&mut ws, &payload))
                    .await
                    .is_ok_and(|r| r.is_ok());
                (ok, ws)
            })
        })
        .collect();
    let (mut ok, mut bad, mut back) = (0, 0, Vec::new());
    for task in tasks {
        match task.await {
            Ok((true, ws)) => {
                ok += 1;
                back.push(ws);
            }
            _ => bad += 1,
        }
    }
    (ok, bad, back)
}
