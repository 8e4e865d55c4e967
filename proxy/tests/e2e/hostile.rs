//! Hostile input sent as raw bytes, checked against what the VMs received:
//! request smuggling, Host attacks, hop-by-hop and spoofed headers, h2c and
//! other upgrades. Every case prints one line (payload, answer, requests
//! the VMs saw); docs/reliability.md quotes the totals.

use std::time::Duration;

use crate::harness::*;
use crate::{dead_addr, world};

struct Two {
    vm1: FakeVm,
    vm2: FakeVm,
    edge: Edge,
}

async fn setup(limits: &str) -> Two {
    let (vm1, vm2) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"));
    let snap = world(vm1.http, vm2.http, dead_addr(), dead_addr(), dead_addr());
    let edge = Edge::start("us-east1", &snap, limits).await;
    Two { vm1, vm2, edge }
}

impl Two {
    async fn vm_requests(&self) -> u64 {
        self.vm1.requests().await + self.vm2.requests().await
    }
}

/// Smuggling payloads: (name, bytes, most requests the VMs may see). The
/// outer request targets app1 (vm-1); every smuggled inner request targets
/// app2, so a desync shows up as an extra VM request.
fn smuggling_payloads() -> Vec<(&'static str, String, u64)> {
    let h = "Host: app1.repl.co\r\n";
    let inner = "GET /smuggled HTTP/1.1\r\nHost: app2.repl.co\r\n\r\n";
    vec![
        (
            "CL.TE",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG{inner}"),
            1,
        ),
        (
            "TE.CL",
            format!(
                "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
                inner.len()
            ),
            1,
        ),
        (
            "TE xchunked",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{inner}"),
            1,
        ),
        (
            "TE space before colon",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{inner}"),
            1,
        ),
        (
            "TE tab value",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{inner}"),
            1,
        ),
        (
            "TE duplicated",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{inner}"),
            1,
        ),
        (
            "TE chunked, identity",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{inner}"),
            1,
        ),
        (
            "TE on HTTP/1.0",
            format!("POST / HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{inner}"),
            1,
        ),
        (
            "CL duplicate differing",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 45\r\n\r\nhello{inner}"),
            1,
        ),
        (
            "CL list",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5, 45\r\n\r\nhello{inner}"),
            1,
        ),
        (
            "CL plus sign",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello{inner}"),
            1,
        ),
        (
            "CL negative",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: -1\r\n\r\n{inner}"),
            1,
        ),
        (
            "CL hex",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 0x5\r\n\r\nhello{inner}"),
            1,
        ),
        (
            "chunk size not hex",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{inner}"),
            1,
        ),
        (
            "chunk size overflow",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n{inner}"),
            1,
        ),
        (
            "chunk size with bare LF",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{inner}"),
            2,
        ),
        (
            "bare LF head",
            format!("GET / HTTP/1.1\n{h}\n{inner}"),
            2,
        ),
        (
            "bare CR in header",
            format!("GET / HTTP/1.1\r\n{h}X-A: b\rX-B: c\r\n\r\n{inner}"),
            1,
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\n{h}X-Folded: a\r\n b\r\n\r\n{inner}"),
            2,
        ),
        (
            "NUL in header",
            format!("GET / HTTP/1.1\r\n{h}X-A: a\0b\r\n\r\n{inner}"),
            1,
        ),
        (
            "space in request target",
            format!("GET /a b HTTP/1.1\r\n{h}\r\n{inner}"),
            1,
        ),
        (
            "HTTP/2 preface on HTTP/1 port",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_string(),
            0,
        ),
    ]
}

#[tokio::test]
async fn smuggling_payloads_never_reach_a_vm_as_extra_requests() {
    let t = setup("").await;
    let mut through = 0;
    for (name, payload, max) in smuggling_payloads() {
        let before = t.vm_requests().await;
        let raw = raw_exchange(t.edge.proxy, payload.as_bytes(), Duration::from_secs(3)).await;
        let seen = t.vm_requests().await - before;
        let codes = statuses(&raw);
        println!("smuggling: {name:28} answers {codes:?} vm requests {seen}");
        assert!(
            seen <= max,
            "{name}: the VMs saw {seen} requests (at most {max} framed): {codes:?}"
        );
        // The inner request only counts when it was framed as a second
        // request by the client itself (bare LF and obs-fold cases).
        if seen > max {
            through += 1;
        }
        // Whatever happened, the edge did not answer more requests than
        // the client framed.
        assert!(codes.len() as u64 <= max.max(1), "{name}: {codes:?}");
    }
    assert_eq!(through, 0);
    assert_eq!(
        t.vm2.requests().await,
        0,
        "no smuggled request for app2 reached vm-2 by itself"
    );
}

