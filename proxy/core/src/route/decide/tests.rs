//! Unit tests: one or more per branch of [`super::decide`].

use edgeplane_placement::table::Resolve;
use edgeplane_placement::{RoutingTable, Snapshot};

use super::*;
use crate::balancer::{Balancer, BalancerParams, HealthMap, Policy};
use crate::route::pick_memory::PickMemory;

/// The v1 (HMAC) key of the migration.
const KEY: &[u8] = b"workspace-key-0123456789";
const NOW: u64 = 1_800_000_000_000; // 2027-01-15

/// The web server's v2 key (one per test process).
fn web_key() -> &'static edgeplane_token::SecretKey {
    static K: std::sync::OnceLock<edgeplane_token::SecretKey> = std::sync::OnceLock::new();
    K.get_or_init(|| edgeplane_token::keygen().unwrap())
}

/// A v2 token for `repl`, claiming home `region`, valid for a minute.
fn v2(repl: &str, region: &str) -> String {
    v2_until(repl, region, NOW / 1000 + 60)
}

fn v2_until(repl: &str, region: &str, exp: u64) -> String {
    edgeplane_token::mint(
        web_key(),
        &edgeplane_token::Claims {
            repl,
            region,
            cluster: None,
            expires_at: exp,
        },
    )
    .unwrap()
}

fn v1(repl: &str, exp: u64) -> String {
    edgeplane_token::v1::mint(KEY, repl, exp)
}

/// A workspace request for `path` carrying `token` as a bearer.
fn ws<'a>(path: &'a str, token: &'a str) -> RouteRequest<'a> {
    RouteRequest {
        host: Some(b"edge.internal"),
        path,
        bearer: Some(token),
        now_ms: NOW,
        ..Default::default()
    }
}

fn snapshot() -> Snapshot {
    serde_json::from_str(
        r#"{"regions": [{"name": "us-east1", "edge_addr": "127.0.0.1:8080"},
                        {"name": "ap-south1", "edge_addr": "127.0.0.1:8081"}],
            "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active"},
                         {"name": "use1-b", "region": "us-east1", "state": "active"},
                         {"name": "use1-old", "region": "us-east1", "state": "draining"},
                         {"name": "aps1-a", "region": "ap-south1", "state": "active"}],
            "vms": [{"id": "vm-1", "cluster": "use1-a", "addr": "127.0.0.1:7001", "state": "active"},
                    {"id": "vm-2", "cluster": "use1-a", "addr": "127.0.0.1:7002", "state": "active"},
                    {"id": "vm-3", "cluster": "use1-a", "addr": "127.0.0.1:7003", "state": "draining"},
                    {"id": "vm-4", "cluster": "use1-b", "addr": "127.0.0.1:7004", "state": "active"},
                    {"id": "vm-5", "cluster": "use1-old", "addr": "127.0.0.1:7005", "state": "down"},
                    {"id": "vm-6", "cluster": "aps1-a", "addr": "127.0.0.1:7006", "state": "active"}],
            "repls": [{"id": "r1", "slug": "app1", "region": "us-east1"},
                      {"id": "r2", "slug": "pinned", "region": "us-east1", "cluster": "use1-b"},
                      {"id": "r3", "slug": "lazy", "region": "us-east1", "cluster": "use1-a", "transfer_to": "use1-b"},
                      {"id": "r4", "slug": "moved", "region": "ap-south1"},
                      {"id": "r5", "slug": "faraway", "region": "ap-south1"},
                      {"id": "r6", "slug": "expired", "region": "ap-south1"},
                      {"id": "r7", "slug": "fresh", "region": "us-east1"},
                      {"id": "r8", "slug": "onoff", "region": "us-east1", "cluster": "use1-old"},
                      {"id": "r9", "slug": "ondown", "region": "us-east1", "cluster": "use1-a"}],
            "containers": [{"repl_id": "r1", "vm_id": "vm-3"},
                           {"repl_id": "r9", "vm_id": "vm-5"}],
            "custom_domains": [{"hostname": "www.example.com", "repl_id": "r1"}],
            "tombstones": [{"repl_id": "r4", "from_cluster": "use1-a", "to_cluster": "aps1-a",
                            "expires_at": "2030-01-01T00:00:00Z"},
                           {"repl_id": "r6", "from_cluster": "use1-a", "to_cluster": "aps1-a",
                            "expires_at": "2020-01-01T00:00:00Z"}]}"#,
    )
    .unwrap()
}

