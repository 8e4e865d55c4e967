//! The admin status page at `/`: what an on-call engineer wants to see at a
//! glance, as one server-rendered HTML page with inline CSS and SVG (no
//! external assets, no JavaScript).
//!
//! Where it sits: [`crate::admin`] gathers a [`StatusModel`] from the live
//! state (table, sync status, balancer view, health, recent forwards) and
//! [`render`] turns it into HTML; `render` is a pure function, so the page
//! is tested without a process and the browser test only checks what a
//! person sees. Recent forwards come from the request path's
//! [`crate::http::RecentForwards`].
//!
//! Start at [`render`].

use std::fmt::Write;

pub use crate::http::ForwardEvent;

/// One VM as the balancer sees it.
#[derive(Debug, Clone)]
pub struct VmModel {
    pub id: String,
    pub usability: &'static str,
    pub member: bool,
    pub containers: u32,
    /// Size units it holds, units reserved now, and why it takes no new
    /// repl (None: it is a candidate).
    pub capacity: u32,
    pub reserved: u64,
    pub not_candidate: Option<&'static str>,
    pub cpu: f32,
}

#[derive(Debug, Clone)]
pub struct ClusterModel {
    pub name: String,
    pub state: String,
    pub weight: u32,
    /// Share of this region's ring, 0.0 to 1.0.
    pub ring_share: f64,
    pub mode: &'static str,
    pub usable: u32,
    pub active: u32,
    pub ejected: u32,
    /// This edge's subset (VM ids).
    pub subset: Vec<String>,
    pub vms: Vec<VmModel>,
}

/// Everything the page shows.
#[derive(Debug, Clone, Default)]
pub struct StatusModel {
    pub region: String,
    pub instance: String,
    pub ready: bool,
    pub version: u64,
    /// Seconds since the table in use was published (None: nothing yet).
    pub age_s: Option<f64>,
    /// `file`, `postgres` or `redis`.
    pub source: String,
    pub connected: bool,
    pub lag_s: f64,
    /// Sync errors by reason (only the non-zero ones).
    pub sync_errors: Vec<(&'static str, u64)>,
    pub repls: usize,
    pub vms: usize,
    pub custom_domains: usize,
    pub tombstones: usize,
    /// Other regions' app names in the world directory.
    pub directory: usize,
    /// The last-known-good file (None: none configured).
    pub last_known_good: Option<LastKnownGoodModel>,
    pub policy: String,
    pub clusters: Vec<ClusterModel>,
    pub forwards: Vec<ForwardEvent>,
    pub tombstone_hits: u64,
    pub now_ms: u64,
    /// The last config reload (None: running the config it started with).
    pub last_reload: Option<crate::admin::reload::ReloadReport>,
    /// Requests, errors, p99 and tunnels over the last minute.
    pub traffic: crate::admin::traffic::TrafficModel,
}

/// What the last-known-good file holds, and whether the edge serves it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LastKnownGoodModel {
    pub path: String,
    /// Version in the file this edge last wrote (0: none yet).
    pub written_version: u64,
    /// Seconds since that write (None: none yet).
    pub written_age_s: Option<f64>,
    /// Serving the table read from the file at start (the store is away).
    pub serving_from_file: bool,
    /// The version and age (seconds since it was written) of the file the
    /// edge started from, when it did.
    pub started_from_version: Option<u64>,
    pub started_from_age_s: Option<f64>,
}

