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

/// "Changing a running edge".
mod changing_a_running_edge {
    use super::*;

    /// "Changing a running edge", new binary: `edgeplane serve -c FILE
    /// --upgrade` beside the running edge is the whole procedure. Under load
    /// (a new connection per request) no request fails, the pid file names the
    /// new process, and the old one stops accepting as it hands over: its
    /// access log has no request accepted after that moment beyond the few in
    /// flight, and it exits by itself.
    #[tokio::test]
    async fn upgrade_is_one_command_under_load() {
        let vm1 = FakeVm::start("vm-1");
        let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
        let edge = Edge::start_opts(
            tempfile::tempdir().unwrap(),
            "us-east1",
            &snap,
            &EdgeOpts {
                edge: "grace_period_ms = 5000",
                limits: "[log]\naccess_log_sample = 1.0",
                json_log: true,
                ..Default::default()
            },
        )
        .await;
        edge.pin_ports();
        assert_eq!(
            pid_in(&edge),
            edge.pid() as u32,
            "the foreground edge writes its pid file"
        );
        let load = Load::start(edge.proxy, "app1.repl.co", 4);
        eventually("load flows", 10, || load.ok() > 50).await;

        let mut new = spawn_upgrade(&edge.config_path());
        let new_pid = new.id();
        let printed = tokio::task::spawn_blocking(move || {
            let lines = read_lines(&mut new, 1, |l| {
                l.strip_prefix("edgeplane: proxy listening on ").map(str::to_string)
            });
            (new, lines)
        })
        .await
        .unwrap();
        let (new, lines) = printed;
        let new = Proc(new);
        assert_eq!(lines[0], edge.proxy.to_string());
        let mut old = edge.proc;
        let status = exits_within(&mut old.0, 15, "the old edge").await;
        assert!(status.success(), "the old edge exits 0 after its drain: {status}");
        let before = load.ok();
        eventually("the new edge serves", 10, || load.ok() > before + 50).await;
        let (ok, failed) = load.stop().await;
        println!("runbook upgrade: {ok} requests ok, {failed} failed");
        assert_eq!(failed, 0, "requests failed during the upgrade");
        let pid: u32 = std::fs::read_to_string(edge.dir.path().join("edge.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, new_pid, "the pid file names the new process");

        // The old process's log: the hand-over, then only what was in flight.
        let log = std::fs::read_to_string(edge.dir.path().join("edge.log")).unwrap();
        let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let handed = lines
            .iter()
            .position(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("upgrade: listeners handed to the new process"))
            })
            .expect("the old edge logs the hand-over");
        let after = lines[handed..]
            .iter()
            .filter(|l| l["target"] == "edgeplane::access")
            .count();
        println!("runbook upgrade: the old edge served {after} requests after handing over");
        assert!(
            after <= 8,
            "the old edge kept accepting after the hand-over: {after} requests"
        );
        drop(new);
    }

    /// "Changing a running edge", new binary, when there is nothing to take
    /// over: one clear line and exit 1 at once (not Pingora's 5 s of retries
    /// and two ERROR lines). And a running edge sent SIGQUIT with no new
    /// process waiting keeps serving, saying so once.
    #[tokio::test]
    async fn upgrade_with_nothing_to_take_over_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let vm1 = FakeVm::start("vm-1");
        let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
        let edge = Edge::start_opts(
            dir,
            "us-east1",
            &snap,
            &EdgeOpts {
                json_log: true,
                ..Default::default()
            },
        )
        .await;
        // Another config beside it, with a pid file no edge wrote.
        let other = edge.dir.path().join("other.toml");
        std::fs::write(
            &other,
            std::fs::read_to_string(edge.config_path())
                .unwrap()
                .replace("pid_file = \"edge.pid\"", "pid_file = \"nobody.pid\""),
        )
        .unwrap();
        let started = Instant::now();
        let (code, _, stderr) = edgeplane(&["serve", "-c", "other.toml", "--upgrade"], edge.dir.path());
        assert_eq!(code, 1, "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].starts_with("edgeplane: --upgrade: no running edge to take over: ")
                && lines[0].contains("nobody.pid"),
            "{stderr}"
        );

