//! What the routing table knows about TLS: which hostnames have a
//! certificate in the control plane (and at which revision), and the ACME
//! challenges every edge answers for the CA.
//!
//! Where it sits: the sync applies `certificates` and `acme_challenges`
//! rows ([`super::Change::UpsertCertificate`] and friends) into this index
//! with the rest of a batch; the edge's certificate resolver asks
//! [`super::RoutingTable::cert_revision`] whether a handshake's name is
//! worth a fetch (never the database for a name the index does not hold),
//! and the plain listener answers `/.well-known/acme-challenge/<token>` from
//! [`super::RoutingTable::acme_challenge`].
//!
//! Invariants: the index holds names and numbers only, never a PEM or a
//! key (the delta stream does not carry them); hostnames are lower case
//! without a trailing dot; the whole index sits behind one `Arc` in the
//! table, copied only by a batch that changes it. Memory: about 60 bytes
//! per certificate name (bench/results/certs/).

use std::collections::HashMap;

/// Which challenge a row answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `GET /.well-known/acme-challenge/<token>` on the plain listener.
    Http01,
    /// The challenge certificate on ALPN `acme-tls/1` (RFC 8737).
    TlsAlpn01,
}

impl ChallengeKind {
    pub fn parse(s: &str) -> Option<ChallengeKind> {
        match s {
            "http-01" => Some(ChallengeKind::Http01),
            "tls-alpn-01" => Some(ChallengeKind::TlsAlpn01),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// One live challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub key_authorization: Box<str>,
    pub hostname: Box<str>,
    pub kind: ChallengeKind,
    /// Unix ms; an expired challenge is not answered.
    pub expires_at_ms: i64,
}

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct TlsIndex {
    /// Hostname (or `*.<suffix>`) -> certificate revision.
    pub(super) certs: HashMap<Box<str>, u64>,
    /// The `*.<suffix>` entries of `certs` again (a handful): what an edge
    /// keeps loaded at all times.
    pub(super) wildcards: HashMap<Box<str>, u64>,
    /// Token -> challenge.
    pub(super) challenges: HashMap<Box<str>, Challenge>,
}

impl TlsIndex {
    /// The revision of `host`'s certificate in the control plane.
    pub fn cert_revision(&self, host: &str) -> Option<u64> {
        self.certs.get(host).copied()
    }

    pub fn certificates(&self) -> usize {
        self.certs.len()
    }

    pub fn challenges(&self) -> usize {
        self.challenges.len()
    }

    /// The live challenge of `kind` for `token` at `now_ms`.
    pub fn challenge(&self, token: &str, kind: ChallengeKind, now_ms: i64) -> Option<&Challenge> {
        self.challenges
            .get(token)
            .filter(|c| c.kind == kind && c.expires_at_ms > now_ms)
    }

    /// The live TLS-ALPN-01 challenge for `host` (challenges are few: at
    /// most the issuer's orders in flight).
    pub fn alpn_challenge(&self, host: &str, now_ms: i64) -> Option<&Challenge> {
        self.challenges
            .values()
            .find(|c| c.kind == ChallengeKind::TlsAlpn01 && c.expires_at_ms > now_ms && &*c.hostname == host)
    }

    /// The wildcard certificates (`*.<suffix>`) with their revisions.
    pub fn wildcard_certs(&self) -> impl Iterator<Item = (&str, u64)> {
        self.wildcards.iter().map(|(k, v)| (&**k, *v))
    }

    pub(super) fn insert_cert(&mut self, name: String, revision: u64) {
        if name.starts_with("*.") {
            self.wildcards.insert(name.as_str().into(), revision);
        }
        self.certs.insert(name.into(), revision);
    }

    pub(super) fn remove_cert(&mut self, name: &str) {
        self.wildcards.remove(name);
        self.certs.remove(name);
    }
}

/// A certificate name: a hostname, or `*.` and a hostname.
pub fn is_valid_cert_name(s: &str) -> bool {
    super::is_valid_hostname(s.strip_prefix("*.").unwrap_or(s))
}
