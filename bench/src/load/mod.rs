//! Load generators of our own, each a subcommand of `edgeplane-bench` that
//! prints one JSON result line, so the comparison harness can run them as
//! processes pinned to the load core:
//!
//! - [`http`]: keep-alive HTTP/1.1 over raw sockets, closed-loop (as fast as
//!   answers come) or open-loop at a fixed offered rate, with latency counted
//!   from the scheduled send time whenever a late answer held the next
//!   request back (no coordinated omission).
//! - [`ws`]: WebSocket echo round trips (tokio-tungstenite) at N connections
//!   and a message size, and an idle-capacity mode that holds N tunnels,
//!   waits to be measured, then checks that every one still echoes.
//! - [`tls`]: the TLS client side (wss tunnels ride on it) and new-connection
//!   handshakes, full or resumed.
//!
//! HTTP/2 and HTTP/1.1-over-TLS request load is h2load's (the comparison
//! runs it like wrk). Latencies are kept as raw microsecond samples and summarised by
//! [`Percentiles::of`]. Start at [`http::run`].

pub mod http;
pub mod tls;
pub mod ws;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Counts a run's answers and errors as they happen, for [`report_progress`].
#[derive(Debug, Default)]
pub struct Progress {
    pub answered: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    #[inline]
    pub fn answer(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints `NAME: 3.0/12.0 s, 45210 answered (15070/s), 0 errors` on stderr
/// every second until `total` has passed (the result line goes to stdout).
pub fn report_progress(name: &'static str, total: Duration, p: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while t0.elapsed() < total {
            tick.tick().await;
            let n = p.answered.load(Ordering::Relaxed);
            eprintln!(
                "{name}: {:.1}/{:.1} s, {n} answered ({}/s), {} errors",
                t0.elapsed().as_secs_f64().min(total.as_secs_f64()),
                total.as_secs_f64(),
                n - last,
                p.errors.load(Ordering::Relaxed)
            );
            last = n;
        }
    })
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// Summarises samples (sorted in place).
    pub fn of(samples: &mut [u32]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize] as f64;
        Percentiles {
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: *samples.last().unwrap() as f64,
        }
    }
}

/// Microseconds in a `u32`, saturating (71 minutes).
fn micros(d: std::time::Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<u32> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50_us, p.p99_us, p.max_us), (501.0, 990.0, 1000.0));
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }
}
