//! Size-aware placement in the simulator (issue 21): machines of two sizes
//! in every cluster with a few starts needing several times the usual size,
//! and moving one hot user to another cluster.
//!
//! Where it sits: the same day, surge, edges and health delays as
//! [`super::run_scenario`] (and the same [`super::Fleet`] and
//! [`super::Edges`]: the proxy's own balancer), with two workloads on top:
//! - [`run_mixed`]: half the VMs of each cluster hold `small_capacity`
//!   units, half `big_capacity` (the seeds' "big and small instance groups
//!   in one load balancer"); `oversize_share` of the starts need
//!   `oversize_min..=oversize_max` units, the rest 1. Read at the end of the
//!   surge: utilisation (reserved units / capacity) per VM, and VMs past
//!   100 %. Size-blind least-loaded is the balancer as it was before sizes:
//!   every VM looks alike (capacity ignored), every repl weighs 1, VMs
//!   report container counts only.
//! - [`run_hot_user`]: one user's popular repls (a share of the starts, each
//!   costly in CPU) are pinned to one cluster; at `move_at_h` the user is
//!   moved (`placectl move-user --to`) to a spare cluster that is not on the
//!   ring: its running containers restart there and its new starts go
//!   there. CPU of both clusters is sampled every five minutes.
//!
//! Deterministic (one seed). Start at [`run_mixed`].

use std::time::Instant;

use edgeplane_control_sync::RoutingTable;
use edgeplane_core::balancer::Policy;

use super::report::Stats;
use super::{region_name, world_snapshot, Arrivals, CloudLb, Edges, Fleet, SimOptions, T0_MS};

/// The mixed-size fleet and workload.
#[derive(Debug, Clone)]
pub struct MixedSizes {
    pub small_capacity: u32,
    pub big_capacity: u32,
    /// Share of starts that need more than 1 unit.
    pub oversize_share: f64,
    pub oversize_min: u32,
    pub oversize_max: u32,
}

impl Default for MixedSizes {
    /// Small and big machines 1:3, sized so that size-aware placement runs
    /// the region at about two thirds of its units at the end of the
    /// default surge; 3 % of starts need 4-8 units.
    fn default() -> Self {
        MixedSizes {
            small_capacity: 72,
            big_capacity: 216,
            oversize_share: 0.03,
            oversize_min: 4,
            oversize_max: 8,
        }
    }
}

/// How a mixed-size scenario places starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizePlacement {
    /// The edge's balancer with `policy` over subsets of 16; `blind` runs
    /// it as before sizes existed.
    Edge { policy: Policy, blind: bool },
    /// The cloud LB model (round-robin inside a cluster; no sizes).
    CloudLb,
}

#[derive(Debug, Clone)]
pub struct SizeScenario {
    pub name: String,
    pub placement: SizePlacement,
}

/// The comparison the issue asks for.
pub fn mixed_scenarios() -> Vec<SizeScenario> {
    let edge = |name: &str, policy, blind| SizeScenario {
        name: name.into(),
        placement: SizePlacement::Edge { policy, blind },
    };
    vec![
        edge("size-aware least-loaded", Policy::LeastLoaded, false),
        edge("size-aware p2c", Policy::P2c, false),
        edge("size-aware random", Policy::Random, false),
        SizeScenario {
            name: "cloud LB spillover".into(),
            placement: SizePlacement::CloudLb,
        },
        edge("size-blind least-loaded (before)", Policy::LeastLoaded, true),
    ]
}

/// What a mixed-size scenario produced, at the end of the surge.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MixedResult {
    pub name: String,
    pub starts: usize,
    /// Starts that needed more than 1 unit.
    pub oversize_starts: usize,
    /// Starts refused because no VM of the cluster had room (503).
    pub refused: usize,
    /// Reserved units / capacity per VM.
    pub utilisation: Vec<f64>,
    /// The same for the small and the big machines.
    pub small: Stats,
    pub big: Stats,
    /// VMs past 100 % of their capacity.
    pub over_capacity_vms: usize,
    pub elapsed_s: f64,
}

