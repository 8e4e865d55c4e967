//! A peer edge named by a host name (`regions.edge_addr = "edge-b.test:PORT"`)
//! is resolved in the background against a real DNS server (dnsmasq); when
//! its address changes, the edge follows without a failed request.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;
use crate::{dead_addr, free_addr};

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// dnsmasq answering from a hosts file with a 1 s TTL, nothing else.
struct Dnsmasq {
    proc: Proc,
    hosts: std::path::PathBuf,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn start(hosts: &str) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).unwrap();
        let addr = free_addr();
        let bin = ["/usr/sbin/dnsmasq", "dnsmasq"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("dnsmasq is needed (scripts/setup.sh installs dnsmasq-base)");
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-daemon",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local-ttl=1",
                "--pid-file",
            ])
            // As root, dnsmasq would drop to `nobody` and could no longer
            // read the hosts file in this test's private directory.
            .args(running_as_root().then_some("--user=root"))
            .arg(format!("--port={}", addr.port()))
            .arg(format!("--addn-hosts={}", file.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Dnsmasq {
            proc: Proc(child),
            hosts: file,
            addr,
            _dir: dir,
        }
    }

    /// Rewrites the hosts file and tells dnsmasq to read it again.
    fn set(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        signal(self.proc.0.id() as i32, "-HUP");
    }
}

/// Starts a peer edge of ap-south1 listening on `listen`, serving app3
/// from `vm`.
fn start_peer(listen: SocketAddr, vm: SocketAddr) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("hop.secret"), HOP_SECRET).unwrap();
    let snap = json!({
        "regions": [{"name": "us-east1", "edge_addr": dead_addr().to_string()},
                    {"name": "ap-south1", "edge_addr": listen.to_string()}],
        "clusters": [{"name": "aps1-a", "region": "ap-south1", "state": "active"}],
        "vms": [{"id": "vm-3", "cluster": "aps1-a", "addr": vm.to_string(), "state": "active"}],
        "repls": [{"id": "r3", "slug": "app3", "region": "ap-south1"}],
        "containers": [{"repl_id": "r3", "vm_id": "vm-3"}]
    });
    write_snapshot(&d.join("snapshot.json"), &snap);
    std::fs::write(
        d.join("edge.toml"),
        format!(
            "[edge]\nregion = \"ap-south1\"\ninstance_id = \"peer-{}\"\nlisten = [\"{listen}\"]\n\
admin_listen = \"127.0.0.1:0\"\npid_file = \"edge.pid\"\nupgrade_sock = \"edge.sock\"\ngrace_period_ms = 0\n\n\
[placement]\nfile = \"snapshot.json\"\n\n[security]\nhop_secret_file = \"hop.secret\"\n",
            listen.ip()
        ),
    )
    .unwrap();
    let (child, _) = spawn_edge(&d.join("edge.toml"), false, false);
    (Proc(child), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_edge_name_is_re_resolved_when_its_address_changes_without_dropping_requests() {
    let (vm_a, vm_b) = (FakeVm::start("behind-peer-1"), FakeVm::start("behind-peer-2"));
    // Two peer edges on the same port, one per loopback address.
    let port = free_addr().port();
    let (_p1, _d1) = start_peer(SocketAddr::from(([127, 0, 0, 1], port)), vm_a.http);
    let (_p2, _d2) = start_peer(SocketAddr::from(([127, 0, 0, 2], port)), vm_b.http);
    let dns = Dnsmasq::start("127.0.0.1 edge-b.test\n");

    let snap = json!({
        "regions": [{"name": "us-east1", "edge_addr": dead_addr().to_string()},
                    {"name": "ap-south1", "edge_addr": format!("edge-b.test:{port}")}],
        "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"},
                     {"name": "aps1-a", "region": "ap-south1", "state": "active"}],
        "repls": [{"id": "r3", "slug": "app3", "region": "ap-south1"}]
    });
    let edge = Edge::start(
        "us-east1",
        &snap,
        &format!(
            "\n[resolver]\nnameservers = [\"{}\"]\nmin_ttl_ms = 200\nretry_ms = 200\ntimeout_ms = 300\n",
            dns.addr
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = edge.get("app3.repl.co", "/", &[]).await;
        if r.served_by() == Some("behind-peer-1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never forwarded to the named peer: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = edge.metrics().await;
    assert_eq!(metric_value(&m, "edgeplane_resolver_names"), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "edgeplane_resolver_unresolved"), Some(0.0));

    // The peer moves to 127.0.0.2 under load.
    let load = Load::start(edge.proxy, "app3.repl.co", 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    dns.set("127.0.0.2 edge-b.test\n");
    let moved = Instant::now();
    loop {
        if edge.get("app3.repl.co", "/", &[]).await.served_by() == Some("behind-peer-2") {
            break;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(15),
            "the new address was never used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The DNS server goes away: the last good answer keeps serving.
    drop(dns);
    let gone = Instant::now();
    while metric_value(&edge.metrics().await, "edgeplane_resolver_errors_total") < Some(1.0) {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "the failed lookups were never counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        edge.get("app3.repl.co", "/", &[]).await.served_by(),
        Some("behind-peer-2")
    );
    let (ok, failed) = load.stop().await;
    assert!(ok > 50, "load ran: {ok}");
    assert_eq!(failed, 0, "no request failed across the change and the outage");
    let m = edge.metrics().await;
    assert!(metric_value(&m, "edgeplane_resolver_changes_total") >= Some(1.0), "{m}");
}
