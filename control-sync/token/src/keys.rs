//! Ed25519 keys of v2 tokens in their PASERK forms: `k4.secret.` (what the
//! web server holds), `k4.public.` (one line of an edge's public keys
//! file) and the key id `k4.pid.` a token's footer names.

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::version4::V4;

/// A key that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("this is a secret key (k4.secret.): edges hold public keys only; give them the .pub file")]
    SecretWherePublic,
    #[error("this is a public key (k4.public.): minting needs the secret key")]
    PublicWhereSecret,
    #[error("not a PASERK {want} key (expected one line starting {want}.)")]
    NotPaserk { want: &'static str },
    #[error("the {want} key does not decode (bad base64url or length)")]
    Encoding { want: &'static str },
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// A public key of v2 tokens, with its PASERK id.
#[derive(Clone)]
pub struct PublicKey {
    key: AsymmetricPublicKey<V4>,
    paserk: String,
    kid: String,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &PublicKey) -> bool {
        self.paserk == other.paserk
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.kid)
    }
}

impl PublicKey {
    /// Reads a `k4.public.` key (surrounding whitespace ignored).
    pub fn from_paserk(text: &str) -> Result<PublicKey, KeyError> {
        let text = text.trim();
        if text.starts_with("k4.secret.") {
            return Err(KeyError::SecretWherePublic);
        }
        if !text.starts_with("k4.public.") {
            return Err(KeyError::NotPaserk { want: "k4.public" });
        }
        let key = AsymmetricPublicKey::<V4>::try_from(text).map_err(|_| KeyError::Encoding { want: "k4.public" })?;
        Ok(PublicKey::of(key))
    }

    fn of(key: AsymmetricPublicKey<V4>) -> PublicKey {
        let mut paserk = String::new();
        key.fmt(&mut paserk).expect("writing to a String");
        let mut kid = String::new();
        Id::from(&key).fmt(&mut kid).expect("writing to a String");
        PublicKey { key, paserk, kid }
    }

    /// `k4.public.…`: the line for an edge's public keys file.
    pub fn to_paserk(&self) -> &str {
        &self.paserk
    }

    /// `k4.pid.…`: the id a token's footer names this key by.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn key(&self) -> &AsymmetricPublicKey<V4> {
        &self.key
    }
}

/// The secret key of v2 tokens (the web server's; never an edge's).
pub struct SecretKey {
    key: AsymmetricSecretKey<V4>,
    public: PublicKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(<redacted>, {})", self.public.kid)
    }
}

impl SecretKey {
    /// Reads a `k4.secret.` key (surrounding whitespace ignored).
    pub fn from_paserk(text: &str) -> Result<SecretKey, KeyError> {
        let text = text.trim();
        if text.starts_with("k4.public.") {
            return Err(KeyError::PublicWhereSecret);
        }
        if !text.starts_with("k4.secret.") {
            return Err(KeyError::NotPaserk { want: "k4.secret" });
        }
        let key = AsymmetricSecretKey::<V4>::try_from(text).map_err(|_| KeyError::Encoding { want: "k4.secret" })?;
        SecretKey::of(key)
    }

    fn of(key: AsymmetricSecretKey<V4>) -> Result<SecretKey, KeyError> {
        let public = AsymmetricPublicKey::<V4>::try_from(&key).map_err(|_| KeyError::Encoding { want: "k4.secret" })?;
        Ok(SecretKey {
            key,
            public: PublicKey::of(public),
        })
    }

    /// `k4.secret.…`: what `placectl token keygen` writes (keep it secret).
    pub fn to_paserk(&self) -> String {
        let mut s = String::new();
        self.key.fmt(&mut s).expect("writing to a String");
        s
    }

    /// The public half, for the edges.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub(crate) fn key(&self) -> &AsymmetricSecretKey<V4> {
        &self.key
    }
}

/// A new key pair from the operating system's randomness.
pub fn keygen() -> Result<SecretKey, KeyError> {
    let pair = AsymmetricKeyPair::<V4>::generate().map_err(|e| KeyError::Generate(e.to_string()))?;
    SecretKey::of(pair.secret)
}
