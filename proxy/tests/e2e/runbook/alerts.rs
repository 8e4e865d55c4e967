//! "Alerts". The runbook's section, executed.

use super::*;

/// "Alerts", sync and snapshot-age: a file-sourced edge has no database,
/// so neither sync alert may page for it. Its real /metrics, held for 30
/// minutes of an unchanged file, fire nothing in `promtool test rules`.
#[tokio::test]
async fn sync_alerts_do_not_page_for_a_file_sourced_edge() {
    let vm1 = FakeVm::start("vm-1");
    let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let edge = Edge::start("us-east1", &snap, "").await;
    let metrics = edge.metrics().await;
    let series = |name: &str| -> Vec<(String, f64)> {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
            .map(|l| {
                let (s, v) = l.rsplit_once(' ').unwrap();
                (s.to_string(), v.parse().unwrap())
            })
            .collect()
    };
    let mut input = String::new();
    for name in [
        "edgeplane_sync_connected",
        "edgeplane_placement_serving",
        "edgeplane_snapshot_age_seconds",
    ] {
        let found = series(name);
        assert!(!found.is_empty(), "a fresh file edge exports {name}");
        for (s, v) in found {
            // promtool wants the instance label a scrape would add.
            let s = match s.split_once('{') {
                Some((n, rest)) => format!("{n}{{instance=\"file-edge\",{rest}"),
                None => format!("{s}{{instance=\"file-edge\"}}"),
            };
            let values = if name == "edgeplane_snapshot_age_seconds" {
                format!("{v}+60x40")
            } else {
                format!("{v}x40")
            };
            input.push_str(&format!("      - series: '{s}'\n        values: '{values}'\n"));
        }
    }
    assert!(input.contains("source=\"file\""), "{input}");
    let rules = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/edgeplane-alerts.yml");
    let mut test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 30s\ntests:\n  - interval: 1m\n    input_series:\n{input}",
        rules.display()
    );
    test.push_str("    alert_rule_test:\n");
    for alert in ["EdgeplaneSyncDisconnected", "EdgeplaneSnapshotOld"] {
        test.push_str(&format!(
            "      - eval_time: 30m\n        alertname: {alert}\n        exp_alerts: []\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file-edge.test.yml"), test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "file-edge.test.yml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool (scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
}

/// "Alerts", edge-down: an edge that does not start printed
/// `file:line: key: message` — one line, naming the file that holds the
/// error and its line — for every kind of bad input the runbook names.
#[test]
fn edge_down_every_start_error_is_file_line_key_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good_snap =
        serde_json::to_string_pretty(&world(dead_addr(), dead_addr(), dead_addr(), dead_addr(), dead_addr())).unwrap();
    std::fs::write(d.join("snapshot.json"), &good_snap).unwrap();
    std::fs::write(d.join("hop.secret"), HOP_SECRET).unwrap();
    let config = |region: &str, file: &str| {
        format!(
            "[edge]\nregion = \"{region}\"\nlisten = [\"127.0.0.1:0\"]\n\n[placement]\nfile = \"{file}\"\n\n\
             [security]\nhop_secret_file = \"hop.secret\"\n"
        )
    };
    std::fs::write(d.join("unknown-region.toml"), config("nowhere", "snapshot.json")).unwrap();
    std::fs::write(d.join("no-snapshot.toml"), config("us-east1", "missing.json")).unwrap();
    // A duplicate slug on the snapshot's line 14 or so: found by its row.
    let mut bad: serde_json::Value = serde_json::from_str(&good_snap).unwrap();
    let first_slug = bad["repls"][0]["slug"].clone();
    bad["repls"][1]["slug"] = first_slug;
    let bad_text = serde_json::to_string_pretty(&bad).unwrap();
    std::fs::write(d.join("dup.json"), &bad_text).unwrap();
    std::fs::write(d.join("dup-slug.toml"), config("us-east1", "dup.json")).unwrap();
    std::fs::write(d.join("broken.json"), "{\"regions\": [\n  {\"name\": \"us-east1\",\n").unwrap();
    std::fs::write(d.join("broken-json.toml"), config("us-east1", "broken.json")).unwrap();
    std::fs::write(d.join("syntax.toml"), "[edge\nregion = \"us-east1\"\n").unwrap();
    let repls_line = bad_text.lines().position(|l| l.contains("\"repls\"")).unwrap() + 1;
    let second_row = bad_text
        .lines()
        .enumerate()
        .skip(repls_line)
        .filter(|(_, l)| l.trim() == "{")
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap();
    for (args, want) in [
        (
            vec!["check", "-c", "nosuch.toml"],
            "nosuch.toml:1: -: cannot read the config file".to_string(),
        ),
        (
            vec!["check", "-c", "syntax.toml"],
            "syntax.toml:1: edge: invalid table header".to_string(),
        ),
        (
            vec!["check", "-c", "unknown-region.toml"],
            "unknown-region.toml:2: edge.region: region \"nowhere\"".to_string(),
        ),
        (
            vec!["check", "-c", "no-snapshot.toml"],
            "no-snapshot.toml:6: placement.file: cannot read".to_string(),
        ),
        (
            vec!["check", "-c", "dup-slug.toml"],
            format!("dup.json:{second_row}: repls[1]: slug"),
        ),
        (
            vec!["check", "-c", "broken-json.toml"],
            "broken.json:3: -: EOF while parsing".to_string(),
        ),
        (
            vec!["serve", "-c", "dup-slug.toml"],
            format!("dup.json:{second_row}: repls[1]: slug"),
        ),
    ] {
        let (code, _, stderr) = edgeplane(&args, d);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with(&want), "{args:?}: want {want:?}..., got:\n{stderr}");
        let lines_not_logs: Vec<_> = stderr.lines().filter(|l| !l.contains(" ERROR ")).collect();
        assert_eq!(lines_not_logs.len(), 1, "{args:?}: one line:\n{stderr}");
    }
}

