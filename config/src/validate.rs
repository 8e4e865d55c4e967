//! Raw -> validated: defaults, relative paths, secrets and value checks.
//!
//! Sits between [`crate::raw`] (what the file says) and [`crate::Config`]
//! (what the edge runs with). Each check reports the dotted key it is about;
//! [`Locator`] finds that key's line in the original text so the error reads
//! `file:line: key: message`. Start reading at [`validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::raw::RawConfig;
use crate::*;

/// Finds the line of `section.key` in the TOML text (1-based). Falls back to
/// the section header's line, then to line 1.
struct Locator<'a> {
    file: String,
    text: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, dotted: &str) -> usize {
        let (section, key) = dotted.split_once('.').unwrap_or((dotted, ""));
        let mut in_section = false;
        let mut section_line = None;
        for (i, line) in self.text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with('[') {
                let name = t.trim_matches(|c| c == '[' || c == ']').trim();
                in_section = name == section;
                if in_section && section_line.is_none() {
                    section_line = Some(i + 1);
                }
                continue;
            }
            if in_section && !key.is_empty() {
                if let Some((k, _)) = t.split_once('=') {
                    if k.trim() == key {
                        return i + 1;
                    }
                }
            }
        }
        section_line.unwrap_or(1)
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line_of(key),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map(Duration::from_millis).unwrap_or(default)
}

