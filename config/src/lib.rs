//! edgeplane configuration: TOML in, a typed and validated [`Config`] out.
//!
//! Flow: [`load`] reads the file, parses it into [`raw::RawConfig`] (serde,
//! unknown keys rejected), then [`validate()`] applies the `DEFAULT_*`
//! constants, resolves relative paths against the config file's folder,
//! reads secret files (content trimmed) and checks every value. Any failure
//! is a [`ConfigError`] that prints as `file:line: key: message`, the form
//! `edgeplane check` shows operators. A config that fails to load changes
//! nothing: callers keep the config they had.
//!
//! Invariant: a [`Config`] value is always valid; code downstream never
//! re-checks it. Every key is documented with its default in
//! `config/examples/edgeplane.toml`. Start reading at [`Config`].

pub mod raw;
pub mod reload;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::validate;

/// Default listeners of the proxy service.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default admin listener: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default worker threads of the proxy service.
pub const DEFAULT_THREADS: usize = 2;
/// Default grace period after SIGTERM/SIGQUIT before connections are cut.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Default hosting suffix: apps are `<slug>.repl.co`.
pub const DEFAULT_SUFFIX: &str = "repl.co";
/// Default path prefix of workspace WebSocket sessions (`/__ws/<repl-id>`).
pub const DEFAULT_WORKSPACE_PATH_PREFIX: &str = "/__ws/";
/// How often the postgres sync polls for changes when no NOTIFY arrives
/// (read replicas never deliver NOTIFY).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A full load whose repl count shrinks by more than this share of the
/// table in use is held back, not published (1.0 accepts any non-empty load).
pub const DEFAULT_MAX_SHRINK_RATIO: f64 = 0.5;
/// Minimum time between two writes of the last-known-good file.
pub const DEFAULT_LAST_KNOWN_GOOD_INTERVAL: Duration = Duration::from_secs(30);
/// Connect timeout to PostgreSQL.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `placement.query_timeout_ms`: longest one delta round may take before the
/// PostgreSQL connection is treated as hung and re-established.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// `placement.full_load_timeout_ms`: longest a full load may take.
pub const DEFAULT_FULL_LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Default balancer policy inside a subset.
pub const DEFAULT_POLICY: Policy = Policy::LeastLoaded;
/// VMs of a cluster each edge instance places new repls on (its subset).
pub const DEFAULT_SUBSET_SIZE: usize = 16;
/// How often the subset epoch advances (members rotate).
pub const DEFAULT_SUBSET_REFRESH: Duration = Duration::from_secs(60);
/// A member stays in the subset while it ranks within
/// `subset_size * (1 + hysteresis)`, so a VM flapping in and out of
/// "usable" does not churn the members that replaced it.
pub const DEFAULT_SUBSET_HYSTERESIS: f64 = 0.25;
/// Below this share of a cluster's active VMs being usable, health is
/// ignored and new repls spread over every active VM (Envoy's panic mode).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;
/// Consecutive connect failures to a VM before it is ejected from picks.
pub const DEFAULT_EJECT_AFTER_FAILURES: u32 = 5;
/// How long an ejected VM gets no new repls.
pub const DEFAULT_EJECT: Duration = Duration::from_secs(30);
/// At most this share of a cluster's active VMs is ejected at once
/// (at least one VM may always be ejected).
pub const DEFAULT_MAX_EJECTED_SHARE: f64 = 0.25;
/// How often VM health is read.
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(5);
/// Deadline of one scrape (connect, request and body) or one Prometheus
/// query. Unset, it is this or `scrape_interval_ms`, whichever is shorter
/// (as Prometheus does).
pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// A VM whose last good sample is older than this is not usable.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(15);
/// Scrapes in flight at once.
pub const DEFAULT_SCRAPE_CONCURRENCY: usize = 64;
/// Further VMs tried when the connection to a VM picked for a repl that
/// is not running fails before any byte of the request was written
/// (refused, reset, connect timeout): Envoy's `retry_on: connect-failure`,
/// nginx's `proxy_next_upstream`, HAProxy's `redispatch`.
pub const DEFAULT_CONNECT_RETRIES: u32 = 2;
/// Largest `connect_retries` (each retry may wait a connect timeout).
pub const MAX_CONNECT_RETRIES: u32 = 8;
/// How long the pick of a VM for a not-running repl is remembered, so
/// concurrent first connections of one repl land on one VM.
pub const DEFAULT_PICK_TTL: Duration = Duration::from_secs(10);
/// Largest allowed pick memory (the packed memory counts in 10 ms units).
pub const MAX_PICK_TTL: Duration = Duration::from_secs(60);
/// Total request header bytes above which the edge answers 431 (Envoy: 60 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Header count above which the edge answers 431 (Envoy: 100).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Idle time a client keep-alive connection may wait for its next request.
/// Pingora's default after the first request is forever.
pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// TCP connect timeout to a VM or peer edge.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time to wait for each read from a VM on plain HTTP.
pub const DEFAULT_UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle time after which a WebSocket tunnel is closed.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Forwards between edges allowed in total before the edge answers 508.
pub const DEFAULT_MAX_HOPS: u8 = 2;
/// Time from a request's first byte to the end of its head (or from accept
/// to the end of a TLS handshake). Past it the edge answers 408 and closes:
/// a slowloris client trickling one header byte at a time is cut here,
/// whatever its per-read pace.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next piece of a request body (408 after).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body accepted (413 above; by Content-Length up front,
/// by counting for chunked bodies).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;
/// Largest request body the edge holds so it can send the request again
/// when a VM answers `x-edgeplane-replay` (fly-replay's limit is 1 MB; a
/// body past this is streamed, and its request is not replayed).
pub const DEFAULT_REPLAY_BODY_BYTES: usize = 64 * 1024;
/// Largest `replay_body_bytes` (fly-replay's limit): what one request may
/// hold in memory while it waits to be sent again.
pub const MAX_REPLAY_BODY_BYTES: usize = 1024 * 1024;
/// Requests served on one client connection before the edge closes it
/// (nginx `keepalive_requests`: 1000). Bounds per-connection memory growth
/// and spreads long-lived clients over edges after a deploy.
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: u32 = 1000;
/// Client connections open at once on this edge; past it new connections
/// get 503 and are closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Client connections open at once from one IP address (IPv6: one /64);
/// past it new connections from that address get 429 and are closed
/// (`connections_refused_total{reason="max_connections_per_ip"}`).
///
/// Why 20,000: hosting edges do not cap connections per address by default
/// (Cloudflare, Fly's proxy, Envoy, HAProxy and nginx have no default cap;
/// where one is set, it guards against one host taking the sockets, not
/// against users). A school or campus behind one NAT address is thousands
/// of people, each with an HTTP/2 connection and a workspace WebSocket or
/// two: 5,000 students are ~15,000 connections (the seeds' Monday-morning
/// surge). 1,000, the old default, locked them out. 20,000 is 40 % of
/// `max_connections`: one address can still never take the whole edge.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 20_000;
/// WebSocket tunnels open at once; past it an upgrade gets 503.
pub const DEFAULT_MAX_TUNNELS: usize = 40_000;
/// HTTP/2 streams one connection may have open at once (nginx's default; a
/// browser opens far fewer). More are refused with `REFUSED_STREAM`.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// HTTP/2 streams a client may open and reset before the edge accepted
/// them (the "rapid reset" attack, CVE-2023-44487): past this the
/// connection is closed with `ENHANCE_YOUR_CALM`.
pub const DEFAULT_H2_MAX_PENDING_RESET_STREAMS: usize = 20;
/// HTTP/2 streams the edge may reset for a client's protocol errors on one
/// connection before it closes the connection.
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Share of requests written to the access log: 1 in 100. A busy edge
/// serves tens of thousands of requests a second; the metrics count them
/// all, the log shows examples with their routing decision.
pub const DEFAULT_ACCESS_LOG_SAMPLE: f64 = 0.01;
/// How often the Redis source (primary or shadow) reads the whole legacy
/// store again. Redis has no change log, so every round is a full read;
/// unchanged data is not republished.
pub const DEFAULT_REDIS_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Where `edgeplane dns` answers (UDP and TCP on each address).
pub const DEFAULT_DNS_LISTEN: &str = "0.0.0.0:5353";
/// TTL of an app's A/AAAA answer.
pub const DEFAULT_DNS_TTL_SECONDS: u32 = 60;
/// TTL of the answer for an app that moved recently (a live tombstone or a
/// pending transfer): resolvers come back soon and follow it to its new
/// region.
pub const DEFAULT_DNS_MOVED_TTL_SECONDS: u32 = 5;
/// Shortest time a resolved peer-edge or VM name is kept before it is
/// asked again, whatever TTL the answer carried.
pub const DEFAULT_RESOLVER_MIN_TTL: Duration = Duration::from_secs(1);
/// Longest time a resolved name is kept before it is asked again.
pub const DEFAULT_RESOLVER_MAX_TTL: Duration = Duration::from_secs(300);
/// After a failed lookup, the name is asked again this soon (its last good
/// answer keeps being used meanwhile).
pub const DEFAULT_RESOLVER_RETRY: Duration = Duration::from_secs(2);
/// Deadline of one lookup.
pub const DEFAULT_RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the TLS certificate directory is checked for changes.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// `tls.cert_cache_entries`: parsed certificates kept (a few KiB each).
pub const DEFAULT_CERT_CACHE_ENTRIES: usize = 10_000;
/// `tls.cert_miss_ttl_ms`: how long a miss is remembered.
pub const DEFAULT_CERT_MISS_TTL: Duration = Duration::from_secs(30);

