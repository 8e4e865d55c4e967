//! The subsetting balancer of docs/contract.md §4: where a repl that is not running
//! starts. Plain Rust (atomics and one ArcSwap), no I/O; time, health and
//! randomness come in as arguments, so the simulator
//! (`edgeplane-bench sim`) runs exactly this code.
//!
//! Flow: the health monitor (the proxy's `background::health`) publishes a [`HealthMap`];
//! the refresh thread calls [`Balancer::refresh`], which rebuilds the
//! [`BalancerView`] ([`view::build`]: usability, ejection, panic mode,
//! subsets with hysteresis) when the table, health, epoch or an outlier
//! changed, and stores it whole. The routing decision calls
//! [`Balancer::choose`] (one ArcSwap load, [`pick::pick`] over at most
//! `subset_size` members), then [`Balancer::record`] for the pick it keeps.
//!
//! Sizes (docs/contract.md §4): only VMs with room for the repl's size are
//! candidates; when no subset member has room, the cluster's other usable
//! VMs (the spill) are tried, and only then is the cluster full (None: the
//! decision answers 503). In panic mode health is not trusted, and neither
//! are the reserved units it reported: a VM with room is still preferred,
//! but when none has room the least loaded takes the repl anyway (counted
//! as an over-capacity pick), so health can never empty a cluster.
//!
//! Invariants:
//! - Draining and down VMs are never members; a pick is re-checked against
//!   the table the request routes with (the view may lag one tick).
//! - Health can never empty a cluster: panic mode ignores it.
//! - The policy is one atomic, switchable at runtime (admin API); the
//!   params are swapped whole on a config reload ([`Balancer::set_params`])
//!   and the next refresh rebuilds the view with them.
//! - Counters (picks per policy, ledger, outliers) are keyed by stable
//!   hashes and survive table and view republishes.
//!
//! Start at [`Balancer::choose`], then [`view::build`].

pub mod ledger;
pub mod outliers;
pub mod pick;
pub mod subset;
pub mod usability;
pub mod view;

use crate::bits::splitmix64;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use edgeplane_placement::snapshot::VmState;
use edgeplane_placement::table::{Idx, RoutingTable};

pub use edgeplane_config::Policy;
pub use ledger::PlacementLedger;
pub use outliers::Outliers;
pub use usability::HealthMap;
pub use view::{BalancerView, Member, Mode, LOAD_ONE};

/// Balancer settings in the units the code uses.
#[derive(Debug, Clone)]
pub struct BalancerParams {
    pub subset_size: usize,
    pub subset_refresh_ms: u64,
    pub subset_hysteresis: f64,
    pub panic_threshold: f64,
    pub stale_after_ms: u64,
    pub eject_after_failures: u32,
    pub eject_ms: u64,
    pub max_ejected_share: f64,
}

impl Default for BalancerParams {
    /// The `DEFAULT_*` settings of `edgeplane_config`.
    fn default() -> Self {
        use edgeplane_config as c;
        BalancerParams {
            subset_size: c::DEFAULT_SUBSET_SIZE,
            subset_refresh_ms: c::DEFAULT_SUBSET_REFRESH.as_millis() as u64,
            subset_hysteresis: c::DEFAULT_SUBSET_HYSTERESIS,
            panic_threshold: c::DEFAULT_PANIC_THRESHOLD,
            stale_after_ms: c::DEFAULT_STALE_AFTER.as_millis() as u64,
            eject_after_failures: c::DEFAULT_EJECT_AFTER_FAILURES,
            eject_ms: c::DEFAULT_EJECT.as_millis() as u64,
            max_ejected_share: c::DEFAULT_MAX_EJECTED_SHARE,
        }
    }
}

