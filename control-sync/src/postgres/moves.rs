//! Moving repls between clusters and regions: what `placectl transfer` and
//! `placectl move-user` write (docs/contract.md §5, docs/operations.md
//! "Moving a user off a hot cluster").
//!
//! Where it sits: the control plane's side of placement. Everything one
//! command changes is written in one transaction, so the change-log rows
//! share one txid and every edge publishes them as one table version (the
//! sync never publishes part of a transaction, however large).
//!
//! A move now (not lazy), per repl: home it in the target's region, pin it
//! to the target cluster (`--region`: leave it to that region's ring),
//! delete its container (it starts again on the target), and write a
//! tombstone from the cluster it was on to the target, living for the DNS
//! TTL plus a margin, so clients that still resolve the old cluster's edge
//! follow it. A lazy move leaves the running container alone: within the
//! repl's region it sets `transfer_to` (the next start goes there); across
//! regions it rehomes the repl now, pinned as asked, and the container is
//! served where it runs until it stops.
//!
//! "Where it was" is the running container's cluster, else its pin, else
//! the ring of its region over the active clusters (the ring every edge
//! builds). Start at [`move_user`].

use std::collections::HashMap;

use tokio_postgres::{Client, Transaction};

use crate::ring::{key_hash, Member, Ring};

/// Where a move goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveTarget {
    /// One cluster (in any region).
    Cluster(String),
    /// A region: each repl goes to the cluster that region's ring gives it.
    Region(String),
}

/// How a move is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveOptions {
    pub lazy: bool,
    /// Plan and print, change nothing.
    pub dry_run: bool,
    /// Tombstone lifetime: DNS TTL plus margin.
    pub tombstone_secs: u32,
    /// Move even when the target has no room for every repl (those that
    /// do not fit are then refused `cluster_full` by the edges as they
    /// start).
    pub force: bool,
}

/// What happens to one repl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveAction {
    /// Container deleted, repl rehomed/pinned, tombstone written.
    Move,
    /// `transfer_to` set; its container keeps running.
    Lazy,
    /// Homed in another region now; its container keeps running.
    Rehome,
    /// Already on the target: nothing to do.
    AlreadyThere,
}

impl MoveAction {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveAction::Move => "move",
            MoveAction::Lazy => "lazy transfer",
            MoveAction::Rehome => "rehome (lazy)",
            MoveAction::AlreadyThere => "already there",
        }
    }
}

/// One repl's planned move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMove {
    pub repl: String,
    pub slug: String,
    /// The cluster it is on now (None: its region has no active cluster).
    pub from: Option<String>,
    pub to: String,
    pub to_region: String,
    pub action: MoveAction,
}

/// What a move did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveReport {
    pub moves: Vec<PlannedMove>,
    /// `placement_version` after the commit (None: dry run).
    pub version: Option<i64>,
    /// Target clusters without room for all the repls sent there (empty
    /// unless a dry run or `force`: otherwise the move is refused).
    pub short: Vec<Shortfall>,
}

/// A target cluster that cannot hold every repl a move sends it: the
/// units its active VMs have free (capacity minus the sizes of the repls
/// running there), what the move needs, and the repls that would not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub cluster: String,
    pub free_units: i64,
    pub needed_units: i64,
    /// Slugs (with their sizes) left over by a first-fit of the largest
    /// repls first onto the VMs with most room.
    pub not_fitting: Vec<(String, i64)>,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cluster {} has {} units free for {} needed; {} repls would not fit:",
            self.cluster,
            self.free_units,
            self.needed_units,
            self.not_fitting.len()
        )?;
        for (i, (slug, size)) in self.not_fitting.iter().enumerate() {
            if i == 10 {
                return write!(f, " and {} more", self.not_fitting.len() - 10);
            }
            write!(f, " {slug} (size {size})")?;
        }
        Ok(())
    }
}

impl MoveReport {
    pub fn count(&self, action: MoveAction) -> usize {
        self.moves.iter().filter(|m| m.action == action).count()
    }
}

/// Why a move was refused (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("owner {0:?} has no repls")]
    UnknownOwner(String),
    #[error("no repl {0:?}")]
    UnknownRepl(String),
    #[error("no cluster {0:?}")]
    UnknownCluster(String),
    #[error("no region {0:?}")]
    UnknownRegion(String),
    #[error("cluster {0:?} is draining: new repls are not placed there")]
    Draining(String),
    #[error("region {0:?} has no active cluster with an active VM")]
    NoActiveCluster(String),
    #[error("{}; nothing moved (--force moves anyway)", .0.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "))]
    NoRoom(Vec<Shortfall>),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// The active clusters of every region as rings (what edges build).
