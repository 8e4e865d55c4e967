//! WebSocket tunnels carried by edgeplane itself instead of Pingora's
//! upgrade path: an idle tunnel owns no buffer at all.
//!
//! Why: Pingora 0.9 keeps a 64 KiB body buffer per direction for an upgraded
//! connection (plus its downstream read buffer), about 220 KiB of resident
//! memory per idle tunnel, and moves every chunk through a channel and a
//! task hop. Workspaces hold tens of thousands of mostly idle tunnels.
//!
//! How ([`Tunnel::run`]): the edge routes the upgrade request as usual, then
//! opens its own TCP connection to the VM or peer edge, writes the edited
//! request head, and reads the response head. A `101` is relayed to the
//! client and both sockets are pumped by readiness: when one side is
//! readable, its bytes go through one per-thread scratch buffer straight
//! into the other side; only bytes the other side cannot take yet are kept,
//! in a per-direction buffer that is freed once written. Half-closes are
//! passed on (EOF on one side shuts the other side's write half once its
//! bytes are delivered) and end the tunnel, as do an error or
//! `idle_timeout` with no byte either way. Any other answer (no `101`) is
//! relayed with `Connection: close` and opens no tunnel.
//!
//! The client socket is a duplicate of the descriptor Pingora accepted
//! (plain TCP listeners only); Pingora's own handle closes as soon as the
//! upgrade request returns, and the tunnel runs on as its own task holding
//! only the two sockets, its pump and a share of the connection's admission
//! guard: 2 descriptors and no HTTP state per idle tunnel.
//!
//! Start at [`Tunnel::open`].

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ws_frames::{close_frame_to_client, close_frame_to_server, FrameCursor, CLOSE_GOING_AWAY};

/// The VM-to-edge replay header (never relayed to the client).
const REPLAY_HEADER: &str = "x-edgeplane-replay";
/// Largest response head accepted from a VM.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest non-101 body relayed (error pages).
pub const MAX_REFUSAL_BODY: usize = 1 << 20;
/// Scratch buffer per worker thread, shared by all its tunnels.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// Set when SIGQUIT (graceful upgrade) arrives: tunnels then close with
/// 1012 "service restart" instead of 1001 "going away".
pub static UPGRADING: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));

/// The close code tunnels send when the process stops.
pub fn close_code() -> u16 {
    if UPGRADING.load(std::sync::atomic::Ordering::Relaxed) {
        crate::ws_frames::CLOSE_SERVICE_RESTART
    } else {
        crate::ws_frames::CLOSE_GOING_AWAY
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("connect to {addr}: {err}")]
    Connect { addr: SocketAddr, err: io::Error },
    #[error("upstream: {0}")]
    Upstream(io::Error),
    #[error("upstream answer timed out")]
    ReadTimeout,
    #[error("upstream closed before answering")]
    Closed,
    #[error("malformed upstream response head")]
    Malformed,
    #[error("client socket: {0}")]
    Client(io::Error),
}

impl TunnelError {
    /// True when the VM could not be reached at all (outlier detection).
    pub fn is_connect(&self) -> bool {
        matches!(self, TunnelError::ConnectTimeout(_) | TunnelError::Connect { .. })
    }

    /// True when the VM never answered: refused, connect timeout, or the
    /// connection reset or closed before any byte of an answer (a request
    /// for a repl being placed may move to another VM).
    pub fn before_answer(&self) -> bool {
        match self {
            TunnelError::ConnectTimeout(_) | TunnelError::Connect { .. } | TunnelError::Closed => true,
            TunnelError::Upstream(e) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// The `reason` label of `edgeplane_upstream_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            TunnelError::ConnectTimeout(_) => "connect_timeout",
            TunnelError::ReadTimeout => "timeout",
            TunnelError::Connect { .. } => "connect_refused",
            TunnelError::Upstream(_) | TunnelError::Closed if self.before_answer() => "connect_reset",
            _ => "upstream",
        }
    }
}

/// The upstream's answer to the upgrade request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Response head as relayed to the client (edited), ending in CRLF CRLF.
    pub head: Vec<u8>,
    /// Bytes read past the head (start of the tunnel or of the body).
    pub rest: Vec<u8>,
    /// The `x-edgeplane-replay` value the upstream sent, if any (the head
    /// above never carries it).
    pub replay: Option<Vec<u8>>,
    /// Body framing of a non-101 answer.
    content_length: Option<usize>,
    chunked: bool,
}

