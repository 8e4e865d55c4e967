//! `placectl move-user` against real edges on one PostgreSQL database
//! (issue 21): one transaction, one delta, tombstones, traffic following,
//! lazy moves, refusals, and 10,000 repls moved under load.

use std::time::{Duration, Instant};

use crate::dead_addr;
use crate::harness::*;
use crate::postgres::{pg_world, two_edges, vms, wait_served_by, PgDb};

/// Runs placectl expecting it to fail; returns its stderr.
fn placectl_fails(db: &PgDb, args: &[&str]) -> String {
    let out = db.placectl_output(args);
    assert!(
        !out.status.success(),
        "placectl {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The "placement version V" a placectl move printed.
fn printed_version(out: &str) -> u64 {
    out.rsplit("placement version ")
        .next()
        .and_then(|s| s.trim_end().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no version in {out:?}"))
}

/// u1 owns r1 (running on vm-1, use1-a) and r2 (not running, pinned to use1-a).
async fn owned_world() -> ((FakeVm, FakeVm, FakeVm), PgDb, Edge, Edge) {
    let (vm1, vm2, vm3) = vms().await;
    let (db, a, b) = two_edges(&pg_world(&vm1, &vm2, &vm3, dead_addr())).await;
    db.client
        .batch_execute("UPDATE repls SET owner = 'u1' WHERE id IN ('r1', 'r2'); UPDATE repls SET cluster = 'use1-a' WHERE id = 'r2'")
        .await
        .unwrap();
    wait_served_by(&a, "app1.repl.co", "vm-1").await;
    wait_served_by(&a, "app2.repl.co", "vm-1").await;
    ((vm1, vm2, vm3), db, a, b)
}

#[tokio::test]
async fn move_user_is_one_version_with_tombstones_and_its_refusals_change_nothing() {
    let (_vms, db, a, _b) = owned_world().await;
    let before = db.version().await;

    let plan = db.placectl(&["move-user", "u1", "--to", "use1-b", "--dry-run"]);
    assert!(
        plan.contains("would: repl r1: moved use1-a -> use1-b (region us-east1)"),
        "{plan}"
    );
    assert!(plan.contains("would: repl r2: moved use1-a -> use1-b"), "{plan}");
    assert!(plan.contains("dry run: owner u1: 2 move (nothing changed)"), "{plan}");
    for (args, want) in [
        (
            vec!["move-user", "nobody", "--to", "use1-b"],
            "owner \"nobody\" has no repls",
        ),
        (vec!["move-user", "u1", "--to", "use1-z"], "no cluster \"use1-z\""),
        (vec!["move-user", "u1", "--region", "mars"], "no region \"mars\""),
        (vec!["move-user", "u1"], "give one of --to CLUSTER or --region REGION"),
    ] {
        let err = placectl_fails(&db, &args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    db.client
        .execute("UPDATE clusters SET state = 'draining' WHERE name = 'aps1-a'", &[])
        .await
        .unwrap();
    let before = before + 1;
    let err = placectl_fails(&db, &["move-user", "u1", "--to", "aps1-a"]);
    assert!(err.contains("cluster \"aps1-a\" is draining"), "{err}");
    assert_eq!(db.version().await, before, "dry run and refusals wrote nothing");

    let snap = wait_snapshot(&a, |s| s["version"] == before).await;
    let deltas = snap["deltas_applied"].as_u64().unwrap();
    let out = db.placectl(&["move-user", "u1", "--to", "use1-b"]);
    assert!(out.contains("owner u1: 2 move in one transaction"), "{out}");
    let v = printed_version(&out);
    let snap = wait_snapshot(&a, |s| s["version"] == v).await;
    assert_eq!(
        snap["deltas_applied"].as_u64().unwrap(),
        deltas + 1,
        "one delta: {snap}"
    );
    wait_served_by(&a, "app1.repl.co", "vm-2").await;
    wait_served_by(&a, "app2.repl.co", "vm-2").await;
    let stones: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM tombstones WHERE from_cluster = 'use1-a' AND to_cluster = 'use1-b'
                AND expires_at > now() + interval '5 minutes' AND expires_at < now() + interval '7 minutes'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stones, 2, "one tombstone each, for TTL + margin (360 s)");
    assert!(snap["counts"]["tombstones"].as_u64().unwrap() >= 2, "{snap}");
}

#[tokio::test]
async fn lazy_move_keeps_the_running_container_and_a_region_move_follows_the_ring() {
    let (_vms, db, a, b) = owned_world().await;
    let out = db.placectl(&["move-user", "u1", "--to", "use1-b", "--lazy"]);
    assert!(out.contains("owner u1: 2 lazy transfer in one transaction"), "{out}");
    let v = printed_version(&out);
    wait_snapshot(&a, |s| s["version"] == v).await;
    // Running: stays on vm-1 until it stops. Not running: starts on the
    // target, and the VM is told where it came from.
    assert_eq!(a.get("app1.repl.co", "/", &[]).await.served_by(), Some("vm-1"));
    let r = a.get("app2.repl.co", "/", &[]).await;
    assert_eq!(r.served_by(), Some("vm-2"));
    assert_eq!(r.json()["headers"]["x-edgeplane-transfer-from"], "use1-a");

    // The user picks another continent: every repl goes to ap-south1's
    // ring cluster now; edge A follows the tombstones to edge B.
    let out = db.placectl(&["move-user", "u1", "--region", "ap-south1"]);
    assert!(out.contains("owner u1: 2 move in one transaction"), "{out}");
    wait_served_by(&a, "app1.repl.co", "vm-3").await;
    wait_served_by(&b, "app2.repl.co", "vm-3").await;
    let m = a.metrics().await;
    assert!(
        metric_value(&m, "edgeplane_tombstone_hits_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    let row = db
        .client
        .query_one("SELECT region, cluster, transfer_to FROM repls WHERE id = 'r2'", &[])
        .await
        .unwrap();
    let (region, cluster, transfer): (String, Option<String>, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (region.as_str(), cluster, transfer),
        ("ap-south1", None, None),
        "left to the ring"
    );
}

#[tokio::test]
async fn moving_ten_thousand_repls_is_one_delta_and_no_request_fails() {
    let (_vms, db, a, _b) = owned_world().await;
    // 10,000 running repls of one user on vm-1 (use1-a).
    db.client
        .batch_execute(
            "INSERT INTO repls (id, slug, owner, region, cluster)
               SELECT 'h' || i, 'hot' || i, 'hot', 'us-east1', 'use1-a' FROM generate_series(1, 10000) i;
             INSERT INTO containers (repl_id, vm_id) SELECT 'h' || i, 'vm-1' FROM generate_series(1, 10000) i;",
        )
        .await
        .unwrap();
    let before = db.version().await;
    let snap = wait_snapshot(&a, |s| s["version"] == before).await;
    let deltas = snap["deltas_applied"].as_u64().unwrap();
    wait_served_by(&a, "hot1.repl.co", "vm-1").await;
    let load = Load::start(a.proxy, "hot1.repl.co", 4);
    let load2 = Load::start(a.proxy, "hot9999.repl.co", 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // use1-b's one VM holds 100 of the 10,000: the room check would refuse
    // (moving_a_user::the_target_must_have_room); this test is about the delta.
    let out = db.placectl(&["move-user", "hot", "--to", "use1-b", "--force"]);
    let committed = Instant::now();
    assert!(out.contains("owner hot: 10000 move in one transaction"), "{out}");
    let v = printed_version(&out);
    let snap = wait_snapshot(&a, |s| s["version"] == v).await;
    eprintln!(
        "move-user of 10,000 repls: commit to publish <= {} ms (debug build; placectl exit to /debug/snapshot)",
        committed.elapsed().as_millis()
    );
    assert_eq!(
        snap["deltas_applied"].as_u64().unwrap(),
        deltas + 1,
        "30,000 change rows in one delta, no full reload: {snap}"
    );
    wait_served_by(&a, "hot1.repl.co", "vm-2").await;
    wait_served_by(&a, "hot9999.repl.co", "vm-2").await;
    let (ok, failed) = load.stop().await;
    let (ok2, failed2) = load2.stop().await;
    assert!(ok > 0 && ok2 > 0);
    assert_eq!((failed, failed2), (0, 0), "no request failed during the move");
    let m = a.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_sync_errors_total", &["gap"]).unwrap_or(0.0),
        0.0,
        "no full reload: {m}"
    );
}

#[tokio::test]
async fn versions_stay_gap_free_and_in_commit_order_with_many_writers_and_savepoints() {
    let db = PgDb::new(&crate::world(
        dead_addr(),
        dead_addr(),
        dead_addr(),
        dead_addr(),
        dead_addr(),
    ))
    .await;
    let before = db.version().await;
    // Four writers, each 40 transactions of 1-5 changes; every third one
    // also makes a change in a savepoint it rolls back (first or last).
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let c = crate::postgres::connect(&url).await;
                for i in 0..40 {
                    let n = i % 5 + 1;
                    let mut sql = String::from("BEGIN;");
                    if i % 3 == 0 {
                        sql += &format!("SAVEPOINT s; INSERT INTO regions VALUES ('gone-{w}-{i}', '1.2.3.4:1'); ROLLBACK TO SAVEPOINT s;");
                    }
                    sql += &format!(
                        "INSERT INTO regions SELECT 'w{w}-{i}-' || k, '1.2.3.4:1' FROM generate_series(1, {n}) k;"
                    );
                    if i % 3 == 1 {
                        sql += &format!("SAVEPOINT s; UPDATE regions SET edge_addr = '9.9.9.9:9' WHERE name LIKE 'w{w}-{i}-%'; ROLLBACK TO SAVEPOINT s;");
                    }
                    sql += "COMMIT;";
                    c.batch_execute(&sql).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let row = db
        .client
        .query_one(
            &format!(
                "SELECT count(*), min(version), max(version), (SELECT version FROM placement_version),
                        (SELECT count(*) FROM (SELECT txid FROM placement_changes WHERE version > {before}
                          GROUP BY txid HAVING max(version) - min(version) + 1 <> count(*)) t),
                        count(*) FILTER (WHERE row->>'name' LIKE 'gone-%')
                   FROM placement_changes WHERE version > {before}"
            ),
            &[],
        )
        .await
        .unwrap();
    let (n, min, max, committed, split, gone): (i64, i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
    // 4 writers x (8 transactions of each size 1..=5) = 480 changes.
    assert_eq!(n, 480);
    assert_eq!((min, max), (before + 1, before + 480), "gap-free");
    assert_eq!(committed, max, "placement_version holds the last committed version");
    assert_eq!(split, 0, "each transaction's versions are contiguous");
    assert_eq!(gone, 0, "rolled-back savepoints left no change rows");
}
