//! Proxying one request to the decided VM or peer edge over HTTP/1.1, on a
//! connection of this thread's pool ([`super::client::pool`]) or a new one.
//!
//! One attempt ([`Proxy::exchange`]): write the head
//! ([`Proxy::write_upstream_head`]); send the body while reading the
//! answer — full duplex, so an answer that comes before the body is done (a
//! 401 or 413 to an upload the VM will not take) reaches the client, and a
//! VM streaming its answer to a streaming upload gets both flowing; follow
//! a replay the answer asks for ([`Proxy::answered`]); hand a `101` to a
//! WebSocket tunnel ([`super::tunnel`]); else relay the answer and give the
//! connection back. What ends an attempt early is a [`Failed`], and its
//! [`Failure`]'s retry ([`Proxy::next_try`]) decides the next: a repl
//! being placed moves to another VM when nothing reached the one picked;
//! a pooled connection the VM had closed is tried once more on a new one
//! (idempotent requests whose body is held); anything else is the edge's
//! own page, or — once the answer began — a closed connection.
//!
//! The body ([`super::ctx::Body`]) is read from the client once: chunks of
//! up to `limits.replay_body_bytes` in all are held (shared `Bytes`, not
//! copies), so a retry or a replay sends them again; a larger body is
//! streamed and not kept.
//!
//! Where it sits: [`super::serve`] calls [`Proxy::proxy_request`] when the
//! filter did not answer; it tells serve how the client connection goes on.

use std::net::SocketAddr;

use super::downstream::Downstream;
use bytes::Bytes;

use edgeplane_config::LimitsConfig;

use super::client::body::{chunk_head, Decoder, Framing, Piece, LAST_CHUNK};
use super::client::{self, pool, Answer, Conn};
use super::ctx::{Body, DeclaredBody, Outcome, RequestCtx, Routed};
use super::failure::{Failed, Failure, Retry};
use super::serve::Next;
use super::tunnel::Opened;
use super::Proxy;
use crate::clock::now_ms;

/// Largest piece of an answer body handed to the client at once.
const MAX_PIECE: usize = 64 * 1024;

/// How an attempt that did not fail ended.
enum Exchanged {
    /// The answer went to the client; the client connection may carry
    /// another request when `reusable`.
    Relayed { reusable: bool },
    /// The VM asked for a replay; the decision now names the target.
    Replay,
    /// A WebSocket upgrade the VM accepted.
    Upgraded(Opened),
}

/// What to do after a failed attempt.
enum NextTry {
    /// Try the (possibly new) decision again, on a new connection when `fresh`.
    Again {
        fresh: bool,
    },
    GiveUp,
}

/// The request body on its way to the VM during one attempt.
struct Upload {
    /// The client may still send body bytes (the first attempt, until the
    /// end of the body).
    reading: bool,
    /// Chunked to the VM (a chunked or unframed client body).
    chunked: bool,
    /// The VM stopped taking the body (it answered early and closed).
    vm_closed: bool,
    /// An HTTP/2 request's declared `content-length`: the piece that would
    /// complete it is held back until the stream has ended
    /// ([`Upload::tail`]), so a stream whose DATA runs past its length
    /// (h2 refuses it as a stream error, RFC 9113 §8.1.1) never reaches
    /// the VM as a whole request. HTTP/1.1 bodies are framed by the length
    /// itself.
    hold_at: Option<u64>,
    /// The held-back last piece.
    tail: Option<Bytes>,
}

impl Upload {
    /// How long the VM may be silent: untimed while the client's body is
    /// still going to it (a client uploading slowly is the client body
    /// timeout's business), the upstream read timeout once it is all out.
    fn vm_read_timeout(&self, limits: &LimitsConfig) -> std::time::Duration {
        if self.reading && !self.vm_closed {
            LONG_WAIT
        } else {
            limits.upstream_read_timeout
        }
    }
}