/// An upstream connection whose upgrade request has been answered.
pub struct Tunnel {
    pub upstream: TcpStream,
    pub answer: Answer,
}

/// Duplicates an accepted client socket so the tunnel owns a handle of its
/// own (registered with this thread's reactor).
pub fn client_socket(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<TcpStream> {
    let std_stream = std::net::TcpStream::from(fd.try_clone_to_owned()?);
    std_stream.set_nonblocking(true)?;
    TcpStream::from_std(std_stream)
}

/// Edits a response head for the client: drops `drop_headers`, adds the
/// `add` (name, value) pairs the upstream did not send itself, and for a
/// refusal forces `Connection: close`.
fn edit_head(resp: &httparse::Response, drop_headers: &[&str], add: &[(&str, &str)]) -> Vec<u8> {
    let refusal = resp.code != Some(101);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(resp.code.unwrap_or(502).to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let skip = drop_headers.iter().any(|d| h.name.eq_ignore_ascii_case(d))
            || (refusal && (h.name.eq_ignore_ascii_case("connection") || h.name.eq_ignore_ascii_case("keep-alive")));
        if skip {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    for (n, v) in add {
        if resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if refusal {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

impl Tunnel {
    /// Connects to `addr`, sends `request_head` and reads the answer head.
    pub async fn open(
        addr: SocketAddr,
        request_head: &[u8],
        connect_timeout: Duration,
        read_timeout: Duration,
        drop_headers: &[&str],
        add_headers: &[(&str, &str)],
    ) -> Result<Tunnel, TunnelError> {
        let mut upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(TunnelError::ConnectTimeout(addr)),
            Ok(Err(err)) => return Err(TunnelError::Connect { addr, err }),
            Ok(Ok(s)) => s,
        };
        let _ = upstream.set_nodelay(true);
        upstream.write_all(request_head).await.map_err(TunnelError::Upstream)?;
        let read = async {
            let mut buf = Vec::with_capacity(1024);
            loop {
                if buf.len() >= MAX_RESPONSE_HEAD {
                    return Err(TunnelError::Malformed);
                }
                buf.reserve(1024);
                let n = upstream.read_buf(&mut buf).await.map_err(TunnelError::Upstream)?;
                if n == 0 {
                    return Err(TunnelError::Closed);
                }
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let status = resp.code.unwrap_or(0);
                        let header = |name: &str| {
                            resp.headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case(name))
                                .map(|h| h.value)
                        };
                        let content_length = header("content-length")
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|v| v.trim().parse().ok());
                        let chunked = header("transfer-encoding").is_some_and(|v| {
                            v.split(|&b| b == b',')
                                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                        });
                        let replay = header(REPLAY_HEADER).map(<[u8]>::to_vec);
                        let head = edit_head(&resp, drop_headers, add_headers);
                        let rest = buf[len..].to_vec();
                        return Ok(Answer {
                            status,
                            head,
                            rest,
                            replay,
                            content_length,
                            chunked,
                        });
                    }
                    // 1xx other than 101 are not expected on an upgrade; treat as the answer.
                    Ok(httparse::Status::Partial) => continue,
                    Err(_) => return Err(TunnelError::Malformed),
                }
            }
        };
        let answer = tokio::time::timeout(read_timeout, read)
            .await
            .map_err(|_| TunnelError::ReadTimeout)??;
        Ok(Tunnel { upstream, answer })
    }

    /// Relays a non-101 answer (head and body) to the client; no tunnel.
    pub async fn refuse<W: tokio::io::AsyncWrite + Unpin>(
        mut self,
        client: &mut W,
        read_timeout: Duration,
    ) -> Result<(), TunnelError> {
        let a = &mut self.answer;
        let mut body = std::mem::take(&mut a.rest);
        let (chunked, length) = (a.chunked, a.content_length);
        let read_body = async {
            loop {
                let done = if chunked {
                    body.ends_with(b"0\r\n\r\n")
                } else if let Some(n) = length {
                    body.len() >= n
                } else {
                    false
                };
                if done || body.len() > MAX_REFUSAL_BODY {
                    break;
                }
                body.reserve(4096);
                match self.upstream.read_buf(&mut body).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(read_timeout, read_body).await;
        if let Some(n) = length {
            body.truncate(n);
        }
        client.write_all(&a.head).await.map_err(TunnelError::Client)?;
        client.write_all(&body).await.map_err(TunnelError::Client)?;
        Ok(())
    }

    /// Relays the `101` and pumps bytes both ways until the tunnel ends.
    /// Returns bytes carried (client→upstream, upstream→client).
    ///
    /// With `stop`, the tunnel also ends when the edge shuts down: after the
    /// stop's delay (spread over tunnels so clients do not all reconnect at
    /// once) each direction is read up to its next frame boundary, a close
    /// frame with the stop's code goes to both the client and the VM, and
    /// the tunnel ends (at most [`DRAIN_LIMIT`] later).
    pub async fn run(
        self,
        client: TcpStream,
        idle_timeout: Duration,
        stop: Option<TunnelStop>,
    ) -> Result<(u64, u64), TunnelError> {
        let Tunnel { upstream, answer } = self;
        let mut down = Direction::default();
        // The 101 head goes first; frames the VM sent right behind it are
        // followed by the frame cursor.
        down.frames.advance(&answer.rest);
        let mut first = answer.head;
        first.extend_from_slice(&answer.rest);
        down.pending = first;
        down.flush(&client).map_err(TunnelError::Client)?;
        let mut up = Direction::default();
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let (mut watch, code, delay) = match stop {
            Some(s) => (Some(s.watch), s.code, s.delay),
            None => (None, going_away as fn() -> u16, Duration::ZERO),
        };
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let drain_at = tokio::time::sleep_until(far);
        tokio::pin!(drain_at);
        let mut stop_seen = false;
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            // Either side finishing ends the tunnel once what it sent is
            // delivered (WebSocket closes with frames; a half-open tunnel
            // would only hold sockets, as nginx also decides).
            if up.closed || down.closed || up.failed || down.failed {
                break;
            }
            if up.draining {
                let done = send_close_frames(&mut up, &mut down, &client, &upstream, code);
                if done || drain_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    let _ = socket2::SockRef::from(&client).shutdown(Shutdown::Write);
                    let _ = socket2::SockRef::from(&upstream).shutdown(Shutdown::Write);
                    break;
                }
            }
            tokio::select! {
                r = client.readable(), if up.can_read() => {
                    r.map_err(TunnelError::Client)?;
                    up.pump(&client, &upstream);
                }
                r = upstream.writable(), if up.has_pending() => {
                    r.map_err(TunnelError::Upstream)?;
                    up.drain_pending(&upstream);
                }
                r = upstream.readable(), if down.can_read() => {
                    r.map_err(TunnelError::Upstream)?;
                    down.pump(&upstream, &client);
                }
                r = client.writable(), if down.has_pending() => {
                    r.map_err(TunnelError::Client)?;
                    down.drain_pending(&client);
                }
                r = async { watch.as_mut().expect("guarded").changed().await }, if watch.is_some() && !stop_seen => {
                    let stopping = r.is_err() || watch.as_ref().is_some_and(|w| *w.borrow());
                    if stopping {
                        stop_seen = true;
                        drain_at.as_mut().reset(tokio::time::Instant::now() + delay);
                    }
                }
                _ = &mut drain_at, if stop_seen => {
                    if !up.draining {
                        up.draining = true;
                        down.draining = true;
                        let until = tokio::time::Instant::now() + DRAIN_LIMIT;
                        drain_deadline = Some(until);
                        drain_at.as_mut().reset(until);
                    }
                    continue;
                }
                _ = &mut idle => break,
            }
            idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
        }
        Ok((up.carried, down.carried))
    }
}

/// While a tunnel drains: each direction that sits at a frame boundary
/// with nothing pending gets its close frame (once). True once both close
/// frames are sent and delivered.
fn send_close_frames(
    up: &mut Direction,
    down: &mut Direction,
    client: &TcpStream,
    upstream: &TcpStream,
    code: fn() -> u16,
) -> bool {
    if !down.close_sent && down.frames.at_boundary() && down.pending.is_empty() {
        down.pending.extend_from_slice(&close_frame_to_client(code()));
        down.close_sent = true;
        down.drain_pending(client);
    }
    if !up.close_sent && up.frames.at_boundary() && up.pending.is_empty() {
        up.pending.extend_from_slice(&close_frame_to_server(code(), mask_key()));
        up.close_sent = true;
        up.drain_pending(upstream);
    }
    up.close_sent && down.close_sent && up.pending.is_empty() && down.pending.is_empty()
}

/// Longest a tunnel waits for a frame boundary once it is told to stop.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How a tunnel learns that the edge is stopping.
pub struct TunnelStop {
    /// Turns true when the process begins a graceful stop or upgrade.
    pub watch: tokio::sync::watch::Receiver<bool>,
    /// The close code to send, read when the tunnel drains (the kind of
    /// stop is known only then).
    pub code: fn() -> u16,
    /// Wait after the signal before draining this tunnel.
    pub delay: Duration,
}

pub(super) fn going_away() -> u16 {
    CLOSE_GOING_AWAY
}

/// A masking key for a frame the edge sends to a VM (RFC 6455 §5.3).
pub(super) fn mask_key() -> [u8; 4] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0x5bd1_e995);
    (edgeplane_core::bits::splitmix64(t as u64 ^ 0x9e37_79b9) as u32).to_be_bytes()
}

