//! Raw configuration: exactly what the TOML file says, before validation.
//!
//! Every struct rejects unknown keys (`deny_unknown_fields`) so a typo is an
//! error, not a silently ignored setting. Optional values stay `Option` here;
//! defaults and cross-checks are applied by [`crate::validate()`], which turns
//! a [`RawConfig`] into a [`crate::Config`]. Start reading at [`RawConfig`].

use serde::Deserialize;

/// The whole file, one field per top-level section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub edge: Option<RawEdge>,
    pub hosting: Option<RawHosting>,
    pub placement: Option<RawPlacement>,
    pub balancer: Option<RawBalancer>,
    pub health: Option<RawHealth>,
    pub limits: Option<RawLimits>,
    pub security: Option<RawSecurity>,
    pub tls: Option<RawTls>,
    pub log: Option<RawLog>,
    pub dns: Option<RawDns>,
    pub resolver: Option<RawResolver>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEdge {
    pub region: Option<String>,
    pub instance_id: Option<String>,
    pub listen: Option<Vec<String>>,
    pub admin_listen: Option<String>,
    pub threads: Option<usize>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub grace_period_ms: Option<u64>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHosting {
    pub suffixes: Option<Vec<String>>,
    pub workspace_path_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlacement {
    pub source: Option<String>,
    pub file: Option<String>,
    pub postgres_url: Option<String>,
    pub redis_url: Option<String>,
    pub last_known_good: Option<String>,
    pub shadow: Option<String>,
    pub poll_interval_ms: Option<u64>,
    pub max_shrink_ratio: Option<f64>,
    pub last_known_good_interval_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub query_timeout_ms: Option<u64>,
    pub full_load_timeout_ms: Option<u64>,
    pub redis_poll_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalancer {
    pub policy: Option<String>,
    pub pick_ttl_ms: Option<u64>,
    pub subset_size: Option<usize>,
    pub subset_refresh_ms: Option<u64>,
    pub subset_hysteresis: Option<f64>,
    pub panic_threshold: Option<f64>,
    pub eject_after_failures: Option<u32>,
    pub eject_ms: Option<u64>,
    pub max_ejected_share: Option<f64>,
    pub connect_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub source: Option<String>,
    pub scrape_interval_ms: Option<u64>,
    pub scrape_timeout_ms: Option<u64>,
    pub stale_after_ms: Option<u64>,
    pub prometheus_url: Option<String>,
    pub scrape_concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub keepalive_idle_ms: Option<u64>,
    pub upstream_connect_timeout_ms: Option<u64>,
    pub upstream_read_timeout_ms: Option<u64>,
    pub tunnel_idle_timeout_ms: Option<u64>,
    pub max_hops: Option<u8>,
    pub header_timeout_ms: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_requests_per_connection: Option<u32>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_tunnels: Option<usize>,
    pub replay_body_bytes: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub h2_max_header_list_bytes: Option<usize>,
    pub h2_max_pending_reset_streams: Option<usize>,
    pub h2_max_local_error_resets: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    pub hop_secret_file: Option<String>,
    pub workspace_token_key_file: Option<String>,
    pub workspace_token_public_keys_file: Option<String>,
    pub admin_token_file: Option<String>,
    pub workspace_origins: Option<Vec<String>>,
    pub cert_seal_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Option<Vec<String>>,
    pub certs_dir: Option<String>,
    pub redirect_http: Option<bool>,
    pub reload_interval_ms: Option<u64>,
    pub cert_cache_entries: Option<usize>,
    pub cert_cache_dir: Option<String>,
    pub cert_miss_ttl_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access_log_sample: Option<f64>,
    pub access_log_errors: Option<bool>,
}

/// `[dns] listen` may be one address or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub listen: Option<OneOrMany>,
    pub ttl_seconds: Option<u32>,
    pub moved_ttl_seconds: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResolver {
    pub nameservers: Option<Vec<String>>,
    pub min_ttl_ms: Option<u64>,
    pub max_ttl_ms: Option<u64>,
    pub retry_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}
