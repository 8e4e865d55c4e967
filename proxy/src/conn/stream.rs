//! [`ConnStream`]: the client connection as Pingora's HTTP code sees it.
//! It wraps the accepted socket (or the TLS stream over it) and adds what
//! Pingora does not do per connection:
//! - the admission guard ([`super::admission::Admitted`]) that gives the
//!   connection's slots back when the connection is dropped;
//! - the request-head deadline (`limits.header_timeout_ms`): from the first
//!   byte of a request until its head is parsed. Pingora's own timeouts are
//!   per read, so a client trickling one byte every few seconds would hold
//!   the connection forever; here the deadline is total. When it passes,
//!   `408` is written (best effort) and the read fails, which makes Pingora
//!   drop the connection;
//! - what later code asks of the connection: TLS or not, the shutdown watch
//!   (WebSocket tunnels send close frames on it), a request counter;
//! - on HTTP/2 connections, the control-frame budget
//!   ([`edgeplane_core::h2_frames`]): both directions' frame headers are
//!   followed, and a client sending PING or SETTINGS frames past the budget
//!   gets GOAWAY `ENHANCE_YOUR_CALM` (written only at a frame boundary of
//!   the server's side) and its connection's next read fails, which ends
//!   it; counted in `edgeplane_http2_control_floods_total`.
//!
//! Head tracking: [`ConnStream::head_done`] (called by the request filter)
//! stops the clock; [`ConnStream::expect_head`] (called when a request ends)
//! arms it again, and the next byte read starts it.
//!
//! - for a socket moved to the serving thread ([`super::rebind`]), the
//!   write coalescing Pingora's listener stream had ([`WRITE_BUFFER`]
//!   bytes, flushed on `poll_flush` or when full), so a response head and
//!   a short body still leave in one send.
//!
//! All other traits delegate to the wrapped stream. Start at
//! [`ConnStream::new`].

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use edgeplane_core::h2_frames::{self, Budget, ControlBudget, FrameScanner};

use super::admission::Admitted;
use super::deadline::LazyDeadline;

/// Write coalescing of a re-registered socket: Pingora's listener default
/// (`DEFAULT_L4_WRITE_BUFFER_SIZE`, one Ethernet MSS).
pub const WRITE_BUFFER: usize = 1460;

const HEAD_IDLE: u8 = 0;
const HEAD_ARMED: u8 = 1;
const HEAD_RUNNING: u8 = 2;

/// The answer to a client whose request head did not arrive in time.
pub const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\ncache-control: no-store\r\n\r\n";

/// A client connection (see the module docs).
pub struct ConnStream {
    inner: Stream,
    admitted: Option<Arc<Admitted>>,
    tls: bool,
    /// Total time allowed for one request head; None: no head clock (the
    /// raw socket under a TLS stream).
    head_timeout: Option<Duration>,
    head: AtomicU8,
    /// A request head has been read (the connection is no longer fresh).
    served: AtomicBool,
    /// The head clock (created with the first head; see [`LazyDeadline`]
    /// for why it is not a fresh timer per request).
    deadline: Option<LazyDeadline>,
    shutdown: Option<ShutdownWatch>,
    h2: Option<Box<H2Watch>>,
    /// Bytes written but not yet sent (None: writes go straight through).
    wbuf: Option<Vec<u8>>,
}

/// The control-frame watch of an HTTP/2 connection.
struct H2Watch {
    inbound: FrameScanner,
    outbound: FrameScanner,
    budget: ControlBudget,
    /// Highest stream the client opened (GOAWAY's last-stream-id).
    last_stream: u32,
    flooded: bool,
    metrics: Arc<crate::metrics::Metrics>,
}

impl H2Watch {
    /// Follows bytes read from the client; true once over the budget.
    fn read(&mut self, bytes: &[u8]) -> bool {
        let now = crate::clock::now_ms();
        let (budget, last_stream, flooded) = (&mut self.budget, &mut self.last_stream, &mut self.flooded);
        self.inbound.feed(bytes, |h| {
            if h.kind == h2_frames::TYPE_HEADERS {
                *last_stream = (*last_stream).max(h.stream);
            }
            if h.asks_for_ack() && budget.control_frame(now) == Budget::Flood {
                *flooded = true;
            }
        });
        self.flooded
    }
}

