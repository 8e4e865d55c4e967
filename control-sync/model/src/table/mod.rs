//! The routing table: an immutable, validated copy of the placement data
//! that every request reads, and that a delta can change one row at a time.
//!
//! Flow: a full load goes through [`RoutingTable::build`] (rows of a
//! [`Snapshot`]); a sync delta goes through [`RoutingTable::apply`] (a list of
//! [`Change`]s) and returns a *new* table, leaving the published one
//! untouched. Both run the same per-row upsert/delete code in `rows/`, so
//! validation is written once: duplicate ids or slugs, dangling references,
//! bad addresses, bad times. In [`Strictness::Strict`] mode (the file source)
//! the first bad row rejects the whole load; in [`Strictness::Lenient`] mode
//! (the database) bad rows are skipped and counted by reason.
//!
//! Layout and cost:
//! - [`Topology`] (regions, clusters, VMs, rings, names) is small and shared
//!   by `Arc`; a delta that touches it copies it. Topology indices are stable
//!   for the table's lifetime (a deleted VM or cluster keeps its slot until
//!   the next full load), so repl rows never need remapping.
//! - Balancer candidates and container counts per VM sit beside it, also
//!   `Arc`-shared; a container change rebuilds one cluster's candidates.
//! - Repls (keyed by slug: the hot-path lookup), the repl-id index, custom
//!   domains and tombstones are [`ShardedMap`]s: a one-row change copies one
//!   shard of ~1,400 rows and the shard pointer array, never the table.
//! - One ring per region over its active clusters with weight > 0, rebuilt
//!   only when clusters change.
//! - The [`Directory`] of every other region's apps (slug or custom domain
//!   -> home region, ~8 bytes each): what a miss in the local repls falls
//!   back to. A foreign repl is held as a full row only when routing needs
//!   more than its region (a tombstone from this region's cluster, or it
//!   left this region since the last full load).
//!
//! Start reading at [`RoutingTable`], then `change.rs` (what sources hand in),
//! `rows/` (how it is validated and applied) and `entities.rs` (what is kept).

mod change;
mod entities;
mod rows;
mod tls_index;
pub use rows::TABLES;
pub use tls_index::{is_valid_cert_name, Challenge, ChallengeKind, TlsIndex};
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::directory::{Directory, DirectoryBuilder, DirectoryDump, Name, OwnedName, RecentMoves};
use crate::ring::key_hash;
use crate::ring::Ring;
use crate::sharded::{HashIndex, ShardedMap};
use crate::snapshot::*;

pub use change::{Change, ContainerRef, ReplRef, RowError, SkipReason, Skipped, Strictness, MAX_SKIPPED_EXAMPLES};

pub use entities::*;
use entities::{Domain, Load, Tombstones};

/// A placement load that cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Row(#[from] RowError),
    #[error("this edge's region {0:?} is not in the snapshot's regions")]
    UnknownLocalRegion(String),
    #[error("cannot read snapshot {path}: {message}")]
    Io { path: String, message: String },
    /// An error located in the snapshot file it came from.
    #[error("{file}:{line}: {key}: {message}")]
    At {
        file: String,
        line: usize,
        /// `-` for the file as a whole, `repls[3]` for a row.
        key: String,
        message: String,
    },
}

/// A full load in progress; see [`RoutingTable::builder`].
pub struct TableBuilder {
    inner: rows::Builder,
    local_region: String,
}

impl TableBuilder {
    /// Adds one row. Strict mode: the first bad row is the error.
    pub fn push(&mut self, change: Change) -> Result<(), SnapshotError> {
        self.inner.push(change)
    }

    /// Adds a repl row borrowed from a row buffer (no per-row allocation
    /// beyond what the table keeps). Regions and clusters must come first.
    pub fn push_repl(&mut self, r: ReplRef<'_>) -> Result<(), SnapshotError> {
        self.inner.push_repl(r)
    }

    /// Adds a container row borrowed from a row buffer.
    pub fn push_container(&mut self, c: ContainerRef<'_>) -> Result<(), SnapshotError> {
        self.inner.push_container(c)
    }

