//! Version 2: PASETO `v4.public` with claims `repl`, `region`, optional
//! `cluster`, `exp` (RFC 3339) and footer `{"kid":"k4.pid..."}`.
//!
//! Verification reads the footer first (untrusted: it only picks the key;
//! the signature covers it), verifies the signature with that key, then
//! reads the claims: `exp` must be in the future, `nbf` (when a minter
//! sets it) not more than [`crate::NBF_LEEWAY_SECS`] ahead, `repl` the
//! path's repl. Other claims are ignored, so a minter may add its own.

use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use pasetors::Public;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::keys::{PublicKey, SecretKey};
use crate::{Refusal, Session, Version, NBF_LEEWAY_SECS};

/// Every v2 token starts with this.
pub(crate) const HEADER: &str = "v4.public.";

/// What a v2 token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims<'a> {
    pub repl: &'a str,
    /// The repl's home region.
    pub region: &'a str,
    pub cluster: Option<&'a str>,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// A token that could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("claim {0} is empty")]
    EmptyClaim(&'static str),
    #[error("expiry {0} is not a representable time")]
    BadExpiry(u64),
    #[error("signing failed: {0}")]
    Sign(String),
}

#[derive(Serialize)]
struct ClaimsOut<'a> {
    repl: &'a str,
    region: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a str>,
    exp: String,
}

#[derive(Deserialize)]
struct ClaimsIn {
    repl: String,
    region: String,
    #[serde(default)]
    cluster: Option<String>,
    exp: String,
    #[serde(default)]
    nbf: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Footer<'a> {
    #[serde(borrow)]
    kid: &'a str,
}

/// Mints a v2 workspace token: what the platform's web server does for a
/// session (and `placectl token mint`).
pub fn mint(key: &SecretKey, claims: &Claims<'_>) -> Result<String, MintError> {
    for (name, v) in [("repl", claims.repl), ("region", claims.region)] {
        if v.is_empty() {
            return Err(MintError::EmptyClaim(name));
        }
    }
    let exp = i64::try_from(claims.expires_at)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or(MintError::BadExpiry(claims.expires_at))?;
    let payload = serde_json::to_vec(&ClaimsOut {
        repl: claims.repl,
        region: claims.region,
        cluster: claims.cluster.filter(|c| !c.is_empty()),
        exp,
    })
    .expect("claims serialise");
    let footer = serde_json::to_vec(&Footer {
        kid: key.public_key().kid(),
    })
    .expect("footer serialises");
    PublicToken::sign(key.key(), &payload, Some(&footer), None).map_err(|e| MintError::Sign(e.to_string()))
}

fn unix_secs(rfc3339: &str) -> Option<i64> {
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Checks a v2 token (see the module docs).
pub(crate) fn verify(keys: &[PublicKey], token: &str, repl: &str, now_secs: u64) -> Result<Session, Refusal> {
    let untrusted = UntrustedToken::<Public, V4>::try_from(token).map_err(|_| Refusal::Malformed)?;
    let footer: Footer<'_> = serde_json::from_slice(untrusted.untrusted_footer()).map_err(|_| Refusal::Malformed)?;
    let key = keys.iter().find(|k| k.kid() == footer.kid).ok_or(Refusal::UnknownKey)?;
    let trusted = PublicToken::verify(key.key(), &untrusted, None, None).map_err(|_| Refusal::BadSignature)?;
    let claims: ClaimsIn = serde_json::from_str(trusted.payload()).map_err(|_| Refusal::Malformed)?;
    let now = i64::try_from(now_secs).unwrap_or(i64::MAX);
    let exp = unix_secs(&claims.exp).ok_or(Refusal::Malformed)?;
    if exp <= now {
        return Err(Refusal::Expired);
    }
    if let Some(nbf) = &claims.nbf {
        let nbf = unix_secs(nbf).ok_or(Refusal::Malformed)?;
        if nbf > now.saturating_add(NBF_LEEWAY_SECS) {
            return Err(Refusal::NotYetValid);
        }
    }
    if claims.region.is_empty() {
        return Err(Refusal::Malformed);
    }
    if claims.repl != repl {
        return Err(Refusal::WrongRepl);
    }
    Ok(Session {
        version: Version::V2,
        region: Some(claims.region),
        cluster: claims.cluster.filter(|c| !c.is_empty()),
        kid: Some(key.kid().to_string()),
    })
}
