//! The placement simulator (`edgeplane-bench sim`): a region of E edges in
//! front of V VMs in clusters, a day of repl starts with heavy-tailed
//! lifetimes and CPU costs spanning six orders of magnitude, a Monday-morning
//! surge, scrapes that arrive late — placed by the proxy's own balancer
//! ([`edgeplane_core::balancer`]: the same `Balancer::choose`, health merge
//! and view builder the edge runs), compared with pure random placement and
//! a model of a cloud load balancer that spills over on capacity without
//! knowing about apps.
//!
//! Flow: [`run_scenario`] steps simulated time one second at a time:
//! departures leave, due health samples reach each edge (its own
//! `HealthMap`, ledger and subset), then the second's arrivals are placed.
//! Container counts and CPU per VM are read at the end of the surge (the
//! moment the production failure showed). [`report`] prints the table and
//! writes the SVG histograms.
//!
//! Deterministic: one seed drives arrivals, lifetimes, costs and the edge a
//! start lands on, identical for every scenario so they are compared on the
//! same workload. Start at [`run_scenario`].

pub mod report;
pub mod sizes;
pub mod sizes_report;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use edgeplane_control_sync::snapshot::VmState;
use edgeplane_control_sync::RoutingTable;
use edgeplane_core::balancer::usability::{Outcome, Reading};
use edgeplane_core::balancer::{Balancer, BalancerParams, HealthMap, Policy};

use crate::world::{region_name, synthetic, WorldShape};

/// The workload and the region.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub starts: usize,
    pub edges: usize,
    pub clusters: usize,
    pub vms_per_cluster: usize,
    pub hours: f64,
    /// The surge: start hour, length in hours, arrival-rate factor.
    pub surge_start_h: f64,
    pub surge_hours: f64,
    pub surge_factor: f64,
    pub scrape_interval_s: u64,
    /// Time from a scrape to the edges seeing it.
    pub scrape_delay_s: u64,
    /// Pareto lifetimes: minimum seconds and shape (1 < alpha: finite mean).
    pub lifetime_min_s: f64,
    pub lifetime_alpha: f64,
    /// Longest lifetime (a week).
    pub lifetime_max_s: f64,
    /// CPU cost of a repl is log-uniform in [min, max] millicores.
    pub cost_min_mc: f64,
    pub cost_max_mc: f64,
    pub vm_capacity_mc: f64,
    /// Cloud LB model: new starts per second one VM is provisioned for.
    pub lb_rate_per_vm: f64,
    pub seed: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            starts: 1_000_000,
            edges: 12,
            clusters: 10,
            vms_per_cluster: 100,
            hours: 24.0,
            surge_start_h: 12.0,
            surge_hours: 2.0,
            surge_factor: 3.0,
            scrape_interval_s: 15,
            scrape_delay_s: 5,
            lifetime_min_s: 1000.0,
            lifetime_alpha: 1.5,
            lifetime_max_s: 7.0 * 86400.0,
            cost_min_mc: 1e-3,
            cost_max_mc: 1e3,
            vm_capacity_mc: 12000.0,
            lb_rate_per_vm: 0.025,
            seed: 42,
        }
    }
}

/// How starts are placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// The edge's balancer: ring -> cluster, then `policy` over a subset of
    /// `subset` VMs refreshed every `refresh_s`.
    Edge {
        policy: Policy,
        subset: usize,
        refresh_s: u64,
    },
    /// A cloud load balancer: fill clusters in a fixed preference order up
    /// to their provisioned rate, spill over to the next; round-robin
    /// inside. It knows nothing about apps, containers or CPU.
    CloudLb,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub placement: Placement,
}

