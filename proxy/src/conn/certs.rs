//! Control-plane certificates on the edge: custom domains' certificates
//! fetched from PostgreSQL on the first handshake that needs one, kept
//! parsed in memory and sealed on disk, and the TLS-ALPN-01 challenge
//! certificate.
//!
//! Where it sits: [`crate::http::EdgeApp`] calls [`CustomCerts::prepare`]
//! with the ClientHello's SNI name ([`peek_sni`]) before the handshake;
//! rustls's resolver ([`super::tls::SniResolver`]) then finds the
//! certificate with [`CustomCerts::resolve`] without waiting on anything.
//! Order of choice: `tls.certs_dir`'s exact name (the operator's
//! override), the control plane's exact name, `tls.certs_dir`'s wildcard,
//! the control plane's wildcard.
//!
//! Invariants:
//! - The database is asked only about names the routing table's index
//!   ([`edgeplane_control_sync::table::TlsIndex`]) says have a certificate,
//!   at most once per name per `tls.cert_miss_ttl_ms` when the fetch fails,
//!   and once for all the handshakes that want a name at the same time
//!   (the fetcher joins them, and answers asks that come within a second
//!   of a query with its answer). A name
//!   not in the index is never fetched: a permitted custom domain without a
//!   certificate wakes the issuer (NOTIFY, once per miss TTL) and its
//!   handshake fails at once, counted `not_issued`.
//! - A fetched copy that does not open or parse is refused and counted;
//!   the copy held before keeps serving.
//! - Fetches run on their own thread and runtime with their own
//!   connection, each query bounded (2 s); a handshake waits for its
//!   fetcher round only, bounded by the handshake's deadline. Handshakes
//!   for names in memory (and the override directory's) never wait.
//! - A copy whose name left the index (revoked, removed) is dropped from
//!   memory and disk at its next handshake; with an empty index (a start
//!   from the last-known-good file) every copy held serves.
//! - The disk cache holds rows exactly as the database does (keys sealed):
//!   a restart without the database serves every name served before.
//!
//! Start at [`CustomCerts::prepare`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora_rustls::sign::CertifiedKey;
use tokio::sync::{mpsc, oneshot};

use edgeplane_control_sync::certs::store::{self, StoredCert};
use edgeplane_control_sync::certs::SealKey;
use edgeplane_control_sync::directory::Name;
use edgeplane_control_sync::TableHandle;

use crate::metrics::Metrics;

/// The (cert, outcome) label pairs of `edgeplane_tls_handshakes_total`.
pub const HANDSHAKE_LABELS: [(&str, &str); 6] = [
    ("override", "served"),
    ("custom", "served"),
    ("wildcard", "served"),
    ("acme", "served"),
    ("custom", "not_issued"),
    ("none", "unknown_name"),
];
/// The outcome labels of `edgeplane_cert_fetches_total`.
pub const FETCH_OUTCOMES: [&str; 4] = ["ok", "missing", "bad", "error"];
/// Fetches waiting for the fetcher thread at most (more fail at once).
const FETCH_QUEUE: usize = 1024;

/// A parsed certificate and the revision it was fetched at.
#[derive(Clone)]
struct Cached {
    revision: u64,
    key: Arc<CertifiedKey>,
}

/// A fetch's answer: the row (None: the control plane has none), or why
/// the database could not say.
type Fetched = Result<Option<StoredCert>, String>;

/// What the fetcher is asked.
enum Job {
    Fetch {
        name: String,
        /// The answer, and whether this ask was the one the query was made
        /// for (the others joined it: only that one is counted).
        reply: oneshot::Sender<(Fetched, bool)>,
    },
    /// A permitted custom domain without a certificate: wake the issuer.
    Wake(String),
    /// Remove a disk cache file (the certificate left the control plane):
    /// file I/O stays off the handshake path.
    Forget(PathBuf),
}

/// See the module docs.
pub struct CustomCerts {
    table: TableHandle,
    seal: SealKey,
    cache: quick_cache::sync::Cache<Box<str>, Cached>,
    /// The control plane's wildcard certificates by the suffix under the
    /// `*.`: always loaded ([`CustomCerts::warm_wildcards`]), never evicted.
    wildcards: arc_swap::ArcSwap<HashMap<Box<str>, Cached>>,
    /// Name -> (until, unix ms; the index revision the miss was for).
    misses: quick_cache::sync::Cache<Box<str>, (u64, Option<u64>)>,
    miss_ttl: Duration,
    jobs: mpsc::Sender<Job>,
    disk: Option<PathBuf>,
    metrics: Arc<Metrics>,
    /// TLS-ALPN-01 challenge certificates by token (a handful).
    acme: quick_cache::sync::Cache<Box<str>, Arc<CertifiedKey>>,
}

