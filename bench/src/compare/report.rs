//! Turns a [`CompareResults`] into what people read: medians over rounds per
//! peer, each proxy's ratio to nginx, a markdown page, the raw JSON, and an
//! SVG bar chart of proxy CPU per request and per WebSocket round trip, and
//! one of the same over TLS.

use std::fmt::Write as _;
use std::path::Path;

use super::h2load::TlsHttp;
use super::{CompareError, CompareResults, PeerKind};

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one peer's HTTP runs.
#[derive(Debug, Clone, Copy)]
pub struct HttpSummary {
    pub peer: PeerKind,
    pub sat_rps: f64,
    pub sat_p50_us: f64,
    pub sat_p99_us: f64,
    pub sat_cpu_us: f64,
    pub fixed_rps: f64,
    pub fixed_p50_us: f64,
    pub fixed_p99_us: f64,
    pub fixed_p999_us: f64,
    pub fixed_cpu_us: f64,
    pub rss_mib: f64,
    pub errors: u64,
}

/// Medians per peer, in the order peers were given.
pub fn http_summary(r: &CompareResults) -> Vec<HttpSummary> {
    let mut peers: Vec<PeerKind> = Vec::new();
    for h in &r.http {
        if !peers.contains(&h.peer) {
            peers.push(h.peer);
        }
    }
    peers
        .into_iter()
        .map(|p| {
            let runs: Vec<_> = r.http.iter().filter(|h| h.peer == p).collect();
            let m = |f: &dyn Fn(&super::HttpRun) -> f64| median(runs.iter().map(|h| f(h)).collect());
            HttpSummary {
                peer: p,
                sat_rps: m(&|h| h.saturation.rps),
                sat_p50_us: m(&|h| h.saturation.latency.p50_us),
                sat_p99_us: m(&|h| h.saturation.latency.p99_us),
                sat_cpu_us: m(&|h| h.saturation_cpu_us_per_req.unwrap_or(f64::NAN)),
                fixed_rps: m(&|h| h.fixed.rps),
                fixed_p50_us: m(&|h| h.fixed.latency.p50_us),
                fixed_p99_us: m(&|h| h.fixed.latency.p99_us),
                fixed_p999_us: m(&|h| h.fixed.latency.p999_us),
                fixed_cpu_us: m(&|h| h.fixed_cpu_us_per_req.unwrap_or(f64::NAN)),
                rss_mib: m(&|h| h.rss_bytes.map(|b| b as f64 / 1048576.0).unwrap_or(f64::NAN)),
                errors: runs
                    .iter()
                    .map(|h| h.saturation.errors + h.saturation.non_2xx + h.fixed.errors + h.fixed.non_2xx)
                    .sum(),
            }
        })
        .collect()
}

/// Medians of one peer's echo runs at one (connections, size).
#[derive(Debug, Clone, Copy)]
pub struct WsSummary {
    pub peer: PeerKind,
    pub tls: bool,
    pub connections: usize,
    pub size: usize,
    pub rtps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us: f64,
    pub errors: u64,
}

pub fn ws_summary(r: &CompareResults) -> Vec<WsSummary> {
    let mut keys: Vec<(bool, usize, usize, PeerKind)> = Vec::new();
    for w in &r.ws {
        let k = (w.tls, w.echo.connections, w.echo.size, w.peer);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(tls, c, s, p)| {
            let runs: Vec<_> =
                r.ws.iter()
                    .filter(|w| w.peer == p && w.tls == tls && w.echo.connections == c && w.echo.size == s)
                    .collect();
            let m = |f: &dyn Fn(&super::WsRun) -> f64| median(runs.iter().map(|w| f(w)).collect());
            WsSummary {
                peer: p,
                tls,
                connections: c,
                size: s,
                rtps: m(&|w| w.echo.round_trips_per_sec),
                p50_us: m(&|w| w.echo.latency.p50_us),
                p99_us: m(&|w| w.echo.latency.p99_us),
                cpu_us: m(&|w| w.cpu_us_per_round_trip.unwrap_or(f64::NAN)),
                errors: runs.iter().map(|w| w.echo.errors).sum(),
            }
        })
        .collect()
}

fn num(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

fn ms(us: f64) -> String {
    num(us / 1000.0, 2)
}

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 && x.is_finite() && b.is_finite() => format!("{:.2}x", x / b),
        _ => "–".into(),
    }
}