/// The last-known-good card: what the file holds, red-ish while the edge
/// serves it because the store is away.
fn last_known_good_card(m: &StatusModel) -> String {
    let Some(l) = &m.last_known_good else {
        return String::new();
    };
    let secs = |s: Option<f64>| s.map(|s| ago((s * 1000.0) as u64, 0)).unwrap_or_default();
    let (class, state, detail) = if l.serving_from_file {
        (
            "warn",
            format!("serving file v{}", l.started_from_version.unwrap_or(0)),
            format!("written {} · the store is away; {}", secs(l.started_from_age_s), l.path),
        )
    } else if l.written_version > 0 {
        (
            "ok",
            format!("v{} on disk", l.written_version),
            format!("written {} · {}", secs(l.written_age_s), l.path),
        )
    } else {
        ("ok", "not written yet".to_string(), l.path.clone())
    };
    format!(
        "<div class=\"card\">last-known-good<b class=\"{class}\" id=\"lkg\">{}</b>{}</div>",
        html_escape(&state),
        html_escape(&detail)
    )
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1c2333;background:#f7f8fa}\
h1{margin:.2rem 0}h2{margin-top:1.6rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccd;padding:.25rem .55rem;text-align:left}\
.ok{color:#176f2c;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#9a5b00;font-weight:600}\
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#fff;border:1px solid #ccd;padding:.6rem .9rem;min-width:11rem}\
.card b{display:block;font-size:1.4rem}.cluster{background:#fff;border:1px solid #ccd;padding:.6rem .9rem;margin:.8rem 0}\
svg text{font-size:10px;fill:#1c2333}";

/// Buckets `values` into `n` equal bins over `0..=max` (at least 1).
fn histogram(values: &[f64], max: f64, n: usize) -> Vec<usize> {
    let mut bins = vec![0; n];
    let max = if max > 0.0 { max } else { 1.0 };
    for &v in values {
        let i = ((v / max) * n as f64).floor() as usize;
        bins[i.min(n - 1)] += 1;
    }
    bins
}

/// A small SVG bar chart of a histogram; every bar carries a `<title>`.
fn svg_histogram(title: &str, unit: &str, values: &[f64], max: f64) -> String {
    const N: usize = 10;
    const W: f64 = 260.0;
    const H: f64 = 90.0;
    let bins = histogram(values, max, N);
    let top = bins.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = W / N as f64;
    let max = if max > 0.0 { max } else { 1.0 };
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg role=\"img\" aria-label=\"{t}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\
<title>{t}</title><text x=\"0\" y=\"10\">{t}</text>",
        t = html_escape(title),
        w = W,
        h = H + 28.0
    );
    for (i, &c) in bins.iter().enumerate() {
        let bh = (c as f64 / top) * (H - 14.0);
        let (lo, hi) = (max * i as f64 / N as f64, max * (i + 1) as f64 / N as f64);
        let _ = write!(
            s,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"#3d6fd8\" stroke=\"#fff\">\
<title>{c} VMs with {lo:.0}–{hi:.0}{unit}</title></rect>",
            x = i as f64 * bw,
            y = 14.0 + (H - 14.0) - bh,
            bw = bw,
        );
    }
    let _ = write!(
        s,
        "<line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#889\"/>\
<text x=\"0\" y=\"{ly}\">0</text><text x=\"{W}\" y=\"{ly}\" text-anchor=\"end\">{max:.0}{unit}</text></svg>",
        ly = H + 12.0
    );
    s
}

fn ago(now_ms: u64, at_ms: u64) -> String {
    let s = now_ms.saturating_sub(at_ms) as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.0} s ago")
    } else {
        format!("{:.0} min ago", s / 60.0)
    }
}

/// The config card: last reload, a refused file, keys waiting for a restart.
fn config_card(m: &StatusModel) -> String {
    let (class, state, detail) = match &m.last_reload {
        None => ("ok", "as started".to_string(), "no reload since start".to_string()),
        Some(r) if !r.ok => (
            "bad",
            "reload refused".to_string(),
            format!(
                "{} ({}): {}; the previous config keeps running",
                ago(m.now_ms, r.at_ms),
                r.trigger,
                r.error.as_deref().unwrap_or("")
            ),
        ),
        Some(r) if !r.needs_restart.is_empty() => (
            "warn",
            "restart pending".to_string(),
            format!(
                "reloaded {} ({}); waiting for a restart: {}",
                ago(m.now_ms, r.at_ms),
                r.trigger,
                r.needs_restart.join(", ")
            ),
        ),
        Some(r) => (
            "ok",
            "reloaded".to_string(),
            format!(
                "{} ({}), {} keys changed",
                ago(m.now_ms, r.at_ms),
                r.trigger,
                r.changed.len()
            ),
        ),
    };
    format!(
        "<div class=\"card\">config<b class=\"{class}\" id=\"config\">{state}</b>{}</div>",
        html_escape(&detail)
    )
}

/// The whole page.
pub fn render(m: &StatusModel) -> String {
    let mut h = String::with_capacity(8192);
    let region = html_escape(&m.region);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>edgeplane {region} · {inst}</title>\
<style>{STYLE}</style></head><body><h1>edgeplane · {region} · {inst}</h1>",
        inst = html_escape(&m.instance)
    );
    summary_cards(&mut h, m);
    let _ = write!(h, "<h2>Clusters of {region}</h2>");
    if m.clusters.is_empty() {
        h.push_str("<p>No clusters loaded.</p>");
    }
    for c in &m.clusters {
        cluster_section(&mut h, c);
    }
    recent_forwards(&mut h, m);
    h.push_str(
        "<p><a href=\"/metrics\">metrics</a> · <a href=\"/balancer\">balancer</a> · \
<a href=\"/debug/snapshot\">snapshot</a> · <a href=\"/readyz\">readyz</a></p></body></html>\n",
    );
    h
}

