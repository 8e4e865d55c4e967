//! The last-known-good file is never stale: an edge killed with SIGKILL
//! after a quiet interval, and one stopped with SIGTERM right after a
//! change, each restart with the database gone and serve the newest table
//! (a moved container, a new repl, a transfer and its tombstone), and say
//! so on `/debug/snapshot` and the status page.

use std::time::{Duration, Instant};

use crate::dead_addr;
use crate::harness::*;
use crate::postgres::{pg_world, vms, wait_served_by, PgDb};

/// The changes the issue saw lost: a container move (app2 starts on
/// vm-2), a new repl running on vm-1, a transfer of app1 to use1-b (vm-2)
/// with its tombstone. Each its own transaction; returns once `edge`
/// routes all of them.
async fn change_everything(db: &PgDb, edge: &Edge) {
    db.client
        .execute("INSERT INTO containers (repl_id, vm_id) VALUES ('r2', 'vm-2')", &[])
        .await
        .unwrap();
    db.client
        .batch_execute(
            "BEGIN;
             INSERT INTO repls (id, slug, region) VALUES ('r9', 'late', 'us-east1');
             INSERT INTO containers (repl_id, vm_id) VALUES ('r9', 'vm-1');
             COMMIT;",
        )
        .await
        .unwrap();
    db.placectl(&["transfer", "r1", "--to", "use1-b"]);
    wait_served_by(edge, "app2.repl.co", "vm-2").await;
    wait_served_by(edge, "late.repl.co", "vm-1").await;
    wait_served_by(edge, "app1.repl.co", "vm-2").await;
}

async fn snapshot(edge: &Edge) -> serde_json::Value {
    get(edge.admin, "admin", "/debug/snapshot", &[]).await.json()
}

/// Restarts an edge in `dir` (its last-known-good file) with no database
/// and checks it serves the changed world from the file.
async fn restart_without_database(dir: tempfile::TempDir, version: u64) {
    let dead = format!("postgres://postgres@{}/gone", dead_addr());
    let edge = Edge::start_pg(dir, "us-east1", &dead, true).await;
    for (host, vm) in [
        ("app2.repl.co", "vm-2"),
        ("late.repl.co", "vm-1"),
        ("app1.repl.co", "vm-2"),
    ] {
        let r = edge.get(host, "/", &[]).await;
        assert_eq!((r.status, r.served_by()), (200, Some(vm)), "{host}: {}", r.body_str());
    }
    let snap = snapshot(&edge).await;
    assert_eq!(snap["version"], version, "{snap}");
    let lkg = &snap["last_known_good"];
    assert_eq!(lkg["serving_from_file"], true, "{snap}");
    assert_eq!(lkg["started_from_version"], version, "{snap}");
    let age = lkg["started_from_age_s"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&age), "{snap}");
    let page = get(edge.admin, "admin", "/", &[]).await.body_str();
    assert!(
        page.contains(&format!("id=\"lkg\">serving file v{version}</b>")),
        "status page: {page}"
    );
}

/// An edge on a fresh database with this last-known-good interval, once it
/// wrote its first file; then every change of [`change_everything`].
/// Returns what the test holds and the version the changes reached.
async fn changed_after_first_write(interval_ms: u64) -> ((FakeVm, FakeVm, FakeVm), PgDb, Edge, u64) {
    let vms = vms().await;
    let db = PgDb::new(&pg_world(&vms.0, &vms.1, &vms.2, dead_addr())).await;
    let edge = Edge::start_pg_with(
        tempfile::tempdir().unwrap(),
        "us-east1",
        &db.url,
        &format!("last_known_good_interval_ms = {interval_ms}"),
        true,
    )
    .await;
    eventually("the first write", 10, || edge.dir.path().join("lkg.json").exists()).await;
    change_everything(&db, &edge).await;
    let version = snapshot(&edge).await["version"].as_u64().unwrap();
    (vms, db, edge, version)
}

#[tokio::test]
async fn an_edge_killed_after_a_quiet_interval_restarts_on_the_newest_table() {
    // The changes arrive within the interval of the first write, then
    // nothing more: only a trailing write can save them.
    let (_vms, _db, edge, version) = changed_after_first_write(1500).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = snapshot(&edge).await;
        if snap["last_known_good"]["written_version"] == version {
            break;
        }
        assert!(Instant::now() < deadline, "never written: {snap}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Edge { proc, dir, .. } = edge;
    drop(proc); // SIGKILL
    restart_without_database(dir, version).await;
}

#[tokio::test]
async fn sigterm_right_after_a_change_writes_it_before_the_edge_exits() {
    // An interval no test waits for: only the stop can write the change.
    let (_vms, _db, edge, version) = changed_after_first_write(600_000).await;
    assert_ne!(
        snapshot(&edge).await["last_known_good"]["written_version"],
        version,
        "written early: the test would prove nothing"
    );
    let Edge { mut proc, dir, .. } = edge;
    signal(proc.0.id() as i32, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    while proc.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the edge did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proc);
    restart_without_database(dir, version).await;
}
