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

/// The keys a running edge cannot change, as they are named in the file
/// (a section name means every key of it). `edgeplane serve --upgrade`
/// (SIGQUIT hand-over) applies them without dropping connections.
pub const RESTART_ONLY: [&str; 18] = [
    "edge.region",
    "edge.instance_id",
    "edge.listen",
    "edge.admin_listen",
    "edge.threads",
    "edge.pid_file",
    "edge.upgrade_sock",
    "edge.grace_period_ms",
    "edge.proxy_protocol",
    "placement",
    "health.source",
    "limits.max_requests_per_connection",
    "tls.listen",
    "tls.certs_dir",
    "tls.reload_interval_ms",
    "tls",
    "dns",
    "resolver",
];

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

/// Keeps `old` in `new` when they differ, noting `name`.
fn keep<T: PartialEq + Clone>(name: &'static str, new: &mut T, old: &T, out: &mut Vec<&'static str>) {
    if new != old {
        *new = old.clone();
        out.push(name);
    }
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
    let mut restart = Vec::new();
    keep("edge.region", &mut n.edge.region, &o.edge.region, &mut restart);
    keep(
        "edge.instance_id",
        &mut n.edge.instance_id,
        &o.edge.instance_id,
        &mut restart,
    );
    keep("edge.listen", &mut n.edge.listen, &o.edge.listen, &mut restart);
    keep(
        "edge.admin_listen",
        &mut n.edge.admin_listen,
        &o.edge.admin_listen,
        &mut restart,
    );
    keep("edge.threads", &mut n.edge.threads, &o.edge.threads, &mut restart);
    keep(
        "edge.proxy_protocol",
        &mut n.edge.proxy_protocol,
        &o.edge.proxy_protocol,
        &mut restart,
    );
    keep("edge.pid_file", &mut n.edge.pid_file, &o.edge.pid_file, &mut restart);
    keep(
        "edge.upgrade_sock",
        &mut n.edge.upgrade_sock,
        &o.edge.upgrade_sock,
        &mut restart,
    );
    keep(
        "edge.grace_period_ms",
        &mut n.edge.grace_period,
        &o.edge.grace_period,
        &mut restart,
    );
    keep("placement", &mut n.placement, &o.placement, &mut restart);
    keep("health.source", &mut n.health.source, &o.health.source, &mut restart);
    keep(
        "limits.max_requests_per_connection",
        &mut n.limits.max_requests_per_connection,
        &o.limits.max_requests_per_connection,
        &mut restart,
    );
    match (&mut n.tls, &o.tls) {
        (Some(nt), Some(ot)) => {
            keep("tls.listen", &mut nt.listen, &ot.listen, &mut restart);
            keep("tls.certs_dir", &mut nt.certs_dir, &ot.certs_dir, &mut restart);
            keep(
                "tls.reload_interval_ms",
                &mut nt.reload_interval,
                &ot.reload_interval,
                &mut restart,
            );
        }
        (nt, ot) => keep("tls", nt, ot, &mut restart),
    }
    restart
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
            assert!(RESTART_ONLY.contains(k), "{k} missing from RESTART_ONLY");
        }
        assert_eq!(p.needs_restart.len(), 6);
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
