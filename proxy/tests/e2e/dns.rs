//! `edgeplane dns` as a process, fed by PostgreSQL, asked by a real DNS
//! client (hickory-resolver) over UDP and over TCP: apps answer with their
//! home region's edge, unknown names are NXDOMAIN, and a transferred app's
//! answer changes with the one sync delta that moves it (with the short
//! TTL of a recently moved app).

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::harness::*;
use crate::postgres::PgDb;
use crate::{dead_addr, world};

pub(crate) type Client = hickory_resolver::Resolver<TokioRuntimeProvider>;

/// A client that asks only `server`, only over `tcp` or only over UDP.
pub(crate) fn client(server: SocketAddr, tcp: bool) -> Client {
    let mut c = if tcp {
        ConnectionConfig::tcp()
    } else {
        ConnectionConfig::udp()
    };
    c.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![c]);
    let mut b = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    b.options_mut().cache_size = 0;
    b.options_mut().attempts = 1;
    b.options_mut().timeout = Duration::from_secs(2);
    b.build().unwrap()
}

/// (address, ttl) of `name`'s A record, or the error text.
pub(crate) async fn ask(c: &Client, name: &str) -> Result<(IpAddr, u32), String> {
    let l = c
        .lookup(format!("{name}.").as_str(), RecordType::A)
        .await
        .map_err(|e| {
            if e.is_nx_domain() {
                "NXDOMAIN".to_string()
            } else {
                e.to_string()
            }
        })?;
    let r = l.answers().first().ok_or("no answer")?;
    match &r.data {
        RData::A(a) => Ok((IpAddr::V4(a.0), r.ttl)),
        other => Err(format!("not an A record: {other:?}")),
    }
}

/// `edgeplane dns` of us-east1 on `url`: the process and its address.
fn start_dns(url: &str) -> (Proc, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let started = start_dns_in(dir.path(), url, "");
    // The directory stays alive with the process (its files are in `dir`).
    std::mem::forget(dir);
    started
}

/// `edgeplane dns` with its config, last-known-good file (`lkg.json`, so
/// the responder's own is `lkg.dns.json`) and log (`dns.log`, at info) in
/// `dir`; `placement` adds lines to `[placement]`.
pub(crate) fn start_dns_in(dir: &std::path::Path, url: &str, placement: &str) -> (Proc, SocketAddr) {
    std::fs::write(dir.join("hop.secret"), HOP_SECRET).unwrap();
    let toml = format!(
        "[edge]\nregion = \"us-east1\"\ninstance_id = \"dns-test\"\ngrace_period_ms = 5000\n\n[placement]\nsource = \"postgres\"\n\
postgres_url = \"{url}\"\npoll_interval_ms = 100\nlast_known_good = \"lkg.json\"\n{placement}\n[security]\nhop_secret_file = \"hop.secret\"\n\n\
[dns]\nlisten = \"127.0.0.1:0\"\nttl_seconds = 60\nmoved_ttl_seconds = 5\n"
    );
    std::fs::write(dir.join("edge.toml"), toml).unwrap();
    let mut child = Command::new(edgeplane_bin())
        .args(["dns", "-c"])
        .arg(dir.join("edge.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("dns.log")).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = read_lines(&mut child, 1, |l| {
        l.strip_prefix("edgeplane: dns listening on udp ")
            .and_then(|r| r.split(' ').next())
            .and_then(|a| a.parse().ok())
    })[0];
    (Proc(child), addr)
}

