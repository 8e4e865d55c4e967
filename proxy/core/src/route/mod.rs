//! The routing decision (docs/contract.md §2) as a pure function: no Pingora, no
//! tokio, no I/O; time comes in as an argument.
//!
//! Where it sits: the proxy's request path (`edgeplane-proxy`'s `http`
//! module) extracts a [`RouteRequest`] from the request head and calls
//! [`decide()`] with the
//! current [`RoutingTable`](edgeplane_placement::RoutingTable) (one ArcSwap load); `edgeplane route` and
//! `/debug/route` call the same function with an [`Explain`] that records
//! every step. The answer is a [`Decision`]: a VM, a peer region's edge, or
//! a rejection with its status code.
//!
//! Order of steps: canonical host (400 on malformed or absolute-form
//! mismatch) -> workspace path (token checked before anything else, 401;
//! a repl this edge's table does not hold goes to the region the token's
//! signed claim names) or slug / custom domain (404) -> regional affinity
//! or tombstone forward
//! (`max_hops`, 508) -> running container -> pinned cluster or ring, lazy
//! transfer -> pick memory, else the subsetting balancer (503 when no active VM).
//!
//! Invariants: no allocation on the hosted-app path; explanations are
//! closures that only run when explaining. Start at [`decide()`].

pub mod host;
pub mod pick_memory;
pub mod replay;
pub mod signing;

mod decide;

pub use decide::decide;

use std::net::SocketAddr;
use std::sync::Arc;

use edgeplane_placement::table::{Idx, Resolve};
pub use edgeplane_token::{Refusal, Verifier, Version as TokenVersion};

use crate::balancer::{Balancer, BalancerParams};
use pick_memory::PickMemory;

/// What the edge knows about itself that routing needs: settings from the
/// config plus the shared, stateful pick memory and balancer.
///
/// A config reload builds a new context with [`RouteContext::reconfigured`]
/// (same memory and balancer, new settings) and the proxy swaps it in
/// whole, so one request never sees half of two configs.
pub struct RouteContext {
    /// Lower-case hosting suffixes, longest first.
    pub suffixes: Vec<String>,
    pub workspace_prefix: String,
    /// Checks workspace tokens: v2 public keys, the v1 key while migrating.
    pub tokens: Verifier,
    /// Browser origins allowed on workspace sessions (empty: not checked).
    pub workspace_origins: Vec<String>,
    pub max_hops: u8,
    pub memory: Arc<PickMemory>,
    pub balancer: Arc<Balancer>,
}

impl RouteContext {
    pub fn from_config(cfg: &edgeplane_config::Config) -> RouteContext {
        Self::with_state(
            cfg,
            Arc::new(PickMemory::new(cfg.balancer.pick_ttl.as_millis() as u64)),
            Arc::new(Balancer::new(
                BalancerParams::from_config(cfg),
                &cfg.edge.instance_id,
                cfg.balancer.policy,
            )),
        )
    }

    fn with_state(cfg: &edgeplane_config::Config, memory: Arc<PickMemory>, balancer: Arc<Balancer>) -> RouteContext {
        let mut suffixes = cfg.hosting.suffixes.clone();
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.len()));
        RouteContext {
            suffixes,
            workspace_prefix: cfg.hosting.workspace_path_prefix.clone(),
            tokens: Verifier::new(
                cfg.security.workspace_token_public_keys.clone(),
                cfg.security.workspace_token_key.clone(),
            ),
            workspace_origins: cfg.security.workspace_origins.clone(),
            max_hops: cfg.limits.max_hops,
            memory,
            balancer,
        }
    }

    /// The context for config `next` after `prev`: new settings, the same
    /// pick memory and balancer (their counters, ledger and view live on),
    /// given `next`'s TTL and params. The balancer policy follows the file
    /// only when the file's policy changed, so a policy switched through the
    /// admin API survives a reload that did not touch it.
    pub fn reconfigured(&self, prev: &edgeplane_config::Config, next: &edgeplane_config::Config) -> RouteContext {
        self.memory.set_ttl(next.balancer.pick_ttl.as_millis() as u64);
        self.balancer.set_params(BalancerParams::from_config(next));
        if next.balancer.policy != prev.balancer.policy {
            self.balancer.set_policy(next.balancer.policy);
        }
        Self::with_state(next, self.memory.clone(), self.balancer.clone())
    }
}