/// What [`CustomCerts::resolve`] chose.
pub enum Chosen {
    Key(Arc<CertifiedKey>),
    /// A permitted custom domain whose certificate is not issued (or not
    /// fetched) yet.
    NotIssued,
    Unknown,
}

impl CustomCerts {
    /// Starts the fetcher thread and loads the disk cache.
    pub fn start(
        database_url: String,
        table: TableHandle,
        seal: SealKey,
        entries: usize,
        miss_ttl: Duration,
        disk: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Arc<CustomCerts> {
        let (tx, rx) = mpsc::channel(FETCH_QUEUE);
        std::thread::Builder::new()
            .name("edgeplane-certs".into())
            .spawn(move || fetcher(database_url, rx))
            .expect("spawn the certificate fetcher");
        let certs = Arc::new(CustomCerts {
            table,
            seal,
            cache: quick_cache::sync::Cache::new(entries),
            wildcards: Default::default(),
            misses: quick_cache::sync::Cache::new(entries),
            miss_ttl,
            jobs: tx,
            disk,
            metrics,
            acme: quick_cache::sync::Cache::new(64),
        });
        certs.load_disk();
        let warm = certs.clone();
        std::thread::Builder::new()
            .name("edgeplane-certs-warm".into())
            .spawn(move || warm.warm_wildcards())
            .expect("spawn the wildcard loader");
        certs
    }

    /// Keeps every wildcard certificate of the index loaded: checks once a
    /// second, fetches the ones missing or older than the index.
    fn warm_wildcards(self: Arc<Self>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("wildcard loader runtime");
        rt.block_on(async move {
            let mut seen = u64::MAX;
            loop {
                let table = self.table.load_full();
                if table.version() != seen {
                    self.prune_wildcards(&table);
                    let due: Vec<String> = table
                        .tls()
                        .wildcard_certs()
                        .filter(|(name, rev)| self.cached(name).is_none_or(|c| c.revision < *rev))
                        .map(|(name, _)| name.to_string())
                        .collect();
                    let mut all_loaded = true;
                    for name in due {
                        all_loaded &= self.fetch(&name).await;
                    }
                    if all_loaded {
                        seen = table.version();
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Drops the pinned wildcards the index no longer has (an empty index
    /// is a start without the database: nothing is dropped then).
    fn prune_wildcards(&self, table: &edgeplane_control_sync::RoutingTable) {
        if table.tls().certificates() == 0 {
            return;
        }
        let gone: Vec<Box<str>> = self
            .wildcards
            .load()
            .keys()
            .filter(|parent| table.cert_revision(&format!("*.{parent}")).is_none())
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        self.wildcards.rcu(|m| {
            let mut m = HashMap::clone(m);
            for g in &gone {
                m.remove(g);
            }
            m
        });
        for g in gone {
            if let Some(dir) = &self.disk {
                let _ = std::fs::remove_file(Self::disk_file(dir, &format!("*.{g}")));
            }
            log::info!("tls: *.{g}: the control plane no longer has its certificate; not served any more");
        }
    }

    /// The copy in memory of a certificate name (`*.x` from the pinned
    /// wildcards).
    fn cached(&self, name: &str) -> Option<Cached> {
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcards.load().get(parent).cloned(),
            None => self.cache.get(name),
        }
    }

    /// Keeps a good copy: a wildcard among the pinned ones, any other name
    /// in the LRU.
    fn keep(&self, name: &str, c: Cached) {
        if let Some(parent) = name.strip_prefix("*.") {
            self.wildcards.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.insert(parent.into(), c.clone());
                m
            });
        } else {
            self.cache.insert(name.into(), c);
            self.metrics.certs_cached.set(self.cache.len() as i64);
        }
    }

    /// Makes sure the certificate for `sni` is in memory if the control
    /// plane has one (fetching it, once, if not), before the handshake.
    pub async fn prepare(&self, sni: &str, overridden: bool) {
        if overridden {
            return;
        }
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        let table = self.table.load_full();
        let wildcard = name.split_once('.').map(|(_, p)| format!("*.{p}"));
        let wanted = match table.cert_revision(&name) {
            Some(r) => Some((name.clone(), r)),
            None => wildcard.and_then(|w| table.cert_revision(&w).map(|r| (w, r))),
        };
        let Some((key, revision)) = wanted else {
            if self.cache.get(name.as_str()).is_none() && permitted(&table, &name) && !self.missed(&name, None) {
                // Ask the issuer once per miss TTL; the handshake fails now.
                self.remember_miss(&name, None);
                let _ = self.jobs.try_send(Job::Wake(name));
            }
            return;
        };
        if self.cached(&key).is_some_and(|c| c.revision >= revision) || self.missed(&key, Some(revision)) {
            return;
        }
        // Concurrent handshakes for the name (a browser opens several) all
        // wait here; the fetcher asks the database once for them.
        if !self.fetch(&key).await {
            self.remember_miss(&key, Some(revision));
        }
    }

    /// Whether `name` (at this index revision) missed within the miss TTL.
    fn missed(&self, name: &str, revision: Option<u64>) -> bool {
        self.misses
            .get(name)
            .is_some_and(|(until, rev)| until > crate::clock::now_ms() && rev == revision)
    }

    fn remember_miss(&self, name: &str, revision: Option<u64>) {
        let until = crate::clock::now_ms() + self.miss_ttl.as_millis() as u64;
        self.misses.insert(name.into(), (until, revision));
    }

    /// Fetches `name` through the fetcher and keeps it when it is good;
    /// returns whether it did.
    async fn fetch(&self, name: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        let job = Job::Fetch {
            name: name.to_string(),
            reply,
        };
        if self.jobs.try_send(job).is_err() {
            self.metrics.cert_fetches.inc("error");
            return false;
        }
        let Ok((answer, asked)) = answer.await else {
            self.metrics.cert_fetches.inc("error");
            return false;
        };
        // A joined ask parses the same row for itself (the first may not
        // have kept its copy yet); only the first is counted and written.
        if !asked {
            return match answer {
                Ok(Some(row)) => self.open(&row).map(|c| self.keep(name, c)).is_ok(),
                _ => false,
            };
        }
        match answer {
            Ok(Some(row)) => match self.open(&row) {
                Ok(c) => {
                    self.metrics.cert_fetches.inc("ok");
                    self.misses.remove(name);
                    self.write_disk(&row);
                    self.keep(name, c);
                    return true;
                }
                Err(e) => {
                    self.metrics.cert_fetches.inc("bad");
                    log::warn!("tls: the control plane's certificate for {name} is refused: {e}");
                }
            },
            Ok(None) => self.metrics.cert_fetches.inc("missing"),
            Err(e) => {
                self.metrics.cert_fetches.inc("error");
                log::debug!("tls: fetching the certificate for {name}: {e}");
            }
        }
        false
    }

    /// Opens a row's key and parses the pair; refuses an expired one.
    fn open(&self, row: &StoredCert) -> Result<Cached, String> {
        let key = self
            .seal
            .open(&row.hostname, &row.key_sealed)
            .map_err(|e| e.to_string())?;
        if row.not_after <= (crate::clock::now_ms() / 1000) as i64 {
            return Err(format!("it expired at {} (Unix s)", row.not_after));
        }
        let (_, ck) = super::tls::certified_key(row.chain_pem.as_bytes(), &key)?;
        Ok(Cached {
            revision: row.revision,
            key: Arc::new(ck),
        })
    }

    /// The certificate for `name` (lower case) held in memory: exact, else
    /// the wildcard one label up. `dir_wildcard`: the override directory
    /// has a wildcard for it (which wins over the control plane's).
    pub fn resolve(&self, name: &str, dir_wildcard: Option<&Arc<CertifiedKey>>) -> Chosen {
        let table = self.table.load();
        let count = |cert: &str, outcome: &str| self.count_handshake(cert, outcome);
        if let Some(c) = self.cache.get(name) {
            if self.still_issued(&table, name) {
                count("custom", "served");
                return Chosen::Key(c.key);
            }
            self.forget(name);
        }
        if let Some(k) = dir_wildcard {
            count("override", "served");
            return Chosen::Key(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.wildcards.load().get(parent).cloned() {
                count("wildcard", "served");
                return Chosen::Key(c.key);
            }
        }
        if table.cert_revision(name).is_some() || permitted(&table, name) {
            count("custom", "not_issued");
            Chosen::NotIssued
        } else {
            count("none", "unknown_name");
            Chosen::Unknown
        }
    }

    /// Counts one certificate choice in `edgeplane_tls_handshakes_total`.
    pub fn count_handshake(&self, cert: &str, outcome: &str) {
        self.metrics.tls_handshakes.with_label_values(&[cert, outcome]).inc();
    }

    /// Whether a copy held of `name` may serve: the index still has the
    /// name, or the index is empty (a start from the last-known-good file
    /// while the database is away: the disk cache is all there is).
    fn still_issued(&self, table: &edgeplane_control_sync::RoutingTable, name: &str) -> bool {
        table.cert_revision(name).is_some() || table.tls().certificates() == 0
    }

    /// Drops a certificate the control plane no longer has (revoked,
    /// removed): from memory and from the disk cache.
    fn forget(&self, name: &str) {
        self.cache.remove(name);
        self.metrics.certs_cached.set(self.cache.len() as i64);
        if let Some(dir) = &self.disk {
            let _ = self.jobs.try_send(Job::Forget(Self::disk_file(dir, name)));
        }
        log::info!("tls: {name}: the control plane no longer has its certificate; not served any more");
    }

    /// The TLS-ALPN-01 challenge certificate for `name` (RFC 8737), when
    /// the issuer published one.
    pub fn acme_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let c = table.tls().alpn_challenge(name, crate::clock::now_ms() as i64)?;
        let token = c.key_authorization.split('.').next().unwrap_or_default();
        let k = match self.acme.get(token) {
            Some(k) => k,
            None => {
                let k = Arc::new(alpn_certificate(name, &c.key_authorization).ok()?);
                self.acme.insert(token.into(), k.clone());
                k
            }
        };
        self.count_handshake("acme", "served");
        Some(k)
    }

    /// The file of `name` in the disk cache (`*` is not a hostname byte).
    fn disk_file(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{}.json", name.replace('*', "_")))
    }

    /// Keeps a fetched row on disk (written whole, then renamed).
    fn write_disk(&self, row: &StoredCert) {
        let Some(dir) = &self.disk else { return };
        use base64::Engine;
        let doc = serde_json::json!({
            "hostname": row.hostname,
            "revision": row.revision,
            "not_after": row.not_after,
            "chain_pem": row.chain_pem,
            "key_sealed": base64::engine::general_purpose::STANDARD.encode(&row.key_sealed),
        });
        let path = Self::disk_file(dir, &row.hostname);
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, doc.to_string()))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            log::warn!("tls: could not keep {} in the disk cache: {e}", path.display());
        }
    }

    /// Loads every disk cache entry that opens; skips (and says) the rest.
    fn load_disk(&self) {
        let Some(dir) = &self.disk else { return };
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let (mut loaded, mut skipped) = (0, 0);
        for e in rd.filter_map(|e| e.ok()) {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match read_disk_entry(&path).and_then(|row| self.open(&row).map(|c| (row.hostname, c))) {
                Ok((name, c)) => {
                    self.keep(&name, c);
                    loaded += 1;
                }
                Err(e) => {
                    skipped += 1;
                    log::warn!("tls: skipped {} from the certificate disk cache: {e}", path.display());
                }
            }
        }
        self.metrics.certs_cached.set(self.cache.len() as i64);
        if loaded + skipped > 0 {
            log::info!(
                "tls: {loaded} certificate(s) from the disk cache {} ({skipped} skipped)",
                dir.display()
            );
        }
    }
}

/// One disk cache file.
fn read_disk_entry(path: &Path) -> Result<StoredCert, String> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let s = |k: &str| v[k].as_str().map(str::to_string).ok_or(format!("no {k}"));
    Ok(StoredCert {
        hostname: s("hostname")?,
        chain_pem: s("chain_pem")?,
        key_sealed: base64::engine::general_purpose::STANDARD
            .decode(s("key_sealed")?)
            .map_err(|e| e.to_string())?,
        revision: v["revision"].as_u64().ok_or("no revision")?,
        not_after: v["not_after"].as_i64().ok_or("no not_after")?,
    })
}

/// Whether `name` is a custom domain the platform knows (here, or homed in
/// another region): the permission to ask the issuer.
fn permitted(table: &edgeplane_control_sync::RoutingTable, name: &str) -> bool {
    table.repl_by_domain(name).is_some() || table.home_region(Name::Domain(name)).is_some()
}

/// The self-signed certificate RFC 8737 asks for: `name` as its only SAN
/// and the SHA-256 of the key authorization in a critical acmeIdentifier.
fn alpn_certificate(name: &str, key_authorization: &str) -> Result<CertifiedKey, String> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    super::tls::unchecked_certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).map(|(_, k)| k)
}

