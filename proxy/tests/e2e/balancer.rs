//! The subsetting balancer through a real edge: fake VMs report their load
//! on `/metrics` (changed through `/control`), the edge scrapes them (or
//! reads a real Prometheus server), and new repls land where the balancer
//! says. Each "new repl" is a not-running app never requested before, so
//! the pick memory does not answer for it.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::dead_addr;
use crate::harness::*;

/// Health read every 100 ms; a VM is stale after `stale_ms`.
fn health(stale_ms: u64, balancer: &str) -> String {
    format!(
        "\n[health]\nscrape_interval_ms = 100\nscrape_timeout_ms = 100\nstale_after_ms = {stale_ms}\n\n[balancer]\n{balancer}\n"
    )
}

/// One region, cluster use1-a with the given VMs (id, http, metrics), the
/// running app `app1` on the first, and 200 not-running apps `new0..`.
fn cluster_world(vms: &[(&str, SocketAddr, SocketAddr)], draining: &[&str]) -> serde_json::Value {
    let vm_rows: Vec<_> = vms
        .iter()
        .map(|(id, http, metrics)| {
            json!({"id": id, "cluster": "use1-a", "addr": http.to_string(), "metrics_addr": metrics.to_string(),
                   "state": if draining.contains(id) { "draining" } else { "active" }})
        })
        .collect();
    let mut repls = vec![json!({"id": "r1", "slug": "app1", "region": "us-east1"})];
    for i in 0..200 {
        repls.push(json!({"id": format!("n{i}"), "slug": format!("new{i}"), "region": "us-east1"}));
    }
    json!({
        "regions": [{"name": "us-east1", "edge_addr": dead_addr().to_string()}],
        "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active", "weight": 100}],
        "vms": vm_rows,
        "repls": repls,
        "containers": [{"repl_id": "r1", "vm_id": vms[0].0}],
    })
}

struct Cluster {
    vms: Vec<FakeVm>,
    edge: Edge,
    next_app: usize,
}

impl Cluster {
    async fn start(n: usize, extra: &str) -> Cluster {
        let vms: Vec<FakeVm> = (1..=n).map(|i| FakeVm::start(&format!("vm-{i}"))).collect();
        let ids: Vec<String> = (1..=n).map(|i| format!("vm-{i}")).collect();
        let rows: Vec<_> = vms
            .iter()
            .zip(&ids)
            .map(|(v, id)| (id.as_str(), v.http, v.metrics))
            .collect();
        let edge = Edge::start("us-east1", &cluster_world(&rows, &[]), extra).await;
        Cluster { vms, edge, next_app: 0 }
    }

    fn vm(&self, id: &str) -> &FakeVm {
        &self.vms[id.trim_start_matches("vm-").parse::<usize>().unwrap() - 1]
    }

    /// Sets every VM's reported containers (and scrape mode "ok").
    async fn report(&self, containers: &[u64]) {
        for (vm, c) in self.vms.iter().zip(containers) {
            vm.control(json!({"containers": c, "cpu": 0.0, "ready": true, "scrape": "ok"}))
                .await;
        }
    }

    /// Waits until the edge's view shows `containers` for every VM.
    async fn wait_reported(&self, containers: &[u64]) {
        let want: Vec<(String, u64)> = containers
            .iter()
            .enumerate()
            .map(|(i, &c)| (format!("vm-{}", i + 1), c))
            .collect();
        self.edge
            .wait_balancer("samples arrive", |b| {
                want.iter()
                    .all(|(id, c)| vm_field(b, id, "containers") == Some(json!(c)))
            })
            .await;
    }

    /// Requests the next never-seen app; returns the VM that served it.
    async fn new_repl(&mut self) -> String {
        let host = format!("new{}.repl.co", self.next_app);
        self.next_app += 1;
        let r = self.edge.get(&host, "/", &[]).await;
        assert_eq!(r.status, 200, "{host}: {}", r.body_str());
        r.served_by().unwrap().to_string()
    }
}

/// A field of one VM in `/balancer`.
fn vm_field(b: &serde_json::Value, id: &str, field: &str) -> Option<serde_json::Value> {
    b["clusters"][0]["vms"]
        .as_array()?
        .iter()
        .find(|v| v["id"] == id)
        .map(|v| v[field].clone())
}