/// State, snapshot, sync, placement, last-known-good, policy and config cards.
fn summary_cards(h: &mut String, m: &StatusModel) {
    let (ready_class, ready) = if m.ready { ("ok", "ready") } else { ("bad", "not ready") };
    let age = m
        .age_s
        .map(|a| format!("{a:.1} s"))
        .unwrap_or_else(|| "never loaded".into());
    let (sync_class, sync) = match (m.source.as_str(), m.connected) {
        ("file", _) => ("ok", "file snapshot".to_string()),
        (src, true) => ("ok", format!("{src}: connected")),
        (src, false) => ("bad", format!("{src}: disconnected")),
    };
    let errors = if m.sync_errors.is_empty() {
        "none".to_string()
    } else {
        m.sync_errors
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        h,
        "<div class=\"cards\">\
<div class=\"card\">state<b class=\"{ready_class}\" id=\"ready\">{ready}</b></div>\
<div class=\"card\">snapshot version<b id=\"version\">{ver}</b>age {age}</div>\
<div class=\"card\">sync<b class=\"{sync_class}\" id=\"sync\">{sync}</b>lag {lag:.3} s · errors {errors}</div>\
<div class=\"card\">placement<b>{repls} repls</b>{vms} VMs · {doms} custom domains · {tombs} tombstones · \
<span id=\"directory\">{dir}</span> apps of other regions</div>{lkg}\
<div class=\"card\">balancer policy<b id=\"policy\">{policy}</b></div>{traffic}{config}</div>",
        ver = m.version,
        lag = m.lag_s,
        repls = m.repls,
        vms = m.vms,
        doms = m.custom_domains,
        tombs = m.tombstones,
        dir = m.directory,
        lkg = last_known_good_card(m),
        policy = html_escape(&m.policy),
        traffic = traffic_card(&m.traffic),
        config = config_card(m),
    );
}

/// Requests, error rates, p99 and tunnels, over the sampler's window.
fn traffic_card(t: &crate::admin::traffic::TrafficModel) -> String {
    let window = if t.window_s > 0.0 {
        format!("last {:.0} s", t.window_s)
    } else {
        "since this page last loaded: reload for rates".into()
    };
    let p99 = t.p99_ms.map_or("–".to_string(), |p| {
        if p.is_finite() {
            format!("≤ {p} ms")
        } else {
            "above the largest bucket".into()
        }
    });
    let err_class = if t.status_5xx_per_s > 0.0 { "bad" } else { "ok" };
    format!(
        "<div class=\"card\">traffic ({window})<b id=\"rps\">{rps:.1} req/s</b>\
4xx {s4:.1}/s · <span class=\"{err_class}\" id=\"rate5xx\">5xx {s5:.1}/s</span> · p99 <span id=\"p99\">{p99}</span> · \
<span id=\"tunnels\">{tunnels}</span> tunnels open</div>",
        rps = t.requests_per_s,
        s4 = t.status_4xx_per_s,
        s5 = t.status_5xx_per_s,
        tunnels = t.tunnels,
    )
}

