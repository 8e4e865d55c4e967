//! Starting the placement sources an edge (or `edgeplane dns`) routes
//! with: a file loaded now and watched, PostgreSQL or Redis synced by
//! background threads, and in shadow mode Redis read beside the primary
//! and compared with it. What comes out is the [`TableHandle`] every
//! request reads (one atomic load) and, in shadow mode, the controls the
//! admin API exposes.
//!
//! Offline commands (`edgeplane route`, `snapshot dump`) read the
//! placement once instead, without starting anything:
//! [`read_placement_once`] (the store, else its last-known-good file,
//! saying which).
//!
//! Start at [`load_placement_for`].

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use edgeplane_config::ConfigError;
use edgeplane_config::{Config, PlacementSource};
use edgeplane_control_sync::file_source::{FileSource, DEFAULT_WATCH_INTERVAL};
use edgeplane_control_sync::postgres::{self, PgSyncOptions};
use edgeplane_control_sync::redis_source::{self, RedisSyncOptions, RoundObserver};
use edgeplane_control_sync::shadow::{self, ShadowControl, ShadowState};
use edgeplane_control_sync::switch::SourceSwitch;
use edgeplane_control_sync::{last_known_good, RoutingTable, SnapshotError, TableHandle};

/// Longest a graceful stop waits for the last-known-good file to be written.
pub const STOP_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The placement an edge serves from: the handle requests read, and in
/// shadow mode the comparison state and the runtime source switch.
pub struct Placement {
    pub table: TableHandle,
    pub shadow: Option<ShadowControl>,
}

fn redis_options(cfg: &Config, url: &str, primary: bool) -> RedisSyncOptions {
    let p = &cfg.placement;
    RedisSyncOptions {
        poll_interval: p.redis_poll_interval,
        connect_timeout: p.connect_timeout,
        read_timeout: p.query_timeout,
        max_shrink_ratio: p.max_shrink_ratio,
        last_known_good: if primary { p.last_known_good.clone() } else { None },
        last_known_good_interval: p.last_known_good_interval,
        ..RedisSyncOptions::new(url, cfg.edge.region.clone())
    }
}

fn pg_options(cfg: &Config, url: &str, last_known_good: Option<PathBuf>) -> PgSyncOptions {
    let p = &cfg.placement;
    PgSyncOptions {
        url: url.to_string(),
        local_region: cfg.edge.region.clone(),
        poll_interval: p.poll_interval,
        max_shrink_ratio: p.max_shrink_ratio,
        last_known_good,
        last_known_good_interval: p.last_known_good_interval,
        connect_timeout: p.connect_timeout,
        query_timeout: p.query_timeout,
        full_load_timeout: p.full_load_timeout,
    }
}

/// A table read once by an offline command, and where it came from (one
/// line for the operator: the file, the store and its version, or the
/// last-known-good file the store's absence fell back on).
pub struct OfflineTable {
    pub table: Arc<RoutingTable>,
    pub origin: String,
}

/// Reads the configured placement once, starting no sync and writing no
/// file: a snapshot file as the edge loads it; PostgreSQL or Redis with one
/// full read, else (the store away) the last-known-good file, saying so.
/// With neither there is nothing to show: an error at the store's key.
pub fn read_placement_once(cfg: &Config) -> Result<OfflineTable, ConfigError> {
    let (kind, key, read) = match &cfg.placement.source {
        PlacementSource::File(path) => {
            let mut src = FileSource::new(path, &cfg.edge.region);
            let handle = TableHandle::new();
            src.load_into(&handle).map_err(|e| located(cfg, e))?;
            let table = handle.load_full();
            let origin = format!("snapshot file {} (version {})", path.display(), table.version());
            return Ok(OfflineTable { table, origin });
        }
        PlacementSource::Postgres(url) => (
            "postgres",
            "placement.postgres_url",
            postgres::load_once(&pg_options(cfg, url, None))
                .map(|(t, _)| Arc::new(t))
                .map_err(|e| e.to_string()),
        ),
        PlacementSource::Redis(url) => (
            "redis",
            "placement.redis_url",
            redis_source::RedisSync::load_once(redis_options(cfg, url, false)).map_err(|e| e.to_string()),
        ),
    };
    let store_error = match read {
        Ok(table) => {
            let origin = format!("{kind} (version {})", table.version());
            return Ok(OfflineTable { table, origin });
        }
        Err(e) => e,
    };
    let Some(lkg) = &cfg.placement.last_known_good else {
        return Err(cfg.error_at(
            key,
            format!("cannot read the placement from {kind} ({store_error}), and placement.last_known_good is not set"),
        ));
    };
    match last_known_good::read(lkg, &cfg.edge.region) {
        Ok((table, _)) => {
            let age = std::fs::metadata(lkg)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map_or(String::new(), |d| format!(", written {} s ago", d.as_secs()));
            let origin = format!(
                "last-known-good file {} (version {}{age}): {kind} is unreachable ({store_error})",
                lkg.display(),
                table.version()
            );
            Ok(OfflineTable {
                table: Arc::new(table),
                origin,
            })
        }
        Err(e) => Err(cfg.error_at(
            key,
            format!(
                "cannot read the placement from {kind} ({store_error}), nor the last-known-good file {} ({e})",
                lkg.display()
            ),
        )),
    }
}

