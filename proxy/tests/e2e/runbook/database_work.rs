//! "Database work". The runbook's section, executed.

use super::*;

/// "Moving a user off a hot cluster": `move-user` checks that the
/// target has room (its active VMs' capacity less the repls running
/// there) and says which repls would not fit, changing nothing; the
/// dry run says the same; `--force` moves anyway; after `add-vm` gives
/// the target room the same command moves without it.
#[tokio::test]
async fn moving_a_user_off_a_hot_cluster_checks_the_target_has_room() {
    let repls: Vec<_> = (0..3)
        .map(|i| {
            serde_json::json!({"id": format!("h{i}"), "slug": format!("hot{i}"), "owner": "u1",
                               "region": "us-east1", "cluster": "use1-a", "size": 2})
        })
        .collect();
    let seed = serde_json::json!({
        "regions": [{"name": "us-east1", "edge_addr": dead_addr().to_string()}],
        "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"},
                     {"name": "use1-b", "region": "us-east1", "state": "active"}],
        "vms": [{"id": "vm-a", "cluster": "use1-a", "addr": dead_addr().to_string(), "state": "active"},
                {"id": "vm-b", "cluster": "use1-b", "addr": dead_addr().to_string(), "state": "active",
                 "capacity": 5},
                {"id": "vm-b2", "cluster": "use1-b", "addr": dead_addr().to_string(), "state": "draining",
                 "capacity": 100}],
        "repls": repls,
        "containers": [{"repl_id": "h0", "vm_id": "vm-a"}],
    });
    let db = PgDb::new(&seed).await;
    let before = db.version().await;
    let refused = db.placectl_output(&["move-user", "u1", "--to", "use1-b"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    // Three repls of size 2 onto 5 free units (the draining VM does not count).
    assert!(
        stderr.contains("cluster use1-b has 5 units free for 6 needed; 1 repls would not fit: hot")
            && stderr.contains("nothing moved (--force moves anyway)"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(db.version().await, before, "nothing changed");

    let plan = db.placectl(&["move-user", "u1", "--to", "use1-b", "--dry-run"]);
    assert!(
        plan.contains("would not fit: cluster use1-b has 5 units free for 6 needed"),
        "{plan}"
    );
    assert_eq!(db.version().await, before);

    // Room: a second VM. The same command now moves without --force.
    db.placectl(&[
        "add-vm",
        "vm-b3",
        "--cluster",
        "use1-b",
        "--addr",
        "127.0.0.1:9",
        "--capacity",
        "4",
    ]);
    let out = db.placectl(&["move-user", "u1", "--to", "use1-b"]);
    assert!(out.contains("3 move in one transaction"), "{out}");
    assert!(!out.contains("would not fit") && !out.contains("--force"), "{out}");

    // Back to a cluster that is full on its own: --force moves, and says
    // what will be refused.
    db.client
        .execute("UPDATE vms SET capacity = 1 WHERE id = 'vm-a'", &[])
        .await
        .unwrap();
    let out = db.placectl(&["move-user", "u1", "--to", "use1-a", "--force"]);
    assert!(
        out.contains("moved with --force, but cluster use1-a has 1 units free for 6 needed; 3 repls would not fit"),
        "{out}"
    );
    assert!(out.contains("3 move in one transaction"), "{out}");
}
