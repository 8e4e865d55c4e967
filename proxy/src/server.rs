//! Process assembly for `edgeplane serve`: load the placement table, build
//! the edge's [`Parts`] from one config, and run the proxy and admin
//! services on a Pingora `Server` (which handles `--upgrade` fd hand-over
//! and `--daemon`).
//!
//! Listeners given with port 0 get a free port from the OS; the chosen
//! addresses are printed on stdout (`edgeplane: proxy listening on ...`,
//! `edgeplane: https listening on ...`) so tests and scripts never need
//! fixed ports.
//!
//! Every proxy listener runs [`crate::http::EdgeApp`] (admission caps, TLS
//! handshake on HTTPS listeners, head deadline) in front of one shared
//! Pingora HTTP proxy over [`crate::http::Proxy`]. Signals: SIGTERM drains (listeners
//! close, requests in flight finish, tunnels get close frame 1001) and
//! exits as soon as no connection is left, at the latest after
//! `edge.grace_period_ms`; SIGQUIT hands the listeners to a new
//! `serve --upgrade` process and then drains the same way, with close code
//! 1012; SIGINT exits at once. Start at [`run`].

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownSignal, ShutdownSignalWatch, UnixShutdownSignalWatch};
use pingora_core::services::listening::Service;

use arc_swap::ArcSwap;

use edgeplane_config::Config;

use crate::admin::reload::{ReloadLog, Reloader};
use crate::admin::AdminApp;
use crate::background::health::HealthHandle;
use crate::background::names::Names;
use crate::conn::Admission;
use crate::http::{EdgeApp, Proxy, RecentForwards};
use crate::metrics::Metrics;
use crate::placement::{load_placement, Placement};
use crate::route::RouteContext;
use crate::shutdown::Stopper;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Located (`file:line: key: message`).
    #[error("{0}")]
    Placement(#[from] edgeplane_config::ConfigError),
    #[error("cannot reserve a port for {addr}: {err}")]
    Port { addr: SocketAddr, err: std::io::Error },
    #[error("--upgrade: {0}")]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error("security.cert_seal_key_file: {0}")]
    SealKey(#[from] edgeplane_control_sync::certs::SealError),
}

/// Pingora flags that pass through `edgeplane serve`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServeFlags {
    pub upgrade: bool,
    pub daemon: bool,
    /// `--log-format`, passed on to a successor started by SIGUSR2.
    pub log_format: &'static str,
}

/// `addr` with a port the OS chose when it has port 0 (the listener is
/// bound again by Pingora, so the port is printed before anyone needs it).
/// The probe socket stays in `held` until every port is chosen: released
/// at once, the OS could hand the same port to the next listener of this
/// edge (seen: the proxy and admin listeners on one port, and the edge
/// aborting at bind).
fn choose_port(addr: SocketAddr, held: &mut Vec<TcpListener>) -> Result<SocketAddr, ServeError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let l = TcpListener::bind(addr).map_err(|err| ServeError::Port { addr, err })?;
    let chosen = l.local_addr().map_err(|err| ServeError::Port { addr, err })?;
    held.push(l);
    Ok(chosen)
}

/// Read buffer in front of each client socket. Pingora's default is 64 KiB
/// per connection (it helps TLS record reads); plain HTTP/1 parses heads
/// and bodies from its own buffers, so edgeplane reads straight from the
/// socket: an idle keep-alive connection or WebSocket tunnel then costs no
/// read buffer at all (bench/results/README.md has the before and after).
pub const DOWNSTREAM_READ_BUFFER: usize = 0;

/// Timeouts at least this long use tokio's timer instead of Pingora's
/// "fast" timer wheel. Pingora keeps a cancelled fast timer until its
/// deadline; with a 60 s keep-alive and 60 s upstream read timeout per
/// request that is over a million live timers at 20k req/s, and its clock
/// thread holds the wheel's lock while it sweeps them — measured here as
/// 25-50 ms stalls at p99 under a steady 20k req/s (bench/results/README.md).
pub const FAST_TIMER_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Every part of the edge, built from one config in one place: each holds
/// the shared state it needs (clones of the same `Arc`s), nothing more.
pub struct Parts {
    /// The request path.
    pub proxy: Proxy,
    /// Connection caps (the listeners' `EdgeApp`s and the reloader share them).
    pub admission: Arc<Admission>,
    pub reloader: Arc<Reloader>,
    pub admin: AdminApp,
    /// Health samples the monitor publishes and the balancer reads.
    pub health: HealthHandle,
    /// The process's graceful stop, as the background tasks see it (fired
    /// by SIGTERM or SIGQUIT: health, names and certificate watching end).
    pub stop: Arc<Stopper>,
}

