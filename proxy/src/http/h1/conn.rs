//! [`H1Conn`]: one HTTP/1.1 client connection with the buffers it keeps for
//! its whole life — the read buffer (heads parsed in place, body pieces
//! split off it), the write buffer (the answer head, held until the first
//! body piece so both leave in one write), the request head ([`H1Head`]:
//! its map's capacity and its offsets reused) — and the [`Downstream`] the request path drives.
//!
//! Per request it holds: the keep-alive decision (RFC 9112 §9.3: HTTP/1.1
//! unless `Connection: close`, HTTP/1.0 only with `keep-alive`), the
//! request body's decoder (the client module's strict one: hex-only chunk
//! sizes, CRLF everywhere, bounded trailers dropped), and how the answer's
//! body is framed ([`Writer`], from its head as Pingora's codec decides
//! it: nothing for HEAD, 1xx, 204 and 304; the length; chunks re-encoded;
//! else until close).
//!
//! Invariants: the answer carries `date` and `connection` of the edge's
//! own (what the client may expect of this connection), written once; a
//! connection is reusable only when the request body was read whole, the
//! answer was complete and keep-alive stayed on ([`H1Conn::reusable`]).
//! Start at [`H1Conn::read_request_body`] and
//! [`H1Conn::write_response_header`].

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, Version};
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::head::H1Head;
use crate::conn::deadline::LazyDeadline;
use crate::conn::ConnStream;
use crate::http::client::answer::write_status_line;
use crate::http::client::body::{chunk_head, BodyError, Decoder, Framing, Piece, LAST_CHUNK};
use crate::http::client::{write_parts, AnswerHead};
use crate::http::downstream::Downstream;
use crate::http::headers::{Known, RequestHead};

/// Largest body piece handed to the request path.
const MAX_PIECE: usize = 64 * 1024;
/// The read buffer's room for heads (grown by this much when nearly full):
/// what an idle keep-alive connection holds, so kept small (Pingora's and
/// nginx's first head buffer is the same order, 4 KiB and 1 KiB).
pub(super) const HEAD_CHUNK: usize = 4 * 1024;
/// Room made for each read of a request body.
const BODY_CHUNK: usize = 16 * 1024;
/// An answer body piece this small is copied behind the held head (one
/// write); a larger one goes out beside it (a vectored write).
const COPY_BEHIND_HEAD: usize = 4 * 1024;

/// How the answer's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// The head is not written yet.
    NotStarted,
    /// No body (HEAD, 204, 304): pieces are dropped.
    Empty,
    /// `content-length`: bytes still owed.
    Length(u64),
    Chunked,
    /// Until the connection closes (an answer without length).
    UntilClose,
    /// The answer is complete.
    Done,
}

/// One client connection (see the module docs).
pub struct H1Conn {
    pub(super) io: ConnStream,
    pub(super) rbuf: BytesMut,
    wbuf: Vec<u8>,
    pub(super) head: H1Head,
    digest: Option<Arc<SocketDigest>>,
    /// Requests this connection may still carry after the current one.
    pub(super) reuses_left: u32,
    keepalive: Option<u64>,
    /// The client's own word on keep-alive (the edge never overrides a close).
    client_keepalive: bool,
    read_timeout: Duration,
    /// The bound of the wait in progress: for the next head between
    /// requests, or for a piece of a request body (one timer for the
    /// connection's life, not one per wait).
    pub(super) wait: LazyDeadline,
    close_on_early_answer: bool,
    body: Decoder,
    writer: Writer,
}

impl H1Conn {
    pub fn new(io: ConnStream, max_requests: u32) -> H1Conn {
        let digest = io.get_socket_digest();
        H1Conn {
            io,
            rbuf: BytesMut::with_capacity(HEAD_CHUNK),
            wbuf: Vec::with_capacity(1024),
            head: H1Head::default(),
            digest,
            reuses_left: max_requests.saturating_sub(1),
            keepalive: None,
            client_keepalive: false,
            read_timeout: Duration::from_secs(60),
            wait: LazyDeadline::new(),
            close_on_early_answer: true,
            body: Decoder::new(Framing::None),
            writer: Writer::Done,
        }
    }

