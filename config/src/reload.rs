//! Live reload, the pure part: given the running [`Config`] and a freshly
//! loaded one, decide what the edge will run with and say what changed.
//!
//! Where it sits: `edgeplane serve` reloads on SIGHUP and on
//! `POST /config/reload`. The proxy loads the file with [`crate::load`]
//! (a file that does not validate changes nothing), calls [`plan`], then
//! swaps the planned config in whole. This module does no I/O.
//!
//! Invariants:
//! - Keys that cannot change in a running process ([`RESTART_ONLY`]:
//!   sockets, identity, the placement source) keep their running values in
//!   the planned config; each one that differs is named in
//!   [`ReloadPlan::needs_restart`] so the operator is told, not ignored.
//! - [`ReloadPlan::changed`] lists file keys by their dotted names with old
//!   and new values as written; secret file contents are compared too but
//!   shown only as `<redacted>`.
//!
//! Start at [`plan`].

use crate::{Config, SecurityConfig};

/// One key (or section) a running edge cannot change: its name as in the
/// file, and how a planned config gets the running value back.
pub struct RestartOnly {
    /// Dotted as in the file; a section name means every key of it.
    pub key: &'static str,
    /// Puts `old`'s value into `new`; true when they differed.
    keep: fn(&mut Config, &Config) -> bool,
}

/// Keeps the running value: true when the new one differed.
fn kept<T: PartialEq + Clone>(new: &mut T, old: &T) -> bool {
    let differs = new != old;
    if differs {
        *new = old.clone();
    }
    differs
}

macro_rules! restart_only {
    ($key:literal, $($field:ident).+) => {
        RestartOnly {
            key: $key,
            keep: |n, o| kept(&mut n.$($field).+, &o.$($field).+),
        }
    };
}

/// A `[tls]` key kept by [`tls_key`].
macro_rules! restart_only_tls {
    ($key:literal, $field:ident) => {
        RestartOnly {
            key: $key,
            keep: |n, o| tls_key(n, o, |t| &mut t.$field),
        }
    };
}

/// Keeps one `[tls]` key when both files have the section.
fn tls_key<T: PartialEq + Clone>(n: &mut Config, o: &Config, f: fn(&mut crate::TlsConfig) -> &mut T) -> bool {
    match (&mut n.tls, &o.tls) {
        (Some(nt), Some(ot)) => {
            let mut ot = ot.clone();
            kept(f(nt), f(&mut ot))
        }
        _ => false,
    }
}

/// The keys a running edge cannot change, in the order the file has them:
/// sockets, identity, the placement source, what the background tasks
/// were started with. The one list: [`plan`] keeps exactly these,
/// `/debug/config` shows it, and the suite checks that the example
/// config's header and docs/operations.md name the same keys.
/// `edgeplane serve --upgrade` applies them without dropping connections.
pub const RESTART_ONLY: [RestartOnly; 22] = [
    restart_only!("edge.region", edge.region),
    restart_only!("edge.instance_id", edge.instance_id),
    restart_only!("edge.listen", edge.listen),
    restart_only!("edge.admin_listen", edge.admin_listen),
    restart_only!("edge.threads", edge.threads),
    restart_only!("edge.pid_file", edge.pid_file),
    restart_only!("edge.upgrade_sock", edge.upgrade_sock),
    restart_only!("edge.grace_period_ms", edge.grace_period),
    restart_only!("edge.proxy_protocol", edge.proxy_protocol),
    restart_only!("placement", placement),
    restart_only!("health.source", health.source),
    restart_only!("limits.max_requests_per_connection", limits.max_requests_per_connection),
    restart_only_tls!("tls.listen", listen),
    restart_only_tls!("tls.certs_dir", certs_dir),
    restart_only_tls!("tls.reload_interval_ms", reload_interval),
    // The control plane's certificates: their cache and fetcher are
    // built at start.
    restart_only_tls!("tls.cert_cache_entries", cert_cache_entries),
    restart_only_tls!("tls.cert_cache_dir", cert_cache_dir),
    restart_only_tls!("tls.cert_miss_ttl_ms", cert_miss_ttl),
    restart_only!("security.cert_seal_key_file", security.cert_seal_key_file),
    RestartOnly {
        key: "tls",
        // Adding or removing the section (its keys are above).
        keep: |n, o| n.tls.is_some() != o.tls.is_some() && kept(&mut n.tls, &o.tls),
    },
    // `edgeplane dns` reads these when it starts; `serve`'s resolver
    // task too.
    restart_only!("dns", dns),
    restart_only!("resolver", resolver),
];

