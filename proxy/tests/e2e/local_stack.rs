//! `scripts/local-stack.sh`, the two-region demo, run as a test: it starts
//! PostgreSQL and Redis if absent, four fake VMs and two edges, seeds the
//! control plane with placectl and walks through a cross-region transfer,
//! checking every step itself. This test checks that it ran to the end and
//! that each of its checks was reached.

use std::process::Command;

#[test]
fn local_stack_walk_through_passes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = crate::harness::edgeplane_bin().parent().unwrap().to_path_buf();
    let out = Command::new(root.join("scripts/local-stack.sh"))
        .env("EDGEPLANE_BIN_DIR", &bin_dir)
        .output()
        .expect("run scripts/local-stack.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "local-stack failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("local-stack: all checks passed"), "{stdout}");
    for want in [
        "ok   hello.repl.co via us-east1: the VM that runs it: 200 vm-use1-1",
        "ok   hello.repl.co via ap-south1: one hop to its home region: 200 vm-use1-1",
        "ok   fresh.repl.co (not running): picked by the balancer: 200 vm-use1-",
        "placectl: repl r-hello: moved use1-a -> aps1-a (region ap-south1)",
        "ok   hello.repl.co via us-east1 (old region): tombstone forward: 200 vm-aps1-",
        "(tombstone, hop 1)",
        "ok   us-east1 tombstone hits: 1",
        "<td>hello.repl.co</td><td>ap-south1</td><td>tombstone</td>",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches("\n   ok   ").count(), 16, "every check ran:\n{stdout}");
}
