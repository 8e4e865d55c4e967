//! "First look". The runbook's section, executed.

use super::*;

/// Items 2 and 4: `edgeplane route` and `snapshot dump` on a PostgreSQL
/// config read the database; with the database away they read the
/// last-known-good file and say so; with neither they fail in one line
/// instead of printing an empty table. `check` does not pretend to have
/// read the store.
#[tokio::test]
async fn route_and_dump_read_postgres_else_the_last_known_good_file() {
    let vm1 = FakeVm::start("vm-1");
    let db = PgDb::new(&world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr())).await;
    let edge = Edge::start_pg(tempfile::tempdir().unwrap(), "us-east1", &db.url, true).await;
    let dir = edge.dir.path();
    let version = db.version().await;

    let (code, out, err) = edgeplane(&["route", "-c", "edge.toml", "app1.repl.co"], dir);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.trim(), format!("placement: postgres (version {version})"));
    assert!(out.contains("running on vm \"vm-1\""), "{out}");
    let (code, out, err) = edgeplane(&["snapshot", "dump", "-c", "edge.toml"], dir);
    assert_eq!(code, 0, "{err}");
    let dumped: serde_json::Value = serde_json::from_str(&out).unwrap();
    let slugs: Vec<&str> = dumped["repls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["slug"].as_str())
        .collect();
    assert!(slugs.contains(&"app1") && slugs.contains(&"app2"), "{slugs:?}");
    let (code, out, _) = edgeplane(&["check", "-c", "edge.toml"], dir);
    assert_eq!(code, 0);
    assert!(
        out.contains("snapshot: not read by check (placement.source = \"postgres\"") && !out.contains("0 regions"),
        "{out}"
    );

    // The database away: the edge's last-known-good file, said so.
    eventually("the edge wrote its last-known-good file", 10, || {
        dir.join("lkg.json").exists()
    })
    .await;
    let config = std::fs::read_to_string(edge.config_path()).unwrap();
    let away = config.replace(&db.url, &format!("postgres://postgres@{}/gone", dead_addr()));
    assert_ne!(away, config);
    std::fs::write(dir.join("away.toml"), &away).unwrap();
    let (code, out, err) = edgeplane(&["route", "-c", "away.toml", "app1.repl.co"], dir);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.starts_with(&format!(
            "placement: last-known-good file lkg.json (version {version}, written "
        )) && err.contains("postgres is unreachable (connect: "),
        "{err}"
    );
    assert!(out.contains("running on vm \"vm-1\""), "{out}");
    let (code, out, _) = edgeplane(&["snapshot", "dump", "-c", "away.toml"], dir);
    assert_eq!(code, 0);
    assert!(out.contains("\"app1\""), "{out}");

    // Neither: one line where the operator looks, exit 1.
    let nothing = away.replace("lkg.json", "missing.json");
    std::fs::write(dir.join("nothing.toml"), &nothing).unwrap();
    let url_line = nothing.lines().position(|l| l.starts_with("postgres_url")).unwrap() + 1;
    for args in [
        vec!["route", "-c", "nothing.toml", "app1.repl.co"],
        vec!["snapshot", "dump", "-c", "nothing.toml"],
    ] {
        let (code, out, err) = edgeplane(&args, dir);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "nothing.toml:{url_line}: placement.postgres_url: cannot read the placement from postgres (connect: "
            )) && err.contains("nor the last-known-good file missing.json"),
            "{args:?}: {err}"
        );
    }
}
