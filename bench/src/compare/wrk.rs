//! Saturation runs with wrk (Debian's wrk 4): one thread, N keep-alive
//! connections, a Lua script cycling over the Host list (every peer gets
//! the same script, so the load generator's own cost is the same for all).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::CompareError;
use crate::load::Percentiles;

/// What wrk reported.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub errors: u64,
    pub non_2xx: u64,
    pub latency: Percentiles,
}

/// Writes the Lua script that cycles over `hosts_file`.
pub fn write_script(path: &Path, hosts_file: &Path) -> Result<(), CompareError> {
    let script = format!(
        "local reqs = {{}}\nlocal n = 0\nlocal i = 0\n\
for line in io.lines(\"{}\") do\n  n = n + 1\n  reqs[n] = wrk.format(\"GET\", \"/\", {{[\"Host\"] = line, [\"User-Agent\"] = \"edgeplane-bench\"}})\nend\n\
request = function()\n  i = i % n + 1\n  return reqs[i]\nend\n",
        hosts_file.display()
    );
    std::fs::write(path, script)?;
    Ok(())
}

fn duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60e6)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// Parses wrk's `--latency` output.
pub fn parse(out: &str) -> Result<WrkResult, CompareError> {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => r.latency.p50_us = duration_us(v).unwrap_or(0.0),
            ["90%", v] => r.latency.p90_us = duration_us(v).unwrap_or(0.0),
            ["99%", v] => r.latency.p99_us = duration_us(v).unwrap_or(0.0),
            ["Latency", _avg, _stdev, max, ..] => r.latency.max_us = duration_us(max).unwrap_or(0.0),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                r.errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum()
            }
            _ => {}
        }
    }
    if r.requests == 0 {
        return Err(CompareError::Load(format!("wrk served no requests:\n{out}")));
    }
    Ok(r)
}

/// Runs wrk pinned to `core` against `addr`.
pub fn run(
    core: &str,
    addr: SocketAddr,
    script: &Path,
    connections: usize,
    duration: Duration,
) -> Result<WrkResult, CompareError> {
    let wrk = super::peers::find_program("wrk").ok_or(CompareError::Tools("wrk".into()))?;
    let out = Command::new("taskset")
        .args(["-c", core])
        .arg(wrk)
        .args(["-t1", "--latency", "--timeout", "5s"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}/"))
        .output()?;
    if !out.status.success() {
        return Err(CompareError::Load(format!(
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 10s test @ http://127.0.0.1:1/\n  1 threads and 64 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.41ms  310.00us  12.50ms   90.00%\n\
    Req/Sec    46.00k     1.00k   48.00k    70.00%\n  Latency Distribution\n     50%    1.30ms\n\
     75%    1.50ms\n     90%    1.80ms\n     99%    3.00ms\n  460123 requests in 10.00s, 50.00MB read\n\
  Socket errors: connect 0, read 2, write 1, timeout 0\n  Non-2xx or 3xx responses: 5\n\
Requests/sec:  46012.30\nTransfer/sec:      5.00MB\n";
        let r = parse(out).unwrap();
        assert_eq!(r.requests, 460123);
        assert_eq!(r.errors, 3);
        assert_eq!(r.non_2xx, 5);
        assert!((r.rps - 46012.3).abs() < 1e-6);
        assert_eq!(r.latency.p50_us, 1300.0);
        assert_eq!(r.latency.p99_us, 3000.0);
        assert_eq!(r.latency.max_us, 12500.0);
        assert!(parse("nothing").is_err());
    }
}
