//! The two queries of the sync: a consistent, streamed full load of this
//! edge's part of the world, and a batch of changes after a version cursor.

use std::time::{Duration, Instant};

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel, Row};

use crate::directory::{Name, OwnedName};
use crate::snapshot::*;
use crate::table::{Change, ContainerRef, ReplRef, RoutingTable, Skipped, SnapshotError, Strictness};

/// A failure of a load or a delta fetch.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
}

fn clusters_of_region() -> &'static str {
    "SELECT name FROM clusters WHERE region = $1"
}

/// The rows an edge of region `$1` needs, table by table, in build order:
/// all regions, clusters and VMs; the repls homed here, plus repls with a
/// tombstone from one of this region's clusters (so their slugs resolve);
/// those repls' containers and custom domains; tombstones from this region;
/// then the world directory: every other region's repl by slug, and their
/// custom domains, with the home region and nothing else.
fn full_load_queries() -> Vec<(&'static str, String)> {
    let repls = "SELECT id, slug, owner, region, cluster, transfer_to, size FROM repls";
    let containers = "SELECT repl_id, vm_id, to_json(started_at)#>>'{}' FROM containers";
    let domains = "SELECT hostname, repl_id FROM custom_domains";
    let tombstones = "SELECT repl_id, from_cluster, to_cluster, to_json(expires_at)#>>'{}' FROM tombstones";
    let wanted = format!(
        "(SELECT id FROM repls WHERE region = $1
          UNION SELECT repl_id FROM tombstones WHERE from_cluster IN ({}))",
        clusters_of_region()
    );
    vec![
        ("regions", "SELECT name, edge_addr FROM regions ORDER BY name".into()),
        (
            "clusters",
            "SELECT name, region, state, weight FROM clusters ORDER BY name".into(),
        ),
        (
            "vms",
            "SELECT id, cluster, addr, metrics_addr, state, capacity FROM vms ORDER BY id".into(),
        ),
        (
            "repls",
            format!(
                "{repls} WHERE region = $1
                 UNION ALL
                 {repls} WHERE region <> $1 AND id IN (SELECT repl_id FROM tombstones WHERE from_cluster IN ({}))",
                clusters_of_region()
            ),
        ),
        ("containers", format!("{containers} WHERE repl_id IN {wanted}")),
        ("custom_domains", format!("{domains} WHERE repl_id IN {wanted}")),
        (
            "tombstones",
            format!("{tombstones} WHERE from_cluster IN ({})", clusters_of_region()),
        ),
        (
            "directory_slugs",
            "SELECT slug, region FROM repls WHERE region <> $1".into(),
        ),
        ("directory_domains", DIRECTORY_DOMAINS.into()),
        ("recent_moves", RECENT_MOVES.into()),
        // Every edge terminates TLS for every custom domain in the world
        // (the app may be homed elsewhere): the whole index, names only.
        ("certificates", "SELECT hostname, revision FROM certificates".into()),
        (
            "acme_challenges",
            "SELECT token, key_authorization, hostname, kind, to_json(expires_at)#>>'{}'
               FROM acme_challenges WHERE expires_at > now()"
                .into(),
        ),
    ]
}

/// The names of every repl with a live tombstone, in any region, with the
/// tombstone's expiry (ms): what `edgeplane dns` gives the short TTL.
const RECENT_MOVES: &str = "SELECT r.slug, NULL::text, (extract(epoch FROM t.expires_at) * 1000)::bigint
       FROM tombstones t JOIN repls r ON r.id = t.repl_id WHERE t.expires_at > now()
     UNION ALL
     SELECT NULL, d.hostname, (extract(epoch FROM t.expires_at) * 1000)::bigint
       FROM tombstones t JOIN custom_domains d ON d.repl_id = t.repl_id WHERE t.expires_at > now()";

/// One row of [`RECENT_MOVES`] (or of [`moved_names_of`]) as a change.
fn recent_move(slug: Option<&str>, host: Option<&str>, until_ms: i64) -> Option<Change> {
    let name = match (slug, host) {
        (Some(s), _) => OwnedName::Slug(s.to_string()),
        (None, Some(h)) => OwnedName::Domain(h.trim_end_matches('.').to_ascii_lowercase()),
        (None, None) => return None,
    };
    Some(Change::RecentMove { name, until_ms })
}