impl Parts {
    pub fn new(cfg: Config, placement: Placement, metrics: Arc<Metrics>, https_port: Option<u16>) -> Parts {
        let limits = cfg.limits;
        let route = Arc::new(ArcSwap::from_pointee(RouteContext::from_config(&cfg)));
        let cfg = Arc::new(ArcSwap::from_pointee(cfg));
        let names = Arc::new(Names::default());
        let recent = Arc::new(RecentForwards::default());
        let health = HealthHandle::default();
        let admission = Admission::new(limits.max_connections, limits.max_connections_per_ip);
        let shared = crate::shared::Shared {
            cfg: cfg.clone(),
            route: route.clone(),
            table: placement.table,
            names,
            metrics: metrics.clone(),
            recent_forwards: recent,
        };
        let proxy = Proxy::new(shared.clone(), https_port);
        let reloader = Arc::new(Reloader {
            cfg: cfg.clone(),
            route: route.clone(),
            admission: admission.clone(),
            metrics: metrics.clone(),
            reloads: ReloadLog::default(),
        });
        let admin = AdminApp {
            shared,
            health: health.clone(),
            reloader: reloader.clone(),
            shadow: placement.shadow,
            traffic: Default::default(),
        };
        Parts {
            proxy,
            admission,
            reloader,
            admin,
            health,
            stop: Arc::new(Stopper::default()),
        }
    }

    /// Starts the background threads: health monitor and balancer refresh,
    /// name resolution, SIGHUP reloads.
    pub fn start_background(&self) {
        let p = &self.proxy.shared;
        let balancer = p.route.load().balancer.clone();
        crate::background::health::refresh_now(&p.table.load(), &balancer, &self.health.load(), &p.metrics);
        crate::background::health::spawn(
            p.cfg.clone(),
            p.table.clone(),
            balancer,
            self.health.clone(),
            p.metrics.clone(),
            self.stop.handle(),
        );
        crate::background::names::spawn(
            p.cfg.load().resolver.clone(),
            p.table.clone(),
            p.names.clone(),
            p.metrics.clone(),
            self.stop.handle(),
        );
        if let Err(e) = self.reloader.clone().watch_sighup() {
            log::warn!("cannot watch SIGHUP, reload through the admin API only: {e}");
        }
    }
}

