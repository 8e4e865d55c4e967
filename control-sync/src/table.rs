//! The routing table: an immutable, validated, index-based copy of the
//! placement snapshot, built off the hot path and read by every request.
//!
//! Flow: a source hands over a [`Snapshot`]; [`RoutingTable::build`]
//! validates every row (duplicate ids or slugs, dangling references, bad
//! addresses, bad times) and either returns a whole table or the first
//! error naming the row — never a partial table. The sync side then
//! publishes it through [`crate::TableHandle`] (ArcSwap).
//!
//! Invariants:
//! - Every cross reference is a `u32` index that is valid in this table.
//! - Addresses are parsed `SocketAddr`s: the hot path never parses or resolves.
//! - Lookups by slug, repl id and custom domain are one hash and a probe in
//!   a `HashTable<u32>` whose keys live in the rows (no duplicated strings).
//! - One ring per region over its active clusters with weight > 0.
//!
//! Start reading at [`RoutingTable::build`], then the lookup methods.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;

use hashbrown::HashTable;

use crate::ring::{key_hash, Member, Ring};
use crate::snapshot::*;

pub type Idx = u32;

#[derive(Debug, Clone)]
pub struct Region {
    pub name: Box<str>,
    pub edge_addr: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: Box<str>,
    pub region: Idx,
    pub state: ClusterState,
    pub weight: u32,
    /// VMs of this cluster, in snapshot order.
    pub vms: Box<[Idx]>,
    /// The `active` VMs, packed for the balancer's scan (16 bytes each,
    /// contiguous: no pointer chasing into `Vm` rows on the hot path).
    pub candidates: Box<[Candidate]>,
}

/// An `active` VM as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub vm: Idx,
    pub containers: u32,
    pub id_hash: u64,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub id: Box<str>,
    pub cluster: Idx,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: VmState,
    /// Containers the snapshot places on this VM.
    pub containers: u32,
    /// [`key_hash`] of the id: stable tie-breaks and pick-memory tags.
    pub id_hash: u64,
}

#[derive(Debug, Clone)]
pub struct Repl {
    pub id: Box<str>,
    pub slug: Box<str>,
    pub owner: Option<Box<str>>,
    pub region: Idx,
    pub cluster: Option<Idx>,
    pub transfer_to: Option<Idx>,
    /// The VM running its container, if any.
    pub vm: Option<Idx>,
    pub container_started_at: Option<Box<str>>,
    /// [`key_hash`] of the id: the ring position and pick-memory key.
    pub id_hash: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    pub from_cluster: Idx,
    pub to_cluster: Idx,
    pub expires_at_ms: i64,
}

/// A snapshot row that cannot be accepted. The whole snapshot is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{table}[{index}] ({key}): {message}")]
    Row {
        table: &'static str,
        index: usize,
        key: String,
        message: String,
    },
    #[error("this edge's region {0:?} is not in the snapshot's regions")]
    UnknownLocalRegion(String),
    #[error("snapshot is not valid: {0}")]
    Decode(String),
    #[error("cannot read snapshot {path}: {message}")]
    Io { path: String, message: String },
}

/// The snapshot row being validated; its errors name it.
#[derive(Clone, Copy)]
struct Row<'a> {
    table: &'static str,
    index: usize,
    key: &'a str,
}