impl BalancerParams {
    pub fn from_config(cfg: &edgeplane_config::Config) -> BalancerParams {
        let b = &cfg.balancer;
        BalancerParams {
            subset_size: b.subset_size,
            subset_refresh_ms: b.subset_refresh.as_millis() as u64,
            subset_hysteresis: b.subset_hysteresis,
            panic_threshold: b.panic_threshold,
            stale_after_ms: cfg.health.stale_after.as_millis() as u64,
            eject_after_failures: b.eject_after_failures,
            eject_ms: b.eject.as_millis() as u64,
            max_ejected_share: b.max_ejected_share,
        }
    }
}

/// Where a pick came from, as far as room for the repl's size goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// A member of the subset (or of all VMs in panic mode) with room.
    Member,
    /// No member had room: a usable VM outside this edge's subset.
    Spill,
    /// Panic mode and no VM had room by what is known: the least loaded,
    /// past its capacity.
    OverCapacity,
}

impl Fit {
    pub fn as_str(self) -> &'static str {
        match self {
            Fit::Member => "member",
            Fit::Spill => "spill",
            Fit::OverCapacity => "over_capacity",
        }
    }
}

/// What [`Balancer::choose`] picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub vm: Idx,
    pub id_hash: u64,
    pub policy: Policy,
    pub mode: Mode,
    pub fit: Fit,
    /// Members it chose among.
    pub members: u32,
    /// The member's load as compared (share of capacity x (1 + cpu),
    /// [`LOAD_ONE`] = full at 0 % CPU).
    pub load: u64,
    /// Units reserved on it before this pick, and its capacity.
    pub reserved: u64,
    pub capacity: u32,
    /// The repl's size (what [`Balancer::record`] adds to the ledger).
    pub size: u32,
}

/// See the module docs.
pub struct Balancer {
    params: ArcSwap<BalancerParams>,
    /// Set by [`Balancer::set_params`]: the next refresh rebuilds.
    params_changed: std::sync::atomic::AtomicBool,
    instance_hash: u64,
    policy: AtomicU8,
    view: ArcSwap<BalancerView>,
    pub ledger: PlacementLedger,
    pub outliers: Outliers,
    picks: [AtomicU64; 4],
    panic_picks: AtomicU64,
    fallback_picks: AtomicU64,
    spill_picks: AtomicU64,
    over_capacity_picks: AtomicU64,
}

