//! The legacy Redis placement store (docs/contract.md §3) as a placement source: what
//! `source = "redis"` serves from, and what `shadow = "redis"` compares
//! with the primary during the strangler-fig migration.
//!
//! Layout (read-only for edgeplane): hash `repl:<id>` {slug, region,
//! cluster, vm (empty when not running), owner?, size?}, set `repls`; hash
//! `vm:<id>` {cluster, addr, state, metrics_addr?, capacity?}, set `vms`; hash
//! `cluster:<name>` {region, state, weight?}, set `clusters`; hash
//! `region:<name>` {edge_addr}, set `regions`. No custom domains, tombstones
//! or lazy transfers. A repl's `cluster` is where the legacy system put it,
//! so it becomes a pinned cluster; `vm` becomes its container.
//!
//! Flow: [`read_store`] reads the sets and pipelines `HGETALL`s in batches
//! ([`PIPELINE_BATCH`]); [`decode`] (pure) turns the hashes into snapshot
//! rows, skipping and counting bad ones (a member whose hash is gone, a
//! missing field, an unknown state); the table is built leniently, so a
//! bad row costs that row, never the load. Redis has no change log, so
//! [`RedisSync`] re-reads the whole store every `redis_poll_interval_ms`;
//! a fingerprint of what was read skips republishing unchanged data. The
//! shrink guard, last-known-good file and "keep serving on error" rules are
//! the PostgreSQL sync's.
//!
//! The store is not read atomically (no snapshot isolation in Redis): a
//! row changed during a read can be seen half-old. The next round fixes it;
//! the shadow comparison counts what it sees. Start at [`RedisSync::round`].

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::snapshot::{ClusterRow, ContainerRow, RegionRow, ReplRow, Snapshot, VmRow};
use crate::table::{RoutingTable, RowError, SkipReason, Skipped, SnapshotError, Strictness};
use crate::{last_known_good, SyncErrorKind, TableHandle};

/// `HGETALL`s sent per pipeline round trip.
pub const PIPELINE_BATCH: usize = 1_000;
/// Default connect and read timeout of the Redis connection.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// One hash as Redis returned it (empty when the key does not exist).
pub type Hash = HashMap<String, String>;

/// The raw content of the legacy store: `(id, hash)` per set member, sorted
/// by id so that decoding and fingerprints do not depend on set order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LegacyStore {
    pub regions: Vec<(String, Hash)>,
    pub clusters: Vec<(String, Hash)>,
    pub vms: Vec<(String, Hash)>,
    pub repls: Vec<(String, Hash)>,
}

/// Why a round failed (the published table keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum RedisSourceError {
    #[error("connect: {0}")]
    Connect(redis::RedisError),
    #[error("read: {0}")]
    Read(redis::RedisError),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    #[error("held back, not published: {0}")]
    HeldBack(String),
}

impl RedisSourceError {
    fn kind(&self) -> SyncErrorKind {
        match self {
            RedisSourceError::Connect(_) => SyncErrorKind::Connect,
            RedisSourceError::Read(_) => SyncErrorKind::Query,
            RedisSourceError::Snapshot(_) => SyncErrorKind::InvalidSnapshot,
            RedisSourceError::HeldBack(_) => SyncErrorKind::HeldBack,
        }
    }
}

/// Reads the whole store over `con`.
pub fn read_store(con: &mut redis::Connection) -> redis::RedisResult<LegacyStore> {
    Ok(LegacyStore {
        regions: read_set(con, "regions", "region:")?,
        clusters: read_set(con, "clusters", "cluster:")?,
        vms: read_set(con, "vms", "vm:")?,
        repls: read_set(con, "repls", "repl:")?,
    })
}

fn read_set(con: &mut redis::Connection, set: &str, prefix: &str) -> redis::RedisResult<Vec<(String, Hash)>> {
    let mut ids: Vec<String> = redis::cmd("SMEMBERS").arg(set).query(con)?;
    ids.sort_unstable();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(PIPELINE_BATCH) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HGETALL").arg(format!("{prefix}{id}"));
        }
        let hashes: Vec<Hash> = pipe.query(con)?;
        out.extend(chunk.iter().cloned().zip(hashes));
    }
    Ok(out)
}

