//! Process assembly for `edgeplane serve`: load the placement table, build
//! the shared [`Edge`], and run the proxy and admin services on a Pingora
//! `Server` (which handles `--upgrade` fd hand-over and `--daemon`).
//!
//! Listeners given with port 0 get a free port from the OS; the chosen
//! addresses are printed on stdout (`edgeplane: proxy listening on ...`,
//! `edgeplane: https listening on ...`) so tests and scripts never need
//! fixed ports.
//!
//! Every proxy listener runs [`crate::conn::EdgeApp`] (admission caps, TLS
//! handshake on HTTPS listeners, head deadline) in front of one shared
//! Pingora HTTP proxy over [`Edge`]. Signals: SIGTERM drains (listeners
//! close, requests in flight finish, tunnels get close frame 1001, exit
//! after `edge.grace_period_ms`); SIGQUIT hands the listeners to a new
//! `serve --upgrade` process and then drains the same way, with close code
//! 1012; SIGINT stops at once. Start at [`run`].

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownSignal, ShutdownSignalWatch, UnixShutdownSignalWatch};
use pingora_core::services::listening::Service;

use edgeplane_config::{Config, PlacementSource};
use edgeplane_control_sync::file_source::{FileSource, DEFAULT_WATCH_INTERVAL};
use edgeplane_control_sync::postgres::{self, PgSyncOptions};
use edgeplane_control_sync::redis_source::{self, RedisSyncOptions, RoundObserver};
use edgeplane_control_sync::shadow::{self, ShadowControl, ShadowState};
use edgeplane_control_sync::switch::SourceSwitch;
use edgeplane_control_sync::{SnapshotError, TableHandle};

use crate::admin::AdminApp;
use crate::conn::EdgeApp;
use crate::metrics::Metrics;
use crate::service::Edge;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("placement: {0}")]
    Placement(#[from] SnapshotError),
    #[error("cannot reserve a port for {addr}: {err}")]
    Port { addr: SocketAddr, err: std::io::Error },
}

/// Pingora flags that pass through `edgeplane serve`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServeFlags {
    pub upgrade: bool,
    pub daemon: bool,
}

/// Asks the OS for a free port when `addr` has port 0.
fn concrete(addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let l = TcpListener::bind(addr).map_err(|err| ServeError::Port { addr, err })?;
    l.local_addr().map_err(|err| ServeError::Port { addr, err })
}

/// The placement an edge serves from: the handle requests read, and in
/// shadow mode the comparison state and the runtime source switch.
pub struct Placement {
    pub table: TableHandle,
    pub shadow: Option<ShadowControl>,
}

/// The name a placement source goes by in metrics and the admin API.
pub fn source_name(s: &PlacementSource) -> &'static str {
    match s {
        PlacementSource::File(_) => "file",
        PlacementSource::Postgres(_) => "postgres",
        PlacementSource::Redis(_) => "redis",
    }
}

fn redis_options(cfg: &Config, url: &str, primary: bool) -> RedisSyncOptions {
    let p = &cfg.placement;
    RedisSyncOptions {
        poll_interval: p.redis_poll_interval,
        connect_timeout: p.connect_timeout,
        read_timeout: p.query_timeout,
        max_shrink_ratio: p.max_shrink_ratio,
        last_known_good: if primary { p.last_known_good.clone() } else { None },
        last_known_good_interval: p.last_known_good_interval,
        ..RedisSyncOptions::new(url, cfg.edge.region.clone())
    }
}

/// Starts the configured placement source: a file is loaded now (an error
/// stops the start) and watched; PostgreSQL and Redis are synced by
/// background threads (the edge is not ready until one publishes, or until
/// the last-known-good file is loaded when the store is away).
///
/// With `placement.shadow = "redis"`, the primary publishes into its own
/// handle, the Redis store is read into another beside it, and a
/// [`SourceSwitch`] serves the primary's tables (until an operator switches);
/// after every Redis round the two are compared ([`shadow::compare`]).
pub fn load_placement(cfg: &Config) -> Result<Placement, ServeError> {
    load_placement_for(cfg, PlacementUser::Edge)
}

/// Which process loads the placement: the table is the same (this region's
/// repls and the world directory), but the DNS responder runs no shadow
/// and keeps its own last-known-good file (`<last_known_good>.dns.json`)
/// so it never clobbers the edge's on the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementUser {
    Edge,
    Dns,
}