impl Row<'_> {
    fn err(&self, message: impl Into<String>) -> SnapshotError {
        SnapshotError::Row {
            table: self.table,
            index: self.index,
            key: format!("{:?}", self.key),
            message: message.into(),
        }
    }

    /// Ids and names: 1-128 printable ASCII characters.
    fn check_id(&self) -> Result<(), SnapshotError> {
        let s = self.key;
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(self.err("id must be 1-128 printable characters"));
        }
        Ok(())
    }

    /// A referenced row by name, or "`field` "name" does not exist".
    fn lookup(&self, map: &HashMap<Box<str>, Idx>, field: &str, name: &str) -> Result<Idx, SnapshotError> {
        map.get(name)
            .copied()
            .ok_or_else(|| self.err(format!("{field} {name:?} does not exist")))
    }

    /// Registers this row's key as its index in `map`; duplicates are errors.
    fn insert_name(&self, map: &mut HashMap<Box<str>, Idx>, what: &str) -> Result<(), SnapshotError> {
        match map.insert(self.key.into(), self.index as Idx) {
            None => Ok(()),
            Some(_) => Err(self.err(format!("duplicate {what}"))),
        }
    }

    fn addr(&self, field: &str, v: &str) -> Result<SocketAddr, SnapshotError> {
        match v.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Ok(a),
            _ => Err(self.err(format!("{field} {v:?} is not an ip:port address"))),
        }
    }
}

/// Inserts `idx` into an index whose keys live in the rows (`key_of`);
/// on a duplicate key returns the index already there.
fn insert_unique<'k>(
    index: &mut HashTable<Idx>,
    hasher: &foldhash::fast::RandomState,
    idx: Idx,
    key_of: impl Fn(Idx) -> &'k str,
) -> Result<(), Idx> {
    let key = key_of(idx);
    match index.entry(
        hasher.hash_one(key),
        |&j| key_of(j) == key,
        |&j| hasher.hash_one(key_of(j)),
    ) {
        hashbrown::hash_table::Entry::Occupied(o) => Err(*o.get()),
        hashbrown::hash_table::Entry::Vacant(v) => {
            v.insert(idx);
            Ok(())
        }
    }
}

/// Looks a key up in an index built by [`insert_unique`].
#[inline]
fn find_unique<'k>(
    index: &HashTable<Idx>,
    hasher: &foldhash::fast::RandomState,
    key: &str,
    key_of: impl Fn(Idx) -> &'k str,
) -> Option<Idx> {
    index.find(hasher.hash_one(key), |&j| key_of(j) == key).copied()
}

/// Counts for `/debug/snapshot` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableCounts {
    pub regions: usize,
    pub clusters: usize,
    pub vms: usize,
    pub repls: usize,
    pub containers: usize,
    pub custom_domains: usize,
    pub tombstones: usize,
}

/// The immutable routing table. See the module docs.
pub struct RoutingTable {
    version: u64,
    local_region: Idx,
    regions: Vec<Region>,
    clusters: Vec<Cluster>,
    vms: Vec<Vm>,
    repls: Vec<Repl>,
    domains: Vec<(Box<str>, Idx)>,
    tombstones: HashMap<Idx, Box<[Tombstone]>>,
    rings: Vec<Ring>,
    hasher: foldhash::fast::RandomState,
    by_slug: HashTable<Idx>,
    by_repl_id: HashTable<Idx>,
    by_domain: HashTable<Idx>,
    by_region: HashMap<Box<str>, Idx>,
    by_cluster: HashMap<Box<str>, Idx>,
    by_vm: HashMap<Box<str>, Idx>,
    counts: TableCounts,
}

impl std::fmt::Debug for RoutingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingTable")
            .field("version", &self.version)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// Slugs are DNS labels: 1-63 of `a-z 0-9 -`, not starting or ending in `-`.
pub fn is_valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Hostnames: lower-case labels of `a-z 0-9 -`, at least two, <= 253 bytes.
pub fn is_valid_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}

impl RoutingTable {
    /// An empty, not-ready table (version 0) for edges that have not loaded yet.
    pub fn empty() -> RoutingTable {
        RoutingTable {
            version: 0,
            local_region: 0,
            regions: Vec::new(),
            clusters: Vec::new(),
            vms: Vec::new(),
            repls: Vec::new(),
            domains: Vec::new(),
            tombstones: HashMap::new(),
            rings: Vec::new(),
            hasher: Default::default(),
            by_slug: HashTable::new(),
            by_repl_id: HashTable::new(),
            by_domain: HashTable::new(),
            by_region: HashMap::new(),
            by_cluster: HashMap::new(),
            by_vm: HashMap::new(),
            counts: TableCounts::default(),
        }
    }