    /// Adds another region's app to the world directory: `name` is homed in
    /// `region`; `key` names the row in errors (the repl id, or the host).
    /// Regions must come first.
    pub fn push_directory(&mut self, name: Name<'_>, region: &str, key: &str) -> Result<(), SnapshotError> {
        let r = self.inner.push_directory(name, region, key);
        self.inner.settle(r)
    }

    /// Sizes the directory for about `n` names (a full load that knows).
    pub fn expect_directory(&mut self, n: usize) {
        self.inner.expect_directory(n);
    }

    /// Starts the directory from a file's dump (a last-known-good file);
    /// names pushed afterwards are added to it. Regions must come first.
    pub fn restore_directory(&mut self, dump: &DirectoryDump) -> Result<(), SnapshotError> {
        self.inner.restore_directory(dump)
    }

    /// Finishes the load as `version`; fails if this edge's region is missing.
    pub fn finish(self, version: u64) -> Result<(RoutingTable, Skipped), SnapshotError> {
        if !self.inner.has_local_region() {
            return Err(SnapshotError::UnknownLocalRegion(self.local_region));
        }
        let (mut t, skipped) = self.inner.finish(version);
        t.shrink_to_fit();
        Ok((t, skipped))
    }
}

/// Counts for `/debug/snapshot`, logs and the shrink guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableCounts {
    pub regions: usize,
    pub clusters: usize,
    pub vms: usize,
    pub repls: usize,
    pub containers: usize,
    pub custom_domains: usize,
    pub tombstones: usize,
    /// Names (slugs and custom domains) of other regions' apps in the
    /// world directory.
    pub directory: usize,
    /// Hostnames with a certificate in the control plane.
    pub certificates: usize,
    /// Live and expired ACME challenges held.
    pub acme_challenges: usize,
}

/// The immutable routing table. See the module docs.
#[derive(Clone)]
pub struct RoutingTable {
    version: u64,
    local_region_name: Arc<str>,
    local_region: Idx,
    topo: Arc<Topology>,
    load: Arc<Load>,
    repls: ShardedMap<Repl>,
    /// Repl id (its `id_hash`) -> map hash of its slug in `repls`.
    ids: HashIndex,
    domains: ShardedMap<Domain>,
    tombstones: ShardedMap<Tombstones>,
    /// Other regions' apps by name -> home region.
    directory: Directory,
    /// Names of apps that moved between regions, while their tombstones live.
    moves: RecentMoves,
    /// Certificate names and ACME challenges ([`TlsIndex`]).
    tls: Arc<TlsIndex>,
    containers: usize,
    tombstone_count: usize,
}

impl std::fmt::Debug for RoutingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingTable")
            .field("version", &self.version)
            .field("counts", &self.counts())
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
    s.len() <= 253 && s.contains('.') && s.split('.').all(is_valid_slug)
}

impl RoutingTable {
    /// An empty, not-ready table (version 0) for edges that have not loaded yet.
    pub fn empty() -> RoutingTable {
        Self::with_capacity("", 0)
    }

    fn with_capacity(local_region: &str, repls: usize) -> RoutingTable {
        RoutingTable {
            version: 0,
            local_region_name: local_region.into(),
            local_region: u32::MAX,
            topo: Arc::default(),
            load: Arc::default(),
            repls: ShardedMap::with_expected(repls),
            ids: HashIndex::with_expected(repls),
            domains: ShardedMap::with_expected(repls / 16),
            tombstones: ShardedMap::with_expected(repls / 64),
            directory: Directory::default(),
            moves: RecentMoves::default(),
            tls: Arc::default(),
            containers: 0,
            tombstone_count: 0,
        }
    }

    /// Validates `snap` strictly (first bad row rejects the whole load) and
    /// builds the table an edge of `local_region` routes with. `version`
    /// must be > 0 (0 means "nothing loaded").
    pub fn build(snap: &Snapshot, local_region: &str, version: u64) -> Result<RoutingTable, SnapshotError> {
        let (t, _) = Self::build_with(snap, local_region, version, Strictness::Strict)?;
        Ok(t)
    }

