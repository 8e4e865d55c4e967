//! The Pingora `ProxyHttp` implementation: thin glue that turns a request
//! head into a [`RouteRequest`], asks [`route::decide`], and carries out the
//! [`Decision`] (proxy to a VM, forward to a peer edge with a signed hop
//! header, or answer with a small error page).
//!
//! Where it sits: one [`Edge`] per process, shared by every connection;
//! [`crate::server`] wires it into a Pingora `Server`.
//!
//! Invariants:
//! - Client-sent `x-edgeplane-*` headers never reach a VM or peer: all are
//!   removed and the edge sets its own.
//! - `x-forwarded-for/-proto/-host` are overwritten with what this edge saw,
//!   except on a request from a peer edge whose hop header verified, where
//!   the first edge's values are kept.
//! - Keep-alive idle is bounded (Pingora's default after the first request
//!   is forever), header count and bytes are capped (431).
//! - No DNS and no lock on this path: addresses are pre-parsed in the table,
//!   the table is one ArcSwap load.
//!
//! Start at [`Edge::request_filter`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use edgeplane_config::Config;
use edgeplane_control_sync::table::Idx;
use edgeplane_control_sync::{RoutingTable, TableHandle};

use crate::health::HealthHandle;
use crate::metrics::Metrics;
use crate::pages;
use crate::route::signing::{sign_hop, verify_hop};
use crate::route::{self, Decision, ForwardReason, RouteContext, RouteRequest};
use edgeplane_core::bits::splitmix64;

mod headers;
use headers::{header_str, is_websocket_upgrade, itoa_u16, request_head_bytes, strip_for_upstream};

pub const HOP_HEADER: &str = "x-edgeplane-hop";
pub const REPLAY_HEADER: &str = "x-edgeplane-replay";
/// Request header naming the VM that asked for a replay (edge to VM).
pub const REPLAY_SRC_HEADER: &str = "x-edgeplane-replay-src";
pub const TRANSFER_FROM_HEADER: &str = "x-edgeplane-transfer-from";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Request header carrying the admin token to ask for [`ROUTE_HEADER`].
pub const DEBUG_HEADER: &str = "x-edgeplane-debug";
/// Response header explaining the routing decision (debug requests only).
pub const ROUTE_HEADER: &str = "x-edgeplane-route";

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Per-thread random bits for the balancer (no shared state, no syscall).
fn entropy() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(splitmix64(now_ms() ^ (&STATE as *const _ as u64)));
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        splitmix64(x)
    })
}

/// Everything a request needs, shared by all of them. Cloning shares the
/// same state (the admin listener holds a clone).
///
/// `cfg` and `route` are swapped whole by a config reload
/// ([`crate::reload`]); a request loads each once per step and copies what
/// it needs out, never holding a guard across an `.await`.
#[derive(Clone)]
pub struct Edge {
    pub cfg: Arc<ArcSwap<Config>>,
    pub route: Arc<ArcSwap<RouteContext>>,
    pub table: TableHandle,
    pub health: HealthHandle,
    pub metrics: Arc<Metrics>,
    /// Port of the first HTTPS listener (for `tls.redirect_http`), set by
    /// [`crate::server`] once listeners have their ports.
    pub https_port: Option<u16>,
    /// The latest forwards, for the status page.
    pub recent_forwards: Arc<crate::status_page::RecentForwards>,
    /// Client connection caps (their limits change on reload).
    pub admission: Arc<crate::conn::Admission>,
    /// What the last config reload did.
    pub reloads: Arc<crate::reload::ReloadLog>,
    /// Shadow mode (`placement.shadow`): the comparison and the runtime
    /// switch of the source served. Set by [`crate::server`].
    pub shadow: Option<edgeplane_control_sync::shadow::ShadowControl>,
    /// Answers for VM and peer-edge addresses given as names ([`crate::names`]).
    pub names: Arc<crate::names::Names>,
    request_seq: Arc<AtomicU64>,
}

