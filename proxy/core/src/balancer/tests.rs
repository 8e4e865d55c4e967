//! Balancer unit tests over real routing tables built from snapshots.

use super::usability::{Outcome, Reading, Usability};
use super::*;
use crate::bits::splitmix64;
use edgeplane_placement::snapshot::Snapshot;

const STALE: u64 = 3_000;

fn params(k: usize) -> BalancerParams {
    BalancerParams {
        subset_size: k,
        subset_refresh_ms: 60_000,
        subset_hysteresis: 0.25,
        panic_threshold: 0.5,
        stale_after_ms: STALE,
        eject_after_failures: 3,
        eject_ms: 10_000,
        max_ejected_share: 0.25,
    }
}

/// One region, cluster `c` with `n` monitored VMs `vm-0..`; `draining`
/// lists VM numbers in state draining.
fn table(n: usize, draining: &[usize], version: u64) -> RoutingTable {
    let vms: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("vm-{i}"), "cluster": "c", "addr": format!("127.0.0.1:{}", 10000 + i),
                "metrics_addr": format!("127.0.0.1:{}", 20000 + i),
                "state": if draining.contains(&i) { "draining" } else { "active" }})
        })
        .collect();
    let snap: Snapshot = serde_json::from_value(serde_json::json!({
        "regions": [{"name": "r", "edge_addr": "127.0.0.1:1"}],
        "clusters": [{"name": "c", "region": "r", "state": "active", "weight": 100}],
        "vms": vms,
    }))
    .unwrap();
    RoutingTable::build(&snap, "r", version).unwrap()
}

fn hash_of(t: &RoutingTable, id: &str) -> u64 {
    t.vm(t.vm_by_id(id).unwrap()).id_hash
}

/// A health round where VM i reports `containers[i]` (None: scrape failed).
fn round(t: &RoutingTable, prev: &HealthMap, b: &Balancer, containers: &[Option<u32>], now: u64) -> HealthMap {
    let watched: Vec<u64> = (0..containers.len()).map(|i| hash_of(t, &format!("vm-{i}"))).collect();
    let outcomes = containers.iter().enumerate().map(|(i, c)| {
        let o = match c {
            Some(n) => Outcome::Ok(Reading {
                containers: *n,
                cpu: 0.0,
                ready: true,
                sampled_at_ms: now,
            }),
            None => Outcome::Err("connect"),
        };
        (watched[i], o)
    });
    prev.next(watched.clone(), outcomes.collect::<Vec<_>>(), &b.ledger, now)
}

fn chosen_id(t: &RoutingTable, c: &Choice) -> String {
    t.vm(c.vm).id.to_string()
}

