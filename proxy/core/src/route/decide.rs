//! [`decide()`]: the steps of docs/contract.md §2 in order. See the parent module docs.

use edgeplane_placement::directory::Name;
use edgeplane_placement::snapshot::VmState;
use std::net::SocketAddr;

use edgeplane_placement::table::{Endpoint, Idx, Repl, Resolve, RoutingTable};

use super::host::{canonical_host, slug_of};
use super::pick_memory::vm_fingerprint;
use super::*;
use crate::balancer::{Fit, Mode, LOAD_ONE};

/// Decides where one request goes. Pure: same inputs, same answer (apart
/// from the pick memory and balancer counters in `ctx`, which it updates).
/// `names` answers the endpoints given as host names (resolved in the
/// background; a name with no answer yet is a 502): the address in the
/// decision is exactly what is dialled.
pub fn decide<E: Explain, R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    req: &RouteRequest<'_>,
    names: &R,
    ex: &mut E,
) -> Decision {
    let reject = |kind, reason| Decision::Reject { kind, reason };
    if !t.is_loaded() {
        ex.step(|| "no placement table loaded yet -> 503".into());
        return reject(Kind::Unknown, RejectReason::NotReady);
    }
    let Some(raw_host) = req.host else {
        ex.step(|| "no Host header -> 400".into());
        return reject(Kind::Unknown, RejectReason::MissingHost);
    };
    let buf;
    let host = match req.canonical_host {
        Some(h) => h,
        None => match canonical_host(raw_host) {
            Ok(h) => {
                buf = h;
                buf.as_str()
            }
            Err(e) => {
                ex.step(|| {
                    format!(
                        "Host {:?} is malformed ({e:?}) -> 400",
                        String::from_utf8_lossy(raw_host)
                    )
                });
                return reject(Kind::Unknown, RejectReason::MalformedHost);
            }
        },
    };
    if let Some(auth) = req.authority {
        let same = canonical_host(auth.as_bytes())
            .map(|a| a.as_str() == host)
            .unwrap_or(false);
        if !same {
            ex.step(|| format!("absolute-form authority {auth:?} differs from Host {host:?} -> 400"));
            return reject(Kind::Unknown, RejectReason::AuthorityMismatch);
        }
    }
    ex.step(|| format!("host: {:?} -> {host:?}", String::from_utf8_lossy(raw_host)));
    let now_secs = req.now_ms / 1000;

    let (kind, repl) = if let Some(rest) = req.path.strip_prefix(ctx.workspace_prefix.as_str()) {
        match workspace_session(ctx, t, req, rest, now_secs, ex) {
            Ok(Workspace::Here(r)) => (Kind::Workspace, r),
            Ok(Workspace::Elsewhere(region)) => {
                return forward_affinity(ctx, t, Kind::Workspace, region, req, names, ex);
            }
            Err(reason) => return reject(Kind::Workspace, reason),
        }
    } else if let Some(slug) = slug_of(host, &ctx.suffixes) {
        match t.repl_by_slug(slug) {
            Some(r) => {
                ex.step(|| format!("slug {slug:?} -> repl {:?}", r.id()));
                (Kind::App, r)
            }
            None => return elsewhere(ctx, t, Kind::App, Name::Slug(slug), req, names, ex),
        }
    } else if let Some(r) = t.repl_by_domain(host) {
        ex.step(|| format!("custom domain {host:?} -> repl {:?}", r.id()));
        (Kind::CustomDomain, r)
    } else {
        return elsewhere(ctx, t, Kind::CustomDomain, Name::Domain(host), req, names, ex);
    };
    route_repl(ctx, t, kind, repl, req, names, ex)
}

/// Where a workspace session goes, once its token checked out.
enum Workspace<'t> {
    /// A repl this edge's table holds (homed here, or elsewhere: its row
    /// says where, and [`route_repl`] forwards it).
    Here(&'t Repl),
    /// A repl the table does not hold: the home region the token's signed
    /// `region` claim names (another region: forwarded once).
    Elsewhere(Idx),
}

