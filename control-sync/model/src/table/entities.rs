//! The rows as the edge holds them: regions, clusters and VMs (the
//! [`Topology`]), repls packed into one allocation each, custom domains and
//! tombstones, and the [`Endpoint`] a VM or peer edge is dialled at.
//!
//! Plain data: validation lives in `rows/`, lookups on
//! [`super::RoutingTable`]. Sizes are targets (memory per repl is
//! measured in bench/results/world.md), so fields are indices, not names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::ring::{key_hash, Ring};
use crate::sharded::Keyed;
use crate::snapshot::{ClusterState, VmState};

pub type Idx = u32;

/// An optional index in 4 bytes (`u32::MAX` = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptIdx(u32);

impl OptIdx {
    pub const NONE: OptIdx = OptIdx(u32::MAX);
    #[inline]
    pub fn get(self) -> Option<Idx> {
        (self.0 != u32::MAX).then_some(self.0)
    }
    #[inline]
    pub fn from(o: Option<Idx>) -> OptIdx {
        OptIdx(o.unwrap_or(u32::MAX))
    }
}

/// Where something is dialled, as its row gave it: an address, or a host
/// name and port that a [`Resolve`] answers (the proxy resolves names in
/// the background; nothing here looks a name up).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Addr(SocketAddr),
    Name { host: Arc<str>, port: u16 },
}

/// Answers host names with addresses from memory (never a lookup on the
/// caller's thread). The routing decision is handed one, so what it
/// returns is exactly what is dialled.
pub trait Resolve {
    /// The address `host` resolves to now, if it has a good answer.
    fn ip_of(&self, host: &str) -> Option<std::net::IpAddr>;
}

/// No names known: named endpoints stay unresolved.
impl Resolve for () {
    fn ip_of(&self, _host: &str) -> Option<std::net::IpAddr> {
        None
    }
}

impl Endpoint {
    /// The address to dial: the address itself (one branch), or the name's
    /// current answer with the port.
    #[inline]
    pub fn resolve<R: Resolve + ?Sized>(&self, names: &R) -> Option<SocketAddr> {
        match self {
            Endpoint::Addr(a) => Some(*a),
            Endpoint::Name { host, port } => names.ip_of(host).map(|ip| SocketAddr::new(ip, *port)),
        }
    }
    /// The host name, for a named endpoint.
    pub fn host(&self) -> Option<&Arc<str>> {
        match self {
            Endpoint::Addr(_) => None,
            Endpoint::Name { host, .. } => Some(host),
        }
    }
}

impl std::fmt::Display for Endpoint {
    /// As the row wrote it: `ip:port` or `host:port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Region {
    pub name: Box<str>,
    /// Where this region's edges are dialled.
    pub edge: Endpoint,
    /// False once deleted by a delta (the slot stays until a full load).
    pub present: bool,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: Box<str>,
    pub region: Idx,
    pub state: ClusterState,
    pub weight: u32,
    /// VMs of this cluster (present ones), in insertion order.
    pub vms: Vec<Idx>,
    pub present: bool,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub id: Box<str>,
    pub cluster: Idx,
    /// Where its HTTP and WebSocket traffic is dialled.
    pub endpoint: Endpoint,
    pub metrics_addr: Option<SocketAddr>,
    pub state: VmState,
    /// [`crate::ring::key_hash`] of the id: stable tie-breaks and pick-memory tags.
    pub id_hash: u64,
    /// Size units the machine holds (validated: 1 to `MAX_VM_CAPACITY`).
    pub capacity: u32,
    pub present: bool,
}

/// An `active` VM as the balancer sees it: contiguous, 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub vm: Idx,
    pub containers: u32,
    pub id_hash: u64,
    /// Size units the machine holds.
    pub capacity: u32,
    /// Size units the snapshot's containers on it need (the sum of their
    /// repls' sizes).
    pub units: u32,
}

/// The small, rarely changing part of the table.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub regions: Vec<Region>,
    pub clusters: Vec<Cluster>,
    pub vms: Vec<Vm>,
    pub(super) by_region: HashMap<Box<str>, Idx>,
    pub(super) by_cluster: HashMap<Box<str>, Idx>,
    pub(super) by_vm: HashMap<Box<str>, Idx>,
    /// One ring per region (index = region index).
    pub(super) rings: Vec<Arc<Ring>>,
}

/// Per-VM container counts and reserved units, and per-cluster balancer
/// candidates.
#[derive(Debug, Clone, Default)]
pub(super) struct Load {
    pub(super) containers: Vec<u32>,
    pub(super) units: Vec<u32>,
    pub(super) candidates: Vec<Arc<[Candidate]>>,
}

/// A repl as the edge holds it: 48 bytes plus one allocation.
#[derive(Debug, Clone)]
pub struct Repl {
    /// id, slug and owner back to back in one allocation (memory per repl
    /// is a target: three strings cost two extra allocations and 32 bytes).
    pub(super) strs: Box<str>,
    id_len: u8,
    slug_len: u8,
    has_owner: bool,
    pub region: Idx,
    /// Pinned cluster.
    pub cluster: OptIdx,
    /// Pending lazy transfer target.
    pub transfer_to: OptIdx,
    /// The VM running its container, if any. (The container's `started_at`
    /// is validated but not kept: routing does not use it, and memory per
    /// repl is a target.)
    pub vm: OptIdx,
    /// [`crate::ring::key_hash`] of the id: ring position, pick-memory key
    /// and the id index's key.
    pub id_hash: u64,
    /// Size units its container needs (validated: 1 to the region's largest
    /// VM capacity). Fits the padding: the struct stays 48 bytes.
    pub size: u32,
}

impl Repl {
    /// `id` and `slug` must be at most 255 bytes (validated: 128 and 63).
    pub(super) fn new(id: &str, slug: &str, owner: Option<&str>, region: Idx) -> Repl {
        let mut strs = String::with_capacity(id.len() + slug.len() + owner.map_or(0, str::len));
        strs.push_str(id);
        strs.push_str(slug);
        if let Some(o) = owner {
            strs.push_str(o);
        }
        Repl {
            strs: strs.into_boxed_str(),
            id_len: id.len() as u8,
            slug_len: slug.len() as u8,
            has_owner: owner.is_some(),
            region,
            cluster: OptIdx::NONE,
            transfer_to: OptIdx::NONE,
            vm: OptIdx::NONE,
            id_hash: key_hash(id),
            size: 1,
        }
    }
    #[inline]
    pub fn id(&self) -> &str {
        &self.strs[..self.id_len as usize]
    }
    #[inline]
    pub fn slug(&self) -> &str {
        &self.strs[self.id_len as usize..self.id_len as usize + self.slug_len as usize]
    }
    pub fn owner(&self) -> Option<&str> {
        self.has_owner
            .then(|| &self.strs[self.id_len as usize + self.slug_len as usize..])
    }
}

impl Keyed for Repl {
    fn key(&self) -> &str {
        self.slug()
    }
}

#[derive(Debug, Clone)]
pub(super) struct Domain {
    pub(super) hostname: Box<str>,
    pub(super) repl_id: Box<str>,
}

impl Keyed for Domain {
    fn key(&self) -> &str {
        &self.hostname
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    pub from_cluster: Idx,
    pub to_cluster: Idx,
    pub expires_at_ms: i64,
}

/// The tombstones of one repl.
#[derive(Debug, Clone)]
pub(super) struct Tombstones {
    pub(super) repl_id: Box<str>,
    pub(super) list: Vec<Tombstone>,
}

impl Keyed for Tombstones {
    fn key(&self) -> &str {
        &self.repl_id
    }
}
