//! Row-level upserts and deletes: the one place placement rows are
//! validated and applied, for full loads and sync deltas alike.
//!
//! A [`Builder`] owns a table under construction (a clone of the published
//! one for a delta: shared structure, copied on first write). Each
//! [`Change`] is checked like user input; a bad one becomes a [`RowError`]
//! naming the row and a short `reason` for metrics. Derived data (rings,
//! balancer candidates) is marked dirty and rebuilt once in
//! [`Builder::finish`], only for the regions and clusters that changed.
//!
//! In a fresh build (`fresh = true`) a second row with the same key is a
//! duplicate error; in a delta it replaces the row (an UPDATE).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::directory::{OwnedName, MAX_REGIONS};
use crate::ring::{key_hash, Member};

mod topology;

/// The tables a skipped row can belong to: the `table` label of
/// `edgeplane_sync_rows_skipped_total` (exported at 0 for each
/// [`SkipReason`]).
pub const TABLES: [&str; 10] = [
    "regions",
    "clusters",
    "vms",
    "repls",
    "containers",
    "custom_domains",
    "tombstones",
    "directory",
    "certificates",
    "acme_challenges",
];

struct Row<'a> {
    table: &'static str,
    index: usize,
    key: &'a str,
}

impl Row<'_> {
    fn err(&self, reason: SkipReason, message: impl Into<String>) -> RowError {
        RowError {
            table: self.table,
            index: self.index,
            key: self.key.to_string(),
            reason,
            message: message.into(),
        }
    }

    /// Ids and names: 1-128 printable ASCII characters.
    fn check_id(&self) -> Result<(), RowError> {
        let s = self.key;
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(self.err(SkipReason::BadValue, "id must be 1-128 printable characters"));
        }
        Ok(())
    }

    fn lookup(&self, map: &HashMap<Box<str>, Idx>, field: &str, name: &str) -> Result<Idx, RowError> {
        map.get(name).copied().ok_or_else(|| {
            self.err(
                SkipReason::DanglingReference,
                format!("{field} {name:?} does not exist"),
            )
        })
    }

    fn addr(&self, field: &str, v: &str) -> Result<SocketAddr, RowError> {
        match v.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Ok(a),
            _ => Err(self.err(
                SkipReason::BadAddress,
                format!("{field} {v:?} is not an ip:port address"),
            )),
        }
    }

    /// A dialled address: `ip:port`, or `host:port` (a valid host name,
    /// lower-cased, one trailing dot dropped).
    fn endpoint(&self, field: &str, v: &str) -> Result<Endpoint, RowError> {
        if let Ok(a) = v.parse::<SocketAddr>() {
            if a.port() != 0 && !a.ip().is_unspecified() {
                return Ok(Endpoint::Addr(a));
            }
        }
        if let Some((host, port)) = v.rsplit_once(':') {
            let host = host.to_ascii_lowercase();
            let host = host.strip_suffix('.').unwrap_or(&host);
            if let (true, Ok(port @ 1..)) = (is_valid_hostname(host), port.parse::<u16>()) {
                if host.parse::<std::net::IpAddr>().is_err() {
                    return Ok(Endpoint::Name {
                        host: Arc::from(host),
                        port,
                    });
                }
            }
        }
        Err(self.err(
            SkipReason::BadAddress,
            format!("{field} {v:?} is not an ip:port or host:port address"),
        ))
    }

    fn time(&self, field: &str, v: &str) -> Result<i64, RowError> {
        parse_rfc3339_ms(v).ok_or_else(|| self.err(SkipReason::BadTime, format!("{field} {v:?} is not RFC 3339")))
    }
}

pub(super) struct Builder {
    pub(super) table: RoutingTable,
    strictness: Strictness,
    fresh: bool,
    /// Ignore rows that are not this edge's (database deltas).
    only_local: bool,
    skipped: Skipped,
    counters: [usize; 10],
    dirty_regions: BTreeSet<Idx>,
    dirty_clusters: BTreeSet<Idx>,
    /// A full load's directory names, sorted once in [`Builder::finish`]
    /// (a delta changes the table's directory in place instead).
    directory: Option<DirectoryBuilder>,
    /// Largest VM capacity per region (index = region), for the repl size
    /// check; computed on first use, dropped when a VM or cluster changes.
    max_capacity: Option<Vec<u32>>,
    /// Recent moves this load or delta adds, merged once in [`Builder::finish`].
    moves: Vec<(OwnedName, i64)>,
}