    /// Like [`RoutingTable::build`]; in lenient mode bad rows are skipped
    /// and reported instead of failing the load.
    pub fn build_with(
        snap: &Snapshot,
        local_region: &str,
        version: u64,
        strictness: Strictness,
    ) -> Result<(RoutingTable, Skipped), SnapshotError> {
        if strictness == Strictness::Strict {
            unique_repls(snap)?;
        }
        let mut b = RoutingTable::builder(local_region, snap.repls.len(), strictness);
        for r in &snap.regions {
            b.push(Change::UpsertRegion(r.clone()))?;
        }
        if let Some(d) = &snap.directory {
            b.restore_directory(d)?;
        }
        let rows = snap.clusters.iter().map(|c| Change::UpsertCluster(c.clone()));
        let rows = rows.chain(snap.vms.iter().map(|v| Change::UpsertVm(v.clone())));
        for c in rows {
            b.push(c)?;
        }
        // A snapshot may hold the whole world: other regions' repls become
        // directory names (with their custom domains), unless a tombstone
        // from one of this region's clusters needs the whole row.
        let keep_whole = tombstoned_from_region(snap, local_region, strictness);
        let mut domains_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for d in &snap.custom_domains {
            domains_of.entry(d.repl_id.as_str()).or_default().push(&d.hostname);
        }
        // Ids of repls held as directory names: their containers, domains
        // and other regions' tombstones are not this edge's rows.
        let mut in_directory: Vec<u64> = Vec::new();
        // (Every other region's repl is a directory name, as in the
        // PostgreSQL load; a tombstoned one is also held whole.)
        for r in &snap.repls {
            if r.region != local_region {
                b.push_directory(Name::Slug(&r.slug), &r.region, &r.id)?;
                for host in domains_of.get(r.id.as_str()).into_iter().flatten() {
                    let host = host.trim_end_matches('.').to_ascii_lowercase();
                    b.push_directory(Name::Domain(&host), &r.region, &r.id)?;
                }
                if !keep_whole.contains(r.id.as_str()) {
                    in_directory.push(key_hash(&r.id));
                    continue;
                }
            }
            b.push_repl(ReplRef::of(r))?;
        }
        in_directory.sort_unstable();
        // A row of a repl that is neither held nor in the directory is
        // pushed anyway: it is dangling, and the builder says so.
        let ours = |b: &TableBuilder, id: &str| {
            b.inner.table.repl_by_id(id).is_some() || in_directory.binary_search(&key_hash(id)).is_err()
        };
        for c in &snap.containers {
            if ours(&b, &c.repl_id) {
                b.push(Change::UpsertContainer(c.clone()))?;
            }
        }
        for d in &snap.custom_domains {
            if ours(&b, &d.repl_id) {
                b.push(Change::UpsertDomain(d.clone()))?;
            }
        }
        for t in &snap.tombstones {
            if ours(&b, &t.repl_id) {
                b.push(Change::UpsertTombstone(t.clone()))?;
            }
        }
        for (name, until_ms) in moved_names(snap, &domains_of) {
            b.push(Change::RecentMove { name, until_ms })?;
        }
        b.finish(version)
    }

    /// A builder for a full load streamed row by row (regions first, then
    /// clusters, VMs, repls, containers, custom domains, tombstones).
    pub fn builder(local_region: &str, expected_repls: usize, strictness: Strictness) -> TableBuilder {
        TableBuilder {
            inner: rows::Builder::new(RoutingTable::with_capacity(local_region, expected_repls), strictness),
            local_region: local_region.to_string(),
        }
    }

    /// A new table with `changes` applied in order, as version `version`.
    /// The receiver (the published table) is not modified. Bad rows are
    /// skipped and returned in lenient mode; in strict mode the first one
    /// fails the whole delta.
    pub fn apply(
        &self,
        changes: impl IntoIterator<Item = Change>,
        version: u64,
        strictness: Strictness,
    ) -> Result<(RoutingTable, Skipped), SnapshotError> {
        let mut b = rows::Builder::new(self.clone(), strictness);
        b.apply_all(changes)?;
        Ok(b.finish(version))
    }

