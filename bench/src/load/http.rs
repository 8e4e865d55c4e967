//! HTTP/1.1 keep-alive load: `connections` sockets, each with one request in
//! flight, cycling over a list of Host names.
//!
//! Closed loop (`rate = None`): the next request leaves when the answer
//! arrives — a saturation run. Open loop (`rate = Some(r)`): connection `i`
//! sends on a fixed schedule of `r / connections` per second, staggered;
//! latency is measured from the actual send, or from the scheduled time when
//! the previous answer came back after it (the request was held back by the
//! server: that wait counts). Runs on the caller's runtime (the CLI uses a
//! current-thread runtime so it stays on its pinned core).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{micros, Percentiles};
use crate::http1::read_response;

/// What to run.
#[derive(Debug, Clone)]
pub struct HttpLoadOptions {
    pub target: SocketAddr,
    pub hosts: Vec<String>,
    pub path: String,
    pub connections: usize,
    /// Offered requests per second in total; `None` = closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Sent but not recorded, before `duration` starts.
    pub warmup: Duration,
}

/// What happened, after warm-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HttpLoadResult {
    /// Answered after warm-up (what the latency figures describe).
    pub requests: u64,
    /// Answered in all, warm-up included (what the proxy's CPU time covers).
    pub answered_total: u64,
    pub errors: u64,
    pub non_2xx: u64,
    pub seconds: f64,
    pub rps: f64,
    pub offered_rps: Option<f64>,
    pub latency: Percentiles,
}

struct ConnOutcome {
    samples: Vec<u32>,
    warmup_answered: u64,
    errors: u64,
    non_2xx: u64,
}

fn request_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgeplane-bench\r\n\r\n").into_bytes()
}

async fn connection(
    progress: Arc<super::Progress>,
    o: Arc<HttpLoadOptions>,
    reqs: Arc<Vec<Vec<u8>>>,
    idx: usize,
    t0: Instant,
    record_from: Instant,
    end: Instant,
) -> ConnOutcome {
    let mut out = ConnOutcome {
        samples: Vec::with_capacity(64 * 1024),
        warmup_answered: 0,
        errors: 0,
        non_2xx: 0,
    };
    let interval = o.rate.map(|r| Duration::from_secs_f64(o.connections as f64 / r));
    let mut next = t0
        + interval
            .map(|i| i.mul_f64(idx as f64 / o.connections as f64))
            .unwrap_or_default();
    let mut prev_done = t0;
    let mut k = idx;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut conn: Option<TcpStream> = None;
    loop {
        if let Some(i) = interval {
            if next > Instant::now() {
                tokio::time::sleep_until(next).await;
            }
            next += i;
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        if conn.is_none() {
            match TcpStream::connect(o.target).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                }
                Err(_) => {
                    out.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = conn.as_mut().unwrap();
        let req = &reqs[k % reqs.len()];
        k += o.connections;
        let status = match s.write_all(req).await {
            Ok(()) => read_response(s, &mut buf).await.ok(),
            Err(_) => None,
        };
        let done = Instant::now();
        let scheduled = next - interval.unwrap_or_default();
        let from = if interval.is_some() && prev_done > scheduled {
            scheduled
        } else {
            sent
        };
        prev_done = done;
        match status {
            Some(_) => progress.answer(),
            None => progress.error(),
        }
        if sent < record_from {
            match status {
                Some(_) => out.warmup_answered += 1,
                None => conn = None,
            }
            continue;
        }
        match status {
            Some(st) => {
                out.samples.push(micros(done - from));
                if !(200..300).contains(&st) {
                    out.non_2xx += 1;
                }
            }
            None => {
                out.errors += 1;
                conn = None;
            }
        }
    }
    out
}

/// Runs the load and summarises it.
pub async fn run(o: HttpLoadOptions) -> HttpLoadResult {
    assert!(!o.hosts.is_empty() && o.connections > 0);
    let reqs: Arc<Vec<Vec<u8>>> = Arc::new(o.hosts.iter().map(|h| request_bytes(h, &o.path)).collect());
    let t0 = Instant::now();
    let record_from = t0 + o.warmup;
    let end = record_from + o.duration;
    let progress = Arc::new(super::Progress::default());
    let ticker = super::report_progress("http-load", end - t0, progress.clone());
    let o = Arc::new(o);
    let tasks: Vec<_> = (0..o.connections)
        .map(|i| {
            tokio::spawn(connection(
                progress.clone(),
                o.clone(),
                reqs.clone(),
                i,
                t0,
                record_from,
                end,
            ))
        })
        .collect();
    let mut samples = Vec::new();
    let (mut errors, mut non_2xx, mut warm) = (0, 0, 0);
    for t in tasks {
        if let Ok(c) = t.await {
            warm += c.warmup_answered;
            samples.extend(c.samples);
            errors += c.errors;
            non_2xx += c.non_2xx;
        }
    }
    ticker.abort();
    let seconds = o.duration.as_secs_f64();
    HttpLoadResult {
        requests: samples.len() as u64,
        answered_total: samples.len() as u64 + warm,
        errors,
        non_2xx,
        seconds,
        rps: samples.len() as f64 / seconds,
        offered_rps: o.rate,
        latency: Percentiles::of(&mut samples),
    }
}
