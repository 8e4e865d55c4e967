//! edgeplane-core: everything the edge decides, as plain Rust. No Pingora,
//! no tokio, no I/O and no clock: the glue (`edgeplane-proxy`) passes in
//! the table, the time and the randomness, and carries the answer out.
//!
//! - [`route`]: where a request goes (the request flow of
//!   docs/contract.md §2): host rules, workspace tokens and hop signatures,
//!   the decision itself with an `Explain` seam, the pick memory, and what
//!   happens after a first try (replay, connect retry).
//! - [`balancer`]: which VM a repl that is not running starts on (subsets,
//!   policies, usability from health samples, passive ejection).
//! - [`ws_frames`]: WebSocket frame boundaries, for closing tunnels cleanly.
//! - [`h2_frames`]: HTTP/2 frame boundaries and the control-frame budget.
//!
//! Start reading at [`route::decide`], then [`balancer::Balancer::choose`].

#![forbid(unsafe_code)]

pub mod balancer;
pub mod bits;
pub mod h2_frames;
pub mod route;
pub mod ws_frames;