impl MixedResult {
    pub fn stats(&self) -> Stats {
        Stats::of(self.utilisation.iter().copied())
    }
    /// Utilisation p99 / median.
    pub fn ratio(&self) -> f64 {
        let s = self.stats();
        if s.p50 > 0.0 {
            s.p99 / s.p50
        } else {
            f64::INFINITY
        }
    }
}

/// The region with two machine sizes per cluster (even VMs small, odd
/// big); `blind` gives every VM the largest capacity instead (nothing is
/// ever "full" to a balancer that ignores sizes).
fn mixed_world(o: &SimOptions, m: &MixedSizes, blind: bool) -> RoutingTable {
    let mut snap = world_snapshot(o);
    for (i, vm) in snap.vms.iter_mut().enumerate() {
        vm.capacity = match (blind, i % 2) {
            (true, _) => edgeplane_control_sync::snapshot::MAX_VM_CAPACITY,
            (false, 0) => m.small_capacity as i64,
            (false, _) => m.big_capacity as i64,
        };
    }
    RoutingTable::build(&snap, &region_name(0), 1).expect("simulated world")
}

/// Runs one mixed-size scenario; `progress` gets the fraction done.
pub fn run_mixed(o: &SimOptions, m: &MixedSizes, sc: &SizeScenario, progress: &mut dyn FnMut(f64)) -> MixedResult {
    let started = Instant::now();
    let truth = mixed_world(o, m, false);
    let (policy, blind) = match sc.placement {
        SizePlacement::Edge { policy, blind } => (Some(policy), blind),
        SizePlacement::CloudLb => (None, true),
    };
    let seen = if blind {
        mixed_world(o, m, true)
    } else {
        mixed_world(o, m, false)
    };
    let capacity: Vec<u32> = truth.vms().map(|(_, v)| v.capacity).collect();
    let total_s = (o.hours * 3600.0) as u64;
    let end_of_surge = ((o.surge_start_h + o.surge_hours) * 3600.0) as u64;

    // CPU in proportion to units: a 100-unit machine has the default VM's.
    let mut fleet = Fleet::new(&truth, |cap| o.vm_capacity_mc * cap as f64 / 100.0);
    let mut edges = match policy {
        Some(p) => Edges::with(o, p, 16, 60, &seen),
        None => Edges::with(o, Policy::LeastLoaded, 0, 0, &seen),
    };
    let mut lb = CloudLb::new(o, &truth);
    let mut arrivals = Arrivals::new(o);
    let (mut oversize, mut refused) = (0usize, 0usize);
    let mut utilisation = Vec::new();
    for t in 0..total_s {
        let now_ms = T0_MS + t * 1000;
        fleet.expire(now_ms);
        edges.see_units(o, t, now_ms, &fleet, &seen, !blind);
        if t % 60 == 0 {
            lb.new_minute();
        }
        if t == end_of_surge {
            utilisation = fleet
                .vms
                .iter()
                .zip(&capacity)
                .map(|(&(i, _), &c)| fleet.units[i as usize] as f64 / c as f64)
                .collect();
        }
        if t % 600 == 0 {
            progress(t as f64 / total_s as f64);
        }
        for _ in 0..arrivals.at(o, t) {
            let st = arrivals.draw(o, now_ms);
            let rng = &mut arrivals.rng;
            let size = if rng.unit() < m.oversize_share {
                oversize += 1;
                m.oversize_min + (rng.next_u64() % (m.oversize_max - m.oversize_min + 1) as u64) as u32
            } else {
                1
            };
            let vm = match policy {
                Some(_) => {
                    let cluster = seen.ring(seen.local_region()).lookup_hash(st.repl_hash);
                    let asked = if blind { 1 } else { size };
                    cluster.and_then(|c| edges.place_in(&seen, st.edge, c, st.entropy, asked))
                }
                None => Some(lb.place(&truth, t)),
            };
            match vm {
                Some(vm) => fleet.start(vm, st.cost_mc, st.until_ms, size, false),
                None => refused += 1,
            }
        }
    }
    progress(1.0);
    let of_size = |cap: u32| {
        Stats::of(
            utilisation
                .iter()
                .zip(&capacity)
                .filter(|(_, &c)| c == cap)
                .map(|(&u, _)| u),
        )
    };
    MixedResult {
        name: sc.name.clone(),
        starts: arrivals.placed,
        oversize_starts: oversize,
        refused,
        small: of_size(m.small_capacity),
        big: of_size(m.big_capacity),
        over_capacity_vms: utilisation.iter().filter(|&&u| u > 1.0).count(),
        utilisation,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}

/// The hot user and the move.
#[derive(Debug, Clone)]
pub struct HotUser {
    /// Share of all starts that are the hot user's repls.
    pub share: f64,
    /// CPU cost of each of its repls, millicores.
    pub cost_mc: f64,
    /// When `move-user` runs.
    pub move_at_h: f64,
}

impl Default for HotUser {
    /// 1 % of starts at 500 millicores each (the mean repl costs about
    /// 72): its cluster runs past full CPU in the surge.
    fn default() -> Self {
        HotUser {
            share: 0.01,
            cost_mc: 500.0,
            move_at_h: 12.5,
        }
    }
}

/// CPU utilisation of the hot cluster and the spare one, every five minutes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HotUserResult {
    /// Hours since the start of the day.
    pub t_h: Vec<f64>,
    /// Hot cluster: p99 and max CPU per VM (1.0 = full), and VMs past 100 %.
    pub hot_p99: Vec<f64>,
    pub hot_max: Vec<f64>,
    pub hot_over: Vec<usize>,
    /// The cluster it moved to: p99 CPU per VM.
    pub spare_p99: Vec<f64>,
    /// Every other cluster: p99 CPU per VM.
    pub rest_p99: Vec<f64>,
    /// Containers restarted on the spare cluster by the move.
    pub moved: usize,
    pub elapsed_s: f64,
}