/// Medians of one peer's keep-alive request runs over TLS in one protocol.
#[derive(Debug, Clone)]
pub struct TlsHttpSummary {
    pub peer: PeerKind,
    pub proto: TlsHttp,
    /// What ALPN settled on (a peer that fell back to HTTP/1.1 shows here).
    pub negotiated: String,
    pub rps: f64,
    pub cpu_us: f64,
    pub errors: u64,
}

pub fn tls_http_summary(r: &CompareResults) -> Vec<TlsHttpSummary> {
    let mut keys: Vec<(TlsHttp, PeerKind)> = Vec::new();
    for t in &r.tls_http {
        if !keys.contains(&(t.proto, t.peer)) {
            keys.push((t.proto, t.peer));
        }
    }
    keys.sort_by_key(|k| k.0 == TlsHttp::H1);
    keys.into_iter()
        .map(|(proto, peer)| {
            let runs: Vec<_> = r
                .tls_http
                .iter()
                .filter(|t| t.peer == peer && t.proto == proto)
                .collect();
            TlsHttpSummary {
                peer,
                proto,
                negotiated: runs.first().map(|t| t.load.protocol.clone()).unwrap_or_default(),
                rps: median(runs.iter().map(|t| t.load.rps).collect()),
                cpu_us: median(runs.iter().map(|t| t.cpu_us_per_req.unwrap_or(f64::NAN)).collect()),
                errors: runs
                    .iter()
                    .map(|t| t.load.failed + t.load.errored + t.load.done.saturating_sub(t.load.status_2xx))
                    .sum(),
            }
        })
        .collect()
}

/// Medians of one peer's new-connection runs, full or resumed.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeSummary {
    pub peer: PeerKind,
    pub resume: bool,
    pub per_sec: f64,
    pub cpu_us: f64,
    /// Resumed connections / all connections (over every round).
    pub resumed_share: f64,
    pub errors: u64,
}

pub fn handshake_summary(r: &CompareResults) -> Vec<HandshakeSummary> {
    let mut keys: Vec<(bool, PeerKind)> = Vec::new();
    for h in &r.handshakes {
        if !keys.contains(&(h.result.resume, h.peer)) {
            keys.push((h.result.resume, h.peer));
        }
    }
    keys.sort_by_key(|k| k.0);
    keys.into_iter()
        .map(|(resume, peer)| {
            let runs: Vec<_> = r
                .handshakes
                .iter()
                .filter(|h| h.peer == peer && h.result.resume == resume)
                .collect();
            let total: u64 = runs.iter().map(|h| h.result.connections_total).sum();
            HandshakeSummary {
                peer,
                resume,
                per_sec: median(runs.iter().map(|h| h.result.per_sec).collect()),
                cpu_us: median(runs.iter().map(|h| h.cpu_us_per_conn.unwrap_or(f64::NAN)).collect()),
                resumed_share: runs.iter().map(|h| h.result.resumed).sum::<u64>() as f64 / total.max(1) as f64,
                errors: runs.iter().map(|h| h.result.errors).sum(),
            }
        })
        .collect()
}

/// The markdown page.
pub fn markdown(r: &CompareResults) -> String {
    let mut s = String::new();
    let rounds = r
        .http
        .iter()
        .map(|h| h.round)
        .chain(r.tls_http.iter().map(|t| t.round))
        .max()
        .map_or(0, |m| m + 1);
    let _ = writeln!(s, "# edgeplane vs nginx vs HAProxy\n");
    let _ = writeln!(s, "Machine: {}  ", r.machine);
    let _ = writeln!(s, "Command: `{}`  ", r.command);
    let _ = writeln!(
        s,
        "Proxies pinned alone to one core, one worker each; backend and load generators on the other. \
Medians of {rounds} alternating rounds. CPU-µs = the proxy's user+system CPU time over the run / requests served.\n"
    );
    if !r.http.is_empty() {
        plain_http_md(&mut s, r);
    }
    let ws = ws_summary(r);
    ws_md(&mut s, &ws, false);
    if !r.tls_http.is_empty() || !r.handshakes.is_empty() {
        tls_md(&mut s, r);
    }
    ws_md(&mut s, &ws, true);
    idle_md(&mut s, r);
    s
}

