//! Live config reload for `edgeplane serve`: on SIGHUP ([`Reloader::watch_sighup`])
//! and on `POST /config/reload` (admin listener), read the config file
//! again, validate it, and swap it in whole.
//!
//! Where it sits: the pure part, what changes and what needs a restart, is
//! [`edgeplane_config::reload::plan`]; this module does the I/O (reading
//! the file and its secret files), applies the plan to the running state
//! ([`Reloader`]) and reports it: one log line, `edgeplane_config_reloads_total
//! {result}`, `edgeplane_config_last_reload_successful`, and the last
//! [`ReloadReport`] for `/debug/config` and the status page.
//!
//! Invariants:
//! - A file that does not load or validate changes nothing: the edge keeps
//!   the config it runs with, says so at ERROR with `file:line: key:
//!   message`, and the gauge drops to 0 until a reload succeeds.
//! - Applying is atomic per request: the route context and the config are
//!   each one ArcSwap store, built before either is stored; a request reads
//!   each once per step.
//! - Reloads run one at a time (a mutex held only by reloads, never by
//!   requests).
//!
//! Start at [`Reloader::reload`].

use std::sync::{Arc, Mutex};

use edgeplane_config::reload::plan;
use edgeplane_config::Config;

use arc_swap::ArcSwap;

use crate::clock::now_ms;
use crate::conn::Admission;
use crate::metrics::Metrics;
use crate::route::RouteContext;

/// What one reload did (`/debug/config`, `POST /config/reload`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub at_ms: u64,
    /// `sighup` or `admin`.
    pub trigger: &'static str,
    pub ok: bool,
    /// `file:line: key: message` when the file was refused.
    pub error: Option<String>,
    /// Keys applied, as `key old -> new`.
    pub changed: Vec<String>,
    /// Keys whose new values wait for a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The last reload, and the lock that keeps reloads one at a time.
#[derive(Debug, Default)]
pub struct ReloadLog {
    last: Mutex<Option<ReloadReport>>,
    serial: Mutex<()>,
}

impl ReloadLog {
    /// The last reload's report, if any reload ran.
    pub fn last(&self) -> Option<ReloadReport> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a reload changes: the config and route context every request
/// reads, the connection caps, and what the last reload did.
pub struct Reloader {
    pub cfg: Arc<ArcSwap<Config>>,
    pub route: Arc<ArcSwap<RouteContext>>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub reloads: ReloadLog,
}

impl Reloader {
    /// The last reload's report, if any reload ran.
    pub fn last(&self) -> Option<ReloadReport> {
        self.reloads.last()
    }

    /// Reloads the config file the edge was started with.
    pub fn reload(&self, trigger: &'static str) -> ReloadReport {
        let edge = self;
        let _one_at_a_time = edge.reloads.serial.lock().unwrap_or_else(|e| e.into_inner());
        let current = edge.cfg.load_full();
        let report = match edgeplane_config::load(&current.path) {
            Err(e) => {
                log::error!("config reload ({trigger}) refused, still running the previous config: {e}");
                edge.metrics.config_reloads.inc("error");
                edge.metrics.config_last_reload_ok.set(0);
                ReloadReport {
                    at_ms: now_ms(),
                    trigger,
                    ok: false,
                    error: Some(e.to_string()),
                    changed: Vec::new(),
                    needs_restart: Vec::new(),
                }
            }
            Ok(next) => {
                let p = plan(&current, next);
                self.apply(&current, p.config);
                let changed: Vec<String> = p.changed.iter().map(|c| c.to_string()).collect();
                if changed.is_empty() {
                    log::info!("config reload ({trigger}): no changes");
                } else {
                    log::info!("config reload ({trigger}): applied {}", changed.join("; "));
                }
                if !p.needs_restart.is_empty() {
                    log::warn!(
                        "config reload ({trigger}): {} changed in {} but only a restart applies it \
                     (edgeplane serve --upgrade); still running the old value",
                        p.needs_restart.join(", "),
                        current.path.display()
                    );
                }
                edge.metrics.config_reloads.inc("ok");
                edge.metrics.config_last_reload_ok.set(1);
                edge.metrics.config_pending_restart.set(p.needs_restart.len() as i64);
                ReloadReport {
                    at_ms: now_ms(),
                    trigger,
                    ok: true,
                    error: None,
                    changed,
                    needs_restart: p.needs_restart,
                }
            }
        };
        *edge.reloads.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        report
    }

    /// Swaps in `next` (already planned: restart-only keys equal `prev`'s).
    fn apply(&self, prev: &Config, next: Config) {
        let route = self.route.load().reconfigured(prev, &next);
        self.admission
            .set_caps(next.limits.max_connections, next.limits.max_connections_per_ip);
        self.route.store(Arc::new(route));
        self.cfg.store(Arc::new(next));
    }

    /// Reloads on every SIGHUP, from a thread of its own. Without this a
    /// SIGHUP would end the process (its default action).
    pub fn watch_sighup(self: Arc<Self>) -> std::io::Result<()> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        std::thread::Builder::new()
            .name("edgeplane-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    self.reload("sighup");
                }
            })?;
        Ok(())
    }
}