#[tokio::test]
async fn new_repls_go_to_the_least_loaded_vm_of_the_subset() {
    let mut c = Cluster::start(4, &health(5000, "subset_size = 3")).await;
    let b = c
        .edge
        .wait_balancer("a view", |b| {
            b["clusters"][0]["subset"].as_array().map(Vec::len) == Some(3)
        })
        .await;
    let subset: Vec<String> = b["clusters"][0]["subset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let outsider = (1..=4)
        .map(|i| format!("vm-{i}"))
        .find(|v| !subset.contains(v))
        .unwrap();
    // The VM outside the subset is the emptiest of all: it must still get nothing.
    let mut load = [0u64; 4];
    let idx = |id: &str| id.trim_start_matches("vm-").parse::<usize>().unwrap() - 1;
    load[idx(&outsider)] = 0;
    load[idx(&subset[0])] = 50;
    load[idx(&subset[1])] = 5;
    load[idx(&subset[2])] = 60;
    c.report(&load).await;
    c.wait_reported(&load).await;
    for _ in 0..5 {
        assert_eq!(c.new_repl().await, subset[1], "least loaded member");
    }
    // The VM fills up (as reported): the next least loaded member takes over.
    load[idx(&subset[1])] = 100;
    c.report(&load).await;
    c.wait_reported(&load).await;
    assert_eq!(c.new_repl().await, subset[0]);
    let m = c.edge.metrics().await;
    assert_eq!(metric_with(&m, "edgeplane_vm_usable", &["use1-a"]), Some(4.0), "{m}");
    assert_eq!(
        metric_with(&m, "edgeplane_balancer_picks_total", &["least-loaded"]),
        Some(6.0)
    );
    assert_eq!(
        metric_with(&m, "edgeplane_balancer_policy", &["least-loaded"]),
        Some(1.0)
    );
    // The running app was never balanced: it stays on its VM.
    assert_eq!(c.edge.get("app1.repl.co", "/", &[]).await.served_by(), Some("vm-1"));
}

#[tokio::test]
async fn a_vm_that_stops_answering_scrapes_gets_no_new_repls_but_keeps_its_running_ones() {
    let mut c = Cluster::start(4, &health(1500, "")).await;
    c.report(&[0, 10, 20, 30]).await;
    c.wait_reported(&[0, 10, 20, 30]).await;
    assert_eq!(c.new_repl().await, "vm-1");
    c.vm("vm-1").control(json!({"scrape": "hang"})).await;
    // vm-3's answers turn to garbage. Two of four VMs stay usable: not
    // below panic_threshold (0.5), so health is obeyed.
    c.vm("vm-3").control(json!({"scrape": "garbage"})).await;
    let t0 = Instant::now();
    // The last sample is kept until stale_after: vm-1 is still the pick.
    assert_eq!(c.new_repl().await, "vm-1");
    assert!(
        t0.elapsed() < Duration::from_millis(1200),
        "too slow to test the grace period"
    );
    let b = c
        .edge
        .wait_balancer("vm-1 and vm-3 stale", |b| {
            vm_field(b, "vm-1", "usability") == Some(json!("stale"))
                && vm_field(b, "vm-3", "usability") == Some(json!("stale"))
        })
        .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "stale before stale_after: {b:#}"
    );
    assert_eq!(vm_field(&b, "vm-1", "last_error"), Some(json!("timeout")));
    assert_eq!(vm_field(&b, "vm-3", "last_error"), Some(json!("missing")));
    for _ in 0..5 {
        assert_eq!(c.new_repl().await, "vm-2");
    }
    // Repls already running on vm-1 keep reaching it.
    for _ in 0..3 {
        assert_eq!(c.edge.get("app1.repl.co", "/", &[]).await.served_by(), Some("vm-1"));
    }
    let m = c.edge.metrics().await;
    assert!(metric_with(&m, "edgeplane_health_scrape_errors_total", &["timeout"]).unwrap_or(0.0) >= 1.0);
    assert!(metric_with(&m, "edgeplane_health_scrape_errors_total", &["missing"]).unwrap_or(0.0) >= 1.0);
    assert_eq!(metric_with(&m, "edgeplane_health_stale_vms", &[]), Some(2.0));
    assert!(metric_with(&m, "edgeplane_health_sample_age_max_seconds", &[]).unwrap() >= 1.5);
    // Scrapes answer again: vm-1 (emptiest) is back.
    c.report(&[0, 10, 20, 30]).await;
    c.edge
        .wait_balancer("vm-1 usable", |b| {
            vm_field(b, "vm-1", "usability") == Some(json!("usable"))
        })
        .await;
    assert_eq!(c.new_repl().await, "vm-1");
}

