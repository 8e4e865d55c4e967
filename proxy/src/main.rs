//! `edgeplane`: the edge binary (docs/contract.md §5 CLI).
//!
//! `serve` runs the edge; `check` validates a config (and its file
//! snapshot); `route` explains a routing decision; `snapshot dump` prints
//! the placement table as snapshot JSON; `token` mints a workspace token
//! for testing. Errors in config print as `file:line: key: message`, exit 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use edgeplane_proxy::clock::now_ms;
use edgeplane_proxy::route::{self, RouteContext};
use edgeplane_proxy::server::{self, ServeFlags};

/// mimalloc, with the allocation count tests turn on
/// (`EDGEPLANE_COUNT_ALLOCATIONS=1`, [`edgeplane_proxy::alloc_count`]).
#[global_allocator]
static GLOBAL: edgeplane_proxy::alloc_count::Counting<mimalloc::MiMalloc> =
    edgeplane_proxy::alloc_count::Counting(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(name = "edgeplane", version, about = "edgeplane regional edge proxy")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the edge.
    Serve {
        #[arg(short, long)]
        config: PathBuf,
        /// Take over listeners from a running edge (Pingora graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short, long)]
        daemon: bool,
        /// Log line format on stderr: `human` or `json` (one object per
        /// line). Levels and targets come from RUST_LOG (default `info`).
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Run the authoritative DNS responder for the hosting suffixes and
    /// custom domains (`[dns]`), fed by the configured placement source.
    Dns {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Validate a config (and its file snapshot), print a summary.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Explain where a request for HOST (and PATH) would go.
    Route {
        #[arg(short, long)]
        config: PathBuf,
        host: String,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Snapshot operations.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
    /// Mint a version 1 workspace token for REPL with the configured HMAC
    /// key (testing during the migration; version 2 tokens are minted by
    /// the web server or `placectl token mint`, never by an edge).
    Token {
        #[arg(short, long)]
        config: PathBuf,
        repl: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Routes `tracing` events and `log` records (Pingora's and the sync's) to
/// stderr in the chosen format.
fn init_logging(format: LogFormat) {
    edgeplane_proxy::logging::init(match format {
        LogFormat::Human => edgeplane_proxy::logging::Format::Human,
        LogFormat::Json => edgeplane_proxy::logging::Format::Json,
    });
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Write the current placement table as snapshot JSON.
    Dump {
        #[arg(short, long)]
        config: PathBuf,
        /// Output file (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// `edgeplane route` runs once, off any request path: it may look a name
/// up when the decision needs one (the edge itself never does).
struct LookUpNow;

impl edgeplane_control_sync::table::Resolve for LookUpNow {
    fn ip_of(&self, host: &str) -> Option<std::net::IpAddr> {
        use std::net::ToSocketAddrs;
        let addrs: Vec<_> = (host, 0).to_socket_addrs().ok()?.collect();
        addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).map(|a| a.ip())
    }
}

fn load_config(path: &Path) -> Result<edgeplane_config::Config, ExitCode> {
    edgeplane_config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })
}

/// The placement for an offline command, read once; says on stderr where
/// it came from (stdout stays the command's output).
fn read_table(
    cfg: &edgeplane_config::Config,
) -> Result<std::sync::Arc<edgeplane_control_sync::RoutingTable>, ExitCode> {
    match edgeplane_proxy::placement::read_placement_once(cfg) {
        Ok(t) => {
            eprintln!("placement: {}", t.origin);
            Ok(t.table)
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(1))
        }
    }
}

/// Hands memory a full load freed back to the system: mimalloc purges freed
/// pages only on the freeing thread's later calls, which an idle sync
/// thread does not make (measured: ~15 bytes per directory name stayed
/// resident after a 10M-app load without this; bench/results/world.md).
#[allow(unsafe_code)]
fn release_memory() {
    // SAFETY: mi_collect only walks and purges this thread's heap and
    // abandoned segments; it has no preconditions.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    edgeplane_proxy::alloc_count::init_from_env();
    edgeplane_proxy::upgrade::record_started_from();
    edgeplane_control_sync::set_release_memory(release_memory);
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<(), ExitCode> {
    match cli.cmd {
        Cmd::Serve {
            config,
            upgrade,
            daemon,
            log_format,
        } => {
            init_logging(log_format);
            let cfg = load_config(&config)?;
            let log_format = match log_format {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            };
            server::run(
                cfg,
                ServeFlags {
                    upgrade,
                    daemon,
                    log_format,
                },
            )
            .map_err(|e| {
                match e {
                    server::ServeError::Placement(located) => eprintln!("{located}"),
                    other => eprintln!("edgeplane: {other}"),
                }
                ExitCode::from(1)
            })
        }
        Cmd::Dns { config, log_format } => {
            init_logging(log_format);
            let cfg = load_config(&config)?;
            edgeplane_proxy::dns::serve(cfg).map_err(|e| {
                match e {
                    edgeplane_proxy::dns::DnsError::Placement(located) => eprintln!("{located}"),
                    other => eprintln!("edgeplane dns: {other}"),
                }
                ExitCode::from(1)
            })
        }
        Cmd::Check { config } => check(&config),
        Cmd::Route { config, host, path } => {
            let cfg = load_config(&config)?;
            let table = read_table(&cfg)?;
            let ctx = RouteContext::from_config(&cfg);
            print!("{}", route::explain(&ctx, &table, &host, &path, now_ms(), &LookUpNow));
            Ok(())
        }
        Cmd::Snapshot {
            cmd: SnapshotCmd::Dump { config, output },
        } => dump_snapshot(&config, output.as_deref()),
        Cmd::Token { config, repl, ttl } => {
            let cfg = load_config(&config)?;
            let Some(key) = &cfg.security.workspace_token_key else {
                eprintln!(
                    "{}: security.workspace_token_key_file is not set: edges mint only version 1 tokens, \
during a migration; mint version 2 with `placectl token mint --key SECRET`",
                    config.display()
                );
                return Err(ExitCode::from(1));
            };
            let exp = now_ms() / 1000 + ttl;
            println!("{}", edgeplane_token::v1::mint(key, &repl, exp));
            Ok(())
        }
    }
}

/// `edgeplane check`: validate the config (and load its placement source),
/// then print what the edge would run with.
fn check(config: &Path) -> Result<(), ExitCode> {
    let cfg = load_config(config)?;
    // A snapshot file is part of what check validates; a store is not read
    // (systemd runs check before every start, and an edge starts from its
    // last-known-good file while the store is away).
    let counts = match &cfg.placement.source {
        edgeplane_config::PlacementSource::File(_) => Some(read_table(&cfg)?.counts()),
        _ => None,
    };
    println!("{}: ok", config.display());
    println!(
        "  edge: region {} instance {} listen {:?} admin {}",
        cfg.edge.region, cfg.edge.instance_id, cfg.edge.listen, cfg.edge.admin_listen
    );
    println!(
        "  hosting: suffixes {:?} workspace {}",
        cfg.hosting.suffixes, cfg.hosting.workspace_path_prefix
    );
    println!("  placement: {}", cfg.placement.source);
    let sec = &cfg.security;
    let kids: Vec<&str> = sec.workspace_token_public_keys.iter().map(|k| k.kid()).collect();
    println!(
        "  workspace tokens: version 2 keys [{}]{}",
        kids.join(", "),
        match (kids.is_empty(), sec.workspace_token_key.is_some()) {
            (_, true) => "; version 1 accepted (migration: remove workspace_token_key_file when done)",
            (true, false) => "; no key: every workspace session is 401",
            (false, false) => "",
        }
    );
    let (b, h) = (&cfg.balancer, &cfg.health);
    println!(
        "  balancer: {} over subsets of {} (rotating every {:?}), panic below {:.0} % usable",
        b.policy.as_str(),
        b.subset_size,
        b.subset_refresh,
        b.panic_threshold * 100.0
    );
    println!(
        "  health: {:?} every {:?} (timeout {:?}, stale after {:?})",
        h.source, h.scrape_interval, h.scrape_timeout, h.stale_after
    );
    match counts {
        Some(c) => println!(
            "  snapshot: {} regions, {} clusters, {} vms, {} repls, {} containers, {} custom domains, {} tombstones, \
             {} names of other regions' apps",
            c.regions, c.clusters, c.vms, c.repls, c.containers, c.custom_domains, c.tombstones, c.directory
        ),
        None => println!(
            "  snapshot: not read by check (placement.source = \"{}\"; `edgeplane snapshot dump -c {}` reads it)",
            cfg.placement.source.kind(),
            config.display()
        ),
    }
    Ok(())
}

/// `edgeplane snapshot dump`: the placement table as snapshot JSON, to a
/// file or stdout.
fn dump_snapshot(config: &Path, output: Option<&Path>) -> Result<(), ExitCode> {
    let cfg = load_config(config)?;
    let table = read_table(&cfg)?;
    let json = serde_json::to_string_pretty(&table.to_snapshot()).expect("snapshot serialises");
    match output {
        Some(p) => std::fs::write(p, json + "\n").map_err(|e| {
            eprintln!("{}: {e}", p.display());
            ExitCode::from(1)
        }),
        None => {
            println!("{json}");
            Ok(())
        }
    }
}
