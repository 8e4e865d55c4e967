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
        return Err(SnapshotError::At {
            file: path.display().to_string(),
            line: 1,
            key: "-".into(),
            message: format!("larger than {MAX_SNAPSHOT_FILE_BYTES} bytes"),
        });
    }
    let file = std::fs::File::open(path).map_err(io)?;
    serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
        // serde_json says "… at line L column C": the line goes in front.
        let text = e.to_string();
        let message = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(m, _)| m)
            .to_string();
        SnapshotError::At {
            file: path.display().to_string(),
            line: e.line().max(1),
            key: "-".into(),
            message: format!("{message} (column {})", e.column()),
        }
    })
}

/// Locates a row error in the snapshot file: the line where element
/// `index` of the top-level array `table` starts.
fn located_row(path: &Path, e: crate::table::RowError) -> SnapshotError {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    SnapshotError::At {
        file: path.display().to_string(),
        line: json_element_line(&text, e.table, e.index).unwrap_or(1),
        key: format!("{}[{}]", e.table, e.index),
        message: format!("{} (row {:?})", e.message, e.key),
    }
}

/// 1-based line of element `index` of the array under top-level key `key`
/// in JSON `text`; None if there is no such element. Follows strings and
/// nesting only (the text has parsed as JSON already).
fn json_element_line(text: &str, key: &str, index: usize) -> Option<usize> {
    let b = text.as_bytes();
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    // Some(n): inside the wanted array, n elements begun so far.
    let mut in_array: Option<usize> = None;
    let mut expect_element = false;
    let mut last_string: (usize, usize) = (0, 0);
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
        }
        if in_array.is_some() && depth == 2 && expect_element && !c.is_ascii_whitespace() && c != b']' {
            let n = in_array.unwrap();
            if n == index {
                return Some(line);
            }
            in_array = Some(n + 1);
            expect_element = false;
        }
        match c {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    } else if b[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                last_string = (start, i.min(b.len()));
            }
            b'{' | b'[' => {
                depth += 1;
                if c == b'[' && depth == 2 && in_array.is_none() && &text[last_string.0..last_string.1] == key {
                    in_array = Some(0);
                    expect_element = true;
                }
            }
            b'}' | b']' => {
                if depth == 2 && in_array.is_some() {
                    return None;
                }
                depth = depth.saturating_sub(1);
            }
            b',' if depth == 2 && in_array.is_some() => expect_element = true,
            _ => {}
        }
        i += 1;
    }
    None
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
        let table = RoutingTable::build(&snap, &self.local_region, self.next_version).map_err(|e| match e {
            SnapshotError::Row(row) => located_row(&self.path, row),
            other => other,
        })?;
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
                let keeping = handle.load().version();
                match &e {
                    // Names its file already.
                    SnapshotError::At { .. } => log::error!("placement: rejected {e}; keeping version {keeping}"),
                    _ => log::error!(
                        "placement: rejected {}: {e}; keeping version {keeping}",
                        self.path.display()
                    ),
                }
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

    #[test]
    fn a_row_is_found_on_its_line() {
        let text = "{\"regions\": [{\"name\": \"a]\\\"\"}],\n \"repls\": [\n  {\"id\": \"x\", \"tags\": [1, 2]},\n  {\"id\": \"y\"}\n ]}";
        assert_eq!(json_element_line(text, "repls", 0), Some(3));
        assert_eq!(json_element_line(text, "repls", 1), Some(4));
        assert_eq!(json_element_line(text, "repls", 2), None);
        assert_eq!(json_element_line(text, "regions", 0), Some(1));
        assert_eq!(json_element_line(text, "vms", 0), None);
    }

    #[test]
    fn errors_name_the_snapshot_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, "{\"regions\": [\n  {\"name\": \"r\", \"edge_addr\": \"127.0.0.1:1\"},\n  {\"name\": \"r\", \"edge_addr\": \"127.0.0.1:2\"}\n]}").unwrap();
        let e = FileSource::new(&path, "r").load_table().unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}:3: regions[1]: duplicate region name (row \"r\")", path.display())
        );
        std::fs::write(&path, "{\"regions\": [\n").unwrap();
        let e = FileSource::new(&path, "r").load_table().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2: -: EOF while parsing a list", path.display())),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

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
        assert!(matches!(src.load_into(&handle), Err(SnapshotError::At { .. })));
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