/// A validated edge configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from (for messages and relative paths).
    pub path: PathBuf,
    pub edge: EdgeConfig,
    pub hosting: HostingConfig,
    pub placement: PlacementConfig,
    pub balancer: BalancerConfig,
    pub health: HealthConfig,
    pub limits: LimitsConfig,
    pub security: SecurityConfig,
    /// HTTPS listeners; `None` when `[tls]` is absent.
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
    pub dns: DnsConfig,
    pub resolver: ResolverConfig,
    /// Every key the file sets, flattened (`limits.header_timeout_ms`) to
    /// its TOML value: what a reload compares and `/debug/config` shows.
    pub file_keys: std::collections::BTreeMap<String, String>,
}

/// `[log]`: the sampled access log (logs themselves go to stderr; the
/// format is `edgeplane serve --log-format`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Share of requests written to the access log (0 to 1).
    pub access_log_sample: f64,
    /// Also log every request the edge answered with a 5xx or a forward
    /// loop, whatever the sample says.
    pub access_log_errors: bool,
}

/// `[dns]`: the authoritative responder run by `edgeplane dns`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    pub listen: Vec<SocketAddr>,
    pub ttl_seconds: u32,
    pub moved_ttl_seconds: u32,
}

/// `[resolver]`: how the edge resolves the names it dials (peer edges'
/// `edge_addr`, VM addresses given as `host:port`), in the background.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// Name servers (`ip:port`); empty means the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub retry: Duration,
    pub timeout: Duration,
}