impl Balancer {
    pub fn new(params: BalancerParams, instance_id: &str, policy: Policy) -> Balancer {
        Balancer {
            outliers: Outliers::new(params.eject_after_failures),
            params: ArcSwap::from_pointee(params),
            params_changed: std::sync::atomic::AtomicBool::new(false),
            instance_hash: xxhash_rust::xxh3::xxh3_64(instance_id.as_bytes()),
            policy: AtomicU8::new(policy.index() as u8),
            view: ArcSwap::from_pointee(BalancerView::default()),
            ledger: PlacementLedger::new(),
            picks: Default::default(),
            panic_picks: AtomicU64::new(0),
            fallback_picks: AtomicU64::new(0),
            spill_picks: AtomicU64::new(0),
            over_capacity_picks: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn policy(&self) -> Policy {
        Policy::ALL[self.policy.load(Ordering::Relaxed) as usize & 3]
    }

    /// The settings in use.
    pub fn params(&self) -> Arc<BalancerParams> {
        self.params.load_full()
    }

    /// New settings (config reload): the next [`Balancer::refresh`]
    /// rebuilds the view with them.
    pub fn set_params(&self, p: BalancerParams) {
        self.outliers.set_threshold(p.eject_after_failures);
        self.params.store(Arc::new(p));
        self.params_changed.store(true, Ordering::Release);
    }

    /// Switches the policy for every following pick.
    pub fn set_policy(&self, p: Policy) {
        self.policy.store(p.index() as u8, Ordering::Relaxed);
    }

    /// The view in use.
    pub fn view(&self) -> Arc<BalancerView> {
        self.view.load_full()
    }

    /// Rebuilds the view if anything it depends on changed (or `force`);
    /// returns whether it did.
    pub fn refresh(&self, table: &RoutingTable, health: &HealthMap, now_ms: u64, force: bool) -> bool {
        let prev = self.view.load();
        let params = self.params.load();
        let epoch = subset::epoch(self.instance_hash, now_ms, params.subset_refresh_ms);
        let due = self.params_changed.swap(false, Ordering::AcqRel)
            || force
            || prev.built_at_ms == 0
            || prev.table_version != table.version()
            || prev.health_generation != health.generation
            || prev.epoch != epoch
            || prev.next_ejection_end().is_some_and(|t| t <= now_ms)
            || self.outliers.take_dirty();
        if !due {
            return false;
        }
        let next = view::build(
            &view::BuildInput {
                table,
                health,
                ledger: &self.ledger,
                outliers: &self.outliers,
                params: &params,
                instance_hash: self.instance_hash,
                now_ms,
            },
            &prev,
        );
        drop(prev);
        self.view.store(Arc::new(next));
        true
    }

    /// Picks a VM of `cluster` with room for a new repl of `size` units.
    /// `entropy` is per request (random, or derived from the repl for
    /// reproducible tests). None: no active VM, or none with room (the
    /// caller tells the two apart by the table's candidates).
    #[inline]
    pub fn choose(&self, t: &RoutingTable, cluster: Idx, entropy: u64, size: u32) -> Option<Choice> {
        let view = self.view.load();
        let policy = self.policy();
        let valid = |m: &Member| valid_member(t, cluster, m.vm, m.id_hash);
        let fits = |m: &&Member| valid(m) && m.has_room(&self.ledger, size);
        if let Some(cv) = view.clusters.get(cluster as usize) {
            let choice = |m: &Member, policy, fit| self.choice(cv, m, policy, fit, size);
            if let Some(m) = pick::pick(cv, policy, &self.ledger, entropy, size) {
                if valid(m) {
                    return Some(choice(m, policy, Fit::Member));
                }
                // The view lags the table (a VM just drained): best valid member.
                if let Some(m) = pick::least_loaded(cv.members.iter().filter(fits), &self.ledger, entropy) {
                    return Some(choice(m, Policy::LeastLoaded, Fit::Member));
                }
            }
            if let Some(m) = pick::least_loaded(cv.spill.iter().filter(fits), &self.ledger, entropy) {
                return Some(choice(m, Policy::LeastLoaded, Fit::Spill));
            }
            if cv.mode == Mode::Panic {
                let valid_any = cv.members.iter().filter(|m| valid(m));
                if let Some(m) = pick::least_loaded(valid_any, &self.ledger, entropy) {
                    return Some(choice(m, Policy::LeastLoaded, Fit::OverCapacity));
                }
            }
            if view.table_version == t.version() {
                return None;
            }
        }
        // No view for this cluster yet (just started, or a cluster newer
        // than the view): the snapshot's least-loaded active VM with room.
        snapshot_pick(t, cluster, entropy, size, |_| true)
    }

    /// Picks a VM of `cluster` with room for `size` other than those in
    /// `tried` (connections to them failed): the least loaded remaining
    /// member of this edge's subset, else of the spill, else the
    /// least-loaded remaining active VM of the cluster by the snapshot (a
    /// subset of one must not strand the repl). None when none is left.
    pub fn choose_excluding(
        &self,
        t: &RoutingTable,
        cluster: Idx,
        entropy: u64,
        size: u32,
        tried: &[Idx],
    ) -> Option<Choice> {
        let view = self.view.load();
        let valid = |vm: Idx, id_hash: u64| !tried.contains(&vm) && valid_member(t, cluster, vm, id_hash);
        let fits = |m: &&Member| valid(m.vm, m.id_hash) && m.has_room(&self.ledger, size);
        if let Some(cv) = view.clusters.get(cluster as usize) {
            for (list, fit) in [(&cv.members, Fit::Member), (&cv.spill, Fit::Spill)] {
                if let Some(m) = pick::least_loaded(list.iter().filter(fits), &self.ledger, entropy) {
                    return Some(self.choice(cv, m, Policy::LeastLoaded, fit, size));
                }
            }
        }
        snapshot_pick(t, cluster, entropy, size, |c| valid(c.vm, c.id_hash))
    }

    fn choice(&self, cv: &view::ClusterView, m: &Member, policy: Policy, fit: Fit, size: u32) -> Choice {
        Choice {
            vm: m.vm,
            id_hash: m.id_hash,
            policy,
            mode: cv.mode,
            fit,
            members: cv.members.len() as u32,
            load: m.load(&self.ledger),
            reserved: m.reserved(&self.ledger),
            capacity: m.capacity,
            size,
        }
    }

    /// Counts a pick that was kept (its size becomes load in the ledger).
    #[inline]
    pub fn record(&self, c: &Choice) {
        self.ledger.record(c.id_hash, c.size);
        self.picks[c.policy.index()].fetch_add(1, Ordering::Relaxed);
        match c.mode {
            Mode::Normal => {}
            Mode::Panic => {
                self.panic_picks.fetch_add(1, Ordering::Relaxed);
            }
            Mode::Empty => {
                self.fallback_picks.fetch_add(1, Ordering::Relaxed);
            }
        }
        match c.fit {
            Fit::Member => {}
            Fit::Spill => {
                self.spill_picks.fetch_add(1, Ordering::Relaxed);
            }
            Fit::OverCapacity => {
                self.over_capacity_picks.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Picks outside this edge's subset (no member had room) and past a
    /// VM's capacity (panic mode, none had room).
    pub fn size_pick_counts(&self) -> (u64, u64) {
        (
            self.spill_picks.load(Ordering::Relaxed),
            self.over_capacity_picks.load(Ordering::Relaxed),
        )
    }

    /// Picks so far: per policy, of which in panic mode, and by the
    /// snapshot fallback (no view for the cluster yet).
    pub fn pick_counts(&self) -> ([u64; 4], u64, u64) {
        (
            std::array::from_fn(|i| self.picks[i].load(Ordering::Relaxed)),
            self.panic_picks.load(Ordering::Relaxed),
            self.fallback_picks.load(Ordering::Relaxed),
        )
    }
}

/// Whether `vm` is still an active VM of `cluster` in the table the
/// request routes with (a view may lag the table by one refresh).
#[inline]
fn valid_member(t: &RoutingTable, cluster: Idx, vm: Idx, id_hash: u64) -> bool {
    t.get_vm(vm)
        .is_some_and(|v| v.present && v.state == VmState::Active && v.cluster == cluster && v.id_hash == id_hash)
}

/// The table's least-loaded active VM of `cluster` with room for `size`
/// among those `keep` accepts (by the snapshot's reserved units as a share
/// of capacity; ties by entropy), for when the balancer's view has nothing
/// to offer.
fn snapshot_pick(
    t: &RoutingTable,
    cluster: Idx,
    entropy: u64,
    size: u32,
    keep: impl Fn(&edgeplane_placement::table::Candidate) -> bool,
) -> Option<Choice> {
    let candidates = t.candidates(cluster);
    let share = |c: &edgeplane_placement::table::Candidate| c.units as u64 * LOAD_ONE / c.capacity.max(1) as u64;
    let c = candidates
        .iter()
        .filter(|c| keep(c) && c.units as u64 + size as u64 <= c.capacity as u64)
        .min_by_key(|c| (share(c), std::cmp::Reverse(splitmix64(entropy ^ c.id_hash))))?;
    Some(Choice {
        vm: c.vm,
        id_hash: c.id_hash,
        policy: Policy::LeastLoaded,
        mode: Mode::Empty,
        fit: Fit::Member,
        members: candidates.len() as u32,
        load: share(c),
        reserved: c.units as u64,
        capacity: c.capacity,
        size,
    })
}

#[cfg(test)]
mod tests;
