//! HTTP/2 on the TLS listeners (ALPN `h2`): many apps on one connection,
//! each request routed by its own `:authority`; the same Host defences and
//! header caps as HTTP/1.1; the HTTP/2 limits the edge advertises; the VM
//! still gets HTTP/1.1; and a real browser loading an app over h2 that
//! echoes over `wss://`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::harness::*;
use crate::process_life::error_lines;
use crate::status_page::{headless, output_dir, png_size};
use crate::{dead_addr, world};

/// An edge with a TLS listener in the standard world, app2 running on vm-2.
async fn tls_edge(vm1: SocketAddr, vm2: SocketAddr, limits: &str) -> (Edge, Vec<u8>) {
    let mut snap = world(vm1, vm2, dead_addr(), dead_addr(), dead_addr());
    snap["containers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"repl_id": "r2", "vm_id": "vm-2"}));
    Edge::start_tls(
        "us-east1",
        &snap,
        EdgeOpts {
            limits,
            json_log: true,
            ..Default::default()
        },
    )
    .await
}

/// An HTTP/2 connection to `addr` (SNI `sni`), after checking ALPN chose h2.
pub(crate) async fn h2_connect(
    addr: SocketAddr,
    sni: &str,
    der: &[u8],
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    usize,
) {
    let cfg = tls_client_config(der, &[b"h2", b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
    let (send, mut conn) = h2::client::handshake(tls).await.unwrap();
    // One request first, driving the connection meanwhile: the server's
    // SETTINGS have arrived once it is answered.
    let probe = send.clone();
    let answered = async {
        let mut ready = probe.ready().await?;
        let req = http::Request::builder()
            .uri(format!("https://{sni}/"))
            .body(())
            .unwrap();
        let (resp, _) = ready.send_request(req, true)?;
        resp.await.map(|r| r.status())
    };
    let status = tokio::select! {
        r = &mut conn => panic!("connection ended before the probe: {r:?}"),
        s = answered => s.unwrap(),
    };
    assert_eq!(status, 200, "probe request");
    let max_streams = conn.max_concurrent_send_streams();
    let driver = tokio::spawn(conn);
    (send, driver, max_streams)
}

/// One request on `send`; status, response headers and body.
pub(crate) async fn h2_get(
    send: &mut h2::client::SendRequest<Bytes>,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, http::HeaderMap, Vec<u8>), h2::Error> {
    let mut req = http::Request::builder().uri(format!("https://{authority}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut ready = send.clone().ready().await?;
    let (resp, _) = ready.send_request(req.body(()).unwrap(), true)?;
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("no answer in time")?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok((status, headers, out))
}

#[tokio::test]
async fn one_http2_connection_carries_two_apps_each_to_its_own_vm() {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let (edge, der) = tls_edge(vm1.http, vm2.http, "").await;
    let addr = edge.https.expect("https listener");
    let (send, _driver, max_streams) = h2_connect(addr, "app1.repl.co", &der).await;
    assert_eq!(max_streams, 128, "the edge advertises its concurrent-stream limit");

    // Both at once on the one connection (coalesced: one certificate
    // covers both names).
    let (mut s1, mut s2) = (send.clone(), send.clone());
    let (a, b) = tokio::join!(
        h2_get(&mut s1, "app1.repl.co", "/one?x=1", &[]),
        h2_get(&mut s2, "app2.repl.co", "/two", &[]),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.0, a.1["x-served-by"].to_str().unwrap()), (200, "vm-1"));
    assert_eq!((b.0, b.1["x-served-by"].to_str().unwrap()), (200, "vm-2"));
    assert!(a.1.contains_key("x-request-id"));
    // The VM got HTTP/1.1 with a Host from :authority and the edge's headers.
    let seen: serde_json::Value = serde_json::from_slice(&a.2).unwrap();
    assert_eq!(seen["headers"]["host"], "app1.repl.co", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-forwarded-host"], "app1.repl.co");
    assert_eq!(seen["path"], "/one?x=1", "origin-form target: {seen}");

    // The same Host rules as HTTP/1.1: an unknown app 404, an IP literal
    // 404; a Host header that contradicts :authority is refused (400) and
    // reaches no VM.
    let mut s = send.clone();
    assert_eq!(h2_get(&mut s, "nope.repl.co", "/", &[]).await.unwrap().0, 404);
    assert_eq!(h2_get(&mut s, "127.0.0.1", "/", &[]).await.unwrap().0, 404);
    let before = vm1.requests().await;
    let conflict = h2_get(&mut s, "app1.repl.co", "/", &[("host", "app2.repl.co")]).await;
    match conflict {
        Ok((status, _, _)) => assert_eq!(status, 400, "conflicting authority"),
        Err(e) => assert!(e.is_reset(), "refused by a reset: {e}"),
    }
    assert_eq!(vm1.requests().await, before, "a refused request reached no VM");
    // Still a working connection afterwards.
    assert_eq!(h2_get(&mut s, "app1.repl.co", "/", &[]).await.unwrap().0, 200);
    assert!(error_lines(&edge).is_empty(), "{:?}", error_lines(&edge));
}

#[tokio::test]
async fn http2_header_caps_and_stream_floods_are_refused() {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let (edge, der) = tls_edge(vm1.http, vm2.http, "max_header_bytes = 4096").await;
    let addr = edge.https.expect("https listener");
    let (mut send, _driver, _) = h2_connect(addr, "app1.repl.co", &der).await;

    // Headers over limits.max_header_bytes: refused before any VM sees them.
    let big = "x".repeat(8192);
    let before = vm1.requests().await;
    match h2_get(&mut send, "app1.repl.co", "/", &[("x-big", &big)]).await {
        Ok((status, _, _)) => assert_eq!(status, 431, "oversize headers"),
        Err(e) => assert!(e.is_reset() || e.is_go_away(), "refused: {e}"),
    }
    assert_eq!(vm1.requests().await, before, "oversize headers reached no VM");

    // Rapid reset: streams opened and cancelled at once, 2,000 of them. The
    // edge closes the connection (GOAWAY) long before serving them all.
    let (send, driver, _) = h2_connect(addr, "app1.repl.co", &der).await;
    let mut opened = 0;
    for _ in 0..2000 {
        let Ok(mut ready) = send.clone().ready().await else {
            break;
        };
        let req = http::Request::builder()
            .uri("https://app1.repl.co/flood")
            .body(())
            .unwrap();
        match ready.send_request(req, true) {
            Ok((resp, _)) => {
                drop(resp); // RST_STREAM(CANCEL)
                opened += 1;
            }
            Err(_) => break,
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    let reached = vm1.requests().await - before;
    println!("h2 flood: {opened} streams opened and reset, {reached} reached the VM, connection end: {ended:?}");
    assert!(
        matches!(ended, Ok(Ok(Err(_)))),
        "the edge closed the flooding connection: {ended:?}"
    );
    assert!(reached < 100, "{reached} of the reset streams were proxied");
    // A fresh connection is served as usual.
    let (mut fresh, _d, _) = h2_connect(addr, "app1.repl.co", &der).await;
    assert_eq!(h2_get(&mut fresh, "app1.repl.co", "/", &[]).await.unwrap().0, 200);
    assert!(error_lines(&edge).is_empty(), "{:?}", error_lines(&edge));
}

/// What a person gets from an app over HTTPS: headless Chromium opens
/// `https://app1.repl.co/echo-page` through the edge (HTTP/2 by ALPN); the
/// page opens a `wss://` WebSocket back through the edge and shows the
/// echo. The test checks what the page shows and keeps a screenshot
/// (`test-output/https-echo-page.png`).
#[tokio::test]
async fn an_app_over_https_in_chromium_loads_over_h2_and_echoes_over_wss() {
    let vm1 = FakeVm::start("vm-1");
    let snap = world(vm1.http, dead_addr(), dead_addr(), dead_addr(), dead_addr());
    let (edge, _) = Edge::start_tls("us-east1", &snap, EdgeOpts::default()).await;
    let https = edge.https.expect("https listener");
    let url = format!("https://app1.repl.co:{}/echo-page", https.port());
    let shot = output_dir().join("https-echo-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let (p, shot2) = (profile.path().to_path_buf(), shot.clone());
    let dom = tokio::task::spawn_blocking(move || {
        let run = |extra: &[String]| {
            let mut c = headless(&p);
            c.args([
                "--ignore-certificate-errors",
                "--host-resolver-rules=MAP app1.repl.co 127.0.0.1",
                "--virtual-time-budget=10000",
                "--window-size=900,500",
            ])
            .args(extra)
            .arg(&url);
            let out = c.output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        // Chromium's virtual time can end the page before the echo on a
        // busy machine: a few looks, the page is the same each time.
        let mut dom = String::new();
        for _ in 0..3 {
            dom = run(&["--dump-dom".to_string()]);
            if dom.contains("<title>echoed</title>") {
                break;
            }
        }
        run(&[format!("--screenshot={}", shot2.display())]);
        dom
    })
    .await
    .unwrap();
    for want in [
        "<h1>Served by vm-1</h1>",
        "<b id=\"proto\">h2</b>",
        "<b id=\"echo\">hello from the page</b>",
        "<title>echoed</title>",
    ] {
        assert!(dom.contains(want), "the page lacks {want:?}:\n{dom}");
    }
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(png_size(&png).0, 900);
    println!("https echo page screenshot: {}", shot.display());
}

/// A raw HTTP/2 connection (TLS, ALPN h2): the preface and an empty
/// SETTINGS are sent; frames are written and read by hand.
async fn raw_h2(addr: SocketAddr, der: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let cfg = tls_client_config(der, &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("app1.repl.co").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = edgeplane_core::h2_frames::PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    tls.write_all(&hello).await.unwrap();
    tls
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// Every frame the server sends until it closes (or `wait` passes):
/// (type, flags, stream, payload).
async fn frames_until_close(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    wait: Duration,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let mut out = Vec::new();
    let mut rest = &raw[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        if rest.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    out
}

/// HPACK for `POST https://app1.repl.co/upload` with `content-length: N`
/// (literal fields with indexed names, no Huffman, no table changes).
fn post_head(content_length: &str) -> Vec<u8> {
    let mut h = vec![0x83, 0x87]; // :method POST, :scheme https
    for (name_index, value) in [(4u8, "/upload"), (1, "app1.repl.co")] {
        h.extend([name_index, value.len() as u8]);
        h.extend(value.as_bytes());
    }
    // content-length is static index 28: a 4-bit prefix of 15, then 13.
    h.extend([0x0f, 28 - 15, content_length.len() as u8]);
    h.extend(content_length.as_bytes());
    h
}

/// RFC 9113 §8.1.1: a request whose DATA runs past its `content-length`
/// is malformed, a stream error. The edge holds back the bytes that would
/// complete the declared length until the stream ends, so the VM never
/// gets such a request whole (before, it got the declared 5 bytes as a
/// complete request and the rest was dropped). A short body never
/// completes either. A request whose DATA matches still goes through.
#[tokio::test]
async fn http2_content_length_disagreeing_with_data_never_reaches_the_vm_whole() {
    use tokio::io::AsyncWriteExt;
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let (edge, der) = tls_edge(vm1.http, vm2.http, "").await;
    let addr = edge.https.expect("https listener");

    for (what, declared, data) in [
        ("longer than declared", "5", vec![&b"hello"[..], &b"world"[..]]),
        ("shorter than declared", "10", vec![&b"hello"[..]]),
    ] {
        let whole_before = vm1.bodies_whole().await;
        let mut tls = raw_h2(addr, &der).await;
        let mut out = frame(0x1, 0x4, 1, &post_head(declared)); // HEADERS, END_HEADERS
        for (i, d) in data.iter().enumerate() {
            let end = if i + 1 == data.len() { 0x1 } else { 0 };
            out.extend(frame(0x0, end, 1, d));
        }
        tls.write_all(&out).await.unwrap();
        let frames = frames_until_close(&mut tls, Duration::from_secs(2)).await;
        let reset = frames
            .iter()
            .any(|(t, _, s, p)| *t == 0x3 && *s == 1 && p[..] == [0, 0, 0, 1]);
        assert!(reset, "{what}: stream 1 reset with PROTOCOL_ERROR: {frames:?}");
        assert_eq!(
            vm1.bodies_whole().await,
            whole_before,
            "{what}: the VM got a whole request"
        );
    }

    // The same request with a body of its length: the VM gets it whole.
    let (mut send, _driver, _) = h2_connect(addr, "app1.repl.co", &der).await;
    let whole_before = vm1.bodies_whole().await;
    let req = http::Request::builder()
        .method("POST")
        .uri("https://app1.repl.co/upload")
        .header("content-length", "10")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"hello"), false).unwrap();
    body.send_data(Bytes::from_static(b"world"), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(vm1.bodies_whole().await, whole_before + 1);
    assert!(error_lines(&edge).is_empty(), "{:?}", error_lines(&edge));
}

/// A client that floods PING (or SETTINGS) frames and never reads the
/// answers: past the budget (1,000 in 10 s) the edge sends GOAWAY
/// ENHANCE_YOUR_CALM and closes the connection, counted. A client pinging
/// at a sane rate on another connection is served as usual.
#[tokio::test]
async fn http2_ping_and_settings_floods_get_goaway_and_are_closed() {
    use tokio::io::AsyncWriteExt;
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let (edge, der) = tls_edge(vm1.http, vm2.http, "").await;
    let addr = edge.https.expect("https listener");
    let (mut calm, _calm_driver, _) = h2_connect(addr, "app1.repl.co", &der).await;

    for (what, kind, payload) in [("PING", 0x6u8, vec![7u8; 8]), ("SETTINGS", 0x4, vec![])] {
        let mut tls = raw_h2(addr, &der).await;
        let flood: Vec<u8> = (0..5_000).flat_map(|_| frame(kind, 0, 0, &payload)).collect();
        // Written without reading a byte of the answers.
        let written = tokio::time::timeout(Duration::from_secs(10), tls.write_all(&flood)).await;
        let frames = frames_until_close(&mut tls, Duration::from_secs(5)).await;
        let goaway = frames.iter().find(|(t, ..)| *t == 0x7);
        assert!(
            matches!(goaway, Some((_, _, 0, p)) if p.len() >= 8 && p[4..8] == [0, 0, 0, 0xb]),
            "{what}: GOAWAY ENHANCE_YOUR_CALM (written: {written:?}), got {} frames, last {:?}",
            frames.len(),
            frames.last()
        );
        assert_eq!(
            frames.last().map(|f| f.0),
            Some(0x7),
            "{what}: nothing after the GOAWAY"
        );
        let acks = frames.iter().filter(|(t, f, ..)| *t == kind && f & 1 == 1).count();
        assert!(acks <= 1_001, "{what}: {acks} answered before the close");
    }
    let m = edge.metrics().await;
    assert_eq!(
        metric_value(&m, "edgeplane_http2_control_floods_total"),
        Some(2.0),
        "{m}"
    );

    assert_eq!(h2_get(&mut calm, "app1.repl.co", "/", &[]).await.unwrap().0, 200);
    assert!(error_lines(&edge).is_empty(), "{:?}", error_lines(&edge));
}
