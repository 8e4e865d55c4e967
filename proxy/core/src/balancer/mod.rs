//! The subsetting balancer of docs/contract.md §4: where a repl that is not running
//! starts. Plain Rust (atomics and one ArcSwap), no I/O; time, health and
//! randomness come in as arguments, so the simulator
//! (`edgeplane-bench sim`) runs exactly this code.
//!
//! Flow: the health monitor ([`crate::health`]) publishes a [`HealthMap`];
//! the refresh thread calls [`Balancer::refresh`], which rebuilds the
//! [`BalancerView`] ([`view::build`]: usability, ejection, panic mode,
//! subsets with hysteresis) when the table, health, epoch or an outlier
//! changed, and stores it whole. The routing decision calls
//! [`Balancer::choose`] (one ArcSwap load, [`pick::pick`] over at most
//! `subset_size` members), then [`Balancer::record`] for the pick it keeps.
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
pub use view::{BalancerView, Member, Mode};

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

/// What [`Balancer::choose`] picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub vm: Idx,
    pub id_hash: u64,
    pub policy: Policy,
    pub mode: Mode,
    /// Members it chose among.
    pub members: u32,
    /// The member's load as compared (containers x (1 + cpu), x1024).
    pub load: u64,
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

    /// Picks a VM of `cluster` for a new repl. `entropy` is per request
    /// (random, or derived from the repl for reproducible tests).
    #[inline]
    pub fn choose(&self, t: &RoutingTable, cluster: Idx, entropy: u64) -> Option<Choice> {
        let view = self.view.load();
        let policy = self.policy();
        let valid = |m: &Member| {
            t.get_vm(m.vm).is_some_and(|v| {
                v.present && v.state == VmState::Active && v.cluster == cluster && v.id_hash == m.id_hash
            })
        };
        if let Some(cv) = view.clusters.get(cluster as usize) {
            let choice = |m: &Member, policy| Choice {
                vm: m.vm,
                id_hash: m.id_hash,
                policy,
                mode: cv.mode,
                members: cv.members.len() as u32,
                load: m.load(&self.ledger),
            };
            if let Some(m) = pick::pick(cv, policy, &self.ledger, entropy) {
                if valid(m) {
                    return Some(choice(m, policy));
                }
                // The view lags the table (a VM just drained): best valid member.
                if let Some(m) = pick::least_loaded(cv.members.iter().filter(|m| valid(m)), &self.ledger, entropy) {
                    return Some(choice(m, Policy::LeastLoaded));
                }
            } else if view.table_version == t.version() {
                return None;
            }
        }
        // No view for this cluster yet (just started, or a cluster newer
        // than the view): the snapshot's least-loaded active VM.
        snapshot_pick(t, cluster, entropy, |_| true)
    }

    /// Picks a VM of `cluster` other than those in `tried` (connections to
    /// them failed): the least loaded remaining member of this edge's
    /// subset, else the least-loaded remaining active VM of the cluster
    /// (a subset of one must not strand the repl). None when none is left.
    pub fn choose_excluding(&self, t: &RoutingTable, cluster: Idx, entropy: u64, tried: &[Idx]) -> Option<Choice> {
        let view = self.view.load();
        let valid = |vm: Idx, id_hash: u64| {
            !tried.contains(&vm)
                && t.get_vm(vm).is_some_and(|v| {
                    v.present && v.state == VmState::Active && v.cluster == cluster && v.id_hash == id_hash
                })
        };
        if let Some(cv) = view.clusters.get(cluster as usize) {
            let left = cv.members.iter().filter(|m| valid(m.vm, m.id_hash));
            if let Some(m) = pick::least_loaded(left, &self.ledger, entropy) {
                return Some(Choice {
                    vm: m.vm,
                    id_hash: m.id_hash,
                    policy: Policy::LeastLoaded,
                    mode: cv.mode,
                    members: cv.members.len() as u32,
                    load: m.load(&self.ledger),
                });
            }
        }
        snapshot_pick(t, cluster, entropy, |c| valid(c.vm, c.id_hash))
    }

    /// Counts a pick that was kept (it becomes load in the ledger).
    #[inline]
    pub fn record(&self, c: &Choice) {
        self.ledger.record(c.id_hash);
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

/// The table's least-loaded active VM of `cluster` among those `keep`
/// accepts (by container count; ties by entropy), for when the balancer's
/// view has nothing to offer.
fn snapshot_pick(
    t: &RoutingTable,
    cluster: Idx,
    entropy: u64,
    keep: impl Fn(&edgeplane_placement::table::Candidate) -> bool,
) -> Option<Choice> {
    let candidates = t.candidates(cluster);
    let c = candidates
        .iter()
        .filter(|c| keep(c))
        .min_by_key(|c| (c.containers, std::cmp::Reverse(splitmix64(entropy ^ c.id_hash))))?;
    Some(Choice {
        vm: c.vm,
        id_hash: c.id_hash,
        policy: Policy::LeastLoaded,
        mode: Mode::Empty,
        members: candidates.len() as u32,
        load: c.containers as u64 * view::CPU_ONE as u64,
    })
}

#[cfg(test)]
mod tests;
