//! `placectl`: control-plane operations on the PostgreSQL placement store
//! (docs/contract.md §5). The database comes from `--database-url` or `DATABASE_URL`.
//!
//! - `migrate` applies the embedded schema migrations.
//! - `import FILE` loads a snapshot JSON in bulk (COPY into temp tables, then
//!   upsert). Triggers are switched off for the bulk load when the role may
//!   do so, and one `*` change then tells every edge to reload fully.
//! - `transfer REPL --to CLUSTER [--lazy]` moves a repl: pins it to the
//!   target cluster (its region becomes the cluster's), removes its
//!   container, and writes the tombstone from the old cluster with
//!   `expires_at = now + DNS TTL + margin`, all in one transaction. `--lazy`
//!   only sets `transfer_to` (same region).
//! - `move-user OWNER (--to CLUSTER | --region REGION) [--lazy] [--dry-run]`
//!   moves every repl of one owner the same way, in one transaction (edges
//!   publish it as one table version); see [`moves`].
//! - `add-cluster NAME --region R`, then `add-vm ID --cluster NAME --addr
//!   HOST:PORT` (a cluster takes new repls only once it has an active VM),
//!   `drain-vm ID`, `ls`.
//! - `prune [--keep SECONDS]` trims the change log (run it periodically).
//! - `token keygen | mint` (no database): workspace token keys and tokens;
//!   see [`token`].

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::SinkExt;
use tokio_postgres::{Client, NoTls, Transaction};

use edgeplane_control_sync::file_source::read_snapshot;
use edgeplane_control_sync::postgres::migrate::migrate;
use edgeplane_control_sync::postgres::moves::{self, MoveAction, MoveOptions, MoveReport, MoveTarget};
use edgeplane_control_sync::snapshot::{ClusterState, Snapshot, VmState};

mod certs;
mod token;

#[derive(Parser)]
#[command(name = "placectl", about = "edgeplane control-plane operations (PostgreSQL)")]
struct Cli {
    /// PostgreSQL URL (or DATABASE_URL).
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply schema migrations.
    Migrate,
    /// Load a snapshot JSON file (upserting every row).
    Import { file: PathBuf },
    /// Move a repl to another cluster (writes the tombstone).
    Transfer {
        repl: String,
        #[arg(long)]
        to: String,
        /// Only mark a pending lazy transfer (transfer_to).
        #[arg(long)]
        lazy: bool,
        /// DNS TTL of app records, seconds (the tombstone outlives it).
        #[arg(long, default_value_t = 60)]
        dns_ttl: u32,
        /// Extra tombstone lifetime beyond the DNS TTL, seconds.
        #[arg(long, default_value_t = 300)]
        margin: u32,
        /// Move even when the target has no room for it.
        #[arg(long)]
        force: bool,
    },
    /// Move every repl of one owner in one transaction (one tombstone
    /// each): the incident lever for one user's popular repls, and a user
    /// choosing another continent.
    MoveUser {
        owner: String,
        /// Target cluster (any region).
        #[arg(long, conflicts_with = "region")]
        to: Option<String>,
        /// Target region: each repl goes where that region's ring puts it.
        #[arg(long)]
        region: Option<String>,
        /// Leave running containers where they are: set transfer_to (or,
        /// across regions, rehome now) so the next start lands on the target.
        #[arg(long)]
        lazy: bool,
        /// Print what would move and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// DNS TTL of app records, seconds (each tombstone outlives it).
        #[arg(long, default_value_t = 60)]
        dns_ttl: u32,
        /// Extra tombstone lifetime beyond the DNS TTL, seconds.
        #[arg(long, default_value_t = 300)]
        margin: u32,
        /// Move even when the target clusters have no room for every repl
        /// (those that do not fit are refused `cluster_full` as they start).
        #[arg(long)]
        force: bool,
    },
    /// Stop placing new repls on a VM.
    DrainVm { id: String },
    /// Add a cluster.
    AddCluster {
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long, default_value_t = 100)]
        weight: i32,
        #[arg(long, default_value = "active")]
        state: String,
    },
    /// Add a VM to a cluster (or update it: same id). A cluster takes new
    /// repls only once it has an active VM.
    AddVm {
        id: String,
        #[arg(long)]
        cluster: String,
        /// Where the VM's HTTP and WebSocket traffic goes (HOST:PORT).
        #[arg(long)]
        addr: String,
        /// conman's Prometheus endpoint (IP:PORT) for health scrapes.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Size units the VM holds.
        #[arg(long, default_value_t = 100)]
        capacity: i32,
        #[arg(long, default_value = "active")]
        state: String,
    },
    /// Summarise the placement store.
    Ls,
    /// Delete change-log rows older than --keep seconds (the newest row is
    /// always kept). Edges further behind than that reload fully.
    Prune {
        #[arg(long, default_value_t = 3600)]
        keep: u64,
    },
    /// Workspace session tokens (version 2): key pairs and tokens. Needs no
    /// database.
    Token {
        #[command(subcommand)]
        cmd: token::TokenCmd,
    },
    /// Certificates for custom domains: the issuer and its tables.
    Certs {
        #[command(subcommand)]
        cmd: certs::CertsCmd,
    },
}

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("placectl: connection error: {e}");
        }
    });
    Ok(client)
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("placectl: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Token { cmd } => token::run(cmd),
        cmd => run_on_database(&cli.database_url, cmd).await,
    }
}

