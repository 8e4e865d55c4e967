//! Tests of full builds and deltas.

use super::*;
use crate::directory::{Name, OwnedName};

pub(crate) fn demo() -> Snapshot {
    serde_json::from_str(
        r#"{"regions": [{"name": "us-east1", "edge_addr": "127.0.0.1:8080"},
                        {"name": "ap-south1", "edge_addr": "127.0.0.1:8081"}],
            "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"},
                         {"name": "use1-b", "region": "us-east1", "state": "draining", "weight": 50},
                         {"name": "aps1-a", "region": "ap-south1", "state": "active"}],
            "vms": [{"id": "vm-1", "cluster": "use1-a", "addr": "127.0.0.1:7001", "state": "active"},
                    {"id": "vm-2", "cluster": "use1-a", "addr": "127.0.0.1:7002", "state": "active"},
                    {"id": "vm-3", "cluster": "aps1-a", "addr": "127.0.0.1:7003", "metrics_addr": "127.0.0.1:7103", "state": "active"}],
            "repls": [{"id": "r1", "slug": "app1", "owner": "u1", "region": "us-east1"},
                      {"id": "r2", "slug": "app2", "region": "us-east1", "cluster": "use1-a", "transfer_to": "use1-b"},
                      {"id": "r4", "slug": "moved", "region": "ap-south1"}],
            "containers": [{"repl_id": "r1", "vm_id": "vm-2", "started_at": "2026-01-01T00:00:00Z"}],
            "custom_domains": [{"hostname": "WWW.Example.com.", "repl_id": "r1"}],
            "tombstones": [{"repl_id": "r4", "from_cluster": "use1-a", "to_cluster": "aps1-a",
                            "expires_at": "2030-01-01T00:00:00Z"}]}"#,
    )
    .unwrap()
}

fn build() -> RoutingTable {
    RoutingTable::build(&demo(), "us-east1", 7).unwrap()
}