    /// Validates `snap` and builds the table an edge of `local_region`
    /// routes with. `version` must be > 0 (0 means "nothing loaded").
    pub fn build(snap: &Snapshot, local_region: &str, version: u64) -> Result<RoutingTable, SnapshotError> {
        let mut t = RoutingTable::empty();
        t.version = version.max(1);

        for (i, r) in snap.regions.iter().enumerate() {
            let row = Row {
                table: "regions",
                index: i,
                key: &r.name,
            };
            row.check_id()?;
            let edge_addr = row.addr("edge_addr", &r.edge_addr)?;
            row.insert_name(&mut t.by_region, "region name")?;
            t.regions.push(Region {
                name: r.name.as_str().into(),
                edge_addr,
            });
        }
        t.local_region = *t
            .by_region
            .get(local_region)
            .ok_or_else(|| SnapshotError::UnknownLocalRegion(local_region.to_string()))?;

        for (i, c) in snap.clusters.iter().enumerate() {
            let row = Row {
                table: "clusters",
                index: i,
                key: &c.name,
            };
            row.check_id()?;
            let region = row.lookup(&t.by_region, "region", &c.region)?;
            if c.weight > MAX_CLUSTER_WEIGHT {
                return Err(row.err(format!("weight {} is above {MAX_CLUSTER_WEIGHT}", c.weight)));
            }
            row.insert_name(&mut t.by_cluster, "cluster name")?;
            t.clusters.push(Cluster {
                name: c.name.as_str().into(),
                region,
                state: c.state,
                weight: c.weight,
                vms: Box::new([]),
                candidates: Box::new([]),
            });
        }

        let mut cluster_vms: Vec<Vec<Idx>> = vec![Vec::new(); t.clusters.len()];
        for (i, v) in snap.vms.iter().enumerate() {
            let row = Row {
                table: "vms",
                index: i,
                key: &v.id,
            };
            row.check_id()?;
            let cluster = row.lookup(&t.by_cluster, "cluster", &v.cluster)?;
            let addr = row.addr("addr", &v.addr)?;
            let metrics_addr = v
                .metrics_addr
                .as_deref()
                .map(|m| row.addr("metrics_addr", m))
                .transpose()?;
            row.insert_name(&mut t.by_vm, "vm id")?;
            cluster_vms[cluster as usize].push(i as Idx);
            t.vms.push(Vm {
                id: v.id.as_str().into(),
                cluster,
                addr,
                metrics_addr,
                state: v.state,
                containers: 0,
                id_hash: key_hash(&v.id),
            });
        }
        for (c, vms) in t.clusters.iter_mut().zip(cluster_vms) {
            c.vms = vms.into_boxed_slice();
        }

        t.repls.reserve(snap.repls.len());
        for (i, r) in snap.repls.iter().enumerate() {
            let row = Row {
                table: "repls",
                index: i,
                key: &r.id,
            };
            row.check_id()?;
            if !is_valid_slug(&r.slug) {
                return Err(row.err(format!("slug {:?} is not a DNS label (a-z, 0-9, '-')", r.slug)));
            }
            let region = row.lookup(&t.by_region, "region", &r.region)?;
            let in_region = |field: &str, name: &Option<String>| -> Result<Option<Idx>, SnapshotError> {
                let Some(name) = name else { return Ok(None) };
                let c = row.lookup(&t.by_cluster, field, name)?;
                if t.clusters[c as usize].region != region {
                    return Err(row.err(format!("{field} {name:?} is not in region {:?}", r.region)));
                }
                Ok(Some(c))
            };
            let cluster = in_region("cluster", &r.cluster)?;
            let transfer_to = in_region("transfer_to", &r.transfer_to)?;
            let idx = i as Idx;
            t.repls.push(Repl {
                id: r.id.as_str().into(),
                slug: r.slug.as_str().into(),
                owner: r.owner.as_deref().map(Into::into),
                region,
                cluster,
                transfer_to,
                vm: None,
                container_started_at: None,
                id_hash: key_hash(&r.id),
            });
            let repls = &t.repls;
            insert_unique(&mut t.by_repl_id, &t.hasher, idx, |j| &repls[j as usize].id)
                .map_err(|_| row.err("duplicate repl id"))?;
            insert_unique(&mut t.by_slug, &t.hasher, idx, |j| &repls[j as usize].slug).map_err(|other| {
                row.err(format!(
                    "slug {:?} is already used by repl {:?}",
                    r.slug, repls[other as usize].id
                ))
            })?;
        }

        for (i, c) in snap.containers.iter().enumerate() {
            let row = Row {
                table: "containers",
                index: i,
                key: &c.repl_id,
            };
            let r = t
                .find_repl_id(&c.repl_id)
                .ok_or_else(|| row.err("repl does not exist"))?;
            let v = row.lookup(&t.by_vm, "vm", &c.vm_id)?;
            if let Some(s) = &c.started_at {
                if parse_rfc3339_ms(s).is_none() {
                    return Err(row.err(format!("started_at {s:?} is not RFC 3339")));
                }
            }
            let repl = &mut t.repls[r as usize];
            if repl.vm.is_some() {
                return Err(row.err("repl already has a container (at most one per repl)"));
            }
            repl.vm = Some(v);
            repl.container_started_at = c.started_at.as_deref().map(Into::into);
            t.vms[v as usize].containers += 1;
        }

        for (i, d) in snap.custom_domains.iter().enumerate() {
            let row = Row {
                table: "custom_domains",
                index: i,
                key: &d.hostname,
            };
            let host = d.hostname.trim_end_matches('.').to_ascii_lowercase();
            if !is_valid_hostname(&host) {
                return Err(row.err("not a valid hostname"));
            }
            let r = t
                .find_repl_id(&d.repl_id)
                .ok_or_else(|| row.err(format!("repl {:?} does not exist", d.repl_id)))?;
            t.domains.push((host.into(), r));
            let domains = &t.domains;
            insert_unique(&mut t.by_domain, &t.hasher, (domains.len() - 1) as Idx, |j| {
                &domains[j as usize].0
            })
            .map_err(|_| row.err("duplicate hostname"))?;
        }

        for c in t.clusters.iter_mut() {
            let vms = &t.vms;
            c.candidates = c
                .vms
                .iter()
                .filter(|&&v| vms[v as usize].state == VmState::Active)
                .map(|&v| Candidate {
                    vm: v,
                    containers: vms[v as usize].containers,
                    id_hash: vms[v as usize].id_hash,
                })
                .collect();
        }

        let mut tombs: HashMap<Idx, Vec<Tombstone>> = HashMap::new();
        for (i, ts) in snap.tombstones.iter().enumerate() {
            let row = Row {
                table: "tombstones",
                index: i,
                key: &ts.repl_id,
            };
            let r = t
                .find_repl_id(&ts.repl_id)
                .ok_or_else(|| row.err("repl does not exist"))?;
            let from_cluster = row.lookup(&t.by_cluster, "from_cluster", &ts.from_cluster)?;
            let to_cluster = row.lookup(&t.by_cluster, "to_cluster", &ts.to_cluster)?;
            let expires_at_ms = parse_rfc3339_ms(&ts.expires_at)
                .ok_or_else(|| row.err(format!("expires_at {:?} is not RFC 3339", ts.expires_at)))?;
            let list = tombs.entry(r).or_default();
            if list.iter().any(|x| x.from_cluster == from_cluster) {
                return Err(row.err(format!("duplicate tombstone from {:?}", ts.from_cluster)));
            }
            list.push(Tombstone {
                from_cluster,
                to_cluster,
                expires_at_ms,
            });
        }
        t.tombstones = tombs.into_iter().map(|(k, v)| (k, v.into_boxed_slice())).collect();

        t.rings = (0..t.regions.len() as Idx)
            .map(|region| {
                let members: Vec<Member> = t
                    .clusters
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.region == region && c.state == ClusterState::Active && c.weight > 0)
                    .map(|(ci, c)| Member {
                        id: ci as Idx,
                        name: &c.name,
                        weight: c.weight,
                    })
                    .collect();
                Ring::build(&members)
            })
            .collect();