struct Rings {
    /// Per region: cluster names (ring member id = index) and the ring.
    by_region: HashMap<String, (Vec<String>, Ring)>,
}

impl Rings {
    async fn load(tx: &Transaction<'_>) -> Result<Rings, MoveError> {
        let rows = tx
            .query(
                // The edge's ring rule (a cluster takes new repls only once it has
                // an active VM): see `takes_new_repls` in the placement table.
                "SELECT region, name, weight FROM clusters c WHERE state = 'active' \
                 AND EXISTS (SELECT 1 FROM vms WHERE vms.cluster = c.name AND vms.state = 'active') \
                 ORDER BY region, name",
                &[],
            )
            .await?;
        let mut grouped: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        for r in &rows {
            let w: i32 = r.get(2);
            grouped.entry(r.get(0)).or_default().push((r.get(1), w.max(0) as u32));
        }
        let by_region = grouped
            .into_iter()
            .map(|(region, clusters)| {
                let members: Vec<Member> = clusters
                    .iter()
                    .enumerate()
                    .map(|(i, (name, weight))| Member {
                        id: i as u32,
                        name,
                        weight: *weight,
                    })
                    .collect();
                let ring = Ring::build(&members);
                (region, (clusters.into_iter().map(|(n, _)| n).collect(), ring))
            })
            .collect();
        Ok(Rings { by_region })
    }

    /// The cluster `region`'s ring gives repl `id`.
    fn cluster_of(&self, region: &str, id: &str) -> Option<&str> {
        let (names, ring) = self.by_region.get(region)?;
        ring.lookup_hash(key_hash(id)).map(|i| names[i as usize].as_str())
    }
}

/// A repl as it is now.
struct Current {
    id: String,
    slug: String,
    region: String,
    pinned: Option<String>,
    running_in: Option<String>,
    size: i32,
}

const CURRENT: &str = "SELECT r.id, r.slug, r.region, r.cluster, v.cluster, r.size FROM repls r
    LEFT JOIN containers c ON c.repl_id = r.id LEFT JOIN vms v ON v.id = c.vm_id";

fn current(r: &tokio_postgres::Row) -> Current {
    Current {
        id: r.get(0),
        slug: r.get(1),
        region: r.get(2),
        pinned: r.get(3),
        running_in: r.get(4),
        size: r.get(5),
    }
}

/// Moves every repl of `owner`; see the module docs. Refuses (changing
/// nothing) an owner with no repls, an unknown or draining cluster, an
/// unknown region or one without an active cluster.
pub async fn move_user(
    client: &mut Client,
    owner: &str,
    target: &MoveTarget,
    opts: MoveOptions,
) -> Result<MoveReport, MoveError> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!("{CURRENT} WHERE r.owner = $1 ORDER BY r.id FOR UPDATE OF r"),
            &[&owner],
        )
        .await?;
    if rows.is_empty() {
        return Err(MoveError::UnknownOwner(owner.into()));
    }
    let repls: Vec<Current> = rows.iter().map(current).collect();
    apply(tx, &repls, target, opts).await
}

/// Moves one repl to `cluster` (`placectl transfer`).
pub async fn transfer(
    client: &mut Client,
    repl: &str,
    cluster: &str,
    opts: MoveOptions,
) -> Result<MoveReport, MoveError> {
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(&format!("{CURRENT} WHERE r.id = $1 FOR UPDATE OF r"), &[&repl])
        .await?
    else {
        return Err(MoveError::UnknownRepl(repl.into()));
    };
    apply(tx, &[current(&row)], &MoveTarget::Cluster(cluster.into()), opts).await
}

