//! edgeplane control-sync: the placement model and how it reaches the edge.
//!
//! Flow: a source — [`file_source`] (a JSON snapshot, rejected whole when
//! bad) or [`postgres`] (a streamed full load, then deltas; bad rows skipped
//! and counted) — yields rows; [`table::RoutingTable`] validates them into
//! an immutable, copy-on-write table ([`sharded`] maps, one consistent-hash
//! [`ring::Ring`] per region), so a delta makes a new table sharing all
//! untouched shards; [`TableHandle::publish`] swaps it in with one atomic
//! store and retires the old one off the request path. Readers
//! (`TableHandle::load`) never block and never see a half-applied change.
//! [`last_known_good`] keeps the last table on disk for starts without a
//! database; [`SyncStatus`] counts what the sync did for the metrics.
//!
//! Nothing here knows Pingora; the proxy crate reads tables through
//! [`TableHandle`]. Start reading at [`table`], then [`postgres`].

pub mod file_source;
pub mod last_known_good;
pub mod postgres;
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
    status: SyncStatus,
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
                status: SyncStatus::default(),
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

    /// Publishes a new table; readers switch atomically. The old table is
    /// handed to the reaper thread, which frees it once its last reader is
    /// done, so freeing a large table never lands on a request thread as a
    /// latency spike, nor blocks the sync loop.
    pub fn publish(&self, table: RoutingTable, now_ms: u64) {
        let old = self.inner.table.swap(Arc::new(table));
        self.inner.published_at_ms.store(now_ms, Ordering::Release);
        retire(old);
    }

    /// Counts a rejected snapshot (the previous table stays).
    pub fn note_rejected(&self) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        self.inner.status.error(SyncErrorKind::InvalidSnapshot);
    }

    /// The sync's counters and state.
    pub fn status(&self) -> &SyncStatus {
        &self.inner.status
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

/// How long the reaper waits for readers of a replaced table before it
/// drops its own reference anyway (a long holder then frees it).
pub const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands a replaced table to the reaper thread (started on first use).
fn retire(old: Arc<RoutingTable>) {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Mutex, OnceLock};
    static REAPER: OnceLock<Mutex<Sender<Arc<RoutingTable>>>> = OnceLock::new();
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = channel::<Arc<RoutingTable>>();
        std::thread::Builder::new()
            .name("table-reaper".into())
            .spawn(move || {
                for old in rx {
                    let deadline = std::time::Instant::now() + RETIRE_WAIT;
                    while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_micros(500));
                    }
                    drop(old);
                }
            })
            .expect("spawn table-reaper");
        Mutex::new(tx)
    });
    // If the reaper is gone (process exiting), dropping here is fine.
    let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(old);
}

/// Why the sync failed or held something back (the `reason` label of
/// `edgeplane_sync_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum SyncErrorKind {
    /// A file snapshot failed validation (the previous table kept serving).
    InvalidSnapshot,
    Connect,
    Query,
    /// A change row could not be decoded (forces a full reload).
    Decode,
    /// A version gap (changes missed or pruned; forces a full reload).
    Gap,
    /// A full load that was empty or shrank too much was not published.
    HeldBack,
    /// Writing the last-known-good file failed.
    LastKnownGood,
    /// The database stopped answering within the query or full-load time
    /// limit; the connection was dropped and is re-established.
    Timeout,
}

impl SyncErrorKind {
    pub const ALL: [SyncErrorKind; 8] = [
        SyncErrorKind::InvalidSnapshot,
        SyncErrorKind::Connect,
        SyncErrorKind::Query,
        SyncErrorKind::Decode,
        SyncErrorKind::Gap,
        SyncErrorKind::HeldBack,
        SyncErrorKind::LastKnownGood,
        SyncErrorKind::Timeout,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SyncErrorKind::InvalidSnapshot => "invalid_snapshot",
            SyncErrorKind::Connect => "connect",
            SyncErrorKind::Query => "query",
            SyncErrorKind::Decode => "decode",
            SyncErrorKind::Gap => "gap",
            SyncErrorKind::HeldBack => "held_back",
            SyncErrorKind::LastKnownGood => "last_known_good",
            SyncErrorKind::Timeout => "timeout",
        }
    }
}

/// What the sync reports about itself; lock-free counters the proxy mirrors
/// into Prometheus when scraped.
#[derive(Default)]
pub struct SyncStatus {
    connected: std::sync::atomic::AtomicBool,
    errors: [AtomicU64; SyncErrorKind::ALL.len()],
    /// Last commit-to-publish lag, microseconds.
    lag_us: AtomicU64,
    full_loads: AtomicU64,
    deltas: AtomicU64,
    skipped_rows: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl SyncStatus {
    pub fn set_connected(&self, c: bool) {
        self.connected.store(c, Ordering::Relaxed);
    }
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn error(&self, kind: SyncErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn errors(&self, kind: SyncErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }
    pub fn set_lag_us(&self, us: u64) {
        self.lag_us.store(us, Ordering::Relaxed);
    }
    pub fn lag_us(&self) -> u64 {
        self.lag_us.load(Ordering::Relaxed)
    }
    pub fn note_full_load(&self) {
        self.full_loads.fetch_add(1, Ordering::Relaxed);
    }
    pub fn full_loads(&self) -> u64 {
        self.full_loads.load(Ordering::Relaxed)
    }
    pub fn note_delta(&self) {
        self.deltas.fetch_add(1, Ordering::Relaxed);
    }
    pub fn deltas(&self) -> u64 {
        self.deltas.load(Ordering::Relaxed)
    }
    /// Adds skipped-row counts (by table and reason).
    pub fn add_skipped(&self, skipped: &table::Skipped) {
        if skipped.is_empty() {
            return;
        }
        let mut m = self.skipped_rows.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in &skipped.counts {
            *m.entry(*k).or_default() += v;
        }
    }
    /// Skipped rows so far, by (table, reason).
    pub fn skipped_rows(&self) -> Vec<((&'static str, &'static str), u64)> {
        let m = self.skipped_rows.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}