/// A workspace session (`<prefix><repl id>/...`): a valid token for that
/// repl (checked before the repl is looked up, so nobody can probe which
/// ids exist), an allowed Origin, then the repl: this edge's table when it
/// holds it, else the home region its token names (docs/contract.md §2
/// step 1). A repl unknown everywhere is a 404 at the edge of the region
/// the token names.
fn workspace_session<'t, E: Explain>(
    ctx: &RouteContext,
    t: &'t RoutingTable,
    req: &RouteRequest<'_>,
    rest: &str,
    now_secs: u64,
    ex: &mut E,
) -> Result<Workspace<'t>, RejectReason> {
    let id = rest.split('/').next().unwrap_or("");
    ex.step(|| format!("path {:?}: workspace session for repl {id:?}", req.path));
    let token = req.query.and_then(token_param).or(req.bearer);
    let claimed_region = match ctx.tokens.verify(token, id, now_secs) {
        Ok(session) => {
            ex.token(TokenCheck {
                version: Some(session.version),
                refusal: None,
            });
            ex.step(|| match (&session.region, &session.kid) {
                (Some(r), Some(kid)) => {
                    format!("workspace token valid (version 2, key {kid}); claims home region {r:?}")
                }
                _ => "workspace token valid (version 1: names no home region)".into(),
            });
            session.region
        }
        Err(refused) if req.dry_run && refused.why == Refusal::Missing => {
            ex.step(|| {
                "no token given: a client would get 401; explaining the route of a valid token that names no region"
                    .into()
            });
            None
        }
        Err(refused) => {
            ex.token(TokenCheck {
                version: refused.version,
                refusal: Some(refused.why),
            });
            ex.step(|| {
                let v = refused.version.map_or("of no known version", |v| match v {
                    TokenVersion::V1 => "version 1",
                    TokenVersion::V2 => "version 2",
                });
                format!("workspace token ({v}) refused: {} -> 401", refused.why.as_str())
            });
            return Err(RejectReason::BadToken);
        }
    };
    if let (false, Some(origin)) = (ctx.workspace_origins.is_empty(), req.origin) {
        let allowed = ctx
            .workspace_origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin));
        if !allowed {
            ex.step(|| format!("Origin {:?} is not allowed -> 403", String::from_utf8_lossy(origin)));
            return Err(RejectReason::BadOrigin);
        }
    }
    if let Some(r) = t.repl_by_id(id) {
        ex.step(|| {
            let home = &t.region(r.region).name;
            let differs = claimed_region.as_deref().filter(|c| *c != home.as_ref());
            match differs {
                Some(c) => format!("this edge's table: home region {home:?} (the table wins over the token's {c:?})"),
                None => format!("this edge's table: home region {home:?}"),
            }
        });
        return Ok(Workspace::Here(r));
    }
    let claimed = match claimed_region {
        None => Err("the token names no home region".to_string()),
        Some(name) => match t.region_by_name(&name) {
            None => Err(format!("the token's region {name:?} is not a region this edge knows")),
            Some(r) if r == t.local_region() => Err("the token names this region as its home".into()),
            Some(r) => Ok((r, name)),
        },
    };
    match claimed {
        Ok((region, name)) => {
            ex.step(|| {
                format!("repl {id:?} is not in this edge's table; home region {name:?} from the token's signed claim")
            });
            Ok(Workspace::Elsewhere(region))
        }
        Err(why) => {
            ex.step(|| format!("repl {id:?} is not in this edge's table; {why} -> 404"));
            Err(RejectReason::UnknownRepl)
        }
    }
}

/// A name this edge holds no repl for: another region's app (the world
/// directory names its home region: forward once, by affinity) or nothing
/// (404). The directory never names a VM, so a false match (two names
/// sharing their hash) costs a 404 at the home edge, never a wrong VM; and
/// a request that was forwarded here already is never forwarded by
/// affinity again (508), so edges that disagree cannot loop.
fn elsewhere<E: Explain, R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    kind: Kind,
    name: Name<'_>,
    req: &RouteRequest<'_>,
    names: &R,
    ex: &mut E,
) -> Decision {
    let Some(region) = t.home_region(name) else {
        ex.step(|| match name {
            Name::Slug(slug) => format!("slug {slug:?} unknown -> 404"),
            Name::Domain(host) => format!("{host:?} is neither <slug>.<suffix> nor a custom domain -> 404"),
        });
        let kind = if matches!(name, Name::Slug(_)) {
            kind
        } else {
            Kind::Unknown
        };
        return Decision::Reject {
            kind,
            reason: RejectReason::UnknownHost,
        };
    };
    let home = t.region(region);
    ex.step(|| {
        let what = match name {
            Name::Slug(slug) => format!("slug {slug:?}"),
            Name::Domain(host) => format!("custom domain {host:?}"),
        };
        format!(
            "{what} is not an app of this region; world directory: home region {:?}",
            home.name
        )
    });
    forward_affinity(ctx, t, kind, region, req, names, ex)
}

