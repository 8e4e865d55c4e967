//! Proxying one request to the decided VM or peer edge over HTTP/1.1, with
//! Pingora's HTTP/1 client codec on a connection from this thread's pool
//! ([`super::pool`]).
//!
//! One attempt: take or open a connection, write the edited head
//! ([`Proxy::edit_upstream_request`]), send the body (held for a replay up
//! to `limits.replay_body_bytes`), read the answer head, replay it if the
//! VM asks ([`Proxy::answered`]), write it to the client, relay the body,
//! give the connection back. What ends an attempt early decides the next
//! one ([`Proxy::next_try`]): a connect failure or a fresh connection reset
//! before any answer moves a repl being placed to another VM; a pooled
//! connection the VM closed as it was reused is tried again on a new one
//! (idempotent requests, body held); anything else is the edge's own
//! 502/504 page, or — once the answer has started — a closed connection.
//!
//! Where it sits: [`super::serve`] calls [`Proxy::proxy_request`] when the
//! filter did not answer. WebSocket upgrades take [`super::upgrade`]
//! instead (plain TCP and TLS), so a `101` here is a VM's error.

use std::net::SocketAddr;
use std::time::Duration;

use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::{Error, ErrorSource, ErrorType};

use edgeplane_config::LimitsConfig;

use super::headers::header_str;
use super::{pool, Proxy, RequestCtx};
use crate::clock::now_ms;
use crate::route::{self, Decision};

/// How an attempt that did not fail ended.
enum Attempt {
    /// The answer went to the client.
    Done,
    /// The VM asked for a replay; the decision now names the target.
    Replay,
}

/// Why an attempt failed.
struct Failure {
    e: Box<Error>,
    /// No connection was made.
    connect: bool,
    /// The connection came from the pool.
    reused: bool,
    /// Some of the answer reached the client: nothing more can be said.
    answer_started: bool,
}

impl Failure {
    fn upstream(e: Box<Error>, reused: bool) -> Failure {
        Failure {
            e: e.into_up(),
            connect: false,
            reused,
            answer_started: false,
        }
    }
    fn client(e: Box<Error>, answer_started: bool) -> Failure {
        Failure {
            e: e.into_down(),
            connect: false,
            reused: false,
            answer_started,
        }
    }
}

/// What to do after a failed attempt.
enum NextTry {
    /// Try the (possibly new) decision again.
    Again { fresh: bool },
    /// Give up: answer the failure.
    GiveUp,
}

impl Proxy {
    /// Proxies the request to its decision, trying again as the module docs
    /// say, and answers what could not be proxied.
    pub(super) async fn proxy_request(&self, session: &mut ServerSession, ctx: &mut RequestCtx) {
        let limits = self.limits();
        let mut fresh = false;
        loop {
            let addr = match ctx.decision {
                Some(Decision::Vm { addr, .. }) | Some(Decision::Forward { addr, .. }) => addr,
                _ => {
                    let e = Error::explain(ErrorType::InternalError, "no routing decision");
                    return self.give_up(session, ctx, &e).await;
                }
            };
            ctx.answered = false;
            let failure = match self.attempt(session, ctx, addr, &limits, fresh).await {
                Ok(Attempt::Done) => return,
                Ok(Attempt::Replay) => {
                    fresh = false;
                    continue;
                }
                Err(f) => f,
            };
            if failure.answer_started {
                // The client has part of an answer: closing is all that is left.
                ctx.reusable = false;
                log::debug!("proxying to {addr} failed mid-answer: {}", failure.e);
                if failure.e.esource() == &ErrorSource::Upstream {
                    self.metrics.upstream_errors.with_label_values(&["mid_answer"]).inc();
                }
                return;
            }
            match self.next_try(session, ctx, &failure, &limits) {
                NextTry::Again { fresh: f } => fresh = f,
                NextTry::GiveUp => return self.give_up(session, ctx, &failure.e).await,
            }
        }
    }

    /// The edge's own page for a request that could not be proxied; the
    /// connection closes after it.
    async fn give_up(&self, session: &mut ServerSession, ctx: &mut RequestCtx, e: &Error) {
        session.set_keepalive(None);
        ctx.reusable = false;
        self.answer_failure(session, e, ctx).await;
    }