/// One cluster: its ring share, usable VMs, histograms and VM table.
fn cluster_section(h: &mut String, c: &ClusterModel) {
    let mode_class = if c.mode == "normal" { "ok" } else { "warn" };
    let _ = write!(
        h,
        "<section class=\"cluster\" id=\"cluster-{id}\"><h3>{name}</h3>\
<p>{state}, weight {w}, <b>{share:.1}%</b> of the ring · usable VMs <b class=\"usable\">{usable}/{total}</b> \
({active} active, {ejected} ejected) · mode <span class=\"{mode_class}\">{mode}</span></p>\
<p>This edge's subset: {subset}</p><div class=\"cards\">{hc}{hcpu}</div>\
<table><tr><th>VM</th><th>usability</th><th>in subset</th><th>containers</th><th>units reserved / capacity</th><th>not a candidate because</th><th>CPU</th></tr>",
        id = html_escape(&c.name),
        name = html_escape(&c.name),
        state = html_escape(&c.state),
        w = c.weight,
        share = c.ring_share * 100.0,
        usable = c.usable,
        total = c.vms.len(),
        active = c.active,
        ejected = c.ejected,
        mode = c.mode,
        subset = if c.subset.is_empty() {
            "(none)".to_string()
        } else {
            html_escape(&c.subset.join(", "))
        },
        hc = svg_histogram(
            &format!("containers per VM in {}", c.name),
            "",
            &c.vms.iter().map(|v| v.containers as f64).collect::<Vec<_>>(),
            c.vms.iter().map(|v| v.containers).max().unwrap_or(0) as f64 + 1.0,
        ),
        hcpu = svg_histogram(
            &format!("CPU per VM in {}", c.name),
            "%",
            &c.vms.iter().map(|v| v.cpu as f64 * 100.0).collect::<Vec<_>>(),
            100.0,
        ),
    );
    for v in &c.vms {
        let class = match v.usability {
            "usable" => "ok",
            // No metrics address: placed on without health, by design.
            "unmonitored" => "",
            "stale" | "ejected" => "warn",
            _ => "bad",
        };
        let _ = write!(
            h,
            "<tr><td>{id}</td><td class=\"{class}\">{u}</td><td>{m}</td><td>{c}</td>\
<td class=\"units\">{r} / {cap}</td><td class=\"why\">{why}</td><td>{cpu:.0}%</td></tr>",
            id = html_escape(&v.id),
            u = v.usability,
            m = if v.member { "yes" } else { "" },
            c = v.containers,
            r = v.reserved,
            cap = v.capacity,
            why = v.not_candidate.unwrap_or(""),
            cpu = v.cpu * 100.0,
        );
    }
    h.push_str("</table></section>");
}