/// `[tls]`: HTTPS listeners whose certificates are chosen by SNI from a
/// directory of PEM pairs (`NAME.crt` + `NAME.key`), reloaded when the
/// directory changes.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    pub certs_dir: PathBuf,
    /// Plain-HTTP listeners answer 308 to the https:// URL (except ACME
    /// HTTP-01 challenges under `/.well-known/acme-challenge/`).
    pub redirect_http: bool,
    pub reload_interval: Duration,
    /// Control-plane certificates kept parsed in memory (an LRU; default
    /// [`DEFAULT_CERT_CACHE_ENTRIES`]).
    pub cert_cache_entries: usize,
    /// Where fetched certificates are kept on disk (their keys sealed as in
    /// the database) for a restart without the database. Default: a
    /// `certs` directory beside `placement.last_known_good`; none without it.
    pub cert_cache_dir: Option<PathBuf>,
    /// A name without a certificate (or whose fetch failed) is not asked
    /// about again for this long (default [`DEFAULT_CERT_MISS_TTL`]),
    /// unless the index learns of its certificate first.
    pub cert_miss_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    /// This edge's region (must exist in the placement snapshot).
    pub region: String,
    /// Stable id of this instance (subsetting seed, request ids, logs).
    pub instance_id: String,
    /// Proxy listeners. Port 0 asks the OS for a free port; the chosen
    /// ports are printed at start-up.
    pub listen: Vec<SocketAddr>,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub grace_period: Duration,
    /// Every connection on the proxy listeners starts with a PROXY protocol
    /// v1 or v2 header from the L4 balancer in front (docs/contract.md §5);
    /// one without a valid header is closed. Default false.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostingConfig {
    /// Lower-case suffixes without leading dot, e.g. `repl.co`.
    pub suffixes: Vec<String>,
    /// Starts and ends with `/`, e.g. `/__ws/`.
    pub workspace_path_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementSource {
    /// A JSON snapshot file (the embedded default; no database).
    File(PathBuf),
    /// The PostgreSQL control plane.
    Postgres(String),
    /// The legacy Redis store.
    Redis(String),
}

