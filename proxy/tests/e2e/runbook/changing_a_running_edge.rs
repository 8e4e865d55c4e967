//! "Changing a running edge". The runbook's section, executed.

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
        lines[0].starts_with("edgeplane: --upgrade: no running edge to take over: ") && lines[0].contains("nobody.pid"),
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
