//! TLS certificates chosen by SNI, from a directory, reloaded live.
//!
//! `tls.certs_dir` holds PEM pairs `NAME.crt` (chain) + `NAME.key`: one
//! wildcard certificate per hosting suffix (`*.repl.co`) and one per custom
//! domain. [`CertStore::load_dir`] reads every pair and indexes it by the DNS
//! names in the certificate (subject alternative names, else the common
//! name): exact names, and wildcard names by the domain under the `*.`.
//! [`CertStore::lookup`] answers an SNI name with the exact entry, else the
//! wildcard one label up (a wildcard covers exactly one label, RFC 6125).
//!
//! Reload: [`spawn_watcher`] checks the directory every
//! `tls.reload_interval_ms` (names, sizes, modification times) and, on a
//! change, builds a whole new store and swaps it into the [`SniResolver`]
//! (ArcSwap: handshakes in flight keep the store they started with). A pair
//! that fails to load is logged and counted, and when the running store
//! holds a pair from the same file (a replacement that is broken, or half
//! written: the new `.crt` beside the old `.key`) that one keeps serving —
//! a bad replacement never takes a name's certificate away; only removing
//! the `.crt` does. Connections without SNI, or naming a host with no
//! certificate, fail the handshake.
//!
//! Start at [`CertStore::load_dir`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::metrics::Metrics;

/// Why one certificate pair was skipped.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}: no matching .key file")]
    NoKey(PathBuf),
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{0}: the certificate names no DNS host")]
    NoNames(PathBuf),
}

impl CertError {
    /// The `.crt` file of the pair (None: the directory itself).
    pub fn crt(&self) -> Option<&PathBuf> {
        match self {
            CertError::NoKey(p) | CertError::NoNames(p) => Some(p),
            CertError::Load { path, .. } => path.extension().is_some_and(|e| e == "crt").then_some(path),
        }
    }
}

/// Certificates by name (built whole, then swapped in).
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Each loaded pair by its `.crt` path: what a reload keeps when the
    /// file's new contents do not load.
    files: HashMap<PathBuf, Pair>,
}

/// One loaded pair: the names it covers and the key.
#[derive(Clone)]
struct Pair {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// What [`CertStore::load_dir_keeping`] did with the pairs that failed.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Pairs that did not load, and why.
    pub errors: Vec<CertError>,
    /// Of those, the `.crt` files whose previous pair keeps serving.
    pub kept: Vec<PathBuf>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CertStore {
    /// Certificate pairs loaded.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn insert(&mut self, crt: PathBuf, pair: Pair) {
        for n in &pair.names {
            match n.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_string(), pair.key.clone()),
                None => self.exact.insert(n.clone(), pair.key.clone()),
            };
        }
        self.files.insert(crt, pair);
    }

    /// The certificate for an SNI name: exact, else wildcard one label up.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let name = normalize(sni);
        self.exact(&name).or_else(|| self.wildcard_for(&name))
    }

    /// The exact entry for a normalized name.
    pub fn exact(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(name)
    }

    /// The wildcard one label up of a normalized name (never `*.com`).
    pub fn wildcard_for(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let (_, parent) = name.split_once('.')?;
        if parent.contains('.') {
            self.wildcard.get(parent)
        } else {
            None
        }
    }

    /// Loads every `*.crt` with its `*.key` in `dir`. Returns the store and
    /// the pairs that were skipped.
    pub fn load_dir(dir: &Path) -> (CertStore, Vec<CertError>) {
        let (store, report) = CertStore::load_dir_keeping(dir, &CertStore::default());
        (store, report.errors)
    }

    /// [`CertStore::load_dir`], keeping `previous`'s pair for every `.crt`
    /// whose new contents do not load (see the module docs).
    pub fn load_dir_keeping(dir: &Path, previous: &CertStore) -> (CertStore, LoadReport) {
        let mut store = CertStore::default();
        let mut report = LoadReport::default();
        let mut crts: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "crt"))
                .collect(),
            Err(e) => {
                report.errors.push(CertError::Load {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                });
                return (store, report);
            }
        };
        crts.sort();
        for crt in crts {
            match load_pair(&crt) {
                Ok((names, key)) => store.insert(
                    crt,
                    Pair {
                        names,
                        key: Arc::new(key),
                    },
                ),
                Err(e) => {
                    if let Some(old) = previous.files.get(&crt) {
                        store.insert(crt.clone(), old.clone());
                        report.kept.push(crt);
                    }
                    report.errors.push(e);
                }
            }
        }
        (store, report)
    }
}

