//! A third-party request smuggling scanner against the edge: smugglex
//! (crates.io, pinned by scripts/setup.sh) runs every check it has —
//! CL.TE, TE.CL, TE.TE with its obfuscated Transfer-Encoding variants, h2c,
//! H2, CL edge cases, the stateful CL.0 and 0.CL response-queue probes and
//! its parser-discrepancy comparison — on the plain listener, and with the
//! real HTTP/2 downgrade checks on the TLS listener. It must report
//! nothing, and every check must have reached the edge (a scan that could
//! not connect would find nothing too).
//!
//! Its `--fuzz` mutations are left out: two of them declare
//! `Content-Length: 1` and send no body, which a compliant server answers
//! by waiting for the byte (nginx and HAProxy too); the scanner reads the
//! wait as a timing signal (docs/reliability.md, "Third-party scanner").

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;
use crate::{dead_addr, world};

fn smugglex() -> PathBuf {
    setup_tool("tools/bin/smugglex", "smugglex")
}

/// Every check smugglex 0.4.0 has, opt-in ones included.
const CHECKS: &str = "cl-te,te-cl,te-te,h2c,h2,cl-edge,cl-0,0-cl,parser-discrepancy";

/// Runs the scan of `url` with `extra` flags; returns the JSON report.
fn scan(url: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(smugglex())
        .args([url, "--vhost", "app1.repl.co", "--json", "-t", "3", "--no-color"])
        .args(["-o", &report.display().to_string()])
        .args(extra)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(&text).unwrap()
}

/// Nothing found, and each of `checks` ran against a live edge.
fn assert_clean(report: &serde_json::Value, checks: &[&str]) -> usize {
    let summary = &report["summary"];
    assert_eq!(summary["vulnerable_checks"], 0, "{report:#}");
    let ran = report["results"][0]["checks"].as_array().expect("checks").clone();
    for want in checks {
        let c = ran
            .iter()
            .find(|c| c["check_type"] == *want)
            .unwrap_or_else(|| panic!("check {want} did not run: {report:#}"));
        assert_eq!(c["vulnerable"], false, "{c:#}");
        let normal = c["normal_status"].as_str().unwrap_or_default();
        assert!(
            normal.starts_with("HTTP/1.1 200") || normal.starts_with("HTTP/2 200"),
            "{want} never reached the app: {c:#}"
        );
    }
    ran.len()
}

#[tokio::test]
async fn a_third_party_smuggling_scanner_finds_nothing() {
    let _alone = CPU_HEAVY.lock().await;
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    // The scanner sends the URL's host as SNI: `localhost` gets a
    // certificate of its own, and `--vhost` routes the requests.
    let dir = tempfile::tempdir().unwrap();
    write_repl_co_cert(dir.path());
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("certs/localhost.crt"), c.cert.pem()).unwrap();
    std::fs::write(dir.path().join("certs/localhost.key"), c.key_pair.serialize_pem()).unwrap();
    let opts = EdgeOpts {
        tls: Some(TLS_SECTION),
        ..Default::default()
    };
    let edge = Edge::start_opts(dir, "us-east1", &snap, &opts).await;
    let plain = scan(&format!("http://{}/", edge.proxy), &["-c", CHECKS]);
    let checks: Vec<&str> = CHECKS.split(',').collect();
    assert_eq!(assert_clean(&plain, &checks), checks.len());
    // The hostile payloads did reach the edge: it refused them itself
    // (malformed heads are counted as client errors, not as requests).
    let m = edge.metrics().await;
    let refused = metric_with(&m, "edgeplane_log_events_total", &["event=\"client_error\""]).unwrap_or(0.0);
    assert!(refused >= 10.0, "only {refused} requests refused as malformed:\n{m}");
    // Over TLS, with the HTTP/2 downgrade checks (real HTTP/2 by ALPN).
    let tls = scan(
        &format!("https://localhost:{}/", edge.https.unwrap().port()),
        &["-c", &format!("{CHECKS},h2-downgrade"), "-k"],
    );
    let mut with_h2: Vec<&str> = checks.clone();
    with_h2.push("h2-downgrade");
    assert_clean(&tls, &with_h2);
}
