//! The request filter as a short sequence of named steps:
//! 1. [`reject_by_head`] (pure): header caps (431), one Host (400), a
//!    declared body over the limit (413);
//! 2. [`Proxy::route`]: the hop header, the [`RouteRequest`] (the head's
//!    facts, read once into [`HeadFacts`]) and the decision, adopted with
//!    its bookkeeping ([`Proxy::adopt`]);
//! 3. [`Proxy::dispatch`]: answer a rejection, redirect to HTTPS, refuse an
//!    upgrade past the tunnel cap, or hand the request to
//!    [`super::forward`] (WebSocket upgrades included). Upgrades other
//!    than WebSocket (h2c, anything else) are served as plain HTTP/1.1:
//!    their `Upgrade`, `Connection` and `HTTP2-Settings` are hop-by-hop,
//!    so no VM sees them ([`super::headers::strip_for_upstream`]).
//!
//! Where it sits: [`super::serve`] calls [`Proxy::filter_request`] for
//! each request. Start there.

use super::downstream::Downstream;
use pingora_core::Result;

use edgeplane_config::LimitsConfig;

use super::access_log;
use super::ctx::{DeclaredBody, HeadFacts, RequestCtx, Routed};
use super::headers::{header_str, is_websocket_upgrade, request_host, Known, RequestHead};
use super::upstream::Adoption;
use super::Proxy;
use crate::clock::{entropy, now_ms};
use crate::route::signing::verify_hop;
use crate::route::{self, Decision, RouteRequest, TokenSeen};

/// HTTP-01 challenges (RFC 8555 §8.3), answered on the plain listeners
/// for any host before any app routing (docs/contract.md §2).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Why a request is refused before routing, from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadRejection {
    pub status: u16,
    /// The connection cannot be trusted for another request.
    pub close: bool,
}

/// Step 1 (pure): the head's own faults. Header count and bytes over the
/// caps: 431; two Host headers (RFC 9112 §3.2: they could route one way and
/// be read by the app another): 400; a declared body over
/// `limits.max_body_bytes`: 413.
pub fn reject_by_head(head: &impl RequestHead, facts: &HeadFacts, limits: &LimitsConfig) -> Option<HeadRejection> {
    let (lines, bytes) = head
        .lines()
        .fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len() + 4));
    let too_many = lines > limits.max_headers;
    let too_big = !too_many && bytes > limits.max_header_bytes;
    if too_many || too_big {
        return Some(HeadRejection {
            status: 431,
            close: false,
        });
    }
    if head.count(Known::Host) > 1 {
        return Some(HeadRejection {
            status: 400,
            close: true,
        });
    }
    if matches!(facts.body, DeclaredBody::Length(n) if n > limits.max_body_bytes) {
        return Some(HeadRejection {
            status: 413,
            close: true,
        });
    }
    None
}

/// What the filter made of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtered {
    /// The edge answered it itself.
    Answered,
    /// It goes to its decision's VM or peer edge (a WebSocket upgrade
    /// when `websocket`).
    Proxy { websocket: bool },
}

