//! `edgeplane-bench ring`: how evenly the consistent-hash ring
//! ([`edgeplane_placement::ring`]) spreads repls over a region's clusters,
//! and how many repls move when a cluster is added or drained — the
//! figures docs/contract.md §3 relies on and the project had not measured.
//!
//! For each cluster count (10, 50, 200 by default), with equal weights and
//! with mixed weights (every third cluster 200, every third 50, the rest
//! 100: the seeds' "slightly different hardware in each cluster"):
//! - share: the fraction of `keys` repl ids each cluster owns, divided by
//!   the fraction its weight entitles it to; max/mean and min/mean;
//! - add: one more cluster (weight 100): fraction of keys whose owner
//!   changed, against the ideal (the new cluster's weight share), and how
//!   many of them moved anywhere but to the new cluster (must be 0);
//! - drain: one cluster removed: fraction moved, against its own share
//!   (the ideal), and how many moved that it did not own (must be 0).
//!
//! Pure and deterministic (keys are `repl-<i>`); results in
//! bench/results/ring.{md,json} and ring_moves.svg.

use std::fmt::Write as _;
use std::path::Path;

use edgeplane_placement::ring::{key_hash, Member, Ring};
use serde::Serialize;

/// Figures at one cluster count and one weighting.
#[derive(Debug, Clone, Serialize)]
pub struct RingFigures {
    pub clusters: usize,
    pub weighted: bool,
    pub keys: usize,
    /// Max over clusters of (key share / weight share).
    pub share_max_over_mean: f64,
    pub share_min_over_mean: f64,
    pub add_moved: f64,
    pub add_ideal: f64,
    /// Keys whose owner changed to a cluster other than the added one.
    pub add_moved_elsewhere: u64,
    pub drain_moved: f64,
    pub drain_ideal: f64,
    /// Keys that moved although the drained cluster did not own them.
    pub drain_moved_elsewhere: u64,
}

impl RingFigures {
    pub fn add_ratio(&self) -> f64 {
        self.add_moved / self.add_ideal
    }
    pub fn drain_ratio(&self) -> f64 {
        self.drain_moved / self.drain_ideal
    }
}

fn weight(i: usize, weighted: bool) -> u32 {
    match (weighted, i % 3) {
        (false, _) => 100,
        (true, 0) => 200,
        (true, 1) => 50,
        (true, _) => 100,
    }
}