#[tokio::test]
async fn host_attacks_route_only_by_the_canonical_host() {
    let t = setup("").await;
    let long_label = format!("{}.repl.co", "a".repeat(64));
    // (name, request head lines after the request line, expected: Some(vm) or None = no VM)
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("missing Host", "".into(), None),
        ("empty Host", "Host: \r\n".into(), None),
        (
            "duplicate Host",
            "Host: app1.repl.co\r\nHost: app2.repl.co\r\n".into(),
            None,
        ),
        (
            "duplicate Host same",
            "Host: app1.repl.co\r\nHost: app1.repl.co\r\n".into(),
            None,
        ),
        ("userinfo", "Host: evil@app1.repl.co\r\n".into(), None),
        ("IPv4 literal", "Host: 127.0.0.1\r\n".into(), None),
        ("IPv6 literal", "Host: [::1]:80\r\n".into(), None),
        ("over-long label", format!("Host: {long_label}\r\n"), None),
        ("space inside", "Host: app1 .repl.co\r\n".into(), None),
        ("two labels deep", "Host: x.app1.repl.co\r\n".into(), None),
        ("suffix only", "Host: repl.co\r\n".into(), None),
        ("bad port", "Host: app1.repl.co:99999\r\n".into(), None),
        (
            "X-Forwarded-Host spoof",
            "Host: app1.repl.co\r\nX-Forwarded-Host: app2.repl.co\r\n".into(),
            Some("vm-1"),
        ),
        (
            "X-Original-URL",
            "Host: app1.repl.co\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n".into(),
            Some("vm-1"),
        ),
        ("canonical upper case", "Host: APP1.REPL.CO\r\n".into(), Some("vm-1")),
    ];
    let mut misroutes = 0;
    for (name, lines, want) in &cases {
        let before = t.vm_requests().await;
        let req = format!("GET /x HTTP/1.1\r\n{lines}Connection: close\r\n\r\n");
        let raw = raw_exchange(t.edge.proxy, req.as_bytes(), Duration::from_secs(3)).await;
        let seen = t.vm_requests().await - before;
        let resp = parse_response(&raw).ok();
        let served = resp.as_ref().and_then(|r| r.served_by().map(str::to_string));
        println!(
            "host: {name:24} -> {:?} served by {served:?}",
            resp.as_ref().map(|r| r.status)
        );
        match want {
            None => {
                if seen != 0 {
                    misroutes += 1;
                }
                assert_eq!(seen, 0, "{name}: reached a VM");
                let status = resp.map(|r| r.status).unwrap_or(400);
                assert!((400..500).contains(&status), "{name}: {status}");
            }
            Some(vm) => {
                if served.as_deref() != Some(*vm) {
                    misroutes += 1;
                }
                assert_eq!(served.as_deref(), Some(*vm), "{name}");
                let seen_headers = &resp.unwrap().json()["headers"];
                let raw_host = lines.split("\r\n").find_map(|l| l.strip_prefix("Host: ")).unwrap();
                assert_eq!(seen_headers["x-forwarded-host"], raw_host, "{name}");
                assert!(seen_headers.get("x-original-url").is_none(), "{name}: {seen_headers}");
                assert!(seen_headers.get("x-rewrite-url").is_none(), "{name}: {seen_headers}");
            }
        }
    }
    // Absolute-form: a matching authority is served, a different one is 400.
    for (target, want) in [
        ("http://app1.repl.co/x", Some("vm-1")),
        ("http://app2.repl.co/x", None),
        ("http://evil@app1.repl.co/x", None),
    ] {
        let before = t.vm_requests().await;
        let req = format!("GET {target} HTTP/1.1\r\nHost: app1.repl.co\r\nConnection: close\r\n\r\n");
        let raw = raw_exchange(t.edge.proxy, req.as_bytes(), Duration::from_secs(3)).await;
        let resp = parse_response(&raw).ok();
        let seen = t.vm_requests().await - before;
        println!("host: absolute {target:24} -> {:?}", resp.as_ref().map(|r| r.status));
        match want {
            Some(vm) => assert_eq!(
                resp.and_then(|r| r.served_by().map(str::to_string)).as_deref(),
                Some(vm)
            ),
            None => assert_eq!(seen, 0, "{target} reached a VM"),
        }
    }
    println!("host: {} variants, {misroutes} misroutes", cases.len() + 3);
    assert_eq!(misroutes, 0);
}

