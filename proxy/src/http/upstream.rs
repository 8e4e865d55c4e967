//! What the VM (or peer edge) is told, and what the edge does with what it
//! says back: the request head written for it ([`Proxy::write_upstream_head`]),
//! the decision a connect retry or replay moves the request to
//! ([`Proxy::adopt`], the one place a decision's bookkeeping happens), the
//! answer head's edits, and the failure answered in the end
//! ([`Proxy::answer_failure`]). Retry and replay targets are decided by
//! the pure `edgeplane_core::route::replay`; failures are [`Failed`]s.
//!
//! Where it sits: [`super::forward`] calls these for every attempt, plain
//! requests and WebSocket upgrades alike; [`super::filter`] adopts the
//! first decision.
//!
//! Start at [`Proxy::write_upstream_head`].

use std::io::Write as _;
use std::net::IpAddr;

use super::downstream::Downstream;

use edgeplane_control_sync::RoutingTable;

use super::client::AnswerHead;
use super::ctx::{Body, Outcome, RequestCtx, RequestId, Routed};
use super::failure::{Failed, Failure, Fault};
use super::headers::{request_host, strip_for_upstream, Known, RequestHead};
use super::recent::ForwardEvent;
use super::{
    Proxy, HOP_HEADER, REPLAY_HEADER, REPLAY_SRC_HEADER, REQUEST_ID_HEADER, ROUTE_HEADER, TRANSFER_FROM_HEADER,
};
use crate::clock::{entropy, now_ms};
use crate::route::signing::sign_hop;
use crate::route::{self, Decision, ForwardReason};

/// Why a decision is adopted (what it counts as).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The request's own routing decision.
    Routed,
    /// A connect retry moved it to another VM.
    Retry,
    /// A VM's `x-edgeplane-replay` sent it elsewhere.
    Replay,
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The lines the edge adds to a VM's answer: the debug route (asked for
/// with the admin token) and the request id, unless the VM set one.
/// Borrowed from the request's context, never copied.
pub(super) struct Extras<'a> {
    items: [(&'static str, &'a [u8]); 2],
    len: usize,
}

impl<'a> Extras<'a> {
    pub(super) fn as_slice(&self) -> &[(&'static str, &'a [u8])] {
        &self.items[..self.len]
    }
}

/// [`Extras`] for `resp` (after [`Proxy::edit_response`]).
pub(super) fn answer_extras<'a>(ctx: &'a RequestCtx, resp: &AnswerHead) -> Extras<'a> {
    let mut e = Extras {
        items: [("", &[]); 2],
        len: 0,
    };
    if let Some(r) = &ctx.debug_route {
        e.items[e.len] = (ROUTE_HEADER, r.as_bytes());
        e.len += 1;
    }
    if let Some(id) = &ctx.request_id {
        if !resp.contains(REQUEST_ID_HEADER) {
            e.items[e.len] = (REQUEST_ID_HEADER, id.as_str().as_bytes());
            e.len += 1;
        }
    }
    e
}

