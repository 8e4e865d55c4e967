//! Workspace session tokens (docs/contract.md §6): what opens
//! `/__ws/<repl-id>` on an edge.
//!
//! - **Version 2** (the one to mint): PASETO `v4.public`, Ed25519 from
//!   the `pasetors` crate. The platform's web server holds the secret key
//!   and calls [`mint`]; edges hold public keys only ([`Verifier`]), so an
//!   edge that is broken into cannot mint a session for anyone. Claims
//!   `repl`, `region` (the repl's home region: an edge that does not know
//!   the repl forwards the session there), optional `cluster`, `exp`
//!   (RFC 3339); footer `{"kid":"k4.pid..."}` names the signing key by its
//!   PASERK id, so several keys can be live during a rotation.
//! - **Version 1** (accepted only while an edge is given the shared HMAC
//!   key, for the migration): `base64url(payload).base64url(HMAC-SHA256)`,
//!   payload `{"repl":..,"exp":unix_seconds}` ([`v1`]).
//!
//! Where it sits: a leaf crate. The edge's routing core
//! (`edgeplane-core`) verifies with a [`Verifier`] built from the config;
//! `placectl token keygen|mint` and the web server mint. Pure: no I/O, no
//! clock (time is an argument); key generation takes the operating
//! system's randomness through `pasetors`.
//!
//! Invariants: a token's text, a secret key's bytes and a v1 key never
//! appear in a `Debug` or `Display` output of this crate; every refusal is
//! one [`Refusal`] (all are 401 at the edge), counted with the token's
//! [`Version`] when it could be told.
//!
//! Start at [`Verifier::verify`] and [`mint`].

mod keys;
pub mod v1;
mod v2;

pub use keys::{keygen, KeyError, PublicKey, SecretKey};
pub use v2::{mint, Claims, MintError};

/// Longer tokens are refused unread (a header line holds at most 64 KiB;
/// a real token is a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// How far in the future a `nbf` (not before) claim may be and still pass:
/// clock skew between the web server and the edge.
pub const NBF_LEEWAY_SECS: i64 = 60;

/// Which token format a token was (the `version` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::V1, Version::V2];

    /// `"1"` or `"2"`.
    pub fn label(self) -> &'static str {
        match self {
            Version::V1 => "1",
            Version::V2 => "2",
        }
    }

    /// The version a token's text has, if any.
    pub fn of(token: &str) -> Option<Version> {
        if token.starts_with(v2::HEADER) {
            Some(Version::V2)
        } else if token.bytes().filter(|&b| b == b'.').count() == 1 {
            Some(Version::V1)
        } else {
            None
        }
    }
}

/// Why a token was refused (each is a 401 at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No token at all.
    Missing,
    /// Not a token of a known version, bad encoding, bad JSON, a claim
    /// missing or of the wrong type, too long.
    Malformed,
    /// A version this edge does not accept: v1 without
    /// `workspace_token_key_file`, v2 without public keys.
    Disabled,
    /// A v2 token whose `kid` names no key this edge holds (never held, or
    /// removed by a rotation).
    UnknownKey,
    BadSignature,
    Expired,
    /// A `nbf` claim further in the future than the clock skew allows.
    NotYetValid,
    /// A valid token for another repl.
    WrongRepl,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::Disabled,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::WrongRepl,
    ];

    /// The `outcome` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Disabled => "disabled",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongRepl => "wrong_repl",
        }
    }
}

/// A token that checked out: what it says about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub version: Version,
    /// The repl's home region (v2; a v1 token names none).
    pub region: Option<String>,
    /// The repl's cluster, when the minter named it (v2).
    pub cluster: Option<String>,
    /// The `kid` of the key that signed it (v2).
    pub kid: Option<String>,
}

/// A refused token: why, and which version it was when that could be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub version: Option<Version>,
    pub why: Refusal,
}

/// The keys an edge checks workspace tokens with: public keys for v2, the
/// shared HMAC key for v1 while the migration lasts.
#[derive(Clone, Default, PartialEq)]
pub struct Verifier {
    keys: Vec<PublicKey>,
    v1_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.kids().collect::<Vec<_>>())
            .field("v1", &self.v1_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Verifier {
    /// A verifier for v2 tokens signed by any of `keys` and, when
    /// `v1_key` is given, v1 tokens under that HMAC key.
    pub fn new(keys: Vec<PublicKey>, v1_key: Option<Vec<u8>>) -> Verifier {
        let mut keys = keys;
        keys.dedup_by(|a, b| a == b);
        Verifier { keys, v1_key }
    }

    /// The PASERK ids of the v2 keys, in file order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(PublicKey::kid)
    }

    /// Whether v1 tokens are still accepted.
    pub fn accepts_v1(&self) -> bool {
        self.v1_key.is_some()
    }

    /// Checks `token` for a session of `repl` at `now_secs` (Unix time).
    pub fn verify(&self, token: Option<&str>, repl: &str, now_secs: u64) -> Result<Session, Refused> {
        let refuse = |version, why| Refused { version, why };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(refuse(None, Refusal::Missing));
        };
        let version = Version::of(token);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refuse(version, Refusal::Malformed));
        }
        match version {
            None => Err(refuse(None, Refusal::Malformed)),
            Some(Version::V2) if self.keys.is_empty() => Err(refuse(version, Refusal::Disabled)),
            Some(Version::V2) => v2::verify(&self.keys, token, repl, now_secs).map_err(|why| refuse(version, why)),
            Some(Version::V1) => match &self.v1_key {
                None => Err(refuse(version, Refusal::Disabled)),
                Some(key) => v1::verify(key, token, repl, now_secs)
                    .map(|()| Session {
                        version: Version::V1,
                        region: None,
                        cluster: None,
                        kid: None,
                    })
                    .map_err(|why| refuse(version, why)),
            },
        }
    }
}

#[cfg(test)]
mod tests;
