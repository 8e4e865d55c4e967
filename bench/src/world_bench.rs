//! `edgeplane-bench sync-world`: an edge in a world of millions of apps, most
//! of them homed in other regions (the world directory at scale).
//!
//! 1. Seeds a database with `world` repls (default 10,000,000): `local`
//!    (default 1,000,000) homed in region `bench` (one in four running, on
//!    50 clusters x 20 VMs), the rest spread over four other regions
//!    (`far1`..`far4`), and `domains` custom domains (default 200,000)
//!    spread over all of them; set-based SQL with triggers off. Region
//!    `void` has no apps at all.
//! 2. Full load: the edge's own full-load code, in this process, three
//!    times: wall time, and the table's own accounting of bytes per local
//!    repl and per directory name.
//! 3. Resident memory of real `edgeplane serve` processes (RSS once ready
//!    and settled): one of region `bench` (local + directory), one of
//!    region `void` (directory only: every app is foreign), one on a
//!    two-app file snapshot (the process baseline). Two equations give the
//!    resident bytes per local app and per foreign app.
//! 4. Directory lookups: random present and absent names against the
//!    loaded directory, ns per lookup (criterion's `directory` bench
//!    measures the same function at the same size).
//! 5. Commit-to-publish of foreign changes (another region's repl moving
//!    between two other regions, which also re-reads its custom domains)
//!    at each rate, through the `bench` edge serving steady traffic.
//!
//! Writes `bench/results/world.json` and `world.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use edgeplane_control_sync::directory::Name;
use edgeplane_control_sync::postgres::{load, migrate::migrate};

use crate::procstat::machine;
use crate::sync_bench::{connect, fresh_database, pct, rate_run, start_edge, start_edge_with, ChangeKind, EdgeProc};

pub struct WorldBenchOptions {
    pub admin_url: String,
    pub world: usize,
    pub local: usize,
    pub domains: usize,
    pub rates: Vec<u32>,
    pub seconds: u64,
    pub out_dir: PathBuf,
}

/// Other regions the foreign apps are spread over.
const FAR: usize = 4;