fn ctx() -> RouteContext {
    RouteContext {
        suffixes: vec!["repl.co".into()],
        workspace_prefix: "/__ws/".into(),
        tokens: Verifier::new(vec![web_key().public_key().clone()], Some(KEY.to_vec())),
        workspace_origins: Vec::new(),
        max_hops: 2,
        memory: std::sync::Arc::new(PickMemory::new(10_000)),
        balancer: std::sync::Arc::new(Balancer::new(
            BalancerParams::default(),
            "edge-test",
            Policy::LeastLoaded,
        )),
    }
}

/// A context whose balancer view is built for `t` (without one, picks
/// fall back to the snapshot's container counts).
fn ctx_with(t: &RoutingTable) -> RouteContext {
    let c = ctx();
    c.balancer.refresh(t, &HealthMap::default(), NOW, true);
    c
}

fn table() -> RoutingTable {
    RoutingTable::build(&snapshot(), "us-east1", 1).unwrap()
}

fn req(host: &str) -> RouteRequest<'_> {
    RouteRequest {
        host: Some(host.as_bytes()),
        path: "/",
        now_ms: NOW,
        ..Default::default()
    }
}

fn vm_id(t: &RoutingTable, d: &Decision) -> String {
    match d {
        Decision::Vm { vm, .. } => t.vm(*vm).id.to_string(),
        other => panic!("expected a VM, got {other:?}"),
    }
}