#[test]
fn builds_and_indexes_everything() {
    let t = build();
    assert_eq!(t.version(), 7);
    assert_eq!(t.counts().repls, 3);
    let r1 = t.repl_by_slug("app1").unwrap();
    assert_eq!(r1.id(), "r1");
    assert_eq!(t.repl_by_id("r1").unwrap().slug(), "app1");
    assert_eq!(
        t.repl_by_domain("www.example.com").unwrap().id(),
        "r1",
        "hostnames are normalised"
    );
    assert_eq!(&*t.vm(r1.vm.get().unwrap()).id, "vm-2");
    assert_eq!(t.containers_on(t.vm_by_id("vm-2").unwrap()), 1);
    assert_eq!(t.tombstones("r4").len(), 1);
    assert_eq!(t.tombstones("r1"), &[]);
    assert_eq!(&*t.region(t.local_region()).name, "us-east1");
    // The ring spans only active clusters of the region.
    assert_eq!(
        t.ring(t.local_region()).member_ids(),
        &[t.cluster_by_name("use1-a").unwrap()]
    );
    assert!(t.repl_by_slug("nope").is_none() && t.repl_by_id("nope").is_none());
    // Balancer candidates carry the container counts.
    let c = t.candidates(t.cluster_by_name("use1-a").unwrap());
    assert_eq!(c.iter().map(|c| c.containers).collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn dump_round_trips() {
    let t = build();
    let mut expected = demo();
    expected.custom_domains[0].hostname = "www.example.com".into();
    // started_at is validated but not kept by the edge.
    expected.containers[0].started_at = None;
    let mut dumped = t.to_snapshot();
    let dir = dumped
        .directory
        .take()
        .expect("moved (homed elsewhere) is a directory name too");
    assert_eq!(dir.entries, 1);
    assert_eq!(dumped, expected);
}

fn err_of(f: impl FnOnce(&mut Snapshot)) -> String {
    let mut s = demo();
    f(&mut s);
    RoutingTable::build(&s, "us-east1", 1).unwrap_err().to_string()
}

#[test]
fn rejects_bad_rows_naming_them() {
    assert_eq!(
        err_of(|s| s.vms[1].cluster = "use1-z".into()),
        "vms[1] (\"vm-2\"): cluster \"use1-z\" does not exist"
    );
    assert_eq!(
        err_of(|s| s.repls[1].slug = "app1".into()),
        "repls[1] (\"r2\"): slug \"app1\" is already used by repl \"r1\""
    );
    assert_eq!(
        err_of(|s| s.repls[2].id = "r1".into()),
        "repls[2] (\"r1\"): duplicate repl id"
    );
    assert_eq!(
        err_of(|s| s.vms[0].addr = "local host:7001".into()),
        "vms[0] (\"vm-1\"): addr \"local host:7001\" is not an ip:port or host:port address"
    );
    assert_eq!(
        err_of(|s| s.regions[1].edge_addr = "1.2.3.4".into()),
        "regions[1] (\"ap-south1\"): edge_addr \"1.2.3.4\" is not an ip:port or host:port address"
    );
    assert!(err_of(|s| s.repls[0].slug = "App_1".into()).contains("not a DNS label"));
    assert!(err_of(|s| s.repls[0].cluster = Some("aps1-a".into())).contains("not in region"));
    assert!(err_of(|s| s.containers.push(ContainerRow {
        repl_id: "r1".into(),
        vm_id: "vm-1".into(),
        started_at: None
    }))
    .contains("at most one"));
    assert!(err_of(|s| s.containers[0].vm_id = "vm-9".into()).contains("vm \"vm-9\" does not exist"));
    assert!(err_of(|s| s.tombstones[0].expires_at = "soon".into()).contains("not RFC 3339"));
    assert!(err_of(|s| s.custom_domains[0].repl_id = "r9".into()).contains("does not exist"));
    assert!(err_of(|s| s.clusters[0].weight = 5000).contains("weight"));
    assert_eq!(
        err_of(|s| {
            s.regions.remove(1);
        }),
        "clusters[2] (\"aps1-a\"): region \"ap-south1\" does not exist"
    );
}

#[test]
fn unknown_local_region_is_an_error() {
    let e = RoutingTable::build(&demo(), "eu-west9", 1).unwrap_err();
    assert_eq!(e, SnapshotError::UnknownLocalRegion("eu-west9".into()));
}

#[test]
fn lenient_build_skips_bad_rows_with_reasons() {
    let mut s = demo();
    s.vms[0].addr = "nope".into();
    s.repls.push(ReplRow {
        id: "r9".into(),
        slug: "app1".into(),
        owner: None,
        region: "us-east1".into(),
        cluster: None,
        transfer_to: None,
        size: 1,
    });
    let (t, skipped) = RoutingTable::build_with(&s, "us-east1", 1, Strictness::Lenient).unwrap();
    let reasons: Vec<_> = skipped.examples.iter().map(|e| (e.table, e.reason.as_str())).collect();
    assert_eq!(reasons, vec![("vms", "bad_address"), ("repls", "duplicate")]);
    assert_eq!(skipped.counts.get(&("vms", "bad_address")), Some(&1));
    assert_eq!(skipped.total(), 2);
    assert_eq!(t.counts().repls, 3);
    assert_eq!(t.counts().vms, 2);
}

#[test]
fn slug_and_hostname_rules() {
    assert!(is_valid_slug("a") && is_valid_slug("my-app-2"));
    assert!(!is_valid_slug("") && !is_valid_slug("-a") && !is_valid_slug("a.b") && !is_valid_slug("A"));
    assert!(!is_valid_slug(&"a".repeat(64)));
    assert!(is_valid_hostname("www.example.com") && !is_valid_hostname("localhost") && !is_valid_hostname("a..b"));
}

fn repl(id: &str, slug: &str, region: &str) -> ReplRow {
    ReplRow {
        id: id.into(),
        slug: slug.into(),
        owner: None,
        region: region.into(),
        cluster: None,
        transfer_to: None,
        size: 1,
    }
}

#[test]
fn delta_changes_a_new_table_and_leaves_the_published_one() {
    let t = build();
    let (t2, skipped) = t
        .apply(
            [
                Change::UpsertRepl(repl("r5", "fresh", "us-east1")),
                Change::UpsertContainer(ContainerRow {
                    repl_id: "r5".into(),
                    vm_id: "vm-1".into(),
                    started_at: None,
                }),
                Change::DeleteContainer("r1".into()),
                Change::UpsertDomain(CustomDomainRow {
                    hostname: "shop.example.org".into(),
                    repl_id: "r5".into(),
                }),
                Change::DeleteTombstone {
                    repl_id: "r4".into(),
                    from_cluster: "use1-a".into(),
                },
            ],
            8,
            Strictness::Lenient,
        )
        .unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(t2.version(), 8);
    // New table.
    let r5 = t2.repl_by_slug("fresh").unwrap();
    assert_eq!(&*t2.vm(r5.vm.get().unwrap()).id, "vm-1");
    assert!(t2.repl_by_slug("app1").unwrap().vm.get().is_none());
    assert_eq!(t2.repl_by_domain("shop.example.org").unwrap().id(), "r5");
    assert!(t2.tombstones("r4").is_empty());
    let cands = t2.candidates(t2.cluster_by_name("use1-a").unwrap());
    assert_eq!(
        cands.iter().map(|c| c.containers).collect::<Vec<_>>(),
        vec![1, 0],
        "load moved vm-2 -> vm-1"
    );
    assert_eq!(t2.counts().containers, 1);
    // Published table unchanged.
    assert!(t.repl_by_slug("fresh").is_none());
    assert_eq!(&*t.vm(t.repl_by_slug("app1").unwrap().vm.get().unwrap()).id, "vm-2");
    assert_eq!(t.tombstones("r4").len(), 1);
    assert_eq!(t.version(), 7);
}

#[test]
fn repl_update_renames_slug_and_keeps_its_container() {
    let t = build();
    let mut r1 = repl("r1", "renamed", "us-east1");
    r1.cluster = Some("use1-a".into());
    let (t2, _) = t.apply([Change::UpsertRepl(r1)], 8, Strictness::Lenient).unwrap();
    assert!(t2.repl_by_slug("app1").is_none());
    let r = t2.repl_by_slug("renamed").unwrap();
    assert_eq!(&*t2.vm(r.vm.get().unwrap()).id, "vm-2", "container survives the rename");
    assert_eq!(t2.repl_by_id("r1").unwrap().slug(), "renamed");
    assert_eq!(t2.repl_by_domain("www.example.com").unwrap().slug(), "renamed");
    assert_eq!(t2.counts().repls, 3);
    let (t3, _) = t2
        .apply([Change::DeleteRepl("r1".into())], 9, Strictness::Lenient)
        .unwrap();
    assert!(t3.repl_by_id("r1").is_none() && t3.repl_by_slug("renamed").is_none());
    assert_eq!(t3.counts().containers, 0);
}

#[test]
fn cluster_and_vm_changes_rebuild_rings_and_candidates() {
    let t = build();
    let local = t.local_region();
    let (t2, skipped) = t
        .apply(
            [
                Change::UpsertCluster(ClusterRow {
                    name: "use1-b".into(),
                    region: "us-east1".into(),
                    state: ClusterState::Active,
                    weight: 50,
                }),
                Change::UpsertVm(VmRow {
                    id: "vm-4".into(),
                    cluster: "use1-b".into(),
                    addr: "127.0.0.1:7004".into(),
                    metrics_addr: None,
                    state: VmState::Active,
                    capacity: 100,
                }),
                Change::UpsertVm(VmRow {
                    id: "vm-1".into(),
                    cluster: "use1-a".into(),
                    addr: "127.0.0.1:7001".into(),
                    metrics_addr: None,
                    state: VmState::Draining,
                    capacity: 100,
                }),
            ],
            8,
            Strictness::Strict,
        )
        .unwrap();
    assert!(skipped.is_empty());
    assert_eq!(t2.ring(local).member_ids().len(), 2, "use1-b joined the ring");
    assert_eq!(t.ring(local).member_ids().len(), 1, "old table keeps its ring");
    let a = t2.candidates(t2.cluster_by_name("use1-a").unwrap());
    assert_eq!(
        a.iter().map(|c| &*t2.vm(c.vm).id).collect::<Vec<_>>(),
        vec!["vm-2"],
        "draining vm-1 left"
    );
    let b = t2.candidates(t2.cluster_by_name("use1-b").unwrap());
    assert_eq!(b.len(), 1);
    let (t3, _) = t2
        .apply([Change::DeleteVm("vm-4".into())], 9, Strictness::Strict)
        .unwrap();
    assert!(t3.candidates(t3.cluster_by_name("use1-b").unwrap()).is_empty());
    assert!(t3.vm_by_id("vm-4").is_none());
    assert_eq!(t3.counts().vms, 3);
    assert_eq!(
        t3.ring(local).member_ids(),
        &[t3.cluster_by_name("use1-a").unwrap()],
        "use1-b lost its only VM, and its share of the ring with it"
    );
}

fn vm_row(id: &str, cluster: &str, state: VmState) -> VmRow {
    VmRow {
        id: id.into(),
        cluster: cluster.into(),
        addr: "127.0.0.1:7009".into(),
        metrics_addr: None,
        state,
        capacity: 100,
    }
}

/// `placectl add-cluster` without VMs: the new cluster is active with its
/// weight but gets no repl from the ring (each would be refused
/// `no_usable_vm`) until its first active VM arrives; a VM that is only
/// draining or down does not count.
#[test]
fn a_cluster_takes_new_repls_only_once_it_has_an_active_vm() {
    let t = build();
    let local = t.local_region();
    let a = t.cluster_by_name("use1-a").unwrap();
    let new_cluster = Change::UpsertCluster(ClusterRow {
        name: "use1-c".into(),
        region: "us-east1".into(),
        state: ClusterState::Active,
        weight: 100,
    });
    let (t2, _) = t.apply([new_cluster], 8, Strictness::Strict).unwrap();
    assert_eq!(t2.ring(local).member_ids(), &[a], "no VM, no share");
    let (t3, _) = t2
        .apply(
            [Change::UpsertVm(vm_row("vm-9", "use1-c", VmState::Down))],
            9,
            Strictness::Strict,
        )
        .unwrap();
    assert_eq!(t3.ring(local).member_ids(), &[a], "a down VM places nothing");
    let (t4, _) = t3
        .apply(
            [Change::UpsertVm(vm_row("vm-9", "use1-c", VmState::Active))],
            10,
            Strictness::Strict,
        )
        .unwrap();
    let c = t4.cluster_by_name("use1-c").unwrap();
    assert_eq!(
        t4.ring(local).member_ids().len(),
        2,
        "its first active VM puts it on the ring"
    );
    assert!(t4.ring(local).member_ids().contains(&c));
    // A snapshot with the VM-less cluster builds the same ring as deltas do.
    let mut snap = demo();
    snap.clusters.push(ClusterRow {
        name: "use1-c".into(),
        region: "us-east1".into(),
        state: ClusterState::Active,
        weight: 100,
    });
    let full = RoutingTable::build(&snap, "us-east1", 8).unwrap();
    assert_eq!(full.ring(full.local_region()).member_ids().len(), 1);
}

#[test]
fn bad_delta_rows_are_skipped_in_lenient_mode() {
    let t = build();
    let (t2, skipped) = t
        .apply(
            [
                Change::UpsertContainer(ContainerRow {
                    repl_id: "ghost".into(),
                    vm_id: "vm-1".into(),
                    started_at: None,
                }),
                Change::UpsertRepl(repl("r6", "app1", "us-east1")),
                Change::UpsertRepl(repl("r7", "ok", "us-east1")),
            ],
            8,
            Strictness::Lenient,
        )
        .unwrap();
    assert_eq!(
        skipped.examples.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
        vec!["dangling_reference", "duplicate"]
    );
    assert!(t2.repl_by_slug("ok").is_some());
    assert_eq!(t2.repl_by_slug("app1").unwrap().id(), "r1");
    assert!(t
        .apply(
            [Change::UpsertRepl(repl("r6", "app1", "us-east1"))],
            8,
            Strictness::Strict
        )
        .is_err());
}

#[test]
fn edge_deltas_ignore_rows_that_are_not_this_edges() {
    let t = build();
    let (t2, skipped) = t
        .apply_for_edge(
            [
                // Unknown repl homed elsewhere: not ours.
                Change::UpsertRepl(repl("r8", "far", "ap-south1")),
                Change::UpsertContainer(ContainerRow {
                    repl_id: "r8".into(),
                    vm_id: "vm-3".into(),
                    started_at: None,
                }),
                // Known repl moving away: applied (now forwarded).
                Change::UpsertRepl(repl("r1", "app1", "ap-south1")),
                // A repl arriving here: applied.
                Change::UpsertRepl(repl("r9", "arrived", "us-east1")),
                // Tombstone from a cluster of another region: not ours.
                Change::UpsertTombstone(TombstoneRow {
                    repl_id: "r9".into(),
                    from_cluster: "aps1-a".into(),
                    to_cluster: "use1-a".into(),
                    expires_at: "2030-01-01T00:00:00Z".into(),
                }),
            ],
            8,
        )
        .unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(t2.repl_by_slug("far").is_none());
    assert_eq!(
        t2.region(t2.repl_by_slug("app1").unwrap().region).name.as_ref(),
        "ap-south1"
    );
    assert!(t2.repl_by_slug("arrived").is_some());
    assert!(t2.tombstones("r9").is_empty());
}

#[test]
fn addresses_may_be_host_names() {
    let mut s = demo();
    s.regions[1].edge_addr = "Edge.AP-South1.internal.:8443".into();
    s.vms[1].addr = "vm-2.use1.internal:7002".into();
    let t = RoutingTable::build(&s, "us-east1", 1).unwrap();
    let r = t.region(t.region_by_name("ap-south1").unwrap());
    assert_eq!(
        r.edge,
        Endpoint::Name {
            host: "edge.ap-south1.internal".into(),
            port: 8443
        },
        "lower-cased, root dot dropped; the address waits for the resolver"
    );
    assert_eq!(r.edge.resolve(&()), None, "nothing resolves a name here");
    let names: Vec<String> = t.dial_names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["edge.ap-south1.internal", "vm-2.use1.internal"]);
    let back = t.to_snapshot();
    assert_eq!(
        back.regions[1].edge_addr, "edge.ap-south1.internal:8443",
        "dumped as written"
    );
    assert_eq!(back.vms[1].addr, "vm-2.use1.internal:7002");

    for bad in [
        "no_underscores.example:80",
        "host:0",
        ":80",
        "host",
        "0.0.0.0:80",
        "host:99999",
    ] {
        let mut s = demo();
        s.vms[0].addr = bad.into();
        let e = RoutingTable::build(&s, "us-east1", 1).unwrap_err();
        assert!(
            e.to_string().contains("is not an ip:port or host:port address"),
            "{bad}: {e}"
        );
    }
}

/// The demo plus other regions' apps (one with a custom domain) and a
/// third region.
fn world() -> Snapshot {
    let mut s = demo();
    s.regions.push(RegionRow {
        name: "eu-west1".into(),
        edge_addr: "127.0.0.1:8082".into(),
    });
    s.repls.push(repl("r6", "far", "ap-south1"));
    s.repls.push(repl("r7", "euro", "eu-west1"));
    s.containers.push(ContainerRow {
        repl_id: "r6".into(),
        vm_id: "vm-3".into(),
        started_at: None,
    });
    s.custom_domains.push(CustomDomainRow {
        hostname: "Shop.Example.ORG.".into(),
        repl_id: "r6".into(),
    });
    s.tombstones.push(TombstoneRow {
        repl_id: "r6".into(),
        from_cluster: "aps1-a".into(),
        to_cluster: "aps1-a".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
    });
    s
}

fn home<'t>(t: &'t RoutingTable, name: Name<'_>) -> Option<&'t str> {
    t.home_region(name).map(|r| &*t.region(r).name)
}

#[test]
fn other_regions_apps_become_directory_names_with_their_domains() {
    let t = RoutingTable::build(&world(), "us-east1", 1).unwrap();
    let c = t.counts();
    assert_eq!(
        (c.repls, c.directory),
        (3, 4),
        "r1, r2 and r4 (tombstoned from here) whole; moved, far, euro, shop by name"
    );
    assert_eq!(c.containers, 1, "another region's container is not this edge's row");
    assert_eq!(c.custom_domains, 1, "only www.example.com is held whole");
    assert!(t.repl_by_slug("far").is_none() && t.repl_by_id("r6").is_none());
    assert_eq!(home(&t, Name::Slug("far")), Some("ap-south1"));
    assert_eq!(home(&t, Name::Slug("euro")), Some("eu-west1"));
    assert_eq!(home(&t, Name::Domain("shop.example.org")), Some("ap-south1"));
    assert_eq!(home(&t, Name::Slug("app1")), None, "local apps are rows, not names");
    assert_eq!(
        home(&t, Name::Slug("shop.example.org")),
        None,
        "slugs and domains do not mix"
    );
    assert!(
        t.repl_by_slug("moved").is_some(),
        "a tombstone from here keeps the whole row"
    );
    // Another region's edge holds this region's apps as names.
    let a = RoutingTable::build(&world(), "ap-south1", 1).unwrap();
    assert_eq!(home(&a, Name::Slug("app1")), Some("us-east1"));
    assert_eq!(home(&a, Name::Domain("www.example.com")), Some("us-east1"));
    assert!(a.repl_by_slug("far").is_some());
}

#[test]
fn strict_loads_still_refuse_duplicates_across_regions() {
    let mut s = world();
    s.repls[4].slug = "app1".into();
    let e = RoutingTable::build(&s, "us-east1", 1).unwrap_err().to_string();
    assert_eq!(e, "repls[4] (\"r7\"): slug \"app1\" is already used by repl \"r1\"");
}

#[test]
fn a_written_table_reads_back_with_its_directory() {
    let t = RoutingTable::build(&world(), "us-east1", 4).unwrap();
    let mut json = Vec::new();
    t.write_json(&mut json).unwrap();
    let back: Snapshot = serde_json::from_slice(&json).unwrap();
    assert!(back.directory.is_some());
    let (again, skipped) = RoutingTable::build_with(&back, "us-east1", 4, Strictness::Lenient).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(again.counts(), t.counts());
    for n in [Name::Slug("far"), Name::Slug("euro"), Name::Domain("shop.example.org")] {
        assert_eq!(home(&again, n), home(&t, n), "{n:?}");
    }
    assert_eq!(again.to_snapshot(), t.to_snapshot());
}

#[test]
fn edge_deltas_keep_the_directory_current() {
    let t = RoutingTable::build(&world(), "us-east1", 1).unwrap();
    let dname = |n: &str| OwnedName::Domain(n.into());
    let (t2, skipped) = t
        .apply_for_edge(
            [
                // Created in another region, then given a custom domain (the
                // sync reads the domain's home region).
                Change::UpsertRepl(repl("r8", "newbie", "eu-west1")),
                Change::UpsertDomain(CustomDomainRow {
                    hostname: "new.example.net".into(),
                    repl_id: "r8".into(),
                }),
                Change::UpsertDirectory {
                    name: dname("new.example.net"),
                    region: "eu-west1".into(),
                },
                // Renamed: the decoder forgets the old slug first.
                Change::DeleteDirectory(OwnedName::Slug("euro".into())),
                Change::UpsertRepl(repl("r7", "euro2", "eu-west1")),
                // Moved between two other regions.
                Change::UpsertRepl(repl("r6", "far", "eu-west1")),
                Change::UpsertDirectory {
                    name: dname("shop.example.org"),
                    region: "eu-west1".into(),
                },
                // A local app's domain moves to another region's app.
                Change::UpsertDomain(CustomDomainRow {
                    hostname: "www.example.com".into(),
                    repl_id: "r8".into(),
                }),
                Change::UpsertDirectory {
                    name: dname("www.example.com"),
                    region: "eu-west1".into(),
                },
            ],
            2,
        )
        .unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(home(&t2, Name::Slug("newbie")), Some("eu-west1"));
    assert_eq!(home(&t2, Name::Domain("new.example.net")), Some("eu-west1"));
    assert_eq!(home(&t2, Name::Slug("euro")), None);
    assert_eq!(home(&t2, Name::Slug("euro2")), Some("eu-west1"));
    assert_eq!(home(&t2, Name::Slug("far")), Some("eu-west1"));
    assert_eq!(home(&t2, Name::Domain("shop.example.org")), Some("eu-west1"));
    assert!(
        t2.repl_by_domain("www.example.com").is_none(),
        "no longer a local app's domain"
    );
    assert_eq!(home(&t2, Name::Domain("www.example.com")), Some("eu-west1"));
    assert!(t2.repl_by_slug("newbie").is_none(), "held by name only");
    // The published table did not change.
    assert_eq!(home(&t, Name::Slug("euro")), Some("eu-west1"));
    assert_eq!(home(&t, Name::Slug("newbie")), None);

    // Arriving here: a whole row (the sync brings its rows), not a name;
    // deleted elsewhere: gone.
    let (t3, skipped) = t2
        .apply_for_edge(
            [
                Change::UpsertRepl(repl("r8", "newbie", "us-east1")),
                Change::DeleteRepl("r7".into()),
                Change::DeleteDirectory(OwnedName::Slug("euro2".into())),
                Change::DeleteDomain("shop.example.org".into()),
            ],
            3,
        )
        .unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(t3.repl_by_slug("newbie").map(|r| r.id()), Some("r8"));
    assert_eq!(home(&t3, Name::Slug("newbie")), None);
    assert_eq!(home(&t3, Name::Slug("euro2")), None);
    assert_eq!(home(&t3, Name::Domain("shop.example.org")), None);
    assert_eq!(t3.counts().directory, 4, "moved, far, new.example.net, www.example.com");
}

#[test]
fn capacity_and_size_default_and_bad_values_are_rejected_or_skipped() {
    let t = build();
    let vm1 = t.vm_by_id("vm-1").unwrap();
    assert_eq!(t.vm(vm1).capacity, 100, "default capacity");
    assert_eq!(t.repl_by_id("r1").unwrap().size, 1, "default size");
    assert_eq!(
        err_of(|s| s.vms[0].capacity = 0),
        "vms[0] (\"vm-1\"): capacity 0 is not between 1 and 1000000"
    );
    assert_eq!(
        err_of(|s| s.repls[0].size = -2),
        "repls[0] (\"r1\"): size -2: it must be at least 1"
    );
    // us-east1's largest VM holds 100: a repl of 101 could never be placed.
    assert_eq!(
        err_of(|s| s.repls[0].size = 101),
        "repls[0] (\"r1\"): size 101: no VM of region \"us-east1\" holds more than 100"
    );
    let mut s = demo();
    s.vms[1].capacity = -5;
    s.repls[1].size = 0;
    let (t, skipped) = RoutingTable::build_with(&s, "us-east1", 1, Strictness::Lenient).unwrap();
    assert_eq!(skipped.counts.get(&("vms", "bad_value")), Some(&1));
    assert_eq!(skipped.counts.get(&("repls", "bad_value")), Some(&1));
    assert!(t.vm_by_id("vm-2").is_none() && t.counts().vms == 2);
}

#[test]
fn reserved_units_follow_containers_resizes_and_deletes() {
    let mut s = demo();
    s.vms[1].capacity = 400;
    s.repls[0].size = 150;
    let t = RoutingTable::build(&s, "us-east1", 1).unwrap();
    let cluster = t.cluster_by_name("use1-a").unwrap();
    let units = |t: &RoutingTable, id: &str| {
        let vm = t.vm_by_id(id).unwrap();
        let c = t.candidates(cluster).iter().find(|c| c.vm == vm).copied().unwrap();
        (c.units, c.capacity)
    };
    assert_eq!(units(&t, "vm-2"), (150, 400), "r1 (150) runs on vm-2");
    assert_eq!(units(&t, "vm-1"), (0, 100));
    let mut r1 = s.repls[0].clone();
    r1.size = 200;
    let (t2, skipped) = t.apply([Change::UpsertRepl(r1)], 2, Strictness::Strict).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(units(&t2, "vm-2"), (200, 400), "resized while running");
    let (t3, _) = t2
        .apply([Change::DeleteContainer("r1".into())], 3, Strictness::Strict)
        .unwrap();
    assert_eq!(units(&t3, "vm-2"), (0, 400));
    let dump = t3.to_snapshot();
    assert_eq!(dump.vms.iter().find(|v| v.id == "vm-2").unwrap().capacity, 400);
    assert_eq!(dump.repls.iter().find(|r| r.id == "r1").unwrap().size, 200);
}

#[test]
fn recent_moves_come_from_every_regions_tombstones_and_deltas() {
    // The file build: r4's tombstone (this region's) names its slug.
    let t = build();
    let until = crate::snapshot::parse_rfc3339_ms("2030-01-01T00:00:00Z").unwrap();
    assert!(t.recently_moved(Name::Slug("moved"), until - 1));
    assert!(!t.recently_moved(Name::Slug("moved"), until));
    assert!(!t.recently_moved(Name::Slug("app1"), 0));
    // A delta's move (any region's), for a name the edge holds nowhere.
    let (t2, skipped) = t
        .apply_for_edge(
            vec![Change::RecentMove {
                name: OwnedName::Slug("far-away".into()),
                until_ms: 5_000,
            }],
            t.version() + 1,
        )
        .unwrap();
    assert_eq!(skipped.total(), 0);
    assert!(t2.recently_moved(Name::Slug("far-away"), 4_999));
    assert!(
        !t.recently_moved(Name::Slug("far-away"), 0),
        "the published table is untouched"
    );
    assert!(t2.recently_moved(Name::Slug("moved"), until - 1), "earlier moves stay");
}
