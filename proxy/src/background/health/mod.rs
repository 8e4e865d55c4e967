//! The health monitor: reads VM load off the hot path and keeps the
//! balancer view fresh.
//!
//! Where it sits: [`spawn`] starts one thread with its own single-threaded
//! tokio runtime running two loops:
//! - every `scrape_interval` (read from the running config each round, so
//!   a reload applies), one health round over this region's active
//!   VMs that have a `metrics_addr` ([`scrape`] or [`prometheus_api`]),
//!   merged into a new [`HealthMap`] (pure merge in
//!   `crate::balancer::health`) and published whole;
//! - every [`REFRESH_TICK`], [`Balancer::refresh`] rebuilds the balancer
//!   view if the table, health, subset epoch or an outlier changed (so a
//!   drained VM or a new table reaches the balancer within a tick).
//!
//! Invariants: nothing here runs on the request path; a failed round never
//! erases the last good sample (the merge keeps it until `stale_after`);
//! scrape errors are counted by reason. Start at [`spawn`].

pub mod prometheus_api;
pub mod scrape;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use edgeplane_config::{Config, HealthSource};
use edgeplane_control_sync::snapshot::VmState;
use edgeplane_control_sync::{RoutingTable, TableHandle};

use crate::balancer::usability::Outcome;
use crate::balancer::{Balancer, HealthMap};
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How often the balancer view is checked for a rebuild.
pub const REFRESH_TICK: Duration = Duration::from_millis(100);

/// A VM to read health for.
#[derive(Debug, Clone)]
pub struct Target {
    pub id_hash: u64,
    pub id: Box<str>,
    pub metrics_addr: SocketAddr,
}

/// The monitored VMs of this edge's region: active, with a metrics address.
pub fn targets(t: &RoutingTable) -> Vec<Target> {
    if !t.is_loaded() {
        return Vec::new();
    }
    let local = t.local_region();
    t.vms()
        .filter(|(_, v)| v.state == VmState::Active && t.cluster(v.cluster).region == local)
        .filter_map(|(_, v)| {
            v.metrics_addr.map(|m| Target {
                id_hash: v.id_hash,
                id: v.id.clone(),
                metrics_addr: m,
            })
        })
        .collect()
}

/// Shared state of the monitor: the published health map.
pub type HealthHandle = Arc<ArcSwap<HealthMap>>;

/// What the monitor's two loops share.
#[derive(Clone)]
struct Monitor {
    cfg: Arc<ArcSwap<Config>>,
    table: TableHandle,
    balancer: Arc<Balancer>,
    health: HealthHandle,
    metrics: Arc<Metrics>,
    stop: Shutdown,
}

/// Starts the monitor thread. It stops when `stop` fires (the process's
/// graceful stop).
pub fn spawn(
    cfg: Arc<ArcSwap<Config>>,
    table: TableHandle,
    balancer: Arc<Balancer>,
    health: HealthHandle,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    let m = Monitor {
        cfg,
        table,
        balancer,
        health,
        metrics,
        stop,
    };
    edgeplane_control_sync::spawn_with_runtime("edgeplane-health", move || async move {
        tokio::join!(m.clone().refresh_loop(), m.scrape_loop());
    });
}

impl Monitor {
    /// Rebuilds the balancer view when due (subset refresh, ejections
    /// expiring), independent of scrape rounds.
    async fn refresh_loop(mut self) {
        let mut tick = tokio::time::interval(REFRESH_TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.recv() => return,
            }
            let t = self.table.load_full();
            if self.balancer.refresh(&t, &self.health.load(), now_ms(), false) {
                self.metrics.set_balancer_view(&t, &self.balancer);
            }
        }
    }

    /// One health round per scrape interval: read every monitored VM, merge
    /// the outcomes into a new health map, publish it, rebuild the view.
    async fn scrape_loop(mut self) {
        let mut first = true;
        loop {
            // Read per round: a reload changes interval and timeouts.
            let hc = self.cfg.load().health.clone();
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(hc.scrape_interval) => {}
                    _ = self.stop.recv() => return,
                }
            }
            first = false;
            let t = self.table.load_full();
            let targets = targets(&t);
            let now = now_ms();
            let outcomes = match &hc.source {
                HealthSource::Scrape => scrape::round(&targets, hc.scrape_timeout, hc.scrape_concurrency, now).await,
                HealthSource::Prometheus(url) => prometheus_api::round(url, &targets, hc.scrape_timeout, now).await,
            };
            for (_, o) in &outcomes {
                if let Outcome::Err(reason) = o {
                    self.metrics.scrape_errors.inc(reason.as_str());
                }
            }
            self.metrics.scrape_rounds.inc();
            let next = self.health.load().next(
                targets.iter().map(|t| t.id_hash),
                outcomes,
                &self.balancer.ledger,
                now_ms(),
            );
            self.health.store(Arc::new(next));
            if self.balancer.refresh(&t, &self.health.load(), now_ms(), false) {
                self.metrics.set_balancer_view(&t, &self.balancer);
            }
        }
    }
}

/// Forces one view rebuild now (start-up: before the first request).
pub fn refresh_now(t: &RoutingTable, balancer: &Balancer, health: &HealthMap, metrics: &Metrics) {
    balancer.refresh(t, health, now_ms(), true);
    metrics.set_balancer_view(t, balancer);
}