/// The comparison the issue asks for.
pub fn default_scenarios() -> Vec<Scenario> {
    let edge = |name: &str, policy, subset, refresh_s| Scenario {
        name: name.into(),
        placement: Placement::Edge {
            policy,
            subset,
            refresh_s,
        },
    };
    vec![
        edge("edgeplane least-loaded, subset 16", Policy::LeastLoaded, 16, 60),
        edge("edgeplane p2c, subset 16", Policy::P2c, 16, 60),
        edge("edgeplane round-robin, subset 16", Policy::RoundRobin, 16, 60),
        edge("edgeplane random, subset 16", Policy::Random, 16, 60),
        edge("pure random (no subset)", Policy::Random, usize::MAX, 60),
        Scenario {
            name: "cloud LB spillover".into(),
            placement: Placement::CloudLb,
        },
        edge("least-loaded, subset 2, 1 h refresh", Policy::LeastLoaded, 2, 3600),
    ]
}

/// splitmix64: a small, fast, reproducible generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        edgeplane_core::bits::splitmix64(self.0)
    }
    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// One repl start of the day, drawn from the seed.
pub(crate) struct Start {
    pub(crate) repl_hash: u64,
    /// The edge it lands on.
    pub(crate) edge: usize,
    pub(crate) entropy: u64,
    /// When its container leaves (unix ms).
    pub(crate) until_ms: u64,
    /// Its CPU cost, log-uniform over `cost_min_mc..cost_max_mc`.
    pub(crate) cost_mc: f64,
}

/// The day's arrivals: how many starts each second brings (the diurnal
/// wave and the surge, `o.starts` in all) and what each one draws. Every
/// scenario draws the same sequence from the same seed.
pub(crate) struct Arrivals {
    pub(crate) rng: Rng,
    base: f64,
    acc: f64,
    pub(crate) placed: usize,
    cost_span: f64,
}

impl Arrivals {
    pub(crate) fn new(o: &SimOptions) -> Arrivals {
        let total_s = (o.hours * 3600.0) as u64;
        let norm: f64 = (0..total_s).map(|t| shape(o, t as f64)).sum();
        Arrivals {
            rng: Rng::new(o.seed),
            base: o.starts as f64 / norm,
            acc: 0.0,
            placed: 0,
            cost_span: (o.cost_max_mc / o.cost_min_mc).ln(),
        }
    }

    /// How many starts second `t` brings.
    pub(crate) fn at(&mut self, o: &SimOptions, t: u64) -> usize {
        self.acc += self.base * shape(o, t as f64);
        let n = (self.acc.floor() as usize).min(o.starts - self.placed);
        self.acc -= n as f64;
        self.placed += n;
        n
    }

    /// The next start, at `now_ms`.
    pub(crate) fn draw(&mut self, o: &SimOptions, now_ms: u64) -> Start {
        let rng = &mut self.rng;
        let repl_hash = rng.next_u64();
        let edge = (rng.next_u64() % o.edges as u64) as usize;
        let entropy = rng.next_u64();
        let life = (o.lifetime_min_s / rng.unit().powf(1.0 / o.lifetime_alpha)).min(o.lifetime_max_s);
        let cost_mc = o.cost_min_mc * (rng.unit() * self.cost_span).exp();
        Start {
            repl_hash,
            edge,
            entropy,
            until_ms: now_ms + (life * 1000.0) as u64,
            cost_mc,
        }
    }
}

/// What a scenario produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub starts: usize,
    /// Containers per VM at the end of the surge.
    pub containers: Vec<u32>,
    /// CPU utilisation per VM at the end of the surge (1.0 = full).
    pub cpu: Vec<f64>,
    /// Containers per VM just before the surge (steady state).
    pub containers_before: Vec<u32>,
    /// Largest container count any VM reached, sampled every minute.
    pub peak_max_containers: u32,
    pub elapsed_s: f64,
}

pub(crate) const T0_MS: u64 = 1_800_000_000_000;

pub(crate) fn world(o: &SimOptions) -> RoutingTable {
    RoutingTable::build(&world_snapshot(o), &region_name(0), 1).expect("simulated world")
}

