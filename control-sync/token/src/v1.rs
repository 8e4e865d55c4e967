//! Version 1 (legacy, accepted during the migration to v2):
//! `base64url(payload).base64url(sig)` (unpadded), `sig` = HMAC-SHA256(key,
//! the payload part as sent), payload `{"repl": "<id>", "exp": <unix secs>}`.
//! Every edge holds the key, so any edge can mint: this is why v2 exists.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Refusal;

type HmacSha256 = Hmac<Sha256>;

#[derive(serde::Deserialize, serde::Serialize)]
struct Payload {
    repl: String,
    exp: u64,
}

/// Mints a v1 token (tests, and `edgeplane token` during the migration).
pub fn mint(key: &[u8], repl: &str, exp_secs: u64) -> String {
    let payload = B64.encode(
        serde_json::to_vec(&Payload {
            repl: repl.into(),
            exp: exp_secs,
        })
        .expect("payload serialises"),
    );
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(payload.as_bytes());
    format!("{payload}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// Checks a v1 token for `repl` at `now_secs`.
pub(crate) fn verify(key: &[u8], token: &str, repl: &str, now_secs: u64) -> Result<(), Refusal> {
    let (payload_b64, sig_b64) = token.split_once('.').ok_or(Refusal::Malformed)?;
    let sig = B64.decode(sig_b64).map_err(|_| Refusal::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&sig).map_err(|_| Refusal::BadSignature)?;
    let payload = B64.decode(payload_b64).map_err(|_| Refusal::Malformed)?;
    let p: Payload = serde_json::from_slice(&payload).map_err(|_| Refusal::Malformed)?;
    if p.exp <= now_secs {
        return Err(Refusal::Expired);
    }
    if p.repl != repl {
        return Err(Refusal::WrongRepl);
    }
    Ok(())
}
