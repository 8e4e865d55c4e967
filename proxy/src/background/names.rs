//! Names the edge dials — peer edges' `edge_addr` and VM addresses given as
//! `host:port` — resolved in the background with hickory-resolver, never
//! on the request path.
//!
//! Where it sits: the placement table keeps such an address as an
//! [`Endpoint::Name`](edgeplane_control_sync::table::Endpoint). A resolver
//! thread ([`spawn`]) keeps a [`NameBook`] of every name in the current
//! table, asks for each when its answer is due and publishes the answers in
//! use as one immutable map ([`Names`], an ArcSwap). The routing decision
//! is handed [`Names`] as its [`Resolve`]: an address costs one branch; a
//! name one atomic load and one hash lookup; a name with no good answer yet
//! is a 502 (`upstream_errors_total{reason="unresolved"}`).
//!
//! Rules ([`NameBook`], pure: time is passed in):
//! - an answer is used until its TTL runs out, clamped to
//!   `[resolver] min_ttl_ms..max_ttl_ms`, then asked again;
//! - a failed lookup keeps the last good answer (counted, logged) and is
//!   retried after `retry_ms`;
//! - a name that leaves the table is forgotten; a new one is asked at once.
//! - of several addresses, the first IPv4 one is used (else the first).
//!
//! Start at [`NameBook`], then [`spawn`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use edgeplane_config::ResolverConfig;
use edgeplane_control_sync::table::Resolve;
use edgeplane_control_sync::TableHandle;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The answers in use, shared with every request thread.
#[derive(Default)]
pub struct Names {
    map: ArcSwap<HashMap<Arc<str>, IpAddr>>,
}

impl Names {
    /// The address in use for `name`, if any.
    pub fn get(&self, name: &str) -> Option<IpAddr> {
        self.map.load().get(name).copied()
    }

    /// Replaces the answers in use.
    pub fn publish(&self, map: HashMap<Arc<str>, IpAddr>) {
        self.map.store(Arc::new(map));
    }
}

/// The decision dials what these answers say.
impl Resolve for Names {
    #[inline]
    fn ip_of(&self, host: &str) -> Option<IpAddr> {
        self.get(host)
    }
}

/// What the book knows of one name.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// The last good answer.
    ip: Option<IpAddr>,
    /// When to ask again (ms, caller's clock).
    due_ms: u64,
    failures: u32,
}

/// The result of one lookup.
pub type Answer = Result<(IpAddr, Duration), String>;

/// What changed when an answer was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Same address as before.
    Same,
    /// First good answer for the name.
    New,
    /// The address changed.
    Changed,
    /// The lookup failed; the last good answer (if any) stays.
    Failed,
}

/// The schedule and last good answers of every name; pure.
#[derive(Debug, Default)]
pub struct NameBook {
    entries: HashMap<Arc<str>, Entry>,
}

impl NameBook {
    /// Makes the book hold exactly `names`: new ones are due now, gone ones
    /// are forgotten. Returns true when a name was forgotten.
    pub fn track(&mut self, names: &[Arc<str>], now_ms: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|k, _| names.binary_search(k).is_ok());
        let forgot = self.entries.len() != before;
        for n in names {
            self.entries.entry(n.clone()).or_insert(Entry {
                ip: None,
                due_ms: now_ms,
                failures: 0,
            });
        }
        forgot
    }

    /// Names whose answer is due.
    pub fn due(&self, now_ms: u64) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(_, e)| e.due_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort_unstable();
        v
    }

    /// Records a lookup's answer and schedules the next one.
    pub fn apply(&mut self, name: &str, answer: Answer, now_ms: u64, cfg: &ResolverConfig) -> Applied {
        let Some(e) = self.entries.get_mut(name) else {
            return Applied::Same;
        };
        match answer {
            Ok((ip, ttl)) => {
                let ttl = ttl.clamp(cfg.min_ttl, cfg.max_ttl);
                e.due_ms = now_ms + ttl.as_millis() as u64;
                e.failures = 0;
                let was = e.ip.replace(ip);
                match was {
                    None => Applied::New,
                    Some(w) if w == ip => Applied::Same,
                    Some(_) => Applied::Changed,
                }
            }
            Err(_) => {
                e.failures += 1;
                e.due_ms = now_ms + cfg.retry.as_millis() as u64;
                Applied::Failed
            }
        }
    }

    /// The answers in use.
    pub fn answers(&self) -> HashMap<Arc<str>, IpAddr> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.ip.map(|ip| (k.clone(), ip)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names with no good answer.
    pub fn unresolved(&self) -> usize {
        self.entries.values().filter(|e| e.ip.is_none()).count()
    }
}