/// Every command but `token`: they all work on the placement store.
async fn run_on_database(url: &str, cmd: Cmd) -> Result<()> {
    let mut client = connect(url).await?;
    match cmd {
        Cmd::Migrate => {
            let done = migrate(&mut client).await?;
            if done.is_empty() {
                println!("schema is up to date");
            } else {
                println!("applied migrations {done:?}");
            }
        }
        Cmd::Import { file } => import(&mut client, &file).await?,
        Cmd::Transfer {
            repl,
            to,
            lazy,
            dns_ttl,
            margin,
            force,
        } => {
            let opts = MoveOptions {
                lazy,
                dry_run: false,
                tombstone_secs: dns_ttl + margin,
                force,
            };
            let r = moves::transfer(&mut client, &repl, &to, opts).await?;
            let m = &r.moves[0];
            match m.action {
                MoveAction::AlreadyThere => bail!("repl {repl} is already on cluster {to}"),
                MoveAction::Lazy => println!("repl {repl}: lazy transfer to {to} pending"),
                _ => print_moves(&format!("repl {repl}"), &r, opts.tombstone_secs, false, true),
            }
        }
        Cmd::MoveUser {
            owner,
            to,
            region,
            lazy,
            dry_run,
            dns_ttl,
            margin,
            force,
        } => {
            let target = match (to, region) {
                (Some(c), None) => MoveTarget::Cluster(c),
                (None, Some(r)) => MoveTarget::Region(r),
                _ => bail!("give one of --to CLUSTER or --region REGION"),
            };
            let opts = MoveOptions {
                lazy,
                dry_run,
                tombstone_secs: dns_ttl + margin,
                force,
            };
            let started = std::time::Instant::now();
            let r = moves::move_user(&mut client, &owner, &target, opts).await?;
            print_moves(&format!("owner {owner}"), &r, opts.tombstone_secs, dry_run, false);
            eprintln!(
                "placectl: {} repls planned in {:.2} s",
                r.moves.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Cmd::DrainVm { id } => {
            let n = client
                .execute("UPDATE vms SET state = 'draining' WHERE id = $1", &[&id])
                .await?;
            if n == 0 {
                bail!("no vm {id:?}");
            }
            println!("vm {id} is draining");
        }
        Cmd::AddCluster {
            name,
            region,
            weight,
            state,
        } => {
            client
                .execute(
                    "INSERT INTO clusters (name, region, state, weight) VALUES ($1, $2, $3, $4)",
                    &[&name, &region, &state, &weight],
                )
                .await
                .with_context(|| format!("adding cluster {name:?}"))?;
            let has_vm: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM vms WHERE cluster = $1 AND state = 'active')",
                    &[&name],
                )
                .await?
                .get(0);
            println!("cluster {name} added to {region}");
            if !has_vm {
                println!(
                    "it takes no new repls until it has an active VM: placectl add-vm ID --cluster {name} --addr HOST:PORT"
                );
            }
        }
        Cmd::AddVm {
            id,
            cluster,
            addr,
            metrics_addr,
            capacity,
            state,
        } => add_vm(&client, &id, &cluster, &addr, metrics_addr.as_deref(), capacity, &state).await?,
        Cmd::Ls => ls(&client).await?,
        Cmd::Certs { cmd } => certs::run(url, &client, cmd).await?,
        Cmd::Token { cmd } => token::run(cmd)?,
        Cmd::Prune { keep } => {
            let secs = keep as f64;
            let n = client
                .execute(
                    "DELETE FROM placement_changes
                      WHERE changed_at < now() - make_interval(secs => $1)
                        AND version < (SELECT max(version) FROM placement_changes)",
                    &[&secs],
                )
                .await?;
            println!("pruned {n} changes older than {keep} s");
        }
    }
    Ok(())
}

