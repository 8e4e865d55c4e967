//! Operating a running edge: live config reload (SIGHUP and
//! `POST /config/reload`), the JSON log with its sampled access log, and
//! `x-edgeplane-route` for requests carrying the admin token.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::{dead_addr, world};

const ADMIN_TOKEN: &str = "ops-admin-token-0123456789";

/// Polls `f` every 50 ms until it holds or `secs` pass.
async fn until<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(edge: &Edge, name: &str, parts: &[&str]) -> f64 {
    metric_with(&edge.metrics().await, name, parts).unwrap_or(0.0)
}

async fn served(edge: &Edge, host: &str) -> Option<String> {
    let r = edge.get(host, "/", &[]).await;
    (r.status == 200).then(|| r.served_by().unwrap_or("").to_string())
}

/// The 1-based line of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).expect("line present") + 1
}

#[tokio::test]
async fn reload_applies_live_keys_keeps_the_running_config_on_error_and_names_restart_keys() {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let edge = Edge::start("us-east1", &snap, "").await;
    let path = edge.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        served(&edge, "app1.example.dev").await,
        None,
        "not a hosting suffix yet"
    );
    let load = Load::start(edge.proxy, "app1.repl.co", 2);

    // 1. SIGHUP with a new live key: a second hosting suffix.
    let two_suffixes = format!("{original}\n[hosting]\nsuffixes = [\"repl.co\", \"example.dev\"]\n");
    std::fs::write(&path, &two_suffixes).unwrap();
    signal(edge.pid(), "-HUP");
    until("the new suffix to serve", 10, || async {
        served(&edge, "app1.example.dev").await.as_deref() == Some("vm-1")
    })
    .await;
    assert_eq!(
        metric(&edge, "edgeplane_config_reloads_total", &["result=\"ok\""]).await,
        1.0
    );
    assert_eq!(metric(&edge, "edgeplane_config_last_reload_successful", &[]).await, 1.0);

    // 2. A file that does not validate: nothing changes, the edge says so.
    let broken = format!("{two_suffixes}[log]\naccess_log_sample = 2.0\n");
    std::fs::write(&path, &broken).unwrap();
    signal(edge.pid(), "-HUP");
    until("the refused reload to be counted", 10, || async {
        metric(&edge, "edgeplane_config_reloads_total", &["result=\"error\""]).await == 1.0
    })
    .await;
    assert_eq!(metric(&edge, "edgeplane_config_last_reload_successful", &[]).await, 0.0);
    assert_eq!(served(&edge, "app1.example.dev").await.as_deref(), Some("vm-1"));
    assert_eq!(served(&edge, "app1.repl.co").await.as_deref(), Some("vm-1"));
    let dbg = get(edge.admin, "admin", "/debug/config", &[]).await.json();
    let want = format!(
        "{}:{}: log.access_log_sample: must be between 0.0 and 1.0",
        path.display(),
        line_of(&broken, "access_log_sample")
    );
    assert_eq!(dbg["last_reload"]["ok"], false);
    assert_eq!(dbg["last_reload"]["error"], want.as_str());
    assert_eq!(
        dbg["keys"]["hosting.suffixes"], "[\"repl.co\", \"example.dev\"]",
        "still running"
    );
    let page = get(edge.admin, "admin", "/", &[]).await.body_str();
    assert!(page.contains("reload refused"), "the status page shows it");

    // 3. Through the admin API: a restart-only key is named and kept, the
    //    live key beside it applies.
    let moved = original.replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]");
    assert_ne!(moved, original);
    std::fs::write(&path, &moved).unwrap();
    let r = try_request(edge.admin, "POST", "admin", "/config/reload", &[], &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    let report = r.json();
    assert_eq!(report["ok"], true);
    assert_eq!(report["needs_restart"], serde_json::json!(["edge.listen"]));
    let changed: Vec<&str> = report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        changed,
        ["hosting.suffixes [\"repl.co\", \"example.dev\"] -> (default)"],
        "edge.listen is not among the applied keys"
    );
    assert_eq!(served(&edge, "app1.example.dev").await, None, "suffix removed live");
    assert_eq!(
        served(&edge, "app1.repl.co").await.as_deref(),
        Some("vm-1"),
        "still on the old listener"
    );
    assert_eq!(metric(&edge, "edgeplane_config_pending_restart_keys", &[]).await, 1.0);
    assert_eq!(metric(&edge, "edgeplane_config_last_reload_successful", &[]).await, 1.0);
    let r = try_request(edge.admin, "GET", "admin", "/config/reload", &[], &[])
        .await
        .unwrap();
    assert_eq!(r.status, 405, "reload only by POST");

    let (ok, failed) = load.stop().await;
    assert!(ok >= 10, "load ran during the reloads ({ok})");
    assert_eq!(failed, 0, "no request failed across three reloads");
}