/// Turns the legacy hashes into snapshot rows. Rows that cannot be rows
/// (hash gone, field missing, bad state) are skipped into the returned
/// [`Skipped`]; everything else is left to the table's own validation.
/// Each row is built as JSON and read like a snapshot file's row, so a
/// legacy row is held to the same rules (states, required fields).
pub fn decode(store: &LegacyStore) -> (Snapshot, Skipped) {
    fn field<'h>(h: &'h Hash, k: &str) -> Option<&'h str> {
        h.get(k).map(String::as_str)
    }
    fn non_empty<'h>(h: &'h Hash, k: &str) -> Option<&'h str> {
        field(h, k).filter(|v| !v.is_empty())
    }
    let mut skipped = Skipped::default();
    let regions = rows::<RegionRow>(
        &mut skipped,
        "regions",
        &store.regions,
        |id, h| json!({"name": id, "edge_addr": field(h, "edge_addr")}),
    );
    // Optional integers: absent takes the default; a value that is not an
    // integer stays a string, which the row then fails to read (skipped).
    let integer = |v: &mut Value, h: &Hash, k: &str| {
        if let Some(n) = non_empty(h, k) {
            v[k] = n.parse::<i64>().map(Value::from).unwrap_or(Value::from(n));
        }
    };
    let clusters = rows::<ClusterRow>(&mut skipped, "clusters", &store.clusters, |id, h| {
        let mut v = json!({"name": id, "region": field(h, "region"), "state": field(h, "state")});
        integer(&mut v, h, "weight");
        v
    });
    let vms = rows::<VmRow>(&mut skipped, "vms", &store.vms, |id, h| {
        let mut v = json!({"id": id, "cluster": field(h, "cluster"), "addr": field(h, "addr"),
               "metrics_addr": non_empty(h, "metrics_addr"), "state": field(h, "state")});
        integer(&mut v, h, "capacity");
        v
    });
    let repls = rows::<ReplRow>(&mut skipped, "repls", &store.repls, |id, h| {
        let mut v = json!({"id": id, "slug": field(h, "slug"), "owner": non_empty(h, "owner"),
               "region": field(h, "region"), "cluster": non_empty(h, "cluster")});
        integer(&mut v, h, "size");
        v
    });
    let containers = repls
        .iter()
        .filter_map(|(r, i)| {
            non_empty(&store.repls[*i].1, "vm").map(|vm| ContainerRow {
                repl_id: r.id.clone(),
                vm_id: vm.to_string(),
                started_at: None,
            })
        })
        .collect();
    let snap = Snapshot {
        regions: regions.into_iter().map(|(r, _)| r).collect(),
        clusters: clusters.into_iter().map(|(r, _)| r).collect(),
        vms: vms.into_iter().map(|(r, _)| r).collect(),
        repls: repls.into_iter().map(|(r, _)| r).collect(),
        containers,
        ..Snapshot::default()
    };
    (snap, skipped)
}

/// Reads each `(id, hash)` as a `T` through `to_json`; returns the rows
/// read with their position in `list`.
fn rows<T: serde::de::DeserializeOwned>(
    skipped: &mut Skipped,
    table: &'static str,
    list: &[(String, Hash)],
    to_json: impl Fn(&str, &Hash) -> Value,
) -> Vec<(T, usize)> {
    let mut out = Vec::with_capacity(list.len());
    for (index, (id, h)) in list.iter().enumerate() {
        let err = |reason: SkipReason, message: String| RowError {
            table,
            index,
            key: id.clone(),
            reason,
            message,
        };
        if h.is_empty() {
            skipped.push(err(
                SkipReason::MissingHash,
                format!("in set {table:?} but its hash does not exist"),
            ));
            continue;
        }
        match serde_json::from_value::<T>(to_json(id, h)) {
            Ok(row) => out.push((row, index)),
            Err(e) => skipped.push(err(SkipReason::BadValue, e.to_string())),
        }
    }
    out
}