/// Picks the address to dial from a lookup's answers: the first IPv4
/// address, else the first.
pub fn choose(ips: impl IntoIterator<Item = IpAddr>) -> Option<IpAddr> {
    let mut first = None;
    for ip in ips {
        if ip.is_ipv4() {
            return Some(ip);
        }
        first.get_or_insert(ip);
    }
    first
}

type Resolver = hickory_resolver::Resolver<hickory_resolver::net::runtime::TokioRuntimeProvider>;

/// A hickory resolver for `cfg`: its name servers over UDP then TCP, or the
/// system's; no cache of its own (the book keeps the answers), one attempt
/// per lookup within `timeout`.
pub fn resolver(cfg: &ResolverConfig) -> Result<Resolver, String> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig as HickoryConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut builder = if cfg.nameservers.is_empty() {
        hickory_resolver::Resolver::builder(TokioRuntimeProvider::default()).map_err(|e| e.to_string())?
    } else {
        let servers = cfg
            .nameservers
            .iter()
            .map(|ns| {
                let conn = |mut c: ConnectionConfig| {
                    c.port = ns.port();
                    c
                };
                NameServerConfig::new(
                    ns.ip(),
                    true,
                    vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                )
            })
            .collect();
        hickory_resolver::Resolver::builder_with_config(
            HickoryConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let o = builder.options_mut();
    o.timeout = cfg.timeout;
    o.attempts = 1;
    o.cache_size = 0;
    o.ndots = 0;
    builder.build().map_err(|e| e.to_string())
}

async fn lookup(r: &Resolver, name: &str, timeout: Duration) -> Answer {
    let fqdn = format!("{name}.");
    match tokio::time::timeout(timeout, r.lookup_ip(fqdn.as_str())).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(answer)) => {
            let ttl = answer
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            choose(answer.iter())
                .map(|ip| (ip, ttl))
                .ok_or_else(|| "no address".to_string())
        }
    }
}

/// How often the resolver thread looks for due names and table changes.
pub const TICK: Duration = Duration::from_millis(100);

/// Starts the resolver thread. It does nothing while the table holds no
/// names; the first answers for a new table are asked at once.
pub fn spawn(
    cfg: ResolverConfig,
    table: TableHandle,
    names: Arc<Names>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) -> std::thread::JoinHandle<()> {
    edgeplane_control_sync::spawn_with_runtime("resolver", move || run(cfg, table, names, metrics, stop))
}