/// Forwards by affinity to `region`'s edge, once: a request that was
/// forwarded here already is never forwarded by affinity again (508), so
/// edges that disagree about a home region cannot loop.
fn forward_affinity<E: Explain, R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    kind: Kind,
    region: Idx,
    req: &RouteRequest<'_>,
    names: &R,
    ex: &mut E,
) -> Decision {
    let to = Forward {
        kind,
        region,
        reason: ForwardReason::Affinity,
        repl_hash: 0,
    };
    forward(ctx, t, to, req, names, ex)
}

/// Where a forward goes and why.
#[derive(Clone, Copy)]
struct Forward {
    kind: Kind,
    region: Idx,
    reason: ForwardReason,
    repl_hash: u64,
}

/// The forward itself: an affinity forward only from a client (a hopped
/// request would bounce), any forward within `max_hops`, to the region's
/// edge with the next hop count signed.
fn forward<E: Explain, R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    to: Forward,
    req: &RouteRequest<'_>,
    names: &R,
    ex: &mut E,
) -> Decision {
    let loop_reject = Decision::Reject {
        kind: to.kind,
        reason: RejectReason::ForwardLoop,
    };
    if to.reason == ForwardReason::Affinity && req.hops > 0 {
        ex.step(|| "already forwarded once by affinity: not bouncing again -> 508".into());
        return loop_reject;
    }
    if req.hops >= ctx.max_hops {
        ex.step(|| format!("{} forwards already (max_hops {}) -> 508", req.hops, ctx.max_hops));
        return loop_reject;
    }
    let region = t.region(to.region);
    ex.step(|| {
        format!(
            "forward ({}) to region {:?} edge {}",
            to.reason.as_str(),
            region.name,
            region.edge
        )
    });
    dial(&region.edge, names, to.kind, ex, |addr| Decision::Forward {
        kind: to.kind,
        repl_hash: to.repl_hash,
        region: to.region,
        addr,
        reason: to.reason,
        hops: req.hops + 1,
    })
}

/// The decision to dial `endpoint`, or a 502 when it is a name with no
/// answer yet (never a lookup here: names are resolved in the background).
fn dial<E: Explain, R: Resolve + ?Sized>(
    endpoint: &Endpoint,
    names: &R,
    kind: Kind,
    ex: &mut E,
    make: impl FnOnce(SocketAddr) -> Decision,
) -> Decision {
    match endpoint.resolve(names) {
        Some(addr) => make(addr),
        None => {
            ex.step(|| format!("{endpoint} has no address yet (its name is not resolved) -> 502"));
            Decision::Reject {
                kind,
                reason: RejectReason::Unresolved,
            }
        }
    }
}

/// The `token` query parameter, if present.
fn token_param(query: &str) -> Option<&str> {
    query.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// Steps 2-5 for a repl this edge holds: forward it to another region
/// ([`forward_home`]) or send it to a VM here ([`place_here`]).
fn route_repl<E: Explain, R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    kind: Kind,
    r: &Repl,
    req: &RouteRequest<'_>,
    names: &R,
    ex: &mut E,
) -> Decision {
    if r.region != t.local_region() {
        return forward_home(ctx, t, kind, r, req, names, ex);
    }
    place_here(ctx, t, kind, r, req, names, ex)
}

