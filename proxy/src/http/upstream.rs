//! Talking to the VM or peer edge: the peer to dial, the request head it
//! gets, and what the edge does when the first try does not go well — a
//! connect failure for a repl being placed moves to another VM, an answer
//! carrying `x-edgeplane-replay` is replayed where it says (both decided by
//! the pure `edgeplane_core::route::replay`), any other failure becomes the
//! edge's own 502/504 page.
//!
//! Where it sits: the `ProxyHttp` hooks of [`super::Proxy`] from
//! `upstream_peer` to `fail_to_proxy`; the WebSocket tunnel path
//! ([`super::upgrade`]) uses the same head edits, retry and replay.
//! Start at [`Proxy::edit_upstream_request`], then [`Proxy::retry_elsewhere`].

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use edgeplane_control_sync::RoutingTable;

use super::headers::{header_str, is_websocket_upgrade, request_host, strip_for_upstream};
use super::{
    Proxy, RequestCtx, HOP_HEADER, REPLAY_HEADER, REPLAY_SRC_HEADER, REQUEST_ID_HEADER, ROUTE_HEADER,
    TRANSFER_FROM_HEADER,
};
use crate::clock::{entropy, now_ms};
use crate::route::signing::sign_hop;
use crate::route::{self, Decision};

/// How a failed request is answered and counted: the status the client
/// gets (0: none, the client is gone) and the `reason` label.
pub fn classify(e: &Error) -> (u16, &'static str) {
    let client_slow = e.esource() == &ErrorSource::Downstream && matches!(e.etype(), ErrorType::ReadTimedout);
    match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, "status"),
        _ if client_slow => (408, "client_timeout"),
        ErrorType::ConnectTimedout => (504, "connect_timeout"),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, "timeout"),
        ErrorType::ConnectRefused => (502, "connect_refused"),
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "upstream"),
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => (0, "downstream_closed"),
                _ => (400, "downstream"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal"),
        },
    }
}

/// Turns an HTTP/2 request head into the HTTP/1.1 one a VM gets: origin-form
/// target, and `Host` from `:authority` when the client sent none.
fn as_http11(head: &mut RequestHeader) -> Result<()> {
    if !head.headers.contains_key(http::header::HOST) {
        if let Some(a) = head.uri.authority().map(|a| a.as_str().to_string()) {
            head.insert_header(http::header::HOST, a)?;
        }
    }
    if head.uri.scheme().is_some() || head.uri.authority().is_some() {
        let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri =
            http::Uri::try_from(target).or_else(|e| Error::e_because(ErrorType::InvalidHTTPHeader, "target", e))?;
        head.set_uri(uri);
    }
    head.set_version(http::Version::HTTP_11);
    Ok(())
}

impl Proxy {
    /// Counts an upstream failure; a VM that could not be reached counts
    /// towards its ejection, and a remembered pick is forgotten.
    pub(super) fn note_upstream_failure(&self, ctx: &RequestCtx, reason: &str, connect_failed: bool) {
        self.metrics.upstream_errors.with_label_values(&[reason]).inc();
        let route = self.route.load();
        if let (true, Some(h)) = (connect_failed, ctx.vm_hash) {
            route.balancer.outliers.failure(h);
        }
        // A VM that refused us should not stay the remembered pick.
        if let Some(Decision::Vm {
            repl_hash,
            reason: route::VmReason::Picked | route::VmReason::Remembered,
            ..
        }) = ctx.decision
        {
            route.memory.forget(repl_hash);
        }
    }

