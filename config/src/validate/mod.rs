//! Raw -> validated: defaults, relative paths, secrets and value checks.
//!
//! Sits between [`crate::raw`] (what the file says) and [`crate::Config`]
//! (what the edge runs with). Each check reports the dotted key it is about;
//! [`Locator`] finds that key's line in the original text so the error reads
//! `file:line: key: message`. Start reading at [`validate()`]; each section's
//! checks are one function in [`sections`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::raw::RawConfig;
use crate::*;

mod sections;

/// `file:line: key: message` for `key` in `text` (see [`Locator`]).
pub(crate) fn locate(path: &Path, text: &str, key: &str, message: String) -> ConfigError {
    Locator {
        file: path.display().to_string(),
        text,
    }
    .err(key, message)
}

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

/// What every section check needs: where errors point and where relative
/// paths start.
pub(super) struct Checker<'a> {
    loc: Locator<'a>,
    base: PathBuf,
}

impl Checker<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.loc.err(key, message)
    }

    /// A path from the file, relative to the file's directory.
    fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    /// A fraction in `0.0..=1.0`.
    fn share(&self, key: &str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
        let v = v.unwrap_or(default);
        if !(0.0..=1.0).contains(&v) {
            return Err(self.err(key, "must be between 0.0 and 1.0"));
        }
        Ok(v)
    }

    /// An `ip:port` address.
    fn addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse()
            .map_err(|_| self.err(key, format!("{s:?} is not an ip:port address")))
    }

    /// Every entry an `ip:port` address.
    fn addrs(&self, key: &str, list: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
        list.iter().map(|l| self.addr(key, l)).collect()
    }
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map(Duration::from_millis).unwrap_or(default)
}

