//! Workspace sessions from every edge, on the production path: two
//! PostgreSQL-synced edges in two regions, version 2 tokens (PASETO
//! `v4.public`) that the edges verify with public keys only.
//!
//! - A session that reaches the wrong region's edge (plain ws, wss over
//!   TLS, HTTP/1.1 and HTTP/2 requests on the workspace path) takes
//!   exactly one edge-to-edge hop: the VM's `Via` shows the chain. The
//!   region comes from the edge's table when it holds the repl (a moved
//!   repl follows its tombstone whatever its token says) and from the
//!   token's signed claim otherwise; a repl unknown everywhere is a 404 at
//!   the edge the token names, never a loop.
//! - Every refused token (expired, unknown key, other repl, a v1 token
//!   after the migration) is a 401 that touches no VM and no peer.
//! - Keys rotate by reload, without a restart.
//! - Nothing on an edge's disk can mint a v2 token.
//! - An independent PASETO implementation (pyseto) mints tokens the edge
//!   accepts and verifies the tokens `placectl token mint` prints.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use crate::harness::*;
use crate::http2::{h2_connect, h2_get};
use crate::postgres::{pg_world, vms, wait_metric, PgDb};
use crate::{dead_addr, world};

/// Two regions on one database: A (us-east1) with a TLS listener and no
/// version 1 key, B (ap-south1) plain. r1 runs on vm-1 (us-east1), r3 on
/// vm-3 (ap-south1); r4 moved from us-east1 to ap-south1 (tombstone).
struct Regions {
    vms: (FakeVm, FakeVm, FakeVm),
    _db: PgDb,
    a: Edge,
    b: Edge,
    /// The certificate A's HTTPS listener serves.
    der: Vec<u8>,
}