    /// The request head edits for a VM or peer edge (shared by the proxied
    /// path and the WebSocket tunnel): internal headers dropped,
    /// `x-forwarded-*` and `x-request-id` set, hop or transfer header added.
    pub(super) fn edit_upstream_request(
        &self,
        session: &ServerSession,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Drop internal, hop-by-hop and spoofable headers (allocates only
        // when some are there).
        let websocket = is_websocket_upgrade(session.req_header());
        // Every `Connection` line counts (a client may send several).
        let connection = session.req_header().headers.get_all(http::header::CONNECTION);
        let strip = |k: &http::HeaderName| strip_for_upstream(k.as_str(), &connection, websocket);
        if upstream.headers.keys().any(strip) {
            let names: Vec<http::HeaderName> = upstream.headers.keys().filter(|k| strip(k)).cloned().collect();
            for k in names {
                upstream.remove_header(&k);
            }
        }
        if websocket {
            upstream.insert_header(http::header::CONNECTION, "upgrade")?;
        }
        if upstream.version != http::Version::HTTP_11 {
            as_http11(upstream)?;
        }
        let trusted_peer = ctx.hops_in > 0;
        if !trusted_peer {
            let client_ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            upstream.insert_header("x-forwarded-for", client_ip)?;
            upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
            let host = request_host(session.req_header()).map(<[u8]>::to_vec);
            match host {
                Some(h) => upstream.insert_header("x-forwarded-host", h)?,
                None => {
                    upstream.remove_header("x-forwarded-host");
                }
            }
            // One id for every attempt of this request (a replay or retry
            // keeps it).
            let id = ctx.request_id.get_or_insert_with(|| self.next_request_id());
            upstream.insert_header(REQUEST_ID_HEADER, id.as_str())?;
        } else {
            match header_str(session.req_header(), REQUEST_ID_HEADER) {
                Some(id) => ctx.request_id = Some(id.to_string()),
                None => {
                    let id = self.next_request_id();
                    upstream.insert_header(REQUEST_ID_HEADER, id.as_str())?;
                    ctx.request_id = Some(id);
                }
            }
        }
        match ctx.decision {
            Some(Decision::Forward { hops, .. }) => {
                let host = ctx.forward_host.as_deref().unwrap_or("");
                // The table is built for this edge's region, so its name is the config's.
                let cfg = self.cfg.load();
                let v = sign_hop(&cfg.security.hop_secret, &cfg.edge.region, hops, now_ms() / 1000, host);
                upstream.insert_header(HOP_HEADER, v)?;
            }
            Some(Decision::Vm { .. }) => {
                if let Some(from) = &ctx.transfer_from {
                    upstream.insert_header(TRANSFER_FROM_HEADER, from.as_ref())?;
                }
            }
            _ => {}
        }
        if let Some(src) = &ctx.replay_src {
            upstream.insert_header(REPLAY_SRC_HEADER, src.as_str())?;
        }
        // This edge joins the chain (after any `Via` the client or a peer
        // edge sent): one more line, no copy of the others.
        upstream.append_header(http::header::VIA, self.via.clone())?;
        Ok(())
    }

    /// Takes `next` as the request's decision (a connect retry or a
    /// replay): the VM hash, transfer and forward facts follow it.
    fn redirect(&self, session: &ServerSession, ctx: &mut RequestCtx, t: &RoutingTable, next: Decision) {
        match next {
            Decision::Vm { vm, transfer_from, .. } => {
                ctx.vm_hash = Some(t.vm(vm).id_hash);
                ctx.transfer_from = transfer_from.map(|c| t.cluster(c).name.clone());
                ctx.tried.push(vm);
            }
            Decision::Forward { region, reason, .. } => {
                ctx.vm_hash = None;
                ctx.transfer_from = None;
                ctx.forward_host = request_host(session.req_header())
                    .and_then(|h| route::host::canonical_host(h).ok())
                    .map(|c| c.as_str().to_string());
                self.metrics
                    .forwards
                    .with_label_values(&[&t.region(region).name, reason.as_str()])
                    .inc();
            }
            Decision::Reject { .. } => {}
        }
        ctx.decision = Some(next);
    }

    /// After a connection to a VM failed before any byte of the request was
    /// written (`reason`: refused, reset, timeout): for a repl being placed,
    /// counts the failure, moves the request to another VM of the cluster
    /// and returns true (Pingora then asks [`ProxyHttp::upstream_peer`]
    /// again). False when the decision may not move or no retry is left.
    pub(super) fn retry_elsewhere(&self, session: &ServerSession, ctx: &mut RequestCtx, reason: &str) -> bool {
        let Some(failed) = ctx.decision else {
            return false;
        };
        if ctx.retries >= self.cfg.load().balancer.connect_retries {
            return false;
        }
        let t = self.table.load();
        let route = self.route.load();
        let Some(next) = route::replay::retry_elsewhere(
            &route,
            &t,
            &failed,
            ctx.tried.as_slice(),
            entropy(),
            now_ms(),
            self.names.as_ref(),
        ) else {
            return false;
        };
        self.metrics.upstream_errors.with_label_values(&[reason]).inc();
        if let Some(h) = ctx.vm_hash {
            route.balancer.outliers.failure(h);
        }
        self.metrics.connect_retries.inc();
        ctx.retries += 1;
        log::debug!(
            "connect to {} failed ({reason}): retrying on {}",
            route::describe(&failed, &t),
            route::describe(&next, &t)
        );
        self.redirect(session, ctx, &t, next);
        true
    }

    /// A VM answered with `x-edgeplane-replay: value`: decide whether and
    /// where the request goes again (docs/contract.md §2 step 6: once, a body held whole,
    /// a known target). On `Ok` the request's decision is the replay's.
    pub(super) fn plan_replay(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        value: &[u8],
    ) -> std::result::Result<(), route::replay::ReplayOutcome> {
        use route::replay::{body_replayable, parse_target, replay, replay_source, FirstTry, ReplayOutcome};
        if ctx.replayed {
            return Err(ReplayOutcome::Again);
        }
        let target = parse_target(value).ok_or(ReplayOutcome::UnknownTarget)?;
        let limits = self.limits();
        let req = session.req_header();
        let declared = header_str(req, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let whole = body_replayable(
            declared,
            ctx.body_bytes,
            session.is_body_done(),
            session.retry_buffer_truncated(),
            limits.replay_body_bytes,
        );
        if !whole {
            return Err(ReplayOutcome::BodyTooLarge);
        }
        let Some(asked) = ctx.decision else {
            return Err(ReplayOutcome::UnknownTarget);
        };
        let t = self.table.load();
        let route = self.route.load();
        let (kind, repl_hash) = match asked {
            Decision::Vm { kind, repl_hash, .. } | Decision::Forward { kind, repl_hash, .. } => (kind, repl_hash),
            Decision::Reject { kind, .. } => (kind, 0),
        };
        let first = FirstTry {
            kind,
            repl_hash,
            hops_in: ctx.hops_in,
            entropy: entropy(),
        };
        let next = replay(&route, &t, target, first, self.names.as_ref())?;
        ctx.replay_src = Some(replay_source(&t, &asked));
        ctx.replayed = true;
        self.redirect(session, ctx, &t, next);
        Ok(())
    }

    /// An answer head arrived: true when it asks for a replay that may be
    /// made (the decision now names the target; the answer is dropped).
    /// Otherwise the client gets the VM's own answer, without the header.
    pub(super) fn answered(
        &self,
        session: &mut ServerSession,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> bool {
        ctx.answered = true;
        let Some(value) = resp.headers.get(REPLAY_HEADER).map(|v| v.as_bytes().to_vec()) else {
            return false;
        };
        let outcome = match self.plan_replay(session, ctx, &value) {
            Ok(()) => route::replay::ReplayOutcome::Replayed,
            Err(o) => o,
        };
        self.metrics.replays.with_label_values(&[outcome.as_str()]).inc();
        if outcome != route::replay::ReplayOutcome::Replayed {
            resp.remove_header(REPLAY_HEADER);
            return false;
        }
        true
    }

    /// Counts request body bytes against `limits.max_body_bytes` (chunked
    /// bodies have no length up front).
    pub(super) fn count_body(&self, body: Option<&Bytes>, ctx: &mut RequestCtx) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.limits().max_body_bytes {
                // The client's fault: counted, not logged as an ERROR.
                let mut e = Error::explain(ErrorType::HTTPStatus(413), "request body over limits.max_body_bytes");
                e.as_down();
                return Err(e);
            }
        }
        Ok(())
    }

    /// The VM's answer head on its way to the client.
    pub(super) fn edit_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        resp.remove_header(REPLAY_HEADER);
        resp.remove_header(ROUTE_HEADER);
        if let Some(r) = &ctx.debug_route {
            let _ = resp.insert_header(ROUTE_HEADER, r.as_str());
        }
        if let Some(h) = ctx.vm_hash {
            self.route.load().balancer.outliers.success(h);
        }
        if resp.status.as_u16() == 101 && !ctx.tunnel {
            ctx.tunnel = true;
            self.metrics.tunnels_active.inc();
        }
        if let Some(id) = &ctx.request_id {
            if !resp.headers.contains_key(REQUEST_ID_HEADER) {
                resp.insert_header(REQUEST_ID_HEADER, id.as_str())?;
            }
        }
        ctx.status = resp.status.as_u16();
        Ok(())
    }

