//! edgeplane-proxy: the edge process. The decisions live in the pure core
//! (`edgeplane-core`: [`route`], [`balancer`], [`ws_frames`]); this crate is
//! the glue that runs them on Pingora, grouped by role:
//!
//! | module | room |
//! |---|---|
//! | [`http`] | the request path: filter steps, upstream edits, retry and replay, tunnels, the edge's own pages, access log |
//! | [`conn`] | connections below HTTP: admission caps, head deadline, TLS certificates |
//! | [`admin`] | the admin listener: API, status page, config reload |
//! | [`background`] | off the request path: health monitor, name resolution |
//! | [`dns`] | `edgeplane dns`, the authoritative responder |
//! | [`placement`] | starting the placement sources (file, PostgreSQL, Redis, shadow) |
//! | [`server`] | putting the process together, signals |
//! | [`logging`] | the log bridge: Pingora noise counted at DEBUG, every call site rate-limited |
//! | [`metrics`], [`clock`], [`shutdown`] | leaves every part uses: counters, time and entropy, the stop handle |
//! | [`alloc_count`] | the global allocator's optional allocation count (tests hold the request path to its budget) |
//! | [`fuzzing`] | the fuzz targets' properties (the suite replays their corpus) |
//!
//! Start reading at `edgeplane_core::route` (what decides where a request
//! goes), then [`http`] (how it is carried out), then [`server`].

pub mod admin;
pub mod alloc_count;
pub mod background;
pub mod clock;
pub mod conn;
pub mod dns;
pub mod fuzzing;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod placement;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod upgrade;

pub use edgeplane_core::{balancer, bits, route, ws_frames};
