//! What happens after the first try of a request failed or was refused:
//! VM-directed replay (`x-edgeplane-replay`) and the connect-failure retry
//! of a repl being placed. Pure, like [`super::decide()`]: the glue asks,
//! carries the answer out, and counts it.
//!
//! Replay (a placement race: the repl is elsewhere): a VM answers, with any
//! status, `x-edgeplane-replay: vm=<id>` | `cluster=<name>` |
//! `region=<name>`. [`replay`] turns the target into a new [`Decision`]:
//! that VM; a VM the balancer picks in that cluster (or that cluster's
//! region edge when it is another region's); that region's edge, with a
//! signed hop. The edge replays at most once, and only a request whose body
//! it holds whole (the glue's call: none, or all of it held within
//! `limits.replay_body_bytes`); otherwise, or for an unknown
//! target, the client gets the VM's own answer (without the header).
//!
//! Retry ([`retry_elsewhere`]): when the connection to a VM picked for a
//! repl that is not running fails before any byte of the request was
//! written, another VM of the cluster is picked, and remembered for the
//! repl instead. A running container's VM is never swapped: the container
//! is there.
//!
//! Start at [`replay`] and [`retry_elsewhere`].

use edgeplane_placement::snapshot::VmState;
use edgeplane_placement::table::{Endpoint, Idx, Resolve, RoutingTable};

use super::pick_memory::vm_fingerprint;
use super::{Decision, ForwardReason, Kind, RouteContext, VmReason};

/// Where a VM asked the edge to send a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTarget<'a> {
    Vm(&'a str),
    Cluster(&'a str),
    Region(&'a str),
}

/// Parses an `x-edgeplane-replay` value (`vm=<id>`, `cluster=<name>` or
/// `region=<name>`, surrounding spaces ignored). None when malformed.
pub fn parse_target(value: &[u8]) -> Option<ReplayTarget<'_>> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let (kind, name) = v.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    match kind.trim() {
        "vm" => Some(ReplayTarget::Vm(name)),
        "cluster" => Some(ReplayTarget::Cluster(name)),
        "region" => Some(ReplayTarget::Region(name)),
        _ => None,
    }
}

/// What became of a replay header (the `outcome` label of
/// `edgeplane_replays_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Sent again to the target.
    Replayed,
    /// The request body was larger than `limits.replay_body_bytes`.
    BodyTooLarge,
    /// Malformed, or no such VM, cluster or region (or this region itself).
    UnknownTarget,
    /// The replayed request was answered with a replay header again.
    Again,
    /// Forwarding to the target region would pass `max_hops`.
    HopLimit,
}

impl ReplayOutcome {
    pub const ALL: [ReplayOutcome; 5] = [
        ReplayOutcome::Replayed,
        ReplayOutcome::BodyTooLarge,
        ReplayOutcome::UnknownTarget,
        ReplayOutcome::Again,
        ReplayOutcome::HopLimit,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ReplayOutcome::Replayed => "replayed",
            ReplayOutcome::BodyTooLarge => "body_too_large",
            ReplayOutcome::UnknownTarget => "unknown_target",
            ReplayOutcome::Again => "again",
            ReplayOutcome::HopLimit => "hop_limit",
        }
    }
}

/// The facts about the first try that a replay decision needs.
#[derive(Debug, Clone, Copy)]
pub struct FirstTry {
    pub kind: Kind,
    pub repl_hash: u64,
    /// Verified hop count of the incoming request.
    pub hops_in: u8,
    pub entropy: u64,
}

/// The decision for a VM's replay request (see the module docs), or why
/// there is none.
/// Names of VMs or edges without an answer yet count as unknown targets.
pub fn replay<R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    target: ReplayTarget<'_>,
    first: FirstTry,
    names: &R,
) -> Result<Decision, ReplayOutcome> {
    let local = t.local_region();
    let dial = |e: &Endpoint| e.resolve(names).ok_or(ReplayOutcome::UnknownTarget);
    let forward = |region: Idx| {
        if first.hops_in >= ctx.max_hops {
            return Err(ReplayOutcome::HopLimit);
        }
        Ok(Decision::Forward {
            kind: first.kind,
            repl_hash: first.repl_hash,
            region,
            addr: dial(&t.region(region).edge)?,
            reason: ForwardReason::Replay,
            hops: first.hops_in + 1,
        })
    };
    match target {
        ReplayTarget::Vm(id) => {
            let v = t.vm_by_id(id).ok_or(ReplayOutcome::UnknownTarget)?;
            let vm = t.vm(v);
            if !vm.present || vm.state == VmState::Down {
                return Err(ReplayOutcome::UnknownTarget);
            }
            Ok(Decision::Vm {
                kind: first.kind,
                repl_hash: first.repl_hash,
                vm: v,
                addr: dial(&vm.endpoint)?,
                reason: VmReason::Replayed,
                transfer_from: None,
            })
        }
        ReplayTarget::Cluster(name) => {
            let c = t.cluster_by_name(name).ok_or(ReplayOutcome::UnknownTarget)?;
            let region = t.cluster(c).region;
            if region != local {
                return forward(region);
            }
            let choice = ctx
                .balancer
                .choose(t, c, first.entropy, repl_size(t, first.repl_hash))
                .ok_or(ReplayOutcome::UnknownTarget)?;
            let addr = dial(&t.vm(choice.vm).endpoint)?;
            ctx.balancer.record(&choice);
            Ok(Decision::Vm {
                kind: first.kind,
                repl_hash: first.repl_hash,
                vm: choice.vm,
                addr,
                reason: VmReason::Replayed,
                transfer_from: None,
            })
        }
        ReplayTarget::Region(name) => match t.region_by_name(name) {
            Some(r) if r != local && t.region(r).present => forward(r),
            _ => Err(ReplayOutcome::UnknownTarget),
        },
    }
}

