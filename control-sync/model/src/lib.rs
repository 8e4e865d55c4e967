//! edgeplane-placement: the placement model every edge routes with, as
//! plain data structures — no I/O, no async runtime, no database client,
//! no clock (times come in as arguments).
//!
//! Flow: a source (in `edgeplane-control-sync`) yields [`snapshot`] rows or
//! [`table::Change`]s; [`table::RoutingTable`] validates them into an
//! immutable, copy-on-write table: this region's repls in [`sharded`] maps,
//! one consistent-hash [`ring::Ring`] per region, and the [`directory`] of
//! every other region's app. A delta makes a new table sharing every
//! untouched shard; readers never see a half-applied change.
//!
//! Start reading at [`table`], then [`directory`] and [`ring`].

#![forbid(unsafe_code)]

pub mod directory;
pub mod ring;
pub mod sharded;
pub mod snapshot;
pub mod table;

pub use snapshot::Snapshot;
pub use table::{RoutingTable, SnapshotError};
