//! Criterion benchmarks of the routing decision (issue: <= 300 ns median for
//! a hosted-app decision over 1,000,000 repls in 3 regions and 50 clusters).
//!
//! The table is built once from [`edgeplane_bench::world::synthetic`]; the
//! edge is in `region-0`. Host strings are prepared up front and cycled, so
//! the loop measures the decision only: host canonicalisation, slug lookup,
//! the regional check, then the running VM, or the ring and the pick.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use edgeplane_bench::world::{region_name, synthetic, WorldShape};
use edgeplane_control_sync::table::Repl;
use edgeplane_control_sync::RoutingTable;
use edgeplane_core::balancer::{Balancer, BalancerParams, HealthMap, Policy};
use edgeplane_core::route::pick_memory::PickMemory;
use edgeplane_core::route::{decide, Decision, RouteContext, RouteRequest, VmReason};

const NOW: u64 = 1_800_000_000_000;
const HOSTS: usize = 4096;

/// A context whose balancer view covers `t`.
fn ctx(t: &RoutingTable) -> RouteContext {
    let cx = RouteContext {
        suffixes: vec!["repl.co".into()],
        workspace_prefix: "/__ws/".into(),
        tokens: edgeplane_core::route::Verifier::default(),
        workspace_origins: Vec::new(),
        max_hops: 2,
        memory: std::sync::Arc::new(PickMemory::new(10_000)),
        balancer: std::sync::Arc::new(Balancer::new(
            BalancerParams::default(),
            "edge-bench",
            Policy::LeastLoaded,
        )),
    };
    cx.balancer.refresh(t, &HealthMap::default(), NOW, true);
    cx
}

/// Up to HOSTS hosts (spelled `APP<i>.Repl.Co:443`) of repls for which
/// `want` holds; it gets None for an app of another region (held as a
/// world-directory name, not a row).
fn hosts(t: &RoutingTable, shape: WorldShape, want: impl Fn(Option<&Repl>) -> bool) -> Vec<String> {
    (0..shape.repls)
        .filter(|&i| want(t.repl_by_slug(&format!("app{i}"))))
        .take(HOSTS)
        .map(|i| format!("APP{i}.Repl.Co:443"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let shape = WorldShape::default();
    eprintln!(
        "building a world of {} repls in {} regions and {} clusters...",
        shape.repls, shape.regions, shape.clusters
    );
    let t0 = std::time::Instant::now();
    let snap = synthetic(shape, |i| format!("10.0.{}.{}:8000", i / 250, i % 250 + 1));
    let table = RoutingTable::build(&snap, &region_name(0), 1).unwrap();
    drop(snap);
    eprintln!("table built in {:?}", t0.elapsed());
    let local = table.local_region();
    let running = hosts(&table, shape, |r| {
        r.is_some_and(|r| r.region == local && r.vm.get().is_some())
    });
    let idle = hosts(&table, shape, |r| {
        r.is_some_and(|r| r.region == local && r.vm.get().is_none())
    });
    let foreign = hosts(&table, shape, |r| r.is_none_or(|r| r.region != local));
    let unknown: Vec<String> = (0..HOSTS).map(|i| format!("nope{i}.repl.co")).collect();

    let mut g = c.benchmark_group("route_decision_1M_repls");
    let mut run = |name: &str, hosts: &[String], dry_run: bool, check: fn(&Decision) -> bool| {
        let cx = ctx(&table);
        // Sanity: the path measured is the path named.
        let first = RouteRequest {
            host: Some(hosts[0].as_bytes()),
            path: "/",
            now_ms: NOW,
            dry_run,
            ..Default::default()
        };
        assert!(
            check(&decide(&cx, &table, &first, &(), &mut ())),
            "{name}: unexpected decision"
        );
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & (HOSTS - 1);
                let req = RouteRequest {
                    host: Some(hosts[i].as_bytes()),
                    path: "/",
                    now_ms: NOW,
                    dry_run,
                    ..Default::default()
                };
                black_box(decide(&cx, &table, black_box(&req), &(), &mut ()))
            })
        });
    };
    run("app_running_vm", &running, false, |d| {
        matches!(
            d,
            Decision::Vm {
                reason: VmReason::Running,
                ..
            }
        )
    });
    run("app_not_running_ring_and_pick", &idle, true, |d| {
        matches!(
            d,
            Decision::Vm {
                reason: VmReason::Picked,
                ..
            }
        )
    });
    run("app_not_running_remembered", &idle, false, |d| {
        matches!(d, Decision::Vm { .. })
    });
    run("app_other_region_forward", &foreign, false, |d| {
        matches!(d, Decision::Forward { .. })
    });
    run("unknown_host_404", &unknown, false, |d| {
        matches!(d, Decision::Reject { .. })
    });
    g.finish();

    let ring = table.ring(local);
    let ids: Vec<String> = (0..HOSTS).map(|i| format!("r{i}")).collect();
    let mut i = 0usize;
    c.bench_function("ring_lookup", |b| {
        b.iter(|| {
            i = (i + 1) & (HOSTS - 1);
            black_box(ring.lookup(black_box(&ids[i])))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
