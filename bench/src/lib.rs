//! edgeplane-bench: tools that exercise the edge from outside — the fake
//! conman VM ([`fake_vm`]) and the synthetic placement worlds used by the
//! benchmarks ([`world`]).
//!
//! Start at [`fake_vm`]; the criterion benches live under `benches/`.

pub mod fake_vm;
pub mod world;