/// Text-format COPY field.
fn field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

async fn copy_rows<'a>(
    tx: &Transaction<'_>,
    table: &str,
    columns: &str,
    rows: impl Iterator<Item = Vec<Option<&'a str>>>,
) -> Result<u64> {
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE tmp_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
    ))
    .await?;
    let sink = tx.copy_in(&format!("COPY tmp_{table} ({columns}) FROM STDIN")).await?;
    futures_util::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 20);
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            field(&mut buf, *v);
        }
        buf.push('\n');
        if buf.len() > (1 << 20) - 4096 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
            buf.reserve(1 << 20);
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    Ok(sink.finish().await?)
}

/// Moves rows from the temp table into the real one, updating existing rows.
async fn merge(tx: &Transaction<'_>, table: &str, columns: &str, key: &str) -> Result<u64> {
    let updates: Vec<String> = columns
        .split(", ")
        .filter(|c| !key.split(", ").any(|k| k == *c))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    let sql =
        format!("INSERT INTO {table} ({columns}) SELECT {columns} FROM tmp_{table} ON CONFLICT ({key}) DO {action}");
    Ok(tx.execute(sql.as_str(), &[]).await?)
}

/// One table of an import: name, columns, conflict key, rows (text fields).
type CopyStep<'a> = (&'static str, &'static str, &'static str, Vec<Vec<Option<&'a str>>>);

/// The snapshot's numbers as text, borrowed by the COPY rows.
struct NumberFields {
    weights: Vec<String>,
    capacities: Vec<String>,
    sizes: Vec<String>,
}

impl NumberFields {
    fn of(snap: &Snapshot) -> NumberFields {
        NumberFields {
            weights: snap.clusters.iter().map(|c| c.weight.to_string()).collect(),
            capacities: snap.vms.iter().map(|v| v.capacity.to_string()).collect(),
            sizes: snap.repls.iter().map(|r| r.size.to_string()).collect(),
        }
    }
}

/// The snapshot as rows per table, in foreign-key order.
fn copy_steps<'a>(snap: &'a Snapshot, numbers: &'a NumberFields) -> Vec<CopyStep<'a>> {
    let cluster_state = |s: ClusterState| {
        if s == ClusterState::Active {
            "active"
        } else {
            "draining"
        }
    };
    let vm_state = |s: VmState| match s {
        VmState::Active => "active",
        VmState::Draining => "draining",
        VmState::Down => "down",
    };
    vec![
        (
            "regions",
            "name, edge_addr",
            "name",
            snap.regions
                .iter()
                .map(|r| vec![Some(r.name.as_str()), Some(r.edge_addr.as_str())])
                .collect(),
        ),
        (
            "clusters",
            "name, region, state, weight",
            "name",
            snap.clusters
                .iter()
                .zip(&numbers.weights)
                .map(|(c, w)| {
                    vec![
                        Some(c.name.as_str()),
                        Some(c.region.as_str()),
                        Some(cluster_state(c.state)),
                        Some(w.as_str()),
                    ]
                })
                .collect(),
        ),
        (
            "vms",
            "id, cluster, addr, metrics_addr, state, capacity",
            "id",
            snap.vms
                .iter()
                .zip(&numbers.capacities)
                .map(|(v, capacity)| {
                    vec![
                        Some(v.id.as_str()),
                        Some(v.cluster.as_str()),
                        Some(v.addr.as_str()),
                        v.metrics_addr.as_deref(),
                        Some(vm_state(v.state)),
                        Some(capacity.as_str()),
                    ]
                })
                .collect(),
        ),
        (
            "repls",
            "id, slug, owner, region, cluster, transfer_to, size",
            "id",
            snap.repls
                .iter()
                .zip(&numbers.sizes)
                .map(|(r, size)| {
                    vec![
                        Some(r.id.as_str()),
                        Some(r.slug.as_str()),
                        r.owner.as_deref(),
                        Some(r.region.as_str()),
                        r.cluster.as_deref(),
                        r.transfer_to.as_deref(),
                        Some(size.as_str()),
                    ]
                })
                .collect(),
        ),
        (
            "containers",
            "repl_id, vm_id, started_at",
            "repl_id",
            snap.containers
                .iter()
                .map(|c| {
                    vec![
                        Some(c.repl_id.as_str()),
                        Some(c.vm_id.as_str()),
                        Some(c.started_at.as_deref().unwrap_or("now")),
                    ]
                })
                .collect(),
        ),
        (
            "custom_domains",
            "hostname, repl_id",
            "hostname",
            snap.custom_domains
                .iter()
                .map(|d| vec![Some(d.hostname.as_str()), Some(d.repl_id.as_str())])
                .collect(),
        ),
        (
            "tombstones",
            "repl_id, from_cluster, to_cluster, expires_at",
            "repl_id, from_cluster",
            snap.tombstones
                .iter()
                .map(|t| {
                    vec![
                        Some(t.repl_id.as_str()),
                        Some(t.from_cluster.as_str()),
                        Some(t.to_cluster.as_str()),
                        Some(t.expires_at.as_str()),
                    ]
                })
                .collect(),
        ),
    ]
}