/// Runs the edge until it is told to stop. Never returns on success.
pub fn run(cfg: Config, flags: ServeFlags) -> Result<(), ServeError> {
    pingora_timeout::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(FAST_TIMER_MAX));
    // Before anything binds or loads: which edge an upgrade takes over.
    let take_over = if flags.upgrade {
        match crate::upgrade::plan(&cfg.edge.pid_file, &cfg.edge.upgrade_sock)? {
            crate::upgrade::Plan::TakeOver(t) => Some(t),
            crate::upgrade::Plan::Delegated { old, new } => {
                println!(
                    "edgeplane: upgrade: pid {old} handed its listeners to pid {new} (started inside its service)"
                );
                return Ok(());
            }
        }
    } else {
        None
    };
    let placement = load_placement(&cfg)?;
    let mut held = Vec::new();
    let listen: Vec<SocketAddr> = cfg
        .edge
        .listen
        .iter()
        .map(|&a| choose_port(a, &mut held))
        .collect::<Result<_, _>>()?;
    let admin_addr = choose_port(cfg.edge.admin_listen, &mut held)?;
    let tls_listen: Vec<SocketAddr> = match &cfg.tls {
        Some(t) => t
            .listen
            .iter()
            .map(|&a| choose_port(a, &mut held))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    // Every port is chosen: Pingora binds them next.
    drop(held);
    // Pingora handles SIGQUIT too; this only records which stop it is.
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGQUIT, crate::http::tunnel::UPGRADING.clone()) {
        log::warn!("cannot watch SIGQUIT: {e}");
    }

    let mut server = pingora_server(&cfg, &flags);
    // Bootstrap is done: an upgrade holds the old process's listeners now.
    if let Some(t) = take_over {
        t.done();
    }
    let pid_file = cfg.edge.pid_file.clone();
    let hand_over = crate::upgrade::HandOver::new(&cfg.edge.upgrade_sock, &cfg.edge.pid_file);
    crate::upgrade::start_successor_on_sigusr2(cfg.path.clone(), vec!["--log-format".into(), flags.log_format.into()]);

    let tls_cfg = cfg.tls.clone();
    let parts = Parts::new(
        cfg,
        placement,
        Arc::new(Metrics::new()),
        tls_listen.first().map(|a| a.port()),
    );
    parts.start_background();
    let edge = &parts.proxy.shared;

    let limits = parts.proxy.limits();
    let http = Arc::new(crate::http::EdgeHttp::new(
        parts.proxy.clone(),
        &limits,
        server.configuration.threads,
    ));
    let drain = crate::conn::Drain::new(1 + usize::from(tls_cfg.is_some()), parts.admission.clone());
    let custom = custom_certs(&edge.cfg.load(), edge)?;
    let app = |tls, sni| EdgeApp {
        http: http.clone(),
        admission: parts.admission.clone(),
        drain: drain.clone(),
        tls,
        sni,
        cfg: edge.cfg.clone(),
        metrics: edge.metrics.clone(),
        proxy_protocol: edge.cfg.load().edge.proxy_protocol,
        rebind: edge.cfg.load().edge.threads > 1,
    };
    let mut proxy = Service::new("edgeplane proxy".to_string(), app(None, None));
    for a in &listen {
        proxy.add_listener(ListenerConfig::tcp(a.to_string()).l4_buffer(L4BufferSettings {
            read: Some(DOWNSTREAM_READ_BUFFER),
            write: None,
        }));
    }
    let https = tls_cfg
        .as_ref()
        .map(|t| https_service(t, &tls_listen, app, custom, &edge.metrics, parts.stop.handle()));
    let sync = edge.table.status_arc();
    let mut admin = Service::new("edgeplane admin".to_string(), parts.admin);
    admin.threads = Some(1);
    admin.add_tcp(&admin_addr.to_string());

    announce(&listen, &tls_listen, admin_addr, edge);
    server.add_service(proxy);
    if let Some(h) = https {
        server.add_service(h);
    }
    server.add_service(admin);
    server.add_service(hand_over.service());
    // systemd first, then the pid file: a predecessor under systemd exits
    // once the pid file names this process, and systemd must know the new
    // main pid by then.
    crate::upgrade::notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
    // A daemon's pid file is Pingora's to write (after the fork).
    if !flags.daemon {
        if let Err(e) = crate::upgrade::write_pid_file(&pid_file) {
            log::warn!("cannot write the pid file {}: {e}", pid_file.display());
        }
    }
    let signals = StopSignals {
        sync,
        drain,
        stop: parts.stop.clone(),
        hand_over: hand_over.clone(),
    };
    server.run(pingora_core::server::RunArgs {
        shutdown_signal: Box::new(signals),
    });
    hand_over.wait_for_successor(crate::upgrade::SUCCESSOR_WAIT);
    std::process::exit(0)
}