    /// The request failed for good: the edge's own page, counted.
    pub(super) async fn answer_failure(&self, session: &mut ServerSession, e: &Error, ctx: &mut RequestCtx) {
        let client_slow = e.esource() == &ErrorSource::Downstream && matches!(e.etype(), ErrorType::ReadTimedout);
        let (code, reason) = classify(e);
        if client_slow {
            self.metrics.client_timeouts.with_label_values(&["body"]).inc();
        }
        if !client_slow && e.esource() == &ErrorSource::Upstream
            || matches!(e.etype(), ErrorType::ConnectTimedout | ErrorType::ConnectRefused)
        {
            let connect_failed = matches!(
                e.etype(),
                ErrorType::ConnectTimedout
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ConnectError
                    | ErrorType::SocketError
            );
            self.note_upstream_failure(ctx, reason, connect_failed);
        }
        // The log names whose fault it was (docs/contract.md §7): a VM's is
        // a WARN, the client's DEBUG (counted), only the edge's own ERROR.
        match e.esource() {
            ErrorSource::Upstream => {
                let to = ctx.decision.map(|d| route::describe(&d, &self.table.load()));
                log::warn!("request to {} failed: {e}; answered {code}", to.unwrap_or_default());
            }
            ErrorSource::Downstream => {
                crate::logging::LOG_EVENTS.with_label_values(&["client_error"]).inc();
                log::debug!("request failed because of its client: {e}");
            }
            ErrorSource::Internal | ErrorSource::Unset => log::error!("request failed inside the edge: {e}"),
        }
        if code > 0 && self.respond(session, ctx, code).await.is_err() {
            log::debug!("could not send error page: {e}");
        }
        ctx.status = code;
    }
}
