//! docs/operations.md, executed: each procedure of the runbook that can run
//! on one machine, done the way the runbook says, named after its section
//! (`<section>::<what it checks>`), so the next drift between the runbook
//! and the edge fails here.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::postgres::PgDb;
use crate::{dead_addr, world};

/// Health scrapes every 100 ms, so a VM's room is known at once.
const HEALTH: &str = "\n[health]\nscrape_interval_ms = 100\nscrape_timeout_ms = 100\nstale_after_ms = 5000\n";

/// Waits until `edge` serves the database's newest placement version.
async fn wait_db_version(edge: &Edge, db: &PgDb) {
    let want = db.version().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(edge.admin, "admin", "/debug/snapshot", &[]).await.json()["version"] != want {
        assert!(Instant::now() < deadline, "the edge never had version {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `edgeplane ARGS` to the end: (exit code, stdout, stderr).
fn edgeplane(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(edgeplane_bin())
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pid_in(edge: &Edge) -> u32 {
    std::fs::read_to_string(edge.dir.path().join("edge.pid"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Sends SIGINT to a process the test did not spawn when dropped.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        signal(self.0 as i32, "-INT");
    }
}

/// Waits for `child` to exit within `secs`.
async fn exits_within(child: &mut std::process::Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} did not exit within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

mod alerts;
mod changing_a_running_edge;
mod database_work;
mod first_look;
mod names_and_dns;