        signal(edge.pid(), "-QUIT");
        eventually("the refusal is logged", 15, || {
            edge.log_lines().iter().any(|l| {
                l["level"] == "WARN"
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("upgrade: SIGQUIT, but no new process took the listeners"))
            })
        })
        .await;
        assert_eq!(edge.get("app1.repl.co", "/", &[]).await.status, 200, "still serving");
        let errors: Vec<_> = edge.log_lines().into_iter().filter(|l| l["level"] == "ERROR").collect();
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// "Changing a running edge" under systemd: the same command, run outside
    /// the service (no NOTIFY_SOCKET), asks the service's edge (SIGUSR2) to
    /// start the new binary inside it; that one takes over and tells systemd
    /// (here: a socket the test reads, as systemd's notify socket) that it is
    /// the main process now. Requests keep being answered.
    #[tokio::test]
    async fn upgrade_under_systemd_runs_inside_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let vm1 = FakeVm::start("vm-1");
        let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
        let notify_env = notify_path.display().to_string();
        let env = [("NOTIFY_SOCKET", notify_env.as_str())];
        let edge = Edge::start_opts(
            dir,
            "us-east1",
            &snap,
            &EdgeOpts {
                edge: "grace_period_ms = 3000",
                env: &env,
                ..Default::default()
            },
        )
        .await;
        edge.pin_ports();
        let recv = |notify: &std::os::unix::net::UnixDatagram| {
            let mut buf = [0u8; 512];
            let n = notify.recv(&mut buf).expect("a notification");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let old_pid = edge.pid() as u32;
        assert_eq!(
            recv(&notify),
            format!("MAINPID={old_pid}\nREADY=1"),
            "the service's edge says it is ready"
        );
        let load = Load::start(edge.proxy, "app1.repl.co", 2);

        let cfg = edge.config_path().display().to_string();
        let (code, stdout, stderr) = tokio::task::spawn_blocking({
            let dir = edge.dir.path().to_path_buf();
            move || edgeplane(&["serve", "-c", &cfg, "--upgrade"], &dir)
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{stdout}{stderr}");
        let new_pid = pid_in(&edge);
        assert_ne!(new_pid, old_pid);
        // The successor is the old edge's child, not ours: stopped by pid,
        // also when an assertion below fails.
        let _successor = StopOnDrop(new_pid);
        assert!(
            stdout.contains(&format!("pid {old_pid} handed its listeners to pid {new_pid}")),
            "{stdout}"
        );
        let said = recv(&notify);
        assert_eq!(
            said,
            format!("MAINPID={new_pid}\nREADY=1"),
            "the successor tells systemd"
        );
        // The old process does not say STOPPING (that would stop the unit).
        notify.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 64];
        assert!(notify.recv(&mut buf).is_err(), "nothing more to systemd");
        let mut old = edge.proc;
        exits_within(&mut old.0, 15, "the old edge").await;
        let before = load.ok();
        eventually("the successor serves", 10, || load.ok() > before + 20).await;
        let (ok, failed) = load.stop().await;
        assert_eq!(failed, 0, "{ok} ok");
    }

    /// "Changing a running edge", certificates: a replacement pair that does
    /// not load (its key overwritten with garbage) is counted and logged, and
    /// the certificate it was meant to replace keeps serving: HTTPS for every
    /// `*.repl.co` app still answers with the old certificate.
    #[tokio::test]
    async fn a_broken_replacement_certificate_keeps_the_old_one() {
        let vm1 = FakeVm::start("vm-1");
        let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
        let dir = tempfile::tempdir().unwrap();
        let der = write_repl_co_cert(dir.path());
        let edge = Edge::start_opts(
            dir,
            "us-east1",
            &snap,
            &EdgeOpts {
                tls: Some("listen = [\"127.0.0.1:0\"]\ncerts_dir = \"certs\"\nreload_interval_ms = 100"),
                ..Default::default()
            },
        )
        .await;
        let https = edge.https.unwrap();
        let (r, cert) = crate::tls::https(https, "app1.repl.co", std::slice::from_ref(&der), "/")
            .await
            .unwrap();
        assert_eq!((r.status, &cert), (200, &der));
        std::fs::write(edge.dir.path().join("certs/repl.co.key"), "garbage\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric_with(&edge.metrics().await, "edgeplane_tls_reload_errors_total", &[]) != Some(1.0) {
            assert!(Instant::now() < deadline, "the broken key was never counted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let metrics = edge.metrics().await;
        assert_eq!(metric_with(&metrics, "edgeplane_tls_certificates", &[]), Some(1.0));
        for host in ["app1.repl.co", "app2.repl.co"] {
            let (r, cert) = crate::tls::https(https, host, std::slice::from_ref(&der), "/")
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            assert!(
                r.status == 200 || r.status == 404 || r.status == 502,
                "{host}: {}",
                r.status
            );
            assert_eq!(cert, der, "{host} is served the old certificate");
        }
    }

    /// "Changing a running edge", restart-only keys: the edge's list
    /// (`/debug/config`) is the config code's, and a reload that changes one
    /// of them (`dns.moved_ttl_seconds`) names it and keeps the running value.
    #[tokio::test]
    async fn restart_only_keys_are_one_list() {
        let vm1 = FakeVm::start("vm-1");
        let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
        let edge = Edge::start("us-east1", &snap, "").await;
        let cfg = get(edge.admin, "admin", "/debug/config", &[]).await.json();
        let listed: Vec<&str> = cfg["restart_only"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let code: Vec<&str> = edgeplane_config::reload::restart_only_keys().collect();
        assert_eq!(listed, code);
        let path = edge.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\n[dns]\nmoved_ttl_seconds = 9\n")).unwrap();
        let r = edge.admin_post("/config/reload").await;
        assert_eq!(r.status, 200, "{}", r.body_str());
        let answer = r.json();
        assert_eq!(answer["needs_restart"], serde_json::json!(["dns"]), "{answer}");
        let metrics = edge.metrics().await;
        assert_eq!(
            metric_with(&metrics, "edgeplane_config_pending_restart_keys", &[]),
            Some(1.0)
        );
    }
}

/// "Alerts".
mod alerts {
    use super::*;

    /// "Alerts", sync and snapshot-age: a file-sourced edge has no database,
    /// so neither sync alert may page for it. Its real /metrics, held for 30
    /// minutes of an unchanged file, fire nothing in `promtool test rules`.
    #[tokio::test]
    async fn sync_alerts_do_not_page_for_a_file_sourced_edge() {
        let vm1 = FakeVm::start("vm-1");
        let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
        let edge = Edge::start("us-east1", &snap, "").await;
        let metrics = edge.metrics().await;
        let series = |name: &str| -> Vec<(String, f64)> {
            metrics
                .lines()
                .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
                .map(|l| {
                    let (s, v) = l.rsplit_once(' ').unwrap();
                    (s.to_string(), v.parse().unwrap())
                })
                .collect()
        };
        let mut input = String::new();
        for name in [
            "edgeplane_sync_connected",
            "edgeplane_placement_serving",
            "edgeplane_snapshot_age_seconds",
        ] {
            let found = series(name);
            assert!(!found.is_empty(), "a fresh file edge exports {name}");
            for (s, v) in found {
                // promtool wants the instance label a scrape would add.
                let s = match s.split_once('{') {
                    Some((n, rest)) => format!("{n}{{instance=\"file-edge\",{rest}"),
                    None => format!("{s}{{instance=\"file-edge\"}}"),
                };
                let values = if name == "edgeplane_snapshot_age_seconds" {
                    format!("{v}+60x40")
                } else {
                    format!("{v}x40")
                };
                input.push_str(&format!("      - series: '{s}'\n        values: '{values}'\n"));
            }
        }
        assert!(input.contains("source=\"file\""), "{input}");
        let rules =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/edgeplane-alerts.yml");
        let mut test = format!(
            "rule_files:\n  - {}\nevaluation_interval: 30s\ntests:\n  - interval: 1m\n    input_series:\n{input}",
            rules.display()
        );
        test.push_str("    alert_rule_test:\n");
        for alert in ["EdgeplaneSyncDisconnected", "EdgeplaneSnapshotOld"] {
            test.push_str(&format!(
                "      - eval_time: 30m\n        alertname: {alert}\n        exp_alerts: []\n"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file-edge.test.yml"), test).unwrap();
        let out = Command::new("promtool")
            .args(["test", "rules", "file-edge.test.yml"])
            .current_dir(dir.path())
            .output()
            .expect("promtool (scripts/setup.sh installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
    }

    /// "Alerts", edge-down: an edge that does not start printed
    /// `file:line: key: message` — one line, naming the file that holds the
    /// error and its line — for every kind of bad input the runbook names.
    #[test]
    fn edge_down_every_start_error_is_file_line_key_message() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good_snap =
            serde_json::to_string_pretty(&world(dead_addr(), dead_addr(), dead_addr(), dead_addr(), dead_addr()))
                .unwrap();
        std::fs::write(d.join("snapshot.json"), &good_snap).unwrap();
        std::fs::write(d.join("hop.secret"), HOP_SECRET).unwrap();
        let config = |region: &str, file: &str| {
            format!(
                "[edge]\nregion = \"{region}\"\nlisten = [\"127.0.0.1:0\"]\n\n[placement]\nfile = \"{file}\"\n\n\
                 [security]\nhop_secret_file = \"hop.secret\"\n"
            )
        };
        std::fs::write(d.join("unknown-region.toml"), config("nowhere", "snapshot.json")).unwrap();
        std::fs::write(d.join("no-snapshot.toml"), config("us-east1", "missing.json")).unwrap();
        // A duplicate slug on the snapshot's line 14 or so: found by its row.
        let mut bad: serde_json::Value = serde_json::from_str(&good_snap).unwrap();
        let first_slug = bad["repls"][0]["slug"].clone();
        bad["repls"][1]["slug"] = first_slug;
        let bad_text = serde_json::to_string_pretty(&bad).unwrap();
        std::fs::write(d.join("dup.json"), &bad_text).unwrap();
        std::fs::write(d.join("dup-slug.toml"), config("us-east1", "dup.json")).unwrap();
        std::fs::write(d.join("broken.json"), "{\"regions\": [\n  {\"name\": \"us-east1\",\n").unwrap();
        std::fs::write(d.join("broken-json.toml"), config("us-east1", "broken.json")).unwrap();
        std::fs::write(d.join("syntax.toml"), "[edge\nregion = \"us-east1\"\n").unwrap();
        let repls_line = bad_text.lines().position(|l| l.contains("\"repls\"")).unwrap() + 1;
        let second_row = bad_text
            .lines()
            .enumerate()
            .skip(repls_line)
            .filter(|(_, l)| l.trim() == "{")
            .nth(1)
            .map(|(i, _)| i + 1)
            .unwrap();
        for (args, want) in [
            (
                vec!["check", "-c", "nosuch.toml"],
                "nosuch.toml:1: -: cannot read the config file".to_string(),
            ),
            (
                vec!["check", "-c", "syntax.toml"],
                "syntax.toml:1: edge: invalid table header".to_string(),
            ),
            (
                vec!["check", "-c", "unknown-region.toml"],
                "unknown-region.toml:2: edge.region: region \"nowhere\"".to_string(),
            ),
            (
                vec!["check", "-c", "no-snapshot.toml"],
                "no-snapshot.toml:6: placement.file: cannot read".to_string(),
            ),
            (
                vec!["check", "-c", "dup-slug.toml"],
                format!("dup.json:{second_row}: repls[1]: slug"),
            ),
            (
                vec!["check", "-c", "broken-json.toml"],
                "broken.json:3: -: EOF while parsing".to_string(),
            ),
            (
                vec!["serve", "-c", "dup-slug.toml"],
                format!("dup.json:{second_row}: repls[1]: slug"),
            ),
        ] {
            let (code, _, stderr) = edgeplane(&args, d);
            assert_eq!(code, 1, "{args:?}: {stderr}");
            let last = stderr.lines().last().unwrap_or_default();
            assert!(last.starts_with(&want), "{args:?}: want {want:?}..., got:\n{stderr}");
            let lines_not_logs: Vec<_> = stderr.lines().filter(|l| !l.contains(" ERROR ")).collect();
            assert_eq!(lines_not_logs.len(), 1, "{args:?}: one line:\n{stderr}");
        }
    }

    /// "Alerts", cluster-full, the relief it names: `placectl add-cluster`
    /// gives a full region no VM-less cluster that would refuse its share
    /// of new repls (`no_usable_vm`); the cluster takes repls once
    /// `placectl add-vm` gives it a VM, and then new repls land there.
    #[tokio::test]
    async fn cluster_full_relief_is_add_cluster_then_add_vm() {
        let (full, fresh) = (FakeVm::start("vm-full"), FakeVm::start("vm-new"));
        full.control(serde_json::json!({"containers": 10, "units": 10})).await;
        fresh.control(serde_json::json!({"containers": 0, "units": 0})).await;
        let repls: Vec<_> = (0..16)
            .map(|i| serde_json::json!({"id": format!("n{i}"), "slug": format!("new{i}"), "region": "us-east1"}))
            .collect();
        let seed = serde_json::json!({
            "regions": [{"name": "us-east1", "edge_addr": dead_addr().to_string()}],
            "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"}],
            "vms": [{"id": "vm-full", "cluster": "use1-a", "addr": full.http.to_string(),
                     "metrics_addr": full.metrics.to_string(), "state": "active", "capacity": 10}],
            "repls": repls,
        });
        let db = PgDb::new(&seed).await;
        let edge = Edge::start_pg_opts(
            "us-east1",
            &db.url,
            &EdgeOpts {
                limits: HEALTH,
                ..Default::default()
            },
        )
        .await;
        let vm_of = |b: &serde_json::Value, id: &str| {
            b["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["vms"].as_array().into_iter().flatten())
                .find(|v| v["id"] == id)
                .cloned()
                .unwrap_or_default()
        };
        edge.wait_balancer("vm-full sampled full", |b| {
            vm_of(b, "vm-full")["not_candidate"] == "full"
        })
        .await;
        let route = |host: String| {
            let admin = edge.admin;
            async move {
                get(admin, "admin", &format!("/debug/route?host={host}"), &[])
                    .await
                    .body_str()
            }
        };
        for i in 0..16 {
            assert_eq!(edge.get(&format!("new{i}.repl.co"), "/", &[]).await.status, 503);
        }

        let out = db.placectl(&["add-cluster", "use1-c", "--region", "us-east1"]);
        assert!(
            out.contains("cluster use1-c added to us-east1")
                && out.contains("it takes no new repls until it has an active VM: placectl add-vm"),
            "{out}"
        );
        wait_db_version(&edge, &db).await;
        for i in 0..16 {
            let text = route(format!("new{i}.repl.co")).await;
            assert!(
                text.contains("-> cluster \"use1-a\"") && !text.contains("use1-c"),
                "the ring gives new{i} to use1-a, never to the VM-less use1-c:\n{text}"
            );
        }

        let (addr, metrics) = (fresh.http.to_string(), fresh.metrics.to_string());
        let out = db.placectl(&[
            "add-vm",
            "vm-new",
            "--cluster",
            "use1-c",
            "--addr",
            &addr,
            "--metrics-addr",
            &metrics,
        ]);
        assert!(
            out.contains("vm vm-new (active, capacity 100) added to cluster use1-c in us-east1"),
            "{out}"
        );
        edge.wait_balancer("vm-new sampled", |b| {
            let v = vm_of(b, "vm-new");
            v["units_source"] == "conman_units_reserved" && v["not_candidate"].is_null()
        })
        .await;
        let mut landed = 0;
        for i in 0..16 {
            let r = edge.get(&format!("new{i}.repl.co"), "/", &[]).await;
            match r.status {
                200 => {
                    assert_eq!(r.served_by(), Some("vm-new"), "new{i}");
                    landed += 1;
                }
                503 => {
                    let text = route(format!("new{i}.repl.co")).await;
                    // The ring's other cluster, full: refused for room, not for VMs.
                    assert!(
                        text.contains("-> cluster \"use1-a\"") && !text.contains("has no active VM"),
                        "new{i}: {text}"
                    );
                }
                s => panic!("new{i}: {s}"),
            }
        }
        assert!(landed >= 3, "use1-c took its share of the ring: {landed} of 16");
        let m = edge.metrics().await;
        assert!(metric_value(&m, "edgeplane_balancer_cluster_full_total").unwrap_or(0.0) >= 16.0);
    }
}

/// "Database work".
mod database_work {
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
}

/// "First look".
mod first_look {
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
}

/// "Names and DNS".
mod names_and_dns {
    use super::*;
    use crate::dns::{ask, client, start_dns_in};

    /// `edgeplane dns` stops as the edge does: SIGHUP (a reload it cannot
    /// do) is said and survived; SIGTERM stops answering, closes an idle
    /// TCP client at once, writes the responder's own last-known-good file
    /// (`<last_known_good>` with `.dns.json`) and exits 0, without an
    /// ERROR line.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_responder_stops_like_the_edge_and_survives_a_reload_signal() {
        let db = PgDb::new(&world(dead_addr(), dead_addr(), dead_addr(), dead_addr(), dead_addr())).await;
        let dir = tempfile::tempdir().unwrap();
        // An interval no test waits for: only the stop writes a change.
        let (mut dns, addr) = start_dns_in(dir.path(), &db.url, "last_known_good_interval_ms = 600000\n");
        let udp = client(addr, false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while ask(&udp, "app1.repl.co").await.is_err() {
            assert!(Instant::now() < deadline, "the responder never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lkg = dir.path().join("lkg.dns.json");
        let written_version = || {
            std::fs::read(&lkg)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["version"].as_i64())
        };
        eventually("the first last-known-good write", 10, || written_version().is_some()).await;
        let log = || std::fs::read_to_string(dir.path().join("dns.log")).unwrap();

        signal(dns.0.id() as i32, "-HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log().contains("dns: SIGHUP: the responder reads its config only at start") {
            assert!(Instant::now() < deadline, "SIGHUP not acknowledged:\n{}", log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ask(&udp, "app1.repl.co").await.is_ok(), "still answering after SIGHUP");
        assert!(dns.0.try_wait().unwrap().is_none());

        // A change after that write: only the stop's flush can save it.
        db.client
            .execute(
                "UPDATE regions SET edge_addr = '127.0.0.9:8443' WHERE name = 'us-east1'",
                &[],
            )
            .await
            .unwrap();
        let want = db.version().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while ask(&udp, "app1.repl.co").await.map(|(ip, _)| ip.to_string()) != Ok("127.0.0.9".into()) {
            assert!(Instant::now() < deadline, "the change never reached the responder");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_ne!(
            written_version(),
            Some(want),
            "written early: the test would prove nothing"
        );
        // An idle TCP client must not hold the stop for the grace period.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stopped = Instant::now();
        signal(dns.0.id() as i32, "-TERM");
        let status = exits_within(&mut dns.0, 4, "the responder").await;
        assert!(status.success(), "{status:?}");
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "took {:?}: the idle TCP client held the stop",
            stopped.elapsed()
        );
        let text = log();
        assert_eq!(
            written_version(),
            Some(want),
            "the stop wrote the newest table:\n{text}"
        );
        assert!(
            text.contains("dns: SIGTERM: no longer answering new queries") && text.contains("dns: stopped"),
            "{text}"
        );
        assert!(!text.contains(" ERROR "), "{text}");
    }
}
