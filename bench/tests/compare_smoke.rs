//! The comparison harness in smoke mode: seconds, every peer, no timing
//! assertions. Proves that `edgeplane-bench compare` still starts the
//! backend and all six peers, drives wrk, the open-loop generator, the
//! WebSocket echo and idle-tunnel generators through each, and writes its
//! results — so the harness cannot rot between full runs.

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
        assert_eq!(ws.len(), 1, "{peer}");
        assert!(ws[0]["echo"]["round_trips"].as_u64().unwrap() > 0, "{peer}: {}", ws[0]);
        assert_eq!(ws[0]["echo"]["errors"], 0, "{peer}: {}", ws[0]);
        let idle: Vec<_> = json["idle"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["peer"] == peer)
            .collect();
        assert_eq!(idle.len(), 1, "{peer}");
        let i = idle[0];
        assert_eq!(i["opened"], i["requested"], "{peer}: every tunnel opened: {i}");
        assert_eq!(
            i["echoed"], i["requested"],
            "{peer}: every tunnel still echoes after idling: {i}"
        );
        assert_eq!(i["failed_echo"], 0, "{peer}: {i}");
    }
    let md = std::fs::read_to_string(out.path().join("compare.md")).unwrap();
    for peer in peers {
        assert!(
            md.contains(&format!("| {peer} |")),
            "{peer} missing from the report:\n{md}"
        );
    }
    let svg = std::fs::read_to_string(out.path().join("compare_cpu.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("edgeplane") && svg.contains("nginx"));
}
