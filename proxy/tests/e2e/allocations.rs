//! The request path's allocation budget, held against the real process:
//! an edge counting its allocations (`EDGEPLANE_COUNT_ALLOCATIONS=1`,
//! `/debug/allocations`) serves keep-alive requests for a running app, and
//! the allocations per request must stay within what docs/request-path.md
//! lists ("Allocations per request"), so a change that adds one fails here
//! and has to be listed (with why it stays) or removed. A count, not a
//! timing: the same on any machine.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::{dead_addr, world};

/// What docs/request-path.md lists for a proxied keep-alive HTTP/1.1
/// request, rounded up for background noise (the file source's poll, the
/// admin request that reads the count).
pub const BUDGET_PER_REQUEST: f64 = 3.0;

async fn allocations(edge: &Edge) -> u64 {
    let v = get(edge.admin, "admin", "/debug/allocations", &[]).await.json();
    assert_eq!(v["counting"], true, "{v}");
    v["allocations"].as_u64().unwrap()
}

/// Sends `n` keep-alive GETs for app1 on `s`, each answered 200.
async fn requests(s: &mut tokio::net::TcpStream, n: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..n {
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: app1.repl.co\r\nUser-Agent: budget\r\nAccept: */*\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let k = s.read(&mut buf).await.unwrap();
            assert!(k > 0, "closed");
            got.extend_from_slice(&buf[..k]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_proxied_keep_alive_request_stays_within_its_allocation_budget() {
    let vm1 = FakeVm::start("vm-1");
    let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start_opts(
        dir,
        "us-east1",
        &snap,
        &EdgeOpts {
            count_allocations: true,
            ..Default::default()
        },
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    // Warm: the pooled upstream connection, the thread's buffers, metric handles.
    requests(&mut s, 100).await;
    // (Within max_requests_per_connection, 1,000 by default.)
    let n = 800;
    let before = allocations(&edge).await;
    requests(&mut s, n).await;
    let after = allocations(&edge).await;
    let per = (after - before) as f64 / n as f64;
    println!("allocations per proxied keep-alive request: {per:.2}");
    assert!(
        per <= BUDGET_PER_REQUEST,
        "{per:.2} allocations per request, over the budget of {BUDGET_PER_REQUEST} \
         (docs/request-path.md lists each one and why it stays)"
    );
    assert!(per >= 1.0, "{per}: the count is not counting");
}
