//! edgeplane-bench: tools that exercise the edge from outside — the fake
//! conman VM ([`fake_vm`]), the fast backend and load generators of the
//! comparison runs ([`backend`], [`load`], [`compare`]), the synthetic
//! placement worlds used by the benchmarks ([`world`]), the PostgreSQL sync
//! benchmark ([`sync_bench`]), the placement simulator ([`sim`]) and the
//! ring's balance and movement figures ([`ring_bench`]), and the SVG charts
//! they all draw with ([`chart`]).
//!
//! Start at [`compare`] for the load runs, [`fake_vm`] for the tests; the
//! criterion benches live under `benches/`.

pub mod backend;
pub mod chart;
pub mod compare;
pub mod fake_vm;
pub mod http1;
pub mod load;
pub mod procstat;
pub mod ring_bench;
pub mod sim;
pub mod sync_bench;
pub mod world;
pub mod world_bench;