/// The names (slug, custom domains) of repls whose tombstones a delta
/// wrote, each with its tombstone's expiry: `until` maps repl id to it.
pub async fn moved_names_of(
    client: &mut Client,
    until: &std::collections::HashMap<String, i64>,
) -> Result<Vec<Change>, LoadError> {
    let ids: Vec<&str> = until.keys().map(String::as_str).collect();
    let rows = client
        .query(
            "SELECT id, slug, NULL::text FROM repls WHERE id = ANY($1)
             UNION ALL SELECT repl_id, NULL, hostname FROM custom_domains WHERE repl_id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let until_ms = *until.get(r.get::<_, &str>(0))?;
            recent_move(r.get(1), r.get(2), until_ms)
        })
        .collect())
}

/// Other regions' custom domains with their repl's home region.
const DIRECTORY_DOMAINS: &str = "SELECT d.hostname, r.region FROM custom_domains d
     JOIN repls r ON r.id = d.repl_id WHERE r.region <> $1";

fn to_change(table: &str, r: &Row) -> Change {
    match table {
        "regions" => Change::UpsertRegion(RegionRow {
            name: r.get(0),
            edge_addr: r.get(1),
        }),
        "clusters" => Change::UpsertCluster(ClusterRow {
            name: r.get(0),
            region: r.get(1),
            state: if r.get::<_, &str>(2) == "active" {
                ClusterState::Active
            } else {
                ClusterState::Draining
            },
            weight: r.get::<_, i32>(3).max(0) as u32,
        }),
        "vms" => Change::UpsertVm(VmRow {
            id: r.get(0),
            cluster: r.get(1),
            addr: r.get(2),
            metrics_addr: r.get(3),
            state: match r.get::<_, &str>(4) {
                "active" => VmState::Active,
                "draining" => VmState::Draining,
                _ => VmState::Down,
            },
            capacity: r.get::<_, i32>(5).into(),
        }),
        "repls" => Change::UpsertRepl(ReplRow {
            id: r.get(0),
            slug: r.get(1),
            owner: r.get(2),
            region: r.get(3),
            cluster: r.get(4),
            transfer_to: r.get(5),
            size: r.get::<_, i32>(6).into(),
        }),
        "containers" => Change::UpsertContainer(ContainerRow {
            repl_id: r.get(0),
            vm_id: r.get(1),
            started_at: r.get(2),
        }),
        "custom_domains" => Change::UpsertDomain(CustomDomainRow {
            hostname: r.get(0),
            repl_id: r.get(1),
        }),
        "certificates" => Change::UpsertCertificate(CertificateRow {
            hostname: r.get(0),
            revision: r.get(1),
        }),
        "acme_challenges" => Change::UpsertChallenge(AcmeChallengeRow {
            token: r.get(0),
            key_authorization: r.get(1),
            hostname: r.get(2),
            kind: r.get(3),
            expires_at: r.get(4),
        }),
        _ => Change::UpsertTombstone(TombstoneRow {
            repl_id: r.get(0),
            from_cluster: r.get(1),
            to_cluster: r.get(2),
            expires_at: r.get(3),
        }),
    }
}

/// A read-only REPEATABLE READ transaction and the placement version its
/// snapshot sees: everything read in it is consistent with that version.
async fn snapshot(client: &mut Client) -> Result<(tokio_postgres::Transaction<'_>, i64), LoadError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: i64 = tx
        .query_one("SELECT version FROM placement_version WHERE id = 1", &[])
        .await?
        .get(0);
    Ok((tx, version))
}

