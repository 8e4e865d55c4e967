//! What a placement source hands the table: one [`Change`] per row (or a
//! borrowed [`ReplRef`]/[`ContainerRef`] on a bulk load), how bad rows are
//! treated ([`Strictness`]), and what comes back for the ones that could not
//! be applied ([`RowError`], counted in [`Skipped`]).
//!
//! Plain data; `rows/` applies it.

use crate::directory::OwnedName;
use crate::snapshot::*;

/// How bad rows are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// The first bad row fails the whole load (file snapshots).
    Strict,
    /// Bad rows are skipped and reported; the rest applies (database sync).
    Lenient,
}

/// One row change, as a source reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    UpsertRegion(RegionRow),
    DeleteRegion(String),
    UpsertCluster(ClusterRow),
    DeleteCluster(String),
    UpsertVm(VmRow),
    DeleteVm(String),
    UpsertRepl(ReplRow),
    DeleteRepl(String),
    UpsertContainer(ContainerRow),
    /// By repl id.
    DeleteContainer(String),
    UpsertDomain(CustomDomainRow),
    DeleteDomain(String),
    UpsertTombstone(TombstoneRow),
    DeleteTombstone {
        repl_id: String,
        from_cluster: String,
    },
    /// Another region's app, by slug or custom domain, is homed in
    /// `region` (the world directory).
    UpsertDirectory {
        name: OwnedName,
        region: String,
    },
    /// A name leaves the world directory (a repl deleted or renamed, a
    /// custom domain deleted).
    DeleteDirectory(OwnedName),
    /// An app by this name moved between regions: it has a live tombstone
    /// (in any region) until `until_ms` (Unix ms). What `edgeplane dns`
    /// gives the short TTL to ([`crate::directory::RecentMoves`]).
    RecentMove {
        name: OwnedName,
        until_ms: i64,
    },
    /// A hostname has a certificate in the control plane at this revision
    /// ([`crate::table::TlsIndex`]).
    UpsertCertificate(CertificateRow),
    DeleteCertificate(String),
    UpsertChallenge(AcmeChallengeRow),
    /// By token.
    DeleteChallenge(String),
}

/// A repl row borrowed from wherever it was read (a database row buffer),
/// so a bulk load allocates only what the table keeps.
#[derive(Debug, Clone, Copy)]
pub struct ReplRef<'a> {
    pub id: &'a str,
    pub slug: &'a str,
    pub owner: Option<&'a str>,
    pub region: &'a str,
    pub cluster: Option<&'a str>,
    pub transfer_to: Option<&'a str>,
    /// Size units (validated by the table like every other field).
    pub size: i64,
}

impl<'a> ReplRef<'a> {
    pub fn of(r: &'a ReplRow) -> ReplRef<'a> {
        ReplRef {
            id: &r.id,
            slug: &r.slug,
            owner: r.owner.as_deref(),
            region: &r.region,
            cluster: r.cluster.as_deref(),
            transfer_to: r.transfer_to.as_deref(),
            size: r.size,
        }
    }
}

/// A container row borrowed from wherever it was read.
#[derive(Debug, Clone, Copy)]
pub struct ContainerRef<'a> {
    pub repl_id: &'a str,
    pub vm_id: &'a str,
    pub started_at: Option<&'a str>,
}

impl<'a> ContainerRef<'a> {
    pub fn of(c: &'a ContainerRow) -> ContainerRef<'a> {
        ContainerRef {
            repl_id: &c.repl_id,
            vm_id: &c.vm_id,
            started_at: c.started_at.as_deref(),
        }
    }
}

/// A row that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}[{index}] ({key:?}): {message}")]
pub struct RowError {
    pub table: &'static str,
    /// Position of the row among the rows of its table in this load or delta.
    pub index: usize,
    pub key: String,
    /// Why, as counted in `sync_rows_skipped_total{reason}`.
    pub reason: SkipReason,
    pub message: String,
}

/// Why a row was skipped: the `reason` label of
/// `edgeplane_sync_rows_skipped_total` (every value is exported at 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// A second row with the same key.
    Duplicate,
    /// A row naming a region, cluster, VM or repl that does not exist.
    DanglingReference,
    /// An address that is not `ip:port` (or `host:port` where allowed).
    BadAddress,
    /// A field out of its range or format.
    BadValue,
    /// A time that is not RFC 3339.
    BadTime,
    /// Two directory names with one hash and different home regions.
    HashCollision,
    /// More regions than the world directory can number.
    TooManyRegions,
    /// Redis: a set member without its hash.
    MissingHash,
}

impl SkipReason {
    pub const ALL: [SkipReason; 8] = [
        SkipReason::Duplicate,
        SkipReason::DanglingReference,
        SkipReason::BadAddress,
        SkipReason::BadValue,
        SkipReason::BadTime,
        SkipReason::HashCollision,
        SkipReason::TooManyRegions,
        SkipReason::MissingHash,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Duplicate => "duplicate",
            SkipReason::DanglingReference => "dangling_reference",
            SkipReason::BadAddress => "bad_address",
            SkipReason::BadValue => "bad_value",
            SkipReason::BadTime => "bad_time",
            SkipReason::HashCollision => "hash_collision",
            SkipReason::TooManyRegions => "too_many_regions",
            SkipReason::MissingHash => "missing_hash",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rows skipped by a lenient load or delta: counts by (table, reason) and
/// the first [`MAX_SKIPPED_EXAMPLES`] errors, so a runaway bad load cannot
/// grow this without bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    pub counts: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    pub examples: Vec<RowError>,
}

/// Skipped rows kept as examples (each is logged once).
pub const MAX_SKIPPED_EXAMPLES: usize = 100;

impl Skipped {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
    /// Records one skipped row.
    pub fn push(&mut self, e: RowError) {
        self.push_n(e, 1);
    }
    /// Records `n` skipped rows described by one example.
    pub fn push_n(&mut self, e: RowError, n: u64) {
        *self.counts.entry((e.table, e.reason.as_str())).or_default() += n;
        if self.examples.len() < MAX_SKIPPED_EXAMPLES {
            self.examples.push(e);
        }
    }
    /// Adds `other`'s counts and (up to the cap) examples.
    pub fn merge(&mut self, other: Skipped) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        let room = MAX_SKIPPED_EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }
}
