//! The pure crates stay pure: `cargo tree` of `edgeplane-core` and
//! `edgeplane-placement` (normal dependencies) lists no Pingora, tokio or
//! database client. A dependency that drags one in fails here, not in
//! review.

use std::process::Command;

fn tree(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_pure_crates_link_no_pingora_tokio_or_database_client() {
    for package in ["edgeplane-core", "edgeplane-placement"] {
        let t = tree(package);
        assert!(t.lines().count() > 3, "{package}: cargo tree printed too little:\n{t}");
        for forbidden in [
            "pingora",
            "tokio",
            "postgres",
            "redis",
            "hickory",
            "edgeplane-control-sync",
        ] {
            let hits: Vec<&str> = t.lines().filter(|l| l.starts_with(forbidden)).collect();
            assert!(hits.is_empty(), "{package} depends on {hits:?}");
        }
    }
}