/// The names of [`RESTART_ONLY`].
pub fn restart_only_keys() -> impl Iterator<Item = &'static str> {
    RESTART_ONLY.iter().map(|r| r.key)
}

/// One key whose value differs. `None` means the key is absent (its
/// default applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl std::fmt::Display for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(default)".into());
        write!(f, "{} {} -> {}", self.key, show(&self.old), show(&self.new))
    }
}

/// What a reload will do.
#[derive(Debug, Clone)]
pub struct ReloadPlan {
    /// The config to run with: the new file, restart-only keys kept.
    pub config: Config,
    /// Keys that change now.
    pub changed: Vec<KeyChange>,
    /// Restart-only keys whose new value was not applied.
    pub needs_restart: Vec<&'static str>,
}

/// Plans a reload from `current` to `next` (see the module docs).
pub fn plan(current: &Config, mut next: Config) -> ReloadPlan {
    let restart = keep_restart_only(&mut next, current);
    let changed = changed_keys(&mut next, current, &restart);
    ReloadPlan {
        config: next,
        changed,
        needs_restart: restart,
    }
}

/// Puts back the running value of every restart-only key that changed;
/// returns those keys.
fn keep_restart_only(n: &mut Config, o: &Config) -> Vec<&'static str> {
    RESTART_ONLY.iter().filter(|r| (r.keep)(n, o)).map(|r| r.key).collect()
}

