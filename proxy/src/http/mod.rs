//! The request path: what happens to one HTTP request (or WebSocket
//! upgrade) between Pingora's parser and the VM. Thin glue around the pure
//! core (`edgeplane_core::route`): turn the head into a [`RouteRequest`],
//! ask [`route::decide`], carry out the [`Decision`] — proxy to a VM,
//! forward to a peer edge with a signed hop header, or answer with a small
//! page — and handle what comes back (replays, connect retries).
//!
//! Where it sits: [`EdgeApp`] (admission, TLS) hands each connection to
//! Pingora's HTTP proxy, which runs [`Proxy`]'s `ProxyHttp` hooks for every
//! request on it. Files by step:
//! - [`filter`]: the request filter as named steps (reject by head, route,
//!   dispatch);
//! - [`upstream`]: headers for the VM, retry after a connect failure,
//!   replay, error classification;
//! - [`upgrade`] and [`tunnel`]: WebSocket tunnels the edge carries itself;
//! - [`respond`] and [`error_page`]: the edge's own answers;
//! - [`access_log`], [`recent`]: what a request leaves behind.
//!
//! Invariants:
//! - Client-sent `x-edgeplane-*` headers never reach a VM or peer: all are
//!   removed and the edge sets its own.
//! - `x-forwarded-for/-proto/-host` are overwritten with what this edge saw,
//!   except on a request from a peer edge whose hop header verified, where
//!   the first edge's values are kept.
//! - Keep-alive idle is bounded (Pingora's default after the first request
//!   is forever), header count and bytes are capped (431).
//! - No DNS and no lock on this path: endpoints are resolved in the
//!   background and answered from memory, the table is one ArcSwap load.
//!
//! Start at [`filter`], then [`upstream`].

pub mod access_log;
mod app;
pub mod error_page;
pub mod filter;
pub mod headers;
pub mod recent;
mod respond;
pub mod tunnel;
mod upgrade;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use edgeplane_config::Config;
use edgeplane_control_sync::table::Idx;
use edgeplane_control_sync::TableHandle;

use crate::background::names::Names;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::route::{Decision, RouteContext};

pub use app::EdgeApp;
pub use recent::{ForwardEvent, RecentForwards};

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

/// What the request path needs, shared by every request (cloning shares
/// it). Built once by [`crate::server`], beside the admin API's state.
///
/// `cfg` and `route` are swapped whole by a config reload; a request loads
/// each once per step and copies what it needs out, never holding a guard
/// across an `.await`.
#[derive(Clone)]
pub struct Proxy {
    pub cfg: Arc<ArcSwap<Config>>,
    pub route: Arc<ArcSwap<RouteContext>>,
    pub table: TableHandle,
    /// Answers for VM and peer-edge endpoints given as names.
    pub names: Arc<Names>,
    pub metrics: Arc<Metrics>,
    /// The latest forwards, for the status page.
    pub recent_forwards: Arc<RecentForwards>,
    /// Port of the first HTTPS listener (for `tls.redirect_http`).
    pub https_port: Option<u16>,
    request_seq: Arc<AtomicU64>,
}

impl Proxy {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<ArcSwap<Config>>,
        route: Arc<ArcSwap<RouteContext>>,
        table: TableHandle,
        names: Arc<Names>,
        metrics: Arc<Metrics>,
        recent_forwards: Arc<RecentForwards>,
        https_port: Option<u16>,
    ) -> Proxy {
        Proxy {
            cfg,
            route,
            table,
            names,
            metrics,
            recent_forwards,
            https_port,
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

/// Per-request state (fields are the request path's own: its submodules
/// read and write them).
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

impl RequestCtx {
    fn new() -> RequestCtx {
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
}

/// Each hook is one step named in a submodule; nothing else lives here.
#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.filter_request(session, ctx).await
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        self.peer(session, ctx)
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
        self.answered(session, resp, ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(session, ctx, e)
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

    /// A request that failed because of its client (it went away, sent a
    /// bad chunk, stalled) is counted, not logged as an ERROR: the log's
    /// ERROR lines are this edge's faults and its VMs' (docs/contract.md §7).
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        let client = *e.esource() == pingora_core::ErrorSource::Downstream;
        if client {
            crate::logging::LOG_EVENTS.with_label_values(&["client_error"]).inc();
        }
        client
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.failed_while_proxying(peer, session, e, ctx, client_reused)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.count_body(body.as_ref(), ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.edit_response(resp, ctx)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        self.answer_failure(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish(session, ctx)
    }
}