/// The simulated region's rows: `o.clusters` x `o.vms_per_cluster` active,
/// monitored VMs of [`UNBOUND_CAPACITY`] units (the day compares spread and
/// CPU; room for sizes is studied in [`sizes`]).
pub(crate) fn world_snapshot(o: &SimOptions) -> edgeplane_control_sync::snapshot::Snapshot {
    let shape = WorldShape {
        repls: 0,
        regions: 1,
        clusters: o.clusters,
        vms_per_cluster: o.vms_per_cluster,
        running_every: 0,
    };
    let mut snap = synthetic(shape, |i| format!("10.{}.{}.{}:8000", i >> 16, (i >> 8) & 255, i & 255));
    for (i, vm) in snap.vms.iter_mut().enumerate() {
        vm.metrics_addr = Some(format!("10.{}.{}.{}:9100", i >> 16, (i >> 8) & 255, i & 255));
        vm.state = VmState::Active;
        vm.capacity = UNBOUND_CAPACITY;
    }
    snap
}

/// Units a VM of the default day holds: more than any VM there reaches,
/// so the room check never binds and the figures compare with issue 4's.
pub(crate) const UNBOUND_CAPACITY: i64 = 1000;

/// Arrival-rate shape: a diurnal wave and the surge.
pub(crate) fn shape(o: &SimOptions, t_s: f64) -> f64 {
    let h = t_s / 3600.0;
    let wave = 1.0 + 0.3 * (std::f64::consts::TAU * (h - 6.0) / 24.0).sin();
    let surge = if h >= o.surge_start_h && h < o.surge_start_h + o.surge_hours {
        o.surge_factor
    } else {
        1.0
    };
    wave * surge
}