fn rejected(d: Decision) -> (RejectReason, u16) {
    match d {
        Decision::Reject { reason, .. } => (reason, reason.status()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn running_repl_goes_to_its_vm_even_if_draining() {
    let (c, t) = (ctx(), table());
    let d = decide(&c, &t, &req("app1.repl.co"), &(), &mut ());
    assert_eq!(vm_id(&t, &d), "vm-3");
    assert!(matches!(
        d,
        Decision::Vm {
            reason: VmReason::Running,
            kind: Kind::App,
            ..
        }
    ));
}

#[test]
fn host_is_canonicalised() {
    let (c, t) = (ctx(), table());
    let d = decide(&c, &t, &req("APP1.Repl.Co.:8443"), &(), &mut ());
    assert_eq!(vm_id(&t, &d), "vm-3");
}

#[test]
fn custom_domain_routes() {
    let (c, t) = (ctx(), table());
    let d = decide(&c, &t, &req("WWW.example.com:80"), &(), &mut ());
    assert_eq!(vm_id(&t, &d), "vm-3");
    assert_eq!(d.kind(), Kind::CustomDomain);
}

#[test]
fn unknown_hosts_are_404_and_malformed_400() {
    let (c, t) = (ctx(), table());
    assert_eq!(
        rejected(decide(&c, &t, &req("nope.repl.co"), &(), &mut ())),
        (RejectReason::UnknownHost, 404)
    );
    assert_eq!(
        rejected(decide(&c, &t, &req("example.org"), &(), &mut ())),
        (RejectReason::UnknownHost, 404)
    );
    assert_eq!(
        rejected(decide(&c, &t, &req("a.app1.repl.co"), &(), &mut ())),
        (RejectReason::UnknownHost, 404)
    );
    assert_eq!(
        rejected(decide(&c, &t, &req("bad host"), &(), &mut ())),
        (RejectReason::MalformedHost, 400)
    );
    let no_host = RouteRequest {
        path: "/",
        now_ms: NOW,
        ..Default::default()
    };
    assert_eq!(
        rejected(decide(&c, &t, &no_host, &(), &mut ())),
        (RejectReason::MissingHost, 400)
    );
}

#[test]
fn absolute_form_authority_must_match_host() {
    let (c, t) = (ctx(), table());
    let mut r = req("app1.repl.co");
    r.authority = Some("App1.repl.co:80");
    assert_eq!(vm_id(&t, &decide(&c, &t, &r, &(), &mut ())), "vm-3");
    r.authority = Some("evil.example.com");
    assert_eq!(
        rejected(decide(&c, &t, &r, &(), &mut ())),
        (RejectReason::AuthorityMismatch, 400)
    );
}

#[test]
fn not_loaded_table_is_503() {
    let c = ctx();
    let t = RoutingTable::empty();
    assert_eq!(
        rejected(decide(&c, &t, &req("app1.repl.co"), &(), &mut ())),
        (RejectReason::NotReady, 503)
    );
}

#[test]
fn workspace_needs_a_valid_token_before_anything_else() {
    let (c, t) = (ctx(), table());
    let good = v2("r1", "us-east1");
    let q = format!("a=b&token={good}");
    let mut r = RouteRequest {
        host: Some(b"edge.internal"),
        path: "/__ws/r1",
        query: Some(&q),
        now_ms: NOW,
        ..Default::default()
    };
    let mut seen = TokenSeen::default();
    let d = decide(&c, &t, &r, &(), &mut seen);
    assert_eq!(vm_id(&t, &d), "vm-3");
    assert_eq!(d.kind(), Kind::Workspace);
    assert_eq!(
        seen.0,
        Some(TokenCheck {
            version: Some(TokenVersion::V2),
            refusal: None
        })
    );

    r.query = None;
    let mut seen = TokenSeen::default();
    assert_eq!(
        rejected(decide(&c, &t, &r, &(), &mut seen)),
        (RejectReason::BadToken, 401),
        "missing"
    );
    assert_eq!(
        seen.0.map(|s| (s.version_label(), s.outcome_label())),
        Some(("none", "missing"))
    );
    r.bearer = Some(&good);
    assert_eq!(vm_id(&t, &decide(&c, &t, &r, &(), &mut ())), "vm-3", "bearer works too");

    let legacy = v1("r1", NOW / 1000 + 60);
    r.bearer = Some(&legacy);
    let mut seen = TokenSeen::default();
    assert_eq!(
        vm_id(&t, &decide(&c, &t, &r, &(), &mut seen)),
        "vm-3",
        "v1 while migrating"
    );
    assert_eq!(
        seen.0.map(|s| (s.version_label(), s.outcome_label())),
        Some(("1", "valid"))
    );

    let other_key = edgeplane_token::keygen().unwrap();
    let foreign = edgeplane_token::mint(
        &other_key,
        &edgeplane_token::Claims {
            repl: "r1",
            region: "us-east1",
            cluster: None,
            expires_at: NOW / 1000 + 60,
        },
    )
    .unwrap();
    for (tok, what, outcome) in [
        (v2_until("r1", "us-east1", NOW / 1000 - 1), "expired", "expired"),
        (v2("r7", "us-east1"), "other repl", "wrong_repl"),
        (foreign, "a key this edge does not hold", "unknown_key"),
        (v1("r1", NOW / 1000 - 1), "expired v1", "expired"),
        (
            edgeplane_token::v1::mint(b"not-the-key-0000000000", "r1", NOW / 1000 + 60),
            "bad v1 signature",
            "bad_signature",
        ),
        ("garbage".to_string(), "garbage", "malformed"),
    ] {
        let r = ws("/__ws/r1", &tok);
        let mut seen = TokenSeen::default();
        assert_eq!(
            rejected(decide(&c, &t, &r, &(), &mut seen)),
            (RejectReason::BadToken, 401),
            "{what}"
        );
        assert_eq!(seen.0.map(|s| s.outcome_label()), Some(outcome), "{what}");
    }

    // A v1 token once the migration is over (no v1 key): 401, `disabled`.
    let v2_only = RouteContext {
        tokens: Verifier::new(vec![web_key().public_key().clone()], None),
        ..ctx()
    };
    let mut seen = TokenSeen::default();
    assert_eq!(
        rejected(decide(&v2_only, &t, &ws("/__ws/r1", &legacy), &(), &mut seen)),
        (RejectReason::BadToken, 401)
    );
    assert_eq!(
        seen.0.map(|s| (s.version_label(), s.outcome_label())),
        Some(("1", "disabled"))
    );
    let none = RouteContext {
        tokens: Verifier::default(),
        ..ctx()
    };
    assert_eq!(
        rejected(decide(&none, &t, &ws("/__ws/r1", &good), &(), &mut ())),
        (RejectReason::BadToken, 401),
        "no key configured"
    );
}

#[test]
fn a_workspace_session_for_a_repl_this_edge_does_not_hold_goes_to_the_region_its_token_names() {
    let (c, t) = (ctx(), table());
    // Not in the table; the token says ap-south1: one hop there.
    let tok = v2("r-far", "ap-south1");
    let d = decide(&c, &t, &ws("/__ws/r-far/shell", &tok), &(), &mut ());
    match d {
        Decision::Forward {
            kind,
            region,
            hops,
            reason,
            ..
        } => {
            assert_eq!((kind, hops, reason), (Kind::Workspace, 1, ForwardReason::Affinity));
            assert_eq!(&*t.region(region).name, "ap-south1");
        }
        other => panic!("{other:?}"),
    }
    // Already forwarded once: never bounced again (the edges disagree).
    let mut again = ws("/__ws/r-far", &tok);
    again.hops = 1;
    assert_eq!(
        rejected(decide(&c, &t, &again, &(), &mut ())),
        (RejectReason::ForwardLoop, 508)
    );
    // The token names this region (it is the home edge) and the table does
    // not hold it: unknown everywhere, 404 here, no loop.
    for region in ["us-east1", "mars-1"] {
        let tok = v2("ghost", region);
        let mut hop = ws("/__ws/ghost", &tok);
        hop.hops = 1;
        assert_eq!(
            rejected(decide(&c, &t, &hop, &(), &mut ())),
            (RejectReason::UnknownRepl, 404),
            "{region}"
        );
    }
    // A v1 token names no region: a repl the table lacks is 404.
    let legacy = v1("r-far", NOW / 1000 + 60);
    assert_eq!(
        rejected(decide(&c, &t, &ws("/__ws/r-far", &legacy), &(), &mut ())),
        (RejectReason::UnknownRepl, 404)
    );
    // The table wins over the token: r6 (held whole: it left this region,
    // its tombstone has expired) lives in ap-south1 whatever the token
    // claims, and is forwarded by its row.
    let stale = v2("r6", "us-east1");
    match decide(&c, &t, &ws("/__ws/r6", &stale), &(), &mut ()) {
        Decision::Forward { region, reason, .. } => {
            assert_eq!(reason, ForwardReason::Affinity);
            assert_eq!(&*t.region(region).name, "ap-south1");
        }
        other => panic!("{other:?}"),
    }
    // A repl that moved away: the tombstone sends the reconnecting editor
    // to the new region, whatever its (older) token says.
    let old = v2("r4", "us-east1");
    match decide(&c, &t, &ws("/__ws/r4", &old), &(), &mut ()) {
        Decision::Forward { reason, region, .. } => {
            assert_eq!(reason, ForwardReason::Tombstone);
            assert_eq!(&*t.region(region).name, "ap-south1");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn explaining_a_workspace_path_names_the_source_of_the_region() {
    let (c, t) = (ctx(), table());
    let far = v2("r-far", "ap-south1");
    let out = explain(&c, &t, "edge.internal", &format!("/__ws/r-far?token={far}"), NOW, &());
    assert!(out.contains("from the token's signed claim"), "{out}");
    assert!(out.contains("=> forward to region ap-south1"), "{out}");
    assert!(!out.contains(&far), "the token itself is never printed: {out}");
    let here = v2("r6", "us-east1");
    let out = explain(&c, &t, "edge.internal", &format!("/__ws/r6?token={here}"), NOW, &());
    assert!(
        out.contains("this edge's table: home region \"ap-south1\" (the table wins"),
        "{out}"
    );
    // Without a token the explanation says what a client would get, then
    // shows the route a valid token would take.
    let out = explain(&c, &t, "edge.internal", "/__ws/r1", NOW, &());
    assert!(out.contains("a client would get 401"), "{out}");
    assert!(out.contains("=> vm vm-3"), "{out}");
}

#[test]
fn workspace_origin_allow_list_is_checked_after_the_token() {
    let t = table();
    let c = RouteContext {
        workspace_origins: vec!["https://replit.com".into()],
        ..ctx()
    };
    let good = v2("r1", "us-east1");
    let mut r = RouteRequest {
        host: Some(b"edge.internal"),
        path: "/__ws/r1",
        bearer: Some(&good),
        origin: Some(b"https://evil.example"),
        now_ms: NOW,
        ..Default::default()
    };
    assert_eq!(
        rejected(decide(&c, &t, &r, &(), &mut ())),
        (RejectReason::BadOrigin, 403)
    );
    r.origin = Some(b"HTTPS://Replit.com");
    assert_eq!(
        vm_id(&t, &decide(&c, &t, &r, &(), &mut ())),
        "vm-3",
        "origins compare case-insensitively"
    );
    r.origin = None;
    assert_eq!(
        vm_id(&t, &decide(&c, &t, &r, &(), &mut ())),
        "vm-3",
        "no Origin: the token decides"
    );
    r.origin = Some(b"https://evil.example");
    r.bearer = None;
    assert_eq!(
        rejected(decide(&c, &t, &r, &(), &mut ())),
        (RejectReason::BadToken, 401),
        "the token is checked first"
    );
    // Apps (not workspace sessions) never look at Origin.
    let mut app = req("app1.repl.co");
    app.origin = Some(b"https://evil.example");
    assert!(!matches!(decide(&c, &t, &app, &(), &mut ()), Decision::Reject { .. }));
}

#[test]
fn other_region_is_forwarded_by_affinity_once() {
    let (c, t) = (ctx(), table());
    let d = decide(&c, &t, &req("faraway.repl.co"), &(), &mut ());
    match d {
        Decision::Forward {
            reason,
            hops,
            addr,
            region,
            ..
        } => {
            assert_eq!(reason, ForwardReason::Affinity);
            assert_eq!(hops, 1);
            assert_eq!(addr.to_string(), "127.0.0.1:8081");
            assert_eq!(&*t.region(region).name, "ap-south1");
        }
        other => panic!("{other:?}"),
    }
    let mut r = req("faraway.repl.co");
    r.hops = 1;
    assert_eq!(
        rejected(decide(&c, &t, &r, &(), &mut ())),
        (RejectReason::ForwardLoop, 508)
    );
}

#[test]
fn another_regions_app_is_found_in_the_world_directory_by_slug_and_domain() {
    let mut s = snapshot();
    s.custom_domains
        .push(serde_json::from_str(r#"{"hostname": "far.example.org", "repl_id": "r5"}"#).unwrap());
    let t = RoutingTable::build(&s, "us-east1", 1).unwrap();
    let c = ctx();
    assert!(t.repl_by_slug("faraway").is_none(), "held by name only");
    let mut steps: Vec<String> = Vec::new();
    let d = decide(&c, &t, &req("far.example.org"), &(), &mut steps);
    assert!(
        matches!(d, Decision::Forward { kind: Kind::CustomDomain, reason: ForwardReason::Affinity, hops: 1, region, .. }
            if &*t.region(region).name == "ap-south1"),
        "{d:?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.contains("world directory: home region \"ap-south1\"")),
        "{steps:?}"
    );
    let mut r = req("far.example.org");
    r.hops = 1;
    assert_eq!(
        rejected(decide(&c, &t, &r, &(), &mut ())),
        (RejectReason::ForwardLoop, 508),
        "edges that disagree never bounce a request back"
    );
    assert_eq!(
        rejected(decide(&c, &t, &req("nobody.example.org"), &(), &mut ())),
        (RejectReason::UnknownHost, 404)
    );
    assert_eq!(
        rejected(decide(&c, &t, &req("nobody.repl.co"), &(), &mut ())),
        (RejectReason::UnknownHost, 404)
    );
}

#[test]
fn live_tombstone_forwards_and_expired_one_falls_back_to_affinity() {
    let (c, t) = (ctx(), table());
    let d = decide(&c, &t, &req("moved.repl.co"), &(), &mut ());
    assert!(
        matches!(
            d,
            Decision::Forward {
                reason: ForwardReason::Tombstone,
                hops: 1,
                ..
            }
        ),
        "{d:?}"
    );
    // A tombstone forward may follow one earlier hop, up to max_hops.
    let mut r = req("moved.repl.co");
    r.hops = 1;
    assert!(matches!(
        decide(&c, &t, &r, &(), &mut ()),
        Decision::Forward {
            reason: ForwardReason::Tombstone,
            hops: 2,
            ..
        }
    ));
    r.hops = 2;
    assert_eq!(
        rejected(decide(&c, &t, &r, &(), &mut ())),
        (RejectReason::ForwardLoop, 508)
    );
    let d = decide(&c, &t, &req("expired.repl.co"), &(), &mut ());
    assert!(
        matches!(
            d,
            Decision::Forward {
                reason: ForwardReason::Affinity,
                ..
            }
        ),
        "{d:?}"
    );
}

#[test]
fn pinned_cluster_wins_over_ring() {
    let (c, t) = (ctx(), table());
    let d = decide(&c, &t, &req("pinned.repl.co"), &(), &mut ());
    assert_eq!(vm_id(&t, &d), "vm-4");
    assert!(matches!(
        d,
        Decision::Vm {
            reason: VmReason::Picked,
            transfer_from: None,
            ..
        }
    ));
}

#[test]
fn lazy_transfer_goes_to_target_with_from_cluster() {
    let (c, t) = (ctx(), table());
    let d = decide(&c, &t, &req("lazy.repl.co"), &(), &mut ());
    assert_eq!(vm_id(&t, &d), "vm-4");
    match d {
        Decision::Vm {
            transfer_from: Some(from),
            ..
        } => assert_eq!(&*t.cluster(from).name, "use1-a"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unpinned_uses_the_ring_and_only_active_vms() {
    let (c, t) = (ctx(), table());
    let mut ex = Vec::new();
    let d = decide(&c, &t, &req("fresh.repl.co"), &(), &mut ex);
    let expected_cluster = t.ring(t.local_region()).lookup("r7").unwrap();
    match d {
        Decision::Vm {
            vm,
            reason: VmReason::Picked,
            ..
        } => {
            assert_eq!(t.vm(vm).cluster, expected_cluster);
            assert_eq!(t.vm(vm).state, VmState::Active);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        ex.iter().any(|s| s.starts_with("ring (table version 1) -> cluster")),
        "{ex:?}"
    );
}

#[test]
fn pick_is_remembered_and_load_spreads_across_repls() {
    let (c, t) = (ctx(), table());
    let first = decide(&c, &t, &req("pinned.repl.co"), &(), &mut ());
    let again = decide(&c, &t, &req("pinned.repl.co"), &(), &mut ());
    assert_eq!(vm_id(&t, &first), vm_id(&t, &again));
    assert!(matches!(
        again,
        Decision::Vm {
            reason: VmReason::Remembered,
            ..
        }
    ));
    // After the memory expires the repl is picked anew.
    let mut later = req("pinned.repl.co");
    later.now_ms = NOW + 11_000;
    assert!(matches!(
        decide(&c, &t, &later, &(), &mut ()),
        Decision::Vm {
            reason: VmReason::Picked,
            ..
        }
    ));
}

#[test]
fn dry_run_changes_nothing() {
    let (c, t) = (ctx(), table());
    let mut r = req("pinned.repl.co");
    r.dry_run = true;
    assert!(matches!(
        decide(&c, &t, &r, &(), &mut ()),
        Decision::Vm {
            reason: VmReason::Picked,
            ..
        }
    ));
    assert!(
        matches!(
            decide(&c, &t, &r, &(), &mut ()),
            Decision::Vm {
                reason: VmReason::Picked,
                ..
            }
        ),
        "not remembered"
    );
    let h = t.repl_by_slug("pinned").unwrap().id_hash;
    assert_eq!(c.memory.recall(h, NOW), None);
}

#[test]
fn ledger_spreads_new_repls_over_a_cluster() {
    // Many different not-running repls pinned to use1-a (two active VMs):
    // the ledger must alternate rather than herd onto one VM.
    let mut s = snapshot();
    for i in 0..20 {
        s.repls.push(
            serde_json::from_value(serde_json::json!(
            {"id": format!("n{i}"), "slug": format!("new{i}"), "region": "us-east1", "cluster": "use1-a"}))
            .unwrap(),
        );
    }
    let t = RoutingTable::build(&s, "us-east1", 1).unwrap();
    let c = ctx_with(&t);
    let mut per_vm = std::collections::HashMap::new();
    for i in 0..20 {
        let h = format!("new{i}.repl.co");
        *per_vm
            .entry(vm_id(&t, &decide(&c, &t, &req(&h), &(), &mut ())))
            .or_insert(0) += 1;
    }
    assert_eq!(per_vm.get("vm-1"), Some(&10), "{per_vm:?}");
    assert_eq!(per_vm.get("vm-2"), Some(&10), "{per_vm:?}");
}

#[test]
fn container_on_down_vm_is_placed_anew() {
    let (c, t) = (ctx(), table());
    let d = decide(&c, &t, &req("ondown.repl.co"), &(), &mut ());
    let id = vm_id(&t, &d);
    assert!(id == "vm-1" || id == "vm-2", "{id}");
}

#[test]
fn cluster_without_active_vm_is_503() {
    let (c, t) = (ctx(), table());
    assert_eq!(
        rejected(decide(&c, &t, &req("onoff.repl.co"), &(), &mut ())),
        (RejectReason::NoUsableVm, 503)
    );
}

#[test]
fn region_without_active_cluster_is_503() {
    let mut s = snapshot();
    for cl in &mut s.clusters {
        cl.state = edgeplane_placement::snapshot::ClusterState::Draining;
    }
    let t = RoutingTable::build(&s, "us-east1", 1).unwrap();
    assert_eq!(
        rejected(decide(&ctx(), &t, &req("fresh.repl.co"), &(), &mut ())),
        (RejectReason::NoUsableVm, 503)
    );
}

#[test]
fn explanation_names_every_step() {
    let t = table();
    let c = ctx_with(&t);
    let mut ex = Vec::new();
    decide(&c, &t, &req("lazy.repl.co"), &(), &mut ex);
    let all = ex.join("\n");
    for needle in [
        "host:",
        "slug \"lazy\" -> repl \"r3\"",
        "not running",
        "pinned to cluster \"use1-a\"",
        "lazy transfer pending",
        "picked vm \"vm-4\" (127.0.0.1:7004) by least-loaded over this edge's subset of 1",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in\n{all}");
    }
}

/// Answers one name.
struct OneName(&'static str, std::net::IpAddr);

impl Resolve for OneName {
    fn ip_of(&self, host: &str) -> Option<std::net::IpAddr> {
        (host == self.0).then_some(self.1)
    }
}

#[test]
fn a_named_endpoint_is_dialled_as_resolved_or_is_a_502() {
    let mut s = snapshot();
    s.vms[2].addr = "vm-3.internal:7003".into();
    s.regions[1].edge_addr = "edge.ap-south1.internal:8443".into();
    let t = RoutingTable::build(&s, "us-east1", 1).unwrap();
    let c = ctx();
    // app1 runs on vm-3, now named.
    assert_eq!(
        rejected(decide(&c, &t, &req("app1.repl.co"), &(), &mut ())),
        (RejectReason::Unresolved, 502),
        "never answered: a 502, never 0.0.0.0"
    );
    let names = OneName("vm-3.internal", "10.0.0.3".parse().unwrap());
    match decide(&c, &t, &req("app1.repl.co"), &names, &mut ()) {
        Decision::Vm { addr, .. } => assert_eq!(addr.to_string(), "10.0.0.3:7003"),
        other => panic!("{other:?}"),
    }
    let names = OneName("edge.ap-south1.internal", "10.9.0.1".parse().unwrap());
    let mut steps: Vec<String> = Vec::new();
    match decide(&c, &t, &req("faraway.repl.co"), &names, &mut steps) {
        Decision::Forward { addr, .. } => assert_eq!(addr.to_string(), "10.9.0.1:8443"),
        other => panic!("{other:?}"),
    }
    assert!(
        steps.iter().any(|s| s.contains("edge.ap-south1.internal:8443")),
        "explain names the endpoint as written: {steps:?}"
    );
}
