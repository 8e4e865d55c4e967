//! The `file` placement source: a JSON snapshot on disk (docs/contract.md §3).
//!
//! Where it sits: the embedded default source, used by the demo and tests;
//! the edge loads it at start and a watcher thread reloads it when its
//! modification time or size changes. A file that does not parse or does
//! not validate is rejected whole; the previous table keeps serving and the
//! rejection is counted and logged.
//!
//! Start reading at [`FileSource::load_table`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::snapshot::Snapshot;
use crate::table::{RoutingTable, SnapshotError};
use crate::TableHandle;

/// Largest snapshot file accepted (a runaway generator must not exhaust memory).
pub const MAX_SNAPSHOT_FILE_BYTES: u64 = 2 << 30;
/// How often the watcher checks the file for changes.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Reads and decodes a snapshot file (no validation beyond the JSON shape).
pub fn read_snapshot(path: &Path) -> Result<Snapshot, SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_SNAPSHOT_FILE_BYTES {
        return Err(SnapshotError::Decode(format!(
            "{} is larger than {MAX_SNAPSHOT_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| SnapshotError::Decode(format!("{}: {e}", path.display())))
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A snapshot file feeding one edge region's table.
pub struct FileSource {
    path: PathBuf,
    local_region: String,
    next_version: u64,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>, local_region: impl Into<String>) -> FileSource {
        FileSource {
            path: path.into(),
            local_region: local_region.into(),
            next_version: 1,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and builds a table; each success gets the next version.
    pub fn load_table(&mut self) -> Result<RoutingTable, SnapshotError> {
        let snap = read_snapshot(&self.path)?;
        let table = RoutingTable::build(&snap, &self.local_region, self.next_version)?;
        self.next_version += 1;
        Ok(table)
    }

    /// Loads and publishes once; on error the handle keeps its table.
    pub fn load_into(&mut self, handle: &TableHandle) -> Result<u64, SnapshotError> {
        match self.load_table() {
            Ok(t) => {
                let v = t.version();
                let c = t.counts();
                handle.publish(t, crate::now_unix_ms());
                log::info!(
                    "placement: published version {v} from {} ({} repls, {} vms, {} clusters)",
                    self.path.display(),
                    c.repls,
                    c.vms,
                    c.clusters
                );
                Ok(v)
            }
            Err(e) => {
                handle.note_rejected();
                log::error!(
                    "placement: rejected {}: {e}; keeping version {}",
                    self.path.display(),
                    handle.load().version()
                );
                Err(e)
            }
        }
    }

    /// Starts a thread that reloads the file whenever it changes, until
    /// `stop` is set. Errors keep the previous table.
    pub fn watch(
        mut self,
        handle: TableHandle,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let mut last = stamp(&self.path);
        std::thread::Builder::new()
            .name("placement-file".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    let now = stamp(&self.path);
                    if now.is_some() && now != last {
                        last = now;
                        let _ = self.load_into(&handle);
                    }
                }
            })
            .expect("spawn placement watcher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"regions": [{"name": "r", "edge_addr": "127.0.0.1:1"}],
        "clusters": [{"name": "c", "region": "r", "state": "active"}],
        "repls": [{"id": "x", "slug": "x", "region": "r"}]}"#;

    #[test]
    fn bad_file_keeps_previous_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, GOOD).unwrap();
        let handle = TableHandle::new();
        assert!(!handle.is_ready());
        let mut src = FileSource::new(&path, "r");
        assert_eq!(src.load_into(&handle).unwrap(), 1);
        assert!(handle.is_ready());

        std::fs::write(
            &path,
            GOOD.replace("\"region\": \"r\"}]}", "\"region\": \"nowhere\"}]}"),
        )
        .unwrap();
        let e = src.load_into(&handle).unwrap_err();
        assert!(e.to_string().contains("repls[0]"), "{e}");
        assert_eq!(handle.load().version(), 1);
        assert!(handle.load().repl_by_slug("x").is_some());
        assert_eq!(handle.rejected(), 1);

        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(src.load_into(&handle), Err(SnapshotError::Decode(_))));
        assert_eq!(handle.rejected(), 2);
        assert_eq!(handle.load().version(), 1);
    }

    #[test]
    fn watcher_picks_up_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, GOOD).unwrap();
        let handle = TableHandle::new();
        let mut src = FileSource::new(&path, "r");
        src.load_into(&handle).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let th = src.watch(handle.clone(), Duration::from_millis(20), stop.clone());
        std::fs::write(&path, GOOD.replace("\"slug\": \"x\"", "\"slug\": \"renamed-app\"")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while handle.load().repl_by_slug("renamed-app").is_none() {
            assert!(std::time::Instant::now() < deadline, "watcher never reloaded");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(handle.load().version(), 2);
        stop.store(true, Ordering::Relaxed);
        th.join().unwrap();
    }
}