/// Runs one scenario; `progress` gets the fraction done now and then.
pub fn run_scenario(o: &SimOptions, sc: &Scenario, progress: &mut dyn FnMut(f64)) -> ScenarioResult {
    let started = Instant::now();
    let table = world(o);
    let total_s = (o.hours * 3600.0) as u64;
    let surge_start = (o.surge_start_h * 3600.0) as u64;
    let end_of_surge = ((o.surge_start_h + o.surge_hours) * 3600.0) as u64;

    let mut fleet = Fleet::new(&table, |_| o.vm_capacity_mc);
    let mut edges = Edges::new(o, sc, &table);
    let mut lb = CloudLb::new(o, &table);
    let mut arrivals = Arrivals::new(o);
    let mut peak_max = 0u32;
    let mut before = Vec::new();
    let mut at_surge_end: Option<(Vec<u32>, Vec<f64>)> = None;

    for t in 0..total_s {
        let now_ms = T0_MS + t * 1000;
        fleet.expire(now_ms);
        edges.see(o, t, now_ms, &fleet, &table);
        if t % 60 == 0 {
            lb.new_minute();
            peak_max = peak_max.max(fleet.containers.iter().copied().max().unwrap_or(0));
        }
        if t == surge_start {
            before = fleet.per_vm(|c, _| c);
        }
        if t == end_of_surge {
            at_surge_end = Some((fleet.per_vm(|c, _| c), fleet.per_vm(|_, cpu| cpu / o.vm_capacity_mc)));
        }
        if t % 600 == 0 {
            progress(t as f64 / total_s as f64);
        }

        for _ in 0..arrivals.at(o, t) {
            let st = arrivals.draw(o, now_ms);
            let vm = match sc.placement {
                Placement::Edge { .. } => edges.place(&table, st.edge, st.repl_hash, st.entropy),
                Placement::CloudLb => Some(lb.place(&table, t)),
            };
            if let Some(vm) = vm {
                fleet.start(vm, st.cost_mc, st.until_ms, 1, false);
            }
        }
    }
    progress(1.0);
    let (containers, cpu) = at_surge_end.unwrap_or_default();
    ScenarioResult {
        name: sc.name.clone(),
        starts: arrivals.placed,
        containers,
        cpu,
        containers_before: before,
        peak_max_containers: peak_max,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}

/// One running container: `(leaves at ms, vm, cost as f32 bits, size
/// units, 1 if the hot user's)`; ordered by when it leaves.
type Running = (u64, u32, u32, u32, u32);

/// Ground truth: containers, size units and CPU per VM slot, and when each
/// container leaves.
pub(crate) struct Fleet {
    /// `(slot, id hash)` of every VM, in table order.
    pub(crate) vms: Vec<(u32, u64)>,
    pub(crate) containers: Vec<u32>,
    pub(crate) units: Vec<u32>,
    pub(crate) cpu_mc: Vec<f64>,
    /// CPU each VM has, millicores.
    pub(crate) cpu_capacity_mc: Vec<f64>,
    /// Soonest first.
    leaving: BinaryHeap<Reverse<Running>>,
}

impl Fleet {
    /// `cpu_mc(capacity)`: the CPU a VM of that many size units has.
    pub(crate) fn new(table: &RoutingTable, cpu_mc: impl Fn(u32) -> f64) -> Fleet {
        let vms: Vec<(u32, u64)> = table.vms().map(|(i, v)| (i, v.id_hash)).collect();
        let slots = vms.iter().map(|&(i, _)| i as usize + 1).max().unwrap_or(0);
        let mut cpu_capacity_mc = vec![0.0; slots];
        for (i, v) in table.vms() {
            cpu_capacity_mc[i as usize] = cpu_mc(v.capacity);
        }
        Fleet {
            vms,
            containers: vec![0; slots],
            units: vec![0; slots],
            cpu_mc: vec![0.0; slots],
            cpu_capacity_mc,
            leaving: BinaryHeap::new(),
        }
    }

    pub(crate) fn expire(&mut self, now_ms: u64) {
        while let Some(Reverse(r)) = self.leaving.peek().copied() {
            if r.0 > now_ms {
                break;
            }
            self.leaving.pop();
            self.stop(r);
        }
    }

    fn stop(&mut self, (_, vm, cost, size, _): Running) {
        self.containers[vm as usize] -= 1;
        self.units[vm as usize] -= size;
        self.cpu_mc[vm as usize] -= f32::from_bits(cost) as f64;
    }

    pub(crate) fn start(&mut self, vm: u32, cost_mc: f64, until_ms: u64, size: u32, hot: bool) {
        self.containers[vm as usize] += 1;
        self.units[vm as usize] += size;
        self.cpu_mc[vm as usize] += cost_mc as f32 as f64;
        self.leaving
            .push(Reverse((until_ms, vm, (cost_mc as f32).to_bits(), size, hot as u32)));
    }

    /// Stops every container `take` selects and returns them (`until`,
    /// cost, size), e.g. a moved user's, to be started elsewhere.
    pub(crate) fn take(&mut self, take: impl Fn(&Running) -> bool) -> Vec<(u64, f64, u32)> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.leaving)
            .into_iter()
            .map(|Reverse(r)| r)
            .partition(|r| take(r));
        self.leaving = kept.into_iter().map(Reverse).collect();
        taken
            .into_iter()
            .map(|r| {
                self.stop(r);
                (r.0, f32::from_bits(r.2) as f64, r.3)
            })
            .collect()
    }

    /// One value per VM from its containers and CPU millicores.
    fn per_vm<T>(&self, f: impl Fn(u32, f64) -> T) -> Vec<T> {
        self.vms
            .iter()
            .map(|&(i, _)| f(self.containers[i as usize], self.cpu_mc[i as usize]))
            .collect()
    }
}

/// The edges of the region: one balancer and health map each, and the
/// scrapes on their way to them.
pub(crate) struct Edges {
    balancers: Vec<Balancer>,
    health: Vec<HealthMap>,
    /// `(due at ms, outcomes)` in due order.
    in_flight: Vec<(u64, Vec<(u64, Outcome)>)>,
}

