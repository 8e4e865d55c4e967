//! Criterion benchmarks of the balancer (issue 4 targets): a pick with a
//! subset of 16 out of 1,000 VMs in one cluster (<= 1 µs), for every
//! policy, and the simulator placing 1,000,000 repl starts (<= 30 s).
//!
//! The pick runs `Balancer::choose` (size 1: the room check included) +
//! `Balancer::record` as the routing decision does, over a view built from
//! health samples of every VM (so least-loaded and p2c read real loads and
//! ledger counters).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use edgeplane_bench::sim::{default_scenarios, run_scenario, SimOptions};
use edgeplane_bench::world::{region_name, synthetic, WorldShape};
use edgeplane_control_sync::RoutingTable;
use edgeplane_core::balancer::usability::{Outcome, Reading};
use edgeplane_core::balancer::{Balancer, BalancerParams, HealthMap, Policy};

const NOW: u64 = 1_800_000_000_000;

fn pick(c: &mut Criterion) {
    let shape = WorldShape {
        repls: 0,
        regions: 1,
        clusters: 1,
        vms_per_cluster: 1000,
        running_every: 0,
    };
    let mut snap = synthetic(shape, |i| format!("10.0.{}.{}:8000", i / 250, i % 250 + 1));
    for (i, vm) in snap.vms.iter_mut().enumerate() {
        vm.metrics_addr = Some(format!("10.1.{}.{}:9100", i / 250, i % 250 + 1));
    }
    let table = RoutingTable::build(&snap, &region_name(0), 1).unwrap();
    let cluster = table.clusters().next().unwrap().0;
    let mut g = c.benchmark_group("balancer_pick_subset16_of_1000");
    for policy in Policy::ALL {
        let b = Balancer::new(BalancerParams::default(), "edge-bench", policy);
        let hashes: Vec<u64> = table.vms().map(|(_, v)| v.id_hash).collect();
        let outcomes: Vec<(u64, Outcome)> = hashes
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                let r = Reading {
                    containers: (i * 7 % 100) as u32,
                    units: Some((i * 7 % 100) as u32),
                    cpu: (i % 10) as f32 / 10.0,
                    ready: true,
                    sampled_at_ms: NOW,
                };
                (h, Outcome::Ok(r))
            })
            .collect();
        let health = HealthMap::default().next(hashes.iter().copied(), outcomes, &b.ledger, NOW);
        b.refresh(&table, &health, NOW, true);
        assert_eq!(b.view().clusters[cluster as usize].members.len(), 16);
        let mut e = 0u64;
        g.bench_function(policy.as_str(), |bench| {
            bench.iter(|| {
                e = e.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut choice = b.choose(&table, black_box(cluster), e, 1).unwrap();
                // Recorded as it is on the request path (one atomic add), at
                // zero units: millions of iterations would otherwise fill
                // every member and leave nothing to pick.
                choice.size = 0;
                b.record(&choice);
                black_box(choice)
            })
        });
    }
    g.finish();
}

fn sim(c: &mut Criterion) {
    let o = SimOptions::default();
    let scenario = &default_scenarios()[0];
    let mut g = c.benchmark_group("simulator");
    g.sample_size(10).measurement_time(Duration::from_secs(120));
    g.bench_function("1M_repl_starts_least_loaded_subset16", |b| {
        b.iter(|| black_box(run_scenario(&o, scenario, &mut |_| {}).starts))
    });
    g.finish();
}

criterion_group!(benches, pick, sim);
criterion_main!(benches);
