//! Prometheus metrics of DESIGN §5 (prefix `edgeplane_`), one registry per
//! process, served by the admin listener's `/metrics`.
//!
//! Request-path code only increments; gauges that mirror the placement
//! table (version, age, rejected loads) are refreshed when scraped
//! ([`Metrics::refresh_from`]). Start at [`Metrics::new`].

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use edgeplane_control_sync::{SyncErrorKind, TableHandle};

/// Raises a counter to `total` (counters mirrored from the sync's atomics).
fn mirror(c: &IntCounter, total: u64) {
    let seen = c.get();
    if total > seen {
        c.inc_by(total - seen);
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: Histogram,
    pub tunnels_active: IntGauge,
    pub forwards: IntCounterVec,
    pub tombstone_hits: IntCounter,
    pub upstream_errors: IntCounterVec,
    pub snapshot_version: IntGauge,
    pub snapshot_age: prometheus::Gauge,
    pub sync_errors: IntCounterVec,
    pub sync_connected: IntGauge,
    pub sync_lag: prometheus::Gauge,
    pub sync_rows_skipped: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("edgeplane_requests_total", "Requests by kind, outcome and status code"),
            &["kind", "outcome", "code"],
        )
        .unwrap();
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "edgeplane_request_duration_seconds",
                "Time from request head to the end of the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .unwrap();
        let tunnels_active = IntGauge::new("edgeplane_websocket_tunnels_active", "WebSocket tunnels open now").unwrap();
        let forwards = IntCounterVec::new(
            Opts::new(
                "edgeplane_forwards_total",
                "Requests forwarded to another region's edge",
            ),
            &["to_region", "reason"],
        )
        .unwrap();
        let tombstone_hits = IntCounter::new(
            "edgeplane_tombstone_hits_total",
            "Requests forwarded because of a live tombstone",
        )
        .unwrap();
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "edgeplane_upstream_errors_total",
                "Failures talking to a VM or peer edge",
            ),
            &["reason"],
        )
        .unwrap();
        let snapshot_version =
            IntGauge::new("edgeplane_snapshot_version", "Version of the placement table in use").unwrap();
        let snapshot_age = prometheus::Gauge::new(
            "edgeplane_snapshot_age_seconds",
            "Seconds since the placement table was published",
        )
        .unwrap();
        let sync_errors = IntCounterVec::new(
            Opts::new(
                "edgeplane_sync_errors_total",
                "Placement loads that failed; the previous table kept serving",
            ),
            &["reason"],
        )
        .unwrap();
        let sync_connected = IntGauge::new(
            "edgeplane_sync_connected",
            "1 while the placement sync is connected to its database",
        )
        .unwrap();
        let sync_lag = prometheus::Gauge::new(
            "edgeplane_sync_lag_seconds",
            "Commit-to-publish time of the last applied placement delta",
        )
        .unwrap();
        let sync_rows_skipped = IntCounterVec::new(
            Opts::new(
                "edgeplane_sync_rows_skipped_total",
                "Placement rows skipped as invalid, by table and reason",
            ),
            &["table", "reason"],
        )
        .unwrap();
        for c in [
            Box::new(sync_connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sync_lag.clone()),
            Box::new(sync_rows_skipped.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(tunnels_active.clone()),
            Box::new(forwards.clone()),
            Box::new(tombstone_hits.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(snapshot_version.clone()),
            Box::new(snapshot_age.clone()),
            Box::new(sync_errors.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Metrics {
            registry,
            requests,
            duration,
            tunnels_active,
            forwards,
            tombstone_hits,
            upstream_errors,
            snapshot_version,
            snapshot_age,
            sync_errors,
            sync_connected,
            sync_lag,
            sync_rows_skipped,
        }
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