/// After the connection to `failed`'s VM failed before any byte of the
/// request was written: another VM of its cluster for a repl being placed
/// (picked, remembered or replayed to a cluster; never a running
/// container's VM), avoiding every VM in `tried`, and remembered for the
/// repl. None when the decision may not be retried or no VM is left.
pub fn retry_elsewhere<R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    failed: &Decision,
    tried: &[Idx],
    entropy: u64,
    now_ms: u64,
    names: &R,
) -> Option<Decision> {
    let Decision::Vm {
        kind,
        repl_hash,
        vm,
        reason: VmReason::Picked | VmReason::Remembered | VmReason::Replayed,
        transfer_from,
        ..
    } = *failed
    else {
        return None;
    };
    let cluster = t.get_vm(vm)?.cluster;
    let size = repl_size(t, repl_hash);
    let choice = ctx.balancer.choose_excluding(t, cluster, entropy, size, tried)?;
    let addr = t.vm(choice.vm).endpoint.resolve(names)?;
    ctx.balancer.record(&choice);
    if repl_hash != 0 {
        ctx.memory.replace(repl_hash, vm_fingerprint(choice.id_hash), now_ms);
    }
    Some(Decision::Vm {
        kind,
        repl_hash,
        vm: choice.vm,
        addr,
        reason: VmReason::Picked,
        transfer_from,
    })
}

/// The size of the repl a decision is for (1 for workspaces and repls the
/// table no longer has).
fn repl_size(t: &RoutingTable, repl_hash: u64) -> u32 {
    if repl_hash == 0 {
        return 1;
    }
    t.repl_by_id_hash(repl_hash).map_or(1, |r| r.size)
}