impl Builder {
    pub(super) fn new(table: RoutingTable, strictness: Strictness) -> Builder {
        let fresh = table.version == 0;
        Builder {
            table,
            strictness,
            fresh,
            only_local: false,
            skipped: Skipped::default(),
            counters: [0; 10],
            dirty_regions: BTreeSet::new(),
            dirty_clusters: BTreeSet::new(),
            directory: None,
            max_capacity: None,
            moves: Vec::new(),
        }
    }

    pub(super) fn apply_all(&mut self, changes: impl IntoIterator<Item = Change>) -> Result<(), SnapshotError> {
        for c in changes {
            self.push(c)?;
        }
        Ok(())
    }

    /// Applies one change; in lenient mode a bad row is recorded, not returned.
    pub(super) fn push(&mut self, c: Change) -> Result<(), SnapshotError> {
        if self.not_ours(&c) {
            let r = self.apply_foreign(c);
            return self.settle(r);
        }
        let r = self.apply_one(c);
        self.settle(r)
    }

    /// With `only_local`, a row about something this edge does not hold:
    /// another region's repl becomes (or stays) a directory name; a custom
    /// domain now pointing at such a repl leaves the local domains (its
    /// directory entry comes with the sync's [`Change::UpsertDirectory`]);
    /// the rest is not this edge's.
    fn apply_foreign(&mut self, c: Change) -> Result<(), RowError> {
        match c {
            Change::UpsertRepl(r) => self.push_directory(Name::Slug(&r.slug), &r.region, &r.id),
            Change::UpsertDomain(d) => {
                let host = d.hostname.trim_end_matches('.').to_ascii_lowercase();
                self.table.domains.remove(&host);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Adds or changes a directory name (see [`TableBuilder::push_directory`]).
    pub(super) fn push_directory(&mut self, name: Name<'_>, region: &str, key: &str) -> Result<(), RowError> {
        let (table, valid) = match name {
            Name::Slug(s) => (3, is_valid_slug(s)),
            Name::Domain(h) => (5, is_valid_hostname(h)),
        };
        let row = self.row(table, key);
        if !valid {
            return Err(row.err(SkipReason::BadValue, format!("{name:?} is not a valid name")));
        }
        let r = row.lookup(&self.table.topo.by_region, "region", region)? as usize;
        if r >= MAX_REGIONS {
            return Err(row.err(
                SkipReason::TooManyRegions,
                format!("region {region:?} is past the directory's {MAX_REGIONS} regions"),
            ));
        }
        if r == self.table.local_region as usize {
            // Homed here after all (a stale name): the local rows decide.
            self.table.directory.remove(name);
            return Ok(());
        }
        match &mut self.directory {
            Some(b) => {
                b.push(name, r);
            }
            None if self.fresh => {
                let expected = self.table.repls.len().max(1024);
                let mut b = DirectoryBuilder::new(expected);
                b.push(name, r);
                self.directory = Some(b);
            }
            None => {
                self.table.directory.set(name, r);
            }
        }
        Ok(())
    }

    pub(super) fn expect_directory(&mut self, n: usize) {
        if self.fresh && self.directory.is_none() {
            self.directory = Some(DirectoryBuilder::new(n));
        }
    }

    /// Seeds a full load's directory from a file's dump.
    pub(super) fn restore_directory(&mut self, dump: &crate::directory::DirectoryDump) -> Result<(), SnapshotError> {
        let by_region = &self.table.topo.by_region;
        let restored = Directory::from_dump(dump, |n| by_region.get(n).map(|&i| i as usize));
        match restored {
            Ok((dir, dropped)) => {
                if dropped > 0 {
                    let e = RowError {
                        table: "directory",
                        index: 0,
                        key: "-".into(),
                        reason: SkipReason::DanglingReference,
                        message: format!("{dropped} names of regions that no longer exist were dropped"),
                    };
                    self.skipped.push_n(e, dropped as u64);
                }
                self.directory = Some(DirectoryBuilder::seeded(dir));
                Ok(())
            }
            Err(message) => {
                let e = RowError {
                    table: "directory",
                    index: 0,
                    key: "-".into(),
                    reason: SkipReason::BadValue,
                    message,
                };
                self.settle(Err(e))
            }
        }
    }

    /// Strict: a bad row is the error. Lenient: it is recorded.
    pub(super) fn settle(&mut self, r: Result<(), RowError>) -> Result<(), SnapshotError> {
        if let Err(e) = r {
            match self.strictness {
                Strictness::Strict => return Err(e.into()),
                Strictness::Lenient => self.skipped.push(e),
            }
        }
        Ok(())
    }

    /// A repl row of a full load, borrowed (no per-row allocation).
    pub(super) fn push_repl(&mut self, r: ReplRef<'_>) -> Result<(), SnapshotError> {
        let r = self.upsert_repl(r);
        self.settle(r)
    }

    /// A container row of a full load, borrowed.
    pub(super) fn push_container(&mut self, c: ContainerRef<'_>) -> Result<(), SnapshotError> {
        let r = self.upsert_container(c);
        self.settle(r)
    }

    pub(super) fn only_local(mut self) -> Builder {
        self.only_local = true;
        self
    }

    /// With `only_local`: is this change about something this edge does not
    /// hold? (A repl homed elsewhere that it does not know, or rows of such a
    /// repl, or a tombstone from another region's cluster.)
    fn not_ours(&self, change: &Change) -> bool {
        if !self.only_local {
            return false;
        }
        let t = &self.table;
        let known = |id: &str| t.repl_by_id(id).is_some();
        match change {
            Change::UpsertRepl(r) => *r.region != *t.local_region_name && !known(&r.id),
            Change::UpsertContainer(c) => !known(&c.repl_id),
            Change::UpsertDomain(d) => !known(&d.repl_id),
            Change::UpsertTombstone(ts) => match t.topo.by_cluster.get(ts.from_cluster.as_str()) {
                Some(&c) => t.topo.clusters[c as usize].region != t.local_region || !known(&ts.repl_id),
                None => false,
            },
            _ => false,
        }
    }

    pub(super) fn has_local_region(&self) -> bool {
        self.table.topo.by_region.contains_key(&*self.table.local_region_name)
    }

    fn row<'k>(&mut self, table: usize, key: &'k str) -> Row<'k> {
        let index = self.counters[table];
        self.counters[table] += 1;
        Row {
            table: TABLES[table],
            index,
            key,
        }
    }

    fn topo(&mut self) -> &mut Topology {
        Arc::make_mut(&mut self.table.topo)
    }

    fn apply_one(&mut self, change: Change) -> Result<(), RowError> {
        match change {
            Change::UpsertRegion(r) => self.upsert_region(r),
            Change::DeleteRegion(name) => self.delete_region(name),
            Change::UpsertCluster(c) => self.upsert_cluster(c),
            Change::DeleteCluster(name) => self.delete_cluster(name),
            Change::UpsertVm(v) => self.upsert_vm(v),
            Change::DeleteVm(id) => self.delete_vm(id),
            Change::UpsertRepl(r) => self.upsert_repl(ReplRef::of(&r)),
            Change::DeleteRepl(id) => self.delete_repl(id),
            Change::UpsertContainer(c) => self.upsert_container(ContainerRef::of(&c)),
            Change::DeleteContainer(repl_id) => self.delete_container(repl_id),
            Change::UpsertDomain(d) => self.upsert_domain(d),
            Change::DeleteDomain(host) => self.delete_domain(host),
            Change::UpsertDirectory { name, region } => {
                let key = match &name {
                    OwnedName::Slug(s) | OwnedName::Domain(s) => s.clone(),
                };
                self.push_directory(name.as_name(), &region, &key)
            }
            Change::DeleteDirectory(name) => self.delete_directory(name),
            Change::RecentMove { name, until_ms } => {
                let valid = match &name {
                    OwnedName::Slug(s) => is_valid_slug(s),
                    OwnedName::Domain(d) => is_valid_hostname(d),
                };
                if valid {
                    self.moves.push((name, until_ms));
                }
                Ok(())
            }
            Change::UpsertTombstone(t) => self.upsert_tombstone(t),
            Change::DeleteTombstone { repl_id, from_cluster } => self.delete_tombstone(repl_id, from_cluster),
            Change::UpsertCertificate(c) => self.upsert_certificate(c),
            Change::DeleteCertificate(host) => {
                self.row(8, &host);
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                Arc::make_mut(&mut self.table.tls).remove_cert(&host);
                Ok(())
            }
            Change::UpsertChallenge(c) => self.upsert_challenge(c),
            Change::DeleteChallenge(token) => {
                self.row(9, &token);
                Arc::make_mut(&mut self.table.tls).challenges.remove(token.as_str());
                Ok(())
            }
        }
    }

    fn upsert_certificate(&mut self, c: CertificateRow) -> Result<(), RowError> {
        let row = self.row(8, &c.hostname);
        let host = c.hostname.trim_end_matches('.').to_ascii_lowercase();
        if !is_valid_cert_name(&host) {
            return Err(row.err(SkipReason::BadValue, "not a valid certificate name"));
        }
        let revision = u64::try_from(c.revision).map_err(|_| row.err(SkipReason::BadValue, "negative revision"))?;
        Arc::make_mut(&mut self.table.tls).insert_cert(host, revision);
        Ok(())
    }

    fn upsert_challenge(&mut self, c: AcmeChallengeRow) -> Result<(), RowError> {
        let row = self.row(9, &c.token);
        // Tokens are base64url (RFC 8555 §8.1: at least 128 bits).
        let token_ok = (16..=128).contains(&c.token.len())
            && c.token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !token_ok {
            return Err(row.err(SkipReason::BadValue, "token is not 16-128 base64url characters"));
        }
        let kind = ChallengeKind::parse(&c.kind)
            .ok_or_else(|| row.err(SkipReason::BadValue, format!("unknown challenge kind {:?}", c.kind)))?;
        let host = c.hostname.trim_end_matches('.').to_ascii_lowercase();
        if !is_valid_hostname(&host) {
            return Err(row.err(SkipReason::BadValue, "not a valid hostname"));
        }
        if c.key_authorization.is_empty() || c.key_authorization.len() > 512 || !c.key_authorization.is_ascii() {
            return Err(row.err(SkipReason::BadValue, "key authorization is not 1-512 ASCII characters"));
        }
        let expires_at_ms = row.time("expires_at", &c.expires_at)?;
        Arc::make_mut(&mut self.table.tls).challenges.insert(
            c.token.into(),
            Challenge {
                key_authorization: c.key_authorization.into(),
                hostname: host.into(),
                kind,
                expires_at_ms,
            },
        );
        Ok(())
    }

    fn delete_repl(&mut self, id: String) -> Result<(), RowError> {
        self.row(3, &id);
        let found = self.table.repl_by_id(&id).map(|r| (r.slug().to_string(), r.id_hash));
        if let Some((slug, id_hash)) = found {
            let slug_hash = self.table.repls.hash(&slug);
            self.table.ids.remove(id_hash, slug_hash);
            if let Some(old) = self.table.repls.remove(&slug) {
                self.set_container(old.vm.get(), None, old.size);
            }
        }
        Ok(())
    }

    fn delete_container(&mut self, repl_id: String) -> Result<(), RowError> {
        self.row(4, &repl_id);
        if let Some((old, size)) = self.table.repl_by_id(&repl_id).map(|r| (r.vm.get(), r.size)) {
            self.update_repl(&repl_id, |r| {
                r.vm = OptIdx::NONE;
            });
            self.set_container(old, None, size);
        }
        Ok(())
    }

    fn delete_domain(&mut self, host: String) -> Result<(), RowError> {
        self.row(5, &host);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.table.domains.remove(&host);
        self.table.directory.remove(Name::Domain(&host));
        Ok(())
    }

    fn delete_directory(&mut self, name: OwnedName) -> Result<(), RowError> {
        self.row(7, "-");
        self.table.directory.remove(name.as_name());
        Ok(())
    }

    fn delete_tombstone(&mut self, repl_id: String, from_cluster: String) -> Result<(), RowError> {
        self.row(6, &repl_id);
        let Some(from) = self.table.cluster_by_name(&from_cluster) else {
            return Ok(());
        };
        if let Some(mut ts) = self.table.tombstones.get(&repl_id).cloned() {
            let before = ts.list.len();
            ts.list.retain(|t| t.from_cluster != from);
            self.table.tombstone_count -= before - ts.list.len();
            if ts.list.is_empty() {
                self.table.tombstones.remove(&repl_id);
            } else {
                self.table.tombstones.insert(ts);
            }
        }
        Ok(())
    }

    fn upsert_repl(&mut self, r: ReplRef<'_>) -> Result<(), RowError> {
        let row = self.row(3, r.id);
        row.check_id()?;
        if !is_valid_slug(r.slug) {
            return Err(row.err(
                SkipReason::BadValue,
                format!("slug {:?} is not a DNS label (a-z, 0-9, '-')", r.slug),
            ));
        }
        let topo = &self.table.topo;
        let region = row.lookup(&topo.by_region, "region", r.region)?;
        let in_region = |field: &str, name: Option<&str>| -> Result<OptIdx, RowError> {
            let Some(name) = name else { return Ok(OptIdx::NONE) };
            let c = row.lookup(&topo.by_cluster, field, name)?;
            if topo.clusters[c as usize].region != region {
                return Err(row.err(
                    SkipReason::BadValue,
                    format!("{field} {name:?} is not in region {:?}", r.region),
                ));
            }
            Ok(OptIdx::from(Some(c)))
        };
        let cluster = in_region("cluster", r.cluster)?;
        let transfer_to = in_region("transfer_to", r.transfer_to)?;
        let largest = self.largest_vm(region);
        if r.size < 1 || r.size > largest.map_or(MAX_VM_CAPACITY, i64::from) {
            let why = match largest {
                _ if r.size < 1 => "it must be at least 1".to_string(),
                Some(c) => format!("no VM of region {:?} holds more than {c}", r.region),
                None => format!("the largest possible VM holds {MAX_VM_CAPACITY}"),
            };
            return Err(row.err(SkipReason::BadValue, format!("size {}: {why}", r.size)));
        }
        let size = r.size as u32;
        let existing = self
            .table
            .repl_by_id(r.id)
            .map(|e| (e.slug().to_string(), e.vm, e.size));
        if existing.is_some() && self.fresh {
            return Err(row.err(SkipReason::Duplicate, "duplicate repl id"));
        }
        if let Some(other) = self.table.repls.get(r.slug) {
            if other.id() != r.id {
                return Err(row.err(
                    SkipReason::Duplicate,
                    format!("slug {:?} is already used by repl {:?}", r.slug, other.id()),
                ));
            }
        }
        let mut repl = Repl::new(r.id, r.slug, r.owner, region);
        repl.cluster = cluster;
        repl.transfer_to = transfer_to;
        repl.size = size;
        if let Some((old_slug, vm, old_size)) = existing {
            repl.vm = vm;
            if let Some(v) = vm.get().filter(|_| old_size != size) {
                // A running repl resized: its VM holds the new size now.
                self.set_container(Some(v), None, old_size);
                self.set_container(None, Some(v), size);
            }
            if old_slug != r.slug {
                let old_hash = self.table.repls.hash(&old_slug);
                self.table.repls.remove(&old_slug);
                self.table.ids.remove(repl.id_hash, old_hash);
            }
        }
        if region == self.table.local_region && !self.fresh {
            // Arrived in this region: the local row now answers for it.
            self.table.directory.remove(Name::Slug(r.slug));
        }
        let (id_hash, slug_hash) = (repl.id_hash, self.table.repls.hash(r.slug));
        self.table.repls.insert(repl);
        self.table.ids.insert(id_hash, slug_hash);
        Ok(())
    }

    /// Changes the repl with id `id` in place; false if it does not exist.
    fn update_repl(&mut self, id: &str, f: impl FnOnce(&mut Repl)) -> bool {
        let table = &self.table;
        let Some(slug_hash) = table
            .ids
            .candidates(key_hash(id))
            .find(|&h| table.repls.get_hashed(h, |r| r.id() == id).is_some())
        else {
            return false;
        };
        self.table.repls.update_hashed(slug_hash, |r| r.id() == id, f)
    }

    /// Moves one container (of `size` units) from `old` to `new` and marks
    /// their clusters.
    fn set_container(&mut self, old: Option<Idx>, new: Option<Idx>, size: u32) {
        if old == new {
            return;
        }
        let load = Arc::make_mut(&mut self.table.load);
        if let Some(o) = old {
            load.containers[o as usize] = load.containers[o as usize].saturating_sub(1);
            load.units[o as usize] = load.units[o as usize].saturating_sub(size);
            self.table.containers -= 1;
            self.dirty_clusters.insert(self.table.topo.vms[o as usize].cluster);
        }
        if let Some(n) = new {
            load.containers[n as usize] += 1;
            load.units[n as usize] = load.units[n as usize].saturating_add(size);
            self.table.containers += 1;
            self.dirty_clusters.insert(self.table.topo.vms[n as usize].cluster);
        }
    }

    fn upsert_container(&mut self, c: ContainerRef<'_>) -> Result<(), RowError> {
        let row = self.row(4, c.repl_id);
        let (old, size) = match self.table.repl_by_id(c.repl_id) {
            Some(r) => (r.vm.get(), r.size),
            None => return Err(row.err(SkipReason::DanglingReference, "repl does not exist")),
        };
        let vm = row.lookup(&self.table.topo.by_vm, "vm", c.vm_id)?;
        if let Some(s) = c.started_at {
            row.time("started_at", s)?;
        }
        if old.is_some() && self.fresh {
            return Err(row.err(
                SkipReason::Duplicate,
                "repl already has a container (at most one per repl)",
            ));
        }
        self.update_repl(c.repl_id, |r| {
            r.vm = OptIdx::from(Some(vm));
        });
        self.set_container(old, Some(vm), size);
        Ok(())
    }

    fn upsert_domain(&mut self, d: CustomDomainRow) -> Result<(), RowError> {
        let row = self.row(5, &d.hostname);
        let host = d.hostname.trim_end_matches('.').to_ascii_lowercase();
        if !is_valid_hostname(&host) {
            return Err(row.err(SkipReason::BadValue, "not a valid hostname"));
        }
        let repl_id = self
            .table
            .repl_by_id(&d.repl_id)
            .map(|r| Box::<str>::from(r.id()))
            .ok_or_else(|| {
                row.err(
                    SkipReason::DanglingReference,
                    format!("repl {:?} does not exist", d.repl_id),
                )
            })?;
        if self.fresh && self.table.domains.get(&host).is_some() {
            return Err(row.err(SkipReason::Duplicate, "duplicate hostname"));
        }
        self.table.domains.insert(Domain {
            hostname: host.into(),
            repl_id,
        });
        Ok(())
    }

    fn upsert_tombstone(&mut self, ts: TombstoneRow) -> Result<(), RowError> {
        let row = self.row(6, &ts.repl_id);
        let repl_id = self
            .table
            .repl_by_id(&ts.repl_id)
            .map(|r| Box::<str>::from(r.id()))
            .ok_or_else(|| row.err(SkipReason::DanglingReference, "repl does not exist"))?;
        let topo = &self.table.topo;
        let from_cluster = row.lookup(&topo.by_cluster, "from_cluster", &ts.from_cluster)?;
        let to_cluster = row.lookup(&topo.by_cluster, "to_cluster", &ts.to_cluster)?;
        let expires_at_ms = row.time("expires_at", &ts.expires_at)?;
        let mut entry = self.table.tombstones.get(&ts.repl_id).cloned().unwrap_or(Tombstones {
            repl_id,
            list: Vec::new(),
        });
        let t = Tombstone {
            from_cluster,
            to_cluster,
            expires_at_ms,
        };
        match entry.list.iter_mut().find(|x| x.from_cluster == from_cluster) {
            Some(_) if self.fresh => {
                return Err(row.err(
                    SkipReason::Duplicate,
                    format!("duplicate tombstone from {:?}", ts.from_cluster),
                ))
            }
            Some(x) => *x = t,
            None => {
                entry.list.push(t);
                self.table.tombstone_count += 1;
            }
        }
        self.table.tombstones.insert(entry);
        Ok(())
    }

    /// Rebuilds derived data for what changed and stamps the version.
    pub(super) fn finish(mut self, version: u64) -> (RoutingTable, Skipped) {
        if !self.moves.is_empty() {
            self.table.moves = self.table.moves.with(std::mem::take(&mut self.moves));
        }
        if let Some(b) = self.directory.take() {
            let (dir, report) = b.finish();
            if report.conflicts > 0 {
                // Never fails a load: the odds are ~1e-7 per full load of a
                // 10M-app world, and the next full load draws a new key.
                self.skipped.push_n(
                    RowError {
                        table: "directory",
                        index: 0,
                        key: "-".into(),
                        reason: SkipReason::HashCollision,
                        message: format!(
                        "{} pairs of other regions' app names share their 68-bit hash with different home regions; \
                         one of each is forwarded to the other's region until the next full load",
                        report.conflicts
                    ),
                    },
                    report.conflicts as u64,
                );
            }
            self.table.directory = dir;
        }
        // A VM change can put its cluster on its region's ring or take it
        // off (its first active VM, or its last): rebuild that ring then.
        for &c in &self.dirty_clusters {
            let topo = &self.table.topo;
            let cluster = &topo.clusters[c as usize];
            let on_ring = topo
                .rings
                .get(cluster.region as usize)
                .is_some_and(|r| r.member_ids().contains(&c));
            if on_ring != takes_new_repls(topo, cluster) {
                self.dirty_regions.insert(cluster.region);
            }
        }
        if !self.dirty_regions.is_empty() {
            let topo = Arc::make_mut(&mut self.table.topo);
            for &region in &self.dirty_regions {
                let members: Vec<Member> = topo
                    .clusters
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.region == region && takes_new_repls(topo, c))
                    .map(|(ci, c)| Member {
                        id: ci as Idx,
                        name: &c.name,
                        weight: c.weight,
                    })
                    .collect();
                topo.rings[region as usize] = Arc::new(Ring::build(&members));
            }
        }
        if !self.dirty_clusters.is_empty() || self.table.load.candidates.len() != self.table.topo.clusters.len() {
            let topo = &self.table.topo;
            let load = Arc::make_mut(&mut self.table.load);
            load.candidates
                .resize_with(topo.clusters.len(), || Arc::from(Vec::new()));
            for &c in &self.dirty_clusters {
                load.candidates[c as usize] = topo.clusters[c as usize]
                    .vms
                    .iter()
                    .map(|&v| (v, &topo.vms[v as usize]))
                    .filter(|(_, vm)| vm.present && vm.state == VmState::Active)
                    .map(|(v, vm)| Candidate {
                        vm: v,
                        containers: load.containers[v as usize],
                        id_hash: vm.id_hash,
                        capacity: vm.capacity,
                        units: load.units[v as usize],
                    })
                    .collect();
            }
        }
        self.table.version = version.max(1);
        (self.table, self.skipped)
    }
}

/// Whether `cluster` is on its region's ring, i.e. is given new repls:
/// present, `active`, weight > 0, and at least one present `active` VM. A
/// cluster without one could place nothing (every repl the ring gave it
/// would be refused `no_usable_vm`), so it takes no share until it has a
/// VM; adding its first VM adds it, as adding a cluster does. The
/// control plane's own ring (`placectl move-user`) applies the same rule.
fn takes_new_repls(topo: &Topology, cluster: &Cluster) -> bool {
    cluster.present
        && cluster.state == ClusterState::Active
        && cluster.weight > 0
        && cluster.vms.iter().any(|&v| {
            let vm = &topo.vms[v as usize];
            vm.present && vm.state == VmState::Active
        })
}
