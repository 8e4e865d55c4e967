//! The PostgreSQL placement source: a sync loop that keeps this edge's
//! routing table in step with the control plane, and keeps the last good
//! table serving whatever the database does.
//!
//! Protocol (see docs/placement.md, "Sync from PostgreSQL"):
//! 1. Connect, `LISTEN edgeplane_placement`.
//! 2. Full load ([`load::full_load`]): one REPEATABLE READ snapshot, streamed;
//!    the table's version is `placement_version` in that snapshot. A load
//!    that is empty or shrinks by more than `max_shrink_ratio` is held back.
//! 3. Deltas ([`load::fetch_changes`]): changes after the cursor, woken by a
//!    notification or by the poll timer (replicas never notify). Versions
//!    are contiguous by construction (writers serialise on the version row),
//!    so a gap means missed data: full reload. A `*` change (bulk import) or
//!    an undecodable row also forces a full reload. A batch never ends in
//!    the middle of a transaction. Each batch becomes a new table through
//!    [`RoutingTable::apply_for_edge`] and one atomic publish.
//! 4. On any error: mark disconnected, back off (exponential, jittered),
//!    reconnect, and resume from the cursor. The published table keeps
//!    serving throughout; requests never wait on any of this.
//! 5. At start, if the first attempt fails and nothing is published yet, the
//!    last-known-good file is loaded and published.
//!
//! The loop runs on its own thread and runtime ([`spawn`]), away from the
//! proxy's workers. Start at [`PgSync::run`].

pub mod decode;
pub mod load;
pub mod migrate;
pub mod moves;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::table::{Change, RoutingTable, Skipped};
use crate::{last_known_good, SyncErrorKind, TableHandle};
use decode::{decode, Decoded};
use load::LoadError;

/// The sync's defaults are the config's (one definition, documented there
/// and in config/examples/edgeplane.toml).
pub use edgeplane_config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FULL_LOAD_TIMEOUT, DEFAULT_LAST_KNOWN_GOOD_INTERVAL, DEFAULT_MAX_SHRINK_RATIO,
    DEFAULT_POLL_INTERVAL, DEFAULT_QUERY_TIMEOUT,
};
/// Changes read per delta query; a longer backlog is read in several batches.
pub const DELTA_BATCH: i64 = 10_000;
/// Most changes of one transaction applied as one delta (a `move-user` of
/// 100,000 repls writes about 300,000); a larger one is read by a full
/// reload instead.
pub const MAX_TRANSACTION_ROWS: usize = 1_000_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct PgSyncOptions {
    pub url: String,
    pub local_region: String,
    pub poll_interval: Duration,
    pub max_shrink_ratio: f64,
    pub last_known_good: Option<PathBuf>,
    pub last_known_good_interval: Duration,
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
    pub full_load_timeout: Duration,
}

impl PgSyncOptions {
    pub fn new(url: impl Into<String>, local_region: impl Into<String>) -> PgSyncOptions {
        PgSyncOptions {
            url: url.into(),
            local_region: local_region.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_shrink_ratio: DEFAULT_MAX_SHRINK_RATIO,
            last_known_good: None,
            last_known_good_interval: DEFAULT_LAST_KNOWN_GOOD_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            full_load_timeout: DEFAULT_FULL_LOAD_TIMEOUT,
        }
    }
}

/// Why a sync session (or [`load_once`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("connection closed")]
    Closed,
    #[error("full load held back: {0}")]
    HeldBack(String),
    /// The server stopped answering (hung, or a network path black-holed).
    #[error("{0} got no answer within {1:?}: connection treated as hung")]
    Timeout(&'static str, Duration),
}