/// A fingerprint of everything read, to skip republishing unchanged data.
pub fn fingerprint(store: &LegacyStore) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for list in [&store.regions, &store.clusters, &store.vms, &store.repls] {
        h.write_u64(list.len() as u64);
        for (id, hash) in list {
            h.write(id.as_bytes());
            h.write_u8(0);
            let mut fields: Vec<_> = hash.iter().collect();
            fields.sort_unstable();
            for (k, v) in fields {
                h.write(k.as_bytes());
                h.write_u8(1);
                h.write(v.as_bytes());
                h.write_u8(2);
            }
        }
    }
    h.finish()
}

/// Builds the table an edge of `local_region` routes with from a legacy
/// store (lenient: bad rows skipped, all reported in the returned list).
pub fn build_table(
    store: &LegacyStore,
    local_region: &str,
    version: u64,
) -> Result<(RoutingTable, Skipped), SnapshotError> {
    let (snap, mut skipped) = decode(store);
    let (table, more) = RoutingTable::build_with(&snap, local_region, version, Strictness::Lenient)?;
    skipped.merge(more);
    Ok((table, skipped))
}

#[derive(Debug, Clone)]
pub struct RedisSyncOptions {
    pub url: String,
    pub local_region: String,
    pub poll_interval: Duration,
    pub connect_timeout: Duration,
    /// Longest one command or pipeline may take before the connection is
    /// treated as hung and dropped.
    pub read_timeout: Duration,
    pub max_shrink_ratio: f64,
    /// Only for a primary source (a shadow never writes it).
    pub last_known_good: Option<PathBuf>,
    pub last_known_good_interval: Duration,
}

impl RedisSyncOptions {
    pub fn new(url: impl Into<String>, local_region: impl Into<String>) -> RedisSyncOptions {
        RedisSyncOptions {
            url: url.into(),
            local_region: local_region.into(),
            poll_interval: edgeplane_config::DEFAULT_REDIS_POLL_INTERVAL,
            connect_timeout: DEFAULT_REDIS_TIMEOUT,
            read_timeout: DEFAULT_REDIS_TIMEOUT,
            max_shrink_ratio: edgeplane_config::DEFAULT_MAX_SHRINK_RATIO,
            last_known_good: None,
            last_known_good_interval: edgeplane_config::DEFAULT_LAST_KNOWN_GOOD_INTERVAL,
        }
    }
}

/// Called after every successful round with the source's current table
/// (changed or not): the shadow comparison hangs here.
pub type RoundObserver = Box<dyn FnMut(&Arc<RoutingTable>) + Send>;

/// The Redis sync loop's state. See the module docs.
pub struct RedisSync {
    opts: RedisSyncOptions,
    handle: TableHandle,
    client: Option<redis::Client>,
    con: Option<redis::Connection>,
    fingerprint: Option<u64>,
    version: u64,
    lkg: last_known_good::Writer,
}

impl RedisSync {
    pub fn new(opts: RedisSyncOptions, handle: TableHandle) -> RedisSync {
        RedisSync {
            lkg: last_known_good::Writer::spawn(opts.last_known_good.clone(), opts.last_known_good_interval, &handle),
            opts,
            handle,
            client: None,
            con: None,
            fingerprint: None,
            version: 0,
        }
    }

    /// One read of the store for offline tools (`edgeplane route`,
    /// `snapshot dump`): the table it builds, publishing nothing anywhere
    /// else and writing no last-known-good file.
    pub fn load_once(mut opts: RedisSyncOptions) -> Result<Arc<RoutingTable>, RedisSourceError> {
        opts.last_known_good = None;
        let handle = TableHandle::new();
        RedisSync::new(opts, handle.clone()).round()?;
        Ok(handle.load_full())
    }