/// The `x-edgeplane-replay-src` value naming the VM that asked.
pub fn replay_source(t: &RoutingTable, asked: &Decision) -> String {
    match *asked {
        Decision::Vm { vm, .. } => format!("vm={}", t.vm(vm).id),
        Decision::Forward { region, .. } => format!("region={}", t.region(region).name),
        Decision::Reject { .. } => "vm=-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{Balancer, BalancerParams, HealthMap, Policy};
    use crate::route::pick_memory::PickMemory;

    fn table() -> RoutingTable {
        let s: edgeplane_placement::Snapshot = serde_json::from_str(
            r#"{"regions": [{"name": "here", "edge_addr": "127.0.0.1:8080"}, {"name": "there", "edge_addr": "127.0.0.1:8081"}],
                "clusters": [{"name": "a", "region": "here", "state": "active"}, {"name": "b", "region": "here", "state": "active"},
                             {"name": "z", "region": "there", "state": "active"}],
                "vms": [{"id": "v1", "cluster": "a", "addr": "127.0.0.1:7001", "state": "active"},
                        {"id": "v2", "cluster": "a", "addr": "127.0.0.1:7002", "state": "active"},
                        {"id": "v3", "cluster": "a", "addr": "127.0.0.1:7003", "state": "draining"},
                        {"id": "v4", "cluster": "b", "addr": "127.0.0.1:7004", "state": "active"},
                        {"id": "v5", "cluster": "b", "addr": "127.0.0.1:7005", "state": "down"}],
                "repls": [{"id": "r1", "slug": "app1", "region": "here"}]}"#,
        )
        .unwrap();
        RoutingTable::build(&s, "here", 1).unwrap()
    }

    fn ctx(t: &RoutingTable) -> RouteContext {
        let c = RouteContext {
            suffixes: vec!["repl.co".into()],
            workspace_prefix: "/__ws/".into(),
            tokens: crate::route::Verifier::default(),
            workspace_origins: Vec::new(),
            max_hops: 2,
            memory: std::sync::Arc::new(PickMemory::new(10_000)),
            balancer: std::sync::Arc::new(Balancer::new(BalancerParams::default(), "e", Policy::LeastLoaded)),
        };
        c.balancer.refresh(t, &HealthMap::default(), 1, true);
        c
    }

    const FIRST: FirstTry = FirstTry {
        kind: Kind::App,
        repl_hash: 42,
        hops_in: 0,
        entropy: 7,
    };

    fn vm_of(t: &RoutingTable, d: &Decision) -> String {
        match d {
            Decision::Vm { vm, .. } => t.vm(*vm).id.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets_parse_and_garbage_does_not() {
        assert_eq!(parse_target(b"vm=v1"), Some(ReplayTarget::Vm("v1")));
        assert_eq!(parse_target(b" cluster = b "), Some(ReplayTarget::Cluster("b")));
        assert_eq!(parse_target(b"region=there"), Some(ReplayTarget::Region("there")));
        for bad in [&b"vm="[..], b"vm", b"instance=x", b"vm=a b", b"\xff=1"] {
            assert_eq!(parse_target(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn each_target_kind_becomes_a_decision() {
        let t = table();
        let c = ctx(&t);
        let d = replay(&c, &t, ReplayTarget::Vm("v2"), FIRST, &()).unwrap();
        assert_eq!(vm_of(&t, &d), "v2");
        assert!(matches!(
            d,
            Decision::Vm {
                reason: VmReason::Replayed,
                ..
            }
        ));
        assert_eq!(
            vm_of(&t, &replay(&c, &t, ReplayTarget::Vm("v3"), FIRST, &()).unwrap()),
            "v3",
            "a draining VM still serves"
        );
        assert_eq!(
            replay(&c, &t, ReplayTarget::Vm("v5"), FIRST, &()),
            Err(ReplayOutcome::UnknownTarget),
            "down"
        );
        assert_eq!(
            replay(&c, &t, ReplayTarget::Vm("v9"), FIRST, &()),
            Err(ReplayOutcome::UnknownTarget)
        );
        let d = replay(&c, &t, ReplayTarget::Cluster("b"), FIRST, &()).unwrap();
        assert_eq!(vm_of(&t, &d), "v4", "the only usable VM of cluster b");
        for target in [ReplayTarget::Cluster("z"), ReplayTarget::Region("there")] {
            let d = replay(&c, &t, target, FIRST, &()).unwrap();
            assert!(
                matches!(d, Decision::Forward { reason: ForwardReason::Replay, hops: 1, region, .. } if &*t.region(region).name == "there"),
                "{d:?}"
            );
        }
        let tired = FirstTry { hops_in: 2, ..FIRST };
        assert_eq!(
            replay(&c, &t, ReplayTarget::Region("there"), tired, &()),
            Err(ReplayOutcome::HopLimit)
        );
        assert_eq!(
            replay(&c, &t, ReplayTarget::Region("here"), FIRST, &()),
            Err(ReplayOutcome::UnknownTarget)
        );
        assert_eq!(
            replay(&c, &t, ReplayTarget::Cluster("q"), FIRST, &()),
            Err(ReplayOutcome::UnknownTarget)
        );
    }

    #[test]
    fn a_failed_pick_moves_to_another_vm_and_is_remembered() {
        let t = table();
        let c = ctx(&t);
        let v1 = t.vm_by_id("v1").unwrap();
        let failed = Decision::Vm {
            kind: Kind::App,
            repl_hash: 42,
            vm: v1,
            addr: "127.0.0.1:7001".parse().unwrap(),
            reason: VmReason::Picked,
            transfer_from: None,
        };
        let d = retry_elsewhere(&c, &t, &failed, &[v1], 1, 1000, &()).unwrap();
        assert_eq!(vm_of(&t, &d), "v2", "the other active VM of cluster a");
        let v2 = t.vm_by_id("v2").unwrap();
        assert_eq!(
            c.memory.recall(42, 1001),
            Some(vm_fingerprint(t.vm(v2).id_hash)),
            "the repl's next connections follow"
        );
        assert_eq!(retry_elsewhere(&c, &t, &d, &[v1, v2], 1, 1000, &()), None, "no VM left");
        let running = Decision::Vm {
            kind: Kind::App,
            repl_hash: 42,
            vm: v1,
            addr: "127.0.0.1:7001".parse().unwrap(),
            reason: VmReason::Running,
            transfer_from: None,
        };
        assert_eq!(
            retry_elsewhere(&c, &t, &running, &[v1], 1, 1000, &()),
            None,
            "the container is there"
        );
    }
}
