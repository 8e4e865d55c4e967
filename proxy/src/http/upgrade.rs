//! WebSocket upgrades the edge carries itself ([`super::tunnel`]): connect
//! to the decided address (moving a repl being placed past a VM that does
//! not answer, replaying an upgrade the VM refuses with
//! `x-edgeplane-replay`), relay the answer, pump the tunnel.
//!
//! Only plain-TCP client connections take this path (the tunnel needs the
//! socket); TLS ones use Pingora's upgrade path.

use std::time::Duration;

use pingora_core::protocols::http::ServerSession;
use pingora_core::{Error, ErrorType, Result};

use edgeplane_config::LimitsConfig;

use super::headers::request_head_bytes;
use super::tunnel::{client_socket, Tunnel, TunnelStop};
use super::{Proxy, RequestCtx, REPLAY_HEADER, REQUEST_ID_HEADER, ROUTE_HEADER};
use crate::clock::entropy;
use crate::route::{self, Decision};

/// The client socket of a plain-TCP HTTP/1 session (None for TLS or H2,
/// which keep Pingora's own upgrade path), lent for as long as the session.
pub(super) fn plain_tcp_fd(session: &ServerSession) -> Option<std::os::fd::BorrowedFd<'_>> {
    use std::os::fd::AsRawFd;
    let fd = session
        .stream()?
        .as_any()
        .downcast_ref::<crate::conn::ConnStream>()?
        .inner()
        .as_any()
        .downcast_ref::<pingora_core::protocols::l4::stream::Stream>()?
        .as_raw_fd();
    // SAFETY: the descriptor belongs to the session's stream, which owns it
    // and keeps it open while the session lives; the borrow is tied to
    // `session`'s lifetime, so it cannot outlive the descriptor.
    #[allow(unsafe_code)]
    Some(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

impl Proxy {
    /// Carries a WebSocket upgrade itself ([`crate::http::tunnel`]): connect to the
    /// decided address, send the edited head, relay the answer, and pump the
    /// tunnel until it ends. Errors before the answer get the edge's own
    /// 502/504 page, exactly as on the proxied path.
    pub(super) async fn tunnel_websocket(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<()> {
        session.set_keepalive(None);
        // The answer goes out on the socket itself, not through the session.
        ctx.reusable = false;
        let limits = self.limits();
        let grace_period = self.cfg.load().edge.grace_period;
        let Some(t) = self.open_tunnel(session, ctx, &limits).await? else {
            return Ok(());
        };
        if let Some(h) = ctx.vm_hash {
            self.route.load().balancer.outliers.success(h);
        }
        ctx.status = t.answer.status;
        let fd = plain_tcp_fd(session).ok_or_else(|| Error::explain(ErrorType::InternalError, "no client socket"))?;
        let mut client =
            client_socket(fd).map_err(|e| Error::because(ErrorType::InternalError, "dup client socket", e))?;
        if t.answer.status != 101 {
            let _ = t.refuse(&mut client, limits.upstream_read_timeout).await;
            return Ok(());
        }
        // The tunnel leaves the request: it owns the client socket (the
        // duplicate; Pingora's descriptor closes with the session as this
        // request ends), the VM's and a share of the admission guard, and
        // nothing of the HTTP machinery.
        ctx.tunnel = true;
        ctx.tunnel_detached = true;
        self.metrics.tunnels_active.inc();
        let conn = crate::conn::conn_of(session);
        let guard = conn.and_then(|c| c.admission_guard());
        let stop = conn.and_then(|c| c.shutdown()).map(|w| TunnelStop {
            watch: w.clone(),
            code: super::tunnel::close_code,
            // Spread closes over the first half of the grace period (at most
            // 10 s) so clients do not all reconnect in the same instant.
            delay: Duration::from_millis(entropy() % (grace_period.as_millis() as u64 / 2).clamp(1, 10_000)),
        });
        let addr = t.upstream.peer_addr().ok();
        let metrics = self.metrics.clone();
        // The client connection stays open in the tunnel after the request
        // (whose connection count ends with it) returns.
        metrics.connections_active.inc();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = t.run(client, limits.tunnel_idle_timeout, stop).await {
                log::debug!("tunnel to {addr:?} ended: {e}");
            }
            metrics.tunnels_active.dec();
            metrics.connections_active.dec();
        });
        Ok(())
    }

    /// A WebSocket upgrade on a TLS connection: the same connection to the
    /// VM, retries and replays as [`Proxy::tunnel_websocket`]; the answer
    /// and the tunnel go out on the client's TLS stream once the request
    /// has handed it over ([`super::tls_tunnel`]).
    pub(super) async fn tunnel_websocket_tls(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<()> {
        let limits = self.limits();
        let grace_period = self.cfg.load().edge.grace_period;
        let Some(t) = self.open_tunnel(session, ctx, &limits).await? else {
            session.set_keepalive(None);
            ctx.reusable = false;
            return Ok(());
        };
        if let Some(h) = ctx.vm_hash {
            self.route.load().balancer.outliers.success(h);
        }
        ctx.status = t.answer.status;
        ctx.tunnel = t.answer.status == 101;
        ctx.tunnel_detached = true;
        // Pingora gives the stream back only from a connection it could
        // reuse: nothing was written through the session, so it can.
        session.set_keepalive(Some(1));
        let conn = crate::conn::conn_of(session);
        ctx.handover = Some(Box::new(super::tls_tunnel::Handover {
            tunnel: t,
            idle_timeout: limits.tunnel_idle_timeout,
            read_timeout: limits.upstream_read_timeout,
            stop: conn.and_then(|c| c.shutdown()).map(|w| TunnelStop {
                watch: w.clone(),
                code: super::tunnel::close_code,
                delay: Duration::from_millis(entropy() % (grace_period.as_millis() as u64 / 2).clamp(1, 10_000)),
            }),
            guard: conn.and_then(|c| c.admission_guard()),
            metrics: self.metrics.clone(),
        }));
        Ok(())
    }

    /// Connects to the decided address and sends the edited head, as often
    /// as the answer asks: a connect failure or reset moves a repl being
    /// placed to another VM; a refusal carrying x-edgeplane-replay sends the
    /// upgrade to the VM's target, once. `None` when the edge answered the
    /// client itself (502/504).
    async fn open_tunnel(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        limits: &LimitsConfig,
    ) -> Result<Option<Tunnel>> {
        loop {
            let addr = match ctx.decision {
                Some(Decision::Vm { addr, .. }) | Some(Decision::Forward { addr, .. }) => addr,
                _ => return Error::e_explain(ErrorType::InternalError, "no routing decision"),
            };
            let mut head = session.req_header().clone();
            self.edit_upstream_request(session, &mut head, ctx)?;
            let bytes = request_head_bytes(&head);
            let id = ctx.request_id.clone().unwrap_or_default();
            let mut add: Vec<(&str, &str)> = vec![(REQUEST_ID_HEADER, id.as_str())];
            if let Some(r) = &ctx.debug_route {
                add.push((ROUTE_HEADER, r.as_str()));
            }
            let opened = Tunnel::open(
                addr,
                &bytes,
                limits.upstream_connect_timeout,
                limits.upstream_read_timeout,
                &[REPLAY_HEADER, ROUTE_HEADER],
                &add,
            )
            .await;
            match opened {
                Ok(t) => {
                    let Some(value) = t.answer.replay.clone() else {
                        return Ok(Some(t));
                    };
                    let outcome = match self.plan_replay(session, ctx, &value) {
                        Ok(()) => route::replay::ReplayOutcome::Replayed,
                        Err(o) => o,
                    };
                    self.metrics.replays.with_label_values(&[outcome.as_str()]).inc();
                    if outcome != route::replay::ReplayOutcome::Replayed {
                        return Ok(Some(t));
                    }
                }
                Err(e) if e.before_answer() && self.retry_elsewhere(session, ctx, e.reason()) => {
                    log::debug!("tunnel to {addr}: {e}: retrying elsewhere");
                }
                Err(e) => {
                    let code = if e.reason().ends_with("timeout") { 504 } else { 502 };
                    self.note_upstream_failure(ctx, e.reason(), e.is_connect());
                    log::debug!("tunnel to {addr}: {e}");
                    self.respond(session, ctx, code).await?;
                    return Ok(None);
                }
            }
        }
    }
}