async fn run(cfg: ResolverConfig, table: TableHandle, names: Arc<Names>, metrics: Arc<Metrics>, mut stop: Shutdown) {
    let mut book = NameBook::default();
    let mut resolver_handle: Option<Resolver> = None;
    let mut seen_version = u64::MAX;
    loop {
        let now = crate::clock::now_ms();
        let mut publish = false;
        let t = table.load_full();
        if t.version() != seen_version {
            seen_version = t.version();
            publish |= book.track(&t.dial_names(), now);
            metrics.resolver_names.set(book.len() as i64);
        }
        drop(t);
        let due = book.due(now);
        if !due.is_empty() && resolver_handle.is_none() {
            match resolver(&cfg) {
                Ok(r) => resolver_handle = Some(r),
                Err(e) => log::error!("resolver: cannot start: {e}"),
            }
        }
        if let Some(r) = &resolver_handle {
            for name in due {
                let answer = lookup(r, &name, cfg.timeout).await;
                let now = crate::clock::now_ms();
                if let Err(e) = &answer {
                    metrics.resolver_errors.inc();
                    log::warn!("resolver: {name}: {e} (keeping the last good answer, if any)");
                }
                let shown = answer.as_ref().ok().map(|(ip, _)| *ip);
                match book.apply(&name, answer, now, &cfg) {
                    Applied::New => {
                        log::info!("resolver: {name} -> {}", shown.expect("ok"));
                        publish = true;
                    }
                    Applied::Changed => {
                        metrics.resolver_changes.inc();
                        log::info!("resolver: {name} now -> {}", shown.expect("ok"));
                        publish = true;
                    }
                    Applied::Same | Applied::Failed => {}
                }
            }
        }
        if publish {
            names.publish(book.answers());
        }
        metrics.resolver_unresolved.set(book.unresolved() as i64);
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.recv() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ResolverConfig {
        ResolverConfig {
            nameservers: vec![],
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            retry: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_follow_ttl_within_bounds_and_survive_failures() {
        let c = cfg();
        let mut b = NameBook::default();
        let names: Vec<Arc<str>> = vec!["edge.b".into(), "vm.a".into()];
        b.track(&names, 0);
        assert_eq!(b.due(0), names, "new names are asked at once");
        assert_eq!(
            b.apply("edge.b", Ok((ip("10.0.0.1"), Duration::from_millis(10))), 0, &c),
            Applied::New
        );
        assert_eq!(
            b.due(999),
            vec![Arc::from("vm.a")],
            "a 10 ms TTL is held for min_ttl (1 s)"
        );
        assert_eq!(b.due(1000).len(), 2);
        assert_eq!(
            b.apply("vm.a", Ok((ip("10.0.0.2"), Duration::from_secs(3600))), 0, &c),
            Applied::New
        );
        assert!(
            b.due(59_999).iter().all(|n| &**n != "vm.a"),
            "an hour is capped at max_ttl"
        );
        assert!(b.due(60_000).iter().any(|n| &**n == "vm.a"));

        assert_eq!(b.apply("edge.b", Err("SERVFAIL".into()), 1000, &c), Applied::Failed);
        assert_eq!(
            b.answers()[&Arc::<str>::from("edge.b")],
            ip("10.0.0.1"),
            "last good answer kept"
        );
        assert_eq!(b.due(2999).len(), 0, "retried after retry_ms");
        assert_eq!(b.due(3000), vec![Arc::from("edge.b")]);
        assert_eq!(
            b.apply("edge.b", Ok((ip("10.0.0.9"), Duration::from_secs(5))), 3000, &c),
            Applied::Changed
        );
        assert_eq!(
            b.apply("edge.b", Ok((ip("10.0.0.9"), Duration::from_secs(5))), 8000, &c),
            Applied::Same
        );

        assert!(b.track(&[Arc::from("vm.a")], 9000), "edge.b left the table");
        assert_eq!(b.answers().len(), 1);
        assert_eq!(b.unresolved(), 0);
    }

    #[test]
    fn prefers_ipv4() {
        assert_eq!(choose([ip("::1"), ip("10.0.0.1")]), Some(ip("10.0.0.1")));
        assert_eq!(choose([ip("::1")]), Some(ip("::1")));
        assert_eq!(choose([]), None);
    }

    #[test]
    fn named_endpoints_resolve_to_the_answer_in_use() {
        use edgeplane_control_sync::table::Endpoint;
        let names = Names::default();
        let vm = Endpoint::Name {
            host: "vm-v.internal".into(),
            port: 7000,
        };
        let plain = Endpoint::Addr("127.0.0.1:7001".parse().unwrap());
        assert_eq!(
            plain.resolve(&names),
            Some("127.0.0.1:7001".parse().unwrap()),
            "addresses pass untouched"
        );
        assert_eq!(vm.resolve(&names), None, "never answered: the decision makes it a 502");
        names.publish(HashMap::from([(Arc::from("vm-v.internal"), ip("10.1.1.1"))]));
        assert_eq!(vm.resolve(&names), Some("10.1.1.1:7000".parse().unwrap()));
    }
}