fn plain_http_md(s: &mut String, r: &CompareResults) {
    let http = http_summary(r);
    let nginx = http.iter().find(|h| h.peer == PeerKind::Nginx);
    let _ = writeln!(s, "## HTTP saturation (wrk -t1, keep-alive, tiny 200)\n");
    let _ = writeln!(
        s,
        "| peer | req/s | p50 ms | p99 ms | CPU-µs/req | CPU vs nginx | RSS MiB | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for h in &http {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            h.peer.as_str(),
            num(h.sat_rps, 0),
            ms(h.sat_p50_us),
            ms(h.sat_p99_us),
            num(h.sat_cpu_us, 1),
            ratio(h.sat_cpu_us, nginx.map(|n| n.sat_cpu_us)),
            num(h.rss_mib, 1),
            h.errors
        );
    }
    let _ = writeln!(
        s,
        "\n## HTTP at a fixed offered rate ({} req/s, open loop, latency from the scheduled send)\n",
        r.offered_rps
    );
    let _ = writeln!(
        s,
        "| peer | achieved req/s | p50 ms | p99 ms | p99.9 ms | p99 vs nginx | CPU-µs/req | CPU vs nginx |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for h in &http {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            h.peer.as_str(),
            num(h.fixed_rps, 0),
            ms(h.fixed_p50_us),
            ms(h.fixed_p99_us),
            ms(h.fixed_p999_us),
            ratio(h.fixed_p99_us, nginx.map(|n| n.fixed_p99_us)),
            num(h.fixed_cpu_us, 1),
            ratio(h.fixed_cpu_us, nginx.map(|n| n.fixed_cpu_us)),
        );
    }
}

fn ws_md(s: &mut String, ws: &[WsSummary], tls: bool) {
    let ws: Vec<&WsSummary> = ws.iter().filter(|w| w.tls == tls).collect();
    if ws.is_empty() {
        return;
    }
    let title = if tls {
        "WebSocket over TLS (wss) echo"
    } else {
        "WebSocket echo"
    };
    let _ = writeln!(s, "\n## {title} (closed loop, one message in flight per connection)\n");
    let _ = writeln!(
        s,
        "| connections | size B | peer | round trips/s | p50 ms | p99 ms | CPU-µs/round trip | CPU vs nginx | errors |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for w in &ws {
        let base = ws
            .iter()
            .find(|n| n.peer == PeerKind::Nginx && n.connections == w.connections && n.size == w.size)
            .map(|n| n.cpu_us);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            w.connections,
            w.size,
            w.peer.as_str(),
            num(w.rtps, 0),
            ms(w.p50_us),
            ms(w.p99_us),
            num(w.cpu_us, 1),
            ratio(w.cpu_us, base),
            w.errors
        );
    }
}

fn tls_md(s: &mut String, r: &CompareResults) {
    let http = tls_http_summary(r);
    let _ = writeln!(
        s,
        "\n## Requests over TLS (h2load, keep-alive, one app; HTTP/2: 10 streams per connection)\n"
    );
    let _ = writeln!(
        s,
        "| protocol | peer | ALPN | req/s | CPU-µs/req | CPU vs nginx | errors |\n|---|---|---|---:|---:|---:|---:|"
    );
    for t in &http {
        let base = http
            .iter()
            .find(|n| n.peer == PeerKind::Nginx && n.proto == t.proto)
            .map(|n| n.cpu_us);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            t.proto.label(),
            t.peer.as_str(),
            t.negotiated,
            num(t.rps, 0),
            num(t.cpu_us, 1),
            ratio(t.cpu_us, base),
            t.errors
        );
    }
    let hs = handshake_summary(r);
    let _ = writeln!(
        s,
        "\n## New TLS connections (handshake + one request + close, 4 clients back to back)\n"
    );
    let _ = writeln!(
        s,
        "| handshake | peer | connections/s | CPU-µs/connection | CPU vs nginx | resumed | errors |\n|---|---|---:|---:|---:|---:|---:|"
    );
    for h in &hs {
        let base = hs
            .iter()
            .find(|n| n.peer == PeerKind::Nginx && n.resume == h.resume)
            .map(|n| n.cpu_us);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {}% | {} |",
            if h.resume { "resumed (ticket)" } else { "full" },
            h.peer.as_str(),
            num(h.per_sec, 0),
            num(h.cpu_us, 1),
            ratio(h.cpu_us, base),
            num(h.resumed_share * 100.0, 0),
            h.errors
        );
    }
}

fn idle_md(s: &mut String, r: &CompareResults) {
    if r.idle.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## Idle WebSocket tunnels (open files per process here: {})\n",
        r.open_files_limit
    );
    let _ = writeln!(
        s,
        "| transport | peer | tunnels asked | opened | echoed after idling | proxy RSS per tunnel KiB | proxy fds per tunnel | kernel TCP memory per tunnel KiB (all sockets) |\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    for i in &r.idle {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            if i.tls { "wss" } else { "ws" },
            i.peer.map_or("?", |p| p.as_str()),
            i.requested,
            i.opened,
            i.echoed,
            num(i.rss_per_tunnel_bytes.unwrap_or(f64::NAN) / 1024.0, 2),
            num(i.fds_per_tunnel.unwrap_or(f64::NAN), 2),
            num(i.kernel_per_tunnel_bytes / 1024.0, 2)
        );
    }
}

