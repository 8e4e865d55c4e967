//! The edge-to-edge hop header (docs/contract.md §6), signed and verified
//! with the hop secret every edge shares. Pure functions, time passed in.
//! (Workspace session tokens are the `edgeplane-token` crate's.)
//!
//! Hop header `x-edgeplane-hop`: `v1;<origin region>;<hops>;<unix secs>;<sig>`
//! where `sig` is unpadded base64url of HMAC-SHA256(hop secret,
//! `v1\n<origin>\n<hops>\n<ts>\n<canonical host>`). A header older (or
//! newer) than [`HOP_MAX_AGE_SECS`] or with a bad signature is treated as
//! absent, so a client cannot forge one to skip affinity or reach a VM
//! with internal headers.
//!
//! Start at [`sign_hop`] / [`verify_hop`].

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
}