/// Connects within `opts.connect_timeout`.
async fn connect(
    opts: &PgSyncOptions,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    SyncError,
> {
    match tokio::time::timeout(opts.connect_timeout, tokio_postgres::connect(&opts.url, NoTls)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(SyncError::Connect(e.to_string())),
        Err(_) => Err(SyncError::Connect(format!(
            "timed out after {:?}",
            opts.connect_timeout
        ))),
    }
}

/// One full load, for offline tools (`edgeplane route`, `snapshot dump`):
/// connects within `connect_timeout` and loads within `full_load_timeout`
/// on a runtime of its own, publishing nothing; bad rows are skipped and
/// returned, as the sync skips them.
pub fn load_once(opts: &PgSyncOptions) -> Result<(RoutingTable, Skipped), SyncError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SyncError::Connect(format!("runtime: {e}")))?;
    rt.block_on(async {
        let (mut client, connection) = connect(opts).await?;
        tokio::spawn(connection);
        bounded(opts.full_load_timeout, "full load", async {
            Ok(load::full_load(&mut client, &opts.local_region).await?)
        })
        .await
    })
}

/// Runs `work`, or fails with [`SyncError::Timeout`] after `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    work: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(SyncError::Timeout(what, limit)))
}

impl From<tokio_postgres::Error> for SyncError {
    fn from(e: tokio_postgres::Error) -> Self {
        SyncError::Load(LoadError::Query(e))
    }
}

/// Jittered exponential backoff (full jitter over [d/2, d]).
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_MIN,
            seed: crate::now_unix_ms() | 1,
        }
    }
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
    fn next(&mut self) -> Duration {
        // xorshift64: jitter only, not security.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = d.as_micros() as u64 / 2;
        Duration::from_micros(half + self.seed % (half + 1))
    }
}

/// The sync loop's state. See the module docs.
pub struct PgSync {
    opts: PgSyncOptions,
    handle: TableHandle,
    /// Version of the published table's data (what deltas continue from).
    cursor: i64,
    need_full: bool,
    lkg: last_known_good::Writer,
}

impl PgSync {
    pub fn new(opts: PgSyncOptions, handle: TableHandle) -> PgSync {
        PgSync {
            lkg: last_known_good::Writer::spawn(opts.last_known_good.clone(), opts.last_known_good_interval, &handle),
            handle,
            cursor: 0,
            need_full: true,
            opts,
        }
    }

    /// Runs until `stop` is set (checked between attempts and waits).
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut backoff = Backoff::new();
        let mut first = true;
        while !stop.load(Ordering::Relaxed) {
            let err = self.session(&mut backoff, &stop).await;
            self.handle.status().set_connected(false);
            match &err {
                SyncError::Connect(_) => self.handle.status().error(SyncErrorKind::Connect),
                SyncError::Load(LoadError::Query(_)) | SyncError::Closed => {
                    self.handle.status().error(SyncErrorKind::Query)
                }
                SyncError::Load(LoadError::Snapshot(_)) => self.handle.status().error(SyncErrorKind::InvalidSnapshot),
                SyncError::HeldBack(_) => self.handle.status().error(SyncErrorKind::HeldBack),
                SyncError::Timeout(..) => self.handle.status().error(SyncErrorKind::Timeout),
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            log::warn!(
                "placement: postgres sync: {err}; serving version {}",
                self.handle.load().version()
            );
            if first && !self.handle.is_ready() {
                self.load_last_known_good();
            }
            first = false;
            tokio::time::sleep(backoff.next()).await;
        }
    }

    fn load_last_known_good(&mut self) {
        let path = self.opts.last_known_good.as_deref();
        if last_known_good::restore(path, &self.opts.local_region, &self.handle, "postgres").is_some() {
            // Deltas cannot continue from a file: reload fully when connected.
            self.need_full = true;
        }
    }

