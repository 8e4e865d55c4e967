//! Request load over TLS with h2load (Debian's nghttp2-client): HTTP/2 with
//! N connections × M concurrent streams, or HTTP/1.1 over TLS (`--h1`, one
//! request in flight per connection), keep-alive, for a duration. The
//! same binary drives every peer, so the client's cost is the same for all.
//! h2load sends every request to the first URI's authority: the TLS stages
//! use one app (one Host), not the plain stages' host list.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CompareError;

/// Which protocol a TLS request run spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsHttp {
    /// HTTP/2 (ALPN h2), several streams per connection.
    H2,
    /// HTTP/1.1 over TLS (ALPN http/1.1).
    H1,
}

impl TlsHttp {
    pub fn label(self) -> &'static str {
        match self {
            TlsHttp::H2 => "HTTP/2 over TLS",
            TlsHttp::H1 => "HTTP/1.1 over TLS",
        }
    }
}

/// What h2load reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct H2loadResult {
    /// Requests done (answered), what the proxy's CPU is divided by.
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub status_2xx: u64,
    pub rps: f64,
    /// The protocol ALPN settled on ("h2", "http/1.1").
    pub protocol: String,
}

/// Parses h2load's summary.
pub fn parse(out: &str) -> Result<H2loadResult, CompareError> {
    let mut r = H2loadResult::default();
    let count = |rest: &[&str], what: &str| -> u64 {
        rest.windows(2)
            .find(|w| w[1].trim_end_matches(',') == what)
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(0)
    };
    for line in out.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["finished", "in", _, rps, "req/s,", ..] => r.rps = rps.parse().unwrap_or(0.0),
            ["requests:", rest @ ..] => {
                r.done = count(rest, "done");
                r.succeeded = count(rest, "succeeded");
                r.failed = count(rest, "failed");
                r.errored = count(rest, "errored");
            }
            ["status", "codes:", rest @ ..] => r.status_2xx = count(rest, "2xx"),
            ["Application", "protocol:", p] => r.protocol = p.to_string(),
            _ => {}
        }
    }
    if r.done == 0 {
        return Err(CompareError::Load(format!("h2load served no requests:\n{out}")));
    }
    Ok(r)
}

/// Runs h2load pinned to `core` against `addr` (TLS), naming `host` (SNI,
/// `:authority` / Host).
pub fn run(
    core: &str,
    addr: SocketAddr,
    host: &str,
    proto: TlsHttp,
    connections: usize,
    duration: Duration,
) -> Result<H2loadResult, CompareError> {
    let h2load = super::peers::find_program("h2load").ok_or(CompareError::Tools("h2load".into()))?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", core]).arg(h2load);
    match proto {
        TlsHttp::H2 => cmd.args(["-m", "10"]),
        TlsHttp::H1 => cmd.args(["--h1", "-m", "1"]),
    };
    let secs = duration.as_secs().max(1);
    cmd.arg(format!("-c{connections}"))
        .arg(format!("-D{secs}"))
        .arg("--connect-to")
        .arg(addr.to_string())
        .arg(format!("https://{host}:{}/", addr.port()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn()?;
    // h2load's timed mode can keep one client going past the duration
    // (one that reconnected after a server's close): a run that has not
    // ended well after it is killed and counts as failed, not waited on.
    let pid = child.id();
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if ended.recv_timeout(Duration::from_secs(secs + 30)).is_err() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output();
    let _ = done.send(());
    let _ = watchdog.join();
    let out = out?;
    if !out.status.success() {
        return Err(CompareError::Load(format!(
            "h2load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_output_parses() {
        let out = "starting benchmark...\nTLS Protocol: TLSv1.3\nCipher: TLS_AES_128_GCM_SHA256\n\
Server Temp Key: X25519 253 bits\nApplication protocol: h2\n\n\
finished in 5.00s, 16111.20 req/s, 1.23MB/s\n\
requests: 80556 total, 80620 started, 80556 done, 80550 succeeded, 6 failed, 2 errored, 0 timeout\n\
status codes: 80550 2xx, 0 3xx, 0 4xx, 6 5xx\n";
        let r = parse(out).unwrap();
        assert_eq!(r.done, 80556);
        assert_eq!(r.succeeded, 80550);
        assert_eq!(r.failed, 6);
        assert_eq!(r.errored, 2);
        assert_eq!(r.status_2xx, 80550);
        assert_eq!(r.protocol, "h2");
        assert!((r.rps - 16111.2).abs() < 1e-6);
        assert!(parse("requests: 0 total, 0 started, 0 done, 0 succeeded").is_err());
    }
}