impl Edge {
    pub fn new(cfg: Config, table: TableHandle, metrics: Arc<Metrics>) -> Edge {
        let limits = cfg.limits;
        Edge {
            route: Arc::new(ArcSwap::from_pointee(RouteContext::from_config(&cfg))),
            cfg: Arc::new(ArcSwap::from_pointee(cfg)),
            table,
            health: HealthHandle::default(),
            metrics,
            https_port: None,
            recent_forwards: Arc::default(),
            admission: crate::conn::Admission::new(limits.max_connections, limits.max_connections_per_ip),
            reloads: Arc::default(),
            shadow: None,
            names: Arc::default(),
            request_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{:x}-{n:x}", self.cfg.load().edge.instance_id, now_ms())
    }

    /// The `[limits]` in use (a copy: no guard outlives the call).
    #[inline]
    pub fn limits(&self) -> edgeplane_config::LimitsConfig {
        self.cfg.load().limits
    }
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    decision: Option<Decision>,
    /// Verified hop count of the incoming request (0 = from a client).
    hops_in: u8,
    /// Canonical host, kept only when it must be signed into a forward.
    forward_host: Option<String>,
    /// Name of the cluster a lazy transfer moves from.
    transfer_from: Option<Box<str>>,
    /// Id hash of the VM proxied to (outlier detection).
    vm_hash: Option<u64>,
    request_id: Option<String>,
    status: u16,
    tunnel: bool,
    /// The client connection is TLS.
    tls: bool,
    /// Request body bytes seen (for `limits.max_body_bytes` on chunked bodies).
    body_bytes: u64,
    /// Version of the table the decision was made with.
    table_version: u64,
    /// This request is in the access-log sample.
    sampled: bool,
    /// `x-edgeplane-route` value, when the request carried the admin token
    /// in `x-edgeplane-debug`.
    debug_route: Option<String>,
    /// VMs this request was sent to (a connect retry avoids them).
    tried: Tried,
    /// Connect retries made.
    retries: u32,
    /// The request was replayed once (a second replay header is ignored).
    replayed: bool,
    /// A replay was decided in `upstream_response_filter`; Pingora's retry
    /// loop carries it out.
    replay_pending: bool,
    /// `x-edgeplane-replay-src` of a replayed request.
    replay_src: Option<String>,
    /// The current attempt's upstream answered with a response head.
    answered: bool,
}

/// The VMs one request tried, inline (at most `1 + MAX_CONNECT_RETRIES`
/// plus a replay; further ones are not recorded).
#[derive(Default)]
pub struct Tried {
    vms: [Idx; 12],
    len: u8,
}

impl Tried {
    fn push(&mut self, vm: Idx) {
        if (self.len as usize) < self.vms.len() {
            self.vms[self.len as usize] = vm;
            self.len += 1;
        }
    }
    fn as_slice(&self) -> &[Idx] {
        &self.vms[..self.len as usize]
    }
}

/// The client socket of a plain-TCP HTTP/1 session (None for TLS or H2,
/// which keep Pingora's own upgrade path), lent for as long as the session.
fn plain_tcp_fd(session: &Session) -> Option<std::os::fd::BorrowedFd<'_>> {
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

impl Edge {
    /// Writes the access-log line of a finished request.
    fn access_log(&self, session: &Session, ctx: &RequestCtx, kind: &str, outcome: &str, elapsed: Duration) {
        let req = session.req_header();
        let route = match &ctx.decision {
            Some(d) => crate::access_log::describe_for_log(d, &self.table.load(), ctx.table_version),
            None => format!("{} before routing", ctx.status),
        };
        crate::access_log::emit(&crate::access_log::AccessEntry {
            request_id: ctx.request_id.as_deref().unwrap_or("-"),
            client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
            method: req.method.as_str(),
            host: header_str(req, "host").unwrap_or("-"),
            path: req.uri.path(),
            status: ctx.status,
            duration: elapsed,
            kind,
            outcome,
            route: &route,
            table_version: ctx.table_version,
            hops_in: ctx.hops_in,
            websocket: ctx.tunnel,
        });
    }

    /// Writes one of the edge's own responses.
    async fn respond(&self, session: &mut Session, ctx: &mut RequestCtx, status: u16) -> Result<()> {
        let id = ctx.request_id.get_or_insert_with(|| self.next_request_id()).clone();
        let body = pages::error_page(status, &id);
        let mut resp = ResponseHeader::build(status, Some(5))?;
        resp.insert_header("content-type", "text/html; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header(REQUEST_ID_HEADER, id)?;
        if let Some(r) = &ctx.debug_route {
            let _ = resp.insert_header(ROUTE_HEADER, r.as_str());
        }
        if status == 503 {
            resp.insert_header("retry-after", "5")?;
        }
        ctx.status = status;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(Bytes::from(body)), true).await?;
        Ok(())
    }

