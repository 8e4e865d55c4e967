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

pub mod certs;
pub mod file_source;
pub mod last_known_good;
pub mod postgres;
pub mod redis_source;
pub mod shadow;
pub mod switch;

// The placement model lives in its own pure crate (no tokio, no database
// client); these paths stay where every caller knows them.
pub use edgeplane_placement::{directory, ring, sharded, snapshot, table};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use snapshot::Snapshot;
pub use table::{RoutingTable, SnapshotError};

static RELEASE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what a sync thread calls after it built and published a whole new
/// table (a full load): the binary's allocator returns the memory the load
/// used for a while and freed. Allocators give such memory back lazily, on
/// the thread's next allocations, and an idle sync thread makes none, so
/// without this a process would keep the load's transient memory resident
/// until its next load.
pub fn set_release_memory(f: fn()) {
    let _ = RELEASE_MEMORY.set(f);
}

/// Runs the hook of [`set_release_memory`], if any.
pub(crate) fn release_memory() {
    if let Some(f) = RELEASE_MEMORY.get() {
        f();
    }
}

/// Runs the future `task` builds on a thread of its own with a
/// single-threaded tokio runtime: how every background loop (placement
/// sync, health monitor, name resolver) keeps off the proxy's request
/// threads. The future is built on the new thread, so it need not be `Send`.
pub fn spawn_with_runtime<F, Fut>(name: &str, task: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let thread = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{thread}: cannot build its runtime: {e}"));
            rt.block_on(task());
        })
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// Wall-clock unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
    status: Arc<SyncStatus>,
    /// Set on a source's handle when a [`switch::SourceSwitch`] chooses
    /// which source the edge serves: each publish is offered to it.
    mirror: std::sync::OnceLock<(std::sync::Weak<switch::SourceSwitch>, usize)>,
}

impl Default for TableHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl TableHandle {
    /// A handle holding the empty, not-loaded table.
    pub fn new() -> TableHandle {
        Self::with_status(Arc::new(SyncStatus::default()))
    }

    /// A handle reporting into `status` (a source's own handle shares the
    /// status of the handle the edge serves from, so the sync metrics stay
    /// the primary source's).
    pub fn with_status(status: Arc<SyncStatus>) -> TableHandle {
        TableHandle {
            inner: Arc::new(Shared {
                table: ArcSwap::from_pointee(RoutingTable::empty()),
                published_at_ms: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                status,
                mirror: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The shared status, for [`TableHandle::with_status`].
    pub fn status_arc(&self) -> Arc<SyncStatus> {
        self.inner.status.clone()
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
        let new = Arc::new(table);
        let old = self.inner.table.swap(new.clone());
        self.inner.published_at_ms.store(now_ms, Ordering::Release);
        let mirrored_old = self
            .inner
            .mirror
            .get()
            .and_then(|(sw, idx)| sw.upgrade().and_then(|sw| sw.offer(*idx, new, now_ms)));
        // Usually the serving handle held the same table as this one: that
        // copy is not the last reference, dropping it here is free.
        if let Some(m) = mirrored_old.filter(|m| !Arc::ptr_eq(m, &old)) {
            retire(m);
        }
        retire(old);
    }

    /// Serves `table` (already published by a source's own handle); returns
    /// the table it replaces. Only [`switch::SourceSwitch`] calls this.
    fn serve_shared(&self, table: Arc<RoutingTable>, now_ms: u64) -> Arc<RoutingTable> {
        let old = self.inner.table.swap(table);
        self.inner.published_at_ms.store(now_ms, Ordering::Release);
        old
    }

    /// Counts a rejected snapshot (the previous table stays).
    pub fn note_rejected(&self) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        self.inner.status.error(SyncErrorKind::InvalidSnapshot);
    }

    /// Logs the examples of rows a lenient load skipped and adds the counts
    /// to the sync status (`edgeplane_sync_skipped_rows_total`).
    pub fn report_skipped(&self, skipped: &table::Skipped) {
        if skipped.is_empty() {
            return;
        }
        for e in &skipped.examples {
            log::warn!("placement: skipped bad row {e}");
        }
        if skipped.total() > skipped.examples.len() as u64 {
            log::warn!(
                "placement: ... and {} more bad rows skipped",
                skipped.total() - skipped.examples.len() as u64
            );
        }
        self.status().add_skipped(skipped);
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

/// Hands a replaced table to the reaper thread (started on first use). The
/// reaper keeps every retired table until its last reader is done (or
/// [`RETIRE_WAIT`] passes), checking all of them every half millisecond, so
/// one long-held table never delays freeing the others.
fn retire(old: Arc<RoutingTable>) {
    use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};
    static REAPER: OnceLock<Mutex<Sender<Arc<RoutingTable>>>> = OnceLock::new();
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = channel::<Arc<RoutingTable>>();
        std::thread::Builder::new()
            .name("table-reaper".into())
            .spawn(move || {
                let mut pending: Vec<(Arc<RoutingTable>, Instant)> = Vec::new();
                loop {
                    let next = if pending.is_empty() {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    } else {
                        rx.recv_timeout(Duration::from_micros(500))
                    };
                    match next {
                        Ok(old) => pending.push((old, Instant::now() + RETIRE_WAIT)),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    pending.retain(|(t, deadline)| Arc::strong_count(t) > 1 && now < *deadline);
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
    /// The source's last-known-good writer, once one runs.
    lkg_writer: std::sync::OnceLock<last_known_good::Writer>,
    /// The last-known-good file served at start, when the store was away.
    restored: std::sync::Mutex<Option<RestoredFile>>,
}

/// A last-known-good file an edge started from (the store was away).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoredFile {
    pub path: String,
    /// The table version the file held.
    pub version: u64,
    /// Unix ms the file was written (its modification time).
    pub file_written_at_ms: u64,
    /// Unix ms it was published (still serving while the handle's last
    /// publish is this one).
    pub published_at_ms: u64,
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
    /// Registers the source's last-known-good writer (the first one wins).
    pub fn set_last_known_good_writer(&self, w: last_known_good::Writer) {
        let _ = self.lkg_writer.set(w);
    }
    /// Writes the newest table to the last-known-good file now (graceful
    /// stop), waiting at most `limit`; nothing when no file is configured.
    pub fn flush_last_known_good(&self, limit: std::time::Duration) {
        if let Some(w) = self.lkg_writer.get() {
            w.flush(limit);
        }
    }
    /// The last-known-good file already holds `version`.
    pub fn mark_last_known_good_written(&self, version: u64) {
        if let Some(w) = self.lkg_writer.get() {
            w.mark_written(version);
        }
    }
    /// The last-known-good file as last written, if one is configured.
    pub fn last_known_good_written(&self) -> Option<last_known_good::WrittenFile> {
        self.lkg_writer.get().and_then(|w| w.written())
    }
    pub fn note_restored(&self, r: RestoredFile) {
        *self.restored.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
    /// The last-known-good file the edge started from, if it did.
    pub fn restored(&self) -> Option<RestoredFile> {
        self.restored.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// Skipped rows so far, by (table, reason).
    pub fn skipped_rows(&self) -> Vec<((&'static str, &'static str), u64)> {
        let m = self.skipped_rows.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}
