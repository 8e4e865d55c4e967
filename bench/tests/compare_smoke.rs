//! The comparison harness in smoke mode: seconds, every peer, no timing
//! assertions. Proves that `edgeplane-bench compare` still starts the
//! backend and all seven peers, drives wrk, the open-loop generator, the
//! WebSocket echo and idle-tunnel generators through each, then the TLS
//! stages (h2load over HTTP/2 and HTTP/1.1, new TLS connections full and
//! resumed, wss echo and idle wss tunnels) through every proxy, and writes
//! its results — so the harness cannot rot between full runs.

use std::process::Command;

#[test]
fn compare_smoke_runs_every_peer_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_edgeplane-bench"))
        .args(["compare", "--smoke", "--out"])
        .arg(out.path())
        .output()
        .expect("run edgeplane-bench compare");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare --smoke failed:\n{stderr}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("compare.json")).unwrap()).unwrap();
    let peers = [
        "direct",
        "edgeplane",
        "edgeplane-shipped",
        "pingora",
        "nginx",
        "haproxy",
        "caddy",
    ];
    for peer in peers {
        let http: Vec<_> = json["http"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["peer"] == peer)
            .collect();
        assert_eq!(http.len(), 1, "{peer}: one smoke round");
        let h = http[0];
        assert!(h["saturation"]["requests"].as_u64().unwrap() > 0, "{peer}: {h}");
        assert_eq!(h["saturation"]["non_2xx"], 0, "{peer}: every answer a 200: {h}");
        assert_eq!(h["saturation"]["errors"], 0, "{peer}: {h}");
        assert!(h["fixed"]["requests"].as_u64().unwrap() > 0, "{peer}: {h}");
        assert_eq!(h["fixed"]["errors"], 0, "{peer}: {h}");
        assert_eq!(h["fixed"]["non_2xx"], 0, "{peer}: {h}");
        if peer == "direct" {
            assert!(h["saturation_cpu_us_per_req"].is_null());
        } else {
            assert!(
                h["saturation_cpu_us_per_req"].as_f64().unwrap() > 0.0,
                "{peer}: proxy CPU read: {h}"
            );
            assert!(h["rss_bytes"].as_u64().unwrap() > 0, "{peer}: {h}");
        }
        let ws: Vec<_> = json["ws"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["peer"] == peer)
            .collect();
        assert_eq!(ws.len(), if peer == "direct" { 1 } else { 2 }, "{peer}: ws (and wss)");
        assert!(
            ws.iter().all(|w| w["echo"]["round_trips"].as_u64().unwrap() > 0),
            "{peer}"
        );
        assert!(ws[0]["echo"]["round_trips"].as_u64().unwrap() > 0, "{peer}: {}", ws[0]);
        assert_eq!(ws[0]["echo"]["errors"], 0, "{peer}: {}", ws[0]);
        let idle: Vec<_> = json["idle"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["peer"] == peer)
            .collect();
        let proxied = peer != "direct";
        assert_eq!(idle.len(), if proxied { 2 } else { 1 }, "{peer}: ws (and wss)");
        for i in idle {
            assert_eq!(i["opened"], i["requested"], "{peer}: every tunnel opened: {i}");
            assert_eq!(
                i["echoed"], i["requested"],
                "{peer}: every tunnel still echoes after idling: {i}"
            );
            assert_eq!(i["failed_echo"], 0, "{peer}: {i}");
        }
        if proxied {
            check_tls_stages(&json, peer);
        }
    }
    let md = std::fs::read_to_string(out.path().join("compare.md")).unwrap();
    for peer in peers {
        assert!(
            md.contains(&format!("| {peer} |")),
            "{peer} missing from the report:\n{md}"
        );
    }
    assert!(md.contains("HTTP/2 over TLS") && md.contains("wss"), "{md}");
    for chart in ["compare_cpu.svg", "compare_tls_cpu.svg"] {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("edgeplane") && svg.contains("nginx"));
    }
}

/// Every proxy answered h2 as h2 and HTTP/1.1 over TLS without an error,
/// took new connections (resumed ones really resumed), and echoed wss.
fn check_tls_stages(json: &serde_json::Value, peer: &str) {
    let of = |key: &str| -> Vec<serde_json::Value> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["peer"] == peer)
            .cloned()
            .collect()
    };
    let http = of("tls_http");
    assert_eq!(http.len(), 2, "{peer}: h2 and h1 over TLS");
    for (t, alpn) in http.iter().zip(["h2", "http/1.1"]) {
        assert_eq!(t["load"]["protocol"], alpn, "{peer}: ALPN: {t}");
        assert!(t["load"]["done"].as_u64().unwrap() > 0, "{peer}: {t}");
        // Every request done succeeded with a 200. h2load counts a status
        // when the response head arrives, so a response whose body was still
        // on its way when the run's time was up adds a 2xx but not a "done".
        let n = |k: &str| t["load"][k].as_u64().unwrap();
        assert_eq!((n("failed"), n("errored")), (0, 0), "{peer}: {t}");
        assert_eq!(n("succeeded"), n("done"), "{peer}: {t}");
        assert!(n("status_2xx") >= n("succeeded"), "{peer}: every answer a 200: {t}");
        assert!(t["cpu_us_per_req"].as_f64().unwrap() > 0.0, "{peer}: {t}");
    }
    let hs = of("handshakes");
    assert_eq!(hs.len(), 2, "{peer}: full and resumed");
    for h in &hs {
        let r = &h["result"];
        assert!(r["connections_total"].as_u64().unwrap() > 0, "{peer}: {h}");
        assert_eq!(r["errors"], 0, "{peer}: {h}");
        let resumed = r["resumed"].as_u64().unwrap();
        if r["resume"] == true {
            // The first connection of each client is a full handshake.
            assert!(
                resumed + 4 >= r["connections_total"].as_u64().unwrap(),
                "{peer}: resumed: {h}"
            );
        } else {
            assert_eq!(resumed, 0, "{peer}: {h}");
        }
    }
    let wss: Vec<_> = of("ws").into_iter().filter(|w| w["tls"] == true).collect();
    assert_eq!(wss.len(), 1, "{peer}: one wss echo run");
    assert!(
        wss[0]["echo"]["round_trips"].as_u64().unwrap() > 0,
        "{peer}: {}",
        wss[0]
    );
    assert_eq!(wss[0]["echo"]["errors"], 0, "{peer}: {}", wss[0]);
}
