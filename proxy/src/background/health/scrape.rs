//! `[health] source = "scrape"`: the edge reads each VM's `/metrics`
//! (Prometheus text format, parsed with the `prometheus-parse` crate).
//!
//! Where it sits: [`super::Monitor`] calls [`round`] every
//! `scrape_interval` with the region's monitored VMs. At most
//! `scrape_concurrency` scrapes run at once, each bounded by
//! `scrape_timeout` for connect, request and body together, and bodies are
//! capped at [`MAX_BODY_BYTES`]. Every failure is an [`Outcome::Err`] with a
//! short reason (`connect`, `timeout`, `status`, `body`, `parse`,
//! `missing`, `invalid`) that becomes a metric label; it never panics.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Target;
use crate::balancer::usability::{Outcome, Reading, ScrapeError};

/// Largest `/metrics` body read (a conman VM's is a few KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Scrapes every target; answers in no particular order.
pub async fn round(targets: &[Target], timeout: Duration, concurrency: usize, now_ms: u64) -> Vec<(u64, Outcome)> {
    futures_util::stream::iter(targets.iter().map(|t| async move {
        let o = match tokio::time::timeout(timeout, scrape_one(t.metrics_addr, now_ms)).await {
            Ok(Ok(r)) => Outcome::Ok(r),
            Ok(Err(reason)) => Outcome::Err(reason),
            Err(_) => Outcome::Err(ScrapeError::Timeout),
        };
        (t.id_hash, o)
    }))
    .buffer_unordered(concurrency.max(1))
    .collect()
    .await
}

async fn scrape_one(addr: SocketAddr, now_ms: u64) -> Result<Reading, ScrapeError> {
    let body = http_get(addr, "/metrics").await?;
    let text = std::str::from_utf8(&body).map_err(|_| ScrapeError::Parse)?;
    parse_exposition(text, now_ms)
}

/// One HTTP/1.1 GET on a fresh connection; the body, capped. Shared with
/// the Prometheus source.
pub async fn http_get(addr: SocketAddr, path_and_query: &str) -> Result<Bytes, ScrapeError> {
    let stream = TcpStream::connect(addr).await.map_err(|_| ScrapeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ScrapeError::Connect)?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path_and_query)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "edgeplane-health")
        .body(Empty::<Bytes>::new())
        .map_err(|_| ScrapeError::Invalid)?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|_| ScrapeError::Status)?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status);
        }
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|_| ScrapeError::Body)?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    result
}

/// Reads `conman_containers` (required), `conman_cpu_utilization`,
/// `conman_ready` (default 0.0 and ready) and `conman_units_reserved`
/// (optional: the container count stands in) from a text exposition.
pub fn parse_exposition(text: &str, now_ms: u64) -> Result<Reading, ScrapeError> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).map_err(|_| ScrapeError::Parse)?;
    let value = |name: &str| {
        scrape.samples.iter().find(|s| s.metric == name).map(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
    };
    let containers = value("conman_containers")
        .ok_or(ScrapeError::Missing)?
        .ok_or(ScrapeError::Invalid)?;
    let cpu = value("conman_cpu_utilization")
        .unwrap_or(Some(0.0))
        .ok_or(ScrapeError::Invalid)?;
    let ready = value("conman_ready").unwrap_or(Some(1.0)).ok_or(ScrapeError::Invalid)?;
    let units = match value("conman_units_reserved") {
        None => None,
        Some(v) => Some(v.ok_or(ScrapeError::Invalid)?),
    };
    reading(containers, units, cpu, ready, now_ms)
}

/// Checks the values and builds a reading.
pub fn reading(
    containers: f64,
    units: Option<f64>,
    cpu: f64,
    ready: f64,
    sampled_at_ms: u64,
) -> Result<Reading, ScrapeError> {
    let count = |v: f64| (0.0..=1e7).contains(&v);
    let sane = cpu.is_finite() && ready.is_finite() && count(containers) && units.is_none_or(count);
    if !sane {
        return Err(ScrapeError::Invalid);
    }
    Ok(Reading {
        containers: containers as u32,
        units: units.map(|u| u as u32),
        cpu: cpu.clamp(0.0, 1.0) as f32,
        ready: ready >= 0.5,
        sampled_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_conman_exposition() {
        let text = "# HELP conman_containers Containers.\n# TYPE conman_containers gauge\nconman_containers 17\n\
# TYPE conman_cpu_utilization gauge\nconman_cpu_utilization 0.25\nconman_ready 0\nother_total{a=\"b\"} 3\n";
        let r = parse_exposition(text, 99).unwrap();
        assert_eq!(
            r,
            Reading {
                containers: 17,
                units: None,
                cpu: 0.25,
                ready: false,
                sampled_at_ms: 99
            }
        );
        let r = parse_exposition("conman_containers 3\n", 1).unwrap();
        assert!(r.ready && r.cpu == 0.0, "cpu and ready default");
        let r = parse_exposition("conman_containers 3\nconman_units_reserved 40\n", 1).unwrap();
        assert_eq!(r.units, Some(40));
        assert_eq!(
            parse_exposition("conman_containers 3\nconman_units_reserved -1\n", 1),
            Err(ScrapeError::Invalid)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_zero() {
        assert_eq!(parse_exposition("<html>oops</html>", 1), Err(ScrapeError::Missing));
        assert_eq!(parse_exposition("", 1), Err(ScrapeError::Missing));
        assert_eq!(
            parse_exposition("conman_containers NaN\n", 1),
            Err(ScrapeError::Invalid)
        );
        assert_eq!(parse_exposition("conman_containers -4\n", 1), Err(ScrapeError::Invalid));
    }
}
