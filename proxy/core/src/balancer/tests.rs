//! Balancer unit tests over real routing tables built from snapshots.

use super::usability::{Outcome, Reading, ScrapeError, Usability};
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
    cluster_table(vms, version)
}

/// One region `r` with one cluster `c` holding these VM rows.
fn cluster_table(vms: Vec<serde_json::Value>, version: u64) -> RoutingTable {
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
                units: None,
                cpu: 0.0,
                ready: true,
                sampled_at_ms: now,
            }),
            None => Outcome::Err(ScrapeError::Connect),
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
    let c = b.choose(&t, 0, 1, 1).unwrap();
    assert_eq!(
        (chosen_id(&t, &c).as_str(), c.mode, c.members),
        ("vm-1", Mode::Normal, 4)
    );
    // Record 4 placements on vm-1: 3 + 4 = 7 ties vm-2, then vm-2 and vm-1 alternate.
    for _ in 0..4 {
        b.record(&b.choose(&t, 0, 1, 1).unwrap());
    }
    let mut seen = std::collections::HashMap::new();
    for e in 0..6 {
        let c = b.choose(&t, 0, e, 1).unwrap();
        b.record(&c);
        *seen.entry(chosen_id(&t, &c)).or_insert(0) += 1;
    }
    assert_eq!(seen.get("vm-0"), None, "{seen:?}");
    assert!(seen["vm-1"] >= 2 && seen["vm-2"] >= 2, "{seen:?}");
    // A new sample replaces "sample + ledger": the ledger counts from its mark.
    let h2 = round(&t, &h, &b, &[Some(0), Some(50), Some(50), Some(50)], 2000);
    b.refresh(&t, &h2, 2000, false);
    assert_eq!(chosen_id(&t, &b.choose(&t, 0, 1, 1).unwrap()), "vm-0");
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
            let c = b.choose(&t, 0, splitmix64(e), 1).unwrap();
            assert!(members.contains(&c.vm), "{policy:?} picked outside the subset");
            assert_eq!(c.policy, policy);
        }
    }
    // Round-robin visits every member in turn.
    let b = Balancer::new(params(8), "edge-a", Policy::RoundRobin);
    b.refresh(&t, &HealthMap::default(), 1000, false);
    let seen: std::collections::HashSet<Idx> = (0..8).map(|_| b.choose(&t, 0, 0, 1).unwrap().vm).collect();
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
    assert_eq!(chosen_id(&t, &b.choose(&t, 0, 1, 1).unwrap()), "vm-0");
    // vm-0 stops answering: kept until stale_after, then out.
    let h2 = round(&t, &h1, &b, &[None, Some(9), Some(9), Some(9), Some(9), Some(0)], 2000);
    b.refresh(&t, &h2, 2000, false);
    assert_eq!(
        chosen_id(&t, &b.choose(&t, 0, 1, 1).unwrap()),
        "vm-0",
        "last sample kept"
    );
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
        let id = chosen_id(&t, &b.choose(&t, 0, e, 1).unwrap());
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
    let c = b.choose(&t, 0, 7, 1).unwrap();
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
        let id = chosen_id(&t, &b.choose(&t, 0, e, 1).unwrap());
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
    let c = b.choose(&t2, 0, 3, 1).unwrap();
    assert_ne!(chosen_id(&t2, &c), "vm-0");
    b.refresh(&t2, &h, 1001, false);
    assert_eq!(b.view().clusters[0].members.len(), 2);
}

#[test]
fn no_view_yet_falls_back_to_the_snapshot_and_empty_clusters_get_none() {
    let t = table(2, &[], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::P2c);
    let c = b.choose(&t, 0, 3, 1).unwrap();
    assert_eq!(c.mode, Mode::Empty);
    let t_empty = table(2, &[0, 1], 1);
    b.refresh(&t_empty, &HealthMap::default(), 1000, false);
    assert!(b.choose(&t_empty, 0, 3, 1).is_none());
}

