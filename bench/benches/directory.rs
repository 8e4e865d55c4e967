//! Criterion benchmark of the world directory (issue 17 target: a lookup
//! <= 100 ns): directories of 1,000,000 and 10,000,000 names (the other
//! regions' apps of a world, with their custom domains) built the way a
//! full load builds them, then lookups of random present names and of
//! absent names, back to back, as a busy edge's requests are. At 10M names
//! the directory (~100 MB) is three times this machine's L3: every lookup
//! is a DRAM access; at 1M it mostly hits L3.
//!
//! `cargo bench -p edgeplane-bench --bench directory`; the result is kept in
//! bench/results/directory.txt.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use edgeplane_control_sync::directory::{DirectoryBuilder, Name};

/// The edge's allocator (the directory's shards are its allocations).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lookup keys (random names of the directory), cycled through.
const KEYS: usize = 1 << 20;

fn lookups(c: &mut Criterion) {
    for names in [1_000_000usize, 10_000_000] {
        let mut b = DirectoryBuilder::new(names);
        for i in 0..names {
            b.push(Name::Slug(&format!("app{i}")), i % 4);
        }
        let (dir, report) = b.finish();
        assert_eq!(dir.len() + report.collisions, names);
        let present: Vec<String> = (0..KEYS)
            .map(|i| format!("app{}", (i as u64).wrapping_mul(2_654_435_761) % names as u64))
            .collect();
        let absent: Vec<String> = (0..KEYS).map(|i| format!("nope{i}")).collect();
        let mut g = c.benchmark_group(format!("directory_{}m", names / 1_000_000));
        g.measurement_time(Duration::from_secs(8));
        for (what, keys, want) in [("present", &present, true), ("absent", &absent, false)] {
            let mut i = 0usize;
            g.bench_function(what, |bench| {
                bench.iter(|| {
                    let k = &keys[i & (KEYS - 1)];
                    i += 1;
                    let r = dir.get(Name::Slug(black_box(k)));
                    debug_assert_eq!(r.is_some(), want);
                    r
                })
            });
        }
        g.finish();
        eprintln!(
            "directory of {names} names: {:.1} bytes a name",
            dir.approx_bytes() as f64 / dir.len() as f64
        );
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