    /// A head was parsed into `head`: this request's state starts.
    pub(super) fn start_request(&mut self, idle_secs: u64) {
        let connection = self.head.get(Known::Connection);
        let has = |token: &[u8]| {
            connection.is_some_and(|v| {
                v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
            })
        };
        let keep = match self.head.req.version {
            Version::HTTP_11 => !has(b"close"),
            _ => has(b"keep-alive") && !has(b"close"),
        };
        self.client_keepalive = keep;
        self.keepalive = keep.then_some(idle_secs);
        self.close_on_early_answer = true;
        self.body = Decoder::new(super::head::body_framing(&self.head));
        self.writer = Writer::NotStarted;
    }

    /// The request body has been read whole (or there is none).
    pub(super) fn body_done(&self) -> bool {
        self.body.is_done()
    }

    /// The connection can carry the next request: keep-alive on, the body
    /// read whole, the answer complete, requests left.
    pub(super) fn reusable(&self) -> bool {
        self.keepalive.is_some() && self.body.is_done() && self.writer == Writer::Done && self.reuses_left > 0
    }

    pub(super) fn idle_timeout(&self) -> Option<Duration> {
        self.keepalive.map(Duration::from_secs)
    }

    fn will_keepalive(&self) -> bool {
        self.keepalive.is_some() && self.reuses_left > 0
    }

    /// Writes `parts` after whatever is held, and sends it all.
    async fn send(&mut self, parts: &[&[u8]]) -> Result<()> {
        let r = if self.wbuf.is_empty() {
            write_parts(&mut self.io, parts).await
        } else {
            let mut all: [&[u8]; 4] = [&self.wbuf, &[], &[], &[]];
            let n = parts.len().min(3);
            all[1..=n].copy_from_slice(&parts[..n]);
            write_parts(&mut self.io, &all[..=n]).await
        };
        self.wbuf.clear();
        match r {
            Ok(()) => self.io.flush().await.or_client("flushing the answer"),
            Err(e) => Err(write_error(e)),
        }
    }

    /// Writes and sends what is held (the answer head).
    async fn send_held(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.send(&[]).await
    }

    /// A head the edge will not serve: `status`, then the connection closes.
    pub(super) async fn refuse(&mut self, status: u16) {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        self.wbuf.clear();
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\ncache-control: private, no-store\r\nconnection: close\r\n\r\n"
        );
        if let Err(e) = self.send(&[head.as_bytes()]).await {
            log::debug!("answering {status}: {e}");
        }
        let _ = AsyncWriteExt::shutdown(&mut self.io).await;
    }
}