/// Starts the configured placement source: a file is loaded now (an error
/// stops the start) and watched; PostgreSQL and Redis are synced by
/// background threads (the edge is not ready until one publishes, or until
/// the last-known-good file is loaded when the store is away).
///
/// With `placement.shadow = "redis"`, the primary publishes into its own
/// handle, the Redis store is read into another beside it, and a
/// [`SourceSwitch`] serves the primary's tables (until an operator switches);
/// after every Redis round the two are compared ([`shadow::compare`]).
pub fn load_placement(cfg: &Config) -> Result<Placement, ConfigError> {
    load_placement_for(cfg, PlacementUser::Edge)
}

/// Which process loads the placement: the table is the same (this region's
/// repls and the world directory), but the DNS responder runs no shadow
/// and keeps its own last-known-good file (`<last_known_good>.dns.json`)
/// so it never clobbers the edge's on the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementUser {
    Edge,
    Dns,
}

/// [`load_placement`] for `user`.
pub fn load_placement_for(cfg: &Config, user: PlacementUser) -> Result<Placement, ConfigError> {
    let serving = TableHandle::new();
    let dns = user == PlacementUser::Dns;
    let lkg = cfg
        .placement
        .last_known_good
        .clone()
        .map(|p| if dns { p.with_extension("dns.json") } else { p });
    let primary_name = cfg.placement.source.kind();
    let (primary, shadow) = match (&cfg.placement.shadow, &cfg.placement.redis_url) {
        (Some(_), Some(url)) if !dns => {
            let primary = TableHandle::with_status(serving.status_arc());
            let shadow_handle = TableHandle::new();
            let switch = SourceSwitch::new(
                serving.clone(),
                vec![(primary_name, primary.clone()), ("redis", shadow_handle.clone())],
            );
            let control = ShadowControl {
                state: Arc::new(ShadowState::new("redis")),
                switch,
            };
            let (state, against) = (control.state.clone(), primary.clone());
            let observer: RoundObserver = Box::new(move |shadow_table| {
                let p = against.load_full();
                if p.is_loaded() {
                    state.record(shadow::compare(&p, shadow_table), edgeplane_control_sync::now_unix_ms());
                }
            });
            redis_source::spawn(
                redis_options(cfg, url, false),
                shadow_handle,
                Some(observer),
                runs_for_process_life(),
            );
            (primary, Some(control))
        }
        _ => (serving.clone(), None),
    };
    match &cfg.placement.source {
        PlacementSource::File(path) => {
            let mut src = FileSource::new(path, &cfg.edge.region);
            src.load_into(&primary).map_err(|e| located(cfg, e))?;
            src.watch(primary, DEFAULT_WATCH_INTERVAL, runs_for_process_life());
        }
        PlacementSource::Postgres(url) => {
            postgres::spawn(pg_options(cfg, url, lkg), primary, runs_for_process_life());
        }
        PlacementSource::Redis(url) => {
            let mut opts = redis_options(cfg, url, true);
            opts.last_known_good = lkg;
            redis_source::spawn(opts, primary, None, runs_for_process_life());
        }
    }
    Ok(Placement { table: serving, shadow })
}

/// A placement load error where the operator fixes it, as
/// `file:line: key: message`: in the snapshot file (its line, the row), or
/// in the config (`edge.region` a snapshot lacks, a `placement.file` that
/// cannot be read).
pub fn located(cfg: &Config, e: SnapshotError) -> ConfigError {
    match e {
        SnapshotError::At {
            file,
            line,
            key,
            message,
        } => ConfigError {
            file,
            line,
            key,
            message,
        },
        SnapshotError::Io { path, message } => cfg.error_at("placement.file", format!("cannot read {path}: {message}")),
        SnapshotError::UnknownLocalRegion(r) => cfg.error_at(
            "edge.region",
            format!("region {r:?} is not a region of the placement snapshot"),
        ),
        SnapshotError::Row(row) => cfg.error_at("placement", row.to_string()),
    }
}

/// The stop flag of a placement source that runs until the process exits:
/// the edge serves from its table to the last request of a drain, so its
/// sync never stops first (tools and tests stop theirs by setting it).
fn runs_for_process_life() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}