#[tokio::test]
async fn json_log_has_sampled_access_lines_and_admin_token_requests_get_their_route() {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let edge = Edge::start_opts(
        dir,
        "us-east1",
        &snap,
        &EdgeOpts {
            security: "admin_token_file = \"admin.token\"",
            limits: "\n[log]\naccess_log_sample = 1.0",
            json_log: true,
            ..Default::default()
        },
    )
    .await;

    // x-edgeplane-route: only with the exact admin token, never to the VM.
    let r = edge
        .get("app1.repl.co", "/x", &[("x-edgeplane-debug", ADMIN_TOKEN)])
        .await;
    assert_eq!(r.status, 200);
    let route = r.header("x-edgeplane-route").expect("route header").to_string();
    assert!(route.starts_with("edge=us-east1/us-east1-test table="), "{route}");
    assert!(
        route.contains("kind=app -> vm vm-1 ") && route.contains("(running)"),
        "{route}"
    );
    assert!(
        r.json()["headers"].get("x-edgeplane-debug").is_none(),
        "token reached the VM"
    );
    for bad in ["wrong-token", "", &ADMIN_TOKEN[1..]] {
        let r = edge.get("app1.repl.co", "/", &[("x-edgeplane-debug", bad)]).await;
        assert_eq!((r.status, r.header("x-edgeplane-route")), (200, None), "token {bad:?}");
    }
    let r = edge
        .get("app3.repl.co", "/", &[("x-edgeplane-debug", ADMIN_TOKEN)])
        .await;
    assert_eq!(r.status, 502, "ap-south1's edge is down");
    let route = r.header("x-edgeplane-route").unwrap_or_default();
    assert!(route.contains("-> forward to region ap-south1 edge"), "{route}");
    let r = edge
        .get("nope.repl.co", "/", &[("x-edgeplane-debug", ADMIN_TOKEN)])
        .await;
    assert_eq!(r.status, 404);
    assert!(r
        .header("x-edgeplane-route")
        .unwrap_or_default()
        .ends_with("-> 404 unknown_host"));

    // The access line of the first request, found by its request id.
    let id = {
        let r = edge.get("app1.repl.co", "/find-me", &[]).await;
        r.header("x-request-id").unwrap().to_string()
    };
    let access = |lines: &[serde_json::Value]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["target"] == "edgeplane::access")
            .cloned()
            .collect()
    };
    let mut mine = None;
    until("the access line", 10, || {
        let found = access(&edge.log_lines())
            .into_iter()
            .find(|l| l["request_id"] == id.as_str());
        let done = found.is_some();
        mine = found;
        async move { done }
    })
    .await;
    let l = mine.unwrap();
    assert_eq!(l["level"], "INFO");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "app1.repl.co");
    assert_eq!(l["path"], "/find-me");
    assert_eq!(l["status"], 200);
    assert_eq!(
        (l["kind"].as_str(), l["outcome"].as_str()),
        (Some("app"), Some("proxied"))
    );
    assert!(l["route"].as_str().unwrap().starts_with("vm vm-1 "), "{l}");
    assert_eq!(l["client"], "127.0.0.1");
    assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);

    // Sample 0 (reloaded through the admin API): successes are no longer
    // logged, errors still are.
    let path = edge.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("access_log_sample = 1.0", "access_log_sample = 0.0"),
    )
    .unwrap();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = try_request(
        edge.admin,
        "POST",
        "admin",
        "/config/reload",
        &[("authorization", &auth)],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    let before = access(&edge.log_lines()).len();
    for _ in 0..20 {
        assert_eq!(served(&edge, "app1.repl.co").await.as_deref(), Some("vm-1"));
    }
    let err_id = edge
        .get("app3.repl.co", "/", &[])
        .await
        .header("x-request-id")
        .unwrap()
        .to_string();
    let mut lines = Vec::new();
    until("the error's access line", 10, || {
        lines = access(&edge.log_lines());
        let done = lines.iter().any(|l| l["request_id"] == err_id.as_str());
        async move { done }
    })
    .await;
    let new: Vec<&serde_json::Value> = lines[before..].iter().collect();
    assert_eq!(new.len(), 1, "only the error is logged at sample 0: {new:?}");
    assert_eq!(new[0]["status"], 502);
    assert!(new[0]["route"]
        .as_str()
        .unwrap()
        .starts_with("forward to region ap-south1"));
    let reload_line = edge.log_lines().into_iter().find(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("config reload (admin): applied log.access_log_sample 1.0 -> 0.0"))
    });
    assert!(reload_line.is_some(), "the reload is logged with what changed");
}
