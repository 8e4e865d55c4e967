//! Which placement source the edge serves from, switchable at runtime.
//!
//! Where it sits: in shadow mode (`placement.shadow = "redis"`) two sources
//! run side by side, each publishing into its own [`TableHandle`]. The edge
//! reads one *serving* handle. A [`SourceSwitch`] forwards every publish of
//! the selected source into the serving handle (the same `Arc`, no copy);
//! publishes of the other source stay in its own handle, where the shadow
//! comparison reads them. [`SourceSwitch::select`] makes another source the
//! one served — the operator's quick path back to the legacy store (or
//! forward to the new one) without a restart.
//!
//! Invariants: readers still do one atomic load of the serving handle; the
//! serving table only ever comes from the selected source (a lock orders a
//! switch against a concurrent publish, on the writer side only); a source
//! that has loaded nothing cannot be selected. Start at [`SourceSwitch::new`].

use std::sync::{Arc, Mutex};

use crate::table::RoutingTable;
use crate::TableHandle;

/// Why a switch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    #[error("unknown placement source {0:?} (this edge runs {1})")]
    Unknown(String, String),
    #[error("source {0:?} has not loaded a table yet; still serving {1:?}")]
    NotLoaded(String, &'static str),
}

/// See the module docs.
pub struct SourceSwitch {
    serving: TableHandle,
    sources: Vec<(&'static str, TableHandle)>,
    selected: Mutex<usize>,
}

impl SourceSwitch {
    /// Wires `sources` (name, own handle) to `serving`; the first source is
    /// selected. Each source handle may belong to one switch only.
    pub fn new(serving: TableHandle, sources: Vec<(&'static str, TableHandle)>) -> Arc<SourceSwitch> {
        assert!(!sources.is_empty(), "a switch needs a source");
        let sw = Arc::new(SourceSwitch {
            serving,
            sources,
            selected: Mutex::new(0),
        });
        for (i, (_, h)) in sw.sources.iter().enumerate() {
            let _ = h.inner.mirror.set((Arc::downgrade(&sw), i));
        }
        sw
    }

    /// The name of the source being served.
    pub fn selected(&self) -> &'static str {
        self.sources[*self.lock()].0
    }

    /// Names of the sources, in wiring order.
    pub fn names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|(n, _)| *n).collect()
    }

    /// A source's own handle (its latest table, served or not).
    pub fn source(&self, name: &str) -> Option<&TableHandle> {
        self.sources.iter().find(|(n, _)| *n == name).map(|(_, h)| h)
    }

    /// Serves `name`'s latest table from now on. Selecting the source
    /// already served is a no-op.
    pub fn select(&self, name: &str, now_ms: u64) -> Result<(), SwitchError> {
        let Some(idx) = self.sources.iter().position(|(n, _)| *n == name) else {
            return Err(SwitchError::Unknown(name.to_string(), self.names().join(", ")));
        };
        let mut sel = self.lock();
        if *sel == idx {
            return Ok(());
        }
        let table = self.sources[idx].1.load_full();
        if !table.is_loaded() {
            return Err(SwitchError::NotLoaded(name.to_string(), self.sources[*sel].0));
        }
        *sel = idx;
        let old = self.serving.serve_shared(table, now_ms);
        drop(sel);
        log::warn!("placement: now serving source {name:?} (switched at runtime)");
        super::retire(old);
        Ok(())
    }

    /// Called by a source handle's publish: serves `table` if that source
    /// is selected, returning the table it replaced.
    pub(crate) fn offer(&self, idx: usize, table: Arc<RoutingTable>, now_ms: u64) -> Option<Arc<RoutingTable>> {
        let sel = self.lock();
        (*sel == idx).then(|| self.serving.serve_shared(table, now_ms))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.selected.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Snapshot;

    fn table(slug: &str, version: u64) -> RoutingTable {
        let s: Snapshot = serde_json::from_str(&format!(
            r#"{{"regions": [{{"name": "r", "edge_addr": "127.0.0.1:1"}}],
                "clusters": [{{"name": "c", "region": "r", "state": "active"}}],
                "repls": [{{"id": "x", "slug": "{slug}", "region": "r"}}]}}"#
        ))
        .unwrap();
        RoutingTable::build(&s, "r", version).unwrap()
    }

    fn served_slug(h: &TableHandle) -> String {
        h.load()
            .repl_by_id("x")
            .map(|r| r.slug().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn only_the_selected_source_reaches_the_serving_handle() {
        let serving = TableHandle::new();
        let (pg, redis) = (TableHandle::new(), TableHandle::new());
        let sw = SourceSwitch::new(
            serving.clone(),
            vec![("postgres", pg.clone()), ("redis", redis.clone())],
        );
        assert_eq!(
            sw.select("redis", 1),
            Err(SwitchError::NotLoaded("redis".into(), "postgres")),
            "nothing loaded yet"
        );
        pg.publish(table("from-pg", 1), 1);
        redis.publish(table("from-redis", 1), 1);
        assert_eq!(served_slug(&serving), "from-pg", "postgres is selected first");
        assert_eq!(sw.selected(), "postgres");

        sw.select("redis", 2).unwrap();
        assert_eq!(
            served_slug(&serving),
            "from-redis",
            "switch serves redis's latest at once"
        );
        pg.publish(table("pg-2", 2), 3);
        assert_eq!(
            served_slug(&serving),
            "from-redis",
            "postgres publishes stay in its own handle"
        );
        assert_eq!(served_slug(&pg), "pg-2");
        redis.publish(table("redis-2", 2), 4);
        assert_eq!(served_slug(&serving), "redis-2");

        sw.select("postgres", 5).unwrap();
        assert_eq!(served_slug(&serving), "pg-2");
        assert!(matches!(sw.select("etcd", 6), Err(SwitchError::Unknown(..))));
        assert!(Arc::ptr_eq(&serving.load_full(), &pg.load_full()), "shared, not copied");
    }
}
