//! The request filter as a short sequence of named steps:
//! 1. [`reject_by_head`] (pure): header caps (431), one Host (400), a
//!    declared body over the limit (413);
//! 2. [`drop_foreign_upgrade`]: upgrades other than WebSocket are served as
//!    plain HTTP/1.1;
//! 3. [`Proxy::route`]: the canonical host (computed once), the hop header,
//!    the [`RouteRequest`] and the decision, with its metrics;
//! 4. [`Proxy::dispatch`]: answer a rejection, redirect to HTTPS, refuse an
//!    upgrade past the tunnel cap, carry a WebSocket tunnel, or let Pingora
//!    proxy the request.
//!
//! Where it sits: [`super::Proxy`]'s `request_filter` hook calls
//! [`Proxy::filter_request`]. Start there.

use pingora_core::protocols::http::ServerSession;
use pingora_core::Result;
use pingora_http::RequestHeader;

use edgeplane_config::LimitsConfig;

use super::access_log;
use super::headers::{header_str, is_websocket_upgrade, request_host};
use super::recent::ForwardEvent;
use super::{Proxy, RequestCtx, DEBUG_HEADER, HOP_HEADER, REPLAY_SRC_HEADER};
use crate::clock::{entropy, now_ms};
use crate::route::host::canonical_host;
use crate::route::signing::verify_hop;
use crate::route::{self, Decision, ForwardReason, RouteRequest, TokenSeen};

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
pub fn reject_by_head(req: &RequestHeader, limits: &LimitsConfig) -> Option<HeadRejection> {
    let too_many = req.headers.len() > limits.max_headers;
    let too_big = !too_many && {
        let bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        bytes > limits.max_header_bytes
    };
    if too_many || too_big {
        return Some(HeadRejection {
            status: 431,
            close: false,
        });
    }
    if req.headers.get_all(http::header::HOST).iter().nth(1).is_some() {
        return Some(HeadRejection {
            status: 400,
            close: true,
        });
    }
    let declared_body = header_str(req, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared_body.is_some_and(|n| n > limits.max_body_bytes) {
        return Some(HeadRejection {
            status: 413,
            close: true,
        });
    }
    None
}

/// Step 2: upgrades other than WebSocket (h2c, anything else) are served
/// as plain HTTP/1.1: no other protocol is tunnelled to a VM.
pub fn drop_foreign_upgrade(h: &mut RequestHeader) -> Result<()> {
    if !h.headers.contains_key(http::header::UPGRADE) || is_websocket_upgrade(h) {
        return Ok(());
    }
    h.remove_header(&http::header::UPGRADE);
    h.remove_header("http2-settings");
    if let Some(c) = h.headers.get(http::header::CONNECTION).and_then(|v| v.to_str().ok()) {
        if c.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
            h.insert_header(http::header::CONNECTION, "close")?;
        } else {
            h.remove_header(&http::header::CONNECTION);
        }
    }
    Ok(())
}

impl Proxy {
    /// The whole filter: Ok(true) when the edge answered (Pingora proxies
    /// nothing), Ok(false) when Pingora proxies to the decided address.
    pub(super) async fn filter_request(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.start = std::time::Instant::now();
        match crate::conn::conn_of(session) {
            Some(c) => {
                c.head_done();
                ctx.tls = c.is_tls();
            }
            // An HTTP/2 stream: its connection came through TLS (ALPN).
            None => ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        }
        let limits = self.limits();
        session.set_keepalive(Some(limits.keepalive_idle.as_secs().max(1)));
        // Each wait for the next piece of body is bounded (slow-body clients).
        session.set_read_timeout(Some(limits.body_timeout));
        if let Some(r) = reject_by_head(session.req_header(), &limits) {
            if r.close {
                session.set_keepalive(None);
            }
            self.respond(session, ctx, r.status).await?;
            return Ok(true);
        }
        drop_foreign_upgrade(session.req_header_mut())?;
        let routed = self.route(session, ctx);
        self.dispatch(session, ctx, routed, &limits).await
    }