    /// [`RoutingTable::apply`] for a database delta: lenient, and rows that
    /// are not this edge's are ignored (repls homed in another region that
    /// it does not already hold, their containers and domains, tombstones
    /// from other regions' clusters).
    pub fn apply_for_edge(
        &self,
        changes: impl IntoIterator<Item = Change>,
        version: u64,
    ) -> Result<(RoutingTable, Skipped), SnapshotError> {
        let mut b = rows::Builder::new(self.clone(), Strictness::Lenient).only_local();
        b.apply_all(changes)?;
        Ok(b.finish(version))
    }

    /// Releases the spare capacity a full load reserved.
    fn shrink_to_fit(&mut self) {
        self.repls.shrink_to_fit();
        self.ids.shrink_to_fit();
        self.domains.shrink_to_fit();
        self.tombstones.shrink_to_fit();
    }

    /// Version of the source data this table was built from (0 = nothing loaded).
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn is_loaded(&self) -> bool {
        self.version > 0
    }
    pub fn counts(&self) -> TableCounts {
        TableCounts {
            regions: self.topo.by_region.len(),
            clusters: self.topo.by_cluster.len(),
            vms: self.topo.by_vm.len(),
            repls: self.repls.len(),
            containers: self.containers,
            custom_domains: self.domains.len(),
            tombstones: self.tombstone_count,
            directory: self.directory.len(),
            certificates: self.tls.certificates(),
            acme_challenges: self.tls.challenges(),
        }
    }

    /// Certificate names and ACME challenges.
    pub fn tls(&self) -> &TlsIndex {
        &self.tls
    }

    /// The revision of `host`'s certificate in the control plane (`host`
    /// lower case, no trailing dot).
    pub fn cert_revision(&self, host: &str) -> Option<u64> {
        self.tls.cert_revision(host)
    }

    /// The live HTTP-01 challenge for `token` at `now_ms`.
    pub fn acme_challenge(&self, token: &str, now_ms: i64) -> Option<&Challenge> {
        self.tls.challenge(token, ChallengeKind::Http01, now_ms)
    }
    pub fn local_region(&self) -> Idx {
        self.local_region
    }
    pub fn local_region_name(&self) -> &str {
        &self.local_region_name
    }

    #[inline]
    pub fn repl_by_slug(&self, slug: &str) -> Option<&Repl> {
        self.repls.get(slug)
    }
    #[inline]
    pub fn repl_by_id(&self, id: &str) -> Option<&Repl> {
        self.ids
            .candidates(key_hash(id))
            .find_map(|slug_hash| self.repls.get_hashed(slug_hash, |r| r.id() == id))
    }
    /// The repl whose id hashes to `id_hash` (what decisions carry), if
    /// one does; for the rare paths (retries, replays) that need its row.
    pub fn repl_by_id_hash(&self, id_hash: u64) -> Option<&Repl> {
        self.ids
            .candidates(id_hash)
            .find_map(|slug_hash| self.repls.get_hashed(slug_hash, |r| r.id_hash == id_hash))
    }
    /// `host` must already be canonical (lower case, no port, no trailing dot).
    #[inline]
    pub fn repl_by_domain(&self, host: &str) -> Option<&Repl> {
        self.repl_by_id(&self.domains.get(host)?.repl_id)
    }
    /// The home region of another region's app, from the world directory
    /// (a present region other than this edge's; see [`Directory`] for why
    /// an answer is safe even when two names share their hash).
    #[inline]
    pub fn home_region(&self, name: Name<'_>) -> Option<Idx> {
        let r = self.directory.get(name)? as Idx;
        let region = self.topo.regions.get(r as usize)?;
        (region.present && r != self.local_region).then_some(r)
    }
    /// The world directory (counts and bytes for `/debug/snapshot`).
    /// Whether the app called `name` moved between regions and its
    /// tombstone (in any region) still lives at `now_ms`.
    pub fn recently_moved(&self, name: Name<'_>, now_ms: i64) -> bool {
        self.moves.contains(name, now_ms)
    }