    async fn session(&mut self, backoff: &mut Backoff, stop: &AtomicBool) -> SyncError {
        let (mut client, mut connection) = match connect(&self.opts).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        // Drive the connection; every notification (and the end) wakes the loop.
        let wake = Arc::new(Notify::new());
        let closed = Arc::new(AtomicBool::new(false));
        let driver = {
            let (wake, closed) = (wake.clone(), closed.clone());
            tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m {
                        Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                        Ok(_) => {}
                        Err(e) => {
                            log::debug!("placement: connection error: {e}");
                            break;
                        }
                    }
                }
                closed.store(true, Ordering::Release);
                wake.notify_one();
            })
        };
        let result = async {
            let limit = self.opts.query_timeout;
            bounded(limit, "LISTEN", async {
                Ok(client.batch_execute("LISTEN edgeplane_placement").await?)
            })
            .await?;
            self.handle.status().set_connected(true);
            log::info!("placement: connected to postgres");
            loop {
                if self.need_full {
                    bounded(self.opts.full_load_timeout, "full load", self.full_load(&mut client)).await?;
                }
                let more = bounded(limit, "delta query", self.delta_batch(&mut client)).await?;
                backoff.reset();
                if more || self.need_full {
                    continue;
                }
                if closed.load(Ordering::Acquire) {
                    return Err(SyncError::Closed);
                }
                if stop.load(Ordering::Relaxed) {
                    return Err(SyncError::Closed);
                }
                let _ = tokio::time::timeout(self.opts.poll_interval, wake.notified()).await;
            }
        }
        .await;
        driver.abort();
        match result {
            Ok(()) => SyncError::Closed,
            Err(e) => e,
        }
    }

    async fn full_load(&mut self, client: &mut Client) -> Result<(), SyncError> {
        let (table, skipped) = load::full_load(client, &self.opts.local_region).await?;
        self.report_skipped(&skipped);
        let prev = self.handle.load_full();
        if let Some(why) = suspicious(&prev, &table, self.opts.max_shrink_ratio) {
            log::error!(
                "placement: full load of version {} held back, not published: {why}",
                table.version()
            );
            return Err(SyncError::HeldBack(why));
        }
        self.cursor = table.version() as i64;
        self.need_full = false;
        self.handle.status().note_full_load();
        self.publish(table, None);
        crate::release_memory();
        Ok(())
    }

    /// Reads and applies one batch of changes; `Ok(true)` when the batch
    /// was full (more may wait). A gap, an undecodable row or a `*` change
    /// sets `need_full` instead; the session loop then reloads fully under
    /// its own, longer, time limit.
    async fn delta_batch(&mut self, client: &mut Client) -> Result<bool, SyncError> {
        let (head, mut rows) = load::fetch_changes(client, self.cursor, DELTA_BATCH).await?;
        if rows.is_empty() {
            if head > self.cursor {
                return self.reload(
                    SyncErrorKind::Gap,
                    format!("head {head} but no changes after {}", self.cursor),
                );
            }
            return Ok(false);
        }
        for (i, r) in rows.iter().enumerate() {
            if r.version != self.cursor + 1 + i as i64 {
                let msg = format!("expected version {} got {}", self.cursor + 1 + i as i64, r.version);
                return self.reload(SyncErrorKind::Gap, msg);
            }
        }
        let full_batch = rows.len() as i64 == DELTA_BATCH;
        if full_batch {
            // Never publish part of a transaction: drop its tail, read it next time.
            let last_tx = rows.last().map(|r| r.txid);
            let keep = rows
                .iter()
                .rposition(|r| Some(r.txid) != last_tx)
                .map(|p| p + 1)
                .unwrap_or(0);
            if keep == 0 {
                // One transaction fills the batch (a `placectl move-user`,
                // a big drain): read on to its end and publish it whole.
                if !read_rest_of_transaction(client, &mut rows).await? {
                    return self.reload(
                        SyncErrorKind::Gap,
                        format!("one transaction has more than {MAX_TRANSACTION_ROWS} changes"),
                    );
                }
                if let Some(w) = rows.windows(2).find(|w| w[1].version != w[0].version + 1) {
                    let msg = format!("expected version {} got {}", w[0].version + 1, w[1].version);
                    return self.reload(SyncErrorKind::Gap, msg);
                }
            } else {
                rows.truncate(keep);
            }
        }
        let mut changes: Vec<Change> = Vec::with_capacity(rows.len());
        for r in &rows {
            match decode(r.version, &r.tbl, &r.op, r.row.as_deref(), r.old.as_deref()) {
                Ok(Decoded::Changes(c)) => changes.extend(c),
                Ok(Decoded::Reload) => {
                    log::info!("placement: change {} asks for a full reload", r.version);
                    self.need_full = true;
                    return Ok(false);
                }
                Err(e) => return self.reload(SyncErrorKind::Decode, e.to_string()),
            }
        }
        let changes = self.with_arriving_rows(client, changes).await?;
        let changes = self.with_directory_domains(client, changes).await?;
        let changes = with_recent_moves(client, changes).await?;
        let last = rows.last().expect("non-empty");
        let newest_commit = rows.iter().map(|r| r.changed_at_ms).max().unwrap_or(0);
        let version = last.version;
        let prev = self.handle.load_full();
        let (table, skipped) = prev.apply_for_edge(changes, version as u64).map_err(LoadError::from)?;
        self.report_skipped(&skipped);
        self.cursor = version;
        self.handle.status().note_delta();
        self.publish(table, Some(newest_commit));
        Ok(full_batch)
    }

    /// Inserts, right after each repl that arrives in this region, the
    /// rows of it this edge never loaded (containers, custom domains).
    async fn with_arriving_rows(&self, client: &mut Client, changes: Vec<Change>) -> Result<Vec<Change>, SyncError> {
        let table = self.handle.load();
        let local = &self.opts.local_region;
        let arriving: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::UpsertRepl(r) if r.region == *local && table.repl_by_id(&r.id).is_none() => Some(r.id.clone()),
                _ => None,
            })
            .collect();
        drop(table);
        if arriving.is_empty() {
            return Ok(changes);
        }
        let mut extra = load::rows_of_arriving(client, &arriving).await?;
        let mut out = Vec::with_capacity(changes.len() + extra.values().map(Vec::len).sum::<usize>());
        for c in changes {
            let id = match &c {
                Change::UpsertRepl(r) => Some(r.id.clone()),
                _ => None,
            };
            out.push(c);
            if let Some(rows) = id.and_then(|id| extra.remove(&id)) {
                out.extend(rows);
            }
        }
        Ok(out)
    }

    /// Appends the directory names of custom domains whose home region a
    /// batch may have changed: domains created or moved onto another
    /// region's repl, and every domain of another region's repl the batch
    /// touched (it may have changed regions). A domain row names only its
    /// repl, and the directory keeps no repl ids, so the region is read.
    async fn with_directory_domains(
        &self,
        client: &mut Client,
        mut changes: Vec<Change>,
    ) -> Result<Vec<Change>, SyncError> {
        let local = &self.opts.local_region;
        let mut ids: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::UpsertRepl(r) if r.region != *local => Some(r.id.clone()),
                Change::UpsertDomain(d) => Some(d.repl_id.clone()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(changes);
        }
        ids.sort_unstable();
        ids.dedup();
        changes.extend(load::directory_domains_of(client, local, &ids).await?);
        Ok(changes)
    }

    fn reload(&mut self, why: SyncErrorKind, msg: String) -> Result<bool, SyncError> {
        log::warn!("placement: {} ({msg}): full reload", why.as_str());
        self.handle.status().error(why);
        self.need_full = true;
        Ok(false)
    }

    fn report_skipped(&self, skipped: &Skipped) {
        self.handle.report_skipped(skipped);
    }

    /// Publishes, records lag, and writes last-known-good when due.
    fn publish(&mut self, table: RoutingTable, newest_commit_ms: Option<i64>) {
        let now = crate::now_unix_ms();
        self.handle.publish(table, now);
        if let Some(c) = newest_commit_ms {
            let lag_us = (SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0)
                - c * 1000)
                .max(0) as u64;
            self.handle.status().set_lag_us(lag_us);
        }
        self.lkg.notify();
    }
}