/// Owner of every key under `members`.
fn owners(members: &[Member<'_>], hashes: &[u64]) -> Vec<u32> {
    let ring = Ring::build(members);
    hashes
        .iter()
        .map(|&h| ring.lookup_hash(h).unwrap_or(u32::MAX))
        .collect()
}

/// Measures one (cluster count, weighting).
pub fn measure(clusters: usize, weighted: bool, keys: usize) -> RingFigures {
    let names: Vec<String> = (0..=clusters).map(|i| format!("cluster-{i:03}")).collect();
    let members: Vec<Member> = (0..=clusters)
        .map(|i| Member {
            id: i as u32,
            name: &names[i],
            // The joining cluster (the last) always has weight 100.
            weight: if i == clusters { 100 } else { weight(i, weighted) },
        })
        .collect();
    let hashes: Vec<u64> = (0..keys).map(|i| key_hash(&format!("repl-{i}"))).collect();
    let base = &members[..clusters];
    let total: f64 = base.iter().map(|m| f64::from(m.weight)).sum();
    let before = owners(base, &hashes);
    let mut counts = vec![0u64; clusters];
    for &o in &before {
        counts[o as usize] += 1;
    }
    let ratios: Vec<f64> = base
        .iter()
        .map(|m| (counts[m.id as usize] as f64 / keys as f64) / (f64::from(m.weight) / total))
        .collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let added = owners(&members, &hashes);
    let new_id = clusters as u32;
    let add_moved = before.iter().zip(&added).filter(|(a, b)| a != b).count();
    let add_elsewhere = before
        .iter()
        .zip(&added)
        .filter(|(a, b)| a != b && **b != new_id)
        .count();
    // Drain the first cluster (weight 200 when weighted: the largest move).
    let drained = owners(&base[1..], &hashes);
    let drain_moved = before.iter().zip(&drained).filter(|(a, b)| a != b).count();
    let drain_elsewhere = before.iter().zip(&drained).filter(|(a, b)| a != b && **a != 0).count();
    RingFigures {
        clusters,
        weighted,
        keys,
        share_max_over_mean: ratios.iter().copied().fold(f64::MIN, f64::max) / mean,
        share_min_over_mean: ratios.iter().copied().fold(f64::MAX, f64::min) / mean,
        add_moved: add_moved as f64 / keys as f64,
        add_ideal: f64::from(members[clusters].weight) / (total + f64::from(members[clusters].weight)),
        add_moved_elsewhere: add_elsewhere as u64,
        drain_moved: drain_moved as f64 / keys as f64,
        drain_ideal: f64::from(base[0].weight) / total,
        drain_moved_elsewhere: drain_elsewhere as u64,
    }
}

/// Every figure for `counts` × {equal, weighted}.
pub fn run(counts: &[usize], keys: usize) -> Vec<RingFigures> {
    let mut out = Vec::new();
    for &n in counts {
        for weighted in [false, true] {
            eprintln!(
                "ring: {n} clusters, {} weights",
                if weighted { "mixed" } else { "equal" }
            );
            out.push(measure(n, weighted, keys));
        }
    }
    out
}

/// The markdown page.
pub fn markdown(figs: &[RingFigures], command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Consistent-hash ring: balance and movement\n");
    let _ = writeln!(s, "Command: `{command}`  ");
    let keys = figs.first().map_or(0, |f| f.keys);
    let _ = writeln!(
        s,
        "{keys} repl ids (`repl-<i>`), the edge's own ring (100 points per unit of weight, 2^20 slots). \
Share = a cluster's fraction of the keys / the fraction its weight entitles it to. Mixed weights: \
every third cluster 200, every third 50, the rest 100. Add: one cluster of weight 100 joins; \
drain: the first cluster (weight 200 when mixed) leaves. Ideal = the joining or leaving cluster's weight share.\n"
    );
    let _ = writeln!(
        s,
        "| clusters | weights | share max/mean | share min/mean | add: moved | ideal | x ideal | moved elsewhere | drain: moved | ideal | x ideal | moved elsewhere |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for f in figs {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {:.3}% | {:.3}% | {:.3} | {} | {:.3}% | {:.3}% | {:.3} | {} |",
            f.clusters,
            if f.weighted { "mixed" } else { "equal" },
            f.share_max_over_mean,
            f.share_min_over_mean,
            f.add_moved * 100.0,
            f.add_ideal * 100.0,
            f.add_ratio(),
            f.add_moved_elsewhere,
            f.drain_moved * 100.0,
            f.drain_ideal * 100.0,
            f.drain_ratio(),
            f.drain_moved_elsewhere,
        );
    }
    s
}

/// Bars of moved / ideal on add and on drain per (clusters, weights), with
/// the 1.15 target line.
pub fn svg(figs: &[RingFigures]) -> String {
    use crate::chart::{bars, BarChart, Reference};
    bars(&BarChart {
        title: "Keys moved / ideal when a cluster joins or drains (target <= 1.15)",
        groups: figs
            .iter()
            .map(|f| format!("{} {}", f.clusters, if f.weighted { "mixed" } else { "equal" }))
            .collect(),
        series: vec![
            (
                "cluster added",
                "#4e79a7",
                figs.iter().map(|f| Some(f.add_ratio())).collect(),
            ),
            (
                "cluster drained",
                "#f28e2b",
                figs.iter().map(|f| Some(f.drain_ratio())).collect(),
            ),
        ],
        min_max: 1.2,
        decimals: 2,
        references: vec![
            Reference {
                value: 1.15,
                label: "1.15",
                color: "#e15759",
                dashed: true,
            },
            Reference {
                value: 1.0,
                label: "1.0",
                color: "#999",
                dashed: false,
            },
        ],
        grid: 0,
    })
}

/// Writes ring.md, ring.json and ring_moves.svg into `dir`.
pub fn write(dir: &Path, figs: &[RingFigures], command: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ring.md"), markdown(figs, command))?;
    std::fs::write(dir.join("ring.json"), serde_json::to_string_pretty(figs)?)?;
    std::fs::write(dir.join("ring_moves.svg"), svg(figs))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Consistent hashing's two promises, at a size a unit test affords:
    /// a joining cluster only takes keys, a leaving one only gives its own.
    #[test]
    fn only_the_changed_cluster_moves_keys() {
        for weighted in [false, true] {
            let f = measure(10, weighted, 20_000);
            assert_eq!(f.add_moved_elsewhere, 0, "{f:?}");
            assert_eq!(f.drain_moved_elsewhere, 0, "{f:?}");
            assert!(f.add_moved > 0.0 && f.drain_moved > 0.0, "{f:?}");
            assert!(f.share_max_over_mean >= 1.0 && f.share_min_over_mean <= 1.0, "{f:?}");
        }
    }
}