async fn import(client: &mut Client, file: &std::path::Path) -> Result<()> {
    let started = std::time::Instant::now();
    let snap = read_snapshot(file).with_context(|| format!("reading {}", file.display()))?;
    eprintln!(
        "placectl: importing {} regions, {} clusters, {} vms, {} repls, {} containers, {} custom domains, {} tombstones",
        snap.regions.len(),
        snap.clusters.len(),
        snap.vms.len(),
        snap.repls.len(),
        snap.containers.len(),
        snap.custom_domains.len(),
        snap.tombstones.len()
    );
    let tx = client.transaction().await?;
    // Bulk loads skip the per-row change log when the role may; edges are
    // told to reload instead. Without the privilege every row is logged.
    let bulk = tx
        .batch_execute("SET LOCAL session_replication_role = replica")
        .await
        .is_ok();
    let numbers = NumberFields::of(&snap);
    let steps = copy_steps(&snap, &numbers);
    for (table, columns, key, rows) in steps {
        let n = copy_rows(&tx, table, columns, rows.into_iter())
            .await
            .with_context(|| format!("copying {table}"))?;
        let m = merge(&tx, table, columns, key)
            .await
            .with_context(|| format!("merging {table}"))?;
        eprintln!(
            "placectl: {table}: {n} rows read, {m} written ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    if bulk {
        tx.batch_execute("SET LOCAL session_replication_role = origin").await?;
        tx.query_one("SELECT edgeplane_request_reload()", &[]).await?;
    }
    tx.commit().await?;
    println!(
        "imported {} in {:.1} s",
        file.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints a move's outcome: one line per repl for a dry run or a single
/// repl, then the totals.
fn print_moves(what: &str, r: &MoveReport, tombstone_secs: u32, dry_run: bool, each: bool) {
    if each || dry_run {
        for m in &r.moves {
            println!(
                "{}repl {}: {} {} -> {} (region {}){}",
                if dry_run { "would: " } else { "" },
                m.repl,
                if m.action == MoveAction::Move {
                    "moved"
                } else {
                    m.action.as_str()
                },
                m.from.as_deref().unwrap_or("(no cluster)"),
                m.to,
                m.to_region,
                match m.action {
                    MoveAction::Move => format!("; tombstone for {tombstone_secs} s"),
                    _ => String::new(),
                }
            );
        }
    }
    let counts: Vec<String> = [
        MoveAction::Move,
        MoveAction::Lazy,
        MoveAction::Rehome,
        MoveAction::AlreadyThere,
    ]
    .into_iter()
    .map(|a| (a, r.count(a)))
    .filter(|&(_, n)| n > 0)
    .map(|(a, n)| format!("{n} {}", a.as_str()))
    .collect();
    for s in &r.short {
        match r.version {
            None => println!("would not fit: {s}"),
            Some(_) => println!("moved with --force, but {s}"),
        }
    }
    match r.version {
        None => println!("dry run: {what}: {} (nothing changed)", counts.join(", ")),
        Some(v) => println!(
            "{what}: {} in one transaction (placement version {v})",
            counts.join(", ")
        ),
    }
}

/// `add-vm`: checks what the edges would skip (an address without a
/// port, a capacity out of range, an unknown cluster) before writing.
async fn add_vm(
    client: &Client,
    id: &str,
    cluster: &str,
    addr: &str,
    metrics_addr: Option<&str>,
    capacity: i32,
    state: &str,
) -> Result<()> {
    let port = addr.rsplit_once(':').and_then(|(h, p)| (!h.is_empty()).then_some(p));
    if port.and_then(|p| p.parse::<u16>().ok()).is_none_or(|p| p == 0) {
        bail!("--addr {addr:?}: want HOST:PORT");
    }
    if let Some(m) = metrics_addr {
        if m.parse::<std::net::SocketAddr>().is_err() {
            bail!("--metrics-addr {m:?}: want IP:PORT");
        }
    }
    let max = edgeplane_control_sync::snapshot::MAX_VM_CAPACITY;
    if capacity < 1 || capacity as u64 > max as u64 {
        bail!("--capacity {capacity}: want 1 to {max}");
    }
    let found = client
        .query_opt("SELECT region, state FROM clusters WHERE name = $1", &[&cluster])
        .await?;
    let Some(row) = found else {
        bail!("no cluster {cluster:?} (placectl add-cluster {cluster} --region R first)");
    };
    let (region, cluster_state): (String, String) = (row.get(0), row.get(1));
    client
        .execute(
            "INSERT INTO vms (id, cluster, addr, metrics_addr, state, capacity) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET cluster = EXCLUDED.cluster, addr = EXCLUDED.addr,
               metrics_addr = EXCLUDED.metrics_addr, state = EXCLUDED.state, capacity = EXCLUDED.capacity",
            &[&id, &cluster, &addr, &metrics_addr, &state, &capacity],
        )
        .await
        .with_context(|| format!("adding vm {id:?}"))?;
    println!("vm {id} ({state}, capacity {capacity}) added to cluster {cluster} in {region}");
    if metrics_addr.is_none() {
        println!(
            "no --metrics-addr: edges cannot scrape its health, and a VM without a good sample takes no new repls"
        );
    }
    if cluster_state != "active" {
        println!("cluster {cluster} is {cluster_state}: it takes no new repls");
    }
    Ok(())
}

async fn ls(client: &Client) -> Result<()> {
    let version: i64 = client
        .query_one("SELECT version FROM placement_version", &[])
        .await?
        .get(0);
    let mut out = format!("placement version {version}\n\nregions:\n");
    for r in client
        .query(
            "SELECT g.name, g.edge_addr, (SELECT count(*) FROM repls r WHERE r.region = g.name)
               FROM regions g ORDER BY g.name",
            &[],
        )
        .await?
    {
        let (n, a, c): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        writeln!(out, "  {n:<16} edge {a:<22} {c} repls")?;
    }
    out.push_str("\nclusters:\n");
    for r in client
        .query(
            "SELECT c.name, c.region, c.state, c.weight,
                    (SELECT count(*) FROM vms v WHERE v.cluster = c.name),
                    (SELECT count(*) FROM vms v WHERE v.cluster = c.name AND v.state = 'active'),
                    (SELECT count(*) FROM containers k JOIN vms v ON v.id = k.vm_id WHERE v.cluster = c.name)
               FROM clusters c ORDER BY c.region, c.name",
            &[],
        )
        .await?
    {
        let (n, g, s, w, vms, active, cont): (String, String, String, i32, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
        writeln!(
            out,
            "  {n:<16} {g:<12} {s:<9} weight {w:<4} vms {active}/{vms} active, {cont} containers"
        )?;
    }
    let live: i64 = client
        .query_one("SELECT count(*) FROM tombstones WHERE expires_at > now()", &[])
        .await?
        .get(0);
    writeln!(out, "\nlive tombstones: {live}")?;
    print!("{out}");
    Ok(())
}