trait OrClient<T> {
    fn or_client(self, what: &'static str) -> Result<T>;
}

impl<T> OrClient<T> for std::io::Result<T> {
    fn or_client(self, what: &'static str) -> Result<T> {
        self.map_err(|e| {
            let kind = match e.kind() {
                std::io::ErrorKind::TimedOut => ErrorType::ReadTimedout,
                _ => ErrorType::WriteError,
            };
            Error::because(kind, what, e)
        })
    }
}

fn write_error(e: std::io::Error) -> Box<Error> {
    Error::because(ErrorType::WriteError, "writing the answer", e)
}

fn parse_length(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// The answer head's body framing (see the module docs), from its status
/// and its `transfer-encoding` and `content-length` values.
fn writer_for(status: u16, te: Option<&[u8]>, cl: Option<&[u8]>, head_request: bool) -> Writer {
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Writer::Empty;
    }
    let chunked = te.is_some_and(|v| {
        v.rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    if chunked {
        return Writer::Chunked;
    }
    match cl.map(parse_length) {
        Some(Some(n)) => Writer::Length(n),
        _ => Writer::UntilClose,
    }
}

fn writer_of(head: &ResponseHeader, head_request: bool) -> Writer {
    let get = |n| head.headers.get(n).map(http::HeaderValue::as_bytes);
    writer_for(
        head.status.as_u16(),
        get(TRANSFER_ENCODING),
        get(CONTENT_LENGTH),
        head_request,
    )
}

impl H1Conn {
    /// What every answer head does before its lines are written: the
    /// keep-alive decision and the body's framing. False for a head that
    /// is not to be written (a second one).
    fn begin_answer(&mut self, status: u16, writer: Writer) -> bool {
        if self.writer != Writer::NotStarted {
            log::debug!("a second answer head ({status}) for one request: dropped");
            return false;
        }
        if (100..200).contains(&status) && status != 101 {
            return true;
        }
        if self.close_on_early_answer && !self.body.is_done() {
            self.keepalive = None;
        }
        if writer == Writer::UntilClose || status == 101 {
            self.keepalive = None;
        }
        self.writer = writer;
        true
    }

    /// After the lines: the edge's `date` and `connection`, the blank
    /// line, and the head sent now unless it waits for the first body piece.
    async fn end_answer(&mut self, status: u16) -> Result<()> {
        if !(100..200).contains(&status) || status == 101 {
            self.wbuf.extend_from_slice(b"date: ");
            self.wbuf
                .extend_from_slice(pingora_core::protocols::http::date::get_cached_date().as_bytes());
            self.wbuf.extend_from_slice(if self.will_keepalive() {
                b"\r\nconnection: keep-alive\r\n"
            } else {
                b"\r\nconnection: close\r\n"
            });
        }
        self.wbuf.extend_from_slice(b"\r\n");
        // Held for the first body piece when the length is known; sent now
        // otherwise (a streamed answer's head should not wait for its body).
        if !matches!(self.writer, Writer::Length(n) if n > 0) {
            self.send_held().await?;
        }
        if self.writer == Writer::Empty || self.writer == Writer::Length(0) {
            self.writer = Writer::Done;
        }
        Ok(())
    }
}

impl Downstream for H1Conn {
    type Head = H1Head;

    fn head(&self) -> &H1Head {
        &self.head
    }

    fn conn(&self) -> Option<&ConnStream> {
        Some(&self.io)
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.digest.as_ref()?.peer_addr()
    }

    fn is_http2(&self) -> bool {
        false
    }

    fn can_upgrade(&self) -> bool {
        true
    }

    fn plain_tcp_fd(&self) -> Option<BorrowedFd<'_>> {
        crate::http::downstream::plain_tcp_fd(&self.io)
    }

    fn set_keepalive(&mut self, secs: Option<u64>) {
        self.keepalive = secs.filter(|_| self.client_keepalive);
    }

    fn set_read_timeout(&mut self, timeout: Duration) {
        self.read_timeout = timeout;
    }

    fn set_close_on_response_before_downstream_finish(&mut self, close: bool) {
        self.close_on_early_answer = close;
    }

    async fn read_request_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.body.next(&mut self.rbuf, MAX_PIECE) {
                Ok(Piece::Data(b)) => return Ok(Some(b)),
                Ok(Piece::Done) => return Ok(None),
                Ok(Piece::NeedMore) => {}
                Err(e) => return Err(body_error(e)),
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(BODY_CHUNK);
            }
            let t = self.read_timeout;
            match self.wait.within(t, self.io.read_buf(&mut self.rbuf)).await {
                Ok(Ok(0)) => {
                    let e = self.body.eof().err().unwrap_or(BodyError::Truncated);
                    return Err(Error::explain(ErrorType::ConnectionClosed, e.to_string()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Error::because(ErrorType::ReadError, "reading the request body", e)),
                Err(_) => return Error::e_explain(ErrorType::ReadTimedout, format!("no request body for {t:?}")),
            }
        }
    }

    async fn write_continue_response(&mut self) -> Result<()> {
        self.send(&[b"HTTP/1.1 100 Continue\r\n\r\n"]).await
    }

    async fn write_response_header(&mut self, mut head: Box<ResponseHeader>) -> Result<()> {
        let status = head.status.as_u16();
        if !self.begin_answer(status, writer_of(&head, self.head.req.method == Method::HEAD)) {
            return Ok(());
        }
        head.remove_header(&CONNECTION);
        head.remove_header(&DATE);
        write_status_line(head.status, &mut self.wbuf);
        head.header_to_h1_wire(&mut self.wbuf);
        self.end_answer(status).await
    }

    async fn write_answer_head(&mut self, head: &AnswerHead, extra: &[(&str, &[u8])]) -> Result<()> {
        let status = head.status.as_u16();
        let writer = writer_for(
            status,
            head.get("transfer-encoding"),
            head.get("content-length"),
            self.head.req.method == Method::HEAD,
        );
        if !self.begin_answer(status, writer) {
            return Ok(());
        }
        write_status_line(head.status, &mut self.wbuf);
        // The VM's lines as it cased them, but its `date` (the edge's own
        // goes out; `connection` never reaches here).
        for (n, v) in head.iter().filter(|(n, _)| !n.eq_ignore_ascii_case(b"date")) {
            for part in [n, b": ", v, b"\r\n"] {
                self.wbuf.extend_from_slice(part);
            }
        }
        for (n, v) in extra {
            for part in [n.as_bytes(), b": ", v, b"\r\n"] {
                self.wbuf.extend_from_slice(part);
            }
        }
        self.end_answer(status).await
    }

    async fn write_response_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        match self.writer {
            Writer::Length(left) => {
                let n = (data.len() as u64).min(left) as usize;
                let piece = &data[..n];
                if !piece.is_empty() && piece.len() <= COPY_BEHIND_HEAD && !self.wbuf.is_empty() {
                    self.wbuf.extend_from_slice(piece);
                    self.send_held().await?;
                } else if !piece.is_empty() {
                    self.send(&[piece]).await?;
                }
                let left = left - n as u64;
                self.writer = if left == 0 { Writer::Done } else { Writer::Length(left) };
            }
            Writer::Chunked if !data.is_empty() => {
                let mut line = [0u8; 18];
                let line = chunk_head(data.len(), &mut line);
                let last: &[u8] = if end { LAST_CHUNK } else { b"" };
                self.send(&[line, &data, b"\r\n", last]).await?;
                if end {
                    self.writer = Writer::Done;
                }
                return Ok(());
            }
            Writer::UntilClose if !data.is_empty() => self.send(&[&data]).await?,
            _ => {}
        }
        if end {
            self.finish_body().await?;
        }
        Ok(())
    }

    async fn finish_body(&mut self) -> Result<()> {
        match self.writer {
            Writer::Chunked => self.send(&[LAST_CHUNK]).await?,
            // Short of its length: the client cannot trust this connection.
            Writer::Length(_) => {
                self.keepalive = None;
                self.send_held().await?;
            }
            _ => self.send_held().await?,
        }
        self.writer = Writer::Done;
        Ok(())
    }
}

/// A request body the decoder refused: the client's fault (400).
fn body_error(e: BodyError) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, format!("request body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            h.append_header(k.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn the_answer_body_is_framed_as_its_head_says() {
        assert_eq!(
            writer_of(&head(200, &[("content-length", "5")]), false),
            Writer::Length(5)
        );
        assert_eq!(writer_of(&head(200, &[("content-length", "5")]), true), Writer::Empty);
        assert_eq!(writer_of(&head(204, &[]), false), Writer::Empty);
        assert_eq!(writer_of(&head(304, &[("content-length", "5")]), false), Writer::Empty);
        assert_eq!(
            writer_of(&head(200, &[("transfer-encoding", "gzip, chunked")]), false),
            Writer::Chunked
        );
        assert_eq!(writer_of(&head(200, &[]), false), Writer::UntilClose);
    }
}