/// The recent-forwards ring and the tombstone-hit count.
fn recent_forwards(h: &mut String, m: &StatusModel) {
    let _ = write!(
        h,
        "<h2>Recent forwards</h2><p>Tombstone hits since start: <b id=\"tombstone-hits\">{}</b></p>",
        m.tombstone_hits
    );
    if m.forwards.is_empty() {
        h.push_str("<p id=\"forwards\">No forwards yet.</p>");
    } else {
        h.push_str("<table id=\"forwards\"><tr><th>when</th><th>host</th><th>to region</th><th>why</th></tr>");
        for f in &m.forwards {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                ago(m.now_ms, f.at_ms),
                html_escape(&f.host),
                html_escape(&f.to_region),
                f.reason
            );
        }
        h.push_str("</table>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> StatusModel {
        StatusModel {
            region: "us-east1".into(),
            instance: "use1-edge-1".into(),
            ready: true,
            version: 42,
            age_s: Some(3.5),
            source: "postgres".into(),
            connected: false,
            sync_errors: vec![("connect", 3)],
            repls: 3,
            policy: "least-loaded".into(),
            clusters: vec![ClusterModel {
                name: "use1-a".into(),
                state: "Active".into(),
                weight: 100,
                ring_share: 0.625,
                mode: "normal",
                usable: 1,
                active: 2,
                ejected: 0,
                subset: vec!["vm-1".into()],
                vms: vec![
                    VmModel {
                        id: "vm-1".into(),
                        usability: "usable",
                        member: true,
                        containers: 3,
                        capacity: 100,
                        reserved: 3,
                        not_candidate: None,
                        cpu: 0.25,
                    },
                    VmModel {
                        id: "<vm-2>".into(),
                        usability: "stale",
                        member: false,
                        containers: 9,
                        capacity: 400,
                        reserved: 400,
                        not_candidate: Some("stale"),
                        cpu: 0.95,
                    },
                ],
            }],
            forwards: vec![ForwardEvent {
                at_ms: 1_000,
                host: "moved.repl.co".into(),
                to_region: "ap-south1".into(),
                reason: "tombstone",
            }],
            tombstone_hits: 1,
            now_ms: 6_000,
            last_reload: None,
            ..Default::default()
        }
    }

    #[test]
    fn page_shows_state_clusters_histograms_and_forwards() {
        let p = render(&model());
        assert!(p.contains("edgeplane · us-east1 · use1-edge-1"));
        assert!(p.contains("<b id=\"version\">42</b>"));
        assert!(p.contains("postgres: disconnected") && p.contains("connect 3"));
        assert!(p.contains("<b>62.5%</b> of the ring"));
        assert!(p.contains("usable VMs <b class=\"usable\">1/2</b>"));
        assert!(p.contains("&lt;vm-2&gt;") && !p.contains("<vm-2>"), "escaped");
        assert!(
            p.contains("<td class=\"units\">400 / 400</td><td class=\"why\">stale</td>"),
            "capacity and why not"
        );
        assert_eq!(p.matches("<svg").count(), 2, "containers and CPU histograms");
        // CPU 25 % falls in the 20-30 % bin, 95 % in the last one.
        assert!(
            p.contains("1 VMs with 20–30%") && p.contains("1 VMs with 90–100%"),
            "{p}"
        );
        assert!(p.contains("<td>5 s ago</td><td>moved.repl.co</td><td>ap-south1</td><td>tombstone</td>"));
        assert!(!p.contains("<script"), "works without JavaScript");
        assert!(
            !p.contains("http://") || p.matches("http://").count() == p.matches("http://www.w3.org/2000/svg").count(),
            "no external assets"
        );
    }

    #[test]
    fn traffic_card_shows_rates_p99_and_tunnels() {
        let mut m = model();
        assert!(render(&m).contains("reload for rates"), "one sample: no rates yet");
        m.traffic = crate::admin::traffic::TrafficModel {
            window_s: 60.0,
            requests_per_s: 1234.5,
            status_4xx_per_s: 2.0,
            status_5xx_per_s: 0.5,
            p99_ms: Some(25.0),
            tunnels: 17,
        };
        let p = render(&m);
        assert!(p.contains("traffic (last 60 s)<b id=\"rps\">1234.5 req/s</b>"), "{p}");
        assert!(p.contains("<span class=\"bad\" id=\"rate5xx\">5xx 0.5/s</span>"));
        assert!(p.contains("p99 <span id=\"p99\">≤ 25 ms</span>"));
        assert!(p.contains("<span id=\"tunnels\">17</span> tunnels open"));
    }

    #[test]
    fn last_known_good_card_says_what_is_on_disk_and_when_it_is_served() {
        let mut m = model();
        assert!(!render(&m).contains("id=\"lkg\""), "no card without a file");
        m.last_known_good = Some(LastKnownGoodModel {
            path: "/var/lib/edgeplane/lkg.json".into(),
            written_version: 42,
            written_age_s: Some(3.0),
            ..Default::default()
        });
        assert!(render(&m).contains("id=\"lkg\">v42 on disk</b>written 3 s ago"));
        m.last_known_good = Some(LastKnownGoodModel {
            path: "/var/lib/edgeplane/lkg.json".into(),
            serving_from_file: true,
            started_from_version: Some(40),
            started_from_age_s: Some(125.0),
            ..Default::default()
        });
        let p = render(&m);
        assert!(
            p.contains("class=\"warn\" id=\"lkg\">serving file v40</b>written 2 min ago"),
            "{p}"
        );
        m.directory = 9_180_000;
        assert!(render(&m).contains("<span id=\"directory\">9180000</span> apps of other regions"));
    }

    #[test]
    fn config_card_says_whether_the_file_was_refused_or_waits_for_a_restart() {
        let report = |ok: bool, restart: Vec<&'static str>| crate::admin::reload::ReloadReport {
            at_ms: 3_000,
            trigger: "sighup",
            ok,
            error: (!ok).then(|| "/etc/edgeplane.toml:7: limits.max_hops: must be between 1 and 8".into()),
            changed: vec!["limits.max_hops 2 -> 3".into()],
            needs_restart: restart,
        };
        let card = |r| {
            render(&StatusModel {
                last_reload: r,
                ..model()
            })
        };
        assert!(card(None).contains("id=\"config\">as started</b>"));
        let refused = card(Some(report(false, vec![])));
        assert!(refused.contains(
            "class=\"bad\" id=\"config\">reload refused</b>3 s ago (sighup): /etc/edgeplane.toml:7: limits.max_hops"
        ));
        assert!(refused.contains("the previous config keeps running"));
        let pending = card(Some(report(true, vec!["edge.listen"])));
        assert!(
            pending.contains("class=\"warn\" id=\"config\">restart pending</b>") && pending.contains("edge.listen")
        );
        assert!(card(Some(report(true, vec![]))).contains("id=\"config\">reloaded</b>3 s ago (sighup), 1 keys changed"));
    }

    #[test]
    fn histogram_bins_cover_the_range() {
        assert_eq!(
            histogram(&[0.0, 5.0, 9.99, 10.0], 10.0, 10),
            vec![1, 0, 0, 0, 0, 1, 0, 0, 0, 2]
        );
        assert_eq!(histogram(&[], 0.0, 3), vec![0, 0, 0]);
    }
}
