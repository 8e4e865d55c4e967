//! [`Downstream`]: what the request path asks of the client side of one
//! request — its head, its body, the answer written back and how the
//! connection goes on — whichever codec carries it. Two implement it:
//! the edge's own HTTP/1.1 connection ([`super::h1::conn::H1Conn`], plain and TLS
//! listeners) and Pingora's `ServerSession` (HTTP/2 streams).
//!
//! Where it sits: between the codecs and the request path
//! ([`super::filter`], [`super::forward`], [`super::respond`],
//! [`super::access_log`]), which are generic over it, so each codec's calls
//! are direct (no boxed futures per body piece).
//!
//! Invariants: errors are Pingora's error type with the same `ErrorType`s
//! Pingora's session gives (`ReadTimedout`, `InvalidHTTPHeader`,
//! `ConnectionClosed`, ...), so [`super::failure::Failure::of_client`] reads
//! both codecs' failures one way. Start at the trait.

use std::future::Future;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::conn::ConnStream;
use crate::http::client::AnswerHead;
use crate::http::headers::RequestHead;

/// The client side of one request (see the module docs).
pub trait Downstream: Send {
    /// The request head as its codec parsed it.
    type Head: RequestHead + Sync;
    fn head(&self) -> &Self::Head;
    /// Method, target, version and headers in order.
    fn req_header(&self) -> &RequestHeader {
        self.head().req()
    }
    /// The client connection (None for an HTTP/2 stream).
    fn conn(&self) -> Option<&ConnStream>;
    fn client_addr(&self) -> Option<&SocketAddr>;
    fn is_http2(&self) -> bool;
    /// The connection can be handed to a WebSocket tunnel (HTTP/1.1).
    fn can_upgrade(&self) -> bool;
    /// The client socket of a plain-TCP HTTP/1.1 connection (None for TLS
    /// or HTTP/2), lent for as long as the session.
    fn plain_tcp_fd(&self) -> Option<BorrowedFd<'_>>;
    /// `Some(secs)`: the connection may carry another request, waiting
    /// that long for it; `None`: it closes after this one.
    fn set_keepalive(&mut self, secs: Option<u64>);
    /// Bounds each wait for the next piece of the request body.
    fn set_read_timeout(&mut self, timeout: Duration);
    /// Whether an answer started before the request body ended closes the
    /// connection (the default: yes).
    fn set_close_on_response_before_downstream_finish(&mut self, close: bool);
    /// The next piece of the request body; `None` once it ended.
    fn read_request_body(&mut self) -> impl Future<Output = Result<Option<Bytes>>> + Send;
    /// `100 Continue` (for `Expect: 100-continue`).
    fn write_continue_response(&mut self) -> impl Future<Output = Result<()>> + Send;
    fn write_response_header(&mut self, head: Box<ResponseHeader>) -> impl Future<Output = Result<()>> + Send;
    /// A VM's answer head, with the lines the edge adds (`extra`).
    fn write_answer_head(
        &mut self,
        head: &AnswerHead,
        extra: &[(&str, &[u8])],
    ) -> impl Future<Output = Result<()>> + Send;
    fn write_response_body(&mut self, data: Bytes, end: bool) -> impl Future<Output = Result<()>> + Send;
    /// The answer is complete.
    fn finish_body(&mut self) -> impl Future<Output = Result<()>> + Send;
}

impl Downstream for ServerSession {
    type Head = RequestHeader;

    fn head(&self) -> &RequestHeader {
        ServerSession::req_header(self)
    }

    fn conn(&self) -> Option<&ConnStream> {
        self.stream()?.as_any().downcast_ref::<ConnStream>()
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        ServerSession::client_addr(self)
    }

    fn is_http2(&self) -> bool {
        ServerSession::is_http2(self)
    }

    fn can_upgrade(&self) -> bool {
        self.as_http1().is_some()
    }

    fn plain_tcp_fd(&self) -> Option<BorrowedFd<'_>> {
        self.as_http1()?;
        plain_tcp_fd(self.conn()?)
    }

    fn set_keepalive(&mut self, secs: Option<u64>) {
        ServerSession::set_keepalive(self, secs)
    }

    fn set_read_timeout(&mut self, timeout: Duration) {
        ServerSession::set_read_timeout(self, Some(timeout))
    }

    fn set_close_on_response_before_downstream_finish(&mut self, close: bool) {
        ServerSession::set_close_on_response_before_downstream_finish(self, close)
    }

    async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        ServerSession::read_request_body(self).await
    }

    async fn write_continue_response(&mut self) -> Result<()> {
        ServerSession::write_continue_response(self).await
    }

    async fn write_response_header(&mut self, head: Box<ResponseHeader>) -> Result<()> {
        ServerSession::write_response_header(self, head).await
    }

    async fn write_answer_head(&mut self, head: &AnswerHead, extra: &[(&str, &[u8])]) -> Result<()> {
        let head = head.to_response_header(extra)?;
        ServerSession::write_response_header(self, Box::new(head)).await
    }

    async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        ServerSession::write_response_body(self, data, end).await
    }

    async fn finish_body(&mut self) -> Result<()> {
        ServerSession::finish_body(self).await
    }
}

/// The socket under a plain-TCP client connection (None for TLS).
pub fn plain_tcp_fd(conn: &ConnStream) -> Option<BorrowedFd<'_>> {
    use std::os::fd::AsRawFd;
    if conn.is_tls() {
        return None;
    }
    let fd = conn
        .inner()
        .as_any()
        .downcast_ref::<pingora_core::protocols::l4::stream::Stream>()?
        .as_raw_fd();
    // SAFETY: the descriptor belongs to the connection's stream, which owns
    // it and keeps it open while `conn` lives; the borrow is tied to
    // `conn`'s lifetime, so it cannot outlive the descriptor.
    #[allow(unsafe_code)]
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}