/// The request facts routing looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRequest<'a> {
    /// Raw Host header value (`None` when absent).
    pub host: Option<&'a [u8]>,
    /// `host` canonicalised already ([`host::canonical_host`]), when the
    /// caller needed it first (the proxy verifies hop signatures with it):
    /// the decision then does not compute it again.
    pub canonical_host: Option<&'a str>,
    /// Authority of an absolute-form request target, if any.
    pub authority: Option<&'a str>,
    /// Path without the query.
    pub path: &'a str,
    /// The raw query string, if any (for `token=`).
    pub query: Option<&'a str>,
    /// Bearer token from `Authorization`, if any.
    pub bearer: Option<&'a str>,
    /// Raw `Origin` header, if any (checked for workspace sessions).
    pub origin: Option<&'a [u8]>,
    /// Hop count of a verified `x-edgeplane-hop` header (0 = none).
    pub hops: u8,
    /// Unix time in milliseconds.
    pub now_ms: u64,
    /// Explain only: read the pick memory but change nothing.
    pub dry_run: bool,
    /// Random bits for the balancer's random choices and tie-breaks.
    pub entropy: u64,
}

/// What kind of request it was (the `kind` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    App,
    CustomDomain,
    Workspace,
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::CustomDomain => "custom_domain",
            Kind::Workspace => "workspace",
            Kind::Unknown => "unknown",
        }
    }
}

/// How the VM was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmReason {
    /// The repl's container runs there.
    Running,
    /// Picked for this repl moments ago (pick memory).
    Remembered,
    /// Newly picked by the balancer.
    Picked,
    /// Where a VM's `x-edgeplane-replay` sent the request.
    Replayed,
}

impl VmReason {
    pub fn as_str(self) -> &'static str {
        match self {
            VmReason::Running => "running",
            VmReason::Remembered => "remembered",
            VmReason::Picked => "picked",
            VmReason::Replayed => "replayed",
        }
    }
}

/// Why a request goes to another region's edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardReason {
    Affinity,
    Tombstone,
    /// A VM's `x-edgeplane-replay: region=` or a cluster of another region.
    Replay,
}

impl ForwardReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardReason::Affinity => "affinity",
            ForwardReason::Tombstone => "tombstone",
            ForwardReason::Replay => "replay",
        }
    }
}

/// Why a request is answered by the edge itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    MissingHost,
    MalformedHost,
    AuthorityMismatch,
    UnknownHost,
    UnknownRepl,
    BadToken,
    BadOrigin,
    NoUsableVm,
    /// The cluster's VMs are up but none has room for the repl's size
    /// (503 with Retry-After, like an empty cluster).
    ClusterFull,
    ForwardLoop,
    NotReady,
    /// The VM or peer edge is named by a host name with no good answer yet
    /// (502, like any VM that cannot be reached).
    Unresolved,
}

impl RejectReason {
    /// The status code of docs/contract.md §5.
    pub fn status(self) -> u16 {
        match self {
            RejectReason::MissingHost | RejectReason::MalformedHost | RejectReason::AuthorityMismatch => 400,
            RejectReason::BadToken => 401,
            RejectReason::BadOrigin => 403,
            RejectReason::UnknownHost | RejectReason::UnknownRepl => 404,
            RejectReason::NoUsableVm | RejectReason::ClusterFull | RejectReason::NotReady => 503,
            RejectReason::ForwardLoop => 508,
            RejectReason::Unresolved => 502,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingHost => "missing_host",
            RejectReason::MalformedHost => "malformed_host",
            RejectReason::AuthorityMismatch => "authority_mismatch",
            RejectReason::UnknownHost => "unknown_host",
            RejectReason::UnknownRepl => "unknown_repl",
            RejectReason::BadToken => "bad_token",
            RejectReason::BadOrigin => "bad_origin",
            RejectReason::NoUsableVm => "no_usable_vm",
            RejectReason::ClusterFull => "cluster_full",
            RejectReason::ForwardLoop => "forward_loop",
            RejectReason::NotReady => "not_ready",
            RejectReason::Unresolved => "unresolved",
        }
    }
}

/// The routing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Vm {
        kind: Kind,
        /// Stable hash of the repl id (pick-memory key).
        repl_hash: u64,
        vm: Idx,
        addr: SocketAddr,
        reason: VmReason,
        /// Set on a lazy transfer: the cluster the repl is moving from.
        transfer_from: Option<Idx>,
    },
    Forward {
        kind: Kind,
        /// Stable hash of the repl id; 0 for an app known only by name
        /// (the world directory).
        repl_hash: u64,
        region: Idx,
        addr: SocketAddr,
        reason: ForwardReason,
        /// Hop count to sign into the forwarded request.
        hops: u8,
    },
    Reject {
        kind: Kind,
        reason: RejectReason,
    },
}

