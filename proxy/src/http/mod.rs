//! The request path: what happens to one HTTP request (or WebSocket
//! upgrade) between the client's codec and the VM. Thin glue around the pure
//! core (`edgeplane_core::route`): turn the head into a [`RouteRequest`](crate::route::RouteRequest),
//! ask [`decide`](crate::route::decide()), carry out the [`Decision`](crate::route::Decision) — proxy to a VM,
//! forward to a peer edge with a signed hop header, or answer with a small
//! page — and handle what comes back (replays, connect retries).
//!
//! Where it sits: [`EdgeApp`] (admission, TLS) hands each HTTP/1.1
//! connection to the edge's own loop ([`h1`]) and each HTTP/2 one to
//! Pingora's HTTP/2 server; both hand each request to [`EdgeHttp`]
//! through the [`downstream::Downstream`] seam. Files by step:
//! - [`h1`]: the HTTP/1.1 connection: heads parsed in place, bodies in,
//!   answers out, buffers kept for the connection's life;
//! - [`serve`]: one request from head to reuse (or hand-over to a tunnel);
//! - [`ctx`]: the request's state as types (head facts, decision, body,
//!   tries, outcome);
//! - [`filter`]: the request filter as named steps (reject by head, route,
//!   dispatch);
//! - [`forward`]: one attempt after another at the VM, full duplex;
//! - [`client`] (and `client::pool`, `client::body`): the edge's HTTP/1.1
//!   client to VMs and peer edges, its per-thread pool, body framing;
//! - [`upstream`]: the head the VM gets, the decision adopted after a retry
//!   or replay, the answer's edits, the failure answered;
//! - [`failure`]: every failure with its status, label, log level, retry;
//! - [`tunnel`]: WebSocket tunnels the edge carries itself (plain and TLS);
//! - [`respond`] and [`error_page`]: the edge's own answers;
//! - [`access_log`], [`recent`]: what a request leaves behind.
//!
//! Invariants:
//! - Client-sent `x-edgeplane-*` headers never reach a VM or peer: all are
//!   removed and the edge sets its own.
//! - `x-forwarded-for/-proto/-host` are overwritten with what this edge saw,
//!   except on a request from a peer edge whose hop header verified, where
//!   the first edge's values are kept.
//! - Keep-alive idle is bounded (the first request's wait too), header
//!   count and bytes are capped (431).
//! - No DNS and no lock on this path: endpoints are resolved in the
//!   background and answered from memory, the table is one ArcSwap load.
//!
//! Start at [`serve`], then [`filter`] and [`forward`].

pub mod access_log;
mod app;
pub mod client;
pub mod ctx;
pub mod downstream;
pub mod error_page;
pub mod failure;
pub mod filter;
mod forward;
pub mod h1;
pub mod headers;
pub mod recent;
mod respond;
mod serve;
pub mod tunnel;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::clock::now_ms;
use crate::shared::Shared;
pub use ctx::RequestCtx;

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
/// it): the handles it has in common with the admin API ([`Shared`]) and
/// its own. Built once by [`crate::server`].
///
/// `cfg` and `route` are swapped whole by a config reload; a request loads
/// each once per step and copies what it needs out, never holding a guard
/// across an `.await`.
#[derive(Clone)]
pub struct Proxy {
    pub shared: Shared,
    /// Port of the first HTTPS listener (for `tls.redirect_http`).
    pub https_port: Option<u16>,
    /// `1.1 <instance_id>`: this edge's entry in the `Via` chain of every
    /// request it sends upstream (RFC 9110 §7.6.3), so a VM sees which
    /// edges a request crossed. Built once (the instance id is restart-only).
    via: Arc<str>,
    request_seq: Arc<AtomicU64>,
}

impl Proxy {
    pub fn new(shared: Shared, https_port: Option<u16>) -> Proxy {
        let via = Arc::from(format!("1.1 {}", shared.cfg.load().edge.instance_id));
        Proxy {
            shared,
            https_port,
            via,
            request_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    fn new_request_id(&self) -> ctx::RequestId {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        ctx::RequestId::new(&self.shared.cfg.load().edge.instance_id, now_ms(), n)
    }

    /// The `[limits]` in use (a copy: no guard outlives the call).
    #[inline]
    pub fn limits(&self) -> edgeplane_config::LimitsConfig {
        self.shared.cfg.load().limits
    }
}