/// Steps 2-3: a repl homed in another region goes to the region a live
/// tombstone names, else to its home region by affinity (once).
fn forward_home<E: Explain, R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    kind: Kind,
    r: &Repl,
    req: &RouteRequest<'_>,
    names: &R,
    ex: &mut E,
) -> Decision {
    let local = t.local_region();
    let home = t.region(r.region);
    let live_tomb = t.tombstones(r.id()).iter().find(|ts| {
        t.cluster(ts.from_cluster).region == local
            && ts.expires_at_ms > req.now_ms as i64
            && t.cluster(ts.to_cluster).region != local
    });
    let (target, reason) = match live_tomb {
        Some(ts) => {
            ex.step(|| {
                format!(
                    "tombstone: moved from {:?} to {:?} (until {})",
                    t.cluster(ts.from_cluster).name,
                    t.cluster(ts.to_cluster).name,
                    edgeplane_placement::snapshot::format_rfc3339_ms(ts.expires_at_ms)
                )
            });
            (t.cluster(ts.to_cluster).region, ForwardReason::Tombstone)
        }
        None => {
            ex.step(|| {
                format!(
                    "home region {:?} is not this edge's {:?}",
                    home.name,
                    t.region(local).name
                )
            });
            (r.region, ForwardReason::Affinity)
        }
    };
    let to = Forward {
        kind,
        region: target,
        reason,
        repl_hash: r.id_hash,
    };
    forward(ctx, t, to, req, names, ex)
}

/// Steps 4-5 for a repl homed here: its running container's VM, else a VM
/// of its cluster (pinned, ring, lazy transfer) by the pick memory or the
/// balancer.
fn place_here<E: Explain, R: Resolve + ?Sized>(
    ctx: &RouteContext,
    t: &RoutingTable,
    kind: Kind,
    r: &Repl,
    req: &RouteRequest<'_>,
    names: &R,
    ex: &mut E,
) -> Decision {
    let repl_hash = r.id_hash;
    if let Some(v) = r.vm.get() {
        let vm = t.vm(v);
        if vm.state != VmState::Down {
            ex.step(|| format!("running on vm {:?} ({}) -> proxy there", vm.id, vm.endpoint));
            return dial(&vm.endpoint, names, kind, ex, |addr| Decision::Vm {
                kind,
                repl_hash,
                vm: v,
                addr,
                reason: VmReason::Running,
                transfer_from: None,
            });
        }
        ex.step(|| format!("container row names vm {:?}, which is down: placing anew", vm.id));
    } else {
        ex.step(|| "not running".into());
    }

    let Some((cluster, transfer_from)) = home_cluster(t, r, ex) else {
        ex.step(|| "region has no active cluster -> 503".into());
        return Decision::Reject {
            kind,
            reason: RejectReason::NoUsableVm,
        };
    };
    match pick_vm(ctx, t, cluster, r.id_hash, r.size, req, ex) {
        Some((vm, reason)) => dial(&t.vm(vm).endpoint, names, kind, ex, |addr| Decision::Vm {
            kind,
            repl_hash,
            vm,
            addr,
            reason,
            transfer_from,
        }),
        None if t.candidates(cluster).is_empty() => {
            ex.step(|| format!("cluster {:?} has no active VM -> 503", t.cluster(cluster).name));
            Decision::Reject {
                kind,
                reason: RejectReason::NoUsableVm,
            }
        }
        None => {
            ex.step(|| {
                format!(
                    "cluster {:?} is full: no VM has room for size {} -> 503",
                    t.cluster(cluster).name,
                    r.size
                )
            });
            Decision::Reject {
                kind,
                reason: RejectReason::ClusterFull,
            }
        }
    }
}

/// Explains a full cluster: each active VM's reserved units against its
/// capacity, as this edge's balancer view has them (only when explaining).
fn explain_full<E: Explain>(ctx: &RouteContext, t: &RoutingTable, cluster: Idx, size: u32, ex: &mut E) {
    ex.step(|| {
        let view = ctx.balancer.view();
        let Some(cv) = view.clusters.get(cluster as usize) else {
            return "no balancer view of the cluster yet".into();
        };
        let vms: Vec<String> = cv
            .vms
            .iter()
            .filter_map(|s| {
                let vm = t.get_vm(s.vm)?;
                let m = cv.members.iter().chain(cv.spill.iter()).find(|m| m.vm == s.vm);
                Some(match m {
                    Some(m) => format!(
                        "{} {}/{} units reserved",
                        vm.id,
                        m.reserved(&ctx.balancer.ledger),
                        m.capacity
                    ),
                    None => format!("{} {}", vm.id, s.usability.as_str()),
                })
            })
            .collect();
        format!("no VM has room for size {size}: {}", vms.join(", "))
    });
}