async fn seed(url: &str, o: &WorldBenchOptions, vm_addr: SocketAddr) -> Result<()> {
    let mut c = connect(url).await?;
    migrate(&mut c).await?;
    let t = Instant::now();
    let step = (o.world / o.domains.max(1)).max(1);
    let far: Vec<String> = (1..=FAR)
        .map(|i| format!("('far{i}', '127.0.0.{}:1')", i + 1))
        .collect();
    let sql = format!(
        "BEGIN;
         SET LOCAL session_replication_role = replica;
         INSERT INTO regions VALUES ('bench', '127.0.0.1:1'), ('void', '127.0.0.9:1'), {far};
         INSERT INTO clusters SELECT 'c' || i, 'bench', 'active', 100 FROM generate_series(0, 49) i;
         INSERT INTO vms SELECT 'vm' || i, 'c' || (i / 20), '{vm_addr}', NULL, 'active' FROM generate_series(0, 999) i;
         INSERT INTO repls SELECT 'r' || i, 'app' || i, 'u' || (i % 1000),
                CASE WHEN i < {local} THEN 'bench' ELSE 'far' || (1 + i % {FAR}) END, NULL, NULL
           FROM generate_series(0, {last}) i;
         INSERT INTO containers SELECT 'r' || i, 'vm' || (i % 1000), now() FROM generate_series(0, {local_last}, 4) i;
         INSERT INTO custom_domains SELECT 'd' || i || '.example.com', 'r' || i FROM generate_series(0, {last}, {step}) i;
         SET LOCAL session_replication_role = origin;
         SELECT edgeplane_request_reload();
         COMMIT; ANALYZE;",
        far = far.join(", "),
        local = o.local,
        last = o.world - 1,
        local_last = o.local - 1,
    );
    c.batch_execute(&sql).await?;
    eprintln!(
        "world bench: seeded {} repls ({} homed here) and {} custom domains in {:.1} s",
        o.world,
        o.local,
        o.world.div_ceil(step),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(serde::Serialize)]
struct Load {
    seconds: Vec<f64>,
    local_repls: usize,
    directory_names: usize,
    table_bytes_per_local_repl: f64,
    directory_bytes_per_name: f64,
    lookup_ns_present: f64,
    lookup_ns_absent: f64,
}

/// Times random lookups of present (`app<i>`, foreign) and absent names.
fn lookups(t: &edgeplane_control_sync::RoutingTable, local: usize, world: usize) -> (f64, f64) {
    const N: usize = 2_000_000;
    let names: Vec<String> = (0..N)
        .map(|i| format!("app{}", local + (i.wrapping_mul(2_654_435_761) % (world - local))))
        .collect();
    let missing: Vec<String> = (0..N).map(|i| format!("nope{i}")).collect();
    let timed = |names: &[String]| {
        let start = Instant::now();
        let mut found = 0usize;
        for n in names {
            found += t.home_region(Name::Slug(std::hint::black_box(n))).is_some() as usize;
        }
        (start.elapsed().as_nanos() as f64 / names.len() as f64, found)
    };
    let (present, found) = timed(&names);
    assert_eq!(found, names.len(), "every foreign app is in the directory");
    let (absent, found) = timed(&missing);
    assert_eq!(found, 0, "no absent name is found");
    (present, absent)
}

async fn full_loads(url: &str, o: &WorldBenchOptions) -> Result<Load> {
    let mut client = connect(url).await?;
    let mut seconds = Vec::new();
    let mut last = None;
    for run in 0..3 {
        drop(last.take());
        let t = Instant::now();
        let (table, skipped) = load::full_load(&mut client, "bench").await?;
        let s = t.elapsed().as_secs_f64();
        if !skipped.is_empty() {
            bail!("seed rows were skipped: {skipped:?}");
        }
        let c = table.counts();
        eprintln!(
            "world bench: full load {}: {} local repls + {} directory names in {s:.2} s",
            run + 1,
            c.repls,
            c.directory
        );
        seconds.push(s);
        last = Some(table);
    }
    let t = last.unwrap();
    let c = t.counts();
    let (present, absent) = lookups(&t, o.local, o.world);
    eprintln!("world bench: directory lookup {present:.1} ns (present), {absent:.1} ns (absent)");
    Ok(Load {
        seconds,
        local_repls: c.repls,
        directory_names: c.directory,
        table_bytes_per_local_repl: t.approx_repl_bytes() as f64 / c.repls as f64,
        directory_bytes_per_name: t.directory().approx_bytes() as f64 / c.directory as f64,
        lookup_ns_present: present,
        lookup_ns_absent: absent,
    })
}

/// RSS of a ready edge after its allocator settled.
async fn settled_rss(edge: &EdgeProc) -> Result<u64> {
    let t = Instant::now();
    crate::http1::wait_ok(edge.admin, "admin", "/readyz", Duration::from_secs(300))
        .await
        .context("edge not ready")?;
    eprintln!("world bench: edge ready in {:.1} s", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(crate::procstat::rss(edge.child.id()))
}

/// An edge on a two-app snapshot: the process's own baseline.
async fn baseline_rss(vm_addr: SocketAddr) -> Result<u64> {
    let dir = tempfile::tempdir()?;
    let snap = serde_json::json!({
        "regions": [{"name": "bench", "edge_addr": "127.0.0.1:1"}],
        "clusters": [{"name": "c0", "region": "bench", "state": "active"}],
        "vms": [{"id": "vm0", "cluster": "c0", "addr": vm_addr.to_string(), "state": "active"}],
        "repls": [{"id": "r0", "slug": "app0", "region": "bench"}, {"id": "r1", "slug": "app1", "region": "bench"}]
    });
    let file = dir.path().join("snap.json");
    std::fs::write(&file, snap.to_string())?;
    let edge = start_edge_with("bench", &format!("source = \"file\"\nfile = \"{}\"\n", file.display()))?;
    let rss = settled_rss(&edge).await?;
    drop(edge);
    Ok(rss)
}

pub async fn run(o: WorldBenchOptions, vm_addr: SocketAddr) -> Result<()> {
    if o.local == 0 || o.local >= o.world {
        bail!("--local must be between 1 and --world - 1");
    }
    let db = "edgeplane_bench_world";
    let (admin, url) = fresh_database(&o.admin_url, db).await?;
    seed(&url, &o, vm_addr).await?;
    let loads = full_loads(&url, &o).await?;

    let base = baseline_rss(vm_addr).await?;
    let void_edge = start_edge(&url, "void")?;
    let rss_void = settled_rss(&void_edge).await?;
    drop(void_edge);
    let edge = start_edge(&url, "bench")?;
    let rss_bench = settled_rss(&edge).await?;
    let foreign_void = o.world + o.world.div_ceil((o.world / o.domains.max(1)).max(1));
    let per_foreign = rss_void.saturating_sub(base) as f64 / foreign_void as f64;
    let foreign_bench = loads.directory_names as f64;
    let per_local = (rss_bench.saturating_sub(base) as f64 - per_foreign * foreign_bench) / o.local as f64;
    eprintln!(
        "world bench: RSS baseline {} MiB, void edge {} MiB, bench edge {} MiB: {per_local:.0} B per local app, {per_foreign:.1} B per foreign name",
        base >> 20,
        rss_void >> 20,
        rss_bench >> 20
    );

    let mut runs = Vec::new();
    for &rate in &o.rates {
        let kind = ChangeKind::ForeignRegion {
            first: o.local,
            count: o.world - o.local,
            far: FAR,
        };
        let r = rate_run(&url, &edge, rate, o.seconds, o.local, kind).await?;
        eprintln!(
            "world bench: {rate} foreign changes/s: publish p50 {:.1} ms p99 {:.1} ms max {:.1} ms; requests p99 {:.2} ms, {} errors",
            r.publish_ms_p50, r.publish_ms_p99, r.publish_ms_max, r.request_ms_p99, r.request_errors
        );
        runs.push(r);
    }
    drop(edge);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;

    let mut sorted = loads.seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = pct(&sorted, 0.5);
    std::fs::create_dir_all(&o.out_dir)?;
    let json = serde_json::json!({
        "machine": machine(),
        "world": o.world, "local": o.local, "domains": o.domains,
        "full_load": loads,
        "rss_bytes": {"baseline": base, "void_edge": rss_void, "bench_edge": rss_bench},
        "resident_bytes_per_local_app": per_local,
        "resident_bytes_per_foreign_name": per_foreign,
        "foreign_changes": runs.iter().map(|r| r.summary()).collect::<Vec<_>>(),
    });
    std::fs::write(
        o.out_dir.join("world.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    let mut md = format!(
        "| measure | value | target |\n|---|---:|---:|\n\
| world | {} repls, {} homed here, {} custom domains | |\n\
| full load (local rows + directory), median of 3 | {median:.2} s | <= 15 s |\n\
| resident bytes per local app (edge RSS) | {per_local:.0} B | <= 200 B |\n\
| resident bytes per foreign app name (edge RSS) | {per_foreign:.1} B | <= 16 B |\n\
| table accounting: bytes per local repl / per directory name | {:.0} B / {:.1} B | |\n\
| directory lookup, present / absent name | {:.1} / {:.1} ns | <= 100 ns |\n",
        o.world,
        o.local,
        o.domains,
        loads.table_bytes_per_local_repl,
        loads.directory_bytes_per_name,
        loads.lookup_ns_present,
        loads.lookup_ns_absent,
    );
    for r in &runs {
        md += &format!(
            "| {} foreign changes/s: commit-to-publish p50 / p99 / max | {:.0} / {:.0} / {:.0} ms | p99 <= 50 ms |\n\
| {} foreign changes/s: requests p50 / p99 ({} requests, {} errors) | {:.2} / {:.2} ms | |\n",
            r.rate,
            r.publish_ms_p50,
            r.publish_ms_p99,
            r.publish_ms_max,
            r.rate,
            r.requests,
            r.request_errors,
            r.request_ms_p50,
            r.request_ms_p99
        );
    }
    std::fs::write(o.out_dir.join("world.md"), &md)?;
    println!("{md}");
    Ok(())
}
