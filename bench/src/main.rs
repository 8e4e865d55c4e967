//! `edgeplane-bench`: the fake conman VM, the load generators, the
//! placement simulator, the benchmarks that need a database or a process,
//! and the comparison harness against nginx, HAProxy and Caddy. Each subcommand is
//! its arguments (clap) and a `run` that hands them to the library
//! (`edgeplane_bench::*`); what they share is below ([`current_thread`],
//! [`print_json`], [`results_dir`], [`command_line`], [`Database`],
//! [`Span`]). `anyhow` is used only here, in the binary's main.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

use edgeplane_bench::fake_vm::{self, FakeVmOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "edgeplane-bench", about = "edgeplane test and benchmark tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// A runtime for one subcommand's I/O (load generators run on one thread:
/// the proxy under test gets the other core).
fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// A result as one JSON line on stdout (what the harness reads).
fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Where results go: `--out DIR`, bench/results by default, `-` nowhere.
fn results_dir(out: Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    match out {
        Some(p) if p.as_os_str() == "-" => None,
        Some(p) => Some(p),
        None => Some(edgeplane_bench::sync_bench::default_out_dir()),
    }
}

/// The command line, as results record it.
fn command_line() -> String {
    format!(
        "edgeplane-bench {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    )
}

/// The PostgreSQL server a benchmark may create its databases on.
#[derive(clap::Args)]
struct Database {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

/// A measured run: `--seconds` counted after `--warmup-ms` of warm-up.
#[derive(clap::Args)]
struct Span {
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
}

impl Span {
    fn warmup(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.warmup_ms)
    }
    fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
}

/// Where a WebSocket load generator opens its tunnels.
#[derive(clap::Args)]
struct WsTargetArgs {
    /// The proxy (or backend) address.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value = "app0.repl.co")]
    host: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// `wss://`: TLS to the target, trusting the certificate(s) in this PEM file.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

impl WsTargetArgs {
    fn into_target(self) -> anyhow::Result<edgeplane_bench::load::ws::WsTarget> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(edgeplane_bench::load::tls::client_config(ca, &["http/1.1"], true)?),
            None => None,
        };
        Ok(edgeplane_bench::load::ws::WsTarget {
            addr: self.target,
            host: self.host,
            path: self.path,
            tls,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Simulate the certificate issuer's renewals (docs/certificates.md):
    /// N certificates issued at once, renewed over DAYS with the issuer's
    /// cap and jitter, the lease failing over and an outage midway.
    CertRenewals {
        #[arg(long, default_value_t = 10_000)]
        certificates: usize,
        #[arg(long, default_value_t = 60)]
        orders_per_minute: u32,
        #[arg(long, default_value_t = 90)]
        lifetime_days: u32,
        #[arg(long, default_value_t = 200)]
        days: u32,
    },
    /// Run a fake conman VM: HTTP echo, WebSocket echo, Prometheus metrics.
    FakeVm {
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:0")]
        metrics_listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        containers: u64,
        #[arg(long, default_value_t = 0.0)]
        cpu: f64,
    },
    /// Open a WebSocket through an edge, send MESSAGE, print the echo.
    Ws {
        /// The edge's proxy address.
        #[arg(long)]
        edge: SocketAddr,
        /// Host header (the app).
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        message: String,
    },
    /// Benchmark the PostgreSQL sync: full load of N repls (time, memory per
    /// repl) and commit-to-publish latency at each rate through a real edge
    /// serving traffic. Writes bench/results/sync.{json,md} and an SVG.
    Sync(SyncArgs),
    /// Benchmark an edge in a world of millions of apps, most homed in other
    /// regions: full load time, resident bytes per local and per foreign
    /// app, directory lookups, and commit-to-publish of foreign changes.
    /// Writes bench/results/world.{json,md}.
    SyncWorld(SyncWorldArgs),
    /// Simulate a day of repl starts placed by the edge's own balancer under
    /// each policy, pure random and a cloud-LB model; print the table and
    /// write bench/results/sim.{md,json} and SVG histograms.
    Sim(SimArgs),
    /// Measure the consistent-hash ring: share max/mean at each cluster
    /// count (equal and mixed weights) and keys moved when a cluster joins
    /// or drains, against the ideal; writes bench/results/ring.{md,json}
    /// and ring_moves.svg.
    Ring {
        /// Cluster counts, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
        clusters: Vec<usize>,
        /// Repl ids hashed.
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        /// Where results go (default bench/results); `-` writes nothing.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// The fast backend of the comparison runs: canned 200s and WebSocket echo.
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// HTTP/1.1 keep-alive load, closed loop or at a fixed offered rate;
    /// prints one JSON line.
    HttpLoad(HttpLoadArgs),
    /// WebSocket echo round trips over N connections; prints one JSON line.
    WsLoad(WsLoadArgs),
    /// Hold N idle WebSocket tunnels: prints {"opened","failed_open"}, waits
    /// for a line on stdin (measure the proxy meanwhile), checks every tunnel
    /// echoes, prints {"echoed","failed_echo"} and exits.
    WsIdle(WsIdleArgs),
    /// New TLS connections back to back (handshake, one request, close),
    /// full or resumed; prints one JSON line.
    TlsHandshakes(TlsHandshakesArgs),
    /// edgeplane vs a bare Pingora pass-through vs nginx vs HAProxy vs Caddy (and no
    /// proxy): HTTP saturation and fixed-rate runs, WebSocket echo, idle
    /// tunnels; over TLS HTTP/2, HTTP/1.1, handshakes, wss echo and idle
    /// wss tunnels. Installs nginx/haproxy/caddy/wrk/h2load if absent. Writes
    /// bench/results/compare.{md,json} and compare_cpu.svg.
    Compare(CompareArgs),
    /// Write a synthetic placement snapshot (JSON) for load runs.
    World {
        #[arg(long, default_value_t = 1_000_000)]
        repls: usize,
        /// Address every VM points at (e.g. one fast backend).
        #[arg(long, default_value = "127.0.0.1:7001")]
        vm_addr: String,
    },
}

#[derive(clap::Args)]
struct SyncArgs {
    #[command(flatten)]
    db: Database,
    #[arg(long, default_value_t = 1_000_000)]
    repls: usize,
    /// Changes per second, comma separated.
    #[arg(long, default_value = "200,1000", value_delimiter = ',')]
    rates: Vec<u32>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

impl SyncArgs {
    fn run(self) -> anyhow::Result<()> {
        let SyncArgs {
            db,
            repls,
            rates,
            seconds,
            out,
        } = self;
        with_fake_vm(|vm_addr| {
            let opts = edgeplane_bench::sync_bench::SyncBenchOptions {
                admin_url: db.database_url,
                repls,
                rates,
                seconds,
                out_dir: out.unwrap_or_else(edgeplane_bench::sync_bench::default_out_dir),
            };
            edgeplane_bench::sync_bench::run(opts, vm_addr)
        })
    }
}

#[derive(clap::Args)]
struct SyncWorldArgs {
    #[command(flatten)]
    db: Database,
    /// Repls in the world.
    #[arg(long, default_value_t = 10_000_000)]
    world: usize,
    /// Of those, homed in the edge's region.
    #[arg(long, default_value_t = 1_000_000)]
    local: usize,
    /// Custom domains, spread over all repls.
    #[arg(long, default_value_t = 200_000)]
    domains: usize,
    /// Foreign changes per second, comma separated.
    #[arg(long, default_value = "1000", value_delimiter = ',')]
    rates: Vec<u32>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

impl SyncWorldArgs {
    fn run(self) -> anyhow::Result<()> {
        let SyncWorldArgs {
            db,
            world,
            local,
            domains,
            rates,
            seconds,
            out,
        } = self;
        with_fake_vm(|vm_addr| {
            let opts = edgeplane_bench::world_bench::WorldBenchOptions {
                admin_url: db.database_url,
                world,
                local,
                domains,
                rates,
                seconds,
                out_dir: out.unwrap_or_else(edgeplane_bench::sync_bench::default_out_dir),
            };
            edgeplane_bench::world_bench::run(opts, vm_addr)
        })
    }
}

#[derive(clap::Args)]
struct SimArgs {
    #[arg(long, default_value_t = 1_000_000)]
    starts: usize,
    #[arg(long, default_value_t = 12)]
    edges: usize,
    #[arg(long, default_value_t = 10)]
    clusters: usize,
    #[arg(long, default_value_t = 100)]
    vms_per_cluster: usize,
    #[arg(long, default_value_t = 5)]
    scrape_delay_s: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Run the size-aware simulations instead (machines of two sizes,
    /// oversize starts, moving one hot user): sim_sizes.{md,json} and plots.
    #[arg(long)]
    sizes: bool,
    /// Where results go (default bench/results); `-` writes nothing.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

impl SimArgs {
    fn run(self) -> anyhow::Result<()> {
        let SimArgs {
            starts,
            edges,
            clusters,
            vms_per_cluster,
            scrape_delay_s,
            seed,
            only,
            sizes,
            out,
        } = self;
        use edgeplane_bench::sim;
        let o = sim::SimOptions {
            starts,
            edges,
            clusters,
            vms_per_cluster,
            scrape_delay_s,
            seed,
            ..Default::default()
        };
        let scenarios: Vec<_> = sim::default_scenarios()
            .into_iter()
            .filter(|s| only.as_deref().is_none_or(|f| s.name.contains(f)))
            .collect();
        let out = results_dir(out);
        if sizes {
            sim::sizes_report::run_sizes(&o, out.as_deref(), &command_line())?;
            return Ok(());
        }
        sim::report::run_all(&o, &scenarios, out.as_deref(), &command_line())?;

        Ok(())
    }
}

#[derive(clap::Args)]
struct HttpLoadArgs {
    #[arg(long)]
    target: SocketAddr,
    /// Host names, one per line, cycled over.
    #[arg(long)]
    hosts_file: Option<std::path::PathBuf>,
    /// One Host name (when no file is given).
    #[arg(long, default_value = "app0.repl.co")]
    host: String,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Offered requests per second (open loop); omit for closed loop.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
}

impl HttpLoadArgs {
    fn run(self) -> anyhow::Result<()> {
        let HttpLoadArgs {
            target,
            hosts_file,
            host,
            path,
            connections,
            rate,
            seconds,
            warmup_ms,
        } = self;
        let hosts = match hosts_file {
            Some(f) => std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
                .collect(),
            None => vec![host],
        };
        anyhow::ensure!(!hosts.is_empty(), "no hosts to load");
        anyhow::ensure!(connections > 0, "--connections must be at least 1");
        let o = edgeplane_bench::load::http::HttpLoadOptions {
            target,
            hosts,
            path,
            connections,
            rate,
            duration: std::time::Duration::from_secs(seconds),
            warmup: std::time::Duration::from_millis(warmup_ms),
        };
        print_json(&current_thread()?.block_on(edgeplane_bench::load::http::run(o)))
    }
}

#[derive(clap::Args)]
struct WsLoadArgs {
    #[command(flatten)]
    to: WsTargetArgs,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[command(flatten)]
    span: Span,
}

impl WsLoadArgs {
    fn run(self) -> anyhow::Result<()> {
        let (warmup, duration) = (self.span.warmup(), self.span.duration());
        let t = self.to.into_target()?;
        let r = current_thread()?.block_on(edgeplane_bench::load::ws::echo(
            t,
            self.connections,
            self.size,
            warmup,
            duration,
        ));
        print_json(&r)
    }
}

#[derive(clap::Args)]
struct TlsHandshakesArgs {
    /// The proxy's TLS address.
    #[arg(long)]
    target: SocketAddr,
    /// SNI and Host.
    #[arg(long, default_value = "app0.repl.co")]
    host: String,
    /// The certificate(s) to trust (PEM).
    #[arg(long)]
    tls_ca: std::path::PathBuf,
    /// Resume sessions with the tickets earlier connections received.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[command(flatten)]
    span: Span,
}

impl TlsHandshakesArgs {
    fn run(self) -> anyhow::Result<()> {
        use edgeplane_bench::load::tls;
        let cfg = tls::client_config(&self.tls_ca, &["http/1.1"], self.resume)?;
        let r = current_thread()?.block_on(tls::handshakes(
            self.target,
            self.host,
            cfg,
            self.resume,
            self.concurrency,
            self.span.warmup(),
            self.span.duration(),
        ));
        print_json(&r)
    }
}

#[derive(clap::Args)]
struct WsIdleArgs {
    #[command(flatten)]
    to: WsTargetArgs,
    #[arg(long, default_value_t = 10_000)]
    tunnels: usize,
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

impl WsIdleArgs {
    fn run(self) -> anyhow::Result<()> {
        let WsIdleArgs {
            to,
            tunnels,
            concurrency,
        } = self;
        use edgeplane_bench::load::ws;
        let t = to.into_target()?;
        current_thread()?.block_on(async {
            let (open, failed) = ws::open_idle(&t, tunnels, concurrency).await;
            println!("{}", serde_json::json!({"opened": open.len(), "failed_open": failed}));
            let mut line = String::new();
            tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await??;
            let (ok, bad, _open) = ws::check_all(open, concurrency).await;
            println!("{}", serde_json::json!({"echoed": ok, "failed_echo": bad}));
            anyhow::Ok(())
        })?;

        Ok(())
    }
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Seconds-long run that only proves the harness works.
    #[arg(long)]
    smoke: bool,
    /// Peers, comma separated (direct, edgeplane, edgeplane-shipped,
    /// pingora, nginx, haproxy, caddy; edgeplane-before with --before).
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// An earlier edgeplane binary to run beside this one as peer
    /// `edgeplane-before` (added after `edgeplane` unless --peers names it).
    #[arg(long)]
    before: Option<std::path::PathBuf>,
    #[arg(long)]
    rounds: Option<usize>,
    #[arg(long)]
    seconds: Option<u64>,
    /// Seconds per WebSocket echo run.
    #[arg(long)]
    ws_seconds: Option<u64>,
    /// Offered rate of the fixed-rate run (default: half the slowest
    /// proxy's saturation rate).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    repls: Option<usize>,
    #[arg(long)]
    idle_tunnels: Option<usize>,
    /// WebSocket connection counts, comma separated.
    #[arg(long, value_delimiter = ',')]
    ws_connections: Option<Vec<usize>>,
    /// WebSocket message sizes, comma separated.
    #[arg(long, value_delimiter = ',')]
    ws_sizes: Option<Vec<usize>>,
    /// wss message sizes, comma separated.
    #[arg(long, value_delimiter = ',')]
    tls_ws_sizes: Option<Vec<usize>>,
    /// Which halves to run: plain (HTTP, ws://), tls (HTTP/2, HTTP/1.1
    /// over TLS, handshakes, wss); default both.
    #[arg(long, value_delimiter = ',')]
    stages: Option<Vec<String>>,
    /// Where results go (default bench/results); `-` writes nothing.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

impl CompareArgs {
    fn run(self) -> anyhow::Result<()> {
        let CompareArgs {
            smoke,
            peers,
            before,
            rounds,
            seconds,
            ws_seconds,
            rate,
            repls,
            idle_tunnels,
            ws_connections,
            ws_sizes,
            tls_ws_sizes,
            stages,
            out,
        } = self;
        use edgeplane_bench::compare::{self, CompareOptions, PeerKind};
        let mut o = if smoke {
            CompareOptions::smoke()
        } else {
            CompareOptions::full()
        };
        if let Some(p) = peers {
            o.peers = p
                .iter()
                .map(|s| PeerKind::parse(s).ok_or_else(|| anyhow::anyhow!("unknown peer {s:?}")))
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(bin) = before {
            anyhow::ensure!(bin.is_file(), "--before: {} is not a file", bin.display());
            if !o.peers.contains(&PeerKind::EdgeplaneBefore) {
                let at = o
                    .peers
                    .iter()
                    .position(|&p| p == PeerKind::Edgeplane)
                    .map_or(0, |i| i + 1);
                o.peers.insert(at, PeerKind::EdgeplaneBefore);
            }
            o.before_bin = Some(bin);
        } else if o.peers.contains(&PeerKind::EdgeplaneBefore) {
            anyhow::bail!("--peers edgeplane-before needs --before <binary>");
        }
        o.rounds = rounds.unwrap_or(o.rounds).max(1);
        o.http_seconds = seconds.unwrap_or(o.http_seconds);
        o.ws_seconds = ws_seconds.unwrap_or(o.ws_seconds);
        o.rate = rate.or(o.rate);
        o.repls = repls.unwrap_or(o.repls);
        o.idle_tunnels = idle_tunnels.unwrap_or(o.idle_tunnels);
        o.ws_connections = ws_connections.unwrap_or(o.ws_connections);
        o.ws_sizes = ws_sizes.unwrap_or(o.ws_sizes);
        o.tls_ws_sizes = tls_ws_sizes.unwrap_or(o.tls_ws_sizes);
        if let Some(st) = stages {
            if let Some(bad) = st.iter().find(|s| !matches!(s.as_str(), "plain" | "tls")) {
                anyhow::bail!("--stages: unknown stage {bad:?} (plain, tls)");
            }
            o.plain = st.iter().any(|s| s == "plain");
            o.tls = st.iter().any(|s| s == "tls");
        }
        o.out = results_dir(out);
        o.command = command_line();
        let r = compare::run(&o)?;
        println!("{}", compare::report::markdown(&r));

        Ok(())
    }
}

/// Runs `bench` on a two-thread runtime beside a fake VM (the address every
/// VM of a seeded world points at).
fn with_fake_vm<F, Fut>(bench: F) -> anyhow::Result<()>
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let vm = fake_vm::FakeVmOptions {
            id: "bench-vm".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            containers: 0,
            cpu: 0.0,
        };
        let (vm_addr, _) = fake_vm::start(vm).await?;
        bench(vm_addr).await
    })
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeplane-bench: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::CertRenewals {
            certificates,
            orders_per_minute,
            lifetime_days,
            days,
        } => {
            use edgeplane_control_sync::certs::renewal_sim::{simulate, SimConfig};
            let cfg = SimConfig {
                certificates,
                orders_per_minute,
                lifetime_days,
                days,
                ..SimConfig::default()
            };
            let r = simulate(&cfg);
            println!("{cfg:#?}");
            println!(
                "orders: {} (issuer A {}, issuer B {})",
                r.orders, r.by_issuer[0], r.by_issuer[1]
            );
            println!(
                "most orders started in one minute: {} (cap {orders_per_minute})",
                r.max_orders_in_a_minute
            );
            println!("orders for a name already in flight: {}", r.duplicate_orders);
            println!(
                "certificates past not_after before their renewal started: {}",
                r.expired
            );
            println!("longest wait past renew_after: {} min", r.max_wait_minutes);
            println!("orders per day (day: orders, days without orders left out):");
            for (d, n) in r.per_day.iter().enumerate().filter(|(_, n)| **n > 0) {
                println!("  {d:>3}: {n}");
            }
        }
        Cmd::FakeVm {
            id,
            listen,
            metrics_listen,
            containers,
            cpu,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(fake_vm::run(FakeVmOptions {
                id,
                listen,
                metrics_listen,
                containers,
                cpu,
            }))?;
        }
        Cmd::Ws {
            edge,
            host,
            path,
            message,
        } => {
            current_thread()?.block_on(ws_once(edge, &host, &path, &message))?;
        }
        Cmd::Sync(a) => a.run()?,
        Cmd::SyncWorld(a) => a.run()?,
        Cmd::Sim(a) => a.run()?,
        Cmd::Backend { listen } => {
            current_thread()?.block_on(edgeplane_bench::backend::serve(listen))?;
        }
        Cmd::HttpLoad(a) => a.run()?,
        Cmd::WsLoad(a) => a.run()?,
        Cmd::WsIdle(a) => a.run()?,
        Cmd::TlsHandshakes(a) => a.run()?,
        Cmd::Ring { clusters, keys, out } => {
            use edgeplane_bench::ring_bench;
            let figs = ring_bench::run(&clusters, keys);
            let command = command_line();
            print!("{}", ring_bench::markdown(&figs, &command));
            if let Some(dir) = results_dir(out) {
                ring_bench::write(&dir, &figs, &command)?;
            }
        }
        Cmd::Compare(a) => a.run()?,
        Cmd::World { repls, vm_addr } => {
            let shape = edgeplane_bench::world::WorldShape {
                repls,
                ..Default::default()
            };
            let snap = edgeplane_bench::world::synthetic(shape, |_| vm_addr.clone());
            serde_json::to_writer(std::io::stdout().lock(), &snap)?;
        }
    }
    Ok(())
}

async fn ws_once(edge: SocketAddr, host: &str, path: &str, message: &str) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let stream = tokio::net::TcpStream::connect(edge).await?;
    let req = format!("ws://{host}{path}").into_client_request()?;
    let (mut ws, resp) = match tokio_tungstenite::client_async(req, stream).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => anyhow::bail!("upgrade refused: HTTP {}", r.status()),
        Err(e) => return Err(e.into()),
    };
    let by = resp
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    println!("connected through {edge} to {by}");
    ws.send(Message::text(message)).await?;
    match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(m))) => println!("echo: {}", m.to_text().unwrap_or("<binary>")),
        other => anyhow::bail!("no echo: {other:?}"),
    }
    ws.close(None).await?;
    Ok(())
}