    /// How many names [`RoutingTable::recently_moved`] knows.
    pub fn recent_moves(&self) -> usize {
        self.moves.len()
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }
    /// Tombstones of a repl (usually none).
    #[inline]
    pub fn tombstones(&self, repl_id: &str) -> &[Tombstone] {
        if self.tombstone_count == 0 {
            return &[];
        }
        self.tombstones.get(repl_id).map(|t| &t.list[..]).unwrap_or(&[])
    }
    #[inline]
    pub fn region(&self, i: Idx) -> &Region {
        &self.topo.regions[i as usize]
    }
    #[inline]
    pub fn cluster(&self, i: Idx) -> &Cluster {
        &self.topo.clusters[i as usize]
    }
    #[inline]
    pub fn vm(&self, i: Idx) -> &Vm {
        &self.topo.vms[i as usize]
    }
    /// A VM by index, None when out of range (an index from an older table).
    #[inline]
    pub fn get_vm(&self, i: Idx) -> Option<&Vm> {
        self.topo.vms.get(i as usize)
    }
    /// Clusters slots in the table (present or not): cluster indexes are below it.
    pub fn cluster_slots(&self) -> usize {
        self.topo.clusters.len()
    }
    /// The active VMs of a cluster, packed for the balancer.
    #[inline]
    pub fn candidates(&self, cluster: Idx) -> &[Candidate] {
        &self.load.candidates[cluster as usize]
    }
    /// Containers the table places on a VM.
    pub fn containers_on(&self, vm: Idx) -> u32 {
        self.load.containers[vm as usize]
    }
    /// The ring of a region's active clusters.
    #[inline]
    pub fn ring(&self, region: Idx) -> &Ring {
        &self.topo.rings[region as usize]
    }
    /// Present regions, clusters and VMs with their indices.
    pub fn regions(&self) -> impl Iterator<Item = (Idx, &Region)> {
        self.topo
            .regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.present)
            .map(|(i, r)| (i as Idx, r))
    }
    pub fn clusters(&self) -> impl Iterator<Item = (Idx, &Cluster)> {
        self.topo
            .clusters
            .iter()
            .enumerate()
            .filter(|(_, c)| c.present)
            .map(|(i, c)| (i as Idx, c))
    }
    pub fn vms(&self) -> impl Iterator<Item = (Idx, &Vm)> {
        self.topo
            .vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.present)
            .map(|(i, v)| (i as Idx, v))
    }
    /// Every host name the edge may dial: regions' `edge_addr` and VMs'
    /// `addr` given as `host:port` (present rows only), sorted, deduplicated.
    pub fn dial_names(&self) -> Vec<Arc<str>> {
        let regions = self
            .topo
            .regions
            .iter()
            .filter(|r| r.present)
            .filter_map(|r| r.edge.host().cloned());
        let vms = self
            .topo
            .vms
            .iter()
            .filter(|v| v.present)
            .filter_map(|v| v.endpoint.host().cloned());
        let mut names: Vec<Arc<str>> = regions.chain(vms).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    pub fn region_by_name(&self, name: &str) -> Option<Idx> {
        self.topo.by_region.get(name).copied()
    }
    pub fn cluster_by_name(&self, name: &str) -> Option<Idx> {
        self.topo.by_cluster.get(name).copied()
    }
    pub fn vm_by_id(&self, id: &str) -> Option<Idx> {
        self.topo.by_vm.get(id).copied()
    }
    /// All repls (unordered).
    pub fn repls(&self) -> impl Iterator<Item = &Repl> {
        self.repls.iter()
    }

    /// Approximate bytes held by the repl structures (rows, indexes and
    /// their strings), for the memory-per-repl figure.
    pub fn approx_repl_bytes(&self) -> usize {
        let strings: usize = self.repls.iter().map(|r| r.strs.len()).sum();
        self.repls.approx_bytes() + self.ids.approx_bytes() + strings
    }

    /// Names of the regions by index (present or not), for directory dumps.
    fn region_names(&self) -> Vec<String> {
        self.topo.regions.iter().map(|r| r.name.to_string()).collect()
    }

    fn cname(&self, c: Idx) -> String {
        self.topo.clusters[c as usize].name.to_string()
    }
    fn rname(&self, r: Idx) -> String {
        self.topo.regions[r as usize].name.to_string()
    }

    fn region_rows(&self) -> impl Iterator<Item = RegionRow> + '_ {
        self.regions().map(|(_, r)| RegionRow {
            name: r.name.to_string(),
            edge_addr: r.edge.to_string(),
        })
    }
    fn cluster_rows(&self) -> impl Iterator<Item = ClusterRow> + '_ {
        self.clusters().map(|(_, c)| ClusterRow {
            name: c.name.to_string(),
            region: self.rname(c.region),
            state: c.state,
            weight: c.weight,
        })
    }
    fn vm_rows(&self) -> impl Iterator<Item = VmRow> + '_ {
        self.vms().map(|(_, v)| VmRow {
            id: v.id.to_string(),
            cluster: self.cname(v.cluster),
            addr: v.endpoint.to_string(),
            metrics_addr: v.metrics_addr.map(|a| a.to_string()),
            state: v.state,
            capacity: v.capacity as i64,
        })
    }
    fn repl_row(&self, r: &Repl) -> ReplRow {
        ReplRow {
            id: r.id().to_string(),
            slug: r.slug().to_string(),
            owner: r.owner().map(str::to_string),
            region: self.rname(r.region),
            cluster: r.cluster.get().map(|c| self.cname(c)),
            transfer_to: r.transfer_to.get().map(|c| self.cname(c)),
            size: r.size as i64,
        }
    }
    fn container_row(&self, r: &Repl) -> Option<ContainerRow> {
        r.vm.get().map(|v| ContainerRow {
            repl_id: r.id().to_string(),
            vm_id: self.topo.vms[v as usize].id.to_string(),
            started_at: None,
        })
    }
    fn domain_row(d: &Domain) -> CustomDomainRow {
        CustomDomainRow {
            hostname: d.hostname.to_string(),
            repl_id: d.repl_id.to_string(),
        }
    }
    fn tombstone_rows<'a>(&'a self, t: &'a Tombstones) -> impl Iterator<Item = TombstoneRow> + 'a {
        t.list.iter().map(move |ts| TombstoneRow {
            repl_id: t.repl_id.to_string(),
            from_cluster: self.cname(ts.from_cluster),
            to_cluster: self.cname(ts.to_cluster),
            expires_at: format_rfc3339_ms(ts.expires_at_ms),
        })
    }

    /// The rows this table holds, sorted by key (for `snapshot dump`).
    pub fn to_snapshot(&self) -> Snapshot {
        let mut repls: Vec<&Repl> = self.repls.iter().collect();
        repls.sort_by(|a, b| a.id().cmp(b.id()));
        let mut domains: Vec<&Domain> = self.domains.iter().collect();
        domains.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        let mut tombs: Vec<&Tombstones> = self.tombstones.iter().collect();
        tombs.sort_by(|a, b| a.repl_id.cmp(&b.repl_id));
        Snapshot {
            version: 0,
            regions: self.region_rows().collect(),
            clusters: self.cluster_rows().collect(),
            vms: self.vm_rows().collect(),
            repls: repls.iter().map(|r| self.repl_row(r)).collect(),
            containers: repls.iter().filter_map(|r| self.container_row(r)).collect(),
            custom_domains: domains.iter().map(|d| Self::domain_row(d)).collect(),
            tombstones: tombs.iter().flat_map(|t| self.tombstone_rows(t)).collect(),
            directory: (!self.directory.is_empty()).then(|| self.directory.dump(self.region_names()).to_owned_dump()),
        }
    }

    /// Writes the table as snapshot JSON (with `version`) row by row, in
    /// table order, without building a [`Snapshot`] in memory first (for
    /// `last_known_good` at millions of repls).
    pub fn write_json<W: std::io::Write>(&self, w: W) -> serde_json::Result<()> {
        use serde::ser::{SerializeStruct, Serializer};
        let mut ser = serde_json::Serializer::new(w);
        let mut st = ser.serialize_struct("Snapshot", 9)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("regions", &Lazy(|| self.region_rows()))?;
        st.serialize_field("clusters", &Lazy(|| self.cluster_rows()))?;
        st.serialize_field("vms", &Lazy(|| self.vm_rows()))?;
        st.serialize_field("repls", &Lazy(|| self.repls.iter().map(|r| self.repl_row(r))))?;
        st.serialize_field(
            "containers",
            &Lazy(|| self.repls.iter().filter_map(|r| self.container_row(r))),
        )?;
        st.serialize_field("custom_domains", &Lazy(|| self.domains.iter().map(Self::domain_row)))?;
        st.serialize_field(
            "tombstones",
            &Lazy(|| self.tombstones.iter().flat_map(|t| self.tombstone_rows(t))),
        )?;
        if !self.directory.is_empty() {
            st.serialize_field("directory", &self.directory.dump(self.region_names()))?;
        }
        st.end()
    }
}

