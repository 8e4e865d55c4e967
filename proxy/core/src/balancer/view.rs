//! The balancer view: for every cluster of this edge's region, the members
//! new repls may go to (the subset, or every active VM in panic mode) with
//! their load baseline, built off the hot path and published whole.
//!
//! Where it sits: [`build`] runs on the balancer refresh thread whenever the
//! placement table, the health map, the subset epoch or an outlier changes;
//! [`super::Balancer`] stores the result in an ArcSwap and the routing
//! decision reads it with one load ([`super::pick`]).
//!
//! Per cluster (docs/contract.md §4): take the active VMs of the table; mark each
//! usable or not ([`usability`], passive ejection capped at
//! `max_ejected_share`); if fewer than `panic_threshold` of them are usable
//! (or none), ignore health and use them all (panic mode); otherwise choose
//! this instance's subset with hysteresis ([`subset::choose`]). Draining and
//! down VMs are never candidates, so never members. The usable VMs left out
//! of the subset are kept as the cluster's *spill*: a repl too big for every
//! member tries them before the cluster counts as full.
//!
//! Load is a share of capacity: VMs of one cluster may be of different
//! sizes, so a member's load is its reserved size units (the sample's
//! `conman_units_reserved`, else its container count; plus what this edge
//! placed since) over its capacity, weighted by `1 + cpu`.
//!
//! Invariants: members reference table indexes of the table whose version
//! the view records; the picker re-checks the chosen VM against the table
//! it routes with (a view may lag a publish by one refresh tick). Pure:
//! time, table, health and counters come in. Start at [`build`].

use std::sync::atomic::AtomicU32;

use edgeplane_placement::table::{Candidate, Idx, RoutingTable};
use hashbrown::HashMap;

use super::ledger::PlacementLedger;
use super::outliers::Outliers;
use super::usability::{usability, HealthMap, Usability, VmHealth};
use super::{subset, BalancerParams};

/// CPU utilisation 1.0 in the fixed-point `cpu_fp`.
pub const CPU_ONE: u32 = 1024;

/// [`Member::load`] of a VM whose capacity is exactly reserved, at 0 % CPU.
pub const LOAD_ONE: u64 = 1_000_000;

/// A VM new repls may go to, with its load baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub vm: Idx,
    pub id_hash: u64,
    /// Containers at the last sample (or in the snapshot, unmonitored).
    pub containers: u32,
    /// Size units reserved at the last sample (`conman_units_reserved`, or
    /// the container count when the VM does not report it; unmonitored:
    /// the snapshot's sum of its containers' sizes).
    pub units: u32,
    /// Size units the machine holds (`vms.capacity`, at least 1).
    pub capacity: u32,
    /// CPU utilisation at the last sample, `CPU_ONE` = 100 %.
    pub cpu_fp: u32,
    /// Ledger count when the baseline was taken.
    pub mark: u32,
    /// [`Member::load`] per reserved unit, x1024: precomputed so the hot
    /// path multiplies and shifts instead of dividing.
    pub load_scale: u64,
}

impl Member {
    /// Units reserved now as far as this edge knows: the baseline plus
    /// what this edge placed since.
    #[inline]
    pub fn reserved(&self, ledger: &PlacementLedger) -> u64 {
        self.units as u64 + ledger.since(self.id_hash, self.mark) as u64
    }

    /// Load as least-loaded and p2c compare it: the share of capacity
    /// reserved ([`Member::reserved`] / capacity, `LOAD_ONE` = full)
    /// weighted by `1 + cpu`, so a VM at full CPU looks twice as loaded as
    /// an idle one as full, and a machine four times the size takes four
    /// times the units before it looks as loaded.
    #[inline]
    pub fn load(&self, ledger: &PlacementLedger) -> u64 {
        (self.reserved(ledger) * self.load_scale) >> 10
    }

    /// The [`Member::load_scale`] of a VM of `capacity` units at `cpu_fp`.
    pub fn load_scale(capacity: u32, cpu_fp: u32) -> u64 {
        (((CPU_ONE + cpu_fp) as u64 * LOAD_ONE) << 10) / (capacity.max(1) as u64 * CPU_ONE as u64)
    }

    /// Whether a repl of `size` units fits in what is left of its capacity.
    #[inline]
    pub fn has_room(&self, ledger: &PlacementLedger, size: u32) -> bool {
        self.reserved(ledger) + size as u64 <= self.capacity as u64
    }
}

/// How a cluster's members were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// This instance's subset of the usable VMs.
    Normal,
    /// Too few usable VMs: every active VM, health ignored.
    Panic,
    /// No active VM at all (503), or not a cluster of this region.
    #[default]
    Empty,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Panic => "panic",
            Mode::Empty => "empty",
        }
    }
}