impl Edges {
    /// No balancers for the cloud-LB scenario.
    fn new(o: &SimOptions, sc: &Scenario, table: &RoutingTable) -> Edges {
        match sc.placement {
            Placement::Edge {
                policy,
                subset,
                refresh_s,
            } => Edges::with(o, policy, subset, refresh_s, table),
            Placement::CloudLb => Edges::with(o, Policy::LeastLoaded, 0, 0, table),
        }
    }

    /// `o.edges` balancers with `policy` over subsets of `subset` (none
    /// when `subset` is 0).
    pub(crate) fn with(o: &SimOptions, policy: Policy, subset: usize, refresh_s: u64, table: &RoutingTable) -> Edges {
        let balancers: Vec<Balancer> = match subset {
            0 => Vec::new(),
            _ => (0..o.edges)
                .map(|e| {
                    let params = BalancerParams {
                        subset_size: subset,
                        subset_refresh_ms: refresh_s * 1000,
                        stale_after_ms: o.scrape_interval_s * 3000 + o.scrape_delay_s * 1000,
                        ..BalancerParams::default()
                    };
                    Balancer::new(params, &format!("edge-{e}"), policy)
                })
                .collect(),
        };
        let health: Vec<HealthMap> = balancers.iter().map(|_| HealthMap::default()).collect();
        for b in &balancers {
            b.refresh(table, &health[0], T0_MS, true);
        }
        Edges {
            balancers,
            health,
            in_flight: Vec::new(),
        }
    }

    /// Scrapes the fleet every interval (VMs report their reserved units
    /// unless `units_reported` is off); delivers due samples to every edge;
    /// refreshes the views.
    pub(crate) fn see(&mut self, o: &SimOptions, t: u64, now_ms: u64, fleet: &Fleet, table: &RoutingTable) {
        self.see_units(o, t, now_ms, fleet, table, true)
    }

    pub(crate) fn see_units(
        &mut self,
        o: &SimOptions,
        t: u64,
        now_ms: u64,
        fleet: &Fleet,
        table: &RoutingTable,
        units_reported: bool,
    ) {
        if self.balancers.is_empty() {
            return;
        }
        if t.is_multiple_of(o.scrape_interval_s) {
            let outcomes = fleet
                .vms
                .iter()
                .map(|&(i, h)| {
                    let r = Reading {
                        containers: fleet.containers[i as usize],
                        units: units_reported.then_some(fleet.units[i as usize]),
                        cpu: (fleet.cpu_mc[i as usize] / fleet.cpu_capacity_mc[i as usize]).clamp(0.0, 1.0) as f32,
                        ready: true,
                        sampled_at_ms: now_ms,
                    };
                    (h, Outcome::Ok(r))
                })
                .collect();
            self.in_flight.push((now_ms + o.scrape_delay_s * 1000, outcomes));
        }
        while self.in_flight.first().is_some_and(|(due, _)| *due <= now_ms) {
            let (_, outcomes) = self.in_flight.remove(0);
            for (b, h) in self.balancers.iter().zip(self.health.iter_mut()) {
                let watched = fleet.vms.iter().map(|&(_, h)| h);
                *h = h.next(watched, outcomes.iter().copied(), &b.ledger, now_ms);
            }
        }
        for (b, h) in self.balancers.iter().zip(&self.health) {
            b.refresh(table, h, now_ms, false);
        }
    }

    /// The edge's own decision for a repl that is not running: ring, then
    /// its balancer. None when the ring or cluster is empty.
    fn place(&self, table: &RoutingTable, edge: usize, repl_hash: u64, entropy: u64) -> Option<u32> {
        let cluster = table.ring(table.local_region()).lookup_hash(repl_hash)?;
        self.place_in(table, edge, cluster, entropy, 1)
    }