    /// Answers a plain-HTTP request with 308 to the same URL on HTTPS.
    async fn redirect_to_https(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| route::host::canonical_host(h.as_bytes()).ok())
            .map(|c| c.as_str().to_string())
            .unwrap_or_default();
        let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let port = match self.https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let id = ctx.request_id.get_or_insert_with(|| self.next_request_id()).clone();
        let mut resp = ResponseHeader::build(308, Some(4))?;
        resp.insert_header("location", format!("https://{host}{port}{target}"))?;
        resp.insert_header("content-length", "0")?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header(REQUEST_ID_HEADER, id)?;
        ctx.status = 308;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(())
    }

    /// Carries a WebSocket upgrade itself ([`crate::tunnel`]): connect to the
    /// decided address, send the edited head, relay the answer, and pump the
    /// tunnel until it ends. Errors before the answer get the edge's own
    /// 502/504 page, exactly as on the proxied path.
    async fn tunnel_websocket(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        use crate::tunnel::{client_socket, Tunnel, TunnelStop};
        session.set_keepalive(None);
        let limits = self.limits();
        let grace_period = self.cfg.load().edge.grace_period;
        // Each attempt: connect to the decided address and send the edited
        // head. A connect failure or reset moves a repl being placed to
        // another VM; a refusal carrying x-edgeplane-replay sends the
        // upgrade to the VM's target, once.
        let t = loop {
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
                        break t;
                    };
                    let outcome = match self.plan_replay(session, ctx, &value) {
                        Ok(()) => route::replay::ReplayOutcome::Replayed,
                        Err(o) => o,
                    };
                    self.metrics.replays.with_label_values(&[outcome.as_str()]).inc();
                    if outcome != route::replay::ReplayOutcome::Replayed {
                        break t;
                    }
                }
                Err(e) if e.before_answer() && self.retry_elsewhere(session, ctx, e.reason()) => {
                    log::debug!("tunnel to {addr}: {e}: retrying elsewhere");
                }
                Err(e) => {
                    let code = if e.reason().ends_with("timeout") { 504 } else { 502 };
                    self.note_upstream_failure(ctx, e.reason(), e.is_connect());
                    log::debug!("tunnel to {addr}: {e}");
                    return self.respond(session, ctx, code).await;
                }
            }
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
        ctx.tunnel = true;
        self.metrics.tunnels_active.inc();
        let stop = crate::conn::conn_of(session)
            .and_then(|c| c.shutdown())
            .map(|w| TunnelStop {
                watch: w.clone(),
                code: crate::server::tunnel_close_code,
                // Spread closes over the first half of the grace period (at most
                // 10 s) so clients do not all reconnect in the same instant.
                delay: Duration::from_millis(entropy() % (grace_period.as_millis() as u64 / 2).clamp(1, 10_000)),
            });
        let addr = t.upstream.peer_addr().ok();
        if let Err(e) = t.run(client, limits.tunnel_idle_timeout, stop).await {
            log::debug!("tunnel to {addr:?} ended: {e}");
        }
        Ok(())
    }

    /// Counts an upstream failure; a VM that could not be reached counts
    /// towards its ejection, and a remembered pick is forgotten.
    fn note_upstream_failure(&self, ctx: &RequestCtx, reason: &str, connect_failed: bool) {
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
    fn edit_upstream_request(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Drop internal, hop-by-hop and spoofable headers (allocates only
        // when some are there).
        let websocket = is_websocket_upgrade(session.req_header());
        let connection = header_str(session.req_header(), "connection").unwrap_or("");
        let tokens: Vec<&str> = if connection.is_empty() {
            Vec::new()
        } else {
            connection.split(',').map(str::trim).filter(|t| !t.is_empty()).collect()
        };
        let strip = |k: &http::HeaderName| strip_for_upstream(k.as_str(), &tokens, websocket);
        if upstream.headers.keys().any(strip) {
            let names: Vec<http::HeaderName> = upstream.headers.keys().filter(|k| strip(k)).cloned().collect();
            for k in names {
                upstream.remove_header(&k);
            }
        }
        if websocket {
            upstream.insert_header(http::header::CONNECTION, "upgrade")?;
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
            let host = session.req_header().headers.get(http::header::HOST).cloned();
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
        Ok(())
    }

    /// Takes `next` as the request's decision (a connect retry or a
    /// replay): the VM hash, transfer and forward facts follow it.
    fn redirect(&self, session: &Session, ctx: &mut RequestCtx, t: &RoutingTable, next: Decision) {
        match next {
            Decision::Vm { vm, transfer_from, .. } => {
                ctx.vm_hash = Some(t.vm(vm).id_hash);
                ctx.transfer_from = transfer_from.map(|c| t.cluster(c).name.clone());
                ctx.tried.push(vm);
            }
            Decision::Forward { region, reason, .. } => {
                ctx.vm_hash = None;
                ctx.transfer_from = None;
                ctx.forward_host = session
                    .req_header()
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| route::host::canonical_host(h.as_bytes()).ok())
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
    fn retry_elsewhere(&self, session: &Session, ctx: &mut RequestCtx, reason: &str) -> bool {
        let Some(failed) = ctx.decision else {
            return false;
        };
        if ctx.retries >= self.cfg.load().balancer.connect_retries {
            return false;
        }
        let t = self.table.load();
        let route = self.route.load();
        let Some(next) = route::replay::retry_elsewhere(&route, &t, &failed, ctx.tried.as_slice(), entropy(), now_ms())
        else {
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
    /// where the request goes again (DESIGN: once, a body held whole,
    /// a known target). On `Ok` the request's decision is the replay's.
    fn plan_replay(
        &self,
        session: &mut Session,
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
            session.as_ref().retry_buffer_truncated(),
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
        let next = replay(&route, &t, target, first)?;
        ctx.replay_src = Some(replay_source(&t, &asked));
        ctx.replayed = true;
        self.redirect(session, ctx, &t, next);
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            decision: None,
            hops_in: 0,
            forward_host: None,
            transfer_from: None,
            vm_hash: None,
            request_id: None,
            status: 0,
            tunnel: false,
            tls: false,
            body_bytes: 0,
            table_version: 0,
            sampled: false,
            debug_route: None,
            tried: Tried::default(),
            retries: 0,
            replayed: false,
            replay_pending: false,
            replay_src: None,
            answered: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.start = Instant::now();
        if let Some(c) = crate::conn::conn_of(session) {
            c.head_done();
            ctx.tls = c.is_tls();
        }
        let limits = self.limits();
        session.set_keepalive(Some(limits.keepalive_idle.as_secs().max(1)));
        // Each wait for the next piece of body is bounded (slow-body clients).
        session.set_read_timeout(Some(limits.body_timeout));
        let req = session.req_header();
        let too_many = req.headers.len() > limits.max_headers;
        let too_big = !too_many && {
            let bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
            bytes > limits.max_header_bytes
        };
        if too_many || too_big {
            self.respond(session, ctx, 431).await?;
            return Ok(true);
        }
        // Exactly one Host (RFC 9112 §3.2): two could route one way and be
        // read by the app another.
        if req.headers.get_all(http::header::HOST).iter().nth(1).is_some() {
            session.set_keepalive(None);
            self.respond(session, ctx, 400).await?;
            return Ok(true);
        }
        let declared_body = header_str(req, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if declared_body.is_some_and(|n| n > limits.max_body_bytes) {
            session.set_keepalive(None);
            self.respond(session, ctx, 413).await?;
            return Ok(true);
        }

        // Upgrades other than WebSocket (h2c, anything else) are served as
        // plain HTTP/1.1: no other protocol is tunnelled to a VM.
        if req.headers.contains_key(http::header::UPGRADE) && !is_websocket_upgrade(req) {
            let h = session.req_header_mut();
            h.remove_header(&http::header::UPGRADE);
            h.remove_header("http2-settings");
            if let Some(c) = h.headers.get(http::header::CONNECTION).and_then(|v| v.to_str().ok()) {
                let keep = if c.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                    Some("close")
                } else {
                    None
                };
                match keep {
                    Some(k) => h.insert_header(http::header::CONNECTION, k)?,
                    None => {
                        h.remove_header(&http::header::CONNECTION);
                    }
                }
            }
        }
        let req = session.req_header();
        let now = now_ms();
        // One config for the whole routing step (dropped before any await).
        let cfg = self.cfg.load();
        let host = req.headers.get(http::header::HOST).map(|v| v.as_bytes());
        let authority = req.uri.authority().map(|a| a.as_str());
        // A hop header counts only if it verifies for this request's host.
        let hops_in = match (req.headers.get(HOP_HEADER), host) {
            (Some(v), Some(h)) => match route::host::canonical_host(h) {
                Ok(c) => verify_hop(&cfg.security.hop_secret, v.as_bytes(), now / 1000, c.as_str())
                    .map(|hop| hop.hops)
                    .unwrap_or(0),
                Err(_) => 0,
            },
            _ => 0,
        };
        ctx.hops_in = hops_in;
        if hops_in > 0 {
            // A peer edge that replayed this request to our region: the VM
            // here should know which VM asked (a client's copy never counts).
            ctx.replay_src = header_str(req, REPLAY_SRC_HEADER).map(str::to_string);
        }
        let bearer = header_str(req, "authorization").and_then(|a| a.strip_prefix("Bearer "));
        let origin = req.headers.get(http::header::ORIGIN).map(|v| v.as_bytes());
        let rreq = RouteRequest {
            host,
            authority,
            path: req.uri.path(),
            query: req.uri.query(),
            bearer,
            origin,
            hops: hops_in,
            now_ms: now,
            dry_run: false,
            entropy: entropy(),
        };
        let debug = req
            .headers
            .get(DEBUG_HEADER)
            .is_some_and(|v| crate::access_log::admin_token_matches(cfg.security.admin_token.as_deref(), v.as_bytes()));
        let table = self.table.load();
        let decision = self
            .names
            .dialable(&table, route::decide(&self.route.load(), &table, &rreq, &mut ()));
        ctx.table_version = table.version();
        ctx.sampled = crate::access_log::sampled(&cfg.log, rreq.entropy);
        if debug {
            ctx.debug_route = Some(crate::access_log::route_header(&cfg, &decision, &table));
        }
        let redirect_http = cfg.tls.as_ref().is_some_and(|t| t.redirect_http);
        drop(cfg);
        match decision {
            Decision::Reject { reason, .. } => {
                if reason == route::RejectReason::Unresolved {
                    self.metrics.upstream_errors.with_label_values(&["unresolved"]).inc();
                }
                ctx.decision = Some(decision);
                drop(table);
                self.respond(session, ctx, reason.status()).await?;
                return Ok(true);
            }
            Decision::Forward { region, reason, .. } => {
                self.metrics
                    .forwards
                    .with_label_values(&[&table.region(region).name, reason.as_str()])
                    .inc();
                if reason == ForwardReason::Tombstone {
                    self.metrics.tombstone_hits.inc();
                }
                ctx.forward_host = host
                    .and_then(|h| route::host::canonical_host(h).ok())
                    .map(|c| c.as_str().to_string());
                self.recent_forwards.record(crate::status_page::ForwardEvent {
                    at_ms: rreq.now_ms,
                    host: ctx.forward_host.clone().unwrap_or_default(),
                    to_region: table.region(region).name.to_string(),
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
        drop(table);
        if redirect_http {
            let acme = session
                .req_header()
                .uri
                .path()
                .starts_with("/.well-known/acme-challenge/");
            if !ctx.tls && hops_in == 0 && !acme {
                return self.redirect_to_https(session, ctx).await.map(|_| true);
            }
        }
        if session.is_upgrade_req() && self.metrics.tunnels_active.get() as usize >= limits.max_tunnels {
            self.respond(session, ctx, 503).await?;
            return Ok(true);
        }
        if is_websocket_upgrade(session.req_header()) && plain_tcp_fd(session).is_some() {
            self.tunnel_websocket(session, ctx).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        ctx.answered = false;
        let addr: SocketAddr = match ctx.decision {
            Some(Decision::Vm { addr, .. }) | Some(Decision::Forward { addr, .. }) => addr,
            _ => return Error::e_explain(ErrorType::InternalError, "no routing decision"),
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        let limits = self.limits();
        peer.options.connection_timeout = Some(limits.upstream_connect_timeout);
        peer.options.total_connection_timeout = Some(limits.upstream_connect_timeout);
        peer.options.read_timeout = Some(if session.is_upgrade_req() {
            limits.tunnel_idle_timeout
        } else {
            limits.upstream_read_timeout
        });
        peer.options.write_timeout = Some(limits.upstream_read_timeout);
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.edit_upstream_request(session, upstream, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.answered = true;
        let Some(value) = resp.headers.get(REPLAY_HEADER).map(|v| v.as_bytes().to_vec()) else {
            return Ok(());
        };
        let outcome = match self.plan_replay(session, ctx, &value) {
            Ok(()) => route::replay::ReplayOutcome::Replayed,
            Err(o) => o,
        };
        self.metrics.replays.with_label_values(&[outcome.as_str()]).inc();
        if outcome != route::replay::ReplayOutcome::Replayed {
            // The client gets the VM's own answer, without the header.
            resp.remove_header(REPLAY_HEADER);
            return Ok(());
        }
        // Drop this answer: Pingora's retry loop sends the request again,
        // to the decision `plan_replay` set (see `error_while_proxy`).
        ctx.replay_pending = true;
        Error::e_explain(ErrorType::Custom("replay"), "the VM asked for a replay")
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let reason = match e.etype() {
            ErrorType::ConnectTimedout => "connect_timeout",
            ErrorType::ConnectRefused => "connect_refused",
            _ => "connect_error",
        };
        if self.retry_elsewhere(session, ctx, reason) {
            e.set_retry(true);
        }
        e
    }

    /// Replays and connect retries are counted (`edgeplane_replays_total`,
    /// `edgeplane_connect_retries_total`) and logged at debug: they are the
    /// system working, not a warning for each request.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        _e: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        ctx.replayed || ctx.retries > 0
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.replay_pending) {
            e.set_retry(true);
            return e;
        }
        // A VM that reset or closed a fresh connection before answering: a
        // repl being placed moves to another VM when the edge still holds
        // the request body whole.
        let reset = e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if reset && !ctx.answered && !client_reused && !session.as_ref().retry_buffer_truncated() {
            let declared =
                header_str(session.req_header(), "content-length").and_then(|v| v.trim().parse::<u64>().ok());
            let whole = route::replay::body_replayable(
                declared,
                ctx.body_bytes,
                session.is_body_done(),
                false,
                self.limits().replay_body_bytes,
            );
            if whole && self.retry_elsewhere(session, ctx, "connect_reset") {
                e.set_retry(true);
                return e;
            }
        }
        // Pingora's default: a stale pooled connection may be retried for an
        // idempotent request whose body it holds.
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.limits().max_body_bytes {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over limits.max_body_bytes");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
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

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let client_slow = e.esource() == &ErrorSource::Downstream && matches!(e.etype(), ErrorType::ReadTimedout);
        let (code, reason) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "status"),
            _ if client_slow => (408, "client_timeout"),
            ErrorType::ConnectTimedout => (504, "connect_timeout"),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, "timeout"),
            ErrorType::ConnectRefused => (502, "connect_refused"),
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "upstream"),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "downstream_closed")
                    }
                    _ => (400, "downstream"),
                },
                ErrorSource::Internal | ErrorSource::Unset => (500, "internal"),
            },
        };
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
        if code > 0 && self.respond(session, ctx, code).await.is_err() {
            log::debug!("could not send error page: {e}");
        }
        ctx.status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(c) = crate::conn::conn_of(session) {
            c.expect_head();
        }
        if ctx.tunnel {
            self.metrics.tunnels_active.dec();
        }
        let (kind, outcome) = match ctx.decision {
            Some(d @ Decision::Vm { .. }) => (d.kind().as_str(), "proxied"),
            Some(d @ Decision::Forward { .. }) => (d.kind().as_str(), "forwarded"),
            Some(d @ Decision::Reject { .. }) => (d.kind().as_str(), "rejected"),
            None => ("unknown", "rejected"),
        };
        let outcome = if ctx.status >= 500 && outcome != "rejected" {
            "error"
        } else {
            outcome
        };
        let mut code_buf = itoa_u16(ctx.status);
        self.metrics
            .requests
            .with_label_values(&[kind, outcome, code_buf.as_str()])
            .inc();
        code_buf.clear();
        let elapsed = ctx.start.elapsed();
        self.metrics.duration.observe(elapsed.as_secs_f64());
        let log_cfg = &self.cfg.load().log;
        if ctx.sampled || (log_cfg.access_log_errors && crate::access_log::is_error(ctx.status)) {
            self.access_log(session, ctx, kind, outcome, elapsed);
        }
    }
}