/// Turns what the file says into a [`Config`], or the first error found.
pub fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let loc = Locator {
        file: path.display().to_string(),
        text,
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };

    // [edge]
    let e = raw.edge.unwrap_or_default();
    let region = e.region.ok_or_else(|| loc.err("edge.region", "required"))?;
    check_name(&region).map_err(|m| loc.err("edge.region", m))?;
    let instance_id = e.instance_id.unwrap_or_else(|| "edge-1".into());
    check_name(&instance_id).map_err(|m| loc.err("edge.instance_id", m))?;
    let listen_raw = e.listen.unwrap_or_else(|| vec![DEFAULT_LISTEN.into()]);
    if listen_raw.is_empty() {
        return Err(loc.err("edge.listen", "at least one listener is required"));
    }
    let mut listen = Vec::with_capacity(listen_raw.len());
    for l in &listen_raw {
        let a: SocketAddr = l
            .parse()
            .map_err(|_| loc.err("edge.listen", format!("{l:?} is not an ip:port address")))?;
        listen.push(a);
    }
    let admin_raw = e.admin_listen.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
    let admin_listen: SocketAddr = admin_raw
        .parse()
        .map_err(|_| loc.err("edge.admin_listen", format!("{admin_raw:?} is not an ip:port address")))?;
    let threads = e.threads.unwrap_or(DEFAULT_THREADS);
    if !(1..=256).contains(&threads) {
        return Err(loc.err("edge.threads", "must be between 1 and 256"));
    }
    let pid_file = resolve(
        &e.pid_file
            .unwrap_or_else(|| format!("/tmp/edgeplane-{instance_id}.pid")),
    );
    let upgrade_sock = resolve(
        &e.upgrade_sock
            .unwrap_or_else(|| format!("/tmp/edgeplane-{instance_id}.sock")),
    );
    let grace_period = ms(e.grace_period_ms, DEFAULT_GRACE_PERIOD);

    // [hosting]
    let h = raw.hosting.unwrap_or_default();
    let mut suffixes = Vec::new();
    for s in h.suffixes.unwrap_or_else(|| vec![DEFAULT_SUFFIX.into()]) {
        let s = s.trim_start_matches('.').trim_end_matches('.').to_ascii_lowercase();
        if s.is_empty() || !s.contains('.') || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return Err(loc.err(
                "hosting.suffixes",
                format!("{s:?} is not a domain suffix like \"repl.co\""),
            ));
        }
        suffixes.push(s);
    }
    if suffixes.is_empty() {
        return Err(loc.err("hosting.suffixes", "at least one hosting suffix is required"));
    }
    let workspace_path_prefix = h
        .workspace_path_prefix
        .unwrap_or_else(|| DEFAULT_WORKSPACE_PATH_PREFIX.into());
    if !workspace_path_prefix.starts_with('/')
        || !workspace_path_prefix.ends_with('/')
        || workspace_path_prefix.len() < 3
    {
        return Err(loc.err(
            "hosting.workspace_path_prefix",
            "must start and end with '/', e.g. \"/__ws/\"",
        ));
    }

    // [placement]
    let p = raw.placement.unwrap_or_default();
    let source = match p.source.as_deref().unwrap_or("file") {
        "file" => {
            let f = p
                .file
                .ok_or_else(|| loc.err("placement.file", "required when source = \"file\""))?;
            PlacementSource::File(resolve(&f))
        }
        "postgres" => PlacementSource::Postgres(
            p.postgres_url
                .ok_or_else(|| loc.err("placement.postgres_url", "required when source = \"postgres\""))?,
        ),
        "redis" => PlacementSource::Redis(
            p.redis_url
                .clone()
                .ok_or_else(|| loc.err("placement.redis_url", "required when source = \"redis\""))?,
        ),
        other => {
            return Err(loc.err(
                "placement.source",
                format!("{other:?} is not one of \"file\", \"postgres\", \"redis\""),
            ))
        }
    };
    let shadow = match p.shadow.as_deref() {
        None | Some("none") | Some("") => None,
        Some("redis") => Some("redis".to_string()),
        Some(other) => return Err(loc.err("placement.shadow", format!("{other:?} is not \"redis\" or \"none\""))),
    };
    if shadow.is_some() {
        if matches!(source, PlacementSource::Redis(_)) {
            return Err(loc.err(
                "placement.shadow",
                "the shadow must be a different store than source (source is already \"redis\")",
            ));
        }
        if p.redis_url.is_none() {
            return Err(loc.err("placement.redis_url", "required when shadow = \"redis\""));
        }
    }
    let redis_poll_interval = ms(p.redis_poll_interval_ms, DEFAULT_REDIS_POLL_INTERVAL);
    if redis_poll_interval < Duration::from_millis(100) {
        return Err(loc.err("placement.redis_poll_interval_ms", "must be at least 100"));
    }
    let max_shrink_ratio = p.max_shrink_ratio.unwrap_or(DEFAULT_MAX_SHRINK_RATIO);
    if !(0.0..=1.0).contains(&max_shrink_ratio) {
        return Err(loc.err("placement.max_shrink_ratio", "must be between 0.0 and 1.0"));
    }
    let poll_interval = ms(p.poll_interval_ms, DEFAULT_POLL_INTERVAL);
    if poll_interval < Duration::from_millis(10) {
        return Err(loc.err("placement.poll_interval_ms", "must be at least 10"));
    }
    let query_timeout = ms(p.query_timeout_ms, DEFAULT_QUERY_TIMEOUT);
    if query_timeout < Duration::from_millis(100) {
        return Err(loc.err("placement.query_timeout_ms", "must be at least 100"));
    }
    let full_load_timeout = ms(p.full_load_timeout_ms, DEFAULT_FULL_LOAD_TIMEOUT);
    if full_load_timeout < query_timeout {
        return Err(loc.err("placement.full_load_timeout_ms", "must be at least query_timeout_ms"));
    }
    let placement = PlacementConfig {
        source,
        last_known_good: p.last_known_good.as_deref().map(resolve),
        shadow,
        poll_interval,
        max_shrink_ratio,
        last_known_good_interval: ms(p.last_known_good_interval_ms, DEFAULT_LAST_KNOWN_GOOD_INTERVAL),
        connect_timeout: ms(p.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT),
        query_timeout,
        full_load_timeout,
        redis_poll_interval,
        redis_url: p.redis_url.clone(),
    };

    // [balancer]
    let b = raw.balancer.unwrap_or_default();
    let policy = match b.policy {
        None => DEFAULT_POLICY,
        Some(p) => Policy::parse(&p).map_err(|m| loc.err("balancer.policy", m))?,
    };
    let pick_ttl = ms(b.pick_ttl_ms, DEFAULT_PICK_TTL);
    if pick_ttl.is_zero() || pick_ttl > MAX_PICK_TTL {
        return Err(loc.err(
            "balancer.pick_ttl_ms",
            format!("must be between 1 and {}", MAX_PICK_TTL.as_millis()),
        ));
    }
    let share = |key: &str, v: Option<f64>, default: f64| -> Result<f64, ConfigError> {
        let v = v.unwrap_or(default);
        if !(0.0..=1.0).contains(&v) {
            return Err(loc.err(key, "must be between 0.0 and 1.0"));
        }
        Ok(v)
    };
    let balancer = BalancerConfig {
        policy,
        pick_ttl,
        subset_size: b.subset_size.unwrap_or(DEFAULT_SUBSET_SIZE),
        subset_refresh: ms(b.subset_refresh_ms, DEFAULT_SUBSET_REFRESH),
        subset_hysteresis: b.subset_hysteresis.unwrap_or(DEFAULT_SUBSET_HYSTERESIS),
        panic_threshold: share("balancer.panic_threshold", b.panic_threshold, DEFAULT_PANIC_THRESHOLD)?,
        eject_after_failures: b.eject_after_failures.unwrap_or(DEFAULT_EJECT_AFTER_FAILURES),
        eject: ms(b.eject_ms, DEFAULT_EJECT),
        max_ejected_share: share(
            "balancer.max_ejected_share",
            b.max_ejected_share,
            DEFAULT_MAX_EJECTED_SHARE,
        )?,
        connect_retries: b.connect_retries.unwrap_or(DEFAULT_CONNECT_RETRIES),
    };
    if balancer.connect_retries > MAX_CONNECT_RETRIES {
        return Err(loc.err(
            "balancer.connect_retries",
            format!("must be at most {MAX_CONNECT_RETRIES}"),
        ));
    }
    if !(1..=4096).contains(&balancer.subset_size) {
        return Err(loc.err("balancer.subset_size", "must be between 1 and 4096"));
    }
    if balancer.subset_refresh < Duration::from_millis(100) {
        return Err(loc.err("balancer.subset_refresh_ms", "must be at least 100"));
    }
    if !(0.0..=4.0).contains(&balancer.subset_hysteresis) {
        return Err(loc.err("balancer.subset_hysteresis", "must be between 0.0 and 4.0"));
    }
    if balancer.eject_after_failures == 0 {
        return Err(loc.err("balancer.eject_after_failures", "must be at least 1"));
    }

    // [health]
    let hr = raw.health.unwrap_or_default();
    let source = match hr.source.as_deref().unwrap_or("scrape") {
        "scrape" => HealthSource::Scrape,
        "prometheus" => {
            let url = hr
                .prometheus_url
                .ok_or_else(|| loc.err("health.prometheus_url", "required when source = \"prometheus\""))?;
            let ok = url
                .strip_prefix("http://")
                .map(|rest| !rest.is_empty() && !rest.starts_with('/'))
                .unwrap_or(false);
            if !ok {
                return Err(loc.err(
                    "health.prometheus_url",
                    format!("{url:?} is not an http://host:port URL"),
                ));
            }
            HealthSource::Prometheus(url.trim_end_matches('/').to_string())
        }
        other => {
            return Err(loc.err(
                "health.source",
                format!("{other:?} is not one of \"scrape\", \"prometheus\""),
            ))
        }
    };
    let scrape_interval = ms(hr.scrape_interval_ms, DEFAULT_SCRAPE_INTERVAL);
    let health = HealthConfig {
        source,
        scrape_interval,
        // Unset, the timeout follows a shorter interval (Prometheus does the same).
        scrape_timeout: ms(hr.scrape_timeout_ms, DEFAULT_SCRAPE_TIMEOUT.min(scrape_interval)),
        stale_after: ms(hr.stale_after_ms, DEFAULT_STALE_AFTER),
        scrape_concurrency: hr.scrape_concurrency.unwrap_or(DEFAULT_SCRAPE_CONCURRENCY),
    };
    if health.scrape_interval < Duration::from_millis(50) {
        return Err(loc.err("health.scrape_interval_ms", "must be at least 50"));
    }
    if health.scrape_timeout.is_zero() || health.scrape_timeout > health.scrape_interval {
        return Err(loc.err(
            "health.scrape_timeout_ms",
            "must be greater than 0 and at most scrape_interval_ms",
        ));
    }
    if health.stale_after < health.scrape_interval {
        return Err(loc.err("health.stale_after_ms", "must be at least scrape_interval_ms"));
    }
    if !(1..=4096).contains(&health.scrape_concurrency) {
        return Err(loc.err("health.scrape_concurrency", "must be between 1 and 4096"));
    }

    // [limits]
    let l = raw.limits.unwrap_or_default();
    let limits = LimitsConfig {
        max_header_bytes: l.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
        max_headers: l.max_headers.unwrap_or(DEFAULT_MAX_HEADERS),
        keepalive_idle: ms(l.keepalive_idle_ms, DEFAULT_KEEPALIVE_IDLE),
        upstream_connect_timeout: ms(l.upstream_connect_timeout_ms, DEFAULT_UPSTREAM_CONNECT_TIMEOUT),
        upstream_read_timeout: ms(l.upstream_read_timeout_ms, DEFAULT_UPSTREAM_READ_TIMEOUT),
        tunnel_idle_timeout: ms(l.tunnel_idle_timeout_ms, DEFAULT_TUNNEL_IDLE_TIMEOUT),
        max_hops: l.max_hops.unwrap_or(DEFAULT_MAX_HOPS),
        header_timeout: ms(l.header_timeout_ms, DEFAULT_HEADER_TIMEOUT),
        body_timeout: ms(l.body_timeout_ms, DEFAULT_BODY_TIMEOUT),
        max_body_bytes: l.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        max_requests_per_connection: l
            .max_requests_per_connection
            .unwrap_or(DEFAULT_MAX_REQUESTS_PER_CONNECTION),
        max_connections: l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        max_connections_per_ip: l.max_connections_per_ip.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
        max_tunnels: l.max_tunnels.unwrap_or(DEFAULT_MAX_TUNNELS),
        replay_body_bytes: l.replay_body_bytes.unwrap_or(DEFAULT_REPLAY_BODY_BYTES),
    };
    if limits.replay_body_bytes > MAX_REPLAY_BODY_BYTES {
        return Err(loc.err(
            "limits.replay_body_bytes",
            format!("must be at most {MAX_REPLAY_BODY_BYTES} (the request retry buffer's size)"),
        ));
    }
    if limits.max_header_bytes < 1024 {
        return Err(loc.err("limits.max_header_bytes", "must be at least 1024"));
    }
    if limits.max_headers < 8 {
        return Err(loc.err("limits.max_headers", "must be at least 8"));
    }
    if limits.keepalive_idle < Duration::from_secs(1) {
        return Err(loc.err("limits.keepalive_idle_ms", "must be at least 1000"));
    }
    for (key, d) in [
        ("limits.upstream_connect_timeout_ms", limits.upstream_connect_timeout),
        ("limits.upstream_read_timeout_ms", limits.upstream_read_timeout),
        ("limits.tunnel_idle_timeout_ms", limits.tunnel_idle_timeout),
        ("limits.header_timeout_ms", limits.header_timeout),
        ("limits.body_timeout_ms", limits.body_timeout),
    ] {
        if d.is_zero() {
            return Err(loc.err(key, "must be greater than 0"));
        }
    }
    if !(1..=8).contains(&limits.max_hops) {
        return Err(loc.err("limits.max_hops", "must be between 1 and 8"));
    }
    for (key, n) in [
        ("limits.max_body_bytes", limits.max_body_bytes as usize),
        (
            "limits.max_requests_per_connection",
            limits.max_requests_per_connection as usize,
        ),
        ("limits.max_connections", limits.max_connections),
        ("limits.max_connections_per_ip", limits.max_connections_per_ip),
        ("limits.max_tunnels", limits.max_tunnels),
    ] {
        if n == 0 {
            return Err(loc.err(key, "must be at least 1"));
        }
    }
    if limits.max_connections_per_ip > limits.max_connections {
        return Err(loc.err("limits.max_connections_per_ip", "must not exceed max_connections"));
    }

    // [security]
    let s = raw.security.unwrap_or_default();
    let read_secret = |key: &str, file: &str| -> Result<Vec<u8>, ConfigError> {
        let path = resolve(file);
        let bytes = std::fs::read(&path).map_err(|e| loc.err(key, format!("cannot read {}: {e}", path.display())))?;
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < 16 {
            return Err(loc.err(key, format!("{} holds fewer than 16 bytes of secret", path.display())));
        }
        Ok(trimmed.to_vec())
    };
    let hop_file = s
        .hop_secret_file
        .ok_or_else(|| loc.err("security.hop_secret_file", "required"))?;
    let hop_secret = read_secret("security.hop_secret_file", &hop_file)?;
    let workspace_token_key = match s.workspace_token_key_file {
        Some(f) => Some(read_secret("security.workspace_token_key_file", &f)?),
        None => None,
    };
    let admin_token = match s.admin_token_file {
        Some(f) => Some(
            String::from_utf8(read_secret("security.admin_token_file", &f)?)
                .map_err(|_| loc.err("security.admin_token_file", "token is not UTF-8"))?,
        ),
        None => None,
    };
    let mut workspace_origins = Vec::new();
    for o in s.workspace_origins.unwrap_or_default() {
        let lower = o.trim_end_matches('/').to_ascii_lowercase();
        let ok = (lower.starts_with("https://") || lower.starts_with("http://"))
            && !lower.split_once("://").map(|(_, h)| h).unwrap_or("").is_empty()
            && !lower.split_once("://").map(|(_, h)| h.contains('/')).unwrap_or(true);
        if !ok {
            return Err(loc.err(
                "security.workspace_origins",
                format!("{o:?} is not an origin (scheme://host[:port])"),
            ));
        }
        workspace_origins.push(lower);
    }
    if !admin_listen.ip().is_loopback() && admin_token.is_none() {
        return Err(loc.err(
            "edge.admin_listen",
            "a non-loopback admin listener needs security.admin_token_file",
        ));
    }

    // [tls]
    // [log]
    let lg = raw.log.unwrap_or_default();
    let log = LogConfig {
        access_log_sample: share("log.access_log_sample", lg.access_log_sample, DEFAULT_ACCESS_LOG_SAMPLE)?,
        access_log_errors: lg.access_log_errors.unwrap_or(true),
    };

    // [dns]
    let d = raw.dns.unwrap_or_default();
    let dns_listen = d
        .listen
        .map(|l| l.into_vec())
        .unwrap_or_else(|| vec![DEFAULT_DNS_LISTEN.to_string()]);
    if dns_listen.is_empty() {
        return Err(loc.err("dns.listen", "at least one address is required"));
    }
    let dns = DnsConfig {
        listen: dns_listen
            .iter()
            .map(|l| {
                l.parse::<SocketAddr>()
                    .map_err(|_| loc.err("dns.listen", format!("{l:?} is not an ip:port address")))
            })
            .collect::<Result<_, _>>()?,
        ttl_seconds: d.ttl_seconds.unwrap_or(DEFAULT_DNS_TTL_SECONDS),
        moved_ttl_seconds: d.moved_ttl_seconds.unwrap_or(DEFAULT_DNS_MOVED_TTL_SECONDS),
    };
    if dns.moved_ttl_seconds > dns.ttl_seconds {
        return Err(loc.err("dns.moved_ttl_seconds", "must not be longer than dns.ttl_seconds"));
    }

    // [resolver]
    let r = raw.resolver.unwrap_or_default();
    let resolver = ResolverConfig {
        nameservers: r
            .nameservers
            .unwrap_or_default()
            .iter()
            .map(|l| {
                l.parse::<SocketAddr>()
                    .map_err(|_| loc.err("resolver.nameservers", format!("{l:?} is not an ip:port address")))
            })
            .collect::<Result<_, _>>()?,
        min_ttl: ms(r.min_ttl_ms, DEFAULT_RESOLVER_MIN_TTL),
        max_ttl: ms(r.max_ttl_ms, DEFAULT_RESOLVER_MAX_TTL),
        retry: ms(r.retry_ms, DEFAULT_RESOLVER_RETRY),
        timeout: ms(r.timeout_ms, DEFAULT_RESOLVER_TIMEOUT),
    };
    if resolver.min_ttl < Duration::from_millis(100) {
        return Err(loc.err("resolver.min_ttl_ms", "must be at least 100"));
    }
    if resolver.max_ttl < resolver.min_ttl {
        return Err(loc.err("resolver.max_ttl_ms", "must be at least resolver.min_ttl_ms"));
    }
    if resolver.retry < Duration::from_millis(100) {
        return Err(loc.err("resolver.retry_ms", "must be at least 100"));
    }
    if resolver.timeout < Duration::from_millis(100) {
        return Err(loc.err("resolver.timeout_ms", "must be at least 100"));
    }

    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let listen_raw = t.listen.unwrap_or_default();
            if listen_raw.is_empty() {
                return Err(loc.err("tls.listen", "at least one HTTPS listener is required in [tls]"));
            }
            let mut tls_listen = Vec::with_capacity(listen_raw.len());
            for l in &listen_raw {
                let a: SocketAddr = l
                    .parse()
                    .map_err(|_| loc.err("tls.listen", format!("{l:?} is not an ip:port address")))?;
                tls_listen.push(a);
            }
            let dir = t
                .certs_dir
                .ok_or_else(|| loc.err("tls.certs_dir", "required in [tls]"))?;
            let certs_dir = resolve(&dir);
            if !certs_dir.is_dir() {
                return Err(loc.err("tls.certs_dir", format!("{} is not a directory", certs_dir.display())));
            }
            let reload_interval = ms(t.reload_interval_ms, DEFAULT_TLS_RELOAD_INTERVAL);
            if reload_interval < Duration::from_millis(100) {
                return Err(loc.err("tls.reload_interval_ms", "must be at least 100"));
            }
            Some(TlsConfig {
                listen: tls_listen,
                certs_dir,
                redirect_http: t.redirect_http.unwrap_or(false),
                reload_interval,
            })
        }
    };

    Ok(Config {
        path: path.to_path_buf(),
        edge: EdgeConfig {
            region,
            instance_id,
            listen,
            admin_listen,
            threads,
            pid_file,
            upgrade_sock,
            grace_period,
        },
        hosting: HostingConfig {
            suffixes,
            workspace_path_prefix,
        },
        placement,
        balancer,
        health,
        limits,
        security: SecurityConfig {
            hop_secret,
            workspace_token_key,
            admin_token,
            workspace_origins,
        },
        tls,
        log,
        dns,
        resolver,
        file_keys: file_keys(text),
    })
}