/// An SNI name as the stores key it: lower case, no trailing dot.
pub fn normalize(sni: &str) -> std::borrow::Cow<'_, str> {
    let name = sni.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    }
}

/// Reads one pair and the DNS names its leaf certificate covers.
fn load_pair(crt: &Path) -> Result<(Vec<String>, CertifiedKey), CertError> {
    let key_path = crt.with_extension("key");
    if !key_path.exists() {
        return Err(CertError::NoKey(crt.to_path_buf()));
    }
    let load_err = |message: String| CertError::Load {
        path: crt.to_path_buf(),
        message,
    };
    let chain = std::fs::read(crt).map_err(|e| load_err(e.to_string()))?;
    let key = std::fs::read(&key_path).map_err(|e| load_err(format!("{}: {e}", key_path.display())))?;
    match certified_key(&chain, &key) {
        Ok((names, _)) if names.is_empty() => Err(CertError::NoNames(crt.to_path_buf())),
        Ok(pair) => Ok(pair),
        Err(message) => Err(load_err(message)),
    }
}

/// Parses a PEM chain and its PEM private key into what rustls serves,
/// with the DNS names of the leaf; the key must belong to the leaf.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<(Vec<String>, CertifiedKey), String> {
    let (names, ck) = unchecked_certified_key(chain_pem, key_pem)?;
    ck.keys_match()
        .map_err(|e| format!("key does not match certificate: {e}"))?;
    Ok((names, ck))
}

/// [`certified_key`] without the key check (which parses the leaf with
/// webpki: a TLS-ALPN-01 certificate's critical acmeIdentifier extension
/// is unknown to it). Only for certificates the edge made itself.
pub fn unchecked_certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<(Vec<String>, CertifiedKey), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let leaf = certs
        .first()
        .ok_or("no certificate or no private key in the PEM files")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| "no certificate or no private key in the PEM files".to_string())?;
    let names = dns_names(leaf.as_ref())?;
    pingora_rustls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key: {e}"))?;
    Ok((names, CertifiedKey::new(certs, signing)))
}

/// DNS names of a DER certificate: its SANs, else its common name.
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    Ok(edgeplane_control_sync::certs::pem::dns_names(&cert))
}

/// The rustls certificate resolver over a swappable [`CertStore`] (the
/// `tls.certs_dir` files) and, when configured, the control plane's
/// certificates ([`super::certs::CustomCerts`]).
#[derive(Default)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
    custom: std::sync::OnceLock<Arc<super::certs::CustomCerts>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("store", &self.store.load())
            .finish()
    }
}

/// ALPN of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl SniResolver {
    pub fn new(store: CertStore) -> Arc<SniResolver> {
        Arc::new(SniResolver {
            store: ArcSwap::from_pointee(store),
            custom: Default::default(),
        })
    }

    pub fn swap(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }

    pub fn store(&self) -> Arc<CertStore> {
        self.store.load_full()
    }

    /// Adds the control plane's certificates (once, at start).
    pub fn set_custom(&self, custom: Arc<super::certs::CustomCerts>) {
        let _ = self.custom.set(custom);
    }

    pub fn has_custom(&self) -> bool {
        self.custom.get().is_some()
    }

    /// Before a handshake for `sni`: fetches its control-plane certificate
    /// when one exists and is not in memory (see `CustomCerts::prepare`).
    pub async fn prepare(&self, sni: &str) {
        if let Some(c) = self.custom.get() {
            let overridden = self.store.load().exact(&normalize(sni)).is_some();
            c.prepare(sni, overridden).await;
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = normalize(hello.server_name()?);
        let custom = self.custom.get();
        if let Some(c) = custom {
            if hello.alpn().is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN)) {
                return c.acme_certificate(&name);
            }
        }
        let store = self.store.load();
        if let Some(k) = store.exact(&name) {
            if let Some(c) = custom {
                c.count_handshake("override", "served");
            }
            return Some(k.clone());
        }
        match custom {
            Some(c) => match c.resolve(&name, store.wildcard_for(&name)) {
                super::certs::Chosen::Key(k) => Some(k),
                _ => None,
            },
            None => store.wildcard_for(&name).cloned(),
        }
    }
}