    /// The balancer's pick in `cluster` for a repl of `size`; None when
    /// the cluster has no VM with room.
    pub(crate) fn place_in(
        &self,
        table: &RoutingTable,
        edge: usize,
        cluster: u32,
        entropy: u64,
        size: u32,
    ) -> Option<u32> {
        let b = &self.balancers[edge];
        let c = b.choose(table, cluster, entropy, size)?;
        b.record(&c);
        Some(c.vm)
    }
}

/// A cloud load balancer: fills clusters in order up to a provisioned start
/// rate, spills to the least busy one, round-robin inside; no notion of apps.
pub(crate) struct CloudLb {
    clusters: Vec<u32>,
    /// Starts per cluster in this and the previous minute.
    minute: Vec<[u32; 2]>,
    rr: Vec<usize>,
    capacity: f64,
}

impl CloudLb {
    pub(crate) fn new(o: &SimOptions, table: &RoutingTable) -> CloudLb {
        CloudLb {
            clusters: table.clusters().map(|(i, _)| i).collect(),
            minute: vec![[0; 2]; table.cluster_slots()],
            rr: vec![0; table.cluster_slots()],
            capacity: o.lb_rate_per_vm * o.vms_per_cluster as f64 * 60.0,
        }
    }

    pub(crate) fn new_minute(&mut self) {
        for m in self.minute.iter_mut() {
            *m = [0, m[0]];
        }
    }

    pub(crate) fn place(&mut self, table: &RoutingTable, t: u64) -> u32 {
        let minute = &self.minute;
        let rate = |c: u32| {
            let m = minute[c as usize];
            m[0] as f64 + m[1] as f64 * (1.0 - (t % 60) as f64 / 60.0)
        };
        let c = self
            .clusters
            .iter()
            .copied()
            .find(|&c| rate(c) < self.capacity)
            .unwrap_or_else(|| {
                self.clusters
                    .iter()
                    .copied()
                    .min_by(|&a, &b| rate(a).total_cmp(&rate(b)))
                    .expect("the simulated region has clusters")
            });
        self.minute[c as usize][0] += 1;
        let members = &table.cluster(c).vms;
        let i = self.rr[c as usize] % members.len();
        self.rr[c as usize] += 1;
        members[i]
    }
}

#[cfg(test)]
mod tests {
    use super::report::Summary;
    use super::*;

    /// A quarter day on a tenth of the region, with the default's load per VM.
    pub(in crate::sim) fn small_day() -> SimOptions {
        SimOptions {
            starts: 25_000,
            edges: 6,
            clusters: 4,
            vms_per_cluster: 25,
            hours: 6.0,
            surge_start_h: 3.0,
            surge_hours: 1.0,
            ..SimOptions::default()
        }
    }

    /// A small day: the ordering the full run shows must already hold.
    #[test]
    fn subsetting_least_loaded_beats_random_and_the_cloud_lb() {
        let o = small_day();
        let run = |i: usize| Summary::of(&run_scenario(&o, &default_scenarios()[i], &mut |_| {}));
        let (ours, random, cloud) = (run(0), run(4), run(5));
        assert!(ours.containers.p50 > 0.0, "{ours:?}");
        assert!(
            ours.containers_ratio() < random.containers_ratio(),
            "least-loaded {ours:?} vs random {random:?}"
        );
        // The cloud LB fills clusters in order: steady state is its weak spot.
        assert!(
            ours.containers_ratio_before() < cloud.containers_ratio_before(),
            "least-loaded {ours:?} vs cloud {cloud:?}"
        );
        assert!(ours.containers.max < random.containers.max);
    }

    #[test]
    fn a_too_small_subset_overloads_vms_in_the_surge() {
        let o = small_day();
        let sc = default_scenarios();
        let good = Summary::of(&run_scenario(&o, &sc[0], &mut |_| {}));
        let small = Summary::of(&run_scenario(&o, &sc[6], &mut |_| {}));
        assert!(
            small.containers.max > 2.0 * good.containers.max,
            "subset 2: {small:?} vs 16: {good:?}"
        );
    }
}
