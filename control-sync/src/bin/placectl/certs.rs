//! `placectl certs run | ls | request | upload | revoke`: certificates for
//! custom domains (docs/certificates.md). `run` is the fleet's issuer
//! (edgeplane_control_sync::certs::issuer); the rest are one query each.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tokio_postgres::Client;

use edgeplane_control_sync::certs::issuer::{self, Issuer, IssuerOptions};
use edgeplane_control_sync::certs::metrics::{self, IssuerMetrics};
use edgeplane_control_sync::certs::{store, SealKey};
use edgeplane_control_sync::table::ChallengeKind;

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Run the issuer: order and renew certificates for every custom
    /// domain (one instance holds the lease; others wait to take over).
    Run(RunArgs),
    /// List certificates and orders.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Order HOST now (it must be in custom_domains): clears its backoff
    /// and wakes the issuer.
    Request { host: String },
    /// Store an operator's certificate for HOST (a custom domain, or
    /// `*.<suffix>`): checked, key sealed, served by every edge.
    Upload {
        host: String,
        chain: PathBuf,
        key: PathBuf,
        #[arg(long)]
        seal_key_file: PathBuf,
    },
    /// Remove HOST's certificate from the control plane (edges stop
    /// serving it; a domain still in custom_domains is ordered again).
    /// With --acme-directory, revoke it at the CA first (a key compromise).
    Revoke {
        host: String,
        /// The CA's ACME directory: revoke there too, as the fleet's account.
        #[arg(long, requires = "seal_key_file")]
        acme_directory: Option<String>,
        #[arg(long)]
        acme_root: Option<PathBuf>,
        #[arg(long)]
        seal_key_file: Option<PathBuf>,
    },
}

/// `placectl certs run`'s flags.
#[derive(Args)]
pub struct RunArgs {
    /// The ACME directory URL.
    #[arg(long)]
    acme_directory: String,
    /// The CA's TLS root (PEM), for a private or test CA.
    #[arg(long)]
    acme_root: Option<PathBuf>,
    /// Account contact (mailto:...); repeatable.
    #[arg(long)]
    contact: Vec<String>,
    /// The fleet certificate key (the edges' security.cert_seal_key_file).
    #[arg(long)]
    seal_key_file: PathBuf,
    /// Orders started per minute at most (new and renewals together).
    #[arg(long, default_value_t = 60)]
    orders_per_minute: u32,
    /// The challenge the CA validates: http-01 or tls-alpn-01.
    #[arg(long, default_value = "http-01")]
    challenge: String,
    /// Milliseconds between publishing a challenge and telling the CA
    /// (the delta stream's time to reach every edge).
    #[arg(long, default_value_t = 1000)]
    propagation_ms: u64,
    /// Seconds between passes when nothing wakes the issuer.
    #[arg(long, default_value_t = 30)]
    poll_secs: u64,
    /// First backoff of a failing hostname, seconds (doubles up to a day).
    #[arg(long, default_value_t = 60)]
    retry_base_secs: u64,
    /// Serve the issuer's Prometheus metrics on ADDR (`/metrics`).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

/// Lower case, no trailing dot.
fn hostname(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

pub async fn run(url: &str, client: &Client, cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Run(args) => run_issuer(url, args).await?,
        CertsCmd::Ls { json } => {
            let rows = store::list(client).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<40} {:<9} {:<26} {:<26} {:<8} {:>3}  last error",
                    "hostname", "source", "not after", "renew after", "order", "try"
                );
                for r in rows {
                    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                    println!(
                        "{:<40} {:<9} {:<26} {:<26} {:<8} {:>3}  {}",
                        r.hostname,
                        o(&r.source),
                        o(&r.not_after),
                        o(&r.renew_after),
                        o(&r.order_state),
                        r.attempts.unwrap_or(0),
                        o(&r.last_error)
                    );
                }
            }
        }
        CertsCmd::Request { host } => {
            let host = hostname(&host);
            store::request(client, &host).await?;
            println!("{host}: requested; the issuer orders it on its next pass");
        }
        CertsCmd::Upload {
            host,
            chain,
            key,
            seal_key_file,
        } => {
            let host = hostname(&host);
            if !store::permitted(client, &host).await? {
                bail!(store::StoreError::NotPermitted(host));
            }
            let seal = SealKey::from_file(&seal_key_file)?;
            let chain_pem = std::fs::read_to_string(&chain).with_context(|| format!("reading {}", chain.display()))?;
            let key_pem = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
            let revision =
                store::store(client, &seal, &host, &chain_pem, &key_pem, "uploaded", None, unix_now()).await?;
            println!("{host}: stored (revision {revision}); every edge serves it from its next handshake");
        }
        CertsCmd::Revoke {
            host,
            acme_directory,
            acme_root,
            seal_key_file,
        } => {
            let host = hostname(&host);
            if let (Some(directory), Some(key)) = (acme_directory, seal_key_file) {
                let seal = SealKey::from_file(&key)?;
                let account = issuer::account(client, &directory, acme_root.as_deref(), &[], &seal).await?;
                issuer::revoke_at_ca(client, &account, &host)
                    .await
                    .with_context(|| format!("{host}: revoking at the CA (nothing was removed)"))?;
                println!("{host}: revoked at {directory}");
            }
            if store::revoke(client, &host).await? {
                println!("{host}: certificate removed");
            } else {
                bail!("{host}: no certificate");
            }
        }
    }
    Ok(())
}

/// `placectl certs run`: the issuer until SIGTERM or Ctrl-C, connecting
/// again whenever the database goes away.
async fn run_issuer(url: &str, args: RunArgs) -> Result<()> {
    let RunArgs {
        acme_directory,
        acme_root,
        contact,
        seal_key_file,
        orders_per_minute,
        challenge,
        propagation_ms,
        poll_secs,
        retry_base_secs,
        metrics_listen,
    } = args;
    let Some(challenge) = ChallengeKind::parse(&challenge) else {
        bail!("--challenge {challenge:?}: expected http-01 or tls-alpn-01");
    };
    let metrics = IssuerMetrics::new();
    if let Some(addr) = metrics_listen {
        let l = metrics::listen(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}"))?;
        println!("placectl: issuer metrics on {}", l.local_addr()?);
        tokio::spawn(metrics::serve(l, metrics.clone()));
    }
    let opts = IssuerOptions {
        database_url: url.to_string(),
        acme_directory,
        acme_root,
        contact,
        seal: SealKey::from_file(&seal_key_file)?,
        orders_per_minute,
        challenge,
        propagation: Duration::from_millis(propagation_ms),
        poll: Duration::from_secs(poll_secs.max(1)),
        retry_base: Duration::from_secs(retry_base_secs.max(1)),
        metrics,
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let s = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        s.notify_one();
    });
    // The database going away (a restart, a failover) ends the
    // session and the lease with it: connect again and wait for
    // the lease like any other instance, backing off to 30 s.
    let issuer = Issuer::new(opts);
    let mut wait = Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        match issuer.run(stop.clone()).await {
            Ok(()) => break,
            Err(e) => {
                if started.elapsed() > Duration::from_secs(60) {
                    wait = Duration::from_secs(1);
                }
                log::warn!("certs: {e}; connecting again in {} s", wait.as_secs());
                tokio::select! {
                    _ = stop.notified() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    Ok(())
}