/// One bar series of a chart: name, colour, value per peer.
type Series<'a> = (&'a str, &'a str, Vec<(PeerKind, f64)>);

/// Bars of CPU-µs per request (saturation and fixed rate) and per echoed
/// round trip (64 connections, 64 B when measured), one group per peer.
pub fn svg(r: &CompareResults) -> String {
    let http = http_summary(r);
    let ws = ws_summary(r);
    let series: Vec<Series> = vec![
        (
            "HTTP, saturation",
            "#4e79a7",
            http.iter().map(|h| (h.peer, h.sat_cpu_us)).collect(),
        ),
        (
            "HTTP, fixed rate",
            "#59a14f",
            http.iter().map(|h| (h.peer, h.fixed_cpu_us)).collect(),
        ),
        (
            "WebSocket round trip (64 conns, 64 B)",
            "#f28e2b",
            ws.iter()
                .filter(|w| !w.tls && w.connections == 64 && w.size == 64)
                .map(|w| (w.peer, w.cpu_us))
                .collect(),
        ),
    ];
    let peers: Vec<PeerKind> = http.iter().map(|h| h.peer).filter(|p| *p != PeerKind::Direct).collect();
    bar_chart(
        "Proxy CPU-µs per request / round trip (lower is better)",
        &series,
        &peers,
    )
}

/// The same over TLS: HTTP/2, HTTP/1.1 over TLS, and a wss round trip
/// (the smallest measured size at the most connections).
pub fn tls_svg(r: &CompareResults) -> String {
    let http = tls_http_summary(r);
    let ws: Vec<WsSummary> = ws_summary(r).into_iter().filter(|w| w.tls).collect();
    let key = ws.iter().map(|w| (std::cmp::Reverse(w.connections), w.size)).min();
    let wss_label = key.map_or("wss round trip".to_string(), |(c, size)| {
        format!("wss round trip ({} conns, {size} B)", c.0)
    });
    let per = |proto: TlsHttp| -> Vec<(PeerKind, f64)> {
        http.iter()
            .filter(|t| t.proto == proto)
            .map(|t| (t.peer, t.cpu_us))
            .collect()
    };
    let series: Vec<Series> = vec![
        ("HTTP/2 over TLS", "#4e79a7", per(TlsHttp::H2)),
        ("HTTP/1.1 over TLS", "#59a14f", per(TlsHttp::H1)),
        (
            &wss_label,
            "#f28e2b",
            ws.iter()
                .filter(|w| Some((std::cmp::Reverse(w.connections), w.size)) == key)
                .map(|w| (w.peer, w.cpu_us))
                .collect(),
        ),
    ];
    let mut peers: Vec<PeerKind> = Vec::new();
    for t in &http {
        if !peers.contains(&t.peer) {
            peers.push(t.peer);
        }
    }
    bar_chart(
        "Proxy CPU-µs per request / round trip over TLS (lower is better)",
        &series,
        &peers,
    )
}

/// The peers' bars, one group per peer ([`crate::chart::bars`]).
fn bar_chart(title: &str, series: &[Series], peers: &[PeerKind]) -> String {
    crate::chart::bars(&crate::chart::BarChart {
        title,
        groups: peers.iter().map(|p| p.as_str().to_string()).collect(),
        series: series
            .iter()
            .map(|(name, color, vals)| {
                let per_peer = peers
                    .iter()
                    .map(|p| vals.iter().find(|(q, v)| q == p && v.is_finite()).map(|(_, v)| *v))
                    .collect();
                (*name, *color, per_peer)
            })
            .collect(),
        min_max: 1.0,
        decimals: 1,
        references: Vec::new(),
        grid: 4,
    })
}

/// Writes compare.md, compare.json, compare_cpu.svg (plain stages) and
/// compare_tls_cpu.svg (TLS stages), each chart only when its stages ran.
pub fn write(dir: &Path, r: &CompareResults) -> Result<(), CompareError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("compare.md"), markdown(r))?;
    std::fs::write(dir.join("compare.json"), serde_json::to_string_pretty(r)?)?;
    if !r.http.is_empty() {
        std::fs::write(dir.join("compare_cpu.svg"), svg(r))?;
    }
    if !r.tls_http.is_empty() {
        std::fs::write(dir.join("compare_tls_cpu.svg"), tls_svg(r))?;
    }
    Ok(())
}