    /// Step 3: the decision for this request, with its metrics and the
    /// per-request facts later steps need. The canonical host is computed
    /// once, here, and handed to the decision.
    fn route(&self, session: &ServerSession, ctx: &mut RequestCtx) -> Routed {
        let req = session.req_header();
        let now = now_ms();
        // One config for the whole step (no await inside).
        let cfg = self.cfg.load();
        let raw_host = request_host(req);
        let canonical = raw_host.and_then(|h| canonical_host(h).ok());
        let host = canonical.as_ref().map(|c| c.as_str());
        // A hop header counts only if it verifies for this request's host.
        let hops_in = match (req.headers.get(HOP_HEADER), host) {
            (Some(v), Some(h)) => verify_hop(&cfg.security.hop_secret, v.as_bytes(), now / 1000, h)
                .map(|hop| hop.hops)
                .unwrap_or(0),
            _ => 0,
        };
        ctx.hops_in = hops_in;
        if hops_in > 0 {
            // A peer edge that replayed this request to our region: the VM
            // here should know which VM asked (a client's copy never counts).
            ctx.replay_src = header_str(req, REPLAY_SRC_HEADER).map(str::to_string);
        }
        let rreq = RouteRequest {
            host: raw_host,
            canonical_host: host,
            authority: req.uri.authority().map(|a| a.as_str()),
            path: req.uri.path(),
            query: req.uri.query(),
            bearer: header_str(req, "authorization").and_then(|a| a.strip_prefix("Bearer ")),
            origin: req.headers.get(http::header::ORIGIN).map(|v| v.as_bytes()),
            hops: hops_in,
            now_ms: now,
            dry_run: false,
            entropy: entropy(),
        };
        let table = self.table.load();
        let mut seen = TokenSeen::default();
        let decision = route::decide(&self.route.load(), &table, &rreq, self.names.as_ref(), &mut seen);
        if let Some(check) = seen.0 {
            self.metrics.workspace_tokens.inc(check);
        }
        ctx.table_version = table.version();
        ctx.sampled = access_log::sampled(&cfg.log, rreq.entropy);
        let debug = req
            .headers
            .get(DEBUG_HEADER)
            .is_some_and(|v| access_log::admin_token_matches(cfg.security.admin_token.as_deref(), v.as_bytes()));
        if debug {
            ctx.debug_route = Some(access_log::route_header(&cfg, &decision, &table));
        }
        match decision {
            Decision::Reject { reason, .. } => match reason {
                route::RejectReason::Unresolved => {
                    self.metrics.upstream_errors.with_label_values(&["unresolved"]).inc();
                }
                route::RejectReason::ClusterFull => self.metrics.balancer_cluster_full.inc(),
                _ => {}
            },
            Decision::Forward { region, reason, .. } => {
                let to = &table.region(region).name;
                self.metrics.forwards.with_label_values(&[to, reason.as_str()]).inc();
                if reason == ForwardReason::Tombstone {
                    self.metrics.tombstone_hits.inc();
                }
                ctx.forward_host = host.map(str::to_string);
                self.recent_forwards.record(ForwardEvent {
                    at_ms: now,
                    host: host.unwrap_or_default().to_string(),
                    to_region: to.to_string(),
                    reason: reason.as_str(),
                });
            }
            Decision::Vm { transfer_from, vm, .. } => {
                ctx.transfer_from = transfer_from.map(|c| table.cluster(c).name.clone());
                ctx.vm_hash = Some(table.vm(vm).id_hash);
                ctx.tried.push(vm);
            }
        }
        ctx.decision = Some(decision);
        Routed {
            decision,
            redirect_http: cfg.tls.as_ref().is_some_and(|t| t.redirect_http),
        }
    }

    /// Step 4: carry the decision out.
    async fn dispatch(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        routed: Routed,
        limits: &LimitsConfig,
    ) -> Result<bool> {
        if let Decision::Reject { reason, .. } = routed.decision {
            self.respond(session, ctx, reason.status()).await?;
            return Ok(true);
        }
        if routed.redirect_http {
            let acme = session
                .req_header()
                .uri
                .path()
                .starts_with("/.well-known/acme-challenge/");
            if !ctx.tls && ctx.hops_in == 0 && !acme {
                return self.redirect_to_https(session, ctx).await.map(|_| true);
            }
        }
        if session.is_upgrade_req() && self.metrics.tunnels_active.get() as usize >= limits.max_tunnels {
            self.respond(session, ctx, 503).await?;
            return Ok(true);
        }
        if is_websocket_upgrade(session.req_header()) {
            if super::upgrade::plain_tcp_fd(session).is_some() {
                self.tunnel_websocket(session, ctx).await?;
                return Ok(true);
            }
            if ctx.tls && session.as_http1().is_some() {
                self.tunnel_websocket_tls(session, ctx).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What routing handed to dispatch.
struct Routed {
    decision: Decision,
    redirect_http: bool,
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
        }
    }

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

    #[test]
    fn only_websocket_upgrades_survive() {
        let mut h = head(&[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "x"),
        ]);
        drop_foreign_upgrade(&mut h).unwrap();
        assert!(h.headers.get("upgrade").is_none() && h.headers.get("http2-settings").is_none());
        assert!(h.headers.get("connection").is_none());
        let mut h = head(&[("upgrade", "h2c"), ("connection", "close, upgrade")]);
        drop_foreign_upgrade(&mut h).unwrap();
        assert_eq!(h.headers.get("connection").unwrap(), "close");
        let mut h = head(&[("upgrade", "websocket"), ("connection", "Upgrade")]);
        drop_foreign_upgrade(&mut h).unwrap();
        assert_eq!(h.headers.get("upgrade").unwrap(), "websocket", "kept");
    }
}