/// Turns what the file says into a [`Config`], or the first error found.
/// Sections are checked in file order, one function each (see
/// [`sections`]); the one rule that spans two sections is checked here.
pub fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let c = Checker {
        loc: Locator {
            file: path.display().to_string(),
            text,
        },
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let edge = c.edge(raw.edge.unwrap_or_default())?;
    let hosting = c.hosting(raw.hosting.unwrap_or_default())?;
    let placement = c.placement(raw.placement.unwrap_or_default())?;
    let balancer = c.balancer(raw.balancer.unwrap_or_default())?;
    let health = c.health(raw.health.unwrap_or_default())?;
    let limits = c.limits(raw.limits.unwrap_or_default())?;
    let security = c.security(raw.security.unwrap_or_default())?;
    if !edge.admin_listen.ip().is_loopback() && security.admin_token.is_none() {
        return Err(c.err(
            "edge.admin_listen",
            "a non-loopback admin listener needs security.admin_token_file",
        ));
    }
    let log = c.log(raw.log.unwrap_or_default())?;
    let dns = c.dns(raw.dns.unwrap_or_default())?;
    let resolver = c.resolver(raw.resolver.unwrap_or_default())?;
    let tls = raw.tls.map(|t| c.tls(t)).transpose()?;
    Ok(Config {
        path: path.to_path_buf(),
        edge,
        hosting,
        placement,
        balancer,
        health,
        limits,
        security,
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
                toml::Value::String(url) if key.ends_with("_url") => {
                    out.insert(key, toml::Value::String(crate::redact_url(url)).to_string());
                }
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

    #[test]
    fn store_passwords_never_reach_debug_config_or_check() {
        assert_eq!(
            crate::redact_url("postgres://edge:s3cret@db.internal:5432/placement?sslmode=require"),
            "postgres://edge:***@db.internal:5432/placement?sslmode=require"
        );
        assert_eq!(crate::redact_url("redis://:pw@127.0.0.1/0"), "redis://:***@127.0.0.1/0");
        for plain in [
            "postgres://edge@db/placement",
            "redis://127.0.0.1:6379",
            "not a url",
            "a://b/c@d:e",
        ] {
            assert_eq!(crate::redact_url(plain), plain);
        }
        let keys = file_keys("[placement]\npostgres_url = \"postgres://u:hunter2@h/d\"\n");
        assert_eq!(keys["placement.postgres_url"], "\"postgres://u:***@h/d\"");
        let source = crate::PlacementSource::Postgres("postgres://u:hunter2@h/d".into());
        assert_eq!(source.to_string(), "postgres postgres://u:***@h/d");
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
    fn workspace_public_keys_are_read_with_comments_and_errors_name_the_keys_files_line() {
        // A real key pair's public half (a test vector of this crate only).
        const PUB: &str = "k4.public.q6rafYhWc2IvpiTQqrjKa-oPV7hL0yYfFvKyCPuWoLM";
        let body = MINIMAL.replace(
            "hop_secret_file = \"hop.secret\"\n",
            "hop_secret_file = \"hop.secret\"\nworkspace_token_public_keys_file = \"ws.pub\"\n",
        );
        let (dir, path) = setup(&body);
        let keys = dir.path().join("ws.pub");
        std::fs::write(
            &keys,
            format!("# rotation 2026-12\n\n{PUB}  # the web server's\n{PUB}\n"),
        )
        .unwrap();
        let c = crate::load(&path).unwrap();
        assert_eq!(
            c.security.workspace_token_public_keys.len(),
            1,
            "a repeated key counts once"
        );
        assert!(c.security.workspace_token_public_keys[0].kid().starts_with("k4.pid."));
        assert!(c.security.workspace_token_key.is_none());

        std::fs::write(&keys, format!("{PUB}\nk4.public.short\n")).unwrap();
        let e = crate::load(&path).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line),
            (keys.display().to_string().as_str(), 2),
            "{e}"
        );
        assert_eq!(e.key, "security.workspace_token_public_keys_file");
        // A secret key where a public one belongs: refused, and not echoed.
        let secret = "k4.secret.hWg0TyRnNNrMthkQJI98_5qldxLTDg8Ti_y_MJwwk96rqtp9iFZzYi-mJNCquMpr6g9XuEvTJh8W8rII-5agsw";
        std::fs::write(&keys, format!("{secret}\n")).unwrap();
        let e = crate::load(&path).unwrap_err();
        assert!(
            e.message.contains("secret key") && !e.to_string().contains(&secret[10..]),
            "{e}"
        );
        // ...or in the version 1 key file.
        std::fs::write(&keys, "").unwrap();
        std::fs::write(dir.path().join("v1.key"), secret).unwrap();
        let (_d2, p2) = setup(&body.replace(
            "workspace_token_public_keys_file",
            "workspace_token_key_file = \"v1.key\"\nworkspace_token_public_keys_file",
        ));
        std::fs::copy(dir.path().join("v1.key"), p2.with_file_name("v1.key")).unwrap();
        std::fs::write(p2.with_file_name("ws.pub"), "").unwrap();
        let e = crate::load(&p2).unwrap_err();
        assert_eq!(e.key, "security.workspace_token_key_file", "{e}");
        assert!(e.message.contains("public keys only"), "{e}");
    }

    #[test]
    fn http2_limits_have_defaults_follow_the_header_cap_and_are_checked() {
        let c = crate::load(&setup(MINIMAL).1).unwrap();
        assert_eq!(
            (
                c.limits.h2_max_concurrent_streams,
                c.limits.h2_max_header_list_bytes,
                c.limits.h2_max_pending_reset_streams,
                c.limits.h2_max_local_error_resets
            ),
            (
                DEFAULT_H2_MAX_CONCURRENT_STREAMS,
                DEFAULT_MAX_HEADER_BYTES,
                DEFAULT_H2_MAX_PENDING_RESET_STREAMS,
                DEFAULT_H2_MAX_LOCAL_ERROR_RESETS
            )
        );
        let c = crate::load(&setup(&format!("{MINIMAL}[limits]\nmax_header_bytes = 8192\n")).1).unwrap();
        assert_eq!(c.limits.h2_max_header_list_bytes, 8192, "follows max_header_bytes");
        for bad in [
            "h2_max_concurrent_streams = 0",
            "h2_max_header_list_bytes = 10",
            "h2_max_pending_reset_streams = 0",
        ] {
            let (_d, path) = setup(&format!("{MINIMAL}[limits]\n{bad}\n"));
            let e = crate::load(&path).unwrap_err();
            assert_eq!(format!("limits.{}", bad.split(' ').next().unwrap()), e.key, "{e}");
        }
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
        let (_d, path) = setup(&format!("{MINIMAL}[limits]\nreplay_body_bytes = 1048577\n"));
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