/// Pingora's server with the edge's threads, files and drain times.
fn pingora_server(cfg: &Config, flags: &ServeFlags) -> Server {
    let conf = ServerConf {
        threads: cfg.edge.threads,
        work_stealing: false,
        pid_file: cfg.edge.pid_file.display().to_string(),
        upgrade_sock: cfg.edge.upgrade_sock.display().to_string(),
        grace_period_seconds: Some(cfg.edge.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    server
}

/// The HTTPS listeners: certificates loaded now and watched for changes,
/// picked by SNI.
fn https_service(
    t: &edgeplane_config::TlsConfig,
    tls_listen: &[SocketAddr],
    app: impl Fn(Option<pingora_core::listeners::tls::Acceptor>, Option<Arc<crate::conn::tls::SniResolver>>) -> EdgeApp,
    custom: Option<Arc<crate::conn::certs::CustomCerts>>,
    metrics: &Arc<Metrics>,
    stop: crate::shutdown::Shutdown,
) -> Service<EdgeApp> {
    let resolver = crate::conn::tls::SniResolver::new(Default::default());
    if let Some(c) = custom {
        resolver.set_custom(c);
    }
    crate::conn::tls::reload(&t.certs_dir, &resolver, metrics);
    crate::conn::tls::spawn_watcher(
        t.certs_dir.clone(),
        t.reload_interval,
        resolver.clone(),
        metrics.clone(),
        stop,
    );
    let sni = resolver.has_custom().then(|| resolver.clone());
    let acceptor =
        pingora_core::listeners::tls::Acceptor::from_server_config(crate::conn::tls::server_config(resolver));
    let mut svc = Service::new("edgeplane https".to_string(), app(Some(acceptor), sni));
    for a in tls_listen {
        // rustls keeps its own record buffer: Pingora's 64 KiB read buffer
        // in front of it would stay allocated for every idle wss tunnel.
        svc.add_listener(ListenerConfig::tcp(a.to_string()).l4_buffer(L4BufferSettings {
            read: Some(DOWNSTREAM_READ_BUFFER),
            write: None,
        }));
    }
    svc
}

/// The control plane's certificates, when the edge has the fleet
/// certificate key, TLS listeners and the PostgreSQL source.
fn custom_certs(
    cfg: &edgeplane_config::Config,
    edge: &crate::shared::Shared,
) -> Result<Option<Arc<crate::conn::certs::CustomCerts>>, ServeError> {
    let (Some(t), Some(key_file)) = (&cfg.tls, &cfg.security.cert_seal_key_file) else {
        return Ok(None);
    };
    let edgeplane_config::PlacementSource::Postgres(url) = &cfg.placement.source else {
        log::warn!(
            "security.cert_seal_key_file is set but placement.source is not postgres: only tls.certs_dir is served"
        );
        return Ok(None);
    };
    let seal = edgeplane_control_sync::certs::SealKey::from_file(key_file)?;
    let disk = t.cert_cache_dir.clone().or_else(|| {
        let lkg = cfg.placement.last_known_good.as_ref()?;
        Some(lkg.with_file_name(format!(
            "{}.certs",
            lkg.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
        )))
    });
    Ok(Some(crate::conn::certs::CustomCerts::start(
        url.clone(),
        edge.table.clone(),
        seal,
        t.cert_cache_entries,
        t.cert_miss_ttl,
        disk,
        edge.metrics.clone(),
    )))
}

/// The lines tests and operators wait for: every listener, then the table.
fn announce(listen: &[SocketAddr], tls_listen: &[SocketAddr], admin: SocketAddr, edge: &crate::shared::Shared) {
    for a in listen {
        println!("edgeplane: proxy listening on {a}");
    }
    for a in tls_listen {
        println!("edgeplane: https listening on {a}");
    }
    println!("edgeplane: admin listening on {admin}");
    let cfg = edge.cfg.load();
    println!(
        "edgeplane: region {} instance {} table version {}",
        cfg.edge.region,
        cfg.edge.instance_id,
        edge.table.load().version()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Pingora's signals, made prompt: SIGTERM and SIGQUIT drain and exit as
/// soon as no connection is left ([`crate::conn::Drain`]; Pingora alone
/// would sleep out the whole grace period), after writing what a graceful
/// stop owes the next start — the newest table in the last-known-good file.
/// SIGINT ends the process at once, before Pingora tears its runtimes down
/// under listeners that are still accepting (that teardown once spun an
/// accept loop, logging millions of lines).
struct StopSignals {
    sync: Arc<edgeplane_control_sync::SyncStatus>,
    drain: Arc<crate::conn::Drain>,
    stop: Arc<Stopper>,
    hand_over: Arc<crate::upgrade::HandOver>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for StopSignals {
    async fn recv(&self) -> ShutdownSignal {
        let mut signal = UnixShutdownSignalWatch.recv().await;
        loop {
            match signal {
                ShutdownSignal::FastShutdown => {
                    log::info!("SIGINT: exiting now");
                    std::process::exit(0);
                }
                ShutdownSignal::GracefulUpgrade => {
                    // The hand-over is this process's (crate::upgrade): on
                    // success Pingora is told to stop at once, as for
                    // SIGTERM, instead of accepting for 5 s more.
                    // Under systemd the successor is the service's main
                    // process once it says MAINPID=, so this one does not
                    // say STOPPING (that would stop the unit).
                    let h = self.hand_over.clone();
                    match tokio::task::spawn_blocking(move || h.send()).await {
                        Ok(Ok(())) => {
                            log::info!("upgrade: listeners handed to the new process; no longer accepting, draining");
                            signal = ShutdownSignal::GracefulTerminate;
                            break;
                        }
                        Ok(Err(e)) => {
                            crate::http::tunnel::UPGRADING.store(false, std::sync::atomic::Ordering::Release);
                            log::warn!(
                                "upgrade: SIGQUIT, but no new process took the listeners ({e}); still serving \
                                 (start it with `edgeplane serve -c FILE --upgrade`)"
                            );
                        }
                        Err(e) => log::error!("upgrade: hand-over task failed: {e}; still serving"),
                    }
                    signal = UnixShutdownSignalWatch.recv().await;
                }
                ShutdownSignal::GracefulTerminate => {
                    crate::upgrade::notify_systemd("STOPPING=1");
                    break;
                }
            }
        }
        let sync = self.sync.clone();
        let flushed =
            tokio::task::spawn_blocking(move || sync.flush_last_known_good(crate::placement::STOP_FLUSH_LIMIT)).await;
        if let Err(e) = flushed {
            log::error!("last-known-good flush on stop failed: {e}");
        }
        self.stop.stop();
        let hand_over = self.hand_over.clone();
        self.drain
            .exit_when_idle(move || hand_over.wait_for_successor(crate::upgrade::SUCCESSOR_WAIT));
        signal
    }
}
