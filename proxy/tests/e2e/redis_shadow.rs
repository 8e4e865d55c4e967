//! The legacy Redis store through real edge processes and a real Redis
//! server (each test in its own database index): Redis as the placement
//! source, and shadow mode beside PostgreSQL — seeded differences found and
//! counted by field, none when the stores agree, and the runtime switch of
//! the source served.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::postgres::PgDb;
use crate::{dead_addr, world};

/// The server tests use; `EDGEPLANE_TEST_REDIS_URL` overrides.
fn redis_base() -> String {
    std::env::var("EDGEPLANE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Database indexes 8..=15 belong to this test binary (tests of other
/// crates never run at the same time as it).
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// A Redis database of its own, emptied first, holding the legacy layout.
pub(crate) struct RedisDb {
    pub url: String,
    con: redis::Connection,
}

impl RedisDb {
    pub fn new() -> RedisDb {
        let db = 8 + NEXT_DB.fetch_add(1, Ordering::Relaxed) % 8;
        let url = format!("{}/{db}", redis_base());
        let mut con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("Redis at {url} is needed (scripts/setup.sh starts it): {e}"));
        redis::cmd("FLUSHDB").exec(&mut con).unwrap();
        RedisDb { url, con }
    }

    fn hset(&mut self, set: &str, prefix: &str, id: &str, fields: &[(&str, String)]) {
        redis::cmd("SADD").arg(set).arg(id).exec(&mut self.con).unwrap();
        let key = format!("{prefix}{id}");
        redis::cmd("DEL").arg(&key).exec(&mut self.con).unwrap();
        let mut c = redis::cmd("HSET");
        c.arg(&key);
        for (k, v) in fields {
            c.arg(*k).arg(v);
        }
        c.exec(&mut self.con).unwrap();
    }

    /// Writes a docs/contract.md §3 snapshot in the legacy layout (custom domains and
    /// tombstones have no place there and are left out).
    pub fn seed(&mut self, snap: &Value) {
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        for r in snap["regions"].as_array().unwrap() {
            self.hset(
                "regions",
                "region:",
                r["name"].as_str().unwrap(),
                &[("edge_addr", s(&r["edge_addr"]))],
            );
        }
        for c in snap["clusters"].as_array().unwrap() {
            self.hset(
                "clusters",
                "cluster:",
                c["name"].as_str().unwrap(),
                &[("region", s(&c["region"])), ("state", s(&c["state"]))],
            );
        }
        for v in snap["vms"].as_array().unwrap() {
            self.set_vm(
                v["id"].as_str().unwrap(),
                &s(&v["cluster"]),
                &s(&v["addr"]),
                &s(&v["state"]),
            );
        }
        for r in snap["repls"].as_array().unwrap() {
            let id = r["id"].as_str().unwrap();
            let vm = snap["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["repl_id"] == id)
                .map(|c| s(&c["vm_id"]))
                .unwrap_or_default();
            self.set_repl(id, &s(&r["slug"]), &s(&r["region"]), &s(&r["cluster"]), &vm);
        }
    }

    pub fn set_repl(&mut self, id: &str, slug: &str, region: &str, cluster: &str, vm: &str) {
        let f = [
            ("slug", slug.to_string()),
            ("region", region.to_string()),
            ("cluster", cluster.to_string()),
            ("vm", vm.to_string()),
        ];
        self.hset("repls", "repl:", id, &f);
    }

    pub fn set_vm(&mut self, id: &str, cluster: &str, addr: &str, state: &str) {
        let f = [
            ("cluster", cluster.to_string()),
            ("addr", addr.to_string()),
            ("state", state.to_string()),
        ];
        self.hset("vms", "vm:", id, &f);
    }

    /// Lists `id` in the set `repls` without its hash (a half-deleted repl).
    pub fn dangling_repl(&mut self, id: &str) {
        redis::cmd("SADD").arg("repls").arg(id).exec(&mut self.con).unwrap();
    }
}

async fn shadow(edge: &Edge) -> Value {
    get(edge.admin, "admin", "/debug/shadow", &[]).await.json()
}

/// Waits for a shadow comparison newer than `after` comparisons and returns
/// `/debug/shadow`.
async fn comparison_after(edge: &Edge, after: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = shadow(edge).await;
        if v["comparisons"].as_u64().unwrap_or(0) > after && f(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "no comparison with {what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_source_serves_the_legacy_store_and_follows_it() {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    // ap-south1's edge (its own file) serves app3 on vm-3.
    let b = Edge::start(
        "ap-south1",
        &world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr()),
        "",
    )
    .await;
    let w = world(vm1.http, vm2.http, vm3.http, dead_addr(), b.proxy);
    let mut r = RedisDb::new();
    r.seed(&w);
    r.dangling_repl("half-deleted");
    let edge = Edge::start_placement(
        "us-east1",
        &format!(
            "source = \"redis\"\nredis_url = \"{}\"\nredis_poll_interval_ms = 100\n",
            r.url
        ),
        true,
    )
    .await;
    assert_eq!(
        edge.get("app1.repl.co", "/", &[]).await.served_by(),
        Some("vm-1"),
        "running on vm-1"
    );
    let m = edge.metrics().await;
    assert_eq!(
        metric_with(
            &m,
            "edgeplane_sync_rows_skipped_total",
            &["table=\"repls\"", "reason=\"missing_hash\""]
        ),
        Some(1.0),
        "a set member without its hash is skipped and counted:\n{m}"
    );

    // The legacy system starts app2 on vm-2: the edge follows within a round.
    r.set_repl("r2", "app2", "us-east1", "use1-a", "vm-2");
    let mut served = None;
    for _ in 0..100 {
        served = edge.get("app2.repl.co", "/", &[]).await.served_by().map(str::to_string);
        if served.as_deref() == Some("vm-2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served.as_deref(), Some("vm-2"));
    assert_eq!(edge.get("nope.repl.co", "/", &[]).await.status, 404);

    // The legacy store holds the whole world: the other region's apps are
    // directory names here, forwarded once to their home region.
    let snap = get(edge.admin, "admin", "/debug/snapshot", &[]).await.json();
    assert_eq!(
        (&snap["counts"]["repls"], &snap["counts"]["directory"]),
        (&serde_json::json!(2), &serde_json::json!(2)),
        "app1 and app2 whole; app3 and moved by name (Redis has no tombstones): {snap}"
    );
    let r = edge.get("app3.repl.co", "/", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-3")), "{}", r.body_str());
    let m = edge.metrics().await;
    assert_eq!(
        metric_with(
            &m,
            "edgeplane_forwards_total",
            &["to_region=\"ap-south1\"", "reason=\"affinity\""]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_counts_seeded_differences_by_field_and_the_primary_switches_at_runtime() {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let w = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let db = PgDb::new(&w).await;
    let mut r = RedisDb::new();
    r.seed(&w);
    let edge = Edge::start_pg_with(
        tempfile::tempdir().unwrap(),
        "us-east1",
        &db.url,
        &format!(
            "shadow = \"redis\"\nredis_url = \"{}\"\nredis_poll_interval_ms = 100\n",
            r.url
        ),
        true,
    )
    .await;

    // Stores that agree: comparisons run, nothing is counted.
    let v = comparison_after(&edge, 1, "both sides loaded", |v| {
        v["last"]["primary_version"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(v["serving"], "postgres");
    assert_eq!(v["last"]["mismatches"], 0, "{v:#}");
    assert_eq!(v["last"]["repls_compared"], 2, "r1 and r2 are homed in us-east1: {v:#}");
    let m = edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_shadow_mismatches_total", &["field=\"vm\""]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric_with(&m, "edgeplane_placement_serving", &["source=\"postgres\""]),
        Some(1.0)
    );

    // Seeded differences: Redis thinks app1 runs on vm-2, knows a repl the
    // control plane does not, and has vm-2 at another address.
    r.set_repl("r1", "app1", "us-east1", "use1-a", "vm-2");
    r.set_repl("r9", "ghost", "us-east1", "", "");
    r.set_vm(
        "vm-2",
        "use1-a",
        &vm2.http.to_string().replace("127.0.0.1", "127.0.0.2"),
        "active",
    );
    let seen = v["comparisons"].as_u64().unwrap();
    let v = comparison_after(&edge, seen, "the seeded differences", |v| {
        v["last"]["mismatches"].as_u64() >= Some(3)
    })
    .await;
    let counts = &v["last"]["counts"];
    assert_eq!(
        (&counts["vm"], &counts["extra"], &counts["vm_addr"]),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "{v:#}"
    );
    assert_eq!(counts["missing"], 0);
    assert_eq!(counts["slug"], 0);
    let samples = v["last"]["samples"].as_array().unwrap();
    let vm = samples.iter().find(|s| s["field"] == "vm").expect("a vm sample");
    assert_eq!(
        (&vm["key"], &vm["primary"], &vm["shadow"]),
        (&Value::from("r1"), &Value::from("vm-1"), &Value::from("vm-2"))
    );
    let m = edge.metrics().await;
    assert!(
        metric_with(&m, "edgeplane_shadow_mismatches_total", &["field=\"extra\""]) >= Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_with(&m, "edgeplane_shadow_last_mismatches", &["field=\"vm\""]),
        Some(1.0)
    );
    // Requests follow the primary, not the shadow.
    assert_eq!(edge.get("app1.repl.co", "/", &[]).await.served_by(), Some("vm-1"));
    assert_eq!(edge.get("ghost.repl.co", "/", &[]).await.status, 404);

    // The quick path: serve Redis's table now, then back.
    r.set_vm("vm-2", "use1-a", &vm2.http.to_string(), "active");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let sw = edge.admin_post("/placement/primary?source=redis").await;
    assert_eq!(sw.status, 200, "{}", sw.body_str());
    assert_eq!(
        (&sw.json()["serving"], &sw.json()["previous"]),
        (&Value::from("redis"), &Value::from("postgres"))
    );
    assert_eq!(
        edge.get("app1.repl.co", "/", &[]).await.served_by(),
        Some("vm-2"),
        "Redis's view now"
    );
    assert_eq!(
        edge.get("ghost.repl.co", "/", &[]).await.status,
        200,
        "only Redis knows ghost: placed now"
    );
    assert_eq!(shadow(&edge).await["serving"], "redis");
    let m = edge.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_placement_serving", &["source=\"redis\""]),
        Some(1.0)
    );
    let back = edge.admin_post("/placement/primary?source=postgres").await;
    assert_eq!(back.status, 200);
    assert_eq!(edge.get("app1.repl.co", "/", &[]).await.served_by(), Some("vm-1"));
    assert_eq!(edge.admin_post("/placement/primary?source=etcd").await.status, 400);
}
