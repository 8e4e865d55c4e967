//! The last-known-good placement file: the last table this edge published,
//! written so that an edge restarted while the control plane is away can
//! still serve (static stability).
//!
//! Format: the snapshot JSON of DESIGN §3 plus a top-level `version`.
//! Writes are atomic: a temp file in the same folder, fsync, rename, fsync
//! of the folder; a crash leaves the old file or the new one, never half of
//! one. The sync rate-limits writes; see `placement.last_known_good_interval_ms`.
//! Start at [`write()`] and [`read()`].

use std::io::Write;
use std::path::{Path, PathBuf};
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
            log::warn!(
                "placement: serving last-known-good version {version} from {} ({} repls) until {source} is back",
                path.display(),
                table.counts().repls
            );
            handle.report_skipped(&skipped);
            handle.publish(table, crate::now_unix_ms());
            Some(version)
        }
        Err(e) => {
            log::error!("placement: no usable last-known-good file {}: {e}", path.display());
            None
        }
    }
}

/// Rate-limited writing of the last-known-good file after publishes, shared
/// by every source's sync loop. Serialising a large table takes a while, so
/// the write runs on its own short-lived thread, never on the sync loop.
pub struct Writer {
    path: Option<PathBuf>,
    interval: Duration,
    written_at: Option<Instant>,
    version: u64,
}

impl Writer {
    /// `path = None` writes nothing.
    pub fn new(path: Option<PathBuf>, interval: Duration) -> Writer {
        Writer {
            path,
            interval,
            written_at: None,
            version: 0,
        }
    }

    /// Writes `handle`'s current table if the interval has passed and its
    /// version was not written yet. A failed write is logged and counted.
    pub fn after_publish(&mut self, handle: &crate::TableHandle) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let table = handle.load_full();
        let due = self.written_at.is_none_or(|t| t.elapsed() >= self.interval);
        if !due || table.version() == self.version {
            return;
        }
        self.written_at = Some(Instant::now());
        self.version = table.version();
        let handle = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("last-known-good".into())
            .spawn(move || {
                if let Err(e) = write(&path, &table) {
                    handle.status().error(crate::SyncErrorKind::LastKnownGood);
                    log::error!("placement: cannot write last-known-good {}: {e}", path.display());
                }
            });
        if let Err(e) = spawned {
            log::error!("placement: cannot start the last-known-good writer: {e}");
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