#[test]
fn runtime_policy_switch_applies_to_the_next_pick() {
    let t = table(4, &[], 1);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    b.refresh(&t, &HealthMap::default(), 1000, false);
    assert_eq!(b.choose(&t, 0, 1, 1).unwrap().policy, Policy::LeastLoaded);
    b.set_policy(Policy::Random);
    assert_eq!(b.policy(), Policy::Random);
    assert_eq!(b.choose(&t, 0, 1, 1).unwrap().policy, Policy::Random);
}

/// Cluster `c` with monitored VMs of the given capacities (`vm-0..`).
fn sized_table(capacities: &[u32]) -> RoutingTable {
    let vms: Vec<_> = capacities
        .iter()
        .enumerate()
        .map(|(i, cap)| {
            serde_json::json!({"id": format!("vm-{i}"), "cluster": "c", "addr": format!("127.0.0.1:{}", 10000 + i),
                "metrics_addr": format!("127.0.0.1:{}", 20000 + i), "state": "active", "capacity": cap})
        })
        .collect();
    cluster_table(vms, 1)
}

/// A health round where VM i reports `units[i]` reserved units (and as
/// many containers), or only containers when `reported` is false.
fn units_round(t: &RoutingTable, b: &Balancer, units: &[u32], reported: bool, now: u64) -> HealthMap {
    let watched: Vec<u64> = (0..units.len()).map(|i| hash_of(t, &format!("vm-{i}"))).collect();
    let outcomes: Vec<_> = units
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            let r = Reading {
                containers: u,
                units: reported.then_some(u),
                cpu: 0.0,
                ready: true,
                sampled_at_ms: now,
            };
            (watched[i], Outcome::Ok(r))
        })
        .collect();
    HealthMap::default().next(watched, outcomes, &b.ledger, now)
}

#[test]
fn load_is_a_share_of_capacity_and_big_repls_only_go_where_they_fit() {
    // vm-0 holds 100 units, vm-1 400; both hold 50.
    let t = sized_table(&[100, 400]);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    let h = units_round(&t, &b, &[50, 50], true, 1000);
    b.refresh(&t, &h, 1000, true);
    // Size 1: the big VM is an eighth full, the small one half.
    let c = b.choose(&t, 0, 7, 1).unwrap();
    assert_eq!(chosen_id(&t, &c), "vm-1");
    assert_eq!((c.reserved, c.capacity, c.load), (50, 400, LOAD_ONE / 8));
    // Size 150: never the small VM, whatever the policy.
    for policy in Policy::ALL {
        b.set_policy(policy);
        for e in 0..20 {
            let c = b.choose(&t, 0, splitmix64(e), 150).unwrap();
            assert_eq!(chosen_id(&t, &c), "vm-1", "{policy:?}");
        }
    }
    b.set_policy(Policy::LeastLoaded);
    // Two size-150 placements fill the big VM to 350: a third does not fit,
    // and the cluster is full for it while size-1 repls still land.
    b.record(&b.choose(&t, 0, 1, 150).unwrap());
    b.record(&b.choose(&t, 0, 1, 150).unwrap());
    assert_eq!(b.choose(&t, 0, 1, 150), None, "full for 150");
    let small = b.choose(&t, 0, 1, 1).unwrap();
    assert_eq!(chosen_id(&t, &small), "vm-0", "350/400 is fuller than 50/100");
    // A new scrape says the big VM freed its units: room again.
    let h2 = units_round(&t, &b, &[50, 100], true, 2000);
    b.refresh(&t, &h2, 2000, true);
    assert_eq!(chosen_id(&t, &b.choose(&t, 0, 1, 150).unwrap()), "vm-1");
}