    /// Decides what follows a failed attempt (see the module docs).
    fn next_try(&self, session: &ServerSession, ctx: &mut RequestCtx, f: &Failure, limits: &LimitsConfig) -> NextTry {
        if f.connect {
            let reason = match f.e.etype() {
                ErrorType::ConnectTimedout => "connect_timeout",
                ErrorType::ConnectRefused => "connect_refused",
                _ => "connect_error",
            };
            return match self.retry_elsewhere(session, ctx, reason) {
                true => NextTry::Again { fresh: false },
                false => NextTry::GiveUp,
            };
        }
        let reset = f.e.esource() == &ErrorSource::Upstream
            && matches!(
                f.e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if !reset || ctx.answered || !self.body_held(session, ctx, limits) {
            return NextTry::GiveUp;
        }
        if f.reused {
            // The VM closed a pooled connection as it was reused (the race
            // every keep-alive pool has): once more on a new connection.
            if session.req_header().method.is_idempotent() && !ctx.stale_retried {
                ctx.stale_retried = true;
                crate::logging::LOG_EVENTS.with_label_values(&["pool_reuse_race"]).inc();
                return NextTry::Again { fresh: true };
            }
            return NextTry::GiveUp;
        }
        // A VM that reset a fresh connection before answering: a repl being
        // placed moves to another VM.
        match self.retry_elsewhere(session, ctx, "connect_reset") {
            true => NextTry::Again { fresh: false },
            false => NextTry::GiveUp,
        }
    }

    /// The request body is whole at the edge (none, or all of it held), so
    /// the request can be sent again.
    fn body_held(&self, session: &ServerSession, ctx: &RequestCtx, limits: &LimitsConfig) -> bool {
        let declared = header_str(session.req_header(), "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let done = ctx.body_read || declared.is_none_or(|n| n == 0) && !is_chunked(session);
        route::replay::body_replayable(
            declared,
            ctx.body_bytes,
            done,
            session.retry_buffer_truncated(),
            limits.replay_body_bytes,
        )
    }

    /// One attempt at `addr` (see the module docs).
    async fn attempt(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        addr: SocketAddr,
        limits: &LimitsConfig,
        fresh: bool,
    ) -> Result<Attempt, Failure> {
        let idempotent = session.req_header().method.is_idempotent();
        let pooled = if fresh {
            None
        } else {
            pool::take(addr, now_ms(), !idempotent)
        };
        let reused = pooled.is_some();
        let stream = match pooled {
            Some(s) => s,
            None => connect(addr, limits.upstream_connect_timeout)
                .await
                .map_err(|e| Failure {
                    e: e.into_up(),
                    connect: true,
                    reused: false,
                    answer_started: false,
                })?,
        };
        let mut up = UpstreamSession::new(stream);
        up.read_timeout = Some(limits.upstream_read_timeout);
        up.write_timeout = Some(limits.upstream_read_timeout);

        let mut head = Box::new(session.req_header().clone());
        self.edit_upstream_request(session, &mut head, ctx)
            .map_err(|e| Failure::client(e, false))?;
        up.write_request_header(head)
            .await
            .map_err(|e| Failure::upstream(e, reused))?;
        self.send_body(session, &mut up, ctx, reused).await?;

        // The answer head (informational answers other than 101 are skipped).
        loop {
            up.read_response().await.map_err(|e| Failure::upstream(e, reused))?;
            match up.get_status() {
                Some(s) if s.is_informational() && s.as_u16() != 101 => continue,
                _ => break,
            }
        }
        let Some(mut resp) = up.resp_header().map(|h| Box::new(h.clone())) else {
            return Err(Failure::upstream(
                Error::explain(ErrorType::InvalidHTTPHeader, "no answer head"),
                reused,
            ));
        };
        if self.answered(session, &mut resp, ctx) {
            return Ok(Attempt::Replay);
        }
        self.edit_response(&mut resp, ctx)
            .map_err(|e| Failure::upstream(e, reused))?;
        if resp.status.as_u16() == 101 {
            // WebSocket upgrades take the tunnel paths; nothing else may
            // switch protocols through the edge.
            return Err(Failure::upstream(
                Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 to a request that is not a WebSocket upgrade",
                ),
                reused,
            ));
        }
        session
            .write_response_header(resp)
            .await
            .map_err(|e| Failure::client(e, true))?;
        loop {
            match up.read_body_bytes().await {
                Ok(Some(b)) => session
                    .write_response_body(b, false)
                    .await
                    .map_err(|e| Failure::client(e, true))?,
                Ok(None) => break,
                Err(e) => {
                    let mut f = Failure::upstream(e, reused);
                    f.answer_started = true;
                    return Err(f);
                }
            }
        }
        session.finish_body().await.map_err(|e| Failure::client(e, true))?;
        // Keep-alive as the VM's answer allows (HTTP/1.1 default, its
        // `Connection`, a close-delimited body).
        up.respect_keepalive();
        if let Some(s) = up.reuse().await {
            pool::give_back(addr, s, now_ms());
        }
        Ok(Attempt::Done)
    }

    /// Sends the request body: read from the client on the first attempt
    /// (counted against `limits.max_body_bytes`, kept for a replay), the
    /// held copy on a later one.
    async fn send_body(
        &self,
        session: &mut ServerSession,
        up: &mut UpstreamSession,
        ctx: &mut RequestCtx,
        reused: bool,
    ) -> Result<(), Failure> {
        if ctx.body_read {
            if let Some(held) = session.get_retry_buffer() {
                up.write_body(&held).await.map_err(|e| Failure::upstream(e, reused))?;
            }
        } else if !session.is_body_done() {
            session.enable_retry_buffering();
            if header_str(session.req_header(), "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
                session
                    .write_continue_response()
                    .await
                    .map_err(|e| Failure::client(e, false))?;
            }
            loop {
                match session.read_request_body().await {
                    Ok(Some(b)) => {
                        self.count_body(Some(&b), ctx).map_err(|e| Failure::client(e, false))?;
                        up.write_body(&b).await.map_err(|e| Failure::upstream(e, reused))?;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(Failure::client(e, false)),
                }
            }
        }
        ctx.body_read = true;
        up.finish_body().await.map_err(|e| Failure::upstream(e, reused))?;
        Ok(())
    }
}

fn is_chunked(session: &ServerSession) -> bool {
    header_str(session.req_header(), "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// A new connection to `addr`, within `timeout`.
async fn connect(addr: SocketAddr, timeout: Duration) -> pingora_core::Result<Stream> {
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let etype = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                _ => ErrorType::ConnectError,
            };
            return Err(Error::because(etype, format!("connecting to {addr}"), e));
        }
        Err(_) => {
            return Error::e_explain(
                ErrorType::ConnectTimedout,
                format!("connecting to {addr}: no answer in {timeout:?}"),
            )
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(L4Stream::from(tcp)))
}