#[tokio::test]
async fn a_draining_vm_gets_no_new_repls() {
    let vms: Vec<FakeVm> = (1..=3).map(|i| FakeVm::start(&format!("vm-{i}"))).collect();
    let rows: Vec<_> = ["vm-1", "vm-2", "vm-3"]
        .iter()
        .zip(&vms)
        .map(|(id, v)| (*id, v.http, v.metrics))
        .collect();
    let edge = Edge::start("us-east1", &cluster_world(&rows, &[]), &health(5000, "")).await;
    for (v, c) in vms.iter().zip([0, 30, 40]) {
        v.control(json!({"containers": c})).await;
    }
    edge.wait_balancer("samples", |b| vm_field(b, "vm-3", "containers") == Some(json!(40)))
        .await;
    assert_eq!(edge.get("new0.repl.co", "/", &[]).await.served_by(), Some("vm-1"));
    // The control plane drains vm-1 (the emptiest VM).
    write_snapshot(&edge.snapshot_path(), &cluster_world(&rows, &["vm-1"]));
    edge.wait_balancer("vm-1 gone from the candidates", |b| {
        b["clusters"][0]["active"] == 2 && vm_field(b, "vm-1", "id").is_none()
    })
    .await;
    for i in 1..=10 {
        let r = edge.get(&format!("new{i}.repl.co"), "/", &[]).await;
        assert_eq!(r.served_by(), Some("vm-2"), "new{i}");
    }
    assert_eq!(
        edge.get("app1.repl.co", "/", &[]).await.served_by(),
        Some("vm-1"),
        "running repls stay while it drains"
    );
}

#[tokio::test]
async fn when_every_scrape_fails_the_edge_still_places_repls() {
    let mut c = Cluster::start(3, &health(500, "")).await;
    c.report(&[5, 5, 5]).await;
    c.wait_reported(&[5, 5, 5]).await;
    for vm in &c.vms {
        vm.control(json!({"scrape": "error"})).await;
    }
    let b = c
        .edge
        .wait_balancer("panic mode", |b| b["clusters"][0]["mode"] == "panic")
        .await;
    assert_eq!(b["clusters"][0]["usable"], 0);
    let mut served = std::collections::HashSet::new();
    for _ in 0..12 {
        served.insert(c.new_repl().await);
    }
    assert!(served.len() >= 2, "panic mode spreads: {served:?}");
    let m = c.edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_balancer_panic", &["use1-a"]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric_with(&m, "edgeplane_vm_usable", &["use1-a"]), Some(0.0));
    assert_eq!(metric_with(&m, "edgeplane_balancer_panic_picks_total", &[]), Some(12.0));
    assert!(metric_with(&m, "edgeplane_health_scrape_errors_total", &["status"]).unwrap() >= 3.0);
}

#[tokio::test]
async fn the_policy_switches_at_runtime() {
    let mut c = Cluster::start(3, &health(5000, "")).await;
    // Within each VM's capacity (100): every VM has room for round-robin.
    c.report(&[0, 90, 90]).await;
    c.wait_reported(&[0, 90, 90]).await;
    for _ in 0..6 {
        assert_eq!(c.new_repl().await, "vm-1", "least-loaded herds onto the empty VM");
    }
    let r = try_request(
        c.edge.admin,
        "POST",
        "admin",
        "/balancer/policy?policy=round-robin",
        &[],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["previous"], "least-loaded");
    let bad = try_request(
        c.edge.admin,
        "POST",
        "admin",
        "/balancer/policy?policy=fastest",
        &[],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.body_str().contains("round-robin"), "{}", bad.body_str());
    let get = try_request(c.edge.admin, "GET", "admin", "/balancer/policy?policy=random", &[], &[])
        .await
        .unwrap();
    assert_eq!(get.status, 405, "a GET changes nothing");
    let mut counts = std::collections::HashMap::new();
    for _ in 0..6 {
        *counts.entry(c.new_repl().await).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{counts:?}"
    );
    assert_eq!(c.edge.balancer().await["policy"], "round-robin");
    let m = c.edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_balancer_picks_total", &["round-robin"]),
        Some(6.0)
    );
    assert_eq!(
        metric_with(&m, "edgeplane_balancer_policy", &["round-robin"]),
        Some(1.0)
    );
}