/// One direction of a tunnel: bytes that could not be written yet, and
/// whether its source has closed.
#[derive(Default)]
struct Direction {
    pending: Vec<u8>,
    /// The source sent EOF (and the sink's write half was shut after the
    /// pending bytes went out).
    closed: bool,
    eof_seen: bool,
    failed: bool,
    carried: u64,
    /// Frame boundaries of the bytes read from this direction's source.
    frames: FrameCursor,
    /// Stopping: read only up to the next frame boundary.
    draining: bool,
    close_sent: bool,
}

impl Direction {
    fn can_read(&self) -> bool {
        !self.eof_seen
            && self.pending.is_empty()
            && !self.failed
            && !(self.draining && (self.close_sent || self.frames.at_boundary()))
    }

    fn has_pending(&self) -> bool {
        !self.pending.is_empty() && !self.failed
    }

    /// Writes what is pending; true when all of it went out.
    fn flush(&mut self, to: &TcpStream) -> io::Result<bool> {
        while !self.pending.is_empty() {
            match to.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        // Give the memory back: an idle tunnel keeps no buffer.
        self.pending = Vec::new();
        Ok(true)
    }

    fn finish_if_eof(&mut self, to: &TcpStream) {
        if self.eof_seen && self.pending.is_empty() && !self.closed {
            self.closed = true;
            let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
        }
    }

    fn drain_pending(&mut self, to: &TcpStream) {
        match self.flush(to) {
            Ok(_) => self.finish_if_eof(to),
            Err(_) => self.failed = true,
        }
    }

    /// Moves everything readable now from `from` into `to`.
    fn pump(&mut self, from: &TcpStream, to: &TcpStream) {
        SCRATCH_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            loop {
                let limit = if self.draining {
                    (self.frames.to_boundary().min(buf.len() as u64)) as usize
                } else {
                    buf.len()
                };
                if limit == 0 {
                    break;
                }
                match from.try_read(&mut buf[..limit]) {
                    Ok(0) => {
                        self.eof_seen = true;
                        break;
                    }
                    Ok(n) => {
                        self.carried += n as u64;
                        self.frames.advance(&buf[..n]);
                        let mut at = 0;
                        while at < n {
                            match to.try_write(&buf[at..n]) {
                                Ok(w) => at += w,
                                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                                Err(_) => {
                                    self.failed = true;
                                    return;
                                }
                            }
                        }
                        if at < n {
                            // The sink is full: keep the rest and stop reading
                            // this side until it drains (back-pressure).
                            self.pending.extend_from_slice(&buf[at..n]);
                            return;
                        }
                        if n < limit {
                            // Short read: the socket is most likely drained.
                            // The next readiness event brings us back.
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.failed = true;
                        return;
                    }
                }
            }
        });
        self.finish_if_eof(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_heads_close_and_edits_apply() {
        let raw =
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: keep-alive\r\nX-Edgeplane-Replay: r1\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut h);
        r.parse(raw).unwrap();
        let out = String::from_utf8(edit_head(&r, &["x-edgeplane-replay"], &[("x-request-id", "abc")])).unwrap();
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        assert!(out.contains("Content-Length: 3\r\n"));
        assert!(out.contains("x-request-id: abc\r\n"));
        assert!(out.contains("connection: close\r\n"));
        assert!(!out.to_ascii_lowercase().contains("replay"));
        assert!(!out.contains("keep-alive"));
        assert!(out.ends_with("\r\n\r\n"));
    }

    #[test]
    fn switching_heads_keep_upgrade() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut h);
        r.parse(raw).unwrap();
        let out = String::from_utf8(edit_head(&r, &[], &[])).unwrap();
        assert!(
            out.contains("Connection: Upgrade\r\n") && out.contains("Upgrade: websocket\r\n"),
            "{out}"
        );
        assert!(!out.contains("close"));
    }
}
