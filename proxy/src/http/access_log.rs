//! The sampled access log and the `x-edgeplane-route` debug header: how a
//! person sees which way individual requests went.
//!
//! Where it sits: the request path ([`super::filter`]) asks [`sampled`]
//! once per request
//! (one multiply on random bits already drawn), builds an [`AccessEntry`]
//! in its `logging` phase only for sampled requests and for errors
//! (`log.access_log_errors`; at most the log's per-call-site budget per
//! status code and second, [`crate::logging::Limiter`]), and [`emit`]s it as one `tracing` event with
//! target `edgeplane::access` (a JSON object per line with
//! `--log-format json`). A request whose `x-edgeplane-debug` header holds
//! the admin token ([`admin_token_matches`]) gets [`route_header`] back as
//! `x-edgeplane-route`.
//!
//! Invariants: nothing here allocates for a request that is neither
//! sampled nor an error nor a debug request; the token comparison takes
//! the same time wherever the first difference is; a decision is described
//! with table names only when the table it was made with is still the one
//! in use (indexes of another version could name the wrong VM).
//!
//! [`Proxy::finish`] is the request's last step: it counts the request in
//! the metrics and writes the line.
//!
//! Start at [`emit`].

use std::net::IpAddr;
use std::time::Duration;

use edgeplane_config::{Config, LogConfig};
use edgeplane_control_sync::RoutingTable;

use super::downstream::Downstream;

use super::headers::{request_host, RequestHead};
use super::{Proxy, RequestCtx};
use crate::metrics::{REQUEST_KINDS, REQUEST_OUTCOMES};
use crate::route::{describe, Decision, Kind};

/// Whether a request with these random bits is in the sample.
#[inline]
pub fn sampled(cfg: &LogConfig, entropy: u64) -> bool {
    // Decorrelated from the balancer's use of the same bits.
    let r = edgeplane_core::bits::splitmix64(entropy ^ 0xacce_5510_9000_0001);
    (r as f64) < cfg.access_log_sample * (u64::MAX as f64)
}

/// Statuses always logged when `log.access_log_errors` is on: the edge or
/// a VM failed (5xx, which includes 503 no usable VM and 508 forward loop).
#[inline]
pub fn is_error(status: u16) -> bool {
    status >= 500
}

/// Compares a presented token with the configured admin token without
/// leaking where they differ. No token configured: nothing matches.
pub fn admin_token_matches(expected: Option<&str>, given: &[u8]) -> bool {
    let Some(expected) = expected else {
        return false;
    };
    let e = expected.as_bytes();
    if e.len() != given.len() {
        return false;
    }
    e.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The `x-edgeplane-route` value: which edge decided, with which table,
/// and where the request went.
pub fn route_header(cfg: &Config, d: &Decision, t: &RoutingTable) -> String {
    format!(
        "edge={}/{} table={} kind={} -> {}",
        cfg.edge.region,
        cfg.edge.instance_id,
        t.version(),
        d.kind().as_str(),
        header_safe(&describe(d, t))
    )
}

/// Replaces bytes a header value may not hold.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' })
        .collect()
}

/// Describes a decision for the log: with names when `t` is the table it
/// was made with, else by address only.
pub fn describe_for_log(d: &Decision, t: &RoutingTable, decided_with: u64) -> String {
    if t.version() == decided_with {
        return describe(d, t);
    }
    match *d {
        Decision::Vm { addr, reason, .. } => format!("vm {addr} ({})", reason.as_str()),
        Decision::Forward { addr, reason, hops, .. } => {
            format!("forward to edge {addr} ({}, hop {hops})", reason.as_str())
        }
        Decision::Reject { reason, .. } => format!("{} {}", reason.status(), reason.as_str()),
    }
}

/// One access-log line.
#[derive(Debug)]
pub struct AccessEntry<'a> {
    pub request_id: &'a str,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    /// `app`, `custom_domain`, `workspace`, `unknown`.
    pub kind: &'a str,
    /// `proxied`, `forwarded`, `rejected`, `error`.
    pub outcome: &'a str,
    /// Where the routing decision sent it ([`describe_for_log`]).
    pub route: &'a str,
    pub table_version: u64,
    /// Forwards before this edge (0 = straight from a client).
    pub hops_in: u8,
    pub websocket: bool,
}

/// Writes the entry as one `edgeplane::access` event.
pub fn emit(e: &AccessEntry<'_>) {
    let client = e.client.map(|c| c.to_string()).unwrap_or_default();
    tracing::info!(
        target: "edgeplane::access",
        request_id = e.request_id,
        client = client.as_str(),
        method = e.method,
        host = e.host,
        path = e.path,
        status = e.status,
        duration_ms = e.duration.as_secs_f64() * 1000.0,
        kind = e.kind,
        outcome = e.outcome,
        route = e.route,
        table_version = e.table_version,
        hops_in = e.hops_in,
        websocket = e.websocket,
        "{} {}{} {} -> {}",
        e.method,
        e.host,
        e.path,
        e.status,
        e.route
    );
}