/// The file's keys flattened to `section.key` -> TOML value (inline form).
fn file_keys(text: &str) -> std::collections::BTreeMap<String, String> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut std::collections::BTreeMap<String, String>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(inner) => walk(&key, inner, out),
                v => {
                    out.insert(key, v.to_string());
                }
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if let Ok(t) = text.parse::<toml::Table>() {
        walk("", &t, &mut out);
    }
    out
}

/// Names (regions, instance ids) are short, printable and header-safe.
fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!("{s:?} may only hold letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(body: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hop.secret"), "  0123456789abcdef0123  \n").unwrap();
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, body).unwrap();
        (dir, path)
    }

    const MINIMAL: &str = "[edge]\nregion = \"us-east1\"\n\n[placement]\nfile = \"snap.json\"\n\n[security]\nhop_secret_file = \"hop.secret\"\n";

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let (dir, path) = setup(MINIMAL);
        let c = crate::load(&path).unwrap();
        assert_eq!(c.edge.region, "us-east1");
        assert_eq!(c.edge.listen, vec![DEFAULT_LISTEN.parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.hosting.suffixes, vec!["repl.co".to_string()]);
        assert_eq!(c.limits.keepalive_idle, DEFAULT_KEEPALIVE_IDLE);
        assert_eq!(c.placement.source, PlacementSource::File(dir.path().join("snap.json")));
        assert_eq!(
            c.security.hop_secret,
            b"0123456789abcdef0123".to_vec(),
            "secret is trimmed"
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let (_d, path) = setup(&format!("{MINIMAL}\n[limits]\nmax_hopz = 3\n"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!(e.line, 11, "{e}");
        assert_eq!(e.key, "limits.max_hopz");
        assert!(e.message.contains("unknown field"), "{e}");
        assert!(e
            .to_string()
            .starts_with(&format!("{}:11: limits.max_hopz: ", path.display())));
    }

    #[test]
    fn bad_value_is_located_by_key() {
        let body = MINIMAL.replace("[edge]\n", "[edge]\nlisten = [\"127.0.0.1:80\", \"nope\"]\n");
        let (_d, path) = setup(&body);
        let e = crate::load(&path).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "edge.listen"), "{e}");
        assert!(e.message.contains("\"nope\""));
    }

    #[test]
    fn wrong_type_is_located() {
        let (_d, path) = setup(&format!("{MINIMAL}[limits]\nmax_hops = \"two\"\n"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!(e.line, 10, "{e}");
        assert_eq!(e.key, "limits.max_hops");
    }

    #[test]
    fn missing_region_and_secret_are_errors() {
        let (_d, path) = setup("[placement]\nfile = \"x.json\"\n");
        assert_eq!(crate::load(&path).unwrap_err().key, "edge.region");
        let (_d, path) = setup(&MINIMAL.replace("hop.secret", "missing.secret"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("security.hop_secret_file", 8));
    }

    #[test]
    fn short_secret_and_open_admin_are_rejected() {
        let (dir, path) = setup(MINIMAL);
        std::fs::write(dir.path().join("hop.secret"), "short\n").unwrap();
        assert!(crate::load(&path).unwrap_err().message.contains("fewer than 16"));
        let (_d, path) = setup(&MINIMAL.replace("[edge]\n", "[edge]\nadmin_listen = \"0.0.0.0:9901\"\n"));
        assert_eq!(crate::load(&path).unwrap_err().key, "edge.admin_listen");
    }

    #[test]
    fn sync_time_limits_are_checked() {
        let c = crate::load(&setup(MINIMAL).1).unwrap();
        assert_eq!(
            (c.placement.query_timeout, c.placement.full_load_timeout),
            (DEFAULT_QUERY_TIMEOUT, DEFAULT_FULL_LOAD_TIMEOUT)
        );
        let (_d, path) = setup(&MINIMAL.replace("[placement]\n", "[placement]\nquery_timeout_ms = 0\n"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("placement.query_timeout_ms", 5), "{e}");
        let body = MINIMAL.replace(
            "[placement]\n",
            "[placement]\nquery_timeout_ms = 5000\nfull_load_timeout_ms = 1000\n",
        );
        let (_d, path) = setup(&body);
        assert_eq!(crate::load(&path).unwrap_err().key, "placement.full_load_timeout_ms");
    }

    #[test]
    fn unknown_policy_and_source_are_rejected() {
        let (_d, path) = setup(&format!("{MINIMAL}[balancer]\npolicy = \"p3c\"\n"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("balancer.policy", 10), "{e}");
        assert!(e.message.contains("\"round-robin\""), "{e}");
        let (_d, path) = setup(&format!("{MINIMAL}[balancer]\npolicy = \"p2c\"\n"));
        assert_eq!(crate::load(&path).unwrap().balancer.policy, Policy::P2c);
        let (_d, path) = setup(&MINIMAL.replace("[placement]\n", "[placement]\nsource = \"etcd\"\n"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("placement.source", 5));
    }

    #[test]
    fn health_section_is_checked() {
        let (_d, path) = setup(&format!("{MINIMAL}[health]\nsource = \"prometheus\"\n"));
        assert_eq!(crate::load(&path).unwrap_err().key, "health.prometheus_url");
        let (_d, path) = setup(&format!(
            "{MINIMAL}[health]\nsource = \"prometheus\"\nprometheus_url = \"http://127.0.0.1:9090/\"\n"
        ));
        let c = crate::load(&path).unwrap();
        assert_eq!(
            c.health.source,
            HealthSource::Prometheus("http://127.0.0.1:9090".into())
        );
        let (_d, path) = setup(&format!(
            "{MINIMAL}[health]\nscrape_interval_ms = 1000\nstale_after_ms = 500\n"
        ));
        let e = crate::load(&path).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("health.stale_after_ms", 11), "{e}");
        let (_d, path) = setup(&format!("{MINIMAL}[balancer]\npanic_threshold = 1.5\n"));
        assert_eq!(crate::load(&path).unwrap_err().key, "balancer.panic_threshold");
    }

    #[test]
    fn an_unset_scrape_timeout_follows_a_shorter_interval() {
        let (_d, path) = setup(&format!("{MINIMAL}[health]\nscrape_interval_ms = 200\n"));
        let c = crate::load(&path).unwrap();
        assert_eq!(
            c.health.scrape_timeout,
            Duration::from_millis(200),
            "as Prometheus does"
        );
        let c = crate::load(&setup(MINIMAL).1).unwrap();
        assert_eq!(c.health.scrape_timeout, DEFAULT_SCRAPE_TIMEOUT);
        // Set explicitly, it must still fit in the interval.
        let (_d, path) = setup(&format!(
            "{MINIMAL}[health]\nscrape_interval_ms = 200\nscrape_timeout_ms = 500\n"
        ));
        assert_eq!(crate::load(&path).unwrap_err().key, "health.scrape_timeout_ms");
    }

    #[test]
    fn retry_and_replay_limits_are_checked() {
        let c = crate::load(&setup(MINIMAL).1).unwrap();
        assert_eq!(
            (c.balancer.connect_retries, c.limits.replay_body_bytes),
            (DEFAULT_CONNECT_RETRIES, DEFAULT_REPLAY_BODY_BYTES)
        );
        let (_d, path) = setup(&format!("{MINIMAL}[balancer]\nconnect_retries = 9\n"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("balancer.connect_retries", 10), "{e}");
        let (_d, path) = setup(&format!("{MINIMAL}[limits]\nreplay_body_bytes = 1048576\n"));
        assert_eq!(crate::load(&path).unwrap_err().key, "limits.replay_body_bytes");
        let (_d, path) = setup(&format!(
            "{MINIMAL}[balancer]\nconnect_retries = 0\n[limits]\nreplay_body_bytes = 0\n"
        ));
        let c = crate::load(&path).unwrap();
        assert_eq!(
            (c.balancer.connect_retries, c.limits.replay_body_bytes),
            (0, 0),
            "both can be turned off"
        );
    }

    #[test]
    fn suffixes_are_normalised() {
        let (_d, path) = setup(&format!(
            "{MINIMAL}[hosting]\nsuffixes = [\".Repl.CO.\", \"example.dev\"]\n"
        ));
        let c = crate::load(&path).unwrap();
        assert_eq!(
            c.hosting.suffixes,
            vec!["repl.co".to_string(), "example.dev".to_string()]
        );
    }

    #[test]
    fn shadow_dns_and_resolver_keys() {
        let with = |extra: &str| MINIMAL.replace("[placement]\n", &format!("[placement]\n{extra}"));
        let (_d, path) = setup(&with("shadow = \"redis\"\n"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("placement.redis_url", 4),
            "the [placement] line: {e}"
        );
        let (_d, path) = setup(&with(
            "source = \"redis\"\nredis_url = \"redis://127.0.0.1/1\"\nshadow = \"redis\"\n",
        ));
        assert_eq!(crate::load(&path).unwrap_err().key, "placement.shadow");
        let (_d, path) = setup(&with(
            "shadow = \"redis\"\nredis_url = \"redis://127.0.0.1/1\"\nredis_poll_interval_ms = 250\n",
        ));
        let c = crate::load(&path).unwrap();
        assert_eq!(c.placement.shadow.as_deref(), Some("redis"));
        assert_eq!(c.placement.redis_poll_interval, Duration::from_millis(250));
        assert_eq!(c.dns.listen, vec![DEFAULT_DNS_LISTEN.parse::<SocketAddr>().unwrap()]);
        assert_eq!((c.dns.ttl_seconds, c.dns.moved_ttl_seconds), (60, 5));
        assert!(c.resolver.nameservers.is_empty(), "system resolver by default");

        let (_d, path) = setup(&format!(
            "{MINIMAL}\n[dns]\nlisten = [\"127.0.0.1:53\", \"[::1]:53\"]\nttl_seconds = 30\n\n\
[resolver]\nnameservers = [\"10.0.0.2:53\"]\nmin_ttl_ms = 500\n"
        ));
        let c = crate::load(&path).unwrap();
        assert_eq!(c.dns.listen.len(), 2);
        assert_eq!(
            c.resolver.nameservers,
            vec!["10.0.0.2:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.resolver.min_ttl, Duration::from_millis(500));
        let (_d, path) = setup(&format!("{MINIMAL}\n[dns]\nttl_seconds = 3\n"));
        assert_eq!(crate::load(&path).unwrap_err().key, "dns.moved_ttl_seconds");
        let (_d, path) = setup(&format!("{MINIMAL}\n[resolver]\nnameservers = [\"dns.local\"]\n"));
        let e = crate::load(&path).unwrap_err();
        assert_eq!(e.key, "resolver.nameservers", "{e}");
    }
}