/// The fetcher thread: one connection (made again after a failure), jobs
/// answered in order, concurrent asks for one name joined.
fn fetcher(url: String, mut jobs: mpsc::Receiver<Job>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("certificate fetcher runtime");
    rt.block_on(async move {
        let mut db = Db { url, client: None };
        // Connected ahead of the first handshake that needs it.
        let _ = db.client().await;
        let mut waiting: HashMap<String, Vec<oneshot::Sender<(Fetched, bool)>>> = HashMap::new();
        // Answers of the last [`JOIN_WINDOW`]: a handshake that asks while
        // the query for its name is running gets that query's answer.
        let mut recent: HashMap<String, (std::time::Instant, Fetched)> = HashMap::new();
        while let Some(job) = jobs.recv().await {
            // Every ask already queued joins this round: one query per name.
            let mut round = vec![job];
            while let Ok(j) = jobs.try_recv() {
                round.push(j);
            }
            let mut wakes = Vec::new();
            for job in round {
                match job {
                    Job::Forget(file) => {
                        let _ = std::fs::remove_file(file);
                    }
                    Job::Wake(name) => wakes.push(name),
                    Job::Fetch { name, reply } => match recent.get(&name) {
                        Some((at, answer)) if at.elapsed() < JOIN_WINDOW => {
                            let _ = reply.send((answer.clone(), false));
                        }
                        _ => waiting.entry(name).or_default().push(reply),
                    },
                }
            }
            recent.retain(|_, (at, _)| at.elapsed() < JOIN_WINDOW);
            if wakes.is_empty() && waiting.is_empty() {
                continue;
            }
            // One connection attempt a round: a database that is away
            // costs the round one connect timeout, not one per name.
            let client = db.client().await;
            let mut hung = false;
            for name in wakes {
                if let Some(c) = client {
                    hung |= tokio::time::timeout(QUERY_TIMEOUT, store::wake_issuer(c, &name))
                        .await
                        .is_err();
                }
            }
            for (name, replies) in waiting.drain() {
                let answer = match client {
                    _ if hung => Err("the database did not answer".to_string()),
                    Some(c) => match tokio::time::timeout(QUERY_TIMEOUT, store::fetch(c, &name)).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => {
                            hung = true;
                            Err(format!("no answer within {QUERY_TIMEOUT:?}"))
                        }
                    },
                    None => Err("no database connection".to_string()),
                };
                for (i, r) in replies.into_iter().enumerate() {
                    let _ = r.send((answer.clone(), i == 0));
                }
                recent.insert(name, (std::time::Instant::now(), answer));
            }
            if hung {
                // A hung server: connect afresh next round.
                db.client = None;
            }
        }
    });
}