/// Why a full load must not replace `prev`, if it must not.
pub fn suspicious(prev: &RoutingTable, new: &RoutingTable, max_shrink_ratio: f64) -> Option<String> {
    let n = new.counts();
    if n.regions == 0 || n.clusters == 0 {
        return Some("it holds no regions or no clusters".into());
    }
    if !prev.is_loaded() {
        return None;
    }
    // Local repls and other regions' names together: the world this edge
    // routes (a load that lost most of another region is as suspect).
    let (p, q) = (prev.counts().repls + prev.counts().directory, n.repls + n.directory);
    if p > 0 && q == 0 {
        return Some(format!("it holds no repls where {p} were"));
    }
    if p > 0 && (q as f64) < (p as f64) * (1.0 - max_shrink_ratio) {
        return Some(format!(
            "repls shrank from {p} to {q}, more than max_shrink_ratio {max_shrink_ratio} (raise it to accept)"
        ));
    }
    None
}

/// Starts the sync on its own thread with a single-threaded runtime.
pub fn spawn(opts: PgSyncOptions, handle: TableHandle, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    crate::spawn_with_runtime("placement-sync", move || PgSync::new(opts, handle).run(stop))
}

/// Appends to `rows` (a full batch of one transaction) the rest of that
/// transaction, batch by batch; the whole transaction is committed, so all
/// Appends a [`Change::RecentMove`] for each name of every repl a batch
/// wrote a tombstone for (in any region: `edgeplane dns` gives all of them
/// the short TTL while the tombstone lives). Read by id, as the directory
/// keeps no repl ids.
async fn with_recent_moves(client: &mut Client, mut changes: Vec<Change>) -> Result<Vec<Change>, SyncError> {
    let until: std::collections::HashMap<String, i64> = changes
        .iter()
        .filter_map(|c| match c {
            Change::UpsertTombstone(t) => Some((t.repl_id.clone(), crate::snapshot::parse_rfc3339_ms(&t.expires_at)?)),
            _ => None,
        })
        .collect();
    if !until.is_empty() {
        changes.extend(load::moved_names_of(client, &until).await?);
    }
    Ok(changes)
}

