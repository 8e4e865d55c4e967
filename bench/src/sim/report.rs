//! Summaries, the results table and the SVG histograms of the simulator.
//!
//! Where it sits: [`super::run_scenario`] returns raw per-VM numbers;
//! [`Summary::of`] reduces them (median, p99, max, p99/median of container
//! counts; CPU utilisation percentiles and spread); [`markdown`] renders the
//! table printed and committed; [`histograms_svg`] draws one histogram row
//! per scenario (no plotting dependency: plain SVG text).

use super::ScenarioResult;
use crate::chart::{self, esc};

/// Percentiles of a set of numbers.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Stats {
    pub p10: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
    /// Standard deviation / mean.
    pub cv: f64,
}

impl Stats {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Stats {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        Stats {
            p10: pct(0.10),
            p50: pct(0.50),
            p99: pct(0.99),
            max: *v.last().unwrap(),
            mean,
            cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
        }
    }
}

/// One scenario reduced to what the table shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub name: String,
    pub starts: usize,
    pub containers: Stats,
    pub containers_before: Stats,
    pub cpu: Stats,
    /// VMs above 100 % CPU at the end of the surge.
    pub overloaded_vms: usize,
    pub peak_max_containers: u32,
    pub elapsed_s: f64,
}

impl Summary {
    pub fn of(r: &ScenarioResult) -> Summary {
        Summary {
            name: r.name.clone(),
            starts: r.starts,
            containers: Stats::of(r.containers.iter().map(|&c| c as f64)),
            containers_before: Stats::of(r.containers_before.iter().map(|&c| c as f64)),
            cpu: Stats::of(r.cpu.iter().copied()),
            overloaded_vms: r.cpu.iter().filter(|&&c| c > 1.0).count(),
            peak_max_containers: r.peak_max_containers,
            elapsed_s: r.elapsed_s,
        }
    }

    /// Container-count p99 / median at the end of the surge (infinite
    /// when the median VM is empty).
    pub fn containers_ratio(&self) -> f64 {
        ratio(&self.containers)
    }

    /// The same before the surge (steady state).
    pub fn containers_ratio_before(&self) -> f64 {
        ratio(&self.containers_before)
    }
}

fn ratio(s: &Stats) -> f64 {
    if s.p50 > 0.0 {
        s.p99 / s.p50
    } else {
        f64::INFINITY
    }
}

/// The results table (GitHub markdown).
pub fn markdown(rows: &[Summary]) -> String {
    let mut s = String::from(
        "| placement | p99/median before surge | containers median | p99 | max | p99/median | CPU p10 | CPU median | CPU p99 | CPU max | CPU stddev/mean | VMs > 100 % CPU | peak max containers | run time |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} % | {:.0} % | {:.0} % | {:.0} % | {:.2} | {} | {} | {:.1} s |\n",
            r.name,
            r.containers_ratio_before(),
            r.containers.p50,
            r.containers.p99,
            r.containers.max,
            r.containers_ratio(),
            r.cpu.p10 * 100.0,
            r.cpu.p50 * 100.0,
            r.cpu.p99 * 100.0,
            r.cpu.max * 100.0,
            r.cpu.cv,
            r.overloaded_vms,
            r.peak_max_containers,
            r.elapsed_s
        ));
    }
    s
}

/// One histogram per scenario, stacked, sharing the x axis: `values(r)`
/// per VM, binned over `[0, x_max]` in `bins` bins (values above x_max
/// land in the last bin, marked "+").
pub fn histograms_svg(
    title: &str,
    x_label: &str,
    results: &[ScenarioResult],
    values: impl Fn(&ScenarioResult) -> Vec<f64>,
    x_max: f64,
    bins: usize,
) -> String {
    let rows: Vec<(&str, Vec<f64>)> = results.iter().map(|r| (r.name.as_str(), values(r))).collect();
    histogram_rows_svg(title, x_label, &rows, x_max, bins)
}

