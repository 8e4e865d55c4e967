//! The SVG charts of the committed results, drawn in one place: the frame
//! every chart shares ([`open`], [`legend`], [`esc`]), grouped bars
//! ([`bars`]: the comparison's CPU per request, the ring's keys moved) and
//! polylines ([`polyline`]: the sync's latency CDF, the hot-user move).
//! Plain strings, no plotting crate: a chart is a few dozen elements, and
//! the status page draws its own two histograms without this crate.

use std::fmt::Write as _;

/// Escapes text for SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An SVG document of `w` × `h` with a white background and a centred title.
pub fn open(w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
<text x=\"{}\" y=\"22\" font-size=\"14\" text-anchor=\"middle\">{}</text>\n",
        w / 2.0,
        esc(title)
    )
}

/// Ends a document begun by [`open`].
pub fn close(mut s: String) -> String {
    s.push_str("</svg>\n");
    s
}

/// A legend row at `y`: a swatch and a name per (name, colour), `step` apart.
pub fn legend(s: &mut String, items: &[(&str, &str)], x0: f64, y: f64, step: f64) {
    for (i, (name, color)) in items.iter().enumerate() {
        let x = x0 + i as f64 * step;
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{y:.1}\">{}</text>",
            y - 9.0,
            x + 14.0,
            esc(name)
        );
    }
}

/// A polyline through `points` (already in pixels).
pub fn polyline(s: &mut String, points: impl Iterator<Item = (f64, f64)>, color: &str) {
    let pts: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>",
        pts.join(" ")
    );
}

/// A horizontal reference line across a bar chart.
pub struct Reference<'a> {
    pub value: f64,
    pub label: &'a str,
    pub color: &'a str,
    pub dashed: bool,
}

/// Grouped bars: one group per label, one bar per series in each group.
pub struct BarChart<'a> {
    pub title: &'a str,
    pub groups: Vec<String>,
    /// (name, colour, one value per group; None: no bar).
    pub series: Vec<(&'a str, &'a str, Vec<Option<f64>>)>,
    /// The y axis reaches at least this.
    pub min_max: f64,
    /// Digits after the point in the bars' labels.
    pub decimals: usize,
    pub references: Vec<Reference<'a>>,
    /// Horizontal grid lines with labels (0: none).
    pub grid: usize,
}

/// Draws `c` (720 × 340).
pub fn bars(c: &BarChart<'_>) -> String {
    let max = c
        .series
        .iter()
        .flat_map(|s| s.2.iter().flatten().copied())
        .filter(|v| v.is_finite())
        .fold(c.min_max, f64::max);
    let (w, h, left, top, bottom) = (720.0, 340.0, 60.0, 40.0, 60.0);
    let group = (w - left - 20.0) / c.groups.len().max(1) as f64;
    let bar = group / (c.series.len() as f64 + 1.0);
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
    let mut s = open(w, h, c.title);
    for t in 0..=c.grid {
        let v = max * t as f64 / c.grid.max(1) as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            w - 20.0,
            left - 6.0,
            y(v) + 4.0,
            yy = y(v)
        );
    }
    for r in &c.references {
        let dash = if r.dashed { " stroke-dasharray=\"4 3\"" } else { "" };
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"{}\"{dash}/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - 20.0,
            r.color,
            left - 6.0,
            y(r.value) + 4.0,
            esc(r.label),
            yy = y(r.value)
        );
    }
    let d = c.decimals;
    for (gi, label) in c.groups.iter().enumerate() {
        let gx = left + gi as f64 * group;
        for (si, (_, color, vals)) in c.series.iter().enumerate() {
            let Some(v) = vals.get(gi).copied().flatten().filter(|v| v.is_finite()) else {
                continue;
            };
            let x = gx + bar * (si as f64 + 0.5);
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.d$}</text>",
                y(v),
                bar * 0.9,
                y(0.0) - y(v),
                x + bar * 0.45,
                y(v) - 3.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + group / 2.0,
            h - bottom + 16.0,
            esc(label)
        );
    }
    let items: Vec<(&str, &str)> = c.series.iter().map(|(n, col, _)| (*n, *col)).collect();
    legend(&mut s, &items, left, h - 15.0, 220.0);
    close(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_chart_has_its_bars_labels_and_references() {
        let c = BarChart {
            title: "CPU <per> request",
            groups: vec!["nginx".into(), "edgeplane".into()],
            series: vec![
                ("plain", "#4e79a7", vec![Some(10.0), Some(12.5)]),
                ("tls", "#f28e2b", vec![None, Some(20.0)]),
            ],
            min_max: 1.0,
            decimals: 1,
            references: vec![Reference {
                value: 15.0,
                label: "target",
                color: "#e15759",
                dashed: true,
            }],
            grid: 4,
        };
        let s = bars(&c);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(
            s.matches("<rect x=").count(),
            3 + 2,
            "three bars and two legend swatches"
        );
        assert!(s.contains(">12.5<") && s.contains(">target<") && s.contains("stroke-dasharray"));
        assert!(s.contains("CPU &lt;per&gt; request"), "the title is escaped");
    }
}
