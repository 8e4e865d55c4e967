//! The edge's HTTP/1.1 client to VMs and peer edges: one [`Conn`] per TCP
//! connection, with one read buffer it keeps for its whole life (pooled
//! with it between requests), the answer head parsed in place with
//! `httparse` into an [`AnswerHead`] (the head's bytes and its lines'
//! offsets, [`answer`]), bodies taken out of that buffer without copying
//! ([`body::Decoder`]).
//!
//! Why its own and not Pingora's client session: the request path sends the
//! request body while it reads the answer (an early answer — a 401 or 413
//! to an upload the VM does not want — reaches the client instead of a 502,
//! and a streaming request and answer both flow), which needs the socket's
//! two halves at once; and a head written straight from the client's
//! request needs no copy of it. Pingora's session owns the socket whole and
//! wants an owned, edited request header.
//!
//! Where it sits: [`super::forward`] takes a connection from [`pool`] (this
//! thread's) or [`connect`]s, writes the head [`super::upstream`] writes,
//! streams the body while it waits for the answer ([`Conn::take_answer`]
//! on what [`Conn::read_more`] read) and relays it; a WebSocket upgrade
//! goes the same way and its connection becomes the tunnel's.
//! Every failure is a [`Failed`] with its [`Failure`] (status, label, log
//! level, retry).
//!
//! Start at [`Conn::take_answer`].

pub mod answer;
pub mod body;
pub mod pool;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::failure::{Failed, Failure};
use crate::conn::deadline::LazyDeadline;
pub use answer::AnswerHead;
use body::Framing;

/// Largest answer head accepted from a VM.
pub const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// Most header lines accepted in an answer head.
pub const MAX_ANSWER_HEADERS: usize = 128;
/// Read buffer a connection starts with (grown when a head or body needs it).
pub(crate) const READ_BUFFER: usize = 8 * 1024;

/// One connection to a VM or peer edge.
pub struct Conn {
    pub io: TcpStream,
    /// Bytes read and not used yet (an answer's head or body, or nothing).
    pub rbuf: BytesMut,
    /// Where request heads are written (kept across requests).
    pub wbuf: Vec<u8>,
    pub addr: SocketAddr,
    /// It came from the pool (a reset before any answer is then the
    /// pool's race, not the VM failing).
    pub pooled: bool,
    /// The bound of the read or write in progress (one timer for the
    /// connection's life: [`LazyDeadline`]).
    deadline: LazyDeadline,
}

/// A new connection to `addr`, within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, Failed> {
    let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Failed::new(
                Failure::of_connect(&e),
                format!("connecting to {addr}: {e}"),
            ))
        }
        Err(_) => {
            return Err(Failed::new(
                Failure::ConnectTimeout,
                format!("connecting to {addr}: no answer in {timeout:?}"),
            ))
        }
    };
    let _ = io.set_nodelay(true);
    Ok(Conn {
        io,
        rbuf: BytesMut::with_capacity(READ_BUFFER),
        wbuf: Vec::with_capacity(1024),
        addr,
        pooled: false,
        deadline: LazyDeadline::new(),
    })
}

/// An answer head from the VM.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The head as the client will get it: hop-by-hop headers dropped.
    pub head: AnswerHead,
    pub framing: Framing,
    /// The connection may carry another request after this answer's body.
    pub keep_alive: bool,
}

impl Conn {
    /// The answer head at the start of the buffer once it is complete
    /// (informational answers other than `101` are skipped), for a request
    /// that was a HEAD when `head_request`.
    pub fn take_answer(&mut self, head_request: bool) -> Result<Option<Answer>, Failed> {
        loop {
            match self.parse_answer(head_request)? {
                Some(a) if (100..200).contains(&a.status) && a.status != 101 => continue,
                other => return Ok(other),
            }
        }
    }

    /// Reads into the buffer once; 0 at EOF.
    pub async fn read_more(&mut self, read_timeout: Duration, answered: bool) -> Result<usize, Failed> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_BUFFER);
        }
        match self
            .deadline
            .within(read_timeout, self.io.read_buf(&mut self.rbuf))
            .await
        {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Failed::new(
                Failure::of_vm_io(&e, answered || !self.rbuf.is_empty(), self.pooled),
                format!("reading from {}: {e}", self.addr),
            )),
            Err(_) => Err(Failed::new(
                Failure::AnswerTimeout,
                format!("{} sent nothing for {read_timeout:?}", self.addr),
            )),
        }
    }

    /// Writes all of `bufs` (at most [`MAX_WRITE_PARTS`]; one system call
    /// when the socket takes it all), within `timeout`. No allocation.
    pub async fn write_all(&mut self, bufs: &[&[u8]], timeout: Duration) -> Result<(), Failed> {
        let (addr, pooled) = (self.addr, self.pooled);
        match self.deadline.within(timeout, write_parts(&mut self.io, bufs)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failed::new(
                Failure::of_vm_io(&e, false, pooled),
                format!("writing to {addr}: {e}"),
            )),
            Err(_) => Err(Failed::new(
                Failure::AnswerTimeout,
                format!("{addr} took nothing for {timeout:?}"),
            )),
        }
    }

    /// The answer head at the start of the buffer, if it is complete.
    fn parse_answer(&mut self, head_request: bool) -> Result<Option<Answer>, Failed> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(&self.rbuf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(Failed::new(
                    Failure::BadAnswer,
                    format!("answer head from {}: {e}", self.addr),
                ))
            }
        };
        // Lines are kept as offsets into the buffer; the head then leaves
        // it as one shared piece (no copy, no second parse).
        let mut answer =
            answer_of(&resp, &self.rbuf[..len], head_request).map_err(|m| Failed::new(Failure::BadAnswer, m))?;
        answer.head.attach(self.rbuf.split_to(len).freeze());
        Ok(Some(answer))
    }
}