/// How long a fetch's answer also answers later asks for the same name.
const JOIN_WINDOW: Duration = Duration::from_secs(1);

/// The longest a fetch (or a wake) waits for the database.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The fetcher's connection, made (again) when a job needs it.
struct Db {
    url: String,
    client: Option<tokio_postgres::Client>,
}

impl Db {
    async fn client(&mut self) -> Option<&tokio_postgres::Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = connect(&self.url).await;
        }
        self.client.as_ref()
    }
}

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let connecting = tokio_postgres::connect(url, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(2), connecting).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Some(client)
        }
        Ok(Err(e)) => {
            log::debug!("tls: certificate fetcher: {e}");
            None
        }
        Err(_) => None,
    }
}

/// Reads the SNI name of the ClientHello at the start of `stream` without
/// consuming it: the bytes read are put back (Pingora's `rewind`) for the
/// handshake. None when the hello names no server or is not TLS.
pub async fn peek_sni(stream: &mut pingora_core::protocols::l4::stream::Stream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let name = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break None;
        }
        seen.extend_from_slice(&chunk[..n]);
        let mut rd = &chunk[..n];
        while !rd.is_empty() {
            if acceptor.read_tls(&mut rd).is_err() {
                stream.rewind(&seen);
                return None;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted.client_hello().server_name().map(str::to_string),
            Ok(None) if seen.len() < 16 * 1024 => continue,
            _ => break None,
        }
    };
    stream.rewind(&seen);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alpn_certificate_carries_the_key_authorization_digest() {
        use sha2::Digest;
        let k = alpn_certificate("www.example.com", "token.thumb").unwrap();
        let der = k.cert[0].as_ref();
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        let digest = sha2::Sha256::digest(b"token.thumb");
        assert_eq!(&ext.value[2..], digest.as_slice(), "an OCTET STRING of the digest");
        assert_eq!(
            edgeplane_control_sync::certs::pem::dns_names(&cert),
            vec!["www.example.com"]
        );
    }
}