/// `url` with the password of its user part (`scheme://user:PASSWORD@host`)
/// replaced by `***`, for anything an operator or a log sees.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

impl std::fmt::Display for PlacementSource {
    /// `file PATH`, or the store and its URL without a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementSource::File(p) => write!(f, "file {}", p.display()),
            PlacementSource::Postgres(u) | PlacementSource::Redis(u) => {
                write!(f, "{} {}", self.kind(), redact_url(u))
            }
        }
    }
}

impl PlacementSource {
    /// The `source` key's value (`file`, `postgres`, `redis`): the label
    /// of `edgeplane_placement_serving`.
    pub fn kind(&self) -> &'static str {
        match self {
            PlacementSource::File(_) => "file",
            PlacementSource::Postgres(_) => "postgres",
            PlacementSource::Redis(_) => "redis",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlacementConfig {
    pub source: PlacementSource,
    pub last_known_good: Option<PathBuf>,
    /// Secondary source compared against the primary ("redis"), if any.
    pub shadow: Option<String>,
    pub poll_interval: Duration,
    pub max_shrink_ratio: f64,
    pub last_known_good_interval: Duration,
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
    pub full_load_timeout: Duration,
    /// How often a Redis source (primary or shadow) reads the store again.
    pub redis_poll_interval: Duration,
    /// The Redis URL, when `source` or `shadow` is "redis".
    pub redis_url: Option<String>,
}

/// How a VM is chosen inside an edge's subset of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Scraped load plus this edge's placements since the sample.
    LeastLoaded,
    /// Power of two random choices, the less loaded wins.
    P2c,
    /// Uniformly random member.
    Random,
    /// Members in turn.
    RoundRobin,
}

impl Policy {
    pub const ALL: [Policy; 4] = [Policy::LeastLoaded, Policy::P2c, Policy::Random, Policy::RoundRobin];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::LeastLoaded => "least-loaded",
            Policy::P2c => "p2c",
            Policy::Random => "random",
            Policy::RoundRobin => "round-robin",
        }
    }

    /// Parses a policy name; the error lists the valid ones.
    pub fn parse(s: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of \"least-loaded\", \"p2c\", \"random\", \"round-robin\""))
    }

    /// Dense index (for per-policy counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    pub policy: Policy,
    pub pick_ttl: Duration,
    pub subset_size: usize,
    pub subset_refresh: Duration,
    pub subset_hysteresis: f64,
    pub panic_threshold: f64,
    pub eject_after_failures: u32,
    pub eject: Duration,
    pub max_ejected_share: f64,
    /// Other VMs tried after a connect failure to a picked VM.
    pub connect_retries: u32,
}

