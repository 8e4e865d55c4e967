//! edgeplane control-sync: the placement model and how it reaches the edge.
//!
//! Flow: a source ([`file_source`] today; PostgreSQL and Redis later) yields
//! a [`snapshot::Snapshot`] of rows; [`table::RoutingTable::build`] validates
//! it and builds an immutable, index-based table with one consistent-hash
//! [`ring::Ring`] per region; [`TableHandle::publish`] swaps it in with one
//! atomic store. Readers (`TableHandle::load`) never block and never see a
//! half-built table; a snapshot that fails validation is rejected whole and
//! the previous table keeps serving.
//!
//! Nothing here knows Pingora; the proxy crate reads tables through
//! [`TableHandle`]. Start reading at [`table`], then [`ring`].

pub mod file_source;
pub mod ring;
pub mod sharded;
pub mod snapshot;
pub mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use snapshot::Snapshot;
pub use table::{RoutingTable, SnapshotError};

/// The published routing table, shared by every reader. Cloning is cheap.
#[derive(Clone)]
pub struct TableHandle {
    inner: Arc<Shared>,
}

struct Shared {
    table: ArcSwap<RoutingTable>,
    /// Unix ms of the last publish (0 = never).
    published_at_ms: AtomicU64,
    /// Snapshots rejected by validation since start.
    rejected: AtomicU64,
}

impl Default for TableHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl TableHandle {
    /// A handle holding the empty, not-loaded table.
    pub fn new() -> TableHandle {
        TableHandle {
            inner: Arc::new(Shared {
                table: ArcSwap::from_pointee(RoutingTable::empty()),
                published_at_ms: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
        }
    }

    /// The current table: one atomic load, no lock. Do not hold the guard
    /// across an `.await`; copy what you need out of it.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.inner.table.load()
    }

    /// A full `Arc` of the current table, for work that outlives a guard.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.inner.table.load_full()
    }

    /// Publishes a new table; readers switch atomically.
    pub fn publish(&self, table: RoutingTable, now_ms: u64) {
        self.inner.table.store(Arc::new(table));
        self.inner.published_at_ms.store(now_ms, Ordering::Release);
    }

    /// Counts a rejected snapshot (the previous table stays).
    pub fn note_rejected(&self) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    pub fn published_at_ms(&self) -> u64 {
        self.inner.published_at_ms.load(Ordering::Acquire)
    }

    /// True once a real table has been published (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.inner.table.load().is_loaded()
    }
}