/// One active VM as the builder judged it (for `/balancer` and explain).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmStatus {
    pub vm: Idx,
    pub usability: Usability,
    pub member: bool,
    pub containers: u32,
    /// Reserved size units at the baseline, and whether the VM reported
    /// them (`conman_units_reserved`) or its container count stood in.
    pub units: u32,
    pub units_reported: bool,
    pub capacity: u32,
    pub cpu: f32,
    /// Age of the sample the load comes from (None: snapshot count).
    pub sample_age_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct ClusterView {
    pub mode: Mode,
    pub members: Box<[Member]>,
    /// Usable VMs outside this edge's subset (normal mode only): tried when
    /// no member has room for a repl's size.
    pub spill: Box<[Member]>,
    pub vms: Box<[VmStatus]>,
    pub active: u32,
    pub usable: u32,
    pub ejected: u32,
    /// Round-robin position.
    pub rr: AtomicU32,
}

/// Where one active VM stands for new repls (for `/balancer`, the status
/// page and explain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Units reserved now as this edge knows it (baseline plus its own
    /// placements since).
    pub reserved: u64,
    /// Units left before capacity.
    pub room: u64,
    /// Why it is not a candidate for a repl of size 1: its usability
    /// (`stale`, `not_ready`, `ejected`), `spill` (outside this edge's
    /// subset: tried only when no member has room) or `full`.
    pub not_candidate: Option<&'static str>,
}