#[test]
fn least_loaded_takes_the_emptiest_member_and_the_ledger_spreads() {
    let t = table(4, &[], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    let h = round(
        &t,
        &HealthMap::default(),
        &b,
        &[Some(10), Some(3), Some(7), Some(9)],
        1000,
    );
    assert!(b.refresh(&t, &h, 1000, false));
    assert!(!b.refresh(&t, &h, 1001, false), "nothing changed");
    let c = b.choose(&t, 0, 1).unwrap();
    assert_eq!(
        (chosen_id(&t, &c).as_str(), c.mode, c.members),
        ("vm-1", Mode::Normal, 4)
    );
    // Record 4 placements on vm-1: 3 + 4 = 7 ties vm-2, then vm-2 and vm-1 alternate.
    for _ in 0..4 {
        b.record(&b.choose(&t, 0, 1).unwrap());
    }
    let mut seen = std::collections::HashMap::new();
    for e in 0..6 {
        let c = b.choose(&t, 0, e).unwrap();
        b.record(&c);
        *seen.entry(chosen_id(&t, &c)).or_insert(0) += 1;
    }
    assert_eq!(seen.get("vm-0"), None, "{seen:?}");
    assert!(seen["vm-1"] >= 2 && seen["vm-2"] >= 2, "{seen:?}");
    // A new sample replaces "sample + ledger": the ledger counts from its mark.
    let h2 = round(&t, &h, &b, &[Some(0), Some(50), Some(50), Some(50)], 2000);
    b.refresh(&t, &h2, 2000, false);
    assert_eq!(chosen_id(&t, &b.choose(&t, 0, 1).unwrap()), "vm-0");
    assert_eq!(b.pick_counts().0[Policy::LeastLoaded.index()], 10);
}

#[test]
fn subset_limits_members_and_picks_stay_inside() {
    let t = table(100, &[], 1);
    for policy in Policy::ALL {
        let b = Balancer::new(params(8), "edge-a", policy);
        b.refresh(&t, &HealthMap::default(), 1000, false);
        let view = b.view();
        let members: Vec<Idx> = view.clusters[0].members.iter().map(|m| m.vm).collect();
        assert_eq!(members.len(), 8);
        for e in 0..200u64 {
            let c = b.choose(&t, 0, splitmix64(e)).unwrap();
            assert!(members.contains(&c.vm), "{policy:?} picked outside the subset");
            assert_eq!(c.policy, policy);
        }
    }
    // Round-robin visits every member in turn.
    let b = Balancer::new(params(8), "edge-a", Policy::RoundRobin);
    b.refresh(&t, &HealthMap::default(), 1000, false);
    let seen: std::collections::HashSet<Idx> = (0..8).map(|_| b.choose(&t, 0, 0).unwrap().vm).collect();
    assert_eq!(seen.len(), 8);
}

#[test]
fn stale_not_ready_and_draining_vms_get_no_new_repls() {
    let t = table(6, &[5], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    let h1 = round(
        &t,
        &HealthMap::default(),
        &b,
        &[Some(0), Some(9), Some(9), Some(9), Some(9), Some(0)],
        1000,
    );
    b.refresh(&t, &h1, 1000, false);
    assert_eq!(chosen_id(&t, &b.choose(&t, 0, 1).unwrap()), "vm-0");
    // vm-0 stops answering: kept until stale_after, then out.
    let h2 = round(&t, &h1, &b, &[None, Some(9), Some(9), Some(9), Some(9), Some(0)], 2000);
    b.refresh(&t, &h2, 2000, false);
    assert_eq!(chosen_id(&t, &b.choose(&t, 0, 1).unwrap()), "vm-0", "last sample kept");
    let h3 = round(&t, &h2, &b, &[None, Some(9), Some(9), Some(9), Some(9), Some(0)], 4500);
    b.refresh(&t, &h3, 4500, false);
    let view = b.view();
    let cv = &view.clusters[0];
    assert_eq!(
        (cv.active, cv.usable, cv.mode),
        (5, 4, Mode::Normal),
        "draining vm-5 is not active"
    );
    let vm0 = cv.vms.iter().find(|s| t.vm(s.vm).id.as_ref() == "vm-0").unwrap();
    assert_eq!((vm0.usability, vm0.member), (Usability::Stale, false));
    for e in 0..50 {
        let id = chosen_id(&t, &b.choose(&t, 0, e).unwrap());
        assert!(id != "vm-0" && id != "vm-5", "{id}");
    }
}

#[test]
fn every_scrape_failing_is_panic_mode_not_an_outage() {
    let t = table(4, &[3], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    let mut h = HealthMap::default();
    for now in [1000, 2000, 3000, 4000, 5000] {
        h = round(&t, &h, &b, &[None, None, None, None], now);
    }
    b.refresh(&t, &h, 5000, false);
    let view = b.view();
    let cv = &view.clusters[0];
    assert_eq!((cv.mode, cv.usable, cv.members.len()), (Mode::Panic, 0, 3));
    let c = b.choose(&t, 0, 7).unwrap();
    assert_eq!(c.mode, Mode::Panic);
    assert_ne!(chosen_id(&t, &c), "vm-3", "draining stays out even in panic");
    b.record(&c);
    assert_eq!(b.pick_counts().1, 1);
}

#[test]
fn connect_failures_eject_a_vm_capped_per_cluster() {
    let t = table(8, &[], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    let h = round(
        &t,
        &HealthMap::default(),
        &b,
        &[Some(0), Some(0), Some(5), Some(5), Some(5), Some(5), Some(5), Some(5)],
        1000,
    );
    b.refresh(&t, &h, 1000, false);
    for vm in ["vm-0", "vm-1"] {
        for _ in 0..3 {
            b.outliers.failure(hash_of(&t, vm));
        }
    }
    assert!(b.refresh(&t, &h, 1100, false), "a tripped outlier forces a rebuild");
    let view = b.view();
    let cv = &view.clusters[0];
    assert_eq!(cv.ejected, 2, "cap is 25% of 8");
    let ejected: Vec<&str> = cv
        .vms
        .iter()
        .filter(|s| s.usability == Usability::Ejected)
        .map(|s| t.vm(s.vm).id.as_ref())
        .collect();
    assert_eq!(ejected, ["vm-0", "vm-1"]);
    for e in 0..20 {
        let id = chosen_id(&t, &b.choose(&t, 0, e).unwrap());
        assert!(id != "vm-0" && id != "vm-1");
    }
    // A third failing VM is over the cap and stays in.
    for _ in 0..3 {
        b.outliers.failure(hash_of(&t, "vm-2"));
    }
    b.refresh(&t, &h, 1200, false);
    assert_eq!(b.view().clusters[0].ejected, 2);
    // The ejection ends after eject_ms.
    let h2 = round(
        &t,
        &h,
        &b,
        &[Some(0), Some(0), Some(5), Some(5), Some(5), Some(5), Some(5), Some(5)],
        11_200,
    );
    b.refresh(&t, &h2, 11_200, false);
    let view = b.view();
    assert!(view.clusters[0].ejected <= 1, "vm-0/1 are back, vm-2 may take a slot");
}

#[test]
fn a_vm_drained_after_the_view_was_built_is_not_picked() {
    let t1 = table(3, &[], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    let h = round(&t1, &HealthMap::default(), &b, &[Some(0), Some(5), Some(5)], 1000);
    b.refresh(&t1, &h, 1000, false);
    let t2 = table(3, &[0], 2);
    // The view still lists vm-0 as the emptiest member; the table says draining.
    let c = b.choose(&t2, 0, 3).unwrap();
    assert_ne!(chosen_id(&t2, &c), "vm-0");
    b.refresh(&t2, &h, 1001, false);
    assert_eq!(b.view().clusters[0].members.len(), 2);
}

#[test]
fn no_view_yet_falls_back_to_the_snapshot_and_empty_clusters_get_none() {
    let t = table(2, &[], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::P2c);
    let c = b.choose(&t, 0, 3).unwrap();
    assert_eq!(c.mode, Mode::Empty);
    let t_empty = table(2, &[0, 1], 1);
    b.refresh(&t_empty, &HealthMap::default(), 1000, false);
    assert!(b.choose(&t_empty, 0, 3).is_none());
}

#[test]
fn runtime_policy_switch_applies_to_the_next_pick() {
    let t = table(4, &[], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    b.refresh(&t, &HealthMap::default(), 1000, false);
    assert_eq!(b.choose(&t, 0, 1).unwrap().policy, Policy::LeastLoaded);
    b.set_policy(Policy::Random);
    assert_eq!(b.policy(), Policy::Random);
    assert_eq!(b.choose(&t, 0, 1).unwrap().policy, Policy::Random);
}
