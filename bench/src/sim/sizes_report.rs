//! The tables and plots of the size-aware simulations
//! (`edgeplane-bench sim --sizes`): the mixed-size comparison with a
//! utilisation histogram per placement, and the hot-user move as CPU over
//! time. Writes `sim_sizes.md`, `sim_sizes.json`,
//! `sim_sizes_utilisation.svg` and `sim_hot_user.svg`.

use std::fmt::Write as _;

use super::report::{histogram_rows_svg, progress_bar};
use super::sizes::{mixed_scenarios, run_hot_user, run_mixed, HotUser, HotUserResult, MixedResult, MixedSizes};
use super::SimOptions;
use crate::chart;

/// The mixed-size table (GitHub markdown).
pub fn mixed_markdown(rows: &[MixedResult]) -> String {
    let mut s = String::from(
        "| placement | utilisation median | p99 | max | p99/median | small VMs median / max | big VMs median / max | VMs past 100 % | starts refused (503) | oversize starts | run time |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let st = r.stats();
        let _ = writeln!(
            s,
            "| {} | {:.0} % | {:.0} % | {:.0} % | {:.2} | {:.0} % / {:.0} % | {:.0} % / {:.0} % | {} | {} | {} | {:.1} s |",
            r.name,
            st.p50 * 100.0,
            st.p99 * 100.0,
            st.max * 100.0,
            r.ratio(),
            r.small.p50 * 100.0,
            r.small.max * 100.0,
            r.big.p50 * 100.0,
            r.big.max * 100.0,
            r.over_capacity_vms,
            r.refused,
            r.oversize_starts,
            r.elapsed_s
        );
    }
    s
}

/// CPU of the hot and spare clusters over the day, the move marked.
pub fn hot_user_svg(r: &HotUserResult, h: &HotUser, hours: f64) -> String {
    let (w, ht, left, top, bottom) = (760.0, 360.0, 60.0, 40.0, 50.0);
    let (pw, ph) = (w - left - 20.0, ht - top - bottom);
    let y_max = r.hot_max.iter().copied().fold(1.2f64, f64::max).min(4.0);
    let x = |t: f64| left + pw * t / hours;
    let y = |v: f64| top + ph * (1.0 - v.min(y_max) / y_max);
    let mut s = chart::open(
        w,
        ht,
        "CPU per VM: the hot user's cluster, the cluster it moved to, the rest",
    );
    for k in 0..=4 {
        let v = y_max * k as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\
<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0} %</text>",
            left + pw,
            left - 6.0,
            y(v) + 4.0,
            v * 100.0,
            yy = y(v),
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{f:.1}\" x2=\"{}\" y2=\"{f:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"2,3\"/>",
        left + pw,
        f = y(1.0)
    );
    for k in 0..=6 {
        let t = hours * k as f64 / 6.0;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0} h</text>",
            x(t),
            top + ph + 16.0
        );
    }
    let mx = x(h.move_at_h);
    let _ = write!(
        s,
        "<line x1=\"{mx:.1}\" y1=\"{top}\" x2=\"{mx:.1}\" y2=\"{:.1}\" stroke=\"#555\" stroke-dasharray=\"4,3\"/>\
<text x=\"{:.1}\" y=\"{:.1}\">move-user</text>",
        top + ph,
        mx + 4.0,
        top + 12.0
    );
    let series: [(&str, &Vec<f64>, &str); 4] = [
        ("hot cluster, max", &r.hot_max, "#c0392b"),
        ("hot cluster, p99", &r.hot_p99, "#e67e22"),
        ("spare cluster (moved to), p99", &r.spare_p99, "#2e86c1"),
        ("other clusters, p99", &r.rest_p99, "#7f8c8d"),
    ];
    for (_, values, color) in &series {
        chart::polyline(
            &mut s,
            r.t_h.iter().zip(values.iter()).map(|(&t, &v)| (x(t), y(v))),
            color,
        );
    }
    let names: Vec<(&str, &str)> = series.iter().map(|(name, _, color)| (*name, *color)).collect();
    chart::legend(&mut s, &names, left + 10.0, ht - 13.0, 180.0);
    chart::close(s)
}

/// Hot-cluster figures as the move starts, five minutes and an hour after.
fn hot_user_markdown(r: &HotUserResult, h: &HotUser) -> String {
    let at = |t: f64| r.t_h.iter().position(|&x| x >= t - 1e-9).unwrap_or(r.t_h.len() - 1);
    let mut s = String::from(
        "| when | hot cluster p99 CPU | max | VMs past 100 % CPU | other clusters p99 CPU | hot / others (p99) | spare cluster p99 CPU |\n\
|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (what, t) in [
        ("as the move starts", h.move_at_h),
        ("5 minutes after", h.move_at_h + 5.0 / 60.0),
        ("1 hour after", h.move_at_h + 1.0),
    ] {
        let i = at(t);
        let _ = writeln!(
            s,
            "| {what} ({:.2} h) | {:.0} % | {:.0} % | {} | {:.0} % | {:.2} | {:.0} % |",
            r.t_h[i],
            r.hot_p99[i] * 100.0,
            r.hot_max[i] * 100.0,
            r.hot_over[i],
            r.rest_p99[i] * 100.0,
            r.hot_p99[i] / r.rest_p99[i].max(1e-9),
            r.spare_p99[i] * 100.0,
        );
    }
    s
}

