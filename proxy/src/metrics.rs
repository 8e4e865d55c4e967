//! Prometheus metrics of docs/contract.md §5 (prefix `edgeplane_`), one registry per
//! process, served by the admin listener's `/metrics`.
//!
//! Request-path code only increments; gauges that mirror the placement
//! table (version, age, rejected loads) are refreshed when scraped
//! ([`Metrics::refresh_from`]). Start at [`Metrics::new`].

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use edgeplane_control_sync::{RoutingTable, SyncErrorKind, TableHandle};

use crate::balancer::{Balancer, HealthMap, Policy};
use crate::route::{Refusal, TokenCheck, TokenVersion};

/// Raises a counter to `total` (counters mirrored from the sync's atomics).
fn mirror(c: &IntCounter, total: u64) {
    let seen = c.get();
    if total > seen {
        c.inc_by(total - seen);
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: RequestCounters,
    pub duration: Histogram,
    pub tunnels_active: IntGauge,
    pub forwards: ForwardCounters,
    pub tombstone_hits: IntCounter,
    pub upstream_errors: CounterSet,
    pub snapshot_version: IntGauge,
    pub snapshot_age: Gauge,
    pub sync_errors: IntCounterVec,
    pub sync_connected: IntGauge,
    pub sync_lag: Gauge,
    pub sync_rows_skipped: IntCounterVec,
    pub vm_usable: IntGaugeVec,
    pub balancer_panic: IntGaugeVec,
    pub balancer_ejected: IntGaugeVec,
    pub balancer_picks: IntCounterVec,
    pub balancer_panic_picks: IntCounter,
    pub balancer_fallback_picks: IntCounter,
    pub balancer_spill_picks: IntCounter,
    pub balancer_cluster_full: IntCounter,
    pub balancer_over_capacity_picks: IntCounter,
    pub balancer_policy: IntGaugeVec,
    pub scrape_errors: CounterSet,
    pub scrape_rounds: IntCounter,
    pub sample_age_max: Gauge,
    pub stale_vms: IntGauge,
    pub connections_active: IntGauge,
    pub connections_refused: CounterSet,
    pub client_timeouts: CounterSet,
    pub tls_handshake_errors: IntCounter,
    pub http2_control_floods: IntCounter,
    pub tls_certificates: IntGauge,
    pub tls_reload_errors: IntCounter,
    /// `edgeplane_tls_handshakes_total{cert,outcome}` (certificate
    /// selection, counted by the resolver: see crate::conn::certs).
    pub tls_handshakes: IntCounterVec,
    pub certs_cached: IntGauge,
    pub cert_fetches: CounterSet,
    pub acme_challenges_served: IntCounter,
    pub config_reloads: CounterSet,
    pub config_last_reload_ok: IntGauge,
    pub config_pending_restart: IntGauge,
    pub shadow_mismatches: IntCounterVec,
    pub shadow_last_mismatches: IntGaugeVec,
    pub shadow_comparisons: IntCounter,
    pub placement_serving: IntGaugeVec,
    pub resolver_names: IntGauge,
    pub resolver_unresolved: IntGauge,
    pub resolver_errors: IntCounter,
    pub resolver_changes: IntCounter,
    pub replays: CounterSet,
    pub connect_retries: IntCounter,
    pub workspace_tokens: TokenCounters,
    /// The log bridge's counters (process-wide: [`crate::logging`]).
    pub log_events: IntCounterVec,
    pub log_suppressed: IntCounterVec,
}

/// The `kind` label values of `edgeplane_requests_total`.
pub const REQUEST_KINDS: [&str; 4] = ["app", "custom_domain", "workspace", "unknown"];
/// The `outcome` label values of `edgeplane_requests_total`.
pub const REQUEST_OUTCOMES: [&str; 4] = ["proxied", "forwarded", "rejected", "error"];
const CODES: usize = 500; // 100..=599

/// `edgeplane_requests_total` with its handles resolved once per (kind,
/// outcome, status code): a request increments one atomic, without
/// formatting its status, hashing its labels or taking the vector's lock.
pub struct RequestCounters {
    vec: IntCounterVec,
    cells: Box<[std::sync::OnceLock<IntCounter>]>,
}

impl RequestCounters {
    fn new(vec: IntCounterVec) -> RequestCounters {
        let n = REQUEST_KINDS.len() * REQUEST_OUTCOMES.len() * CODES;
        RequestCounters {
            vec,
            cells: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// Counts one request: `kind` and `outcome` index [`REQUEST_KINDS`]
    /// and [`REQUEST_OUTCOMES`].
    pub fn inc(&self, kind: usize, outcome: usize, code: u16) {
        let (k, o) = (REQUEST_KINDS[kind], REQUEST_OUTCOMES[outcome]);
        if !(100..600).contains(&code) {
            self.vec.with_label_values(&[k, o, &code.to_string()]).inc();
            return;
        }
        let i = (kind * REQUEST_OUTCOMES.len() + outcome) * CODES + usize::from(code - 100);
        self.cells[i]
            .get_or_init(|| self.vec.with_label_values(&[k, o, &code.to_string()]))
            .inc();
    }

    /// The vector behind the handles (what is rendered).
    pub fn vec(&self) -> &IntCounterVec {
        &self.vec
    }
}

/// The `reason` label values of `edgeplane_connections_refused_total`.
pub const CONNECTION_REFUSALS: [&str; 3] = ["max_connections", "max_connections_per_ip", "proxy_protocol"];

/// The `reason` label values of `edgeplane_upstream_errors_total`: every
/// VM-side [`Failure`](crate::http::failure::Failure)'s label (a pooled connection's race is counted in
/// `log_events_total` instead) and `unresolved`.
pub const UPSTREAM_ERROR_REASONS: &[&str] = &[
    "connect_refused",
    "connect_timeout",
    "connect_error",
    "connect_reset",
    "timeout",
    "upstream",
    "mid_answer",
    "unresolved",
];

const REPLAY_OUTCOMES: [&str; 5] = {
    use crate::route::replay::ReplayOutcome as R;
    [
        R::ALL[0].as_str(),
        R::ALL[1].as_str(),
        R::ALL[2].as_str(),
        R::ALL[3].as_str(),
        R::ALL[4].as_str(),
    ]
};

/// A counter vector with one label whose values are known: every handle
/// resolved (and exported at 0) from the start, so counting one is a short
/// scan of static names and one atomic add — no hashing, no lock, no
/// allocation. A value outside the set still counts (through the vector).
pub struct CounterSet {
    vec: IntCounterVec,
    cells: Vec<(&'static str, IntCounter)>,
}

impl CounterSet {
    pub fn new(vec: IntCounterVec, labels: &[&'static str]) -> CounterSet {
        let cells = labels.iter().map(|&l| (l, vec.with_label_values(&[l]))).collect();
        CounterSet { vec, cells }
    }

    pub fn inc(&self, label: &str) {
        match self.cells.iter().find(|(l, _)| *l == label) {
            Some((_, c)) => c.inc(),
            None => self.vec.with_label_values(&[label]).inc(),
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        self.vec.with_label_values(&[label]).get()
    }
}

/// `edgeplane_forwards_total{to_region,reason}` with the handles of every
/// region seen kept in a lock-free map swapped whole when a new region
/// first appears: a forward is a hash of the region's name and one atomic.
pub struct ForwardCounters {
    vec: IntCounterVec,
    by_region: arc_swap::ArcSwap<std::collections::HashMap<Box<str>, [IntCounter; 3]>>,
}

impl ForwardCounters {
    fn new(vec: IntCounterVec) -> ForwardCounters {
        ForwardCounters {
            vec,
            by_region: arc_swap::ArcSwap::from_pointee(std::collections::HashMap::new()),
        }
    }

    pub fn inc(&self, to_region: &str, reason: crate::route::ForwardReason) {
        use crate::route::ForwardReason as F;
        let i = match reason {
            F::Affinity => 0,
            F::Tombstone => 1,
            F::Replay => 2,
        };
        if let Some(cells) = self.by_region.load().get(to_region) {
            cells[i].inc();
            return;
        }
        // First forward to this region: resolve its three handles once.
        let cells =
            [F::Affinity, F::Tombstone, F::Replay].map(|r| self.vec.with_label_values(&[to_region, r.as_str()]));
        cells[i].inc();
        self.by_region.rcu(|m| {
            let mut m = (**m).clone();
            m.entry(to_region.into()).or_insert_with(|| cells.clone());
            m
        });
    }

    /// True until the first forward (the status page says so).
    pub fn is_empty(&self) -> bool {
        self.by_region.load().is_empty()
    }

    pub fn vec(&self) -> &IntCounterVec {
        &self.vec
    }
}

/// `edgeplane_workspace_tokens_total{version,outcome}` with every label
/// pair resolved (and exported at 0) from the start: a workspace request
/// increments one atomic.
pub struct TokenCounters {
    /// `[version none, 1, 2][outcome valid, then Refusal::ALL]`.
    cells: Vec<[IntCounter; 1 + Refusal::ALL.len()]>,
}

impl TokenCounters {
    fn new(vec: &IntCounterVec) -> TokenCounters {
        let cells = ["none", "1", "2"]
            .into_iter()
            .map(|v| {
                std::array::from_fn(|i| {
                    let outcome = if i == 0 { "valid" } else { Refusal::ALL[i - 1].as_str() };
                    vec.with_label_values(&[v, outcome])
                })
            })
            .collect();
        TokenCounters { cells }
    }

    pub fn inc(&self, check: TokenCheck) {
        let v = match check.version {
            None => 0,
            Some(TokenVersion::V1) => 1,
            Some(TokenVersion::V2) => 2,
        };
        let o = check
            .refusal
            .map_or(0, |r| 1 + Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0));
        self.cells[v][o].inc();
    }
}

/// Creates metrics and registers them in one step, so each is named once.
struct Registrar(Registry);

impl Registrar {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("metric names are unique");
        c
    }
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }
    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }
    fn gauges(&self, name: &str, help: &str, label: &str) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"))
    }
    fn seconds(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help).expect("valid metric"))
    }
    fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.add(Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registrar(Registry::new());
        let m = Metrics {
            requests: RequestCounters::new(r.counters(
                "edgeplane_requests_total",
                "Requests by kind, outcome and status code",
                &["kind", "outcome", "code"],
            )),
            duration: r.histogram(
                "edgeplane_request_duration_seconds",
                "Time from request head to the end of the response",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            tunnels_active: r.gauge("edgeplane_websocket_tunnels_active", "WebSocket tunnels open now"),
            forwards: ForwardCounters::new(r.counters(
                "edgeplane_forwards_total",
                "Requests forwarded to another region's edge",
                &["to_region", "reason"],
            )),
            tombstone_hits: r.counter(
                "edgeplane_tombstone_hits_total",
                "Requests forwarded because of a live tombstone",
            ),
            upstream_errors: CounterSet::new(
                r.counters(
                    "edgeplane_upstream_errors_total",
                    "Failures talking to a VM or peer edge",
                    &["reason"],
                ),
                UPSTREAM_ERROR_REASONS,
            ),
            snapshot_version: r.gauge("edgeplane_snapshot_version", "Version of the placement table in use"),
            snapshot_age: r.seconds(
                "edgeplane_snapshot_age_seconds",
                "Seconds since the placement table was published",
            ),
            sync_errors: r.counters(
                "edgeplane_sync_errors_total",
                "Placement loads that failed; the previous table kept serving",
                &["reason"],
            ),
            sync_connected: r.gauge(
                "edgeplane_sync_connected",
                "1 while the placement sync is connected to its database",
            ),
            sync_lag: r.seconds(
                "edgeplane_sync_lag_seconds",
                "Commit-to-publish time of the last applied placement delta",
            ),
            sync_rows_skipped: r.counters(
                "edgeplane_sync_rows_skipped_total",
                "Placement rows skipped as invalid, by table and reason",
                &["table", "reason"],
            ),
            vm_usable: r.gauges(
                "edgeplane_vm_usable",
                "Active VMs of a cluster that may get new repls (fresh health, ready, not ejected)",
                "cluster",
            ),
            balancer_panic: r.gauges(
                "edgeplane_balancer_panic",
                "1 while a cluster has too few usable VMs and health is ignored",
                "cluster",
            ),
            balancer_ejected: r.gauges(
                "edgeplane_balancer_ejected_vms",
                "VMs ejected after consecutive connect failures",
                "cluster",
            ),
            balancer_picks: r.counters(
                "edgeplane_balancer_picks_total",
                "VMs picked for repls that were not running",
                &["policy"],
            ),
            balancer_panic_picks: r.counter(
                "edgeplane_balancer_panic_picks_total",
                "Picks made in panic mode (health ignored)",
            ),
            balancer_fallback_picks: r.counter(
                "edgeplane_balancer_fallback_picks_total",
                "Picks made from the snapshot before the balancer view covered the cluster",
            ),
            balancer_spill_picks: r.counter(
                "edgeplane_balancer_spill_picks_total",
                "Picks outside this edge's subset because no member had room for the repl's size",
            ),
            balancer_cluster_full: r.counter(
                "edgeplane_balancer_cluster_full_total",
                "Requests answered 503 because no VM of the cluster had room for the repl's size",
            ),
            balancer_over_capacity_picks: r.counter(
                "edgeplane_balancer_over_capacity_picks_total",
                "Panic-mode picks past a VM's capacity (no VM had room by what was known)",
            ),
            balancer_policy: r.gauges("edgeplane_balancer_policy", "1 for the policy in use", "policy"),
            scrape_errors: CounterSet::new(
                r.counters(
                    "edgeplane_health_scrape_errors_total",
                    "VM health reads that failed, by reason; the last sample is kept",
                    &["reason"],
                ),
                &crate::balancer::usability::ScrapeError::ALL.map(|e| e.as_str()),
            ),
            scrape_rounds: r.counter("edgeplane_health_rounds_total", "Health rounds run"),
            sample_age_max: r.seconds(
                "edgeplane_health_sample_age_max_seconds",
                "Age of the oldest VM health sample in use",
            ),
            stale_vms: r.gauge(
                "edgeplane_health_stale_vms",
                "Monitored VMs without a good sample within stale_after",
            ),
            connections_active: r.gauge(
                "edgeplane_connections_active",
                "Client connections open now (HTTP and HTTPS listeners)",
            ),
            connections_refused: CounterSet::new(
                r.counters(
                    "edgeplane_connections_refused_total",
                    "Client connections refused at accept, by the limit that refused them",
                    &["reason"],
                ),
                &CONNECTION_REFUSALS,
            ),
            client_timeouts: CounterSet::new(
                r.counters(
                    "edgeplane_client_timeouts_total",
                    "Clients cut for slowness (408), by phase: head, body, tls_handshake",
                    &["phase"],
                ),
                &["head", "body", "tls_handshake"],
            ),
            tls_handshake_errors: r.counter(
                "edgeplane_tls_handshake_errors_total",
                "TLS handshakes that failed (no certificate for the SNI name, bad client hello, timeout)",
            ),
            http2_control_floods: r.counter(
                "edgeplane_http2_control_floods_total",
                "HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM: over 1,000 PING or SETTINGS frames in 10 s",
            ),
            tls_certificates: r.gauge(
                "edgeplane_tls_certificates",
                "Certificates loaded from tls.certs_dir and in use",
            ),
            tls_reload_errors: r.counter(
                "edgeplane_tls_reload_errors_total",
                "Certificate pairs that could not be loaded (the pair loaded before from the same file keeps serving)",
            ),
            tls_handshakes: {
                let v = r.counters(
                    "edgeplane_tls_handshakes_total",
                    "TLS handshakes by the certificate chosen (override: tls.certs_dir, custom: the control plane's, wildcard, acme: a TLS-ALPN-01 challenge, none) and outcome (served, not_issued: a custom domain without a certificate yet, unknown_name)",
                    &["cert", "outcome"],
                );
                for (c, o) in crate::conn::certs::HANDSHAKE_LABELS {
                    v.with_label_values(&[c, o]);
                }
                v
            },
            certs_cached: r.gauge(
                "edgeplane_certs_cached",
                "Control-plane certificates held parsed in memory (tls.cert_cache_entries at most)",
            ),
            cert_fetches: CounterSet::new(
                r.counters(
                    "edgeplane_cert_fetches_total",
                    "Certificate fetches from the control plane by outcome (ok, missing, bad: refused, the previous copy keeps serving; error: the database)",
                    &["outcome"],
                ),
                &crate::conn::certs::FETCH_OUTCOMES,
            ),
            acme_challenges_served: r.counter(
                "edgeplane_acme_challenges_served_total",
                "ACME HTTP-01 challenge answers given (200)",
            ),
            config_reloads: CounterSet::new(
                r.counters(
                    "edgeplane_config_reloads_total",
                    "Config reloads (SIGHUP or admin API) by result: ok, error (old config kept)",
                    &["result"],
                ),
                &["ok", "error"],
            ),
            config_last_reload_ok: r.gauge(
                "edgeplane_config_last_reload_successful",
                "0 when the last config reload failed and the edge runs an older config than its file",
            ),
            config_pending_restart: r.gauge(
                "edgeplane_config_pending_restart_keys",
                "Keys changed in the file that only a restart (serve --upgrade) applies",
            ),
            shadow_mismatches: r.counters(
                "edgeplane_shadow_mismatches_total",
                "Differences the shadow placement source showed against the primary, by field (every comparison adds)",
                &["field"],
            ),
            shadow_last_mismatches: r.gauges(
                "edgeplane_shadow_last_mismatches",
                "Differences found by the last shadow comparison, by field",
                "field",
            ),
            shadow_comparisons: r.counter(
                "edgeplane_shadow_comparisons_total",
                "Comparisons of the shadow placement source against the primary",
            ),
            placement_serving: r.gauges(
                "edgeplane_placement_serving",
                "1 for the placement source the edge serves from (switchable at runtime in shadow mode)",
                "source",
            ),
            resolver_names: r.gauge(
                "edgeplane_resolver_names",
                "Peer-edge and VM names the edge resolves in the background",
            ),
            resolver_unresolved: r.gauge(
                "edgeplane_resolver_unresolved",
                "Names with no good answer yet (requests to them get 502)",
            ),
            resolver_errors: r.counter(
                "edgeplane_resolver_errors_total",
                "Failed lookups (the last good answer kept serving)",
            ),
            resolver_changes: r.counter(
                "edgeplane_resolver_changes_total",
                "Lookups whose answer differed from the address in use",
            ),
            replays: CounterSet::new(
                r.counters(
                    "edgeplane_replays_total",
                    "x-edgeplane-replay answers from VMs, by what the edge did: replayed, or why not \
                     (body_too_large, unknown_target, again, hop_limit)",
                    &["outcome"],
                ),
                &REPLAY_OUTCOMES,
            ),
            connect_retries: r.counter(
                "edgeplane_connect_retries_total",
                "Requests for a repl being placed sent to another VM after a connect failure",
            ),
            workspace_tokens: TokenCounters::new(&r.counters(
                "edgeplane_workspace_tokens_total",
                "Workspace tokens checked, by version (1, 2, none) and outcome (valid or why refused)",
                &["version", "outcome"],
            )),
            log_events: r.add(crate::logging::LOG_EVENTS.clone()),
            log_suppressed: r.add(crate::logging::LOG_SUPPRESSED.clone()),
            registry: r.0,
        };
        m.config_last_reload_ok.set(1);
        // Every known label value exported at 0 from the start, so that
        // `rate()` and alerts see 0, not "no data".
        for event in crate::logging::EVENTS {
            m.log_events.with_label_values(&[event]);
        }
        for level in crate::logging::LEVELS {
            m.log_suppressed.with_label_values(&[level]);
        }
        for table in edgeplane_control_sync::table::TABLES {
            for reason in edgeplane_control_sync::table::SkipReason::ALL {
                m.sync_rows_skipped.with_label_values(&[table, reason.as_str()]);
            }
        }
        for field in edgeplane_control_sync::shadow::FIELDS {
            m.shadow_mismatches.with_label_values(&[field]);
            m.shadow_last_mismatches.with_label_values(&[field]);
        }
        m
    }

    /// Mirrors a freshly built balancer view: usable, panic and ejected
    /// VMs per cluster of this region.
    pub fn set_balancer_view(&self, t: &RoutingTable, b: &Balancer) {
        if !t.is_loaded() {
            return;
        }
        let view = b.view();
        self.vm_usable.reset();
        self.balancer_panic.reset();
        self.balancer_ejected.reset();
        let local = t.local_region();
        for (i, cl) in t.clusters().filter(|(_, c)| c.region == local) {
            let Some(cv) = view.clusters.get(i as usize) else {
                continue;
            };
            let name: &str = &cl.name;
            self.vm_usable.with_label_values(&[name]).set(cv.usable as i64);
            self.balancer_panic
                .with_label_values(&[name])
                .set((cv.mode == crate::balancer::Mode::Panic) as i64);
            self.balancer_ejected.with_label_values(&[name]).set(cv.ejected as i64);
        }
    }

    /// Mirrors the balancer's counters and the health ages (scrape time).
    pub fn refresh_balancer(&self, b: &Balancer, health: &HealthMap, now_ms: u64) {
        let (picks, panic, fallback) = b.pick_counts();
        for p in Policy::ALL {
            mirror(&self.balancer_picks.with_label_values(&[p.as_str()]), picks[p.index()]);
            self.balancer_policy
                .with_label_values(&[p.as_str()])
                .set((b.policy() == p) as i64);
        }
        mirror(&self.balancer_panic_picks, panic);
        mirror(&self.balancer_fallback_picks, fallback);
        let (spill, over) = b.size_pick_counts();
        mirror(&self.balancer_spill_picks, spill);
        mirror(&self.balancer_over_capacity_picks, over);
        let (oldest_ms, stale) = health.ages(now_ms, b.params().stale_after_ms);
        self.sample_age_max.set(oldest_ms as f64 / 1000.0);
        self.stale_vms.set(stale as i64);
    }

    /// Mirrors the table's state into gauges (called at scrape time).
    pub fn refresh_from(&self, table: &TableHandle, now_ms: u64) {
        self.snapshot_version.set(table.load().version() as i64);
        let published = table.published_at_ms();
        let age = if published == 0 {
            0.0
        } else {
            now_ms.saturating_sub(published) as f64 / 1000.0
        };
        self.snapshot_age.set(age);
        let status = table.status();
        for kind in SyncErrorKind::ALL {
            mirror(
                &self.sync_errors.with_label_values(&[kind.as_str()]),
                status.errors(kind),
            );
        }
        for ((t, reason), n) in status.skipped_rows() {
            mirror(&self.sync_rows_skipped.with_label_values(&[t, reason]), n);
        }
        self.sync_connected.set(status.connected() as i64);
        self.sync_lag.set(status.lag_us() as f64 / 1e6);
    }

    /// Mirrors the shadow comparison's totals and the source being served
    /// (called at scrape time).
    pub fn refresh_shadow(&self, shadow: &edgeplane_control_sync::shadow::ShadowControl) {
        for (field, n) in shadow.state.totals() {
            mirror(&self.shadow_mismatches.with_label_values(&[field]), n);
        }
        if let Some((_, last)) = shadow.state.last() {
            for (field, n) in edgeplane_control_sync::shadow::FIELDS.iter().zip(last.counts) {
                self.shadow_last_mismatches.with_label_values(&[field]).set(n as i64);
            }
        }
        mirror(&self.shadow_comparisons, shadow.state.comparisons());
        let serving = shadow.switch.selected();
        for name in shadow.switch.names() {
            self.placement_serving
                .with_label_values(&[name])
                .set((name == serving) as i64);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8192);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).unwrap();
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_once_and_rendered_with_its_help() {
        let m = Metrics::new();
        m.requests.inc(0, 0, 200);
        m.requests.inc(0, 0, 200);
        m.vm_usable.with_label_values(&["c1"]).set(3);
        let text = String::from_utf8(m.render()).unwrap();
        let helps = text.lines().filter(|l| l.starts_with("# HELP edgeplane_")).count();
        // Vectors without a labelled child yet are not rendered: only those
        // whose label values are not known in advance (per cluster, per
        // region, per status code; the two touched above are).
        assert_eq!(helps, 46, "{helps} metrics rendered:\n{text}");
        assert!(text.contains("edgeplane_workspace_tokens_total{outcome=\"unknown_key\",version=\"2\"} 0"));
        assert!(text.contains("edgeplane_config_last_reload_successful 1"));
        assert!(text.contains("edgeplane_requests_total{code=\"200\",kind=\"app\",outcome=\"proxied\"} 2"));
        assert!(text.contains("edgeplane_vm_usable{cluster=\"c1\"} 3"));
        assert!(text.contains("edgeplane_tls_handshakes_total{cert=\"custom\",outcome=\"not_issued\"} 0"));
        assert!(text.contains("edgeplane_cert_fetches_total{outcome=\"bad\"} 0"));
    }

    /// What the runbook's alerts and dashboards query exists on a fresh
    /// edge, at 0, for every label value the edge can emit: `rate()` shows
    /// 0, not "no data".
    #[test]
    fn every_known_label_value_is_exported_at_zero_from_the_start() {
        let text = String::from_utf8(Metrics::new().render()).unwrap();
        let zero = |name: &str, labels: &str| {
            let line = format!("{name}{{{labels}}} 0");
            assert!(text.lines().any(|l| l == line), "{line} missing");
        };
        for r in CONNECTION_REFUSALS {
            zero("edgeplane_connections_refused_total", &format!("reason=\"{r}\""));
        }
        for r in UPSTREAM_ERROR_REASONS {
            zero("edgeplane_upstream_errors_total", &format!("reason=\"{r}\""));
        }
        for r in REPLAY_OUTCOMES {
            zero("edgeplane_replays_total", &format!("outcome=\"{r}\""));
        }
        for e in crate::logging::EVENTS {
            zero("edgeplane_log_events_total", &format!("event=\"{e}\""));
        }
        for l in crate::logging::LEVELS {
            zero("edgeplane_log_suppressed_total", &format!("level=\"{l}\""));
        }
        for r in crate::balancer::usability::ScrapeError::ALL {
            zero(
                "edgeplane_health_scrape_errors_total",
                &format!("reason=\"{}\"", r.as_str()),
            );
        }
        for t in edgeplane_control_sync::table::TABLES {
            for r in edgeplane_control_sync::table::SkipReason::ALL {
                zero(
                    "edgeplane_sync_rows_skipped_total",
                    &format!("reason=\"{}\",table=\"{t}\"", r.as_str()),
                );
            }
        }
        for f in edgeplane_control_sync::shadow::FIELDS {
            zero("edgeplane_shadow_last_mismatches", &format!("field=\"{f}\""));
            zero("edgeplane_shadow_mismatches_total", &format!("field=\"{f}\""));
        }
        for r in ["ok", "error"] {
            zero("edgeplane_config_reloads_total", &format!("result=\"{r}\""));
        }
        for p in ["head", "body", "tls_handshake"] {
            zero("edgeplane_client_timeouts_total", &format!("phase=\"{p}\""));
        }
    }
}
