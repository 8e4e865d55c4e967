//! Sealing private keys with the fleet certificate key
//! (`security.cert_seal_key_file`): XChaCha20-Poly1305 from RustCrypto's
//! `chacha20poly1305`, a fresh random 192-bit nonce per seal, the hostname
//! as associated data (a sealed key copied to another row does not open).
//!
//! Format: `EPS1` ‖ nonce (24 bytes) ‖ ciphertext and tag. The key file
//! holds 32 bytes as base64 or hex on one line (`#` comments allowed):
//! `head -c 32 /dev/urandom | base64 > cert-seal.key`.
//!
//! Invariants: nothing here logs or formats a key or a plaintext; an error
//! says what failed, never with what. Start at [`SealKey::from_file`].

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const MAGIC: &[u8; 4] = b"EPS1";
const NONCE: usize = 24;

/// Why a key file or a sealed value was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("sealed value is not in the EPS1 format")]
    Format,
    #[error("sealed value does not open with this key (another fleet key, or another hostname's value)")]
    Open,
}

/// The fleet certificate key. Debug output never shows it.
#[derive(Clone)]
pub struct SealKey {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    pub fn from_bytes(key: &[u8; 32]) -> SealKey {
        SealKey {
            aead: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Reads the key file (see the module docs).
    pub fn from_file(path: &Path) -> Result<SealKey, SealError> {
        let err = |message: String| SealError::KeyFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| err("no key in the file".into()))?;
        Self::parse(line).map_err(err)
    }

    /// 32 bytes as base64 (standard or url-safe) or 64 hex digits.
    pub fn parse(text: &str) -> Result<SealKey, String> {
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
                .collect::<Result<Vec<u8>, _>>()?
        } else {
            let b64 = base64::engine::general_purpose::STANDARD;
            let url = base64::engine::general_purpose::URL_SAFE;
            b64.decode(text)
                .or_else(|_| url.decode(text))
                .map_err(|_| "the key is neither base64 nor 64 hex digits".to_string())?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("the key is {} bytes; it must be 32", b.len()))?;
        Ok(SealKey::from_bytes(&key))
    }

    /// Seals `plain` for `hostname`.
    pub fn seal(&self, hostname: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).expect("the OS random source");
        let sealed = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: hostname.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length this holds");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `hostname`.
    pub fn open(&self, hostname: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(MAGIC.as_slice()).ok_or(SealError::Format)?;
        if rest.len() < NONCE + 16 {
            return Err(SealError::Format);
        }
        let (nonce, body) = rest.split_at(NONCE);
        self.aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: hostname.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_hostname() {
        let k = SealKey::from_bytes(&[7; 32]);
        let other = SealKey::from_bytes(&[8; 32]);
        let s = k.seal("www.example.com", b"secret key");
        assert_ne!(k.seal("www.example.com", b"secret key"), s, "a fresh nonce per seal");
        assert!(!s.windows(10).any(|w| w == b"secret key"));
        assert_eq!(k.open("www.example.com", &s).unwrap(), b"secret key");
        assert!(matches!(other.open("www.example.com", &s), Err(SealError::Open)));
        assert!(matches!(k.open("other.example.com", &s), Err(SealError::Open)));
        let mut flipped = s.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(k.open("www.example.com", &flipped), Err(SealError::Open)));
        assert!(matches!(
            k.open("www.example.com", b"EPS1short"),
            Err(SealError::Format)
        ));
        assert!(matches!(k.open("www.example.com", b"garbage"), Err(SealError::Format)));
    }

    #[test]
    fn key_files_take_base64_or_hex_and_say_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        std::fs::write(&p, format!("# fleet key\n{b64}\n")).unwrap();
        let a = SealKey::from_file(&p).unwrap();
        std::fs::write(&p, "01".repeat(32)).unwrap();
        let b = SealKey::from_file(&p).unwrap();
        assert_eq!(b.open("h.example", &a.seal("h.example", b"x")).unwrap(), b"x");
        assert!(!format!("{a:?}").contains(&b64));
        std::fs::write(&p, base64::engine::general_purpose::STANDARD.encode([1u8; 16])).unwrap();
        let e = SealKey::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("16 bytes") && e.contains(&p.display().to_string()), "{e}");
        std::fs::write(&p, "# only a comment\n").unwrap();
        assert!(SealKey::from_file(&p).unwrap_err().to_string().contains("no key"));
    }
}