/// Runs the mixed-size scenarios and the hot-user day with progress bars,
/// prints the tables, and (with `out`) writes the files.
pub fn run_sizes(o: &SimOptions, out: Option<&std::path::Path>, command: &str) -> std::io::Result<Vec<MixedResult>> {
    let m = MixedSizes::default();
    let mut rows = Vec::new();
    for sc in mixed_scenarios() {
        let r = run_mixed(o, &m, &sc, &mut |d| progress_bar(&sc.name, d));
        eprintln!(" {:.1} s", r.elapsed_s);
        rows.push(r);
    }
    let h = HotUser::default();
    let hot = run_hot_user(o, &h, &mut |d| progress_bar("move one hot user", d));
    eprintln!(" {:.1} s", hot.elapsed_s);
    let table = mixed_markdown(&rows);
    let hot_table = hot_user_markdown(&hot, &h);
    println!("{table}\n{hot_table}");
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let hist: Vec<(&str, Vec<f64>)> = rows.iter().map(|r| (r.name.as_str(), r.utilisation.clone())).collect();
        std::fs::write(
            dir.join("sim_sizes_utilisation.svg"),
            histogram_rows_svg(
                "Per-VM utilisation (reserved units / capacity) at the end of the surge",
                "utilisation (red: at or above the right edge)",
                &hist,
                2.0,
                40,
            ),
        )?;
        std::fs::write(dir.join("sim_hot_user.svg"), hot_user_svg(&hot, &h, o.hours))?;
        let json = serde_json::json!({
            "options": format!("{o:?}"), "sizes": format!("{m:?}"), "hot_user": format!("{h:?}"),
            "command": command, "mixed": rows.iter().map(|r| serde_json::json!({
                "name": r.name, "starts": r.starts, "oversize_starts": r.oversize_starts, "refused": r.refused,
                "utilisation": r.stats(), "small": r.small, "big": r.big,
                "p99_over_median": r.ratio(), "over_capacity_vms": r.over_capacity_vms,
            })).collect::<Vec<_>>(),
            "hot_user_run": hot,
        });
        std::fs::write(dir.join("sim_sizes.json"), serde_json::to_vec_pretty(&json).unwrap())?;
        let md = format!(
            "# Size-aware placement simulation (issue 21)\n\nCommand: `{command}`\n\n\
## Machines of two sizes in one cluster\n\n\
The day of [sim.md](sim.md) ({} starts, {} edges, {} clusters x {} VMs, surge x{} from hour {} for {} h, \
scrapes every {} s reaching the edges {} s later), on a fleet where every cluster has as many \
{}-unit machines as {}-unit ones (CPU in proportion: a 100-unit machine has the 12,000 millicores \
of sim.md's VMs); {:.0} % of starts need {}-{} units, the rest 1. Read at the end of \
the surge: utilisation = size units reserved on a VM / its capacity. Size-aware rows run the proxy's \
balancer as it is now; \"size-blind\" runs the same code the way it worked before sizes (every VM \
alike, every repl 1, container counts only); the cloud LB model fills clusters in order and \
round-robins inside.\n\n{table}\n![utilisation histogram](sim_sizes_utilisation.svg)\n\n\
## Moving one hot user\n\n{:.1} % of starts belong to one user whose repls cost {:.0} millicores each \
(the mean repl costs about 72) and are pinned to one cluster; at hour {} the user is moved \
(`placectl move-user --to`) to a spare cluster that is not on the ring: running containers restart \
there, new starts follow. {} containers moved. Least-loaded, subset 16.\n\n{hot_table}\n\
![hot user](sim_hot_user.svg)\n",
            o.starts,
            o.edges,
            o.clusters,
            o.vms_per_cluster,
            o.surge_factor,
            o.surge_start_h,
            o.surge_hours,
            o.scrape_interval_s,
            o.scrape_delay_s,
            m.small_capacity,
            m.big_capacity,
            m.oversize_share * 100.0,
            m.oversize_min,
            m.oversize_max,
            h.share * 100.0,
            h.cost_mc,
            h.move_at_h,
            hot.moved,
        );
        std::fs::write(dir.join("sim_sizes.md"), md)?;
    }
    Ok(rows)
}
