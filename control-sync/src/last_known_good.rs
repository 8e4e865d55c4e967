//! The last-known-good placement file: the last table this edge published,
//! written so that an edge restarted while the control plane is away can
//! still serve (static stability).
//!
//! Format: the snapshot JSON of docs/contract.md §3 plus a top-level `version`.
//! Writes are atomic: a temp file in the same folder, fsync, rename, fsync
//! of the folder; a crash leaves the old file or the new one, never half of
//! one. [`Writer`] writes on its own thread, at most once per
//! `placement.last_known_good_interval_ms` and at least that soon after a
//! publish, and at once on a graceful stop. Start at [`write()`],
//! [`read()`] and [`Writer`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::file_source::read_snapshot;
use crate::table::{RoutingTable, Skipped, SnapshotError, Strictness};

/// Writes `table` to `path` atomically, streaming rows (no in-memory copy).
pub fn write(path: &Path, table: &RoutingTable) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        table.write_json(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reads a last-known-good file into a table for `local_region`. Bad rows
/// are skipped (it was validated when written; this guards against edits).
pub fn read(path: &Path, local_region: &str) -> Result<(RoutingTable, Skipped), SnapshotError> {
    let snap = read_snapshot(path)?;
    RoutingTable::build_with(&snap, local_region, snap.version.max(1), Strictness::Lenient)
}

/// Publishes the table in `path` into `handle` when a source cannot load at
/// start (static stability); `source` names the store in the log line.
/// Returns the restored table's version, or `None` (no path, or no usable
/// file: logged).
pub fn restore(path: Option<&Path>, local_region: &str, handle: &crate::TableHandle, source: &str) -> Option<u64> {
    let path = path?;
    match read(path, local_region) {
        Ok((table, skipped)) => {
            let version = table.version();
            let file_ms = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            log::warn!(
                "placement: serving last-known-good version {version} from {} ({} repls) until {source} is back",
                path.display(),
                table.counts().repls
            );
            handle.report_skipped(&skipped);
            let now = crate::now_unix_ms();
            handle.publish(table, now);
            crate::release_memory();
            handle.status().mark_last_known_good_written(version);
            handle.status().note_restored(crate::RestoredFile {
                path: path.display().to_string(),
                version,
                file_written_at_ms: file_ms,
                published_at_ms: now,
            });
            Some(version)
        }
        Err(e) => {
            log::error!("placement: no usable last-known-good file {}: {e}", path.display());
            None
        }
    }
}

/// Writes the last-known-good file on its own thread so that the file is
/// never stale: after a publish it holds the newest table within
/// `interval` (a trailing write follows the last change of a burst even
/// when nothing comes after it), and [`Writer::flush`] (a graceful stop)
/// writes the newest table at once. Serialising a large table takes a
/// while, so it never runs on a sync loop or a request thread.
///
/// Shared by every source's sync loop: they call [`Writer::notify`] after
/// each publish. The writer registers itself with the handle's
/// [`crate::SyncStatus`], where the proxy finds it to flush on SIGTERM and
/// to show what was written.
#[derive(Clone)]
pub struct Writer {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    path: PathBuf,
    interval: Duration,
    handle: crate::TableHandle,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// A publish came since the last write started.
    dirty: bool,
    /// A flush waits: write now, whatever the interval says.
    flush: bool,
    /// Incremented after every write attempt (flush waits on it).
    rounds: u64,
    written_at: Option<Instant>,
    written_version: u64,
}

/// What the writer did last, for `/debug/snapshot` and the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WrittenFile {
    pub path: String,
    /// Version of the table in the file (0: nothing written yet).
    pub version: u64,
    /// Unix ms of the last successful write (0: never).
    pub written_at_ms: u64,
}

