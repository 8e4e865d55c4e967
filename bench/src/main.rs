//! `edgeplane-bench`: the fake conman VM and (later) load generators and the
//! placement simulator. `anyhow` is used only here, in the binary's main.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

use edgeplane_bench::fake_vm::{self, FakeVmOptions};

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
    /// Write a synthetic placement snapshot (JSON) for load runs.
    World {
        #[arg(long, default_value_t = 1_000_000)]
        repls: usize,
        /// Address every VM points at (e.g. one fast backend).
        #[arg(long, default_value = "127.0.0.1:7001")]
        vm_addr: String,
    },
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().cmd {
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