async fn regions() -> Regions {
    let (vm1, vm2, vm3) = vms().await;
    let db = PgDb::new(&pg_world(&vm1, &vm2, &vm3, dead_addr())).await;
    let b = Edge::start_pg_opts("ap-south1", &db.url, &EdgeOpts::default()).await;
    db.set_edge_addr("ap-south1", b.proxy).await;
    let (a, der) = Edge::start_pg_tls_opts(
        "us-east1",
        &db.url,
        EdgeOpts {
            no_v1_key: true,
            json_log: true,
            // Every request in the access log (the token must never be).
            limits: "[log]\naccess_log_sample = 1.0",
            ..Default::default()
        },
    )
    .await;
    db.set_edge_addr("us-east1", a.proxy).await;
    // B forwards to A once it has the delta naming A's address.
    let token = v2_token("r1", "us-east1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b
        .get("x.repl.co", "/__ws/r1", &[("authorization", &bearer(&token))])
        .await
        .status
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "B never learned A's address");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Regions {
        vms: (vm1, vm2, vm3),
        _db: db,
        a,
        b,
        der,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every fake VM's request count.
async fn vm_requests(r: &Regions) -> [u64; 3] {
    [
        r.vms.0.requests().await,
        r.vms.1.requests().await,
        r.vms.2.requests().await,
    ]
}

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

/// A plain WebSocket session at `addr`, echo checked; the 101's VM.
async fn ws_echo(addr: SocketAddr, url: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(url.into_client_request().unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    echo(ws).await;
    resp.headers()["x-served-by"].to_str().unwrap().to_string()
}

/// The same over TLS (SNI `sni`, trusting `der`).
async fn wss_echo(addr: SocketAddr, der: &[u8], sni: &str, url: &str) -> String {
    let (ws, resp) = wss_connect(addr, der, sni, url).await;
    echo(ws).await;
    resp.headers()["x-served-by"].to_str().unwrap().to_string()
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut ws: Ws<S>) {
    ws.send(Message::text("ls -la")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no echo in time");
    assert_eq!(got, "ls -la");
    let _ = ws.close(None).await;
}

/// A WebSocket upgrade at `addr` refused with `status` (no tunnel opened).
async fn ws_refused(addr: SocketAddr, url: &str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    match tokio_tungstenite::client_async(url.into_client_request().unwrap(), tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        other => panic!("{url}: expected a refusal, got {:?}", other.map(|_| ())),
    }
}

fn via(resp: &Resp) -> String {
    resp.json()["headers"]["via"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_session_on_the_wrong_regions_edge_takes_one_hop_home_on_every_listener() {
    let r = regions().await;
    let b_forwards = metric_with(
        &r.b.metrics().await,
        "edgeplane_forwards_total",
        &["to_region=\"us-east1\""],
    );
    let https = r.a.https.expect("A's https listener");
    let far = v2_token("r3", "ap-south1");
    let auth = bearer(&far);

    // The repl only the token names (A holds r3 by slug, not by id): plain
    // ws and wss over TLS echo through one hop.
    let url = format!("ws://edge.internal/__ws/r3?token={far}");
    assert_eq!(ws_echo(r.a.proxy, &url).await, "vm-3");
    let url = format!("wss://ws.repl.co/__ws/r3?token={far}");
    assert_eq!(wss_echo(https, &r.der, "ws.repl.co", &url).await, "vm-3");

    // The decision, explained by the admin endpoint: the region's source
    // is named, the token is not printed.
    let q = format!("/debug/route?host=edge.internal&path=/__ws/r3%3Ftoken%3D{far}");
    let explained = get(r.a.admin, "admin", &q, &[]).await.body_str();
    assert!(
        explained.contains("home region \"ap-south1\" from the token's signed claim"),
        "{explained}"
    );
    assert!(
        explained.contains("token=<redacted>") && !explained.contains(&far),
        "{explained}"
    );

    // The VM sees the hop chain: this edge, then the home edge; one hop.
    let got =
        r.a.get("edge.internal", "/__ws/r3/info", &[("authorization", &auth)])
            .await;
    assert_eq!((got.status, got.served_by()), (200, Some("vm-3")), "{}", got.body_str());
    assert_eq!(via(&got), "1.1 us-east1-test, 1.1 ap-south1-test");
    assert_eq!(got.json()["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(
        got.json()["headers"].get("x-edgeplane-hop").is_none(),
        "the hop header never reaches a VM"
    );

    // HTTP/2 over TLS: a workspace request routed by its own path on a
    // connection opened for an app.
    let (mut h2, _driver, _) = h2_connect(https, "app1.repl.co", &r.der).await;
    let (status, headers, body) = h2_get(&mut h2, "app1.repl.co", "/__ws/r3/h2", &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!((status, headers["x-served-by"].to_str().unwrap()), (200, "vm-3"));
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["via"], "1.1 us-east1-test, 1.1 ap-south1-test");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    // The other way round: r1's session on B goes home to A.
    let home = v2_token("r1", "us-east1");
    let url = format!("ws://edge.internal/__ws/r1?token={home}");
    let tcp = tokio::net::TcpStream::connect(r.b.proxy).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(url.into_client_request().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-served-by"], "vm-1");
    echo(ws).await;

    // A moved repl: A holds r4 whole (its tombstone), and its row wins over
    // the stale claim of a token minted before the move.
    let stale = v2_token("r4", "us-east1");
    let got =
        r.a.get("edge.internal", "/__ws/r4", &[("authorization", &bearer(&stale))])
            .await;
    assert_eq!((got.status, got.served_by()), (200, Some("vm-3")), "{}", got.body_str());
    assert_eq!(via(&got), "1.1 us-east1-test, 1.1 ap-south1-test");
    wait_metric(
        &r.a,
        "edgeplane_tombstone_hits_total",
        &[],
        |v| v >= 1.0,
        "tombstone hit",
    )
    .await;

    // Unknown everywhere: A forwards once (the token names B), B answers
    // 404 and forwards nothing; no VM is touched.
    let before = vm_requests(&r).await;
    let ghost = v2_token("ghost", "ap-south1");
    let got =
        r.a.get("edge.internal", "/__ws/ghost", &[("authorization", &bearer(&ghost))])
            .await;
    assert_eq!(got.status, 404, "{}", got.body_str());
    assert_eq!(vm_requests(&r).await, before);

    // The counts: A forwarded every session it did not hold; B verified
    // each token again and never forwarded one back.
    let ma = r.a.metrics().await;
    assert_eq!(
        metric_with(
            &ma,
            "edgeplane_forwards_total",
            &["to_region=\"ap-south1\"", "reason=\"affinity\""]
        ),
        Some(5.0),
        "ws, wss, http/1.1, h2, ghost: {ma}"
    );
    let mb = r.b.metrics().await;
    assert_eq!(
        metric_with(&mb, "edgeplane_forwards_total", &["to_region=\"us-east1\""]),
        b_forwards.map(|n| n + 1.0),
        "B forwarded only r1's session: {mb}"
    );
    assert!(
        metric_with(
            &mb,
            "edgeplane_workspace_tokens_total",
            &["version=\"2\"", "outcome=\"valid\""]
        )
        .unwrap()
            >= 6.0,
        "B checked the forwarded tokens again: {mb}"
    );
    assert_eq!(
        metric_with(&mb, "edgeplane_requests_total", &["kind=\"workspace\"", "code=\"404\""]),
        Some(1.0),
        "{mb}"
    );
}

#[tokio::test]
async fn refused_tokens_are_401_and_reach_no_vm_and_no_peer() {
    let r = regions().await;
    let now = unix_now();
    let stranger = edgeplane_token::keygen().unwrap();
    let b_before = metric_with(
        &r.b.metrics().await,
        "edgeplane_workspace_tokens_total",
        &["outcome=\"valid\""],
    );
    let cases = [
        (
            "expired",
            v2_token_by(web_key(), "r3", "ap-south1", now - 1),
            "2",
            "expired",
        ),
        (
            "signed by a key A does not hold",
            v2_token_by(&stranger, "r3", "ap-south1", now + 600),
            "2",
            "unknown_key",
        ),
        ("for another repl", v2_token("r9", "ap-south1"), "2", "wrong_repl"),
        (
            "version 1 after the migration",
            edgeplane_token::v1::mint(WS_KEY.as_bytes(), "r3", now + 600),
            "1",
            "disabled",
        ),
        ("garbage", "v4.public.not-a-token".to_string(), "2", "malformed"),
    ];
    let before = vm_requests(&r).await;
    for (what, token, version, outcome) in &cases {
        for path in ["/__ws/r3", "/__ws/r1"] {
            let got =
                r.a.get("edge.internal", path, &[("authorization", &bearer(token))])
                    .await;
            assert_eq!(got.status, 401, "{what} on {path}: {}", got.body_str());
        }
        let url = format!("ws://edge.internal/__ws/r3?token={token}");
        assert_eq!(ws_refused(r.a.proxy, &url).await, 401, "{what} (WebSocket)");
        let m = r.a.metrics().await;
        assert!(
            metric_with(
                &m,
                "edgeplane_workspace_tokens_total",
                &[&format!("version=\"{version}\""), &format!("outcome=\"{outcome}\"")]
            ) >= Some(3.0),
            "{what}: {m}"
        );
    }
    assert_eq!(
        ws_refused(r.a.proxy, "ws://edge.internal/__ws/r3").await,
        401,
        "no token"
    );
    assert_eq!(vm_requests(&r).await, before, "a refused session touched a VM");
    let m = r.a.metrics().await;
    assert_eq!(
        metric_with(&m, "edgeplane_forwards_total", &["reason=\"affinity\""]),
        None,
        "{m}"
    );
    assert_eq!(
        metric_with(
            &r.b.metrics().await,
            "edgeplane_workspace_tokens_total",
            &["outcome=\"valid\""]
        ),
        b_before,
        "B saw none of them"
    );
    // The log never carries a token, valid or not.
    let valid = v2_token("r3", "ap-south1");
    assert_eq!(
        r.a.get("edge.internal", "/__ws/r3", &[("authorization", &bearer(&valid))])
            .await
            .status,
        200
    );
    let log: Vec<String> = r.a.log_lines().iter().map(|l| l.to_string()).collect();
    assert!(
        log.iter().any(|l| l.contains("/__ws/r3") && l.contains("401")),
        "the access log has the refusals: {log:?}"
    );
    for (what, token, ..) in &cases {
        assert!(
            !log.iter().any(|l| l.contains(token.as_str())),
            "{what}: a token reached the log"
        );
    }
    let signature = valid.rsplit_once('.').unwrap().0.rsplit_once('.').unwrap().1;
    assert!(
        !log.iter().any(|l| l.contains(&signature[signature.len() - 40..])),
        "the valid token reached the log"
    );
}

/// Writes `keys` as the edge's public keys file, reloads it, and checks the
/// reload applied and names the key ids.
async fn set_keys(edge: &Edge, keys: &[&edgeplane_token::SecretKey]) {
    let text: String = keys
        .iter()
        .map(|k| format!("{}\n", k.public_key().to_paserk()))
        .collect();
    std::fs::write(edge.dir.path().join("ws.pub"), text).unwrap();
    let reply = edge.admin_post("/config/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.body_str());
    let body = reply.body_str();
    assert!(body.contains("workspace_token_public_keys_file"), "{body}");
    for k in keys {
        assert!(body.contains(k.public_key().kid()), "{body}");
    }
}

#[tokio::test]
async fn keys_rotate_by_reload_without_a_restart() {
    let (_vm1, _vm2, edge) = crate::websocket::setup().await;
    let pid = edge.pid();
    let old = edgeplane_token::keygen().unwrap();
    let new = edgeplane_token::keygen().unwrap();
    let exp = unix_now() + 600;
    let (t_old, t_new) = (
        v2_token_by(&old, "r1", "us-east1", exp),
        v2_token_by(&new, "r1", "us-east1", exp),
    );
    let status = |t: String| {
        let edge = &edge;
        async move {
            edge.get("x", "/__ws/r1", &[("authorization", &bearer(&t))])
                .await
                .status
        }
    };

    set_keys(&edge, &[&old]).await;
    assert_eq!((status(t_old.clone()).await, status(t_new.clone()).await), (200, 401));
    // Step 1 of a rotation: add the new key. Both sign valid sessions.
    set_keys(&edge, &[&old, &new]).await;
    assert_eq!((status(t_old.clone()).await, status(t_new.clone()).await), (200, 200));
    // Step 3: drop the old key once no token it signed is still live.
    set_keys(&edge, &[&new]).await;
    assert_eq!((status(t_old.clone()).await, status(t_new.clone()).await), (401, 200));
    let m = edge.metrics().await;
    assert_eq!(
        metric_with(
            &m,
            "edgeplane_workspace_tokens_total",
            &["version=\"2\"", "outcome=\"unknown_key\""]
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(edge.pid(), pid, "no restart");
    // A secret key in the public keys file is refused: the old keys serve on.
    std::fs::write(edge.dir.path().join("ws.pub"), format!("{}\n", new.to_paserk())).unwrap();
    let reply = edge.admin_post("/config/reload").await;
    assert_eq!(reply.status, 422, "{}", reply.body_str());
    assert!(
        reply
            .body_str()
            .contains("ws.pub:1: security.workspace_token_public_keys_file: this is a secret key"),
        "{}",
        reply.body_str()
    );
    assert!(
        !reply.body_str().contains(&new.to_paserk()),
        "the refusal never echoes the key"
    );
    assert_eq!(status(t_new).await, 200);
}

/// Every secret-looking value a file could hold: the whole content and
/// each line, as text, base64 (both alphabets), hex and raw bytes.
fn candidate_keys(bytes: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut texts: Vec<&[u8]> = vec![bytes.trim_ascii()];
    texts.extend(bytes.split(|&b| b == b'\n').map(<[u8]>::trim_ascii));
    let mut out = Vec::new();
    for t in texts {
        out.push(t.to_vec());
        let s = String::from_utf8_lossy(t);
        let body = s.rsplit('.').next().unwrap_or("");
        for engine in [
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &base64::engine::general_purpose::STANDARD,
        ] {
            for text in [s.as_ref(), body] {
                if let Ok(b) = engine.decode(text.trim_end_matches('=')) {
                    out.push(b);
                }
            }
        }
        if s.len().is_multiple_of(2) && s.bytes().all(|c| c.is_ascii_hexdigit()) {
            out.push(
                (0..s.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                    .collect(),
            );
        }
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn nothing_on_an_edges_disk_can_mint_a_session() {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let (edge, _der) = Edge::start_tls("us-east1", &snap, EdgeOpts::default()).await;
    // The edge verifies its web server's tokens...
    let tok = v2_token("r1", "us-east1");
    assert_eq!(
        edge.get("x", "/__ws/r1", &[("authorization", &bearer(&tok))])
            .await
            .status,
        200
    );
    let trusted = edgeplane_config::load(&edge.config_path())
        .unwrap()
        .security
        .workspace_token_public_keys;
    assert_eq!(trusted, vec![web_key().public_key().clone()]);

    // ...and no file it reads or writes (config, secrets, keys, snapshot,
    // certificates, pid and state files) holds a key that signs for them.
    let mut files = Vec::new();
    files_under(edge.dir.path(), &mut files);
    assert!(files.len() >= 7, "{files:?}");
    let mut tried = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("k4.secret."),
            "{} holds a PASERK secret key",
            f.display()
        );
        for k in candidate_keys(&bytes) {
            let derived = match k.len() {
                32 => Some(ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::from_slice(&k).unwrap()).pk),
                64 => ed25519_compact::SecretKey::from_slice(&k)
                    .ok()
                    .map(|sk| sk.public_key()),
                _ => None,
            };
            if let Some(pk) = derived {
                tried += 1;
                let as_paserk = {
                    use base64::Engine;
                    format!(
                        "k4.public.{}",
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pk.as_ref())
                    )
                };
                assert!(
                    trusted.iter().all(|t| t.to_paserk() != as_paserk),
                    "{} holds the secret of a trusted key",
                    f.display()
                );
            }
        }
    }
    assert!(tried > 0, "no candidate key was even tried: the scan is broken");
}

#[tokio::test]
async fn an_independent_paseto_implementation_agrees_with_the_edge() {
    let (_vm1, _vm2, edge) = crate::websocket::setup().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/py/paseto_interop.py");
    let py = |args: &[&str]| {
        let out = std::process::Command::new(python())
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pyseto {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let key = web_key();
    let public = key.public_key().to_paserk().to_string();
    // The same key id from the same key (PASERK's `pid` operation).
    assert_eq!(py(&["pid", &public]).trim(), key.public_key().kid());

    // pyseto mints, the edge accepts (and refuses it for another repl).
    let exp = time::OffsetDateTime::from_unix_timestamp(unix_now() as i64 + 600)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let theirs = py(&["mint", &key.to_paserk(), "r1", "us-east1", &exp]);
    let theirs = theirs.trim();
    assert!(theirs.starts_with("v4.public."));
    let got = edge.get("x", "/__ws/r1", &[("authorization", &bearer(theirs))]).await;
    assert_eq!((got.status, got.served_by()), (200, Some("vm-1")), "{}", got.body_str());
    assert_eq!(
        edge.get("x", "/__ws/r2", &[("authorization", &bearer(theirs))])
            .await
            .status,
        401
    );

    // `placectl token mint` mints, pyseto verifies the signature and reads
    // the claims and footer the contract names.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("web.secret");
    std::fs::write(&secret, key.to_paserk()).unwrap();
    let out = std::process::Command::new(bin("placectl"))
        .args(["token", "mint", "--key"])
        .arg(&secret)
        .args([
            "--repl",
            "r1",
            "--region",
            "us-east1",
            "--cluster",
            "use1-a",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours = String::from_utf8(out.stdout).unwrap();
    let verified = py(&["verify", &public, ours.trim()]);
    let mut lines = verified.lines();
    let claims: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let footer: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (
            claims["repl"].as_str(),
            claims["region"].as_str(),
            claims["cluster"].as_str()
        ),
        (Some("r1"), Some("us-east1"), Some("use1-a"))
    );
    let exp = time::OffsetDateTime::parse(
        claims["exp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = exp.unix_timestamp() - unix_now() as i64;
    assert!((590..=600).contains(&left), "--ttl 10m: {left} s left");
    assert_eq!(footer["kid"].as_str(), Some(key.public_key().kid()));
    let got = edge
        .get("x", "/__ws/r1", &[("authorization", &bearer(ours.trim()))])
        .await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn placectl_keygen_writes_a_secret_only_its_owner_reads_and_a_pub_line_an_edge_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("web");
    let out = std::process::Command::new(bin("placectl"))
        .args(["token", "keygen", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let secret = std::fs::read_to_string(&out_file).unwrap();
    let public = std::fs::read_to_string(dir.path().join("web.pub")).unwrap();
    assert!(secret.starts_with("k4.secret."));
    assert_eq!(public.lines().count(), 1, "{public}");
    let key = edgeplane_token::SecretKey::from_paserk(&secret).unwrap();
    assert_eq!(public.trim(), key.public_key().to_paserk());
    assert!(stdout.contains(key.public_key().kid()), "{stdout}");
    assert!(!stdout.contains(secret.trim()), "the secret is not printed");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Never over an existing key.
    let again = std::process::Command::new(bin("placectl"))
        .args(["token", "keygen", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), secret, "the key was kept");
}