/// "Alerts", cluster-full, the relief it names: `placectl add-cluster`
/// gives a full region no VM-less cluster that would refuse its share
/// of new repls (`no_usable_vm`); the cluster takes repls once
/// `placectl add-vm` gives it a VM, and then new repls land there.
#[tokio::test]
async fn cluster_full_relief_is_add_cluster_then_add_vm() {
    let (full, fresh) = (FakeVm::start("vm-full"), FakeVm::start("vm-new"));
    full.control(serde_json::json!({"containers": 10, "units": 10})).await;
    fresh.control(serde_json::json!({"containers": 0, "units": 0})).await;
    let repls: Vec<_> = (0..16)
        .map(|i| serde_json::json!({"id": format!("n{i}"), "slug": format!("new{i}"), "region": "us-east1"}))
        .collect();
    let seed = serde_json::json!({
        "regions": [{"name": "us-east1", "edge_addr": dead_addr().to_string()}],
        "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"}],
        "vms": [{"id": "vm-full", "cluster": "use1-a", "addr": full.http.to_string(),
                 "metrics_addr": full.metrics.to_string(), "state": "active", "capacity": 10}],
        "repls": repls,
    });
    let db = PgDb::new(&seed).await;
    let edge = Edge::start_pg_opts(
        "us-east1",
        &db.url,
        &EdgeOpts {
            limits: HEALTH,
            ..Default::default()
        },
    )
    .await;
    let vm_of = |b: &serde_json::Value, id: &str| {
        b["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["vms"].as_array().into_iter().flatten())
            .find(|v| v["id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    edge.wait_balancer("vm-full sampled full", |b| {
        vm_of(b, "vm-full")["not_candidate"] == "full"
    })
    .await;
    let route = |host: String| {
        let admin = edge.admin;
        async move {
            get(admin, "admin", &format!("/debug/route?host={host}"), &[])
                .await
                .body_str()
        }
    };
    for i in 0..16 {
        assert_eq!(edge.get(&format!("new{i}.repl.co"), "/", &[]).await.status, 503);
    }

    let out = db.placectl(&["add-cluster", "use1-c", "--region", "us-east1"]);
    assert!(
        out.contains("cluster use1-c added to us-east1")
            && out.contains("it takes no new repls until it has an active VM: placectl add-vm"),
        "{out}"
    );
    wait_db_version(&edge, &db).await;
    for i in 0..16 {
        let text = route(format!("new{i}.repl.co")).await;
        assert!(
            text.contains("-> cluster \"use1-a\"") && !text.contains("use1-c"),
            "the ring gives new{i} to use1-a, never to the VM-less use1-c:\n{text}"
        );
    }

    let (addr, metrics) = (fresh.http.to_string(), fresh.metrics.to_string());
    let out = db.placectl(&[
        "add-vm",
        "vm-new",
        "--cluster",
        "use1-c",
        "--addr",
        &addr,
        "--metrics-addr",
        &metrics,
    ]);
    assert!(
        out.contains("vm vm-new (active, capacity 100) added to cluster use1-c in us-east1"),
        "{out}"
    );
    edge.wait_balancer("vm-new sampled", |b| {
        let v = vm_of(b, "vm-new");
        v["units_source"] == "conman_units_reserved" && v["not_candidate"].is_null()
    })
    .await;
    let mut landed = 0;
    for i in 0..16 {
        let r = edge.get(&format!("new{i}.repl.co"), "/", &[]).await;
        match r.status {
            200 => {
                assert_eq!(r.served_by(), Some("vm-new"), "new{i}");
                landed += 1;
            }
            503 => {
                let text = route(format!("new{i}.repl.co")).await;
                // The ring's other cluster, full: refused for room, not for VMs.
                assert!(
                    text.contains("-> cluster \"use1-a\"") && !text.contains("has no active VM"),
                    "new{i}: {text}"
                );
            }
            s => panic!("new{i}: {s}"),
        }
    }
    assert!(landed >= 3, "use1-c took its share of the ring: {landed} of 16");
    let m = edge.metrics().await;
    assert!(metric_value(&m, "edgeplane_balancer_cluster_full_total").unwrap_or(0.0) >= 16.0);
}