/// Plans the moves of `repls`, writes them (unless a dry run) and commits.
async fn apply(
    tx: Transaction<'_>,
    repls: &[Current],
    target: &MoveTarget,
    opts: MoveOptions,
) -> Result<MoveReport, MoveError> {
    let rings = Rings::load(&tx).await?;
    // The fixed target cluster and its region, or the target region.
    let (to_cluster, to_region) = match target {
        MoveTarget::Cluster(name) => {
            let Some(row) = tx
                .query_opt("SELECT region, state FROM clusters WHERE name = $1", &[name])
                .await?
            else {
                return Err(MoveError::UnknownCluster(name.clone()));
            };
            if row.get::<_, &str>(1) != "active" {
                return Err(MoveError::Draining(name.clone()));
            }
            (Some(name.clone()), row.get::<_, String>(0))
        }
        MoveTarget::Region(region) => {
            if tx
                .query_opt("SELECT 1 FROM regions WHERE name = $1", &[region])
                .await?
                .is_none()
            {
                return Err(MoveError::UnknownRegion(region.clone()));
            }
            if !rings.by_region.contains_key(region) {
                return Err(MoveError::NoActiveCluster(region.clone()));
            }
            (None, region.clone())
        }
    };
    let mut moves = Vec::with_capacity(repls.len());
    for r in repls {
        let from = r
            .running_in
            .clone()
            .or_else(|| r.pinned.clone())
            .or_else(|| rings.cluster_of(&r.region, &r.id).map(str::to_string));
        let to = match &to_cluster {
            Some(c) => c.clone(),
            None => rings
                .cluster_of(&to_region, &r.id)
                .expect("the target region has an active cluster")
                .to_string(),
        };
        let action = if from.as_deref() == Some(to.as_str()) && r.region == to_region {
            MoveAction::AlreadyThere
        } else if !opts.lazy {
            MoveAction::Move
        } else if r.region == to_region {
            MoveAction::Lazy
        } else {
            MoveAction::Rehome
        };
        moves.push(PlannedMove {
            repl: r.id.clone(),
            slug: r.slug.clone(),
            from,
            to,
            to_region: to_region.clone(),
            action,
        });
    }
    let short = shortfalls(&tx, repls, &moves).await?;
    if opts.dry_run {
        tx.rollback().await?;
        return Ok(MoveReport {
            moves,
            version: None,
            short,
        });
    }
    if !short.is_empty() && !opts.force {
        tx.rollback().await?;
        return Err(MoveError::NoRoom(short));
    }
    write(&tx, &moves, to_cluster.is_some(), opts.tombstone_secs).await?;
    let version: i64 = tx.query_one("SELECT edgeplane_current_version()", &[]).await?.get(0);
    tx.commit().await?;
    Ok(MoveReport {
        moves,
        version: Some(version),
        short,
    })
}

/// The target clusters of `moves` that cannot hold what is sent there.
async fn shortfalls(
    tx: &Transaction<'_>,
    repls: &[Current],
    moves: &[PlannedMove],
) -> Result<Vec<Shortfall>, MoveError> {
    let mut sent: HashMap<&str, Vec<(String, i64)>> = HashMap::new();
    for (r, m) in repls.iter().zip(moves) {
        if m.action != MoveAction::AlreadyThere {
            sent.entry(m.to.as_str())
                .or_default()
                .push((r.slug.clone(), r.size as i64));
        }
    }
    if sent.is_empty() {
        return Ok(Vec::new());
    }
    let targets: Vec<&str> = sent.keys().copied().collect();
    // Free units per active VM of each target: capacity minus the sizes of
    // the repls running there (what the edges' room check counts too).
    let rows = tx
        .query(
            "SELECT v.cluster, v.capacity::bigint - COALESCE(
                    (SELECT sum(r.size) FROM containers k JOIN repls r ON r.id = k.repl_id WHERE k.vm_id = v.id), 0)
               FROM vms v WHERE v.state = 'active' AND v.cluster = ANY($1)",
            &[&targets],
        )
        .await?;
    let mut free: HashMap<String, Vec<i64>> = HashMap::new();
    for row in &rows {
        free.entry(row.get(0)).or_default().push(row.get::<_, i64>(1).max(0));
    }
    let mut short: Vec<Shortfall> = sent
        .into_iter()
        .filter_map(|(cluster, wanted)| {
            let vms = free.remove(cluster).unwrap_or_default();
            let free_units = vms.iter().sum();
            let needed_units = wanted.iter().map(|(_, s)| s).sum();
            let not_fitting = first_fit(vms, wanted);
            (!not_fitting.is_empty()).then(|| Shortfall {
                cluster: cluster.to_string(),
                free_units,
                needed_units,
                not_fitting,
            })
        })
        .collect();
    short.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    Ok(short)
}

