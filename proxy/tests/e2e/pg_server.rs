//! PostgreSQL itself failing under a live, loaded edge: the server hung
//! (every process stopped with SIGSTOP) and the server killed (SIGKILL to
//! the postmaster and every backend) then restarted. Both run against a
//! private server started for the test ([`PrivatePg`]: `initdb` and
//! `postgres` in a temp dir, on an OS-chosen port) so the machine's shared
//! server, used by the other tests in parallel, is never touched.
//!
//! What must hold in both: no client request fails while the database is
//! away, the edge says it is disconnected (`edgeplane_sync_connected` 0 and
//! `edgeplane_sync_errors_total`), and a placement change made once the
//! server is back reaches traffic.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dead_addr;
use crate::harness::*;
use crate::postgres::{connect, pg_world, vms, wait_metric, wait_served_by, PgDb};

/// A PostgreSQL server of the test's own. Dropped: killed and removed.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Uid/gid to run as when the tests run as root (initdb refuses root).
    owner: Option<(u32, u32)>,
    postmaster: Option<Child>,
}

/// The newest installed server binaries (`EDGEPLANE_PG_BIN` overrides).
fn pg_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("EDGEPLANE_PG_BIN") {
        return d.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/setup.sh installs them)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("no initdb under /usr/lib/postgresql/*/bin").1
}

/// Uid and gid of the `postgres` account when we are root.
fn owner() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?;
    if uid != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs a postgres account to run the private server");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

