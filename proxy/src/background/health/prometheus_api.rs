//! `[health] source = "prometheus"`: one instant query to a Prometheus
//! server's HTTP API returns every VM's containers, CPU and readiness, plus
//! the time of each VM's last sample.
//!
//! Where it sits: [`super::Monitor`] calls [`round`] every
//! `scrape_interval`. A result series belongs to a VM when its `instance`
//! label is the VM's `metrics_addr` (Prometheus's default for a static
//! target) or its `vm` label is the VM id. A VM missing from the answer
//! (Prometheus marks series stale when its scrape fails) is an
//! `absent` error; a failed query is an error for every VM. Either way the
//! last sample is kept until `stale_after`.

use std::collections::HashMap;
use std::time::Duration;

use super::scrape::{http_get, reading};
use super::Target;
use crate::balancer::usability::{Outcome, ScrapeError};

/// The query: the four conman series, and the timestamp of each VM's
/// last `conman_containers` sample tagged `edgeplane_stat="sample_time"`
/// (a label set of its own, so `or` keeps it).
pub const QUERY: &str = "{__name__=~\"conman_containers|conman_cpu_utilization|conman_ready|conman_units_reserved\"} \
or label_replace(timestamp(conman_containers), \"edgeplane_stat\", \"sample_time\", \"\", \"\")";

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `http://host:port[/prefix]` -> (address, path prefix). Names are
/// resolved here, off the request path.
async fn endpoint(base: &str) -> Result<(std::net::SocketAddr, String), ScrapeError> {
    let rest = base.strip_prefix("http://").ok_or(ScrapeError::Invalid)?;
    let (hostport, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = tokio::net::lookup_host(hostport)
        .await
        .map_err(|_| ScrapeError::Connect)?
        .next()
        .ok_or(ScrapeError::Connect)?;
    Ok((addr, prefix))
}

/// Runs the query and maps the answer onto `targets`.
pub async fn round(base: &str, targets: &[Target], timeout: Duration, now_ms: u64) -> Vec<(u64, Outcome)> {
    let answer = tokio::time::timeout(timeout, async {
        let (addr, prefix) = endpoint(base).await?;
        let body = http_get(addr, &format!("{prefix}/api/v1/query?query={}", encode(QUERY))).await?;
        serde_json::from_slice::<serde_json::Value>(&body).map_err(|_| ScrapeError::Parse)
    })
    .await
    .unwrap_or(Err(ScrapeError::Timeout));
    match answer {
        Ok(json) => map_answer(&json, targets, now_ms),
        Err(reason) => targets.iter().map(|t| (t.id_hash, Outcome::Err(reason))).collect(),
    }
}

#[derive(Default)]
struct Values {
    containers: Option<f64>,
    units: Option<f64>,
    cpu: Option<f64>,
    ready: Option<f64>,
    sample_time: Option<f64>,
}

/// Maps a `/api/v1/query` JSON answer onto the targets.
pub fn map_answer(json: &serde_json::Value, targets: &[Target], now_ms: u64) -> Vec<(u64, Outcome)> {
    let result = match (json["status"].as_str(), json["data"]["result"].as_array()) {
        (Some("success"), Some(r)) => r,
        _ => {
            return targets
                .iter()
                .map(|t| (t.id_hash, Outcome::Err(ScrapeError::Status)))
                .collect()
        }
    };
    let by_instance: HashMap<String, usize> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.metrics_addr.to_string(), i))
        .collect();
    let by_id: HashMap<&str, usize> = targets.iter().enumerate().map(|(i, t)| (t.id.as_ref(), i)).collect();
    let mut values: Vec<Values> = targets.iter().map(|_| Values::default()).collect();
    for series in result {
        let m = &series["metric"];
        let Some(i) = m["instance"]
            .as_str()
            .and_then(|s| by_instance.get(s))
            .or_else(|| m["vm"].as_str().and_then(|s| by_id.get(s)))
        else {
            continue;
        };
        let Some(v) = series["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()) else {
            continue;
        };
        let slot = &mut values[*i];
        match (m["__name__"].as_str(), m["edgeplane_stat"].as_str()) {
            (_, Some("sample_time")) => slot.sample_time = Some(v),
            (Some("conman_containers"), _) => slot.containers = Some(v),
            (Some("conman_units_reserved"), _) => slot.units = Some(v),
            (Some("conman_cpu_utilization"), _) => slot.cpu = Some(v),
            (Some("conman_ready"), _) => slot.ready = Some(v),
            _ => {}
        }
    }
    targets
        .iter()
        .zip(values)
        .map(|(t, v)| {
            let o = match v.containers {
                None => Outcome::Err(ScrapeError::Absent),
                Some(c) => {
                    let at = v
                        .sample_time
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .map(|s| ((s * 1000.0) as u64).min(now_ms))
                        .unwrap_or(now_ms);
                    match reading(c, v.units, v.cpu.unwrap_or(0.0), v.ready.unwrap_or(1.0), at) {
                        Ok(r) => Outcome::Ok(r),
                        Err(e) => Outcome::Err(e),
                    }
                }
            };
            (t.id_hash, o)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::usability::Reading;

    #[test]
    fn maps_series_by_instance_or_vm_label() {
        let targets = vec![
            Target {
                id_hash: 1,
                id: "vm-1".into(),
                metrics_addr: "127.0.0.1:7101".parse().unwrap(),
            },
            Target {
                id_hash: 2,
                id: "vm-2".into(),
                metrics_addr: "127.0.0.1:7102".parse().unwrap(),
            },
            Target {
                id_hash: 3,
                id: "vm-3".into(),
                metrics_addr: "127.0.0.1:7103".parse().unwrap(),
            },
        ];
        let json = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "conman_containers", "instance": "127.0.0.1:7101", "job": "vms"}, "value": [1700000000.5, "12"]},
            {"metric": {"__name__": "conman_cpu_utilization", "instance": "127.0.0.1:7101"}, "value": [1700000000.5, "0.5"]},
            {"metric": {"__name__": "conman_ready", "instance": "127.0.0.1:7101"}, "value": [1700000000.5, "1"]},
            {"metric": {"__name__": "conman_units_reserved", "instance": "127.0.0.1:7101"}, "value": [1700000000.5, "30"]},
            {"metric": {"instance": "127.0.0.1:7101", "edgeplane_stat": "sample_time"}, "value": [1700000000.5, "1699999998.25"]},
            {"metric": {"__name__": "conman_containers", "instance": "other:1", "vm": "vm-2"}, "value": [1700000000.5, "4"]},
            {"metric": {"__name__": "conman_containers", "instance": "10.0.0.9:1"}, "value": [1700000000.5, "99"]}
        ]}});
        let out = map_answer(&json, &targets, 1_700_000_000_500);
        assert_eq!(
            out[0].1,
            Outcome::Ok(Reading {
                containers: 12,
                units: Some(30),
                cpu: 0.5,
                ready: true,
                sampled_at_ms: 1_699_999_998_250
            })
        );
        assert!(matches!(out[1].1, Outcome::Ok(Reading { containers: 4, .. })));
        assert_eq!(out[2].1, Outcome::Err(ScrapeError::Absent));
        let bad = serde_json::json!({"status": "error", "error": "boom"});
        assert!(map_answer(&bad, &targets, 0)
            .iter()
            .all(|(_, o)| *o == Outcome::Err(ScrapeError::Status)));
    }

    #[test]
    fn encodes_the_query() {
        assert_eq!(encode("a b{\"x\"}"), "a%20b%7B%22x%22%7D");
    }
}
