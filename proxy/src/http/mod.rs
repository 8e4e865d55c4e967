//! The request path: what happens to one HTTP request (or WebSocket
//! upgrade) between Pingora's parser and the VM. Thin glue around the pure
//! core (`edgeplane_core::route`): turn the head into a [`RouteRequest`],
//! ask [`route::decide`], carry out the [`Decision`] — proxy to a VM,
//! forward to a peer edge with a signed hop header, or answer with a small
//! page — and handle what comes back (replays, connect retries).
//!
//! Where it sits: [`EdgeApp`] (admission, TLS) hands each connection to
//! Pingora's HTTP server, which hands each request to [`EdgeHttp`] (the
//! edge as a Pingora `HttpServerApp`). Files by step:
//! - [`serve`]: one request from head to reuse;
//! - [`filter`]: the request filter as named steps (reject by head, route,
//!   dispatch);
//! - [`forward`] and [`pool`]: proxying to the VM over a connection from
//!   this thread's pool, with retries and replays;
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
//! Start at [`serve`], then [`filter`] and [`forward`].

pub mod access_log;
mod app;
pub mod error_page;
pub mod filter;
mod forward;
pub mod headers;
pub mod pool;
pub mod recent;
mod respond;
mod serve;
mod tls_tunnel;
pub mod tunnel;
mod upgrade;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use edgeplane_config::Config;
use edgeplane_control_sync::table::Idx;
use edgeplane_control_sync::TableHandle;

use crate::background::names::Names;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::route::{Decision, RouteContext};

pub use app::EdgeApp;
pub use recent::{ForwardEvent, RecentForwards};
pub use serve::EdgeHttp;

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
    /// `1.1 <instance_id>`: this edge's entry in the `Via` chain of every
    /// request it sends upstream (RFC 9110 §7.6.3), so a VM sees which
    /// edges a request crossed. Built once (the instance id is restart-only).
    via: http::HeaderValue,
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
        let via = http::HeaderValue::from_str(&format!("1.1 {}", cfg.load().edge.instance_id))
            .unwrap_or(http::HeaderValue::from_static("1.1 edgeplane"));
        Proxy {
            via,
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
    /// The request body was read from the client (a later attempt sends
    /// the held copy).
    body_read: bool,
    /// A pooled connection failed as it was reused and the request went
    /// again on a new one (once).
    stale_retried: bool,
    /// The client connection may carry another request after this one.
    reusable: bool,
    /// The tunnel runs as its own task after this request ends (it
    /// decrements the tunnel gauge itself).
    tunnel_detached: bool,
    /// A TLS WebSocket upgrade the VM answered: the client's stream is
    /// handed to it when the request ends ([`tls_tunnel`]).
    handover: Option<Box<tls_tunnel::Handover>>,
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
            body_read: false,
            stale_retried: false,
            reusable: true,
            tunnel_detached: false,
            handover: None,
            replay_src: None,
            answered: false,
        }
    }
}