#[tokio::test]
async fn hop_by_hop_and_spoofed_headers_never_reach_the_vm() {
    let t = setup("").await;
    let r = t
        .edge
        .get(
            "app1.repl.co",
            "/",
            &[
                ("Connection", "X-Secret, keep-alive"),
                ("X-Secret", "named by Connection"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Trailer", "X-T"),
                ("Proxy-Connection", "keep-alive"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Forwarded", "for=6.6.6.6;host=evil"),
                ("X-Real-IP", "6.6.6.6"),
                ("True-Client-IP", "6.6.6.6"),
                ("X-Forwarded-Port", "1"),
                ("X-Edgeplane-Hop", "forged"),
                ("X-Request-Id", "attacker-chosen"),
                ("X-Kept", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = r.json()["headers"].clone();
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "proxy-authorization",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-forwarded-port",
        "x-edgeplane-hop",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the VM: {h}");
    }
    assert_eq!(h["x-kept"], "yes", "ordinary headers pass");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_ne!(h["x-request-id"], "attacker-chosen");
}

#[tokio::test]
async fn h2c_and_other_upgrades_are_served_as_plain_http() {
    let t = setup("").await;
    for (name, extra) in [
        (
            "h2c",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        ("foo", "Connection: upgrade\r\nUpgrade: foo/1\r\n"),
        (
            "websocket without Connection",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: app1.repl.co\r\n{extra}\r\n");
        let raw = raw_exchange(t.edge.proxy, req.as_bytes(), Duration::from_secs(2)).await;
        let codes = statuses(&raw);
        println!("upgrade: {name:30} -> {codes:?}");
        assert_eq!(codes.first(), Some(&200), "{name}: {}", String::from_utf8_lossy(&raw));
        let resp = parse_response(&raw).unwrap();
        let h = &resp.json()["headers"];
        assert!(h.get("upgrade").is_none(), "{name}: Upgrade reached the VM: {h}");
        assert!(h.get("http2-settings").is_none(), "{name}: {h}");
    }
    let m = t.edge.metrics().await;
    assert_eq!(metric_value(&m, "edgeplane_websocket_tunnels_active"), Some(0.0));
}

/// Requests beyond the smuggling payloads for the differential test:
/// valid forms a parser must take, and malformed ones it should not.
fn differential_extra() -> Vec<(&'static str, Vec<u8>)> {
    let h = "Host: app1.repl.co\r\n";
    let mut v: Vec<(&'static str, Vec<u8>)> = [
        ("valid GET", format!("GET /a?b=c HTTP/1.1\r\n{h}\r\n")),
        (
            "valid POST with length",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhello"),
        ),
        (
            "valid chunked",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk extension",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunked with trailer",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"),
        ),
        (
            "absolute-form target",
            format!("GET http://app1.repl.co/x HTTP/1.1\r\n{h}\r\n"),
        ),
        ("HTTP/1.0", format!("GET / HTTP/1.0\r\n{h}\r\n")),
        ("empty header value", format!("GET / HTTP/1.1\r\n{h}X-Empty:\r\n\r\n")),
        ("OWS around value", format!("GET / HTTP/1.1\r\n{h}X-A:   b   \r\n\r\n")),
        (
            "Content-Length leading zeros",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 005\r\n\r\nhello"),
        ),
        (
            "Transfer-Encoding gzip, chunked",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ),
        ("lowercase method", format!("get / HTTP/1.1\r\n{h}\r\n")),
        ("HTTP/1.2", format!("GET / HTTP/1.2\r\n{h}\r\n")),
        ("space after version", format!("GET / HTTP/1.1 \r\n{h}\r\n")),
        ("two spaces after method", format!("GET  / HTTP/1.1\r\n{h}\r\n")),
        ("space in header name", format!("GET / HTTP/1.1\r\n{h}X A: b\r\n\r\n")),
        ("empty line before request", format!("\r\nGET / HTTP/1.1\r\n{h}\r\n")),
        ("whitespace line first", format!("GET / HTTP/1.1\r\n {h}\r\n")),
        ("bare CR line end", format!("GET / HTTP/1.1\r{h}\r\n")),
        (
            "chunk size with space",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk data longer than size",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"),
        ),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.into_bytes()))
    .collect();
    let mut high = format!("GET / HTTP/1.1\r\n{h}X-A: caf").into_bytes();
    high.extend_from_slice(b"\xe9\r\n\r\n");
    v.push(("obs-text in a value", high));
    v
}

/// What llhttp (Node's HTTP parser, strict) made of each request: the first
/// message whole (with its body length), or not.
fn llhttp_first_messages(corpus: &[(&str, Vec<u8>)]) -> Vec<Option<u64>> {
    let bytes: Vec<&[u8]> = corpus.iter().map(|(_, b)| b.as_slice()).collect();
    crate::differential::llhttp(&bytes)
        .iter()
        .map(|r| {
            let first = &r["messages"][0];
            (first["complete"] == true).then(|| first["body"].as_u64().unwrap())
        })
        .collect()
}

/// Where the edge passes a request that llhttp refuses, each with why it
/// is not a desync. Empty since the edge's own HTTP/1.1 codec (issue 31):
/// the Pingora codec's seven (CL.TE, TE.CL, a tab before `chunked` with a
/// length, a bare-LF head, a space in the target, a lower-case method, a
/// space after a chunk size) are all refused now. The test fails when the
/// list is stale either way.
const KNOWN_LENIENCIES: &[(&str, &str)] = &[];

/// Requests llhttp takes and the edge refuses, each with why.
const STRICTER_THAN_LLHTTP: &[(&str, &str)] = &[
    (
        "Transfer-Encoding gzip, chunked",
        "501: the edge decodes chunked only, and passing the gzip coding on without its framing would change the body (RFC 9112 §6.1)",
    ),
    (
        "two spaces after method",
        "RFC 9112 §3 lets a server split the request line on runs of whitespace; no client sends it, and a split two readers may do differently is refused",
    ),
];

/// The edge against a second HTTP/1 parser (llhttp, strict), on the
/// smuggling payloads and more: where llhttp refuses a request, the edge
/// refuses it too (save the few listed, each with its reason), and where
/// both take a request the VM gets the body llhttp framed.
#[tokio::test]
async fn a_second_parser_refusing_a_request_means_the_edge_refuses_it() {
    let t = setup("").await;
    let mut corpus: Vec<(&str, Vec<u8>)> = smuggling_payloads()
        .into_iter()
        .map(|(n, s, _)| (n, s.into_bytes()))
        .collect();
    corpus.extend(differential_extra());
    let llhttp = llhttp_first_messages(&corpus);
    let proxy = t.edge.proxy;
    let answers = futures_util::future::join_all(
        corpus
            .iter()
            .map(|(_, bytes)| raw_exchange(proxy, bytes, Duration::from_millis(1500))),
    )
    .await;
    let mut lenient = Vec::new();
    let mut stricter = Vec::new();
    for (((name, _), theirs), raw) in corpus.iter().zip(&llhttp).zip(&answers) {
        // The edge's verdict: the first answer came from a VM (its JSON
        // says how many body bytes it got).
        let ours = parse_response(raw)
            .ok()
            .filter(|r| r.header("x-served-by").is_some())
            .and_then(|r| r.json()["body_bytes"].as_u64());
        println!("differential: {name:32} llhttp {theirs:?} edge {ours:?}");
        match (theirs, ours) {
            (None, Some(_)) => lenient.push(*name),
            (Some(_), None) => stricter.push(*name),
            (Some(a), Some(b)) => assert_eq!(a, &b, "{name}: llhttp framed {a} body bytes, the VM got {b}"),
            _ => {}
        }
    }
    let known: Vec<&str> = KNOWN_LENIENCIES.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        lenient, known,
        "requests the edge passes and llhttp refuses (an unlisted one is a defect; a listed one no longer seen is to be removed)"
    );
    println!("differential: refused by the edge, taken by llhttp: {stricter:?}");
    let expected: Vec<&str> = STRICTER_THAN_LLHTTP.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        stricter, expected,
        "requests llhttp takes and the edge refuses (each needs its reason in STRICTER_THAN_LLHTTP)"
    );
    assert!(corpus.len() >= 40, "{}", corpus.len());
}
