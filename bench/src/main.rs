//! `edgeplane-bench`: the fake conman VM and (later) load generators and the
//! placement simulator. `anyhow` is used only here, in the binary's main.

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

#[derive(Subcommand)]
enum Cmd {
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
    Sync {
        /// A database URL whose server the benchmark may create databases on.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database_url: String,
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
    },
    /// Simulate a day of repl starts placed by the edge's own balancer under
    /// each policy, pure random and a cloud-LB model; print the table and
    /// write bench/results/sim.{md,json} and SVG histograms.
    Sim {
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
        /// Where results go (default bench/results); `-` writes nothing.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Write a synthetic placement snapshot (JSON) for load runs.
    World {
        #[arg(long, default_value_t = 1_000_000)]
        repls: usize,
        /// Address every VM points at (e.g. one fast backend).
        #[arg(long, default_value = "127.0.0.1:7001")]
        vm_addr: String,
    },
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
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(ws_once(edge, &host, &path, &message))?;
        }
        Cmd::Sync {
            database_url,
            repls,
            rates,
            seconds,
            out,
        } => {
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
                let opts = edgeplane_bench::sync_bench::SyncBenchOptions {
                    admin_url: database_url,
                    repls,
                    rates,
                    seconds,
                    out_dir: out.unwrap_or_else(edgeplane_bench::sync_bench::default_out_dir),
                };
                edgeplane_bench::sync_bench::run(opts, vm_addr).await
            })?;
        }
        Cmd::Sim {
            starts,
            edges,
            clusters,
            vms_per_cluster,
            scrape_delay_s,
            seed,
            only,
            out,
        } => {
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
            let out = match out {
                Some(p) if p.as_os_str() == "-" => None,
                Some(p) => Some(p),
                None => Some(edgeplane_bench::sync_bench::default_out_dir()),
            };
            let command: Vec<String> = std::env::args().skip(1).collect();
            sim::report::run_all(
                &o,
                &scenarios,
                out.as_deref(),
                &format!("edgeplane-bench {}", command.join(" ")),
            )?;
        }
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