    /// One read of the store; `Ok(true)` when a new table was published.
    pub fn round(&mut self) -> Result<bool, RedisSourceError> {
        let store = {
            let con = self.connection()?;
            match read_store(con) {
                Ok(s) => s,
                Err(e) => {
                    self.con = None;
                    return Err(RedisSourceError::Read(e));
                }
            }
        };
        self.handle.status().set_connected(true);
        let fp = fingerprint(&store);
        if self.fingerprint == Some(fp) && self.handle.is_ready() {
            return Ok(false);
        }
        let (table, skipped) = build_table(&store, &self.opts.local_region, self.version + 1)?;
        self.handle.report_skipped(&skipped);
        let prev = self.handle.load_full();
        if let Some(why) = crate::postgres::suspicious(&prev, &table, self.opts.max_shrink_ratio) {
            return Err(RedisSourceError::HeldBack(why));
        }
        self.version += 1;
        self.fingerprint = Some(fp);
        self.handle.status().note_full_load();
        self.handle.publish(table, crate::now_unix_ms());
        crate::release_memory();
        self.lkg.notify();
        Ok(true)
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, RedisSourceError> {
        if self.con.is_none() {
            let client = match &self.client {
                Some(c) => c.clone(),
                None => {
                    let c = redis::Client::open(self.opts.url.as_str()).map_err(RedisSourceError::Connect)?;
                    self.client = Some(c.clone());
                    c
                }
            };
            let con = client
                .get_connection_with_timeout(self.opts.connect_timeout)
                .map_err(RedisSourceError::Connect)?;
            con.set_read_timeout(Some(self.opts.read_timeout))
                .and_then(|_| con.set_write_timeout(Some(self.opts.read_timeout)))
                .map_err(RedisSourceError::Connect)?;
            self.con = Some(con);
        }
        Ok(self.con.as_mut().expect("just connected"))
    }

    /// Runs rounds every `poll_interval` until `stop` is set.
    pub fn run(mut self, mut observer: Option<RoundObserver>, stop: Arc<AtomicBool>) {
        let mut first = true;
        while !stop.load(Ordering::Relaxed) {
            match self.round() {
                Ok(published) => {
                    if published {
                        let t = self.handle.load();
                        log::info!(
                            "placement: redis {} read as version {} ({} repls)",
                            edgeplane_config::redact_url(&self.opts.url),
                            t.version(),
                            t.counts().repls
                        );
                    }
                    if let Some(obs) = observer.as_mut() {
                        obs(&self.handle.load_full());
                    }
                }
                Err(e) => {
                    self.handle.status().error(e.kind());
                    if matches!(e, RedisSourceError::Connect(_) | RedisSourceError::Read(_)) {
                        self.handle.status().set_connected(false);
                    }
                    log::warn!(
                        "placement: redis sync: {e}; serving version {}",
                        self.handle.load().version()
                    );
                    if first && !self.handle.is_ready() {
                        self.load_last_known_good();
                    }
                }
            }
            first = false;
            let deadline = std::time::Instant::now() + self.opts.poll_interval;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20).min(self.opts.poll_interval));
            }
        }
    }

    fn load_last_known_good(&mut self) {
        let path = self.opts.last_known_good.as_deref();
        if let Some(v) = last_known_good::restore(path, &self.opts.local_region, &self.handle, "redis") {
            self.version = self.version.max(v);
        }
    }
}