/// Ids of the repls a snapshot's tombstones from `local_region`'s clusters
/// name: those are held whole even when homed elsewhere, since this region
/// forwards them by tombstone. Lenient: only tombstones that will apply, so
/// a written table read back keeps the same rows whole. Strict: every one,
/// The names (slug and custom domains) of every repl of `snap` with a
/// tombstone, whatever its region, with the tombstone's expiry: the moves
/// [`RoutingTable::recently_moved`] answers. A time that does not parse is
/// left to the tombstone row's own validation (or ignored for another
/// region's tombstone, which this edge does not load).
fn moved_names(snap: &Snapshot, domains_of: &HashMap<&str, Vec<&str>>) -> Vec<(OwnedName, i64)> {
    let slugs: HashMap<&str, &str> = snap.repls.iter().map(|r| (r.id.as_str(), r.slug.as_str())).collect();
    let mut out = Vec::new();
    for t in &snap.tombstones {
        let (Some(until), Some(slug)) = (parse_rfc3339_ms(&t.expires_at), slugs.get(t.repl_id.as_str())) else {
            continue;
        };
        out.push((OwnedName::Slug(slug.to_string()), until));
        for host in domains_of.get(t.repl_id.as_str()).into_iter().flatten() {
            out.push((
                OwnedName::Domain(host.trim_end_matches('.').to_ascii_lowercase()),
                until,
            ));
        }
    }
    out
}

