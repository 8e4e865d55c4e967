//! Criterion benchmark of the HTTP/1.1 server codec candidates of issue 31
//! ("a connection loop that reuses its buffers"), measured on one
//! keep-alive connection so that what a codec costs per request — and not
//! per connection — is what shows:
//!
//! - `pingora_session`: what the edge runs today: a fresh Pingora
//!   `ServerSession` (new read buffer, header map and case map) for every
//!   request of the connection, the response head built as a
//!   `ResponseHeader` and encoded by Pingora;
//! - `hyper_http1`: hyper 1.x `server::conn::http1` on the same stream (the
//!   HTTP/1 of linkerd2-proxy): one read buffer for the connection, heads
//!   encoded into a reused write buffer;
//! - `httparse_loop`: a loop of the edge's own on `httparse` (the parser
//!   under both): one read buffer and one write buffer for the connection,
//!   the head parsed in place into header slices, the answer written with
//!   one write.
//!
//! Each does the same work per request: parse a browser-sized GET (8
//! headers), find its Host, answer `200` with a 2-byte body. The client is
//! the same raw loop for all, over an in-memory duplex pipe on one
//! current-thread runtime, so the differences are the codecs'. Heap
//! allocations per request are counted too (a counting allocator over
//! mimalloc), printed once per candidate.
//!
//! `cargo bench -p edgeplane-bench --bench h1_codec`; the result is kept in
//! bench/results/h1-codec/.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// mimalloc (the edge's allocator), counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to mimalloc; the counter has no
// effect on the memory handed out.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A browser-sized request: 8 headers, as the compare harness's clients send.
const REQUEST: &[u8] = b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: app1.repl.co\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0\r\n\
Accept: */*\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
Cookie: session=0123456789abcdef0123456789abcdef\r\nReferer: https://app1.repl.co/\r\n\
Connection: keep-alive\r\n\r\n";

const BODY: &[u8] = b"ok";

/// The client side of one exchange: the request, then the answer up to its
/// 2-byte body (every candidate answers with `content-length: 2`).
async fn exchange(c: &mut DuplexStream, buf: &mut BytesMut) {
    c.write_all(REQUEST).await.unwrap();
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            if buf.len() >= end + 4 + BODY.len() {
                assert_eq!(&buf[end + 4..end + 4 + BODY.len()], BODY);
                buf.advance(end + 4 + BODY.len());
                return;
            }
        }
        let n = c.read_buf(buf).await.unwrap();
        assert!(n > 0, "the server closed the connection");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Today's edge: one Pingora session per request of the connection.
async fn serve_pingora(stream: DuplexStream) {
    use pingora_core::protocols::http::ServerSession;
    use pingora_http::ResponseHeader;
    let mut stream: pingora_core::protocols::Stream = Box::new(stream);
    loop {
        let mut s = ServerSession::new_http1(stream);
        if !s.read_request().await.unwrap_or(false) {
            return;
        }
        black_box(s.req_header().headers.get("host"));
        let mut resp = ResponseHeader::build(200, Some(1)).unwrap();
        resp.insert_header("content-length", "2").unwrap();
        s.set_keepalive(Some(60));
        s.write_response_header(Box::new(resp)).await.unwrap();
        s.write_response_body(Bytes::from_static(BODY), true).await.unwrap();
        match s.finish().await {
            Ok(Some(reusable)) => stream = reusable.into_parts().0,
            _ => return,
        }
    }
}

/// hyper 1.x's HTTP/1 server connection on the same stream.
async fn serve_hyper(stream: DuplexStream) {
    use http_body_util::Full;
    let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
        black_box(req.headers().get(hyper::header::HOST));
        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(BODY))))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// The edge's own loop on httparse: buffers kept for the connection.
async fn serve_httparse(mut s: DuplexStream) {
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(256);
    loop {
        let used = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&rbuf) {
                Ok(httparse::Status::Complete(n)) => {
                    let host = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host"));
                    black_box(host.map(|h| h.value));
                    break n;
                }
                Ok(httparse::Status::Partial) => match s.read_buf(&mut rbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                Err(_) => return,
            }
        };
        rbuf.advance(used);
        wbuf.clear();
        wbuf.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n");
        wbuf.extend_from_slice(BODY);
        if s.write_all(&wbuf).await.is_err() {
            return;
        }
    }
}

/// Runs `iters` exchanges on one connection served by `serve`.
fn run<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, serve: F) -> Duration
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                tokio::task::spawn_local(serve(server));
                let mut buf = BytesMut::with_capacity(16 * 1024);
                // The connection warmed up: its first request is not timed.
                exchange(&mut client, &mut buf).await;
                let started = Instant::now();
                for _ in 0..iters {
                    exchange(&mut client, &mut buf).await;
                }
                started.elapsed()
            })
            .await
    })
}

/// Allocations per request of `serve` over 10,000 requests (client included:
/// it allocates nothing per request once its buffer has grown).
fn allocations_per_request<F, Fut>(rt: &tokio::runtime::Runtime, serve: F) -> f64
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    const N: u64 = 10_000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    run(rt, N, serve);
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64
}

fn codecs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "allocations per request: pingora_session {:.1}, hyper_http1 {:.1}, httparse_loop {:.1}",
        allocations_per_request(&rt, serve_pingora),
        allocations_per_request(&rt, serve_hyper),
        allocations_per_request(&rt, serve_httparse),
    );
    let mut g = c.benchmark_group("h1_codec_keepalive_request");
    g.bench_function("pingora_session", |b| b.iter_custom(|n| run(&rt, n, serve_pingora)));
    g.bench_function("hyper_http1", |b| b.iter_custom(|n| run(&rt, n, serve_hyper)));
    g.bench_function("httparse_loop", |b| b.iter_custom(|n| run(&rt, n, serve_httparse)));
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