impl ClusterView {
    /// See [`Standing`].
    pub fn standing(&self, s: &VmStatus, ledger: &PlacementLedger) -> Standing {
        let member = self.members.iter().find(|m| m.vm == s.vm);
        let spill = self.spill.iter().find(|m| m.vm == s.vm);
        let reserved = member.or(spill).map_or(s.units as u64, |m| m.reserved(ledger));
        let room = (s.capacity as u64).saturating_sub(reserved);
        let not_candidate = if member.is_none() && spill.is_none() && !s.usability.is_usable() {
            Some(s.usability.as_str())
        } else if room == 0 {
            Some("full")
        } else if member.is_none() {
            Some("spill")
        } else {
            None
        };
        Standing {
            reserved,
            room,
            not_candidate,
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct BalancerView {
    pub table_version: u64,
    pub health_generation: u64,
    pub epoch: u64,
    pub built_at_ms: u64,
    /// Index = cluster index of the table.
    pub clusters: Vec<ClusterView>,
    /// Ejected VMs (id hash -> until, unix ms).
    pub ejected: HashMap<u64, u64>,
    /// Ledger marks of VMs whose load comes from the snapshot, with the
    /// table version they were taken at.
    snapshot_marks: HashMap<u64, (u64, u32)>,
}

impl BalancerView {
    /// Earliest time an ejection ends (a rebuild is due then).
    pub fn next_ejection_end(&self) -> Option<u64> {
        self.ejected.values().copied().min()
    }
}

/// Everything [`build`] reads.
pub struct BuildInput<'a> {
    pub table: &'a RoutingTable,
    pub health: &'a HealthMap,
    pub ledger: &'a PlacementLedger,
    pub outliers: &'a Outliers,
    pub params: &'a BalancerParams,
    pub instance_hash: u64,
    pub now_ms: u64,
}

fn cpu_fp(cpu: f32) -> u32 {
    if cpu.is_finite() {
        (cpu.clamp(0.0, 1.0) * CPU_ONE as f32) as u32
    } else {
        CPU_ONE
    }
}

/// Builds the view; `prev` supplies hysteresis, ejections and marks.
pub fn build(input: &BuildInput<'_>, prev: &BalancerView) -> BalancerView {
    let (t, now) = (input.table, input.now_ms);
    let epoch = subset::epoch(input.instance_hash, now, input.params.subset_refresh_ms);
    let mut view = BalancerView {
        table_version: t.version(),
        health_generation: input.health.generation,
        epoch,
        built_at_ms: now,
        clusters: Vec::new(),
        ejected: prev
            .ejected
            .iter()
            .filter(|(_, &until)| until > now)
            .map(|(&k, &v)| (k, v))
            .collect(),
        snapshot_marks: HashMap::new(),
    };
    if !t.is_loaded() {
        return view;
    }
    let seed = subset::seed(input.instance_hash, epoch);
    let local = t.local_region();
    view.clusters.resize_with(t.cluster_slots(), ClusterView::default);
    for (ci, cl) in t.clusters() {
        if cl.region == local {
            build_cluster(input, prev, &mut view, ci, seed);
        }
    }
    view
}

/// One cluster of this region: every active VM's usability (ejecting new
/// outliers up to the cap) and balancer member, then the mode and this
/// edge's subset.
fn build_cluster(input: &BuildInput<'_>, prev: &BalancerView, view: &mut BalancerView, ci: Idx, seed: u64) {
    let (t, p, now) = (input.table, input.params, input.now_ms);
    let cands = t.candidates(ci);
    let active = cands.len();
    let cap = ((p.max_ejected_share * active as f64).floor() as usize).max(1);
    let mut ejected_here = cands.iter().filter(|c| view.ejected.contains_key(&c.id_hash)).count();
    let mut members_all = Vec::with_capacity(active);
    let mut statuses = Vec::with_capacity(active);
    for c in cands {
        let vm = t.vm(c.vm);
        let h = input.health.vms.get(&c.id_hash);
        let mut u = usability(vm.metrics_addr.is_some(), h, now, p.stale_after_ms);
        if view.ejected.contains_key(&c.id_hash) {
            u = Usability::Ejected;
        } else if input.outliers.tripped(c.id_hash) && ejected_here < cap {
            view.ejected.insert(c.id_hash, now + p.eject_ms);
            input.outliers.reset(c.id_hash);
            ejected_here += 1;
            u = Usability::Ejected;
        }
        let (member, cpu, age) = member_of(input, prev, view, c, h);
        members_all.push(member);
        statuses.push(VmStatus {
            vm: c.vm,
            usability: u,
            member: false,
            containers: member.containers,
            units: member.units,
            units_reported: h.and_then(|h| h.sample).is_some_and(|s| s.reading.units.is_some()),
            capacity: member.capacity,
            cpu,
            sample_age_ms: age,
        });
    }
    let usable: Vec<usize> = (0..active).filter(|&i| statuses[i].usability.is_usable()).collect();
    let cv = &mut view.clusters[ci as usize];
    cv.active = active as u32;
    cv.usable = usable.len() as u32;
    cv.ejected = ejected_here as u32;
    let panic = usable.is_empty() || (usable.len() as f64) < p.panic_threshold * active as f64;
    let chosen: Vec<usize> = if active == 0 {
        cv.mode = Mode::Empty;
        Vec::new()
    } else if panic {
        cv.mode = Mode::Panic;
        (0..active).collect()
    } else {
        cv.mode = Mode::Normal;
        let ids: Vec<u64> = usable.iter().map(|&i| members_all[i].id_hash).collect();
        let previous: Vec<u64> = prev
            .clusters
            .get(ci as usize)
            .filter(|pc| pc.mode == Mode::Normal)
            .map(|pc| pc.members.iter().map(|m| m.id_hash).collect())
            .unwrap_or_default();
        subset::choose(&ids, &previous, p.subset_size, p.subset_hysteresis, seed)
            .into_iter()
            .map(|j| usable[j])
            .collect()
    };
    for &i in &chosen {
        statuses[i].member = true;
    }
    cv.members = chosen.iter().map(|&i| members_all[i]).collect();
    if cv.mode == Mode::Normal {
        cv.spill = usable
            .iter()
            .filter(|&&i| !statuses[i].member)
            .map(|&i| members_all[i])
            .collect();
    }
    cv.vms = statuses.into_boxed_slice();
}

/// A VM as a balancer member: its last sample, or (never sampled) the
/// snapshot's container count with a ledger mark kept per table version.
/// Also returns the CPU and sample age shown by `/balancer`.
fn member_of(
    input: &BuildInput<'_>,
    prev: &BalancerView,
    view: &mut BalancerView,
    c: &Candidate,
    h: Option<&VmHealth>,
) -> (Member, f32, Option<u64>) {
    let (t, now) = (input.table, input.now_ms);
    match h.and_then(|h| h.sample) {
        Some(s) => (
            Member {
                vm: c.vm,
                id_hash: c.id_hash,
                containers: s.reading.containers,
                units: s.reading.units.unwrap_or(s.reading.containers),
                capacity: c.capacity,
                cpu_fp: cpu_fp(s.reading.cpu),
                mark: s.ledger_mark,
                load_scale: Member::load_scale(c.capacity, cpu_fp(s.reading.cpu)),
            },
            s.reading.cpu,
            Some(now.saturating_sub(s.reading.sampled_at_ms)),
        ),
        None => {
            let mark = match prev.snapshot_marks.get(&c.id_hash) {
                Some(&(v, m)) if v == t.version() => m,
                _ => input.ledger.count(c.id_hash),
            };
            view.snapshot_marks.insert(c.id_hash, (t.version(), mark));
            (
                Member {
                    vm: c.vm,
                    id_hash: c.id_hash,
                    containers: c.containers,
                    units: c.units,
                    capacity: c.capacity,
                    cpu_fp: 0,
                    mark,
                    load_scale: Member::load_scale(c.capacity, 0),
                },
                0.0,
                None,
            )
        }
    }
}