impl Proxy {
    /// Proxies the request to its decision, trying again as the module docs
    /// say, and answers what could not be proxied.
    pub(super) async fn proxy_request<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        websocket: bool,
    ) -> Next {
        let limits = self.limits();
        let mut fresh = false;
        loop {
            let Some(addr) = ctx.route.as_ref().and_then(Routed::target) else {
                return self
                    .give_up(session, ctx, Failed::new(Failure::Internal, "no routing decision"))
                    .await;
            };
            let failed = match self.exchange(session, ctx, addr, &limits, fresh, websocket).await {
                Ok(Exchanged::Relayed { reusable: true }) => return Next::Reuse,
                Ok(Exchanged::Relayed { reusable: false }) => return Next::Close,
                Ok(Exchanged::Replay) => {
                    fresh = false;
                    continue;
                }
                Ok(Exchanged::Upgraded(opened)) => return self.open_tunnel(session, ctx, opened, &limits),
                Err(f) => f,
            };
            if ctx.outcome != Outcome::Pending {
                // Part of the answer went out: closing is all that is left.
                self.note_failure(ctx, &failed);
                ctx.outcome = Outcome::Cut;
                return Next::Close;
            }
            match self.next_try(ctx, &failed) {
                NextTry::Again { fresh: f } => fresh = f,
                NextTry::GiveUp => return self.give_up(session, ctx, failed).await,
            }
        }
    }

    /// The edge's own page for a request that could not be proxied; the
    /// connection closes after it.
    async fn give_up<D: Downstream>(&self, session: &mut D, ctx: &mut RequestCtx, failed: Failed) -> Next {
        session.set_keepalive(None);
        self.answer_failure(session, ctx, &failed).await;
        Next::Close
    }

    /// Decides what follows a failed attempt (see the module docs).
    fn next_try(&self, ctx: &mut RequestCtx, f: &Failed) -> NextTry {
        // Sent again only whole: untouched, or read and kept.
        let held = matches!(ctx.body, Body::Held { .. } | Body::Unread) && ctx.outcome == Outcome::Pending;
        match f.kind.retry() {
            Retry::Elsewhere if held && self.retry_elsewhere(ctx, f) => NextTry::Again { fresh: false },
            Retry::FreshConnection if held && ctx.head.idempotent && !ctx.tries.fresh_retried => {
                ctx.tries.fresh_retried = true;
                crate::logging::LOG_EVENTS.with_label_values(&["pool_reuse_race"]).inc();
                log::debug!("{f}: once more on a new connection");
                NextTry::Again { fresh: true }
            }
            _ => NextTry::GiveUp,
        }
    }

    /// One attempt at `addr` (see the module docs).
    async fn exchange<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        addr: SocketAddr,
        limits: &LimitsConfig,
        fresh: bool,
        websocket: bool,
    ) -> Result<Exchanged, Failed> {
        let pooled = (!fresh && !websocket)
            .then(|| pool::take(addr, now_ms(), !ctx.head.idempotent))
            .flatten();
        let mut conn = match pooled {
            Some(c) => c,
            None => client::connect(addr, limits.upstream_connect_timeout).await?,
        };
        let mut up = Upload {
            reading: matches!(ctx.body, Body::Unread) && ctx.head.body != DeclaredBody::None,
            chunked: ctx.head.body.chunked_upstream(),
            vm_closed: false,
            hold_at: match ctx.head.body {
                DeclaredBody::Length(n) if n > 0 && session.is_http2() => Some(n),
                _ => None,
            },
            tail: None,
        };
        if !up.reading && matches!(ctx.body, Body::Unread) {
            ctx.body = Body::Held {
                chunks: Vec::new(),
                bytes: 0,
            };
        }
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        // The connection's own write buffer, kept with it in the pool.
        let mut head = std::mem::take(&mut conn.wbuf);
        self.write_upstream_head(session.head(), ctx, client_ip, websocket, &mut head);
        let sent = self.send_held(&mut conn, ctx, &head, &up, limits).await;
        conn.wbuf = head;
        sent?;
        if up.reading && ctx.head.expect_continue {
            session
                .write_continue_response()
                .await
                .map_err(|e| Failed::client(&e))?;
        }
        let mut answer = self.await_answer(session, ctx, &mut conn, &mut up, limits).await?;
        if up.reading && answer.head.contains(super::REPLAY_HEADER) {
            // A replay asked before the body was all here: the rest is read
            // and held (not sent to this VM) so that it can go where asked.
            self.hold_rest(session, ctx, &mut up, limits).await?;
        }
        if self.answered(ctx, &mut answer.head) {
            return Ok(Exchanged::Replay);
        }
        self.edit_response(&mut answer.head, ctx);
        if answer.status == 101 {
            if !websocket {
                return Err(Failed::new(
                    Failure::BadAnswer,
                    "101 to a request that is not a WebSocket upgrade",
                ));
            }
            let head = answer
                .head
                .to_bytes(super::upstream::answer_extras(ctx, &answer.head).as_slice());
            return Ok(Exchanged::Upgraded(Opened { conn, head }));
        }
        // A refused upgrade closes the client connection; so does an answer
        // that comes before the body ended when it refuses the request (the
        // VM will not read the rest). A streaming answer to a streaming
        // upload keeps it, if the body does end ([`Proxy::relay_answer`]).
        if websocket || (up.reading && (answer.status >= 400 || !answer.keep_alive)) {
            session.set_keepalive(None);
        } else if up.reading {
            // Pingora would announce a close for any answer before the body.
            session.set_close_on_response_before_downstream_finish(false);
        }
        self.relay_answer(session, ctx, conn, answer, &mut up, limits).await
    }

    /// Writes the head and, on a later attempt, the held body (one write
    /// when it fits).
    async fn send_held(
        &self,
        conn: &mut Conn,
        ctx: &RequestCtx,
        head: &[u8],
        up: &Upload,
        limits: &LimitsConfig,
    ) -> Result<(), Failed> {
        let timeout = limits.upstream_read_timeout;
        let chunks: &[Bytes] = match &ctx.body {
            Body::Held { chunks, .. } if !up.reading => chunks,
            _ => &[],
        };
        if !up.chunked {
            return match chunks {
                [] => conn.write_all(&[head], timeout).await,
                [one] => conn.write_all(&[head, one], timeout).await,
                [first, rest @ ..] => {
                    conn.write_all(&[head, first], timeout).await?;
                    for c in rest {
                        conn.write_all(&[c], timeout).await?;
                    }
                    Ok(())
                }
            };
        }
        conn.write_all(&[head], timeout).await?;
        if !up.reading {
            for c in chunks {
                write_chunk(conn, c, timeout).await?;
            }
            conn.write_all(&[LAST_CHUNK], timeout).await?;
        }
        Ok(())
    }

    /// Reads the answer head while the body (if it is still coming) goes
    /// to the VM.
    async fn await_answer<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        conn: &mut Conn,
        up: &mut Upload,
        limits: &LimitsConfig,
    ) -> Result<Answer, Failed> {
        loop {
            if let Some(answer) = conn.take_answer(ctx.head.head_request)? {
                return Ok(answer);
            }
            if conn.rbuf.len() >= client::MAX_ANSWER_HEAD {
                return Err(Failed::new(Failure::BadAnswer, "answer head over 64 KiB"));
            }
            let read_timeout = up.vm_read_timeout(limits);
            tokio::select! {
                biased;
                n = conn.read_more(read_timeout, false) => {
                    if n? == 0 {
                        let kind = if conn.pooled { Failure::PooledConnectionClosed } else { Failure::ResetBeforeAnswer };
                        let kind = if conn.rbuf.is_empty() { kind } else { Failure::BadAnswer };
                        return Err(Failed::new(kind, format!("{} closed before answering", conn.addr)));
                    }
                }
                piece = session.read_request_body(), if up.reading => {
                    self.upload(ctx, conn, up, piece, limits).await?;
                }
            }
        }
    }

    /// Relays the answer body; the request body goes on to the VM while
    /// it lasts. The connection goes back to the pool when both are whole.
    async fn relay_answer<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        mut conn: Conn,
        answer: Answer,
        up: &mut Upload,
        limits: &LimitsConfig,
    ) -> Result<Exchanged, Failed> {
        let status = answer.status;
        let Answer {
            head,
            framing,
            keep_alive,
            ..
        } = answer;
        let extras = super::upstream::answer_extras(ctx, &head);
        session
            .write_answer_head(&head, extras.as_slice())
            .await
            .map_err(|e| Failed::client(&e))?;
        ctx.outcome = Outcome::Relayed(status);
        let mut decoder = Decoder::new(framing);
        loop {
            match decoder.next(&mut conn.rbuf, MAX_PIECE) {
                Ok(Piece::Data(b)) => {
                    session
                        .write_response_body(b, false)
                        .await
                        .map_err(|e| Failed::client(&e))?;
                    continue;
                }
                Ok(Piece::Done) => break,
                Ok(Piece::NeedMore) => {}
                Err(e) => return Err(Failed::new(Failure::AnswerCutShort, format!("{}: {e}", conn.addr))),
            }
            let read_timeout = up.vm_read_timeout(limits);
            tokio::select! {
                biased;
                n = conn.read_more(read_timeout, true) => match n {
                    Ok(0) => match decoder.eof() {
                        Ok(()) => break,
                        Err(e) => return Err(Failed::new(Failure::AnswerCutShort, format!("{}: {e}", conn.addr))),
                    },
                    Ok(_) => {}
                    Err(f) => return Err(Failed::new(Failure::AnswerCutShort, f.detail)),
                },
                piece = session.read_request_body(), if up.reading => {
                    self.upload(ctx, &mut conn, up, piece, limits).await?;
                }
            }
        }
        if up.reading {
            // The answer is whole before the body: the rest stays unread,
            // and the connection cannot carry another request.
            session.set_keepalive(None);
            session.finish_body().await.map_err(|e| Failed::client(&e))?;
            ctx.body = Body::Abandoned {
                bytes: ctx.body.bytes(),
            };
            return Ok(Exchanged::Relayed { reusable: false });
        }
        session.finish_body().await.map_err(|e| Failed::client(&e))?;
        if keep_alive && framing != Framing::UntilClose && !up.vm_closed {
            pool::give_back(conn, now_ms());
        }
        Ok(Exchanged::Relayed { reusable: true })
    }

    /// One piece of the client's body (or its end): counted against
    /// `limits.max_body_bytes`, held while it fits `limits.replay_body_bytes`,
    /// and written to the VM (unless the VM stopped taking it).
    async fn upload(
        &self,
        ctx: &mut RequestCtx,
        conn: &mut Conn,
        up: &mut Upload,
        piece: pingora_core::Result<Option<Bytes>>,
        limits: &LimitsConfig,
    ) -> Result<(), Failed> {
        self.upload_to(ctx, Some(conn), up, piece, limits).await
    }

    /// [`Proxy::upload`] to `conn` (None: hold only).
    async fn upload_to(
        &self,
        ctx: &mut RequestCtx,
        conn: Option<&mut Conn>,
        up: &mut Upload,
        piece: pingora_core::Result<Option<Bytes>>,
        limits: &LimitsConfig,
    ) -> Result<(), Failed> {
        let timeout = limits.upstream_read_timeout;
        let piece = piece.map_err(|e| Failed::client(&e))?;
        let Some(b) = piece else {
            up.reading = false;
            ctx.body = match std::mem::take(&mut ctx.body) {
                Body::Reading {
                    kept: Some(chunks),
                    bytes,
                } => Body::Held { chunks, bytes },
                Body::Reading { kept: None, bytes } => Body::Sent { bytes },
                Body::Unread => Body::Held {
                    chunks: Vec::new(),
                    bytes: 0,
                },
                other => other,
            };
            let last: &[u8] = match (&up.tail, up.chunked) {
                (Some(tail), _) => tail,
                (None, true) => LAST_CHUNK,
                (None, false) => &[],
            };
            if let (false, false, Some(conn)) = (last.is_empty(), up.vm_closed, conn) {
                if conn.write_all(&[last], timeout).await.is_err() {
                    up.vm_closed = true;
                }
            }
            up.tail = None;
            return Ok(());
        };
        let total = ctx.body.bytes() + b.len() as u64;
        if total > limits.max_body_bytes {
            return Err(Failed::new(
                Failure::BodyTooLarge,
                format!("request body over limits.max_body_bytes ({})", limits.max_body_bytes),
            ));
        }
        // Kept while the whole body fits the replay limit (shared, not copied).
        let fits = total <= limits.replay_body_bytes as u64;
        ctx.body = match std::mem::take(&mut ctx.body) {
            Body::Reading {
                kept: Some(mut chunks), ..
            } if fits => {
                chunks.push(b.clone());
                Body::Reading {
                    kept: Some(chunks),
                    bytes: total,
                }
            }
            Body::Unread if fits => Body::Reading {
                kept: Some(vec![b.clone()]),
                bytes: total,
            },
            _ => Body::Reading {
                kept: None,
                bytes: total,
            },
        };
        let Some(conn) = conn.filter(|_| !up.vm_closed && !b.is_empty()) else {
            return Ok(());
        };
        if up.hold_at == Some(total) {
            up.tail = Some(b);
            return Ok(());
        }
        let written = if up.chunked {
            write_chunk(conn, &b, timeout).await
        } else {
            conn.write_all(&[&b], timeout).await
        };
        if let Err(f) = written {
            // The VM stopped reading: its answer (if any) is read next.
            log::debug!("the VM stopped taking the body: {f}");
            up.vm_closed = true;
        }
        Ok(())
    }

    /// Reads the rest of the body without sending it, holding it while it
    /// fits `limits.replay_body_bytes` (a replay then sends it whole).
    async fn hold_rest<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        up: &mut Upload,
        limits: &LimitsConfig,
    ) -> Result<(), Failed> {
        while up.reading && matches!(ctx.body, Body::Reading { kept: Some(_), .. }) {
            let piece = session.read_request_body().await;
            self.upload_to(ctx, None, up, piece, limits).await?;
        }
        Ok(())
    }

    /// The `101` goes to a tunnel of its own: on a plain listener now, on
    /// a TLS one once the session hands the stream over ([`Next::HandOver`]).
    fn open_tunnel<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        opened: Opened,
        limits: &LimitsConfig,
    ) -> Next {
        if let Some(h) = ctx.route.as_ref().and_then(|r| r.vm_hash) {
            self.shared.route.load().balancer.outliers.success(h);
        }
        ctx.outcome = Outcome::Tunnel;
        let conn = session.conn();
        let grace = self.shared.cfg.load().edge.grace_period;
        let shutdown = conn
            .and_then(|c| c.shutdown())
            .map_or_else(crate::shutdown::Shutdown::never, |w| {
                crate::shutdown::Shutdown::new(w.clone())
            });
        let tunnel = super::tunnel::Tunnel {
            opened,
            idle_timeout: limits.tunnel_idle_timeout,
            stop: super::tunnel::TunnelStop::new(shutdown, grace),
            guard: super::tunnel::TunnelGuard::new(self.shared.metrics.clone(), conn.and_then(|c| c.admission_guard())),
        };
        match session.plain_tcp_fd().map(super::tunnel::client_socket) {
            Some(Ok(client)) => {
                super::tunnel::spawn(client, tunnel, &[]);
                Next::Close
            }
            Some(Err(e)) => {
                log::error!("a WebSocket tunnel could not take its client socket: {e}");
                Next::Close
            }
            // TLS: Pingora gives the stream back only from a connection it
            // could reuse; nothing was written through the session, so it can.
            None => {
                session.set_keepalive(Some(1));
                Next::HandOver(Box::new(tunnel))
            }
        }
    }
}

/// How long the VM may be silent while the client is still sending the
/// body (the client's body timeout bounds that; this only keeps the timer
/// finite).
const LONG_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// One chunk of a chunked body: its size line, data and CRLF, in one write.
async fn write_chunk(conn: &mut Conn, data: &[u8], timeout: std::time::Duration) -> Result<(), Failed> {
    if data.is_empty() {
        return Ok(());
    }
    let mut line = [0u8; 18];
    let line = chunk_head(data.len(), &mut line);
    conn.write_all(&[line, data, b"\r\n"], timeout).await
}