/// Most buffers one [`Conn::write_all`] takes (a head, a chunk line, its
/// data and its CRLF).
pub const MAX_WRITE_PARTS: usize = 4;

/// Writes every byte of `bufs` with vectored writes.
pub async fn write_parts<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, bufs: &[&[u8]]) -> std::io::Result<()> {
    assert!(bufs.len() <= MAX_WRITE_PARTS, "at most {MAX_WRITE_PARTS} parts");
    let mut parts: [&[u8]; MAX_WRITE_PARTS] = [&[]; MAX_WRITE_PARTS];
    parts[..bufs.len()].copy_from_slice(bufs);
    let mut first = 0;
    let last = bufs.len();
    loop {
        while first < last && parts[first].is_empty() {
            first += 1;
        }
        if first == last {
            return Ok(());
        }
        let slices: [std::io::IoSlice<'_>; MAX_WRITE_PARTS] =
            std::array::from_fn(|i| std::io::IoSlice::new(if (first..last).contains(&i) { parts[i] } else { &[] }));
        let mut n = w.write_vectored(&slices[first..last]).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
        }
        while n > 0 && first < last {
            let take = n.min(parts[first].len());
            parts[first] = &parts[first][take..];
            n -= take;
            if parts[first].is_empty() {
                first += 1;
            }
        }
    }
}

/// The [`Answer`] a parsed head means (RFC 9112 §6.3 for its body).
/// `bytes` are the head's bytes `resp` was parsed from (its values are
/// slices of it); the caller attaches them to the answer's head.
fn answer_of(resp: &httparse::Response<'_, '_>, bytes: &[u8], head_request: bool) -> Result<Answer, String> {
    let status = resp.code.ok_or("no status")?;
    let http10 = resp.version == Some(0);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (v, content_length) {
                (None, _) => return Err("unreadable content-length".into()),
                (Some(a), Some(b)) if a != b => return Err("two content-lengths".into()),
                (v, _) => content_length = v,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` last is a framing the edge reads (RFC 9112 §6.3).
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
            chunked = last.eq_ignore_ascii_case(b"chunked");
            if !chunked {
                close = true;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let tokens = h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
            for t in tokens {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let status_code = http::StatusCode::from_u16(status).map_err(|e| e.to_string())?;
    let mut head = AnswerHead::parsed_in(bytes, status_code);
    for h in resp.headers.iter() {
        let hop = super::headers::HOP_BY_HOP
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
            && !(status == 101 && is_upgrade(h.name));
        // With both, chunked decides the length (and the CL is dropped).
        let stale_length = chunked && h.name.eq_ignore_ascii_case("content-length");
        if hop || stale_length {
            continue;
        }
        // httparse checked the value's bytes; the line stays a slice of
        // the head (no header map, no copy).
        head.keep(h.name.as_bytes(), h.value);
    }
    let keep_alive = !close && framing != Framing::UntilClose && !(chunked && content_length.is_some());
    Ok(Answer {
        status,
        head,
        framing,
        keep_alive,
    })
}

fn is_upgrade(name: &str) -> bool {
    name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head_request: bool) -> Result<Answer, String> {
        let raw = bytes::Bytes::copy_from_slice(raw);
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut h);
        let len = match r.parse(&raw).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => raw.len(),
        };
        let mut a = answer_of(&r, &raw[..len], head_request)?;
        a.head.attach(raw.slice(..len));
        Ok(a)
    }

    #[test]
    fn framing_and_reuse_follow_rfc_9112() {
        let a = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert_eq!((a.framing, a.keep_alive), (Framing::Length(5), true));
        let a = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            (a.framing, a.keep_alive),
            (Framing::Chunked, false),
            "CL with TE: chunked, no reuse"
        );
        assert!(a.head.get("content-length").is_none());
        let a = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((a.framing, a.keep_alive), (Framing::UntilClose, false));
        let a = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!a.keep_alive);
        assert!(a.head.get("connection").is_none(), "hop-by-hop stays with the VM");
        let a = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
        assert!(!a.keep_alive, "HTTP/1.0 closes");
        for (raw, head) in [
            (&b"HTTP/1.1 204 No Content\r\n\r\n"[..], false),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
        ] {
            assert_eq!(parse(raw, head).unwrap().framing, Framing::None);
        }
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", false).is_err());
        let a = parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(a.head.get("upgrade").is_some(), "a 101 keeps its upgrade headers");
    }
}