impl Proxy {
    /// The whole filter (see the module docs).
    pub(super) async fn filter_request<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
    ) -> Result<Filtered> {
        if let Some(c) = session.conn() {
            c.head_done();
        }
        let limits = self.limits();
        session.set_keepalive(Some(limits.keepalive_idle.as_secs().max(1)));
        // Each wait for the next piece of body is bounded (slow-body clients).
        session.set_read_timeout(limits.body_timeout);
        if let Some(r) = reject_by_head(session.head(), &ctx.head, &limits) {
            if r.close {
                session.set_keepalive(None);
            }
            self.respond(session, ctx, r.status).await?;
            return Ok(Filtered::Answered);
        }
        if !ctx.head.tls {
            let path = session.head().req().uri.path();
            if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PREFIX) {
                let token = token.to_string();
                self.answer_acme_challenge(session, ctx, &token).await?;
                return Ok(Filtered::Answered);
            }
        }
        let redirect_http = self.route(session, ctx);
        self.dispatch(session, ctx, redirect_http, &limits).await
    }

    /// Step 2: the decision for this request, adopted with its metrics.
    /// Returns whether plain-HTTP requests are redirected to HTTPS.
    fn route<D: Downstream>(&self, session: &D, ctx: &mut RequestCtx) -> bool {
        let head = session.head();
        let req = head.req();
        let now = now_ms();
        // One config for the whole step (no await inside).
        let cfg = self.shared.cfg.load();
        let host = ctx.head.host();
        // A hop header counts only if it verifies for this request's host.
        let hops_in = match (head.get(Known::Hop), host) {
            (Some(v), Some(h)) => verify_hop(&cfg.security.hop_secret, v, now / 1000, h)
                .map(|hop| hop.hops)
                .unwrap_or(0),
            _ => 0,
        };
        let rreq = RouteRequest {
            host: request_host(head),
            canonical_host: host,
            authority: req.uri.authority().map(|a| a.as_str()),
            path: req.uri.path(),
            query: req.uri.query(),
            bearer: header_str(head, Known::Authorization).and_then(|a| a.strip_prefix("Bearer ")),
            origin: head.get(Known::Origin),
            hops: hops_in,
            now_ms: now,
            dry_run: false,
            entropy: entropy(),
        };
        let table = self.shared.table.load();
        let mut seen = TokenSeen::default();
        let decision = route::decide(
            &self.shared.route.load(),
            &table,
            &rreq,
            self.shared.names.as_ref(),
            &mut seen,
        );
        if let Some(check) = seen.0 {
            self.shared.metrics.workspace_tokens.inc(check);
        }
        ctx.sampled = access_log::sampled(&cfg.log, rreq.entropy);
        let debug = head
            .get(Known::Debug)
            .is_some_and(|v| access_log::admin_token_matches(cfg.security.admin_token.as_deref(), v));
        if debug {
            ctx.debug_route = Some(access_log::route_header(&cfg, &decision, &table));
        }
        // A peer edge that replayed this request to our region: the VM here
        // should know which VM asked (a client's copy never counts).
        let replay_src = (hops_in > 0)
            .then(|| header_str(head, Known::ReplaySrc).map(str::to_string))
            .flatten();
        ctx.route = Some(Routed {
            decision,
            table_version: table.version(),
            hops_in,
            transfer_from: None,
            vm_hash: None,
            replay_src,
        });
        self.adopt(ctx, &table, decision, Adoption::Routed);
        cfg.tls.as_ref().is_some_and(|t| t.redirect_http)
    }

    /// Step 3: carry the decision out, or hand it to the forward path.
    async fn dispatch<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut RequestCtx,
        redirect_http: bool,
        limits: &LimitsConfig,
    ) -> Result<Filtered> {
        if let Some(Decision::Reject { reason, .. }) = ctx.decision() {
            let status = reason.status();
            self.respond(session, ctx, status).await?;
            return Ok(Filtered::Answered);
        }
        if redirect_http {
            let acme = session
                .req_header()
                .uri
                .path()
                .starts_with("/.well-known/acme-challenge/");
            if !ctx.head.tls && ctx.hops_in() == 0 && !acme {
                self.redirect_to_https(session, ctx).await?;
                return Ok(Filtered::Answered);
            }
        }
        let websocket = is_websocket_upgrade(session.head()) && session.can_upgrade();
        if websocket && self.shared.metrics.tunnels_active.get() as usize >= limits.max_tunnels {
            self.respond(session, ctx, 503).await?;
            return Ok(Filtered::Answered);
        }
        Ok(Filtered::Proxy { websocket })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            max_header_bytes: 1024,
            max_headers: 8,
            keepalive_idle: std::time::Duration::from_secs(60),
            upstream_connect_timeout: std::time::Duration::from_secs(3),
            upstream_read_timeout: std::time::Duration::from_secs(60),
            tunnel_idle_timeout: std::time::Duration::from_secs(3600),
            max_hops: 2,
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(30),
            max_body_bytes: 1000,
            max_requests_per_connection: 1000,
            max_connections: 100,
            max_connections_per_ip: 10,
            max_tunnels: 10,
            replay_body_bytes: 64,
            h2_max_concurrent_streams: 128,
            h2_max_header_list_bytes: 1024,
            h2_max_pending_reset_streams: 20,
            h2_max_local_error_resets: 256,
        }
    }

    use pingora_http::RequestHeader;

    fn head(headers: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            h.append_header(k.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn heads_are_refused_for_their_own_faults_only() {
        let l = limits();
        let reject_by_head =
            |h: &RequestHeader, l: &LimitsConfig| super::reject_by_head(h, &HeadFacts::read(h, false, true), l);
        assert_eq!(reject_by_head(&head(&[("host", "a.repl.co")]), &l), None);
        let many: Vec<(String, String)> = (0..9).map(|i| (format!("x-{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(reject_by_head(&head(&many), &l).map(|r| r.status), Some(431));
        let big = "x".repeat(2000);
        assert_eq!(
            reject_by_head(&head(&[("x-big", &big)]), &l).map(|r| r.status),
            Some(431)
        );
        assert_eq!(
            reject_by_head(&head(&[("host", "a.repl.co"), ("host", "b.repl.co")]), &l),
            Some(HeadRejection {
                status: 400,
                close: true
            })
        );
        assert_eq!(
            reject_by_head(&head(&[("content-length", "1001")]), &l),
            Some(HeadRejection {
                status: 413,
                close: true
            })
        );
        assert_eq!(reject_by_head(&head(&[("content-length", "1000")]), &l), None);
    }
}