/// [`histograms_svg`] over named rows of values.
pub fn histogram_rows_svg(title: &str, x_label: &str, results: &[(&str, Vec<f64>)], x_max: f64, bins: usize) -> String {
    let (w, row_h, left, top) = (760.0, 90.0, 250.0, 40.0);
    let plot_w = w - left - 20.0;
    let h = top + row_h * results.len() as f64 + 40.0;
    let mut s = chart::open(w, h, title);
    for (row, (name, vals)) in results.iter().enumerate() {
        let mut counts = vec![0usize; bins];
        for v in vals.iter() {
            let b = ((v / x_max) * bins as f64).floor().clamp(0.0, (bins - 1) as f64) as usize;
            counts[b] += 1;
        }
        let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
        let y0 = top + row_h * (row as f64 + 1.0) - 10.0;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
<line x1=\"{left}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\" stroke=\"#999\"/>",
            left - 8.0,
            y0 - row_h / 2.0 + 10.0,
            esc(name),
            left + plot_w
        ));
        let bw = plot_w / bins as f64;
        for (i, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let bh = (row_h - 20.0) * c as f64 / peak;
            let over = i == bins - 1 && vals.iter().any(|&v| v >= x_max);
            s.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} VMs</title></rect>",
                left + i as f64 * bw,
                y0 - bh,
                (bw - 1.0).max(0.5),
                bh,
                if over { "#c0392b" } else { "#2e86c1" },
                c
            ));
        }
    }
    let axis_y = top + row_h * results.len() as f64;
    for k in 0..=4 {
        let x = left + plot_w * k as f64 / 4.0;
        let label = x_max * k as f64 / 4.0;
        s.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}{}</text>",
            axis_y + 14.0,
            if x_max <= 4.0 {
                format!("{:.0} %", label * 100.0)
            } else {
                format!("{label:.0}")
            },
            if k == 4 { "+" } else { "" }
        ));
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        left + plot_w / 2.0,
        axis_y + 32.0,
        esc(x_label)
    ));
    chart::close(s)
}

/// Draws a progress bar on stderr: `sim [#####-----]  50% name`.
pub(crate) fn progress_bar(name: &str, done: f64) {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    let pct = (done * 100.0) as u64;
    if LAST.swap(pct, Ordering::Relaxed) == pct {
        return;
    }
    let filled = (done * 30.0).round() as usize;
    eprint!(
        "\rsim [{}{}] {:>3.0}% {name:<44}",
        "#".repeat(filled),
        "-".repeat(30 - filled.min(30)),
        done * 100.0
    );
    let _ = std::io::stderr().flush();
}

/// Runs every scenario with a progress bar, prints the table, and (with
/// `out`) writes `sim.md`, `sim.json`, `sim_cpu.svg` and `sim_containers.svg`.
pub fn run_all(
    o: &super::SimOptions,
    scenarios: &[super::Scenario],
    out: Option<&std::path::Path>,
    command: &str,
) -> std::io::Result<Vec<Summary>> {
    let mut results = Vec::new();
    for sc in scenarios {
        let r = super::run_scenario(o, sc, &mut |d| progress_bar(&sc.name, d));
        eprintln!(" {:.1} s", r.elapsed_s);
        results.push(r);
    }
    let rows: Vec<Summary> = results.iter().map(Summary::of).collect();
    let table = markdown(&rows);
    println!("{table}");
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let cmax = rows
            .iter()
            .map(|r| r.containers.max)
            .fold(1.0, f64::max)
            .min(rows[0].containers.p50 * 4.0);
        std::fs::write(
            dir.join("sim_cpu.svg"),
            histograms_svg(
                "Per-VM CPU utilisation at the end of the surge",
                "CPU utilisation (red: at or above the right edge)",
                &results,
                |r| r.cpu.clone(),
                2.0,
                40,
            ),
        )?;
        std::fs::write(
            dir.join("sim_containers.svg"),
            histograms_svg(
                "Containers per VM at the end of the surge",
                "containers",
                &results,
                |r| r.containers.iter().map(|&c| c as f64).collect(),
                cmax.max(4.0),
                40,
            ),
        )?;
        let json = serde_json::json!({"options": format!("{o:?}"), "command": command, "results": rows});
        std::fs::write(dir.join("sim.json"), serde_json::to_vec_pretty(&json).unwrap())?;
        let md = format!(
            "# Placement simulation\n\nCommand: `{command}`\n\nWorkload: {} repl starts over {} h through {} edges into {} clusters x {} VMs; \
surge x{} from hour {} for {} h; Pareto lifetimes (min {} s, alpha {}); CPU cost log-uniform {}..{} millicores \
(six orders of magnitude) on {}-millicore VMs; scrapes every {} s reaching the edges {} s later. \
Figures are read at the end of the surge. Every edgeplane row runs `edgeplane_core::balancer` \
(the proxy's own code); the cloud LB row is a model (fill clusters in order up to {} starts/s per VM, \
spill over, round-robin inside; no app knowledge).\n\n{table}\n\
![CPU histogram](sim_cpu.svg)\n\n![containers histogram](sim_containers.svg)\n",
            o.starts,
            o.hours,
            o.edges,
            o.clusters,
            o.vms_per_cluster,
            o.surge_factor,
            o.surge_start_h,
            o.surge_hours,
            o.lifetime_min_s,
            o.lifetime_alpha,
            o.cost_min_mc,
            o.cost_max_mc,
            o.vm_capacity_mc,
            o.scrape_interval_s,
            o.scrape_delay_s,
            o.lb_rate_per_vm,
        );
        std::fs::write(dir.join("sim.md"), md)?;
    }
    Ok(rows)
}