/// Asks `name` until the answer is `want` (10 s).
async fn wait_answer(c: &Client, name: &str, want: (IpAddr, u32)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = ask(c, name).await;
        if got == Ok(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: still {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app that moves between two other regions gets the short TTL here
/// too (from the delta, and from a full load of a responder started after
/// the move), until its tombstone expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_between_two_other_regions_gets_the_short_ttl_from_every_region() {
    let mut w = world(
        dead_addr(),
        dead_addr(),
        dead_addr(),
        "127.0.0.1:8080".parse().unwrap(),
        "127.0.0.2:8443".parse().unwrap(),
    );
    w["regions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "eu-west1", "edge_addr": "127.0.0.3:8443"}));
    w["clusters"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "euw1-a", "region": "eu-west1", "state": "active"}));
    w["custom_domains"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"hostname": "shop.example.org", "repl_id": "r3"}));
    let db = PgDb::new(&w).await;
    let (_dns, addr) = start_dns(&db.url);
    let udp = client(addr, false);
    let (aps, euw) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
    wait_answer(&udp, "app3.repl.co", (aps, 60)).await;
    assert_eq!(ask(&udp, "shop.example.org").await, Ok((aps, 60)));

    // ap-south1 -> eu-west1: neither is this responder's region. The
    // fixture's euw1-a has no VM (the names matter here, not the room).
    let out = db.placectl(&["transfer", "r3", "--to", "euw1-a", "--force"]);
    assert!(out.contains("region eu-west1"), "{out}");
    wait_answer(&udp, "app3.repl.co", (euw, 5)).await;
    wait_answer(&udp, "shop.example.org", (euw, 5)).await;

    // A responder that starts now learns the move from its full load.
    let (_late, late_addr) = start_dns(&db.url);
    let late = client(late_addr, false);
    wait_answer(&late, "app3.repl.co", (euw, 5)).await;
    assert_eq!(ask(&late, "shop.example.org").await, Ok((euw, 5)));

    // Once the tombstone is gone (expired and pruned here), the normal TTL.
    db.client
        .execute("UPDATE tombstones SET expires_at = now() - interval '1 second'", &[])
        .await
        .unwrap();
    let (_after, after_addr) = start_dns(&db.url);
    wait_answer(&client(after_addr, false), "app3.repl.co", (euw, 60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_follow_a_transfer_within_one_delta_over_udp_and_tcp() {
    let b_edge: SocketAddr = "127.0.0.2:8443".parse().unwrap();
    let w = world(
        dead_addr(),
        dead_addr(),
        dead_addr(),
        "127.0.0.1:8080".parse().unwrap(),
        b_edge,
    );
    let db = PgDb::new(&w).await;
    let (_proc, addr) = start_dns(&db.url);
    let (udp, tcp) = (client(addr, false), client(addr, true));

    // First answers once the full load is in.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ask(&udp, "app1.repl.co").await.is_err() {
        assert!(Instant::now() < deadline, "no answer for app1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in [&udp, &tcp] {
        assert_eq!(ask(c, "app1.repl.co").await, Ok(("127.0.0.1".parse().unwrap(), 60)));
        assert_eq!(
            ask(c, "app3.repl.co").await,
            Ok(("127.0.0.2".parse().unwrap(), 60)),
            "every region's apps"
        );
        assert_eq!(
            ask(c, "www.example.com").await,
            Ok(("127.0.0.1".parse().unwrap(), 60)),
            "custom domain"
        );
        assert_eq!(
            ask(c, "moved.repl.co").await,
            Ok(("127.0.0.2".parse().unwrap(), 5)),
            "a live tombstone: short TTL"
        );
        assert_eq!(ask(c, "nope.repl.co").await, Err("NXDOMAIN".to_string()));
    }

    // The transfer is one transaction, so one delta: the next answer is the
    // new home region's edge, with the short TTL.
    db.placectl(&["transfer", "r1", "--to", "aps1-a"]);
    let moved_at = Instant::now();
    let mut got = ask(&udp, "app1.repl.co").await;
    while got.as_ref().map(|(ip, _)| ip.to_string()) != Ok("127.0.0.2".into()) {
        assert!(moved_at.elapsed() < Duration::from_secs(10), "still {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        got = ask(&udp, "app1.repl.co").await;
    }
    assert_eq!(got, Ok(("127.0.0.2".parse().unwrap(), 5)), "follows at once, short TTL");
    assert_eq!(ask(&tcp, "app1.repl.co").await, got, "the same over TCP");
    assert_eq!(ask(&udp, "www.example.com").await, got, "its custom domain too");
}