/// Where VM health comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthSource {
    /// The edge scrapes each VM's `metrics_addr` `/metrics`.
    Scrape,
    /// One query to a Prometheus server's HTTP API (`http://host:port`).
    Prometheus(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub source: HealthSource,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub stale_after: Duration,
    pub scrape_concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsConfig {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub keepalive_idle: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub max_hops: u8,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_requests_per_connection: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_tunnels: usize,
    /// Request bodies up to this size are held for a replay.
    pub replay_body_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    /// An HTTP/2 header list's largest size (HPACK-decoded); default
    /// `max_header_bytes`.
    pub h2_max_header_list_bytes: usize,
    pub h2_max_pending_reset_streams: usize,
    pub h2_max_local_error_resets: usize,
}

/// Secrets are held as bytes read from their files (whitespace trimmed).
#[derive(Clone, PartialEq)]
pub struct SecurityConfig {
    pub hop_secret: Vec<u8>,
    /// The shared HMAC key of version 1 workspace tokens: set only while a
    /// fleet migrates to version 2 (docs/contract.md §6).
    pub workspace_token_key: Option<Vec<u8>>,
    /// Public keys of version 2 workspace tokens, in file order (several
    /// during a rotation). Edges hold no key that can mint.
    pub workspace_token_public_keys: Vec<edgeplane_token::PublicKey>,
    pub admin_token: Option<String>,
    /// Origins (`scheme://host[:port]`, lower-case) allowed to open
    /// workspace sessions from a browser. Empty: no Origin check.
    pub workspace_origins: Vec<String>,
    /// The fleet certificate key (`security.cert_seal_key_file`): opens
    /// the private keys of control-plane certificates. None: the edge
    /// serves only `tls.certs_dir`.
    pub cert_seal_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("hop_secret", &"<redacted>")
            .field(
                "workspace_token_key",
                &self.workspace_token_key.as_ref().map(|_| "<redacted>"),
            )
            .field("workspace_token_public_keys", &self.workspace_token_public_keys)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("workspace_origins", &self.workspace_origins)
            .field("cert_seal_key_file", &self.cert_seal_key_file)
            .finish()
    }
}

/// A config error, located in the file: prints as `file:line: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    /// Dotted key path, e.g. `edge.listen`; `-` when the file as a whole is wrong.
    pub key: String,
    pub message: String,
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        // The file as a whole (there is no line to point at).
        line: 1,
        key: "-".into(),
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(path, &text)
}

impl Config {
    /// An error about `key` of this config (dotted, as in the file), at
    /// the key's line: for what only shows once the config is used (the
    /// snapshot its `placement.file` names lacks its `edge.region`). Reads
    /// the file again to find the line; a file gone since points at line 1.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        validate::locate(&self.path, &text, key, message.into())
    }
}

/// Parses and validates `text` as if it were the file at `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of_offset(text, s.start)).unwrap_or(1);
        ConfigError {
            file: path.display().to_string(),
            line,
            key: key_of_toml_error(text, &e),
            message: one_line(e.message()),
        }
    })?;
    validate(path, text, raw)
}

/// A message on one line: the TOML parser's second line ("expected `]`")
/// joined to its first.
fn one_line(message: &str) -> String {
    message
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// 1-based line number of a byte offset.
fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Best-effort dotted key for a parse error: the section header above the
/// error plus the key on the error's line.
fn key_of_toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "-".into();
    };
    let line_no = line_of_offset(text, span.start);
    let mut section = String::new();
    let mut key = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if i + 1 > line_no {
            break;
        }
        if t.starts_with('[') && !t.starts_with("[[") {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
        }
        if i + 1 == line_no {
            if let Some((k, _)) = t.split_once('=') {
                key = k.trim().to_string();
            }
        }
    }
    match (section.is_empty(), key.is_empty()) {
        (true, true) => "-".into(),
        (false, true) => section,
        (true, false) => key,
        (false, false) => format!("{section}.{key}"),
    }
}