/// [`load_placement`] for `user`.
pub fn load_placement_for(cfg: &Config, user: PlacementUser) -> Result<Placement, ServeError> {
    let serving = TableHandle::new();
    let dns = user == PlacementUser::Dns;
    let lkg = cfg
        .placement
        .last_known_good
        .clone()
        .map(|p| if dns { p.with_extension("dns.json") } else { p });
    let primary_name = source_name(&cfg.placement.source);
    let (primary, shadow) = match (&cfg.placement.shadow, &cfg.placement.redis_url) {
        (Some(_), Some(url)) if !dns => {
            let primary = TableHandle::with_status(serving.status_arc());
            let shadow_handle = TableHandle::new();
            let switch = SourceSwitch::new(
                serving.clone(),
                vec![(primary_name, primary.clone()), ("redis", shadow_handle.clone())],
            );
            let control = ShadowControl {
                state: Arc::new(ShadowState::new("redis")),
                switch,
            };
            let (state, against) = (control.state.clone(), primary.clone());
            let observer: RoundObserver = Box::new(move |shadow_table| {
                let p = against.load_full();
                if p.is_loaded() {
                    state.record(shadow::compare(&p, shadow_table), edgeplane_control_sync::now_unix_ms());
                }
            });
            redis_source::spawn(
                redis_options(cfg, url, false),
                shadow_handle,
                Some(observer),
                Arc::new(AtomicBool::new(false)),
            );
            (primary, Some(control))
        }
        _ => (serving.clone(), None),
    };
    match &cfg.placement.source {
        PlacementSource::File(path) => {
            let mut src = FileSource::new(path, &cfg.edge.region);
            src.load_into(&primary)?;
            src.watch(primary, DEFAULT_WATCH_INTERVAL, Arc::new(AtomicBool::new(false)));
        }
        PlacementSource::Postgres(url) => {
            let p = &cfg.placement;
            let opts = PgSyncOptions {
                url: url.clone(),
                local_region: cfg.edge.region.clone(),
                poll_interval: p.poll_interval,
                max_shrink_ratio: p.max_shrink_ratio,
                last_known_good: lkg,
                last_known_good_interval: p.last_known_good_interval,
                connect_timeout: p.connect_timeout,
                query_timeout: p.query_timeout,
                full_load_timeout: p.full_load_timeout,
            };
            postgres::spawn(opts, primary, Arc::new(AtomicBool::new(false)));
        }
        PlacementSource::Redis(url) => {
            let mut opts = redis_options(cfg, url, true);
            opts.last_known_good = lkg;
            redis_source::spawn(opts, primary, None, Arc::new(AtomicBool::new(false)));
        }
    }
    Ok(Placement { table: serving, shadow })
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

/// Set when SIGQUIT (graceful upgrade) arrives: tunnels then close with
/// 1012 "service restart" instead of 1001 "going away".
static UPGRADING: std::sync::LazyLock<Arc<AtomicBool>> = std::sync::LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// The close code tunnels send when the process stops.
pub fn tunnel_close_code() -> u16 {
    if UPGRADING.load(Ordering::Relaxed) {
        crate::ws_frames::CLOSE_SERVICE_RESTART
    } else {
        crate::ws_frames::CLOSE_GOING_AWAY
    }
}

/// Runs the edge until it is told to stop. Never returns on success.
pub fn run(cfg: Config, flags: ServeFlags) -> Result<(), ServeError> {
    pingora_timeout::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(FAST_TIMER_MAX));
    let placement = load_placement(&cfg)?;
    let listen: Vec<SocketAddr> = cfg.edge.listen.iter().map(|&a| concrete(a)).collect::<Result<_, _>>()?;
    let admin_addr = concrete(cfg.edge.admin_listen)?;
    let tls_listen: Vec<SocketAddr> = match &cfg.tls {
        Some(t) => t.listen.iter().map(|&a| concrete(a)).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    // Pingora handles SIGQUIT too; this only records which stop it is.
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGQUIT, UPGRADING.clone()) {
        log::warn!("cannot watch SIGQUIT: {e}");
    }

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

    let metrics = Arc::new(Metrics::new());
    let tls_cfg = cfg.tls.clone();
    let mut edge = Edge::new(cfg, placement.table, metrics);
    edge.shadow = placement.shadow;
    edge.https_port = tls_listen.first().map(|a| a.port());
    let balancer = edge.route.load().balancer.clone();
    crate::health::refresh_now(&edge.table.load(), &balancer, &edge.health.load(), &edge.metrics);
    crate::health::spawn(
        edge.cfg.clone(),
        edge.table.clone(),
        balancer,
        edge.health.clone(),
        edge.metrics.clone(),
        Arc::new(AtomicBool::new(false)),
    );
    crate::names::spawn(
        edge.cfg.load().resolver.clone(),
        edge.table.clone(),
        edge.names.clone(),
        edge.metrics.clone(),
        Arc::new(AtomicBool::new(false)),
    );
    if let Err(e) = crate::reload::watch_sighup(edge.clone()) {
        log::warn!("cannot watch SIGHUP, reload through the admin API only: {e}");
    }

    let limits = edge.limits();
    let mut http = pingora_proxy::http_proxy(&server.configuration, edge.clone());
    let mut options = pingora_core::apps::HttpServerOptions::default();
    // Pingora counts reuses after the first request.
    options.keepalive_request_limit = Some(limits.max_requests_per_connection.saturating_sub(1));
    http.server_options = Some(options);
    let http = Arc::new(http);
    let app = |tls| EdgeApp {
        proxy: http.clone(),
        admission: edge.admission.clone(),
        tls,
        cfg: edge.cfg.clone(),
        metrics: edge.metrics.clone(),
    };
    let mut proxy = Service::new("edgeplane proxy".to_string(), app(None));
    for a in &listen {
        proxy.add_listener(ListenerConfig::tcp(a.to_string()).l4_buffer(L4BufferSettings {
            read: Some(DOWNSTREAM_READ_BUFFER),
            write: None,
        }));
    }
    let https = match &tls_cfg {
        Some(t) => {
            let resolver = crate::tls::SniResolver::new(Default::default());
            crate::tls::reload(&t.certs_dir, &resolver, &edge.metrics);
            crate::tls::spawn_watcher(
                t.certs_dir.clone(),
                t.reload_interval,
                resolver.clone(),
                edge.metrics.clone(),
                Arc::new(AtomicBool::new(false)),
            );
            let acceptor =
                pingora_core::listeners::tls::Acceptor::from_server_config(crate::tls::server_config(resolver));
            let mut svc = Service::new("edgeplane https".to_string(), app(Some(acceptor)));
            for a in &tls_listen {
                svc.add_listener(ListenerConfig::tcp(a.to_string()));
            }
            Some(svc)
        }
        None => None,
    };
    let mut admin = Service::new("edgeplane admin".to_string(), AdminApp { edge: edge.clone() });
    admin.threads = Some(1);
    admin.add_tcp(&admin_addr.to_string());

    for a in &listen {
        println!("edgeplane: proxy listening on {a}");
    }
    for a in &tls_listen {
        println!("edgeplane: https listening on {a}");
    }
    println!("edgeplane: admin listening on {admin_addr}");
    let cfg = edge.cfg.load();
    println!(
        "edgeplane: region {} instance {} table version {}",
        cfg.edge.region,
        cfg.edge.instance_id,
        edge.table.load().version()
    );
    drop(cfg);
    use std::io::Write;
    let _ = std::io::stdout().flush();

    server.add_service(proxy);
    if let Some(h) = https {
        server.add_service(h);
    }
    server.add_service(admin);
    let signals = StopSignals {
        sync: edge.table.status_arc(),
    };
    server.run(pingora_core::server::RunArgs {
        shutdown_signal: Box::new(signals),
    });
    std::process::exit(0)
}

/// Longest a graceful stop waits for the last-known-good file to be written.
pub const STOP_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Pingora's signals (SIGTERM drain, SIGQUIT upgrade, SIGINT fast exit),
/// plus what a graceful stop owes the next start: the newest table in the
/// last-known-good file, written before anything else stops.
struct StopSignals {
    sync: Arc<edgeplane_control_sync::SyncStatus>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for StopSignals {
    async fn recv(&self) -> ShutdownSignal {
        let signal = UnixShutdownSignalWatch.recv().await;
        if !matches!(signal, ShutdownSignal::FastShutdown) {
            let sync = self.sync.clone();
            let flushed = tokio::task::spawn_blocking(move || sync.flush_last_known_good(STOP_FLUSH_LIMIT)).await;
            if let Err(e) = flushed {
                log::error!("last-known-good flush on stop failed: {e}");
            }
        }
        signal
    }
}