impl Writer {
    /// `path = None` writes nothing. Starts the writer thread.
    pub fn spawn(path: Option<PathBuf>, interval: Duration, handle: &crate::TableHandle) -> Writer {
        let Some(path) = path else {
            return Writer { shared: None };
        };
        let shared = Arc::new(Shared {
            path,
            interval,
            handle: handle.clone(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("last-known-good".into())
            .spawn(move || s.run());
        if let Err(e) = spawned {
            log::error!("placement: cannot start the last-known-good writer: {e}");
            return Writer { shared: None };
        }
        let w = Writer { shared: Some(shared) };
        handle.status().set_last_known_good_writer(w.clone());
        w
    }

    /// A table was published: write it within the interval.
    pub fn notify(&self) {
        if let Some(s) = &self.shared {
            s.lock().dirty = true;
            s.wake.notify_all();
        }
    }

    /// Writes the newest table now if the file does not hold it yet, and
    /// waits for that write (at most `limit`). For a graceful stop.
    pub fn flush(&self, limit: Duration) {
        let Some(s) = &self.shared else { return };
        let mut st = s.lock();
        if st.written_version == s.handle.load().version() || !s.handle.is_ready() {
            return;
        }
        st.flush = true;
        st.dirty = true;
        let round = st.rounds;
        s.wake.notify_all();
        let deadline = Instant::now() + limit;
        while st.rounds == round {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!("placement: last-known-good flush did not finish within {limit:?}");
                return;
            }
            st = s.wake.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The file already holds `version` (it was just read from it).
    pub fn mark_written(&self, version: u64) {
        if let Some(s) = &self.shared {
            s.lock().written_version = version;
        }
    }

    /// The file as last written.
    pub fn written(&self) -> Option<WrittenFile> {
        let s = self.shared.as_ref()?;
        let st = s.lock();
        let ago = st.written_at.map(|t| t.elapsed().as_millis() as u64);
        Some(WrittenFile {
            path: s.path.display().to_string(),
            version: st.written_version,
            written_at_ms: ago.map(|a| crate::now_unix_ms().saturating_sub(a)).unwrap_or(0),
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            let mut st = self.lock();
            while !st.dirty {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            // Not sooner than `interval` after the last write started,
            // unless a flush waits.
            while !st.flush {
                let due = st.written_at.map(|t| t + self.interval);
                let Some(wait) = due.map(|d| d.saturating_duration_since(Instant::now())) else {
                    break;
                };
                if wait.is_zero() {
                    break;
                }
                st = self.wake.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
            }
            st.dirty = false;
            st.flush = false;
            let table = self.handle.load_full();
            let version = table.version();
            let needed = table.is_loaded() && version != st.written_version;
            drop(st);
            let started = Instant::now();
            let result = if needed {
                write(&self.path, &table).map(|_| true)
            } else {
                Ok(false)
            };
            drop(table);
            let mut st = self.lock();
            match result {
                Ok(true) => {
                    st.written_version = version;
                    st.written_at = Some(started);
                    log::debug!(
                        "placement: wrote last-known-good version {version} to {} in {:.2} s",
                        self.path.display(),
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    // Try again after the interval, not in a tight loop.
                    st.written_at = Some(started);
                    st.dirty = true;
                    self.handle.status().error(crate::SyncErrorKind::LastKnownGood);
                    log::error!("placement: cannot write last-known-good {}: {e}", self.path.display());
                }
            }
            st.rounds += 1;
            drop(st);
            self.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_version() {
        let dir = tempfile::tempdir().unwrap();
        let snap: crate::Snapshot = serde_json::from_str(
            r#"{"regions": [{"name": "r", "edge_addr": "127.0.0.1:1"}, {"name": "s", "edge_addr": "127.0.0.1:2"}],
                "clusters": [{"name": "c", "region": "r", "state": "active"}, {"name": "d", "region": "s", "state": "draining", "weight": 7}],
                "vms": [{"id": "v", "cluster": "c", "addr": "127.0.0.1:3", "metrics_addr": "127.0.0.1:4", "state": "draining"}],
                "repls": [{"id": "x", "slug": "x", "owner": "o", "region": "r", "cluster": "c"},
                          {"id": "y", "slug": "y", "region": "s"}],
                "containers": [{"repl_id": "x", "vm_id": "v"}],
                "custom_domains": [{"hostname": "a.example.com", "repl_id": "x"}],
                "tombstones": [{"repl_id": "y", "from_cluster": "c", "to_cluster": "d", "expires_at": "2030-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        let t = RoutingTable::build(&snap, "r", 42).unwrap();
        let path = dir.path().join("sub/lkg.json");
        write(&path, &t).unwrap();
        assert!(!path.with_extension("tmp").exists());
        let (back, skipped) = read(&path, "r").unwrap();
        assert!(skipped.is_empty());
        assert_eq!(back.version(), 42);
        assert_eq!(back.to_snapshot(), t.to_snapshot(), "every row survives the round trip");
    }
}