        t.counts = TableCounts {
            regions: t.regions.len(),
            clusters: t.clusters.len(),
            vms: t.vms.len(),
            repls: t.repls.len(),
            containers: snap.containers.len(),
            custom_domains: t.domains.len(),
            tombstones: snap.tombstones.len(),
        };
        Ok(t)
    }

    #[inline]
    fn find_repl_id(&self, id: &str) -> Option<Idx> {
        find_unique(&self.by_repl_id, &self.hasher, id, |j| &self.repls[j as usize].id)
    }

    /// Version of the source data this table was built from (0 = nothing loaded).
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn is_loaded(&self) -> bool {
        self.version > 0
    }
    pub fn counts(&self) -> TableCounts {
        self.counts
    }
    pub fn local_region(&self) -> Idx {
        self.local_region
    }

    #[inline]
    pub fn repl_by_slug(&self, slug: &str) -> Option<Idx> {
        find_unique(&self.by_slug, &self.hasher, slug, |j| &self.repls[j as usize].slug)
    }
    #[inline]
    pub fn repl_by_id(&self, id: &str) -> Option<Idx> {
        self.find_repl_id(id)
    }
    /// `host` must already be canonical (lower case, no port, no trailing dot).
    #[inline]
    pub fn repl_by_domain(&self, host: &str) -> Option<Idx> {
        find_unique(&self.by_domain, &self.hasher, host, |j| &self.domains[j as usize].0)
            .map(|j| self.domains[j as usize].1)
    }

    #[inline]
    pub fn repl(&self, i: Idx) -> &Repl {
        &self.repls[i as usize]
    }
    #[inline]
    pub fn region(&self, i: Idx) -> &Region {
        &self.regions[i as usize]
    }
    #[inline]
    pub fn cluster(&self, i: Idx) -> &Cluster {
        &self.clusters[i as usize]
    }
    #[inline]
    pub fn vm(&self, i: Idx) -> &Vm {
        &self.vms[i as usize]
    }
    /// The ring of a region's active clusters.
    #[inline]
    pub fn ring(&self, region: Idx) -> &Ring {
        &self.rings[region as usize]
    }
    /// Tombstones of a repl (usually none).
    #[inline]
    pub fn tombstones(&self, repl: Idx) -> &[Tombstone] {
        self.tombstones.get(&repl).map(|b| &b[..]).unwrap_or(&[])
    }
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }
    pub fn vms(&self) -> &[Vm] {
        &self.vms
    }
    pub fn region_by_name(&self, name: &str) -> Option<Idx> {
        self.by_region.get(name).copied()
    }
    pub fn cluster_by_name(&self, name: &str) -> Option<Idx> {
        self.by_cluster.get(name).copied()
    }
    pub fn vm_by_id(&self, id: &str) -> Option<Idx> {
        self.by_vm.get(id).copied()
    }

    /// The rows this table was built from (for `edgeplane snapshot dump`).
    pub fn to_snapshot(&self) -> Snapshot {
        let cname = |c: Idx| self.clusters[c as usize].name.to_string();
        let rname = |r: Idx| self.regions[r as usize].name.to_string();
        let mut tombstones: Vec<(Idx, Tombstone)> = self
            .tombstones
            .iter()
            .flat_map(|(&r, ts)| ts.iter().map(move |&t| (r, t)))
            .collect();
        tombstones.sort_by_key(|(r, t)| (*r, t.from_cluster));
        Snapshot {
            regions: self
                .regions
                .iter()
                .map(|r| RegionRow {
                    name: r.name.to_string(),
                    edge_addr: r.edge_addr.to_string(),
                })
                .collect(),
            clusters: self
                .clusters
                .iter()
                .map(|c| ClusterRow {
                    name: c.name.to_string(),
                    region: rname(c.region),
                    state: c.state,
                    weight: c.weight,
                })
                .collect(),
            vms: self
                .vms
                .iter()
                .map(|v| VmRow {
                    id: v.id.to_string(),
                    cluster: cname(v.cluster),
                    addr: v.addr.to_string(),
                    metrics_addr: v.metrics_addr.map(|a| a.to_string()),
                    state: v.state,
                })
                .collect(),
            repls: self
                .repls
                .iter()
                .map(|r| ReplRow {
                    id: r.id.to_string(),
                    slug: r.slug.to_string(),
                    owner: r.owner.as_deref().map(str::to_string),
                    region: rname(r.region),
                    cluster: r.cluster.map(cname),
                    transfer_to: r.transfer_to.map(cname),
                })
                .collect(),
            containers: self
                .repls
                .iter()
                .filter_map(|r| {
                    r.vm.map(|v| ContainerRow {
                        repl_id: r.id.to_string(),
                        vm_id: self.vms[v as usize].id.to_string(),
                        started_at: r.container_started_at.as_deref().map(str::to_string),
                    })
                })
                .collect(),
            custom_domains: self
                .domains
                .iter()
                .map(|(h, r)| CustomDomainRow {
                    hostname: h.to_string(),
                    repl_id: self.repls[*r as usize].id.to_string(),
                })
                .collect(),
            tombstones: tombstones
                .into_iter()
                .map(|(r, t)| TombstoneRow {
                    repl_id: self.repls[r as usize].id.to_string(),
                    from_cluster: cname(t.from_cluster),
                    to_cluster: cname(t.to_cluster),
                    expires_at: format_rfc3339_ms(t.expires_at_ms),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn demo() -> Snapshot {
        serde_json::from_str(
            r#"{"regions": [{"name": "us-east1", "edge_addr": "127.0.0.1:8080"},
                            {"name": "ap-south1", "edge_addr": "127.0.0.1:8081"}],
                "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"},
                             {"name": "use1-b", "region": "us-east1", "state": "draining", "weight": 50},
                             {"name": "aps1-a", "region": "ap-south1", "state": "active"}],
                "vms": [{"id": "vm-1", "cluster": "use1-a", "addr": "127.0.0.1:7001", "state": "active"},
                        {"id": "vm-2", "cluster": "use1-a", "addr": "127.0.0.1:7002", "state": "active"},
                        {"id": "vm-3", "cluster": "aps1-a", "addr": "127.0.0.1:7003", "metrics_addr": "127.0.0.1:7103", "state": "active"}],
                "repls": [{"id": "r1", "slug": "app1", "owner": "u1", "region": "us-east1"},
                          {"id": "r2", "slug": "app2", "region": "us-east1", "cluster": "use1-a", "transfer_to": "use1-b"},
                          {"id": "r4", "slug": "moved", "region": "ap-south1"}],
                "containers": [{"repl_id": "r1", "vm_id": "vm-2", "started_at": "2026-01-01T00:00:00Z"}],
                "custom_domains": [{"hostname": "WWW.Example.com.", "repl_id": "r1"}],
                "tombstones": [{"repl_id": "r4", "from_cluster": "use1-a", "to_cluster": "aps1-a",
                                "expires_at": "2030-01-01T00:00:00Z"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn builds_and_indexes_everything() {
        let t = RoutingTable::build(&demo(), "us-east1", 7).unwrap();
        assert_eq!(t.version(), 7);
        assert_eq!(t.counts().repls, 3);
        let r1 = t.repl_by_slug("app1").unwrap();
        assert_eq!(t.repl_by_id("r1"), Some(r1));
        assert_eq!(
            t.repl_by_domain("www.example.com"),
            Some(r1),
            "hostnames are normalised"
        );
        assert_eq!(t.vm(t.repl(r1).vm.unwrap()).id.as_ref(), "vm-2");
        assert_eq!(t.vm(t.vm_by_id("vm-2").unwrap()).containers, 1);
        let r4 = t.repl_by_slug("moved").unwrap();
        assert_eq!(t.tombstones(r4).len(), 1);
        assert_eq!(t.tombstones(r1), &[]);
        assert_eq!(t.region(t.local_region()).name.as_ref(), "us-east1");
        // The ring spans only active clusters of the region.
        assert_eq!(
            t.ring(t.local_region()).member_ids(),
            &[t.cluster_by_name("use1-a").unwrap()]
        );
        assert_eq!(t.repl_by_slug("nope"), None);
    }

    #[test]
    fn dump_round_trips() {
        let t = RoutingTable::build(&demo(), "us-east1", 1).unwrap();
        let mut expected = demo();
        expected.custom_domains[0].hostname = "www.example.com".into();
        assert_eq!(t.to_snapshot(), expected);
    }

    fn err_of(f: impl FnOnce(&mut Snapshot)) -> String {
        let mut s = demo();
        f(&mut s);
        RoutingTable::build(&s, "us-east1", 1).unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_rows_naming_them() {
        assert_eq!(
            err_of(|s| s.vms[1].cluster = "use1-z".into()),
            "vms[1] (\"vm-2\"): cluster \"use1-z\" does not exist"
        );
        assert_eq!(
            err_of(|s| s.repls[1].slug = "app1".into()),
            "repls[1] (\"r2\"): slug \"app1\" is already used by repl \"r1\""
        );
        assert_eq!(
            err_of(|s| s.repls[2].id = "r1".into()),
            "repls[2] (\"r1\"): duplicate repl id"
        );
        assert_eq!(
            err_of(|s| s.vms[0].addr = "localhost:7001".into()),
            "vms[0] (\"vm-1\"): addr \"localhost:7001\" is not an ip:port address"
        );
        assert_eq!(
            err_of(|s| s.regions[1].edge_addr = "1.2.3.4".into()),
            "regions[1] (\"ap-south1\"): edge_addr \"1.2.3.4\" is not an ip:port address"
        );
        assert!(err_of(|s| s.repls[0].slug = "App_1".into()).contains("not a DNS label"));
        assert!(err_of(|s| s.repls[0].cluster = Some("aps1-a".into())).contains("not in region"));
        assert!(err_of(|s| s.containers.push(ContainerRow {
            repl_id: "r1".into(),
            vm_id: "vm-1".into(),
            started_at: None
        }))
        .contains("at most one"));
        assert!(err_of(|s| s.containers[0].vm_id = "vm-9".into()).contains("vm \"vm-9\" does not exist"));
        assert!(err_of(|s| s.tombstones[0].expires_at = "soon".into()).contains("not RFC 3339"));
        assert!(err_of(|s| s.custom_domains[0].repl_id = "r9".into()).contains("does not exist"));
        assert!(err_of(|s| s.clusters[0].weight = 5000).contains("weight"));
        assert_eq!(
            err_of(|s| {
                s.regions.remove(1);
            }),
            "clusters[2] (\"aps1-a\"): region \"ap-south1\" does not exist"
        );
    }

    #[test]
    fn unknown_local_region_is_an_error() {
        let e = RoutingTable::build(&demo(), "eu-west9", 1).unwrap_err();
        assert_eq!(e, SnapshotError::UnknownLocalRegion("eu-west9".into()));
    }

    #[test]
    fn slug_and_hostname_rules() {
        assert!(is_valid_slug("a") && is_valid_slug("my-app-2"));
        assert!(!is_valid_slug("") && !is_valid_slug("-a") && !is_valid_slug("a.b") && !is_valid_slug("A"));
        assert!(!is_valid_slug(&"a".repeat(64)));
        assert!(is_valid_hostname("www.example.com") && !is_valid_hostname("localhost") && !is_valid_hostname("a..b"));
    }
}