/// Starts a Redis sync on its own thread.
pub fn spawn(
    opts: RedisSyncOptions,
    handle: TableHandle,
    observer: Option<RoundObserver>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("placement-redis".into())
        .spawn(move || RedisSync::new(opts, handle).run(observer, stop))
        .expect("spawn placement-redis")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Hash {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn store() -> LegacyStore {
        LegacyStore {
            regions: vec![("r".into(), h(&[("edge_addr", "127.0.0.1:1")]))],
            clusters: vec![("c".into(), h(&[("region", "r"), ("state", "active")]))],
            vms: vec![(
                "v".into(),
                h(&[("cluster", "c"), ("addr", "127.0.0.1:2"), ("state", "active")]),
            )],
            repls: vec![
                (
                    "a".into(),
                    h(&[("slug", "app-a"), ("region", "r"), ("cluster", "c"), ("vm", "v")]),
                ),
                (
                    "b".into(),
                    h(&[("slug", "app-b"), ("region", "r"), ("cluster", ""), ("vm", "")]),
                ),
            ],
        }
    }

    #[test]
    fn legacy_rows_become_snapshot_rows() {
        let (snap, skipped) = decode(&store());
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(snap.repls[0].cluster.as_deref(), Some("c"), "legacy cluster is a pin");
        assert_eq!(snap.repls[1].cluster, None, "empty cluster: placed by the ring");
        assert_eq!(snap.containers.len(), 1, "empty vm: not running");
        assert_eq!(
            (snap.containers[0].repl_id.as_str(), snap.containers[0].vm_id.as_str()),
            ("a", "v")
        );
        let (t, _) = build_table(&store(), "r", 1).unwrap();
        assert_eq!(t.counts().repls, 2);
        assert_eq!(t.repl_by_slug("app-a").and_then(|r| r.vm.get()), t.vm_by_id("v"));
    }

    #[test]
    fn bad_legacy_rows_are_skipped_and_counted() {
        let mut s = store();
        s.repls.push(("gone".into(), Hash::new()));
        s.repls.push(("noslug".into(), h(&[("region", "r")])));
        s.repls.push((
            "elsewhere".into(),
            h(&[("slug", "x"), ("region", "nowhere"), ("vm", "")]),
        ));
        s.vms.push((
            "bad".into(),
            h(&[("cluster", "c"), ("addr", "1.2.3.4:5"), ("state", "on fire")]),
        ));
        let (t, skipped) = build_table(&s, "r", 1).unwrap();
        assert_eq!(t.counts().repls, 2, "the good rows still load");
        assert_eq!(skipped.counts.get(&("repls", "missing_hash")), Some(&1));
        assert_eq!(skipped.counts.get(&("repls", "bad_value")), Some(&1), "{skipped:?}");
        assert_eq!(skipped.counts.get(&("vms", "bad_value")), Some(&1));
        assert_eq!(
            skipped.counts.get(&("repls", "dangling_reference")),
            Some(&1),
            "{skipped:?}"
        );
        assert_eq!(skipped.total(), 4);
    }

    #[test]
    fn optional_capacity_and_size_are_read_and_bad_ones_skipped() {
        let mut s = store();
        s.vms[0].1.insert("capacity".into(), "400".into());
        s.repls[0].1.insert("size".into(), "150".into());
        s.repls[1].1.insert("size".into(), "big".into());
        s.repls
            .push(("huge".into(), h(&[("slug", "huge"), ("region", "r"), ("size", "401")])));
        s.vms.push((
            "zero".into(),
            h(&[
                ("cluster", "c"),
                ("addr", "1.2.3.4:5"),
                ("state", "active"),
                ("capacity", "0"),
            ]),
        ));
        let (t, skipped) = build_table(&s, "r", 1).unwrap();
        let v = t.vm_by_id("v").unwrap();
        assert_eq!(t.vm(v).capacity, 400);
        assert_eq!(t.repl_by_slug("app-a").unwrap().size, 150);
        // "big" is not a number, 401 fits no VM (the largest holds 400), 0 is no capacity.
        assert_eq!(skipped.counts.get(&("repls", "bad_value")), Some(&2), "{skipped:?}");
        assert_eq!(skipped.counts.get(&("vms", "bad_value")), Some(&1), "{skipped:?}");
        assert_eq!(t.counts().repls, 1);
        let (t, _) = build_table(&store(), "r", 1).unwrap();
        assert_eq!(t.vm(t.vm_by_id("v").unwrap()).capacity, 100, "absent: the default");
    }

    #[test]
    fn fingerprint_follows_content_not_order() {
        let a = store();
        let mut b = store();
        b.repls[0].1.insert("vm".into(), "".into());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let c = store();
        assert_eq!(fingerprint(&a), fingerprint(&c));
    }
}