/// Places `wanted` (name, size) onto VMs with `free` units each, largest
/// first, each on the VM with the most room (as the least-loaded balancer
/// would); returns what does not fit, largest first.
fn first_fit(mut free: Vec<i64>, mut wanted: Vec<(String, i64)>) -> Vec<(String, i64)> {
    wanted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut left = Vec::new();
    for (name, size) in wanted {
        match free.iter_mut().max_by_key(|f| **f) {
            Some(f) if *f >= size => *f -= size,
            _ => left.push((name, size)),
        }
    }
    left
}

/// Writes the planned moves with one statement per kind of change.
async fn write(tx: &Transaction<'_>, moves: &[PlannedMove], pin: bool, tombstone_secs: u32) -> Result<(), MoveError> {
    let of = |a: MoveAction| moves.iter().filter(move |m| m.action == a);
    // Rehomed now (moved, or lazily across regions): region, pin, no pending transfer.
    let rehomed: Vec<&PlannedMove> = of(MoveAction::Move).chain(of(MoveAction::Rehome)).collect();
    if !rehomed.is_empty() {
        let ids: Vec<&str> = rehomed.iter().map(|m| m.repl.as_str()).collect();
        let regions: Vec<&str> = rehomed.iter().map(|m| m.to_region.as_str()).collect();
        let pins: Vec<Option<&str>> = rehomed.iter().map(|m| pin.then_some(m.to.as_str())).collect();
        tx.execute(
            "UPDATE repls SET region = x.region, cluster = x.cluster, transfer_to = NULL
               FROM unnest($1::text[], $2::text[], $3::text[]) AS x(id, region, cluster)
              WHERE repls.id = x.id",
            &[&ids, &regions, &pins],
        )
        .await?;
    }
    let moved: Vec<&PlannedMove> = of(MoveAction::Move).collect();
    if !moved.is_empty() {
        let ids: Vec<&str> = moved.iter().map(|m| m.repl.as_str()).collect();
        tx.execute("DELETE FROM containers WHERE repl_id = ANY($1)", &[&ids])
            .await?;
        let stones: Vec<&&PlannedMove> = moved.iter().filter(|m| m.from.is_some()).collect();
        let ids: Vec<&str> = stones.iter().map(|m| m.repl.as_str()).collect();
        let from: Vec<&str> = stones.iter().filter_map(|m| m.from.as_deref()).collect();
        let to: Vec<&str> = stones.iter().map(|m| m.to.as_str()).collect();
        let secs = tombstone_secs as f64;
        tx.execute(
            "INSERT INTO tombstones (repl_id, from_cluster, to_cluster, expires_at)
             SELECT x.id, x.from_cluster, x.to_cluster, now() + make_interval(secs => $4)
               FROM unnest($1::text[], $2::text[], $3::text[]) AS x(id, from_cluster, to_cluster)
             ON CONFLICT (repl_id, from_cluster)
             DO UPDATE SET to_cluster = EXCLUDED.to_cluster, expires_at = EXCLUDED.expires_at",
            &[&ids, &from, &to, &secs],
        )
        .await?;
    }
    let lazy: Vec<&PlannedMove> = of(MoveAction::Lazy).collect();
    if !lazy.is_empty() {
        let ids: Vec<&str> = lazy.iter().map(|m| m.repl.as_str()).collect();
        let to: Vec<&str> = lazy.iter().map(|m| m.to.as_str()).collect();
        tx.execute(
            "UPDATE repls SET transfer_to = x.to_cluster
               FROM unnest($1::text[], $2::text[]) AS x(id, to_cluster) WHERE repls.id = x.id",
            &[&ids, &to],
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_fit;

    fn names(v: &[(String, i64)]) -> Vec<&str> {
        v.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn first_fit_places_the_largest_first_and_returns_the_rest() {
        let want = |v: &[(&str, i64)]| v.iter().map(|(n, s)| (n.to_string(), *s)).collect::<Vec<_>>();
        // 10 + 4 free: the 8 and the 4 fit, then only 2 units are left.
        let left = first_fit(vec![10, 4], want(&[("a", 4), ("b", 8), ("c", 3)]));
        assert_eq!(names(&left), ["c"]);
        // Enough room in total but no VM holds the big one.
        let left = first_fit(vec![5, 5, 5], want(&[("big", 6), ("s", 1)]));
        assert_eq!(names(&left), ["big"]);
        // No VM at all: nothing fits.
        assert_eq!(first_fit(vec![], want(&[("a", 1)])).len(), 1);
        assert!(first_fit(vec![3], want(&[("a", 1), ("b", 2)])).is_empty());
    }
}