impl PrivatePg {
    pub async fn start() -> PrivatePg {
        let dir = tempfile::tempdir().unwrap();
        let owner = owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let bin = pg_bin_dir();
        let out = as_owner(
            Command::new(bin.join("initdb")).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"]),
            owner,
        )
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = crate::free_addr().port();
        let mut pg = PrivatePg {
            dir,
            bin,
            port,
            owner,
            postmaster: None,
        };
        pg.run().await;
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the postmaster (again) on the same port and waits until it
    /// accepts sessions (crash recovery included).
    pub async fn run(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("server.log"))
            .unwrap();
        let child = as_owner(&mut Command::new(self.bin.join("postgres")), self.owner)
            .arg("-D")
            .arg(d.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(d)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.postmaster = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio_postgres::connect(&self.admin_url(), tokio_postgres::NoTls)
            .await
            .is_err()
        {
            if let Some(st) = self.postmaster.as_mut().unwrap().try_wait().unwrap() {
                panic!("private postgres exited with {st}; log in {}", d.display());
            }
            assert!(Instant::now() < deadline, "private postgres never accepted sessions");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every process of the server: the postmaster first.
    fn processes(&self) -> Vec<i32> {
        let pm = self.postmaster.as_ref().expect("server is running").id();
        let mut all = vec![pm as i32];
        all.extend(children_of(pm));
        all
    }

    /// Hangs the whole server: every process stopped, sockets left open.
    pub fn freeze(&self) {
        send(&self.processes(), "-STOP");
    }

    pub fn thaw(&self) {
        send(&self.processes(), "-CONT");
    }

    /// Kills the postmaster and every backend at once, as a crash would.
    pub fn kill(&mut self) {
        let procs = self.processes();
        send(&procs, "-KILL");
        let _ = self.postmaster.take().unwrap().wait();
        // Orphaned backends are reaped elsewhere; wait until they are gone
        // or zombies so the restart finds no live process on the data dir.
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &procs[1..] {
            while alive(*p) {
                assert!(Instant::now() < deadline, "backend {p} survived SIGKILL");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Signals every process of `pids` (one `kill`, so they stop together);
/// a backend that exited meanwhile is no error.
fn send(pids: &[i32], sig: &str) {
    let _ = Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(|p| p.to_string()))
        .stderr(Stdio::null())
        .status();
}

/// A process that exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if self.postmaster.is_some() {
            self.thaw();
            self.kill();
        }
    }
}

/// A private server, a database on it seeded with the standard world and
/// app2 pinned to vm-1, and an edge of us-east1 already serving from it.
async fn edge_on_private_pg(extra: &str) -> (PrivatePg, (FakeVm, FakeVm, FakeVm), PgDb, Edge) {
    let pg = PrivatePg::start().await;
    let (vm1, vm2, vm3) = vms().await;
    let db = PgDb::new_on(&pg.admin_url(), &pg_world(&vm1, &vm2, &vm3, dead_addr())).await;
    db.client
        .execute("UPDATE repls SET cluster = 'use1-a' WHERE id = 'r2'", &[])
        .await
        .unwrap();
    let edge = Edge::start_pg_with(tempfile::tempdir().unwrap(), "us-east1", &db.url, extra, true).await;
    wait_served_by(&edge, "app2.repl.co", "vm-1").await;
    (pg, (vm1, vm2, vm3), db, edge)
}

/// Waits until `load` has answered `more` further requests.
async fn load_goes_on(load: &Load, more: u64, what: &str) {
    let before = load.ok();
    eventually(what, 10, || load.ok() >= before + more).await;
}

/// Once the server answers again: a container row written now moves app2
/// to vm-2, the edge says connected, and `load` saw no failed request.
async fn catches_up_and_lost_nothing(edge: &Edge, client: &tokio_postgres::Client, load: Load, what: &str) {
    client
        .execute("INSERT INTO containers (repl_id, vm_id) VALUES ('r2', 'vm-2')", &[])
        .await
        .unwrap();
    wait_served_by(edge, "app2.repl.co", "vm-2").await;
    wait_metric(edge, "edgeplane_sync_connected", &[], |v| v == 1.0, "edge reconnected").await;
    let (ok, failed) = load.stop().await;
    println!("{what}: {ok} requests ok, {failed} failed");
    assert!(ok > 100, "too little load to judge: {ok}");
    assert_eq!(failed, 0, "requests failed ({what})");
}

#[tokio::test]
async fn postgres_killed_and_restarted_under_load_loses_no_request() {
    let _alone = CPU_HEAVY.lock().await;
    let (mut pg, _vms, db, edge) = edge_on_private_pg("").await;
    let load = Load::start(edge.proxy, "app1.repl.co", 4);
    load_goes_on(&load, 20, "load before the crash").await;

    pg.kill();
    wait_metric(
        &edge,
        "edgeplane_sync_connected",
        &[],
        |v| v == 0.0,
        "edge noticed the crash",
    )
    .await;
    load_goes_on(&load, 50, "load while the server is dead").await;
    // Placement keeps answering from the last table: app2 still on vm-1.
    let r = edge.get("app2.repl.co", "/", &[]).await;
    assert_eq!((r.status, r.served_by()), (200, Some("vm-1")));

    pg.run().await;
    // The test's own session died with the server.
    let client = connect(&db.url).await;
    catches_up_and_lost_nothing(&edge, &client, load, "postgres killed and restarted").await;
    let m = edge.metrics().await;
    let errors: f64 = ["query", "connect"]
        .iter()
        .filter_map(|r| metric_with(&m, "edgeplane_sync_errors_total", &[&format!("reason=\"{r}\"")]))
        .sum();
    assert!(errors >= 1.0, "the outage was not counted: {m}");
}

#[tokio::test]
async fn a_hung_postgres_is_dropped_and_the_edge_catches_up_when_it_answers() {
    // Without a time limit a stopped server would hold the sync forever
    // (TCP stays open); with it, the edge drops the connection and retries.
    let (pg, _vms, db, edge) = edge_on_private_pg("query_timeout_ms = 1000").await;
    let load = Load::start(edge.proxy, "app1.repl.co", 4);
    load_goes_on(&load, 20, "load before the hang").await;

    pg.freeze();
    wait_metric(
        &edge,
        "edgeplane_sync_errors_total",
        &["reason=\"timeout\""],
        |v| v >= 1.0,
        "the hung query was never given up",
    )
    .await;
    wait_metric(
        &edge,
        "edgeplane_sync_connected",
        &[],
        |v| v == 0.0,
        "edge says disconnected",
    )
    .await;
    // Reconnects meet a server that accepts TCP but never answers: connect
    // timeouts, still no effect on traffic.
    wait_metric(
        &edge,
        "edgeplane_sync_errors_total",
        &["reason=\"connect\""],
        |v| v >= 1.0,
        "reconnect to the hung server timed out",
    )
    .await;
    load_goes_on(&load, 50, "load while the server is hung").await;

    pg.thaw();
    catches_up_and_lost_nothing(&edge, &db.client, load, "postgres hung").await;
}