impl Decision {
    pub fn kind(&self) -> Kind {
        match *self {
            Decision::Vm { kind, .. } | Decision::Forward { kind, .. } | Decision::Reject { kind, .. } => kind,
        }
    }
}

/// What the workspace token check of one request found: the token's
/// version when it could be told, and why it was refused (`None`: valid).
/// The glue counts it as `workspace_tokens_total{version,outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCheck {
    pub version: Option<TokenVersion>,
    pub refusal: Option<Refusal>,
}

impl TokenCheck {
    /// The `version` label: `1`, `2`, or `none` (no token, or one of no
    /// known format).
    pub fn version_label(&self) -> &'static str {
        self.version.map_or("none", TokenVersion::label)
    }

    /// The `outcome` label: `valid` or the refusal.
    pub fn outcome_label(&self) -> &'static str {
        self.refusal.map_or("valid", Refusal::as_str)
    }
}

/// Receives what a decision found out: its steps, in words (only when
/// explaining), and the token check of a workspace session. The hot path
/// uses `()`, which ignores both without formatting anything, or a
/// [`TokenSeen`] to count the token check.
pub trait Explain {
    fn step(&mut self, f: impl FnOnce() -> String);
    /// The workspace token was checked (once per workspace request).
    #[inline(always)]
    fn token(&mut self, _check: TokenCheck) {}
}

/// Keeps the token check and ignores the steps: what the request path
/// passes to [`decide()`].
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenSeen(pub Option<TokenCheck>);

impl Explain for TokenSeen {
    #[inline(always)]
    fn step(&mut self, _f: impl FnOnce() -> String) {}
    fn token(&mut self, check: TokenCheck) {
        self.0 = Some(check);
    }
}

impl Explain for () {
    #[inline(always)]
    fn step(&mut self, _f: impl FnOnce() -> String) {}
}

impl Explain for Vec<String> {
    fn step(&mut self, f: impl FnOnce() -> String) {
        self.push(f());
    }
}

/// One line naming where a decision sends the request, for people.
pub fn describe(d: &Decision, t: &edgeplane_placement::RoutingTable) -> String {
    match *d {
        Decision::Vm {
            vm,
            addr,
            reason,
            transfer_from,
            ..
        } => {
            let from = transfer_from
                .map(|c| format!(", transfer from {}", t.cluster(c).name))
                .unwrap_or_default();
            let why = reason.as_str();
            format!("vm {} {addr} ({why}{from})", t.vm(vm).id)
        }
        Decision::Forward {
            region,
            addr,
            reason,
            hops,
            ..
        } => {
            format!(
                "forward to region {} edge {addr} ({}, hop {hops})",
                t.region(region).name,
                reason.as_str()
            )
        }
        Decision::Reject { reason, .. } => format!("{} {}", reason.status(), reason.as_str()),
    }
}

/// `path_and_query` with the value of a `token=` query parameter replaced
/// by `<redacted>`: a workspace token is a credential and never printed.
pub fn redact_token(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.into();
    };
    if !query.split('&').any(|kv| kv.starts_with("token=")) {
        return path_and_query.into();
    }
    let query: Vec<&str> = query
        .split('&')
        .map(|kv| {
            if kv.starts_with("token=") {
                "token=<redacted>"
            } else {
                kv
            }
        })
        .collect();
    format!("{path}?{}", query.join("&")).into()
}

/// Explains the decision for `host` and `path` as numbered lines ending in
/// `=> <where>`; used by `edgeplane route` and `/debug/route`. Changes no
/// balancer state (dry run).
pub fn explain<R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &edgeplane_placement::RoutingTable,
    host: &str,
    path_and_query: &str,
    now_ms: u64,
    names: &R,
) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let req = RouteRequest {
        host: Some(host.as_bytes()),
        path,
        query,
        now_ms,
        dry_run: true,
        ..Default::default()
    };
    let mut steps: Vec<String> = Vec::new();
    let d = decide(ctx, t, &req, names, &mut steps);
    let region = if t.is_loaded() {
        t.region(t.local_region()).name.to_string()
    } else {
        "-".into()
    };
    let mut out = format!(
        "route host={host} path={} edge_region={region} table_version={}\n",
        redact_token(path_and_query),
        t.version()
    );
    for (i, s) in steps.iter().enumerate() {
        out.push_str(&format!("{:>2}. {s}\n", i + 1));
    }
    out.push_str(&format!("=> {}\n", describe(&d, t)));
    out
}