/// Runs the hot-user day with least-loaded placement.
pub fn run_hot_user(o: &SimOptions, h: &HotUser, progress: &mut dyn FnMut(f64)) -> HotUserResult {
    let started = Instant::now();
    let mut snap = world_snapshot(o);
    // The last cluster is the spare one: off the ring, so only the moved
    // user lands there.
    let spare_name = snap.clusters.last().expect("clusters").name.clone();
    snap.clusters.last_mut().expect("clusters").weight = 0;
    let table = RoutingTable::build(&snap, &region_name(0), 1).expect("simulated world");
    let hot = table.cluster_by_name(&snap.clusters[0].name).expect("hot cluster");
    let spare = table.cluster_by_name(&spare_name).expect("spare cluster");
    let cluster_of: Vec<u32> = {
        let slots = table.vms().map(|(i, _)| i as usize + 1).max().unwrap_or(0);
        let mut v = vec![u32::MAX; slots];
        for (i, vm) in table.vms() {
            v[i as usize] = vm.cluster;
        }
        v
    };
    let total_s = (o.hours * 3600.0) as u64;
    let move_at = (h.move_at_h * 3600.0) as u64;
    let mut fleet = Fleet::new(&table, |_| o.vm_capacity_mc);
    let mut edges = Edges::with(o, Policy::LeastLoaded, 16, 60, &table);
    let mut arrivals = Arrivals::new(o);
    let mut home = hot;
    let mut r = HotUserResult {
        t_h: Vec::new(),
        hot_p99: Vec::new(),
        hot_max: Vec::new(),
        hot_over: Vec::new(),
        spare_p99: Vec::new(),
        rest_p99: Vec::new(),
        moved: 0,
        elapsed_s: 0.0,
    };
    for t in 0..total_s {
        let now_ms = T0_MS + t * 1000;
        fleet.expire(now_ms);
        edges.see(o, t, now_ms, &fleet, &table);
        if t % 300 == 0 {
            let cpu_of = |keep: &dyn Fn(u32) -> bool| {
                Stats::of(
                    fleet
                        .vms
                        .iter()
                        .filter(|&&(i, _)| keep(cluster_of[i as usize]))
                        .map(|&(i, _)| fleet.cpu_mc[i as usize] / fleet.cpu_capacity_mc[i as usize]),
                )
            };
            let hs = cpu_of(&|c| c == hot);
            r.t_h.push(t as f64 / 3600.0);
            r.hot_p99.push(hs.p99);
            r.hot_max.push(hs.max);
            r.hot_over.push(
                fleet
                    .vms
                    .iter()
                    .filter(|&&(i, _)| {
                        cluster_of[i as usize] == hot && fleet.cpu_mc[i as usize] > fleet.cpu_capacity_mc[i as usize]
                    })
                    .count(),
            );
            r.spare_p99.push(cpu_of(&|c| c == spare).p99);
            r.rest_p99.push(cpu_of(&|c| c != hot && c != spare).p99);
        }
        // After the sample of this second: the table's "before" is
        // the moment the move starts.
        if t == move_at {
            // One transaction: the user's repls are pinned to the spare
            // cluster and their containers deleted; each restarts there.
            home = spare;
            let moved = fleet.take(|&(_, vm, _, _, is_hot)| is_hot == 1 && cluster_of[vm as usize] == hot);
            r.moved = moved.len();
            for (until, cost, size) in moved {
                let edge = (arrivals.rng.next_u64() % o.edges as u64) as usize;
                if let Some(vm) = edges.place_in(&table, edge, spare, arrivals.rng.next_u64(), size) {
                    fleet.start(vm, cost, until, size, true);
                }
            }
        }
        if t % 600 == 0 {
            progress(t as f64 / total_s as f64);
        }
        for _ in 0..arrivals.at(o, t) {
            let st = arrivals.draw(o, now_ms);
            let is_hot = arrivals.rng.unit() < h.share;
            let (cluster, cost) = if is_hot {
                (Some(home), h.cost_mc)
            } else {
                (table.ring(table.local_region()).lookup_hash(st.repl_hash), st.cost_mc)
            };
            if let Some(vm) = cluster.and_then(|c| edges.place_in(&table, st.edge, c, st.entropy, 1)) {
                fleet.start(vm, cost, st.until_ms, 1, is_hot);
            }
        }
    }
    progress(1.0);
    r.elapsed_s = started.elapsed().as_secs_f64();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tests::small_day;

    #[test]
    fn size_aware_placement_keeps_vms_within_capacity_where_size_blind_does_not() {
        let (o, m) = (small_day(), MixedSizes::default());
        let sc = mixed_scenarios();
        let aware = run_mixed(&o, &m, &sc[0], &mut |_| {});
        let blind = run_mixed(&o, &m, &sc[4], &mut |_| {});
        assert!(aware.oversize_starts > 0 && aware.stats().p50 > 0.3, "{aware:?}");
        assert_eq!(aware.over_capacity_vms, 0, "{aware:?}");
        assert!(blind.over_capacity_vms > 0, "{}", blind.over_capacity_vms);
        assert!(aware.ratio() < blind.ratio());
        // Blind placement fills machines alike: small ones far fuller.
        assert!(blind.small.p50 > 1.5 * blind.big.p50, "{blind:?}");
    }

    #[test]
    fn moving_the_hot_user_relieves_its_cluster() {
        let o = small_day();
        // Three clusters on the ring here, not nine: a heavier user.
        let h = HotUser {
            share: 0.05,
            move_at_h: 3.5,
            ..HotUser::default()
        };
        let r = run_hot_user(&o, &h, &mut |_| {});
        let at = |t: f64| r.t_h.iter().position(|&x| x >= t).unwrap();
        let (before, after) = (at(3.5), at(4.0));
        let ratio = |i: usize| r.hot_p99[i] / r.rest_p99[i];
        assert!(r.moved > 0);
        assert_eq!(r.spare_p99[before], 0.0, "nothing on the spare cluster before");
        assert!(ratio(before) > 1.2, "hot before: {}", ratio(before));
        assert!(
            ratio(after) < ratio(before) - 0.1,
            "{} -> {}",
            ratio(before),
            ratio(after)
        );
        assert!(r.spare_p99[after] > 0.0);
    }
}