/// so a bad tombstone is still the load's error.
fn tombstoned_from_region<'a>(snap: &'a Snapshot, local_region: &str, strictness: Strictness) -> HashSet<&'a str> {
    let local_clusters: HashSet<&str> = snap
        .clusters
        .iter()
        .filter(|c| c.region == local_region)
        .map(|c| c.name.as_str())
        .collect();
    let strict = strictness == Strictness::Strict;
    let clusters: HashSet<&str> = snap.clusters.iter().map(|c| c.name.as_str()).collect();
    snap.tombstones
        .iter()
        .filter(|t| {
            local_clusters.contains(t.from_cluster.as_str())
                && (strict || clusters.contains(t.to_cluster.as_str()) && parse_rfc3339_ms(&t.expires_at).is_some())
        })
        .map(|t| t.repl_id.as_str())
        .collect()
}

/// Strict loads: repl ids and slugs are unique across the whole snapshot
/// (the builder sees only the repls it keeps whole; the others become
/// directory names, which hold no ids).
fn unique_repls(snap: &Snapshot) -> Result<(), RowError> {
    let mut ids = std::collections::HashSet::with_capacity(snap.repls.len());
    let mut slugs: HashMap<&str, &str> = HashMap::with_capacity(snap.repls.len());
    for (index, r) in snap.repls.iter().enumerate() {
        let err = |message: String| RowError {
            table: "repls",
            index,
            key: r.id.clone(),
            reason: SkipReason::Duplicate,
            message,
        };
        if !ids.insert(r.id.as_str()) {
            return Err(err("duplicate repl id".into()));
        }
        if let Some(other) = slugs.insert(&r.slug, &r.id) {
            return Err(err(format!("slug {:?} is already used by repl {other:?}", r.slug)));
        }
    }
    Ok(())
}

/// Serialises the rows of an iterator as a JSON array, one at a time.
struct Lazy<F>(F);

impl<F, I> serde::Serialize for Lazy<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: serde::Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}
