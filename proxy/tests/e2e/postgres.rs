//! The PostgreSQL source through real edge processes, against the real
//! server (each test in its own database): transfers, container changes,
//! a killed connection under load, start-up from last-known-good, bad rows,
//! and a held-back shrink.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::{Client, NoTls};

use crate::harness::*;
use crate::{dead_addr, world};

/// The server tests use; `EDGEPLANE_TEST_DATABASE_URL` overrides.
fn admin_url() -> String {
    std::env::var("EDGEPLANE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn placectl() -> std::path::PathBuf {
    edgeplane_bin().with_file_name("placectl")
}

pub(crate) async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed (scripts/setup.sh starts it): {e}"));
    tokio::spawn(conn);
    client
}

/// A database of its own, migrated and seeded with `placectl`; dropped after.
pub(crate) struct PgDb {
    name: String,
    /// The server's maintenance database (where this one is dropped from).
    admin: String,
    pub url: String,
    pub client: Client,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl PgDb {
    pub async fn new(seed: &serde_json::Value) -> PgDb {
        PgDb::new_on(&admin_url(), seed).await
    }

    /// The same on the server whose maintenance database is `admin`.
    pub async fn new_on(admin: &str, seed: &serde_json::Value) -> PgDb {
        let name = format!(
            "edgeplane_t_{}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let admin_client = connect(admin).await;
        admin_client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seed.json");
        std::fs::write(&file, serde_json::to_vec(seed).unwrap()).unwrap();
        for args in [
            vec!["migrate".to_string()],
            vec!["import".into(), file.display().to_string()],
        ] {
            let out = std::process::Command::new(placectl())
                .args(&args)
                .env("DATABASE_URL", &url)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "placectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let client = connect(&url).await;
        PgDb {
            name,
            admin: admin.to_string(),
            url,
            client,
        }
    }

    /// Points `region`'s `edge_addr` at `addr` (an edge started after the
    /// seed, on a port the OS chose).
    pub(crate) async fn set_edge_addr(&self, region: &str, addr: std::net::SocketAddr) {
        self.client
            .execute(
                "UPDATE regions SET edge_addr = $1 WHERE name = $2",
                &[&addr.to_string(), &region],
            )
            .await
            .unwrap();
    }

    /// The store's `placement_version` now.
    pub(crate) async fn version(&self) -> i64 {
        self.client
            .query_one("SELECT version FROM placement_version", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Runs placectl on this database, whatever its outcome.
    pub(crate) fn placectl_output(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(placectl())
            .args(args)
            .env("DATABASE_URL", &self.url)
            .output()
            .unwrap()
    }

    pub(crate) fn placectl(&self, args: &[&str]) -> String {
        let out = self.placectl_output(args);
        assert!(
            out.status.success(),
            "placectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), self.admin.clone());
        // Best effort, on a thread of its own (we may be inside a runtime).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}

/// The standard world plus a second us-east1 cluster `use1-b` holding vm-2.
pub(crate) fn pg_world(vm1: &FakeVm, vm2: &FakeVm, vm3: &FakeVm, edge_b: std::net::SocketAddr) -> serde_json::Value {
    let mut w = world(vm1.http, vm2.http, vm3.http, dead_addr(), edge_b);
    w["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "use1-b", "region": "us-east1", "state": "active"}));
    w["vms"][1]["cluster"] = "use1-b".into();
    w
}

/// Two edges on one database seeded with `seed`: A in us-east1, B in
/// ap-south1 (started first), each region's `edge_addr` set to its edge.
pub(crate) async fn two_edges(seed: &serde_json::Value) -> (PgDb, Edge, Edge) {
    let db = PgDb::new(seed).await;
    let b = Edge::start_pg(tempfile::tempdir().unwrap(), "ap-south1", &db.url, true).await;
    db.set_edge_addr("ap-south1", b.proxy).await;
    let a = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db.url, true).await;
    db.set_edge_addr("us-east1", a.proxy).await;
    (db, a, b)
}

/// Requests `host` until `vm` answers (or 10 s pass).
pub(crate) async fn wait_served_by(edge: &Edge, host: &str, vm: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = edge.get(host, "/", &[]).await;
        if r.served_by() == Some(vm) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} never reached {vm} (last: {} {:?})",
            r.status,
            r.served_by()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the edge's `/metrics` until the first sample of `name` whose line
/// holds all of `parts` satisfies `ok` (an absent sample counts as 0), or
/// fails with `what` after 10 s.
pub(crate) async fn wait_metric(edge: &Edge, name: &str, parts: &[&str], ok: impl Fn(f64) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = edge.metrics().await;
        if ok(metric_with(&m, name, parts).unwrap_or(0.0)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn vms() -> (FakeVm, FakeVm, FakeVm) {
    (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"))
}

/// The common start: app2 is not running and is pinned to use1-a, whose only
/// VM is vm-1; an edge of us-east1 is up and already sends app2 to vm-1.
async fn app2_pinned_to_vm1() -> ((FakeVm, FakeVm, FakeVm), PgDb, Edge) {
    let (vm1, vm2, vm3) = vms().await;
    let db = PgDb::new(&pg_world(&vm1, &vm2, &vm3, dead_addr())).await;
    db.client
        .execute("UPDATE repls SET cluster = 'use1-a' WHERE id = 'r2'", &[])
        .await
        .unwrap();
    let a = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db.url, true).await;
    wait_served_by(&a, "app2.repl.co", "vm-1").await;
    ((vm1, vm2, vm3), db, a)
}

#[tokio::test]
async fn placectl_transfer_moves_traffic_within_and_across_regions() {
    let (vm1, vm2, vm3) = vms().await;
    // Edge B's address must be in the data before edge A forwards to it:
    // B starts first against a placeholder, then the row is fixed.
    let (db, a, _b) = two_edges(&pg_world(&vm1, &vm2, &vm3, dead_addr())).await;
    wait_served_by(&a, "app1.repl.co", "vm-1").await;

    // Within the region: r1 leaves use1-a (vm-1) for use1-b (vm-2).
    let out = db.placectl(&["transfer", "r1", "--to", "use1-b"]);
    assert!(out.contains("moved use1-a -> use1-b"), "{out}");
    wait_served_by(&a, "app1.repl.co", "vm-2").await;

    // Across regions: r1 moves to aps1-a; edge A follows the tombstone to B.
    let out = db.placectl(&["transfer", "r1", "--to", "aps1-a"]);
    assert!(out.contains("region ap-south1"), "{out}");
    wait_served_by(&a, "app1.repl.co", "vm-3").await;
    let m = a.metrics().await;
    assert!(
        metric_value(&m, "edgeplane_tombstone_hits_total").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, "edgeplane_sync_connected"), Some(1.0));
    let lag = metric_value(&m, "edgeplane_sync_lag_seconds").unwrap();
    assert!(lag > 0.0 && lag < 5.0, "lag {lag}");
    // Custom domain follows too (it rides on the repl).
    let r = a.get("www.example.com", "/", &[]).await;
    assert_eq!(r.served_by(), Some("vm-3"));
}

#[tokio::test]
async fn a_new_container_row_moves_a_not_running_repl() {
    let (_vms, db, a) = app2_pinned_to_vm1().await;
    db.client
        .execute("INSERT INTO containers (repl_id, vm_id) VALUES ('r2', 'vm-2')", &[])
        .await
        .unwrap();
    wait_served_by(&a, "app2.repl.co", "vm-2").await;
    let snap = get(a.admin, "admin", "/debug/snapshot", &[]).await.json();
    // r1, r2 and the tombstoned r4 (it left from this region).
    assert_eq!(snap["counts"]["containers"], 3, "{snap}");
}

#[tokio::test]
async fn killed_connection_loses_no_request_and_catches_up() {
    let (_vms, db, a) = app2_pinned_to_vm1().await;

    let load = Load::start(a.proxy, "app1.repl.co", 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kill the edge's sessions, and change placement right away, before it
    // can reconnect.
    let killed = db
        .client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(killed.get::<_, i64>(0) >= 1, "the edge had no session to kill");
    db.client
        .execute("INSERT INTO containers (repl_id, vm_id) VALUES ('r2', 'vm-2')", &[])
        .await
        .unwrap();
    wait_served_by(&a, "app2.repl.co", "vm-2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.stop().await;
    let m = a.metrics().await;
    assert!(
        metric_with(&m, "edgeplane_sync_errors_total", &["reason=\"query\""]).unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, "edgeplane_sync_connected"), Some(1.0), "reconnected");
    assert!(ok > 50, "too few requests to mean anything");
    assert_eq!(failed, 0, "requests failed while the database connection was down");
}

#[tokio::test]
async fn edge_started_without_postgres_serves_last_known_good() {
    let (vm1, vm2, vm3) = vms().await;
    let db = PgDb::new(&pg_world(&vm1, &vm2, &vm3, dead_addr())).await;
    let first = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db.url, true).await;
    let lkg = first.dir.path().join("lkg.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lkg.exists() {
        assert!(Instant::now() < deadline, "last-known-good never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second edge whose database is unreachable, with that file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&lkg, dir.path().join("lkg.json")).unwrap();
    let dead = format!("postgres://postgres@{}/nowhere", dead_addr());
    let second = Edge::start_pg(dir, "us-east1", &dead, true).await;
    let r = second.get("app1.repl.co", "/", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-1")));
    let m = second.metrics().await;
    assert_eq!(metric_value(&m, "edgeplane_sync_connected"), Some(0.0));
    assert!(metric_with(&m, "edgeplane_sync_errors_total", &["reason=\"connect\""]).unwrap() >= 1.0);
}

#[tokio::test]
async fn bad_rows_are_skipped_and_counted_while_the_rest_loads() {
    let (vm1, vm2, vm3) = vms().await;
    let mut w = pg_world(&vm1, &vm2, &vm3, dead_addr());
    w["vms"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "vm-bad", "cluster": "use1-a", "addr": "not-an-address", "state": "active"}));
    w["repls"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "r9", "slug": "on-bad-vm", "region": "us-east1"}));
    w["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"repl_id": "r9", "vm_id": "vm-bad"}));
    let db = PgDb::new(&w).await;
    let a = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db.url, true).await;
    wait_served_by(&a, "app1.repl.co", "vm-1").await;
    let m = a.metrics().await;
    assert_eq!(
        metric_with(
            &m,
            "edgeplane_sync_rows_skipped_total",
            &["table=\"vms\"", "reason=\"bad_address\""]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_with(
            &m,
            "edgeplane_sync_rows_skipped_total",
            &["table=\"containers\"", "reason=\"dangling_reference\""]
        ),
        Some(1.0)
    );
    // The repl itself loaded; without its (bad) VM it is placed on a good one.
    let r = a.get("on-bad-vm.repl.co", "/", &[]).await;
    assert_eq!(r.status, 200);
    // A bad row arriving as a delta is skipped and counted too.
    db.client
        .execute(
            "INSERT INTO vms (id, cluster, addr, state) VALUES ('vm-bad2', 'use1-a', 'nope:nope', 'active')",
            &[],
        )
        .await
        .unwrap();
    wait_metric(
        &a,
        "edgeplane_sync_rows_skipped_total",
        &["table=\"vms\""],
        |v| v == 2.0,
        "delta bad row not counted",
    )
    .await;
}

#[tokio::test]
async fn a_suspicious_shrink_is_held_back() {
    let (vm1, vm2, vm3) = vms().await;
    let mut w = pg_world(&vm1, &vm2, &vm3, dead_addr());
    for i in 0..20 {
        w["repls"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": format!("x{i}"), "slug": format!("extra{i}"), "region": "us-east1"}));
    }
    let db = PgDb::new(&w).await;
    let a = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db.url, true).await;
    let before = get(a.admin, "admin", "/debug/snapshot", &[]).await.json();
    let repls = before["counts"]["repls"].as_u64().unwrap();
    // A broken bulk job empties most of the table and asks edges to reload.
    db.client
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica;
             DELETE FROM repls WHERE id LIKE 'x%' OR id = 'r1';
             SET LOCAL session_replication_role = origin;
             SELECT edgeplane_request_reload(); COMMIT;",
        )
        .await
        .unwrap();
    wait_metric(
        &a,
        "edgeplane_sync_errors_total",
        &["reason=\"held_back\""],
        |v| v >= 1.0,
        "shrink not held back",
    )
    .await;
    let after = get(a.admin, "admin", "/debug/snapshot", &[]).await.json();
    assert_eq!(
        after["counts"]["repls"].as_u64(),
        Some(repls),
        "the old table keeps serving"
    );
    assert_eq!(a.get("app1.repl.co", "/", &[]).await.served_by(), Some("vm-1"));
}

#[tokio::test]
async fn placectl_operations_and_the_one_container_rule() {
    let (vm1, vm2, vm3) = vms().await;
    let db = PgDb::new(&pg_world(&vm1, &vm2, &vm3, dead_addr())).await;
    let a = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db.url, true).await;

    // At most one container per repl (r1 already runs on vm-1).
    let dup = db
        .client
        .execute("INSERT INTO containers (repl_id, vm_id) VALUES ('r1', 'vm-2')", &[])
        .await;
    assert!(dup.is_err(), "a second container row for one repl was accepted");

    // A lazy transfer: the repl is served from the target cluster, and the
    // VM is told where it comes from.
    db.client
        .execute("UPDATE repls SET cluster = 'use1-a' WHERE id = 'r2'", &[])
        .await
        .unwrap();
    let out = db.placectl(&["transfer", "r2", "--to", "use1-b", "--lazy"]);
    assert!(out.contains("lazy transfer to use1-b pending"), "{out}");
    wait_served_by(&a, "app2.repl.co", "vm-2").await;
    let r = a.get("app2.repl.co", "/", &[]).await;
    assert_eq!(r.json()["headers"]["x-edgeplane-transfer-from"], "use1-a");

    // add-cluster, then drain-vm: a drained VM gets no new repls.
    let out = db.placectl(&["add-cluster", "use1-c", "--region", "us-east1", "--weight", "50"]);
    assert!(out.contains("cluster use1-c added"), "{out}");
    db.client
        .execute(
            "INSERT INTO vms (id, cluster, addr, state) VALUES ('vm-c', 'use1-c', $1, 'active')",
            &[&vm3.http.to_string()],
        )
        .await
        .unwrap();
    db.client
        .execute(
            "UPDATE repls SET cluster = 'use1-c', transfer_to = NULL WHERE id = 'r2'",
            &[],
        )
        .await
        .unwrap();
    wait_served_by(&a, "app2.repl.co", "vm-3").await;
    db.placectl(&["drain-vm", "vm-c"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = a.get("app2.repl.co", "/", &[]).await;
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("5"));
            break;
        }
        assert!(Instant::now() < deadline, "a draining VM kept getting a new repl");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ls = db.placectl(&["ls"]);
    let line = ls
        .lines()
        .find(|l| l.trim_start().starts_with("use1-c"))
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(line.contains("weight 50") && line.contains("vms 0/1 active"), "{line}");
    assert!(ls.contains("live tombstones: 1"), "r4 moved (seed data): {ls}");

    // Pruning trims the change log but keeps the newest row; the edge, being
    // current, keeps following.
    let out = db.placectl(&["prune", "--keep", "0"]);
    assert!(out.starts_with("pruned "), "{out}");
    let left: i64 = db
        .client
        .query_one("SELECT count(*) FROM placement_changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
    db.client
        .execute("UPDATE vms SET state = 'active' WHERE id = 'vm-c'", &[])
        .await
        .unwrap();
    wait_served_by(&a, "app2.repl.co", "vm-3").await;
}

/// A read replica never delivers NOTIFY: the edge must still follow by
/// polling, and a pruned change (a version gap) must force a full reload.
#[tokio::test]
async fn without_notify_the_edge_polls_and_a_gap_forces_a_full_reload() {
    let (vm1, vm2, vm3) = vms().await;
    let db = PgDb::new(&pg_world(&vm1, &vm2, &vm3, dead_addr())).await;
    // Emulate a replica: the change log is written, no notification sent.
    let f: String = db
        .client
        .query_one("SELECT pg_get_functiondef('edgeplane_record_change'::regproc)", &[])
        .await
        .unwrap()
        .get(0);
    db.client
        .batch_execute(&f.replace("PERFORM pg_notify('edgeplane_placement', '');", ""))
        .await
        .unwrap();
    db.client
        .execute("UPDATE repls SET cluster = 'use1-a' WHERE id = 'r2'", &[])
        .await
        .unwrap();
    let a = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db.url, true).await;
    wait_served_by(&a, "app2.repl.co", "vm-1").await;

    // Polling alone carries the change.
    db.client
        .execute("INSERT INTO containers (repl_id, vm_id) VALUES ('r2', 'vm-2')", &[])
        .await
        .unwrap();
    wait_served_by(&a, "app2.repl.co", "vm-2").await;

    // A change whose log row is pruned before the edge reads it: a gap.
    db.client
        .batch_execute(
            "BEGIN; DELETE FROM containers WHERE repl_id = 'r2';
             DELETE FROM placement_changes WHERE version = (SELECT version FROM placement_version); COMMIT;",
        )
        .await
        .unwrap();
    wait_metric(
        &a,
        "edgeplane_sync_errors_total",
        &["reason=\"gap\""],
        |v| v >= 1.0,
        "no gap noticed",
    )
    .await;
    // The full reload brought the deleted container's effect anyway.
    wait_served_by(&a, "app2.repl.co", "vm-1").await;
}

#[tokio::test]
async fn without_database_or_last_known_good_the_edge_is_not_ready() {
    let dead = format!("postgres://postgres@{}/nowhere", dead_addr());
    let edge = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &dead, false).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(edge.admin, "admin", "/readyz", &[]).await.status, 503);
    let r = edge.get("app1.repl.co", "/", &[]).await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
}
