//! The deploy/ files are checked, not just shipped: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), the
//! systemd unit passes `systemd-analyze verify`, and every metric the alerts
//! and the Grafana dashboard query is one the edge exports.

use std::path::PathBuf;
use std::process::Command;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy_dir().join("prometheus");
    let check = run(Command::new("promtool")
        .args(["check", "rules", "edgeplane-alerts.yml"])
        .current_dir(&dir));
    assert!(check.contains("SUCCESS: 12 rules found"), "{check}");
    let test = run(Command::new("promtool")
        .args(["test", "rules", "edgeplane-alerts.test.yml"])
        .current_dir(&dir));
    assert!(test.contains("SUCCESS"), "{test}");
}

/// Each `edgeplane_*` name in `text`, with the text right after it.
fn metric_mentions(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let i = rest.find("edgeplane_")?;
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
        Some((&tail[..end], rest))
    })
}

/// `edgeplane_*` names in `text`, with histogram suffixes removed.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    metric_mentions(text)
        .map(|(name, _)| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

#[test]
fn alerts_and_dashboard_only_query_metrics_the_edge_exports() {
    // The edge's metrics, and the certificate issuer's (placectl).
    let exported = metric_names(concat!(
        include_str!("../../src/metrics.rs"),
        include_str!("../../../control-sync/src/certs/metrics.rs")
    ));
    assert!(exported.len() > 20, "{exported:?}");
    let alerts = std::fs::read_to_string(deploy_dir().join("prometheus/edgeplane-alerts.yml")).unwrap();
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_dir().join("grafana/edgeplane-dashboard.json")).unwrap())
            .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 12, "dashboard has {} panels", panels.len());
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    for (what, text) in [("alert rules", alerts.as_str()), ("dashboard", exprs.as_str())] {
        let used = metric_names(text);
        assert!(!used.is_empty());
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} query metrics the edge does not export: {unknown:?}"
        );
    }
    // Every metric of docs/contract.md §5 the edge has today is on the dashboard.
    let on_dash = metric_names(&exprs);
    for m in [
        "edgeplane_requests_total",
        "edgeplane_request_duration_seconds",
        "edgeplane_websocket_tunnels_active",
        "edgeplane_upstream_errors_total",
        "edgeplane_forwards_total",
        "edgeplane_tombstone_hits_total",
        "edgeplane_snapshot_version",
        "edgeplane_snapshot_age_seconds",
        "edgeplane_sync_lag_seconds",
        "edgeplane_sync_errors_total",
        "edgeplane_vm_usable",
        "edgeplane_balancer_picks_total",
    ] {
        assert!(on_dash.contains(m), "{m} is not on the dashboard");
    }
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/edgeplane.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgeplane.service");
    let bin = crate::harness::edgeplane_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/edgeplane", &bin.display().to_string()),
    )
    .unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(out.trim().is_empty(), "systemd-analyze verify complained:\n{out}");
}

/// Label values the edge (and the issuer) can emit, per metric and label:
/// those a fresh edge exports at 0 (every enumerable one), plus the request counter's
/// kinds and outcomes and the placement sources.
fn emitted_label_values() -> std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> {
    use edgeplane_proxy::metrics::{Metrics, REQUEST_KINDS, REQUEST_OUTCOMES};
    let mut out: std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> = Default::default();
    // The edge's, and the certificate issuer's (placectl certs run).
    let mut text = String::from_utf8(Metrics::new().render()).unwrap();
    text.push_str(&String::from_utf8(edgeplane_control_sync::certs::metrics::IssuerMetrics::new().render()).unwrap());
    for line in text.lines().filter(|l| l.starts_with("edgeplane_")) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let labels = rest.split_once('}').map(|x| x.0).unwrap_or("");
        for (k, v) in label_pairs(labels) {
            out.entry((name.to_string(), k)).or_default().insert(v);
        }
    }
    let mut add = |metric: &str, label: &str, values: &[&str]| {
        out.entry((metric.into(), label.into()))
            .or_default()
            .extend(values.iter().map(|v| v.to_string()));
    };
    add("edgeplane_requests_total", "kind", &REQUEST_KINDS);
    add("edgeplane_requests_total", "outcome", &REQUEST_OUTCOMES);
    add("edgeplane_placement_serving", "source", &["file", "postgres", "redis"]);
    out
}

/// `k="v"` pairs of a label set (exact matchers only).
fn label_pairs(labels: &str) -> Vec<(String, String)> {
    labels
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
            (!k.trim().ends_with(['!', '~']) && !v.starts_with('~')).then(|| (k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// Every exact label value the alerts, their unit tests and the dashboard
/// use is one the edge emits (labels whose values are the operator's own —
/// instance, job, cluster, to_region, code — aside), so a test cannot pass
/// on series the edge never exports, nor an alert wait on one.
#[test]
fn alerts_their_tests_and_the_dashboard_use_only_label_values_the_edge_emits() {
    let emitted = emitted_label_values();
    let dash = std::fs::read_to_string(deploy_dir().join("grafana/edgeplane-dashboard.json")).unwrap();
    let dash = dash.replace("\\\"", "\"");
    let mut checked = 0;
    for (file, text) in [
        (
            "edgeplane-alerts.yml",
            std::fs::read_to_string(deploy_dir().join("prometheus/edgeplane-alerts.yml")).unwrap(),
        ),
        (
            "edgeplane-alerts.test.yml",
            std::fs::read_to_string(deploy_dir().join("prometheus/edgeplane-alerts.test.yml")).unwrap(),
        ),
        ("edgeplane-dashboard.json", dash),
    ] {
        for (name, rest) in metric_mentions(&text) {
            let Some(labels) = rest.strip_prefix('{').and_then(|r| r.split_once('}')).map(|x| x.0) else {
                continue;
            };
            for (k, v) in label_pairs(labels) {
                if ["instance", "job", "cluster", "to_region", "code"].contains(&k.as_str()) {
                    continue;
                }
                let known = emitted.get(&(name.to_string(), k.clone()));
                assert!(
                    known.is_some_and(|vals| vals.contains(&v)),
                    "{file}: {name}{{{k}=\"{v}\"}}: the edge never emits that (it emits {known:?})"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} label values checked");
}