/// Error lines outside the sample share the log's per-call-site budget,
/// one budget per status code, so an outage writes a bounded log (the
/// requests are still counted in `edgeplane_requests_total`).
fn error_line_admitted(status: u16) -> bool {
    use crate::logging::{callsite_key, Admit, LIMITER, LOG_SUPPRESSED};
    let key = callsite_key(Some("edgeplane::access errors"), Some(u32::from(status)), "");
    match LIMITER.admit(key, crate::clock::now_ms() / 1000) {
        Admit::Yes { .. } => true,
        Admit::No => {
            LOG_SUPPRESSED.with_label_values(&["info"]).inc();
            false
        }
    }
}

impl Proxy {
    /// The request's last step (Pingora's `logging`): tunnel gauge, request
    /// counter and duration, and the access-log line when sampled or failed.
    pub(super) fn finish<D: Downstream>(&self, session: &D, ctx: &mut RequestCtx) {
        if let Some(c) = session.conn() {
            c.expect_head();
        }
        let status = ctx.outcome.status();
        // Indices into REQUEST_KINDS and REQUEST_OUTCOMES.
        let (kind, outcome) = match ctx.decision().copied() {
            Some(d @ Decision::Vm { .. }) => (d.kind(), 0),
            Some(d @ Decision::Forward { .. }) => (d.kind(), 1),
            Some(d @ Decision::Reject { .. }) => (d.kind(), 2),
            None => (Kind::Unknown, 2),
        };
        let outcome = if status >= 500 && outcome != 2 { 3 } else { outcome };
        let kind_i = match kind {
            Kind::App => 0,
            Kind::CustomDomain => 1,
            Kind::Workspace => 2,
            Kind::Unknown => 3,
        };
        self.shared.metrics.requests.inc(kind_i, outcome, status);
        let (kind, outcome) = (REQUEST_KINDS[kind_i], REQUEST_OUTCOMES[outcome]);
        let elapsed = ctx.start.elapsed();
        self.shared.metrics.duration.observe(elapsed.as_secs_f64());
        let log_cfg = &self.shared.cfg.load().log;
        if ctx.sampled || (log_cfg.access_log_errors && is_error(status) && error_line_admitted(status)) {
            self.write_access_log(session, ctx, kind, outcome, elapsed);
        }
    }

    /// Writes the access-log line of a finished request.
    fn write_access_log<D: Downstream>(
        &self,
        session: &D,
        ctx: &RequestCtx,
        kind: &str,
        outcome: &str,
        elapsed: Duration,
    ) {
        let head = session.head();
        let req = head.req();
        let status = ctx.outcome.status();
        let route = match &ctx.route {
            Some(r) => describe_for_log(&r.decision, &self.shared.table.load(), r.table_version),
            None => format!("{status} before routing"),
        };
        emit(&AccessEntry {
            request_id: ctx.request_id.as_ref().map_or("-", |id| id.as_str()),
            client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
            method: req.method.as_str(),
            host: request_host(head)
                .and_then(|h| std::str::from_utf8(h).ok())
                .unwrap_or("-"),
            path: req.uri.path(),
            status,
            duration: elapsed,
            kind,
            outcome,
            route: &route,
            table_version: ctx.route.as_ref().map_or(0, |r| r.table_version),
            hops_in: ctx.hops_in(),
            websocket: ctx.outcome == super::ctx::Outcome::Tunnel,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_rate_is_honoured() {
        let cfg = |s| LogConfig {
            access_log_sample: s,
            access_log_errors: true,
        };
        let hits = |s| (0..100_000u64).filter(|&i| sampled(&cfg(s), i)).count();
        assert_eq!(hits(0.0), 0);
        assert_eq!(hits(1.0), 100_000);
        let one_percent = hits(0.01);
        assert!((800..1200).contains(&one_percent), "{one_percent}");
    }

    #[test]
    fn only_the_exact_admin_token_matches() {
        assert!(admin_token_matches(Some("s3cret-token"), b"s3cret-token"));
        assert!(!admin_token_matches(Some("s3cret-token"), b"s3cret-tokeN"));
        assert!(!admin_token_matches(Some("s3cret-token"), b"s3cret"));
        assert!(!admin_token_matches(Some("s3cret-token"), b""));
        assert!(!admin_token_matches(None, b""), "no token configured: debug is off");
    }

    #[test]
    fn header_values_stay_printable() {
        assert_eq!(header_safe("vm é\n1"), "vm ??1");
    }
}