#[tokio::test]
async fn connect_failures_eject_a_vm_from_new_placements() {
    // vm-1's HTTP listener is gone (its metrics still answer, as when the
    // conman process dies but the node exporter lives).
    let vms: Vec<FakeVm> = (1..=2).map(|i| FakeVm::start(&format!("vm-{i}"))).collect();
    let rows = [
        ("vm-1", dead_addr(), vms[0].metrics),
        ("vm-2", vms[1].http, vms[1].metrics),
    ];
    let edge = Edge::start(
        "us-east1",
        &cluster_world(&rows, &[]),
        &health(5000, "eject_after_failures = 2\nmax_ejected_share = 0.5"),
    )
    .await;
    vms[0].control(json!({"containers": 0})).await;
    vms[1].control(json!({"containers": 50})).await;
    edge.wait_balancer("samples", |b| vm_field(b, "vm-2", "containers") == Some(json!(50)))
        .await;
    // Least loaded, vm-1 is picked first; each refusal moves the request
    // to vm-2 (connect retry) and counts toward vm-1's ejection.
    for i in 0..2 {
        let r = edge.get(&format!("new{i}.repl.co"), "/", &[]).await;
        assert_eq!((r.status, r.served_by()), (200, Some("vm-2")), "new{i}");
    }
    let m = edge.metrics().await;
    assert_eq!(metric_value(&m, "edgeplane_connect_retries_total"), Some(2.0), "{m}");
    edge.wait_balancer("vm-1 ejected", |b| {
        vm_field(b, "vm-1", "usability") == Some(json!("ejected"))
    })
    .await;
    for i in 2..8 {
        let r = edge.get(&format!("new{i}.repl.co"), "/", &[]).await;
        assert_eq!((r.status, r.served_by()), (200, Some("vm-2")), "new{i}");
    }
    assert_eq!(edge.balancer().await["clusters"][0]["ejected"], 1);
}

/// Starts Debian's `prometheus` scraping `targets` every 200 ms on a free port.
fn start_prometheus(dir: &std::path::Path, targets: &[SocketAddr]) -> (Proc, SocketAddr) {
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let cfg = format!(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\nscrape_configs:\n  - job_name: vms\n    static_configs:\n      - targets: [{}]\n",
        list.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), cfg).unwrap();
    let addr = crate::free_addr();
    let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin:?} ({e}): scripts/setup.sh installs Debian's prometheus"));
    (Proc(child), addr)
}

#[tokio::test]
async fn the_prometheus_source_reads_a_real_prometheus_server() {
    let vms: Vec<FakeVm> = (1..=3).map(|i| FakeVm::start(&format!("vm-{i}"))).collect();
    for (v, c) in vms.iter().zip([50, 2, 30]) {
        v.control(json!({"containers": c, "cpu": 0.1})).await;
    }
    let prom_dir = tempfile::tempdir().unwrap();
    let metrics: Vec<SocketAddr> = vms.iter().map(|v| v.metrics).collect();
    let (_prom, prom_addr) = start_prometheus(prom_dir.path(), &metrics);
    let rows: Vec<_> = ["vm-1", "vm-2", "vm-3"]
        .iter()
        .zip(&vms)
        .map(|(id, v)| (*id, v.http, v.metrics))
        .collect();
    let extra = format!(
        "\n[health]\nsource = \"prometheus\"\nprometheus_url = \"http://{prom_addr}\"\nscrape_interval_ms = 200\nscrape_timeout_ms = 200\nstale_after_ms = 5000\n"
    );
    let edge = Edge::start("us-east1", &cluster_world(&rows, &[]), &extra).await;
    // Prometheus needs a moment to start and scrape; the edge keeps asking.
    let b = edge
        .wait_balancer("Prometheus values arrive", |b| {
            vm_field(b, "vm-1", "containers") == Some(json!(50))
                && vm_field(b, "vm-2", "containers") == Some(json!(2))
                && vm_field(b, "vm-3", "containers") == Some(json!(30))
        })
        .await;
    assert!(b["health_source"].as_str().unwrap().starts_with("prometheus"), "{b}");
    assert!(vm_field(&b, "vm-2", "sample_age_ms").unwrap().as_u64().unwrap() < 5000);
    for i in 0..3 {
        let r = edge.get(&format!("new{i}.repl.co"), "/", &[]).await;
        assert_eq!(r.served_by(), Some("vm-2"), "new{i}");
    }
    // vm-2 fills up; Prometheus scrapes it, the edge reads it: vm-3 is next.
    vms[1].control(json!({"containers": 100})).await;
    edge.wait_balancer("vm-2 at 100", |b| vm_field(b, "vm-2", "containers") == Some(json!(100)))
        .await;
    let r = edge.get("new9.repl.co", "/", &[]).await;
    assert_eq!(r.served_by(), Some("vm-3"));
}
