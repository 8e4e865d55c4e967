//! The process as operators live with it (docs/contract.md §7): a log with
//! no ERROR line under healthy keep-alive load or misbehaving clients (what
//! is not the edge's fault is counted instead), an idle edge that exits at
//! once on SIGTERM, and SIGINT under load that exits within two seconds
//! with a log of bounded size. Every edge runs the shipped `threads = 2`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::harness::*;
use crate::{dead_addr, world};

/// An edge logging JSON at info over two healthy fake VMs.
async fn logged_edge(edge: &str) -> (Edge, FakeVm, FakeVm) {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let e = Edge::start_opts(
        tempfile::tempdir().unwrap(),
        "us-east1",
        &snap,
        &EdgeOpts {
            edge,
            json_log: true,
            ..Default::default()
        },
    )
    .await;
    (e, vm1, vm2)
}

/// `edgeplane-bench http-load`: closed-loop keep-alive load.
fn http_load(edge: &Edge, connections: usize, seconds: u64) -> Command {
    let hosts = edge.dir.path().join("hosts.txt");
    std::fs::write(&hosts, "app1.repl.co\napp2.repl.co\nwww.example.com\n").unwrap();
    let mut c = Command::new(bin("edgeplane-bench"));
    c.args(["http-load", "--target", &edge.proxy.to_string(), "--hosts-file"])
        .arg(&hosts)
        .args([
            "--connections",
            &connections.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .args(["--warmup-ms", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// The sum of every sample of `name` whose line holds all of `parts`.
pub fn metric_sum(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{')))
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn error_lines(edge: &Edge) -> Vec<serde_json::Value> {
    edge.log_lines().into_iter().filter(|l| l["level"] == "ERROR").collect()
}

async fn wait_exit(edge: &mut Edge, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if edge.proc.0.try_wait().unwrap().is_some() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "edge still running {limit:?} after the signal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn keep_alive_load_on_healthy_vms_logs_no_error_line() {
    let (edge, _vm1, _vm2) = logged_edge("").await;
    let out = tokio::task::spawn_blocking({
        let mut c = http_load(&edge, 64, 3);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "http-load failed");
    let m = edge.metrics().await;
    let served = metric_sum(&m, "edgeplane_requests_total", &["code=\"200\""]);
    assert!(served > 1000.0, "the load did not run: {served} requests answered 200");
    let errors = error_lines(&edge);
    assert!(errors.is_empty(), "{} ERROR lines, first: {}", errors.len(), errors[0]);
    // A pooled connection reused as the VM closed it is retried and counted, not logged.
    let races = metric_sum(&m, "edgeplane_log_events_total", &["pool_reuse_race"]);
    println!("{served} requests, {races} pool reuse races counted");
}

#[tokio::test]
async fn clients_that_send_a_bad_chunk_or_hang_up_are_counted_not_logged_as_errors() {
    let (edge, _vm1, _vm2) = logged_edge("").await;
    // A chunk size that is not hex.
    let bad_chunk =
        b"POST / HTTP/1.1\r\nHost: app1.repl.co\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let raw = raw_exchange(edge.proxy, bad_chunk, Duration::from_secs(3)).await;
    let st = statuses(&raw);
    assert!(st.iter().all(|s| *s == 400), "a bad chunk got {st:?}");
    // A body promised and not sent: the client hangs up halfway.
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: app1.repl.co\r\nContent-Length: 100000\r\n\r\nonly a little")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
    }
    // A client that hangs up in the middle of its request head.
    let mut s = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app1.re").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);

    let deadline = Instant::now() + Duration::from_secs(5);
    let counted = loop {
        let m = edge.metrics().await;
        let n = metric_sum(&m, "edgeplane_log_events_total", &["client_"]);
        if n >= 1.0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(counted >= 1.0, "no client fault was counted");
    let errors = error_lines(&edge);
    assert!(errors.is_empty(), "{} ERROR lines, first: {}", errors.len(), errors[0]);
}

#[tokio::test]
async fn an_idle_edge_exits_within_a_second_of_sigterm() {
    let (mut edge, _vm1, _vm2) = logged_edge("grace_period_ms = 30000").await;
    assert_eq!(edge.get("app1.repl.co", "/", &[]).await.status, 200);
    // An idle keep-alive connection that already served a request does not
    // hold the stop either.
    let mut idle = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app1.repl.co\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(edge.pid(), "-TERM");
    let took = wait_exit(&mut edge, Duration::from_secs(5)).await;
    println!("idle edge exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(1), "idle edge took {took:?} to exit");
    let status = edge.proc.0.try_wait().unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sigint_under_load_exits_within_two_seconds_with_a_bounded_log() {
    let (mut edge, _vm1, _vm2) = logged_edge("grace_period_ms = 30000").await;
    let mut load = http_load(&edge, 64, 6).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(edge.pid(), "-INT");
    let took = wait_exit(&mut edge, Duration::from_secs(10)).await;
    let _ = load.wait();
    println!("edge exited {took:?} after SIGINT under load");
    assert!(took < Duration::from_secs(2), "SIGINT took {took:?}");
    let log = std::fs::metadata(edge.dir.path().join("edge.log")).unwrap().len();
    assert!(log < 256 * 1024, "log grew to {log} bytes");
}