/// The ring provider's cipher suites in the edge's order: per version
/// (TLS 1.3 first), AES-128-GCM, then ChaCha20-Poly1305, then AES-256-GCM.
/// rustls's default puts AES-256-GCM-SHA384 first and follows the client,
/// and clients built on rustls (and some others) ask for it first: its
/// SHA-384 key schedule has no SHA instructions on x86 (ring's portable
/// SHA-512 was 14% of the edge's CPU per resumed connection) and AES-256
/// does 40% more rounds per record than AES-128, which is the strength the
/// web's TLS runs on (browsers ask for it first themselves). Every suite
/// stays on offer, so a client that speaks only AES-256 still connects.
pub fn edge_cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::CipherSuite as C;
    let rank = |s: &rustls::SupportedCipherSuite| {
        let tls12 = matches!(s, rustls::SupportedCipherSuite::Tls12(_));
        let cipher = match s.suite() {
            C::TLS13_AES_128_GCM_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            C::TLS13_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 1,
            _ => 2,
        };
        (tls12, cipher)
    };
    let mut suites = rustls::crypto::ring::ALL_CIPHER_SUITES.to_vec();
    suites.sort_by_key(rank);
    suites
}

/// TLS 1.2 sessions kept for resumption (a few hundred bytes each).
pub const TLS_SESSION_CACHE: usize = 4096;

/// The rustls server config for HTTPS listeners: TLS 1.2 and 1.3; ALPN
/// offers HTTP/2 first, then HTTP/1.1 (WebSockets arrive on HTTP/1.1
/// connections: browsers open them separately).
pub fn server_config(resolver: Arc<SniResolver>) -> Arc<pingora_rustls::ServerConfig> {
    pingora_rustls::install_default_crypto_provider();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: edge_cipher_suites(),
        ..rustls::crypto::ring::default_provider()
    };
    let mut cfg = pingora_rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&pingora_rustls::version::TLS12, &pingora_rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // The edge's order, not the client's (see `edge_cipher_suites`).
    cfg.ignore_client_order = true;
    // acme-tls/1 last: only a CA validating TLS-ALPN-01 asks for it, and
    // only on such a connection is it chosen (the edge then closes it).
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    // Resumption: a returning client (a reconnecting WebSocket, a new tab)
    // skips the full handshake, about 460 µs of this edge's CPU (bench/
    // results/tls/). TLS 1.3 tickets are encrypted with keys this process
    // rotates (rustls: every 6 h); TLS 1.2 session ids are kept in memory.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(TLS_SESSION_CACHE);
    match rustls::crypto::ring::Ticketer::new() {
        Ok(t) => cfg.ticketer = t,
        Err(e) => log::error!("tls: no session tickets (full handshakes only): {e}"),
    }
    Arc::new(cfg)
}

/// What the watcher compares: every file's name, size and mtime.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.path(), m.len(), m.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Loads `dir` into `resolver`: pairs that fail are logged and counted,
/// and keep their previous certificate where there was one; the old store
/// stays whole when nothing loads. Returns whether it swapped.
pub fn reload(dir: &Path, resolver: &SniResolver, metrics: &Metrics) -> bool {
    let previous = resolver.store();
    let (store, report) = CertStore::load_dir_keeping(dir, &previous);
    for e in &report.errors {
        metrics.tls_reload_errors.inc();
        match e.crt().filter(|p| report.kept.contains(p)) {
            Some(_) => log::error!("tls: {e}; the certificate loaded before from this file keeps serving"),
            None => log::error!("tls: skipped certificate: {e}"),
        }
    }
    if store.is_empty() && !previous.is_empty() {
        log::error!(
            "tls: {} holds no usable certificate; keeping the {} loaded before",
            dir.display(),
            previous.len()
        );
        return false;
    }
    log::info!(
        "tls: {} certificate(s) in use from {} ({} kept from before)",
        store.len(),
        dir.display(),
        report.kept.len()
    );
    metrics.tls_certificates.set(store.len() as i64);
    resolver.swap(store);
    true
}