/// The cluster a repl that is not running is placed in: pinned, else the
/// ring's; a pending lazy transfer redirects it (and names where from).
/// None when the region's ring is empty.
fn home_cluster<E: Explain>(t: &RoutingTable, r: &Repl, ex: &mut E) -> Option<(Idx, Option<Idx>)> {
    let cluster = match r.cluster.get() {
        Some(c) => {
            ex.step(|| format!("pinned to cluster {:?}", t.cluster(c).name));
            c
        }
        None => {
            let c = t.ring(t.local_region()).lookup_hash(r.id_hash)?;
            ex.step(|| {
                format!(
                    "ring (table version {}) -> cluster {:?}",
                    t.version(),
                    t.cluster(c).name
                )
            });
            c
        }
    };
    match r.transfer_to.get() {
        Some(to) if to != cluster => {
            ex.step(|| {
                format!(
                    "lazy transfer pending: {:?} -> {:?}",
                    t.cluster(cluster).name,
                    t.cluster(to).name
                )
            });
            Some((to, Some(cluster)))
        }
        _ => Some((cluster, None)),
    }
}

/// Step 5 for a repl that is not running: the pick memory (concurrent
/// first connections follow the first pick), else the subsetting balancer.
fn pick_vm<E: Explain>(
    ctx: &RouteContext,
    t: &RoutingTable,
    cluster: Idx,
    repl_hash: u64,
    size: u32,
    req: &RouteRequest<'_>,
    ex: &mut E,
) -> Option<(Idx, VmReason)> {
    let now_ms = req.now_ms;
    let candidates = t.candidates(cluster);
    let by_fp = |fp: u16| {
        candidates
            .iter()
            .find(|c| vm_fingerprint(c.id_hash) == fp)
            .map(|c| c.vm)
    };

    if let Some(v) = ctx.memory.recall(repl_hash, now_ms).and_then(by_fp) {
        ex.step(|| format!("picked moments ago: vm {:?} ({})", t.vm(v).id, t.vm(v).endpoint));
        return Some((v, VmReason::Remembered));
    }
    let Some(choice) = ctx.balancer.choose(t, cluster, req.entropy, size) else {
        if !candidates.is_empty() {
            explain_full(ctx, t, cluster, size, ex);
        }
        return None;
    };
    let best = choice.vm;
    let describe = |verb: &str| {
        let vm = t.vm(best);
        let how = match (choice.mode, choice.fit) {
            (_, Fit::Spill) => format!(
                "least-loaded outside this edge's subset of {} (no member has room for size {size})",
                choice.members
            ),
            (_, Fit::OverCapacity) => format!(
                "least-loaded over all {} active VMs, past its capacity (panic, and none has room for size {size})",
                choice.members
            ),
            (Mode::Normal, _) => format!(
                "{} over this edge's subset of {}",
                choice.policy.as_str(),
                choice.members
            ),
            (Mode::Panic, _) => format!(
                "{} over all {} active VMs (panic: too few usable)",
                choice.policy.as_str(),
                choice.members
            ),
            (Mode::Empty, _) => format!(
                "least reserved share in the snapshot over {} active VMs (no balancer view yet)",
                choice.members
            ),
        };
        format!(
            "{verb} vm {:?} ({}) by {how}; load {:.2}, {}/{} units reserved, size {size}",
            vm.id,
            vm.endpoint,
            choice.load as f64 / LOAD_ONE as f64,
            choice.reserved,
            choice.capacity
        )
    };
    if req.dry_run {
        ex.step(|| describe("would pick"));
        return Some((best, VmReason::Picked));
    }
    let fp = vm_fingerprint(choice.id_hash);
    let won = ctx.memory.remember(repl_hash, fp, now_ms);
    if won == fp {
        ctx.balancer.record(&choice);
        ex.step(|| describe("picked"));
        return Some((best, VmReason::Picked));
    }
    // Another request picked first: follow it.
    let v = by_fp(won).unwrap_or(best);
    ex.step(|| format!("a concurrent request picked vm {:?} first", t.vm(v).id));
    Some((v, VmReason::Remembered))
}

#[cfg(test)]
mod tests;