/// Loads this edge's part of the world in one REPEATABLE READ, read-only
/// transaction, streaming rows into the table builder and logging progress
/// every second. The table's version is `placement_version` as of the
/// transaction's snapshot: every change up to it is included, none after.
pub async fn full_load(client: &mut Client, local_region: &str) -> Result<(RoutingTable, Skipped), LoadError> {
    let started = Instant::now();
    let (tx, version) = snapshot(client).await?;
    let expected: i64 = tx
        .query_one("SELECT count(*) FROM repls WHERE region = $1", &[&local_region])
        .await?
        .get(0);
    // The planner's estimate is enough to size the directory (an exact
    // count of a 10M-row table costs a scan).
    let world: i64 = tx
        .query_one(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'repls'::regclass",
            &[],
        )
        .await?
        .get(0);
    let mut builder = RoutingTable::builder(local_region, expected.max(0) as usize, Strictness::Lenient);
    builder.expect_directory((world - expected).max(0) as usize);
    let mut last_log = Instant::now();
    let mut rows_total = 0u64;
    for (table, sql) in full_load_queries() {
        let params: Vec<&(dyn ToSql + Sync)> = if sql.contains("$1") {
            vec![&local_region]
        } else {
            vec![]
        };
        let stream = tx.query_raw(sql.as_str(), params).await?;
        pin_mut!(stream);
        let mut n = 0u64;
        while let Some(row) = stream.try_next().await? {
            // The two big tables go in borrowed: no per-row allocation that
            // the table does not keep (transients fragment the heap).
            match table {
                "repls" => builder.push_repl(ReplRef {
                    id: row.get(0),
                    slug: row.get(1),
                    owner: row.get(2),
                    region: row.get(3),
                    cluster: row.get(4),
                    transfer_to: row.get(5),
                    size: row.get::<_, i32>(6).into(),
                })?,
                "containers" => builder.push_container(ContainerRef {
                    repl_id: row.get(0),
                    vm_id: row.get(1),
                    started_at: row.get(2),
                })?,
                "directory_slugs" => {
                    let slug: &str = row.get(0);
                    builder.push_directory(Name::Slug(slug), row.get(1), slug)?
                }
                "directory_domains" => {
                    let host = row.get::<_, &str>(0).trim_end_matches('.').to_ascii_lowercase();
                    builder.push_directory(Name::Domain(&host), row.get(1), &host)?
                }
                "recent_moves" => {
                    if let Some(c) = recent_move(row.get(0), row.get(1), row.get(2)) {
                        builder.push(c)?;
                    }
                }
                _ => builder.push(to_change(table, &row))?,
            }
            n += 1;
            if last_log.elapsed() >= Duration::from_secs(1) {
                last_log = Instant::now();
                log::info!(
                    "placement: full load at version {version}: {table} {n} rows ({:.1} s, ~{expected} repls expected)",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        rows_total += n;
    }
    tx.commit().await?;
    let (table, skipped) = builder.finish(version.max(1) as u64)?;
    log::info!(
        "placement: full load of version {version} read {rows_total} rows in {:.2} s ({} repls, {} directory names, {} skipped)",
        started.elapsed().as_secs_f64(),
        table.counts().repls,
        table.counts().directory,
        skipped.total()
    );
    Ok((table, skipped))
}

/// One row of `placement_changes`.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    pub version: i64,
    pub txid: i64,
    pub tbl: String,
    pub op: String,
    pub row: Option<String>,
    pub old: Option<String>,
    pub changed_at_ms: i64,
}

/// Changes after `cursor` (up to `limit`) and the head version, read in one
/// snapshot so they agree.
pub async fn fetch_changes(client: &mut Client, cursor: i64, limit: i64) -> Result<(i64, Vec<ChangeRow>), LoadError> {
    let (tx, head) = snapshot(client).await?;
    let rows = if head > cursor {
        tx.query(
            "SELECT version, txid, tbl, op, row::text, old::text,
                    (extract(epoch FROM changed_at) * 1000)::bigint
               FROM placement_changes WHERE version > $1 ORDER BY version LIMIT $2",
            &[&cursor, &limit],
        )
        .await?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    Ok((
        head,
        rows.iter()
            .map(|r| ChangeRow {
                version: r.get(0),
                txid: r.get(1),
                tbl: r.get(2),
                op: r.get(3),
                row: r.get(4),
                old: r.get(5),
                changed_at_ms: r.get(6),
            })
            .collect(),
    ))
}

/// The containers and custom domains of repls that just arrived in this
/// edge's region by a delta: this edge never loaded them, and no change
/// row will carry them. Read as of now (later changes replay on top).
pub async fn rows_of_arriving(
    client: &mut Client,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<Change>>, LoadError> {
    let mut out: std::collections::HashMap<String, Vec<Change>> = std::collections::HashMap::new();
    for r in client
        .query(
            "SELECT repl_id, vm_id, to_json(started_at)#>>'{}' FROM containers WHERE repl_id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        out.entry(r.get(0)).or_default().push(to_change("containers", &r));
    }
    for r in client
        .query(
            "SELECT hostname, repl_id FROM custom_domains WHERE repl_id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        out.entry(r.get(1)).or_default().push(to_change("custom_domains", &r));
    }
    Ok(out)
}

/// The custom domains of `ids` (repls a delta touched) whose repl is homed
/// outside `local_region`, as directory names with that home region. Read
/// as of now: later changes replay on top and ask again.
pub async fn directory_domains_of(
    client: &mut Client,
    local_region: &str,
    ids: &[String],
) -> Result<Vec<Change>, LoadError> {
    let sql = format!("{DIRECTORY_DOMAINS} AND d.repl_id = ANY($2)");
    Ok(client
        .query(sql.as_str(), &[&local_region, &ids])
        .await?
        .iter()
        .map(|r| Change::UpsertDirectory {
            name: OwnedName::Domain(r.get::<_, &str>(0).trim_end_matches('.').to_ascii_lowercase()),
            region: r.get(1),
        })
        .collect())
}
