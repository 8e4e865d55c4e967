//! edgeplane-bench: tools that exercise the edge from outside — the fake
//! conman VM ([`fake_vm`]), the synthetic placement worlds used by the
//! benchmarks ([`world`]), and the PostgreSQL sync benchmark ([`sync_bench`]).
//!
//! Start at [`fake_vm`]; the criterion benches live under `benches/`.

pub mod fake_vm;
pub mod sim;
pub mod sync_bench;
pub mod world;