/// Re-reads `dir` whenever its files change (a plain thread; off every
/// request path).
pub fn spawn_watcher(
    dir: PathBuf,
    interval: Duration,
    resolver: Arc<SniResolver>,
    metrics: Arc<Metrics>,
    mut stop: crate::shutdown::Shutdown,
) {
    std::thread::Builder::new()
        .name("edgeplane-tls-watch".into())
        .spawn(move || {
            let mut seen = fingerprint(&dir);
            while !stop.is_shutdown() {
                std::thread::sleep(interval);
                let now = fingerprint(&dir);
                if now != seen {
                    seen = now;
                    reload(&dir, &resolver, &metrics);
                }
            }
        })
        .expect("spawn tls watcher");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, file: &str, names: &[&str]) {
        let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        std::fs::write(dir.join(format!("{file}.crt")), c.cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), c.key_pair.serialize_pem()).unwrap();
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_covers_one_label() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), "suffix", &["*.repl.co"]);
        write_pair(d.path(), "custom", &["www.example.com", "example.com"]);
        write_pair(d.path(), "special", &["special.repl.co"]);
        let (s, errors) = CertStore::load_dir(d.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.len(), 3);
        let wildcard = s.lookup("app.repl.co").unwrap();
        assert!(Arc::ptr_eq(wildcard, s.lookup("APP.repl.co.").unwrap()));
        assert!(!Arc::ptr_eq(wildcard, s.lookup("special.repl.co").unwrap()));
        assert!(s.lookup("a.b.repl.co").is_none(), "a wildcard covers one label");
        assert!(s.lookup("repl.co").is_none());
        assert!(s.lookup("example.com").is_some());
        assert!(s.lookup("other.example.com").is_none());
    }

    #[test]
    fn bad_pairs_are_skipped_with_reasons() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), "good", &["good.example"]);
        std::fs::write(d.path().join("nokey.crt"), "x").unwrap();
        std::fs::write(d.path().join("garbage.crt"), "not pem").unwrap();
        std::fs::write(d.path().join("garbage.key"), "not pem").unwrap();
        // A key that belongs to another certificate.
        write_pair(d.path(), "a", &["a.example"]);
        write_pair(d.path(), "b", &["b.example"]);
        std::fs::copy(d.path().join("b.key"), d.path().join("a.key")).unwrap();
        let (s, errors) = CertStore::load_dir(d.path());
        assert_eq!(s.len(), 2, "good and b load: {s:?}");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(s.lookup("a.example").is_none());
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(text
            .iter()
            .any(|t| t.contains("nokey.crt") && t.contains("no matching .key")));
        assert!(
            text.iter().any(|t| t.contains("a.crt") && t.contains("does not match")),
            "{text:?}"
        );
    }

    /// Overwriting a live pair's key with garbage (or writing a new `.crt`
    /// before its `.key`) keeps that pair's old certificate serving; the
    /// other pairs reload; removing the files does remove the certificate.
    #[test]
    fn a_broken_replacement_keeps_the_certificate_it_was_to_replace() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), "suffix", &["*.repl.co"]);
        write_pair(d.path(), "custom", &["app.example"]);
        let m = Metrics::new();
        let (s, _) = CertStore::load_dir(d.path());
        let r = SniResolver::new(s);
        let before = r.store().lookup("x.repl.co").unwrap().clone();
        std::fs::write(d.path().join("suffix.key"), "garbage").unwrap();
        write_pair(d.path(), "custom", &["app.example", "www.app.example"]);
        assert!(reload(d.path(), &r, &m));
        let store = r.store();
        assert!(
            Arc::ptr_eq(store.lookup("x.repl.co").unwrap(), &before),
            "the old wildcard serves"
        );
        assert!(
            store.lookup("www.app.example").is_some(),
            "the good replacement applies"
        );
        assert_eq!(store.len(), 2);
        assert_eq!(m.tls_reload_errors.get(), 1);
        assert_eq!(m.tls_certificates.get(), 2);
        std::fs::remove_file(d.path().join("suffix.crt")).unwrap();
        std::fs::remove_file(d.path().join("suffix.key")).unwrap();
        assert!(reload(d.path(), &r, &m));
        assert!(r.store().lookup("x.repl.co").is_none(), "removing the pair removes it");
    }

    #[test]
    fn reload_keeps_the_old_store_when_nothing_loads() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), "good", &["good.example"]);
        let m = Metrics::new();
        let (s, _) = CertStore::load_dir(d.path());
        let r = SniResolver::new(s);
        // The whole directory emptied (a botched deploy): nothing is swapped.
        std::fs::remove_file(d.path().join("good.key")).unwrap();
        std::fs::remove_file(d.path().join("good.crt")).unwrap();
        assert!(!reload(d.path(), &r, &m));
        assert!(r.store().lookup("good.example").is_some());
    }
}
