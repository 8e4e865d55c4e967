//! One check per config section: raw section in, validated section (or the
//! first error, located at its key) out.
//!
//! Each function applies the section's `DEFAULT_*`s, resolves its paths
//! against the config file's directory and checks its ranges. Rules that span
//! sections live in [`super::validate()`]. The order of functions is the order
//! of sections in `config/examples/edgeplane.toml`.

use std::time::Duration;

use super::{check_name, ms, Checker};
use crate::raw::*;
use crate::*;

type Checked<T> = Result<T, ConfigError>;

impl Checker<'_> {
    pub(super) fn edge(&self, e: RawEdge) -> Checked<EdgeConfig> {
        let region = e.region.ok_or_else(|| self.err("edge.region", "required"))?;
        check_name(&region).map_err(|m| self.err("edge.region", m))?;
        let instance_id = e.instance_id.unwrap_or_else(|| "edge-1".into());
        check_name(&instance_id).map_err(|m| self.err("edge.instance_id", m))?;
        let listen_raw = e.listen.unwrap_or_else(|| vec![DEFAULT_LISTEN.into()]);
        if listen_raw.is_empty() {
            return Err(self.err("edge.listen", "at least one listener is required"));
        }
        let listen = self.addrs("edge.listen", &listen_raw)?;
        let admin_raw = e.admin_listen.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
        let admin_listen = self.addr("edge.admin_listen", &admin_raw)?;
        let threads = e.threads.unwrap_or(DEFAULT_THREADS);
        if !(1..=256).contains(&threads) {
            return Err(self.err("edge.threads", "must be between 1 and 256"));
        }
        let pid_file = self.path(
            &e.pid_file
                .unwrap_or_else(|| format!("/tmp/edgeplane-{instance_id}.pid")),
        );
        let upgrade_sock = self.path(
            &e.upgrade_sock
                .unwrap_or_else(|| format!("/tmp/edgeplane-{instance_id}.sock")),
        );
        Ok(EdgeConfig {
            region,
            instance_id,
            listen,
            admin_listen,
            threads,
            pid_file,
            upgrade_sock,
            grace_period: ms(e.grace_period_ms, DEFAULT_GRACE_PERIOD),
            proxy_protocol: e.proxy_protocol.unwrap_or(false),
        })
    }

    pub(super) fn hosting(&self, h: RawHosting) -> Checked<HostingConfig> {
        let mut suffixes = Vec::new();
        for s in h.suffixes.unwrap_or_else(|| vec![DEFAULT_SUFFIX.into()]) {
            let s = s.trim_start_matches('.').trim_end_matches('.').to_ascii_lowercase();
            if s.is_empty()
                || !s.contains('.')
                || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(self.err(
                    "hosting.suffixes",
                    format!("{s:?} is not a domain suffix like \"repl.co\""),
                ));
            }
            suffixes.push(s);
        }
        if suffixes.is_empty() {
            return Err(self.err("hosting.suffixes", "at least one hosting suffix is required"));
        }
        let workspace_path_prefix = h
            .workspace_path_prefix
            .unwrap_or_else(|| DEFAULT_WORKSPACE_PATH_PREFIX.into());
        if !workspace_path_prefix.starts_with('/')
            || !workspace_path_prefix.ends_with('/')
            || workspace_path_prefix.len() < 3
        {
            return Err(self.err(
                "hosting.workspace_path_prefix",
                "must start and end with '/', e.g. \"/__ws/\"",
            ));
        }
        Ok(HostingConfig {
            suffixes,
            workspace_path_prefix,
        })
    }

    pub(super) fn placement(&self, p: RawPlacement) -> Checked<PlacementConfig> {
        let source = self.placement_source(&p)?;
        let shadow = match p.shadow.as_deref() {
            None | Some("none") | Some("") => None,
            Some("redis") => Some("redis".to_string()),
            Some(other) => return Err(self.err("placement.shadow", format!("{other:?} is not \"redis\" or \"none\""))),
        };
        if shadow.is_some() {
            if matches!(source, PlacementSource::Redis(_)) {
                return Err(self.err(
                    "placement.shadow",
                    "the shadow must be a different store than source (source is already \"redis\")",
                ));
            }
            if p.redis_url.is_none() {
                return Err(self.err("placement.redis_url", "required when shadow = \"redis\""));
            }
        }
        let redis_poll_interval = ms(p.redis_poll_interval_ms, DEFAULT_REDIS_POLL_INTERVAL);
        if redis_poll_interval < Duration::from_millis(100) {
            return Err(self.err("placement.redis_poll_interval_ms", "must be at least 100"));
        }
        let max_shrink_ratio = p.max_shrink_ratio.unwrap_or(DEFAULT_MAX_SHRINK_RATIO);
        if !(0.0..=1.0).contains(&max_shrink_ratio) {
            return Err(self.err("placement.max_shrink_ratio", "must be between 0.0 and 1.0"));
        }
        let poll_interval = ms(p.poll_interval_ms, DEFAULT_POLL_INTERVAL);
        if poll_interval < Duration::from_millis(10) {
            return Err(self.err("placement.poll_interval_ms", "must be at least 10"));
        }
        let query_timeout = ms(p.query_timeout_ms, DEFAULT_QUERY_TIMEOUT);
        if query_timeout < Duration::from_millis(100) {
            return Err(self.err("placement.query_timeout_ms", "must be at least 100"));
        }
        let full_load_timeout = ms(p.full_load_timeout_ms, DEFAULT_FULL_LOAD_TIMEOUT);
        if full_load_timeout < query_timeout {
            return Err(self.err("placement.full_load_timeout_ms", "must be at least query_timeout_ms"));
        }
        Ok(PlacementConfig {
            source,
            last_known_good: p.last_known_good.as_deref().map(|f| self.path(f)),
            shadow,
            poll_interval,
            max_shrink_ratio,
            last_known_good_interval: ms(p.last_known_good_interval_ms, DEFAULT_LAST_KNOWN_GOOD_INTERVAL),
            connect_timeout: ms(p.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT),
            query_timeout,
            full_load_timeout,
            redis_poll_interval,
            redis_url: p.redis_url,
        })
    }

    fn placement_source(&self, p: &RawPlacement) -> Checked<PlacementSource> {
        let required = |key: &str, v: &Option<String>, source: &str| {
            v.clone()
                .ok_or_else(|| self.err(key, format!("required when source = \"{source}\"")))
        };
        match p.source.as_deref().unwrap_or("file") {
            "file" => Ok(PlacementSource::File(self.path(&required(
                "placement.file",
                &p.file,
                "file",
            )?))),
            "postgres" => Ok(PlacementSource::Postgres(required(
                "placement.postgres_url",
                &p.postgres_url,
                "postgres",
            )?)),
            "redis" => Ok(PlacementSource::Redis(required(
                "placement.redis_url",
                &p.redis_url,
                "redis",
            )?)),
            other => Err(self.err(
                "placement.source",
                format!("{other:?} is not one of \"file\", \"postgres\", \"redis\""),
            )),
        }
    }

    pub(super) fn balancer(&self, b: RawBalancer) -> Checked<BalancerConfig> {
        let policy = match b.policy {
            None => DEFAULT_POLICY,
            Some(p) => Policy::parse(&p).map_err(|m| self.err("balancer.policy", m))?,
        };
        let pick_ttl = ms(b.pick_ttl_ms, DEFAULT_PICK_TTL);
        if pick_ttl.is_zero() || pick_ttl > MAX_PICK_TTL {
            return Err(self.err(
                "balancer.pick_ttl_ms",
                format!("must be between 1 and {}", MAX_PICK_TTL.as_millis()),
            ));
        }
        let balancer = BalancerConfig {
            policy,
            pick_ttl,
            subset_size: b.subset_size.unwrap_or(DEFAULT_SUBSET_SIZE),
            subset_refresh: ms(b.subset_refresh_ms, DEFAULT_SUBSET_REFRESH),
            subset_hysteresis: b.subset_hysteresis.unwrap_or(DEFAULT_SUBSET_HYSTERESIS),
            panic_threshold: self.share("balancer.panic_threshold", b.panic_threshold, DEFAULT_PANIC_THRESHOLD)?,
            eject_after_failures: b.eject_after_failures.unwrap_or(DEFAULT_EJECT_AFTER_FAILURES),
            eject: ms(b.eject_ms, DEFAULT_EJECT),
            max_ejected_share: self.share(
                "balancer.max_ejected_share",
                b.max_ejected_share,
                DEFAULT_MAX_EJECTED_SHARE,
            )?,
            connect_retries: b.connect_retries.unwrap_or(DEFAULT_CONNECT_RETRIES),
        };
        if balancer.connect_retries > MAX_CONNECT_RETRIES {
            return Err(self.err(
                "balancer.connect_retries",
                format!("must be at most {MAX_CONNECT_RETRIES}"),
            ));
        }
        if !(1..=4096).contains(&balancer.subset_size) {
            return Err(self.err("balancer.subset_size", "must be between 1 and 4096"));
        }
        if balancer.subset_refresh < Duration::from_millis(100) {
            return Err(self.err("balancer.subset_refresh_ms", "must be at least 100"));
        }
        if !(0.0..=4.0).contains(&balancer.subset_hysteresis) {
            return Err(self.err("balancer.subset_hysteresis", "must be between 0.0 and 4.0"));
        }
        if balancer.eject_after_failures == 0 {
            return Err(self.err("balancer.eject_after_failures", "must be at least 1"));
        }
        Ok(balancer)
    }

    pub(super) fn health(&self, hr: RawHealth) -> Checked<HealthConfig> {
        let source = match hr.source.as_deref().unwrap_or("scrape") {
            "scrape" => HealthSource::Scrape,
            "prometheus" => {
                let url = hr
                    .prometheus_url
                    .ok_or_else(|| self.err("health.prometheus_url", "required when source = \"prometheus\""))?;
                let ok = url
                    .strip_prefix("http://")
                    .map(|rest| !rest.is_empty() && !rest.starts_with('/'))
                    .unwrap_or(false);
                if !ok {
                    return Err(self.err(
                        "health.prometheus_url",
                        format!("{url:?} is not an http://host:port URL"),
                    ));
                }
                HealthSource::Prometheus(url.trim_end_matches('/').to_string())
            }
            other => {
                return Err(self.err(
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
            return Err(self.err("health.scrape_interval_ms", "must be at least 50"));
        }
        if health.scrape_timeout.is_zero() || health.scrape_timeout > health.scrape_interval {
            return Err(self.err(
                "health.scrape_timeout_ms",
                "must be greater than 0 and at most scrape_interval_ms",
            ));
        }
        if health.stale_after < health.scrape_interval {
            return Err(self.err("health.stale_after_ms", "must be at least scrape_interval_ms"));
        }
        if !(1..=4096).contains(&health.scrape_concurrency) {
            return Err(self.err("health.scrape_concurrency", "must be between 1 and 4096"));
        }
        Ok(health)
    }

    pub(super) fn limits(&self, l: RawLimits) -> Checked<LimitsConfig> {
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
            h2_max_concurrent_streams: l.h2_max_concurrent_streams.unwrap_or(DEFAULT_H2_MAX_CONCURRENT_STREAMS),
            h2_max_header_list_bytes: l
                .h2_max_header_list_bytes
                .or(l.max_header_bytes)
                .unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            h2_max_pending_reset_streams: l
                .h2_max_pending_reset_streams
                .unwrap_or(DEFAULT_H2_MAX_PENDING_RESET_STREAMS),
            h2_max_local_error_resets: l.h2_max_local_error_resets.unwrap_or(DEFAULT_H2_MAX_LOCAL_ERROR_RESETS),
        };
        if limits.replay_body_bytes > MAX_REPLAY_BODY_BYTES {
            return Err(self.err(
                "limits.replay_body_bytes",
                format!("must be at most {MAX_REPLAY_BODY_BYTES} (held in memory per request)"),
            ));
        }
        if !(1..=10_000).contains(&limits.h2_max_concurrent_streams) {
            return Err(self.err("limits.h2_max_concurrent_streams", "must be between 1 and 10000"));
        }
        if !(1024..=1 << 20).contains(&limits.h2_max_header_list_bytes) {
            return Err(self.err("limits.h2_max_header_list_bytes", "must be between 1024 and 1048576"));
        }
        for (key, n) in [
            (
                "limits.h2_max_pending_reset_streams",
                limits.h2_max_pending_reset_streams,
            ),
            ("limits.h2_max_local_error_resets", limits.h2_max_local_error_resets),
        ] {
            if !(1..=100_000).contains(&n) {
                return Err(self.err(key, "must be between 1 and 100000"));
            }
        }
        if limits.max_header_bytes < 1024 {
            return Err(self.err("limits.max_header_bytes", "must be at least 1024"));
        }
        if limits.max_headers < 8 {
            return Err(self.err("limits.max_headers", "must be at least 8"));
        }
        if limits.keepalive_idle < Duration::from_secs(1) {
            return Err(self.err("limits.keepalive_idle_ms", "must be at least 1000"));
        }
        for (key, d) in [
            ("limits.upstream_connect_timeout_ms", limits.upstream_connect_timeout),
            ("limits.upstream_read_timeout_ms", limits.upstream_read_timeout),
            ("limits.tunnel_idle_timeout_ms", limits.tunnel_idle_timeout),
            ("limits.header_timeout_ms", limits.header_timeout),
            ("limits.body_timeout_ms", limits.body_timeout),
        ] {
            if d.is_zero() {
                return Err(self.err(key, "must be greater than 0"));
            }
        }
        if !(1..=8).contains(&limits.max_hops) {
            return Err(self.err("limits.max_hops", "must be between 1 and 8"));
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
                return Err(self.err(key, "must be at least 1"));
            }
        }
        if limits.max_connections_per_ip > limits.max_connections {
            return Err(self.err("limits.max_connections_per_ip", "must not exceed max_connections"));
        }
        Ok(limits)
    }

    pub(super) fn security(&self, s: RawSecurity) -> Checked<SecurityConfig> {
        let hop_file = s
            .hop_secret_file
            .ok_or_else(|| self.err("security.hop_secret_file", "required"))?;
        let hop_secret = self.secret("security.hop_secret_file", &hop_file)?;
        let workspace_token_key = s
            .workspace_token_key_file
            .map(|f| self.secret("security.workspace_token_key_file", &f))
            .transpose()?;
        if workspace_token_key.as_ref().is_some_and(|k| k.starts_with(b"k4.")) {
            return Err(self.err(
                "security.workspace_token_key_file",
                "holds a PASERK key: version 2 keys go in workspace_token_public_keys_file (public keys only); \
this file is version 1's shared HMAC secret",
            ));
        }
        let workspace_token_public_keys = match s.workspace_token_public_keys_file {
            Some(f) => self.public_keys("security.workspace_token_public_keys_file", &f)?,
            None => Vec::new(),
        };
        let admin_token = match s.admin_token_file {
            Some(f) => Some(
                String::from_utf8(self.secret("security.admin_token_file", &f)?)
                    .map_err(|_| self.err("security.admin_token_file", "token is not UTF-8"))?,
            ),
            None => None,
        };
        let mut workspace_origins = Vec::new();
        for o in s.workspace_origins.unwrap_or_default() {
            let lower = o.trim_end_matches('/').to_ascii_lowercase();
            let host = lower.split_once("://").map(|(_, h)| h);
            let ok = (lower.starts_with("https://") || lower.starts_with("http://"))
                && host.is_some_and(|h| !h.is_empty() && !h.contains('/'));
            if !ok {
                return Err(self.err(
                    "security.workspace_origins",
                    format!("{o:?} is not an origin (scheme://host[:port])"),
                ));
            }
            workspace_origins.push(lower);
        }
        let cert_seal_key_file = match s.cert_seal_key_file.as_deref() {
            None => None,
            Some(f) => {
                let p = self.path(f);
                std::fs::metadata(&p)
                    .map_err(|e| self.err("security.cert_seal_key_file", format!("{}: {e}", p.display())))?;
                Some(p)
            }
        };
        Ok(SecurityConfig {
            hop_secret,
            workspace_token_key,
            workspace_token_public_keys,
            admin_token,
            workspace_origins,
            cert_seal_key_file,
        })
    }

    /// A public keys file: one PASERK `k4.public.` key a line, `#`
    /// comments and blank lines ignored. Errors point at the keys file's
    /// own line. A file with no key is allowed (version 1 only, or a fleet
    /// between keys), and says so nowhere else than `edgeplane check`.
    fn public_keys(&self, key: &str, file: &str) -> Checked<Vec<edgeplane_token::PublicKey>> {
        let path = self.path(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let k = edgeplane_token::PublicKey::from_paserk(line).map_err(|e| ConfigError {
                file: path.display().to_string(),
                line: i + 1,
                key: key.to_string(),
                message: e.to_string(),
            })?;
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// A secret file's bytes, surrounding whitespace trimmed; at least 16.
    fn secret(&self, key: &str, file: &str) -> Checked<Vec<u8>> {
        let path = self.path(file);
        let bytes = std::fs::read(&path).map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))?;
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < 16 {
            return Err(self.err(key, format!("{} holds fewer than 16 bytes of secret", path.display())));
        }
        Ok(trimmed.to_vec())
    }

    pub(super) fn log(&self, lg: RawLog) -> Checked<LogConfig> {
        Ok(LogConfig {
            access_log_sample: self.share("log.access_log_sample", lg.access_log_sample, DEFAULT_ACCESS_LOG_SAMPLE)?,
            access_log_errors: lg.access_log_errors.unwrap_or(true),
        })
    }

    pub(super) fn dns(&self, d: RawDns) -> Checked<DnsConfig> {
        let listen = d
            .listen
            .map(|l| l.into_vec())
            .unwrap_or_else(|| vec![DEFAULT_DNS_LISTEN.to_string()]);
        if listen.is_empty() {
            return Err(self.err("dns.listen", "at least one address is required"));
        }
        let dns = DnsConfig {
            listen: self.addrs("dns.listen", &listen)?,
            ttl_seconds: d.ttl_seconds.unwrap_or(DEFAULT_DNS_TTL_SECONDS),
            moved_ttl_seconds: d.moved_ttl_seconds.unwrap_or(DEFAULT_DNS_MOVED_TTL_SECONDS),
        };
        if dns.moved_ttl_seconds > dns.ttl_seconds {
            return Err(self.err("dns.moved_ttl_seconds", "must not be longer than dns.ttl_seconds"));
        }
        Ok(dns)
    }

    pub(super) fn resolver(&self, r: RawResolver) -> Checked<ResolverConfig> {
        let resolver = ResolverConfig {
            nameservers: self.addrs("resolver.nameservers", &r.nameservers.unwrap_or_default())?,
            min_ttl: ms(r.min_ttl_ms, DEFAULT_RESOLVER_MIN_TTL),
            max_ttl: ms(r.max_ttl_ms, DEFAULT_RESOLVER_MAX_TTL),
            retry: ms(r.retry_ms, DEFAULT_RESOLVER_RETRY),
            timeout: ms(r.timeout_ms, DEFAULT_RESOLVER_TIMEOUT),
        };
        if resolver.min_ttl < Duration::from_millis(100) {
            return Err(self.err("resolver.min_ttl_ms", "must be at least 100"));
        }
        if resolver.max_ttl < resolver.min_ttl {
            return Err(self.err("resolver.max_ttl_ms", "must be at least resolver.min_ttl_ms"));
        }
        if resolver.retry < Duration::from_millis(100) {
            return Err(self.err("resolver.retry_ms", "must be at least 100"));
        }
        if resolver.timeout < Duration::from_millis(100) {
            return Err(self.err("resolver.timeout_ms", "must be at least 100"));
        }
        Ok(resolver)
    }

    pub(super) fn tls(&self, t: RawTls) -> Checked<TlsConfig> {
        let listen = t.listen.unwrap_or_default();
        if listen.is_empty() {
            return Err(self.err("tls.listen", "at least one HTTPS listener is required in [tls]"));
        }
        let listen = self.addrs("tls.listen", &listen)?;
        let dir = t
            .certs_dir
            .ok_or_else(|| self.err("tls.certs_dir", "required in [tls]"))?;
        let certs_dir = self.path(&dir);
        if !certs_dir.is_dir() {
            return Err(self.err("tls.certs_dir", format!("{} is not a directory", certs_dir.display())));
        }
        let reload_interval = ms(t.reload_interval_ms, DEFAULT_TLS_RELOAD_INTERVAL);
        if reload_interval < Duration::from_millis(100) {
            return Err(self.err("tls.reload_interval_ms", "must be at least 100"));
        }
        let cert_cache_entries = t.cert_cache_entries.unwrap_or(DEFAULT_CERT_CACHE_ENTRIES);
        if cert_cache_entries == 0 {
            return Err(self.err("tls.cert_cache_entries", "must be at least 1"));
        }
        let cert_miss_ttl = ms(t.cert_miss_ttl_ms, DEFAULT_CERT_MISS_TTL);
        if cert_miss_ttl < Duration::from_millis(100) {
            return Err(self.err("tls.cert_miss_ttl_ms", "must be at least 100"));
        }
        Ok(TlsConfig {
            listen,
            certs_dir,
            redirect_http: t.redirect_http.unwrap_or(false),
            reload_interval,
            cert_cache_entries,
            cert_cache_dir: t.cert_cache_dir.as_deref().map(|d| self.path(d)),
            cert_miss_ttl,
        })
    }
}