/// of it is there. False when it exceeds [`MAX_TRANSACTION_ROWS`].
async fn read_rest_of_transaction(client: &mut Client, rows: &mut Vec<load::ChangeRow>) -> Result<bool, LoadError> {
    let txid = rows.last().expect("a full batch").txid;
    loop {
        let after = rows.last().expect("a full batch").version;
        let (_, more) = load::fetch_changes(client, after, DELTA_BATCH).await?;
        let end = more.iter().position(|r| r.txid != txid);
        let done = end.is_some() || (more.len() as i64) < DELTA_BATCH;
        rows.extend(more.into_iter().take(end.unwrap_or(usize::MAX)));
        if rows.len() > MAX_TRANSACTION_ROWS {
            return Ok(false);
        }
        if done {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Snapshot;

    fn table(repls: usize) -> RoutingTable {
        let mut s: Snapshot = serde_json::from_str(
            r#"{"regions": [{"name": "r", "edge_addr": "127.0.0.1:1"}],
                "clusters": [{"name": "c", "region": "r", "state": "active"}]}"#,
        )
        .unwrap();
        for i in 0..repls {
            s.repls.push(crate::snapshot::ReplRow {
                id: format!("x{i}"),
                slug: format!("x{i}"),
                owner: None,
                region: "r".into(),
                cluster: None,
                transfer_to: None,
                size: 1,
            });
        }
        RoutingTable::build(&s, "r", 1).unwrap()
    }

    #[test]
    fn shrink_guard() {
        let empty = RoutingTable::empty();
        assert_eq!(suspicious(&empty, &table(0), 0.5), None, "a first load may be small");
        assert!(suspicious(&table(10), &table(0), 0.5).is_some(), "emptied");
        assert!(
            suspicious(&table(100), &table(49), 0.5).is_some(),
            "shrank by more than half"
        );
        assert_eq!(suspicious(&table(100), &table(50), 0.5), None);
        assert_eq!(
            suspicious(&table(100), &table(1), 1.0),
            None,
            "ratio 1.0 accepts anything non-empty"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            assert!(b.next() <= BACKOFF_MAX);
        }
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }
}