/// The keys whose value the running edge now changes (file keys, and
/// secrets by their contents, redacted); `n.file_keys` keeps showing the
/// running value of the restart-only ones.
fn changed_keys(n: &mut Config, o: &Config, restart: &[&'static str]) -> Vec<KeyChange> {
    // The file as written is what the running edge now reports, except
    // for the keys kept: those still show what the process runs with, and
    // are not "changed".
    let kept_key = |k: &str| {
        restart.iter().any(|r| k == *r || k.starts_with(&format!("{r}.")))
            || (k == "health.prometheus_url" && restart.contains(&"health.source"))
    };
    n.file_keys.retain(|k, _| !kept_key(k));
    for (k, v) in &o.file_keys {
        if kept_key(k) {
            n.file_keys.insert(k.clone(), v.clone());
        }
    }
    let mut changed = Vec::new();
    let keys: std::collections::BTreeSet<&String> = o.file_keys.keys().chain(n.file_keys.keys()).collect();
    for k in keys {
        let (old, new) = (o.file_keys.get(k), n.file_keys.get(k));
        if old != new {
            changed.push(KeyChange {
                key: k.clone(),
                old: old.cloned(),
                new: new.cloned(),
            });
        }
    }
    let (ns, os) = (&n.security, &o.security);
    if ns.workspace_token_public_keys != os.workspace_token_public_keys {
        // Public: the key ids are shown, so a rotation can be followed.
        let kids = |s: &SecurityConfig| {
            s.workspace_token_public_keys
                .iter()
                .map(|k| k.kid())
                .collect::<Vec<_>>()
                .join(",")
        };
        changed.push(KeyChange {
            key: "security.workspace_token_public_keys_file (contents)".into(),
            old: Some(kids(os)),
            new: Some(kids(ns)),
        });
    }
    for (key, differs) in [
        ("security.hop_secret_file (contents)", ns.hop_secret != os.hop_secret),
        (
            "security.workspace_token_key_file (contents)",
            ns.workspace_token_key != os.workspace_token_key,
        ),
        ("security.admin_token_file (contents)", ns.admin_token != os.admin_token),
    ] {
        if differs {
            changed.push(KeyChange {
                key: key.into(),
                old: Some("<redacted>".into()),
                new: Some("<redacted>".into()),
            });
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let dir = std::env::temp_dir();
        let path = dir.join("edgeplane-reload-test.toml");
        let secret = dir.join(format!("edgeplane-reload-test-{}.secret", std::process::id()));
        static WRITE: std::sync::Once = std::sync::Once::new();
        WRITE.call_once(|| std::fs::write(&secret, "0123456789abcdef0123").unwrap());
        let text = format!(
            "[edge]\nregion = \"r1\"\ninstance_id = \"e1\"\nlisten = [\"127.0.0.1:0\"]\n\
             [placement]\nfile = \"snap.json\"\n[security]\nhop_secret_file = \"{}\"\n{extra}",
            secret.display()
        );
        crate::parse(&path, &text).unwrap()
    }

    #[test]
    fn live_keys_apply_and_are_listed_with_old_and_new_values() {
        let old = cfg("[limits]\nheader_timeout_ms = 10000\n");
        let new = cfg("[limits]\nheader_timeout_ms = 5000\n[hosting]\nsuffixes = [\"repl.co\", \"example.dev\"]\n");
        let p = plan(&old, new.clone());
        assert!(p.needs_restart.is_empty());
        assert_eq!(p.config, new);
        let shown: Vec<String> = p.changed.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            [
                "hosting.suffixes (default) -> [\"repl.co\", \"example.dev\"]",
                "limits.header_timeout_ms 10000 -> 5000",
            ]
        );
    }

    #[test]
    fn restart_only_keys_keep_their_running_values_and_are_named() {
        let old = cfg("[limits]\nmax_hops = 2\n");
        let mut new = cfg("[limits]\nmax_hops = 3\n");
        new.edge.listen = vec!["127.0.0.1:9999".parse().unwrap()];
        new.edge.region = "r2".into();
        new.file_keys.insert("edge.region".into(), "\"r2\"".into());
        let p = plan(&old, new);
        assert_eq!(p.needs_restart, ["edge.region", "edge.listen"]);
        assert_eq!(p.config.edge, old.edge, "sockets and identity stay as running");
        assert_eq!(p.config.limits.max_hops, 3, "live keys still apply");
        assert_eq!(p.config.file_keys["edge.region"], "\"r1\"", "reports what runs");
    }

    #[test]
    fn a_changed_secret_is_reported_without_its_value() {
        let old = cfg("");
        let mut new = cfg("");
        new.security.hop_secret = b"another-secret-0123456".to_vec();
        let p = plan(&old, new);
        assert_eq!(p.changed.len(), 1);
        assert_eq!(
            p.changed[0].to_string(),
            "security.hop_secret_file (contents) <redacted> -> <redacted>"
        );
        assert!(!format!("{p:?}").contains("another-secret"));
    }

    #[test]
    fn every_key_kept_is_listed_as_restart_only() {
        let old = cfg("");
        let mut new = cfg("[tls]\nlisten = [\"127.0.0.1:0\"]\ncerts_dir = \".\"\n");
        new.edge.threads += 1;
        new.edge.grace_period *= 2;
        new.placement.poll_interval *= 2;
        new.health.source = crate::HealthSource::Prometheus("http://127.0.0.1:9090".into());
        new.limits.max_requests_per_connection += 1;
        let p = plan(&old, new);
        assert_eq!(p.config, old, "nothing restart-only applied");
        for k in &p.needs_restart {
            assert!(restart_only_keys().any(|r| r == *k), "{k} missing from RESTART_ONLY");
        }
        assert_eq!(p.needs_restart.len(), 6);
    }

    #[test]
    fn dns_and_resolver_keys_wait_for_a_restart() {
        let old = cfg("");
        let new = cfg("[dns]\nmoved_ttl_seconds = 9\n[resolver]\nretry_ms = 7000\n");
        let p = plan(&old, new);
        assert_eq!(p.needs_restart, ["dns", "resolver"]);
        assert_eq!(
            (p.config.dns, p.config.resolver),
            (old.dns.clone(), old.resolver.clone())
        );
        assert!(p.changed.is_empty(), "{:?}", p.changed);
    }

    /// The example config's header and the runbook name exactly the keys
    /// of [`RESTART_ONLY`].
    #[test]
    fn the_example_config_and_the_runbook_list_the_restart_only_keys() {
        let want: std::collections::BTreeSet<&str> = restart_only_keys().collect();
        let example = include_str!("../examples/edgeplane.toml");
        let listed: std::collections::BTreeSet<&str> = example
            .lines()
            .skip_while(|l| !l.contains("config/src/reload.rs"))
            .skip(1)
            .take_while(|l| l.starts_with("#   "))
            .flat_map(|l| l.trim_start_matches('#').split_whitespace())
            .collect();
        assert_eq!(listed, want, "config/examples/edgeplane.toml header");
        let runbook = include_str!("../../docs/operations.md");
        let para = runbook
            .split("- **Restart-only keys**")
            .nth(1)
            .and_then(|p| p.split("A reload keeps").next())
            .expect("the runbook's restart-only paragraph");
        let named: std::collections::BTreeSet<&str> = para
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|k| !k.starts_with('/') && *k != "restart_only" && !k.contains(' '))
            .collect();
        assert_eq!(named, want, "docs/operations.md, Restart-only keys");
    }

    #[test]
    fn an_unchanged_file_plans_nothing() {
        let p = plan(
            &cfg("[log]\naccess_log_sample = 0.5\n"),
            cfg("[log]\naccess_log_sample = 0.5\n"),
        );
        assert!(p.changed.is_empty() && p.needs_restart.is_empty());
    }
}