impl Proxy {
    /// Writes the request head the VM or peer edge gets into `out`, from
    /// the client's head without copying it: origin-form target, HTTP/1.1;
    /// internal, hop-by-hop and spoofable headers dropped (and every
    /// `x-edgeplane-*`); `x-forwarded-for/-proto/-host` and `x-request-id`
    /// set to what this edge saw, unless the request came from a peer edge
    /// whose hop header verified; the hop header or transfer source the
    /// decision needs; `Via`.
    pub(super) fn write_upstream_head(
        &self,
        head: &impl RequestHead,
        ctx: &mut RequestCtx,
        client_ip: Option<IpAddr>,
        websocket: bool,
        out: &mut Vec<u8>,
    ) {
        let req = head.req();
        out.clear();
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let trusted_peer = ctx.hops_in() > 0;
        let chunked_client = ctx.head.body == super::ctx::DeclaredBody::Chunked;
        let mut peer_id = None;
        for (n, value) in head.lines() {
            if strip_for_upstream(n, head, websocket) {
                continue;
            }
            let ours = matches!(
                n,
                b"x-forwarded-for" | b"x-forwarded-proto" | b"x-forwarded-host" | b"x-request-id"
            );
            if ours && (!trusted_peer || n == b"x-request-id") {
                if n == b"x-request-id" && trusted_peer {
                    peer_id = RequestId::parse(value);
                }
                continue;
            }
            // With both, the body is chunked (and the length must not reach the VM).
            if chunked_client && n == b"content-length" {
                continue;
            }
            line(out, n, value);
        }
        if websocket {
            out.extend_from_slice(b"connection: upgrade\r\n");
        }
        if head.get(Known::Host).is_none() {
            // HTTP/2: the authority is the host.
            if let Some(a) = req.uri.authority() {
                line(out, b"host", a.as_str().as_bytes());
            }
        }
        if !trusted_peer {
            out.extend_from_slice(b"x-forwarded-for: ");
            match client_ip {
                Some(IpAddr::V4(a)) => edgeplane_core::bits::push_ipv4(out, a.octets()),
                Some(a) => {
                    let _ = write!(out, "{a}");
                }
                None => {}
            }
            out.extend_from_slice(b"\r\n");
            line(out, b"x-forwarded-proto", if ctx.head.tls { b"https" } else { b"http" });
            if let Some(h) = request_host(head) {
                line(out, b"x-forwarded-host", h);
            }
        }
        // One id for every attempt (a retry or replay keeps it); a peer
        // edge's stays the request's.
        let id = match (ctx.request_id, peer_id) {
            (Some(id), _) => id,
            (None, Some(peer)) => peer,
            (None, None) => self.new_request_id(),
        };
        ctx.request_id = Some(id);
        line(out, REQUEST_ID_HEADER.as_bytes(), id.as_str().as_bytes());
        if let Some(r) = &ctx.route {
            match r.decision {
                Decision::Forward { hops, .. } => {
                    let cfg = self.shared.cfg.load();
                    let host = ctx.head.host().unwrap_or("");
                    let v = sign_hop(&cfg.security.hop_secret, &cfg.edge.region, hops, now_ms() / 1000, host);
                    line(out, HOP_HEADER.as_bytes(), v.as_bytes());
                }
                Decision::Vm { .. } => {
                    if let Some(from) = &r.transfer_from {
                        line(out, TRANSFER_FROM_HEADER.as_bytes(), from.as_bytes());
                    }
                }
                Decision::Reject { .. } => {}
            }
            if let Some(src) = &r.replay_src {
                line(out, REPLAY_SRC_HEADER.as_bytes(), src.as_bytes());
            }
        }
        if ctx.head.body == super::ctx::DeclaredBody::Unframed {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        // This edge joins the chain, after any `Via` the client or a peer sent.
        line(out, b"via", self.via.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Makes `next` the request's decision, with everything that goes with
    /// it, in one place: the table facts it needs later (VM hash, transfer
    /// source), the VMs tried, and what it counts as — a forward's metric
    /// and recent-forwards entry, a tombstone hit.
    pub(super) fn adopt(&self, ctx: &mut RequestCtx, t: &RoutingTable, next: Decision, why: Adoption) {
        let (hops_in, replay_src) = match ctx.route.take() {
            Some(r) => (r.hops_in, r.replay_src),
            None => (0, None),
        };
        let mut routed = Routed {
            decision: next,
            table_version: t.version(),
            hops_in,
            transfer_from: None,
            vm_hash: None,
            replay_src,
        };
        match next {
            Decision::Vm { vm, transfer_from, .. } => {
                routed.vm_hash = Some(t.vm(vm).id_hash);
                routed.transfer_from = transfer_from.map(|c| t.cluster(c).name.clone());
                ctx.tries.push(vm);
            }
            Decision::Forward { region, reason, .. } => {
                let to = &t.region(region).name;
                self.shared.metrics.forwards.inc(to, reason);
                if reason == ForwardReason::Tombstone {
                    self.shared.metrics.tombstone_hits.inc();
                }
                if why != Adoption::Retry {
                    self.shared.recent_forwards.record(ForwardEvent {
                        at_ms: now_ms(),
                        host: ctx.head.host().unwrap_or_default().to_string(),
                        to_region: to.to_string(),
                        reason: reason.as_str(),
                    });
                }
            }
            Decision::Reject { reason, .. } => match reason {
                route::RejectReason::Unresolved => self.shared.metrics.upstream_errors.inc("unresolved"),
                route::RejectReason::ClusterFull => self.shared.metrics.balancer_cluster_full.inc(),
                _ => {}
            },
        }
        ctx.route = Some(routed);
    }

    /// After a failure that reached nothing of the VM (refused, reset,
    /// timed out): for a repl being placed, moves the request to another VM
    /// of the cluster and returns true. False when the decision may not
    /// move or no retry is left.
    pub(super) fn retry_elsewhere(&self, ctx: &mut RequestCtx, f: &Failed) -> bool {
        let Some(failed) = ctx.decision().copied() else {
            return false;
        };
        if ctx.tries.retries >= self.shared.cfg.load().balancer.connect_retries {
            return false;
        }
        let t = self.shared.table.load();
        let route = self.shared.route.load();
        let Some(next) = route::replay::retry_elsewhere(
            &route,
            &t,
            &failed,
            ctx.tries.vms(),
            entropy(),
            now_ms(),
            self.shared.names.as_ref(),
        ) else {
            return false;
        };
        self.note_failure(ctx, f);
        self.shared.metrics.connect_retries.inc();
        ctx.tries.retries += 1;
        log::debug!(
            "{} failed ({f}): retrying on {}",
            route::describe(&failed, &t),
            route::describe(&next, &t)
        );
        self.adopt(ctx, &t, next, Adoption::Retry);
        true
    }

    /// A VM answered with `x-edgeplane-replay: value`: decide whether and
    /// where the request goes again (docs/contract.md §2 step 6: once, a
    /// body held whole, a known target). On `Ok` the decision is the replay's.
    fn plan_replay(&self, ctx: &mut RequestCtx, value: &[u8]) -> Result<(), route::replay::ReplayOutcome> {
        use route::replay::{parse_target, replay, replay_source, FirstTry, ReplayOutcome};
        if ctx.tries.replayed {
            return Err(ReplayOutcome::Again);
        }
        let target = parse_target(value).ok_or(ReplayOutcome::UnknownTarget)?;
        if !matches!(ctx.body, Body::Held { .. }) {
            return Err(ReplayOutcome::BodyTooLarge);
        }
        let Some(asked) = ctx.decision().copied() else {
            return Err(ReplayOutcome::UnknownTarget);
        };
        let t = self.shared.table.load();
        let route = self.shared.route.load();
        let (kind, repl_hash) = match asked {
            Decision::Vm { kind, repl_hash, .. } | Decision::Forward { kind, repl_hash, .. } => (kind, repl_hash),
            Decision::Reject { kind, .. } => (kind, 0),
        };
        let first = FirstTry {
            kind,
            repl_hash,
            hops_in: ctx.hops_in(),
            entropy: entropy(),
        };
        let next = replay(&route, &t, target, first, self.shared.names.as_ref())?;
        let src = replay_source(&t, &asked);
        ctx.tries.replayed = true;
        self.adopt(ctx, &t, next, Adoption::Replay);
        if let Some(r) = ctx.route.as_mut() {
            r.replay_src = Some(src);
        }
        Ok(())
    }

    /// An answer head arrived: true when it asks for a replay that may be
    /// made (the decision now names the target; the answer is dropped).
    /// Otherwise the client gets the VM's own answer, without the header.
    pub(super) fn answered(&self, ctx: &mut RequestCtx, resp: &mut AnswerHead) -> bool {
        let Some(value) = resp.get(REPLAY_HEADER).map(<[u8]>::to_vec) else {
            return false;
        };
        let outcome = match self.plan_replay(ctx, &value) {
            Ok(()) => route::replay::ReplayOutcome::Replayed,
            Err(o) => o,
        };
        self.shared.metrics.replays.inc(outcome.as_str());
        if outcome != route::replay::ReplayOutcome::Replayed {
            resp.remove(REPLAY_HEADER);
            return false;
        }
        true
    }

    /// The VM's answer head on its way to the client: the edge's own
    /// headers a VM may not set are dropped (the ones the edge adds come
    /// from [`answer_extras`]); the VM answered, so it counts as a success.
    pub(super) fn edit_response(&self, resp: &mut AnswerHead, ctx: &RequestCtx) {
        resp.remove(REPLAY_HEADER);
        resp.remove(ROUTE_HEADER);
        if let Some(h) = ctx.route.as_ref().and_then(|r| r.vm_hash) {
            self.shared.route.load().balancer.outliers.success(h);
        }
    }

    /// Counts a failure and writes its log line (at its fault's level,
    /// rate-limited like every call site): the VM's in
    /// `upstream_errors_total{reason}` (a VM that could not be reached
    /// counts towards its ejection), the client's in
    /// `log_events_total{event="client_error"}`.
    pub(super) fn note_failure(&self, ctx: &RequestCtx, f: &Failed) {
        match f.kind.fault() {
            Fault::Vm => {
                if f.kind != Failure::PooledConnectionClosed {
                    self.shared.metrics.upstream_errors.inc(f.kind.label());
                }
                if let (true, Some(h)) = (f.kind.unreachable(), ctx.route.as_ref().and_then(|r| r.vm_hash)) {
                    self.shared.route.load().balancer.outliers.failure(h);
                }
            }
            Fault::Client => {
                crate::logging::LOG_EVENTS.with_label_values(&["client_error"]).inc();
                if f.kind == Failure::ClientTimeout {
                    self.shared.metrics.client_timeouts.inc("body");
                }
            }
            Fault::Edge => {}
        }
        let to = ctx
            .decision()
            .map(|d| route::describe(d, &self.shared.table.load()))
            .unwrap_or_default();
        match f.kind.level() {
            log::Level::Warn => log::warn!("request to {to} failed: {f}"),
            log::Level::Error => log::error!("request to {to} failed inside the edge: {f}"),
            _ => log::debug!("request to {to} failed: {f}"),
        }
    }

    /// The request failed for good: counted, logged, and the edge's own
    /// page when anything can still be answered.
    pub(super) async fn answer_failure<D: Downstream>(&self, session: &mut D, ctx: &mut RequestCtx, f: &Failed) {
        self.note_failure(ctx, f);
        // A VM that failed a repl being placed should not stay its pick.
        if let (
            Fault::Vm,
            Some(Decision::Vm {
                repl_hash,
                reason: route::VmReason::Picked | route::VmReason::Remembered,
                ..
            }),
        ) = (f.kind.fault(), ctx.decision())
        {
            self.shared.route.load().memory.forget(*repl_hash);
        }
        let code = f.kind.status();
        if code == 0 {
            ctx.outcome = Outcome::Cut;
            return;
        }
        if self.respond(session, ctx, code).await.is_err() {
            ctx.outcome = Outcome::Cut;
        }
    }
}