#[test]
fn container_count_stands_in_for_units_a_vm_does_not_report() {
    let t = sized_table(&[100, 100]);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    let h = units_round(&t, &b, &[95, 20], false, 1000);
    b.refresh(&t, &h, 1000, true);
    let view = b.view();
    let cv = &view.clusters[0];
    assert!(cv.vms.iter().all(|s| !s.units_reported));
    assert_eq!(cv.vms[0].units, 95);
    // 95 containers of 100 units: no room for 10.
    for e in 0..20 {
        assert_eq!(chosen_id(&t, &b.choose(&t, 0, e, 10).unwrap()), "vm-1");
    }
    let st = cv.standing(&cv.vms[0], &b.ledger);
    assert_eq!((st.reserved, st.room, st.not_candidate), (95, 5, None));
}

#[test]
fn a_repl_no_subset_member_can_hold_spills_to_the_rest_of_the_cluster() {
    // Subset of 2 out of 6 VMs: whichever two this edge got, only the
    // unique big VM fits size 300.
    let t = sized_table(&[100, 100, 100, 100, 100, 500]);
    let b = Balancer::new(params(2), "edge-a", Policy::P2c);
    let h = units_round(&t, &b, &[0, 0, 0, 0, 0, 0], true, 1000);
    b.refresh(&t, &h, 1000, true);
    let view = b.view();
    let in_subset = view.clusters[0]
        .members
        .iter()
        .any(|m| t.vm(m.vm).id.as_ref() == "vm-5");
    let c = b.choose(&t, 0, 3, 300).unwrap();
    assert_eq!(chosen_id(&t, &c), "vm-5");
    assert_eq!(c.fit, if in_subset { Fit::Member } else { Fit::Spill });
    b.record(&c);
    assert_eq!(b.size_pick_counts().0, u64::from(!in_subset));
    assert_eq!(b.choose(&t, 0, 3, 300), None, "200 left");
}

#[test]
fn panic_mode_places_past_capacity_rather_than_refuse() {
    let t = sized_table(&[10, 10, 10, 10]);
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    // Full VMs, then every scrape goes stale: panic mode.
    let h = units_round(&t, &b, &[10, 10, 10, 9], true, 1000);
    b.refresh(&t, &h, 1000, true);
    assert_eq!(
        b.choose(&t, 0, 1, 1).map(|c| chosen_id(&t, &c)).as_deref(),
        Some("vm-3")
    );
    assert_eq!(b.choose(&t, 0, 1, 2), None, "normal mode: full");
    b.refresh(&t, &h, 1000 + STALE + 1, true);
    assert_eq!(b.view().clusters[0].mode, Mode::Panic);
    let c = b.choose(&t, 0, 1, 2).unwrap();
    assert_eq!((chosen_id(&t, &c).as_str(), c.fit), ("vm-3", Fit::OverCapacity));
    b.record(&c);
    assert_eq!(b.size_pick_counts().1, 1);
}

#[test]
fn before_any_view_the_snapshot_units_decide_room() {
    let snap: Snapshot = serde_json::from_value(serde_json::json!({
        "regions": [{"name": "r", "edge_addr": "127.0.0.1:1"}],
        "clusters": [{"name": "c", "region": "r", "state": "active"}],
        "vms": [{"id": "small", "cluster": "c", "addr": "127.0.0.1:1", "state": "active", "capacity": 10},
                {"id": "big", "cluster": "c", "addr": "127.0.0.1:2", "state": "active", "capacity": 40}],
        "repls": [{"id": "a", "slug": "a", "region": "r", "size": 30}],
        "containers": [{"repl_id": "a", "vm_id": "big"}],
    }))
    .unwrap();
    let t = RoutingTable::build(&snap, "r", 1).unwrap();
    let b = Balancer::new(params(16), "edge-a", Policy::LeastLoaded);
    let c = b.choose(&t, 0, 1, 8).unwrap();
    assert_eq!((chosen_id(&t, &c).as_str(), c.mode), ("small", Mode::Empty));
    assert_eq!(b.choose(&t, 0, 1, 11), None, "small holds 10, big has 10 left");
}