impl std::fmt::Debug for ConnStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnStream")
            .field("inner", &self.inner)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ConnStream {
    /// Wraps `inner`. With `head_timeout` the first request's clock is armed.
    pub fn new(
        inner: Stream,
        admitted: Option<Admitted>,
        tls: bool,
        head_timeout: Option<Duration>,
        shutdown: Option<ShutdownWatch>,
    ) -> ConnStream {
        ConnStream {
            inner,
            admitted: admitted.map(Arc::new),
            tls,
            head_timeout,
            head: AtomicU8::new(if head_timeout.is_some() { HEAD_ARMED } else { HEAD_IDLE }),
            served: AtomicBool::new(false),
            deadline: None,
            shutdown,
            h2: None,
            wbuf: None,
        }
    }

    /// Coalesces small writes until a flush, as Pingora's listener stream
    /// did for the socket before [`super::rebind`] took it over.
    pub fn coalesce_writes(mut self) -> ConnStream {
        self.wbuf = Some(Vec::new());
        self
    }

    /// Sends what [`ConnStream::coalesce_writes`] holds; Ready once empty.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(buf) = self.wbuf.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut sent = 0;
        let mut result = Poll::Ready(Ok(()));
        while sent < buf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &buf[sent..]) {
                Poll::Ready(Ok(0)) => {
                    result = Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    break;
                }
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => {
                    result = Poll::Ready(Err(e));
                    break;
                }
                Poll::Pending => {
                    result = Poll::Pending;
                    break;
                }
            }
        }
        buf.drain(..sent);
        result
    }

    /// Watches this HTTP/2 connection's control frames (see the module docs).
    pub fn watch_h2(&mut self, metrics: Arc<crate::metrics::Metrics>) {
        self.h2 = Some(Box::new(H2Watch {
            inbound: FrameScanner::client(),
            outbound: FrameScanner::server(),
            budget: ControlBudget::default(),
            last_stream: 0,
            flooded: false,
            metrics,
        }));
    }

    /// After a read of `fresh` bytes: the control-frame budget, if watched.
    /// Over it: GOAWAY (at a frame boundary, if the socket takes it now),
    /// counted, and an error for the codec.
    fn check_h2(&mut self, cx: &mut Context<'_>, fresh: &[u8]) -> Option<std::io::Error> {
        let w = self.h2.as_mut()?;
        let first = !w.flooded;
        if !w.read(fresh) {
            return None;
        }
        if first {
            w.metrics.http2_control_floods.inc();
            log::debug!("http2: closing a connection over the control-frame budget (GOAWAY ENHANCE_YOUR_CALM)");
            if w.outbound.at_boundary() {
                let frame = h2_frames::goaway(w.last_stream, h2_frames::ENHANCE_YOUR_CALM);
                let _ = Pin::new(&mut self.inner).poll_write(cx, &frame);
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        Some(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "HTTP/2 control-frame flood",
        ))
    }

    /// Follows the first `n` bytes of what was written (HTTP/2 only).
    fn wrote<'b>(&mut self, bufs: impl IntoIterator<Item = &'b [u8]>, mut n: usize) {
        let Some(w) = self.h2.as_mut() else {
            return;
        };
        for b in bufs {
            let take = n.min(b.len());
            w.outbound.feed(&b[..take], |_| {});
            n -= take;
            if n == 0 {
                break;
            }
        }
    }

    /// The wrapped stream (the l4 socket on plain listeners).
    pub fn inner(&self) -> &Stream {
        &self.inner
    }

    /// A share of the admission guard: the connection's slots stay taken
    /// until this share and the stream are both gone (a WebSocket tunnel
    /// that outlives its request holds one).
    pub fn admission_guard(&self) -> Option<Arc<Admitted>> {
        self.admitted.clone()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The process's shutdown watch (true once a graceful stop or upgrade began).
    pub fn shutdown(&self) -> Option<&ShutdownWatch> {
        self.shutdown.as_ref()
    }

    /// A request head has been read on this connection.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// The request head was parsed: stop the head clock.
    pub fn head_done(&self) {
        self.head.store(HEAD_IDLE, Ordering::Relaxed);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        if let Some(a) = &self.admitted {
            a.request_read(crate::clock::now_ms());
        }
    }

    /// A request ended and the connection may carry another: the next byte
    /// starts the head clock again.
    pub fn expect_head(&self) {
        if self.head_timeout.is_some() {
            self.head.store(HEAD_ARMED, Ordering::Relaxed);
        }
    }

    /// Writes the 408 if the socket takes it now (it almost always does:
    /// nothing else is in flight while a head is being read).
    fn answer_timeout(&mut self, cx: &mut Context<'_>) {
        let _ = Pin::new(&mut self.inner).poll_write(cx, RESPONSE_408);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
    }
}

impl Drop for ConnStream {
    /// Sends what is still held, if the socket takes it now (as Pingora's
    /// own stream does on drop): a response head written before the VM
    /// failed mid-body still reaches the client.
    fn drop(&mut self) {
        if self.wbuf.as_ref().is_some_and(|b| !b.is_empty()) {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = self.poll_send_buffered(&mut cx);
        }
    }
}

impl AsyncRead for ConnStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let state = this.head.load(Ordering::Relaxed);
        if state == HEAD_RUNNING {
            if let Some(d) = this.deadline.as_mut() {
                // Checked before reading too: a client sending a byte every
                // second never leaves the read pending.
                if d.poll_expired(cx).is_ready() {
                    this.head.store(HEAD_IDLE, Ordering::Relaxed);
                    this.answer_timeout(cx);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head deadline passed",
                    )));
                }
            }
        }
        if this.h2.as_ref().is_some_and(|w| w.flooded) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "HTTP/2 control-frame flood",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.h2.is_some() && matches!(r, Poll::Ready(Ok(()))) {
            if let Some(e) = this.check_h2(cx, &buf.filled()[before..]) {
                return Poll::Ready(Err(e));
            }
        }
        if state == HEAD_ARMED && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if let Some(t) = this.head_timeout {
                this.deadline.get_or_insert_with(LazyDeadline::new).arm_after(t);
                this.head.store(HEAD_RUNNING, Ordering::Relaxed);
            }
        }
        r
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(held) = this.wbuf.as_ref() {
            if held.len() + buf.len() > WRITE_BUFFER {
                std::task::ready!(this.poll_send_buffered(cx))?;
            }
            if buf.len() < WRITE_BUFFER {
                this.wbuf.as_mut().expect("checked").extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.wrote([buf], n);
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(held) = this.wbuf.as_ref() {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            if held.len() + total > WRITE_BUFFER {
                std::task::ready!(this.poll_send_buffered(cx))?;
            }
            if total < WRITE_BUFFER {
                let held = this.wbuf.as_mut().expect("checked");
                for b in bufs {
                    held.extend_from_slice(b);
                }
                return Poll::Ready(Ok(total));
            }
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), true) = (&r, this.h2.is_some()) {
            this.wrote(bufs.iter().map(|b| &**b), *n);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for ConnStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ConnStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ConnStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ConnStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ConnStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ConnStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(d)
    }
}

#[async_trait]
impl Peek for ConnStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
