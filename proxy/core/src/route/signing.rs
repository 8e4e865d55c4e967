//! Signed values the edge trusts: the edge-to-edge hop header and the
//! workspace session token (docs/contract.md §6). Pure functions, time passed in.
//!
//! Hop header `x-edgeplane-hop`: `v1;<origin region>;<hops>;<unix secs>;<sig>`
//! where `sig` is unpadded base64url of HMAC-SHA256(hop secret,
//! `v1\n<origin>\n<hops>\n<ts>\n<canonical host>`). A header older (or
//! newer) than [`HOP_MAX_AGE_SECS`] or with a bad signature is treated as
//! absent, so a client cannot forge one to skip affinity or reach a VM
//! with internal headers.
//!
//! Workspace token: `base64url(payload).base64url(sig)` (unpadded), `sig` =
//! HMAC-SHA256(key, the payload part as sent, i.e. its base64url text),
//! payload JSON `{"repl": "<id>", "exp": <unix seconds>}`.
//!
//! Start at [`sign_hop`] / [`verify_hop`] and [`verify_token`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Hop headers older or newer than this are ignored.
pub const HOP_MAX_AGE_SECS: u64 = 30;

/// A verified hop header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub origin: String,
    pub hops: u8,
}

fn hop_mac(secret: &[u8], origin: &str, hops: u8, ts: u64, host: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"v1\n");
    mac.update(origin.as_bytes());
    mac.update(b"\n");
    mac.update(hops.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(ts.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(host.as_bytes());
    mac
}

/// The header value an edge of `origin` sends with its `hops`-th forward.
pub fn sign_hop(secret: &[u8], origin: &str, hops: u8, now_secs: u64, host: &str) -> String {
    let sig = hop_mac(secret, origin, hops, now_secs, host).finalize().into_bytes();
    format!("v1;{origin};{hops};{now_secs};{}", B64.encode(sig))
}

/// Verifies a hop header for the canonical `host`; `None` if it is not valid.
pub fn verify_hop(secret: &[u8], value: &[u8], now_secs: u64, host: &str) -> Option<Hop> {
    let value = std::str::from_utf8(value).ok()?;
    let mut parts = value.split(';');
    if parts.next()? != "v1" {
        return None;
    }
    let origin = parts.next()?;
    let hops: u8 = parts.next()?.parse().ok()?;
    let ts: u64 = parts.next()?.parse().ok()?;
    let sig = B64.decode(parts.next()?).ok()?;
    if parts.next().is_some() || origin.is_empty() || hops == 0 {
        return None;
    }
    if now_secs.abs_diff(ts) > HOP_MAX_AGE_SECS {
        return None;
    }
    hop_mac(secret, origin, hops, ts, host).verify_slice(&sig).ok()?;
    Some(Hop {
        origin: origin.to_string(),
        hops,
    })
}

/// Why a workspace token was refused (all map to 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    WrongRepl,
    NoKeyConfigured,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct TokenPayload {
    repl: String,
    exp: u64,
}

/// Mints a workspace token (the control plane's job; here for tests and
/// `edgeplane token`).
pub fn mint_token(key: &[u8], repl: &str, exp_secs: u64) -> String {
    let payload = B64.encode(
        serde_json::to_vec(&TokenPayload {
            repl: repl.into(),
            exp: exp_secs,
        })
        .unwrap(),
    );
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(payload.as_bytes());
    format!("{payload}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// Checks a workspace token for `repl` at `now_secs`.
pub fn verify_token(key: &[u8], token: &str, repl: &str, now_secs: u64) -> Result<(), TokenError> {
    let (payload_b64, sig_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let payload = B64.decode(payload_b64).map_err(|_| TokenError::Malformed)?;
    let p: TokenPayload = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if p.exp <= now_secs {
        return Err(TokenError::Expired);
    }
    if p.repl != repl {
        return Err(TokenError::WrongRepl);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &[u8] = b"0123456789abcdef-secret";

    #[test]
    fn hop_round_trips_and_binds_host_and_time() {
        let h = sign_hop(S, "us-east1", 1, 1000, "app1.repl.co");
        assert_eq!(
            verify_hop(S, h.as_bytes(), 1010, "app1.repl.co"),
            Some(Hop {
                origin: "us-east1".into(),
                hops: 1
            })
        );
        assert_eq!(verify_hop(S, h.as_bytes(), 1031, "app1.repl.co"), None, "too old");
        assert_eq!(verify_hop(S, h.as_bytes(), 1000, "app2.repl.co"), None, "other host");
        assert_eq!(
            verify_hop(b"another-secret-0000", h.as_bytes(), 1000, "app1.repl.co"),
            None
        );
        let forged = h.replace(";1;", ";0;");
        assert_eq!(verify_hop(S, forged.as_bytes(), 1000, "app1.repl.co"), None);
        let bumped = h.replacen("us-east1", "ap-south1", 1);
        assert_eq!(verify_hop(S, bumped.as_bytes(), 1000, "app1.repl.co"), None);
        assert_eq!(verify_hop(S, b"v1;x;1;1000;AAAA", 1000, "h"), None);
        assert_eq!(verify_hop(S, b"garbage", 1000, "h"), None);
    }

    #[test]
    fn token_checks() {
        let t = mint_token(S, "r1", 2000);
        assert_eq!(verify_token(S, &t, "r1", 1999), Ok(()));
        assert_eq!(verify_token(S, &t, "r1", 2000), Err(TokenError::Expired));
        assert_eq!(verify_token(S, &t, "r2", 1000), Err(TokenError::WrongRepl));
        assert_eq!(
            verify_token(b"wrong-key-000000000", &t, "r1", 1000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify_token(S, "nodot", "r1", 1000), Err(TokenError::Malformed));
        let (p, _) = t.split_once('.').unwrap();
        let other = mint_token(S, "r9", 9999);
        let (_, sig9) = other.split_once('.').unwrap();
        assert_eq!(
            verify_token(S, &format!("{p}.{sig9}"), "r1", 1000),
            Err(TokenError::BadSignature)
        );
    }
}
