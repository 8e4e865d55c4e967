//! The placement snapshot: the control plane's tables as plain rows.
//!
//! This is the wire shape of docs/contract.md §3: what `source = "file"` reads, what
//! `edgeplane snapshot dump` writes and what `placectl import` loads. One
//! array per table; an absent array is empty; times are RFC 3339 strings.
//! Rows are not trusted: [`crate::table::RoutingTable::build`] validates
//! them and builds the structure the hot path reads. Start at [`Snapshot`].

use serde::{Deserialize, Serialize};

/// All placement rows, as the control plane has them. Unknown top-level
/// keys are rejected (a typo in a hand-written file is an error); unknown
/// fields inside rows are ignored (database rows may gain columns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Source version this snapshot was taken at (0 = unknown). Written into
    /// `last_known_good` files; absent in hand-written snapshots.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    #[serde(default)]
    pub regions: Vec<RegionRow>,
    #[serde(default)]
    pub clusters: Vec<ClusterRow>,
    #[serde(default)]
    pub vms: Vec<VmRow>,
    #[serde(default)]
    pub repls: Vec<ReplRow>,
    #[serde(default)]
    pub containers: Vec<ContainerRow>,
    #[serde(default)]
    pub custom_domains: Vec<CustomDomainRow>,
    #[serde(default)]
    pub tombstones: Vec<TombstoneRow>,
    /// Other regions' apps as the world directory held them (hashed names
    /// and home regions): written into last-known-good files and dumps so a
    /// restart without the database still forwards every app; never
    /// hand-written, and not imported into a database (it has no names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<crate::directory::DirectoryDump>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionRow {
    pub name: String,
    /// `ip:port` of that region's edges.
    pub edge_addr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Active,
    Draining,
}

/// Default cluster weight (docs/contract.md §3: `weight int not null default 100`).
pub const DEFAULT_CLUSTER_WEIGHT: u32 = 100;
/// Largest accepted cluster weight; bounds the ring's size.
pub const MAX_CLUSTER_WEIGHT: u32 = 1000;

fn default_weight() -> u32 {
    DEFAULT_CLUSTER_WEIGHT
}

/// Default size units a VM holds (docs/contract.md §3: `capacity int not
/// null default 100`).
pub const DEFAULT_VM_CAPACITY: i64 = 100;
/// Largest accepted VM capacity.
pub const MAX_VM_CAPACITY: i64 = 1_000_000;
/// Default size units a repl's container needs (`size int not null default 1`).
pub const DEFAULT_REPL_SIZE: i64 = 1;

fn default_capacity() -> i64 {
    DEFAULT_VM_CAPACITY
}

fn default_size() -> i64 {
    DEFAULT_REPL_SIZE
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRow {
    pub name: String,
    pub region: String,
    pub state: ClusterState,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Active,
    Draining,
    Down,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRow {
    pub id: String,
    pub cluster: String,
    /// `ip:port` serving HTTP and WebSocket.
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    pub state: VmState,
    /// Size units the machine holds (machines of one cluster may differ).
    /// Signed so that a bad value is a row error (skipped and counted), not
    /// a file that fails to parse.
    #[serde(default = "default_capacity")]
    pub capacity: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplRow {
    pub id: String,
    pub slug: String,
    #[serde(default)]
    pub owner: Option<String>,
    pub region: String,
    /// Pinned cluster; `None` means placed by the region's ring.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Pending lazy transfer target cluster.
    #[serde(default)]
    pub transfer_to: Option<String>,
    /// Size units its container needs (1 = the usual repl).
    #[serde(default = "default_size")]
    pub size: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRow {
    pub repl_id: String,
    pub vm_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomDomainRow {
    pub hostname: String,
    pub repl_id: String,
}

/// A certificate as the delta stream and the full load carry it: which
/// hostname has one, at which revision (never the PEM or the key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateRow {
    pub hostname: String,
    pub revision: i64,
}

/// An ACME challenge edges answer for the CA (`kind`: `http-01` or
/// `tls-alpn-01`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmeChallengeRow {
    pub token: String,
    pub key_authorization: String,
    pub hostname: String,
    #[serde(default = "http_01")]
    pub kind: String,
    /// RFC 3339.
    pub expires_at: String,
}

fn http_01() -> String {
    "http-01".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TombstoneRow {
    pub repl_id: String,
    pub from_cluster: String,
    pub to_cluster: String,
    /// RFC 3339.
    pub expires_at: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Parses an RFC 3339 time into unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Formats unix milliseconds as RFC 3339 (UTC).
pub fn format_rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_and_absent_arrays_are_empty() {
        let s: Snapshot = serde_json::from_str(
            r#"{"regions":  [{"name": "us-east1", "edge_addr": "127.0.0.1:8080"}],
                "clusters": [{"name": "use1-a", "region": "us-east1", "state": "active", "weight": 100}],
                "vms":      [{"id": "vm-1", "cluster": "use1-a", "addr": "127.0.0.1:7001",
                              "metrics_addr": "127.0.0.1:7101", "state": "active"}],
                "repls":    [{"id": "r1", "slug": "app1", "owner": "u1", "region": "us-east1",
                              "cluster": null, "transfer_to": null}],
                "tombstones": [{"repl_id": "r4", "from_cluster": "use1-a", "to_cluster": "aps1-a",
                                "expires_at": "2030-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(s.repls[0].slug, "app1");
        assert!(s.containers.is_empty() && s.custom_domains.is_empty());
        assert_eq!(parse_rfc3339_ms(&s.tombstones[0].expires_at), Some(1_893_456_000_000));
    }

    #[test]
    fn times_round_trip_and_offsets_are_honoured() {
        assert_eq!(parse_rfc3339_ms("2030-01-01T01:00:00+01:00"), Some(1_893_456_000_000));
        assert_eq!(format_rfc3339_ms(1_893_456_000_000), "2030-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339_ms("tomorrow"), None);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_str::<Snapshot>(r#"{"regions": [], "replz": []}"#).unwrap_err();
        assert!(e.to_string().contains("replz"));
    }
}
