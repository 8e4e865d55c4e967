//! Checking a certificate chain and its private key before they are stored
//! (an upload, an issued certificate): the PEM parses, the leaf names the
//! hostname, the key belongs to the leaf, and the certificate is in its
//! validity period. Pure: the time is passed in.

use x509_parser::prelude::*;

/// Why a pair was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PairError {
    #[error("the chain holds no PEM certificate")]
    NoCertificate,
    #[error("certificate {index} of the chain does not parse: {message}")]
    BadCertificate { index: usize, message: String },
    #[error("the private key does not parse: {0}")]
    BadKey(String),
    #[error("the private key does not belong to the chain's first certificate")]
    KeyMismatch,
    #[error("the certificate does not name {host} (it names {names:?})")]
    WrongName { host: String, names: Vec<String> },
    #[error("the certificate expired at {0}")]
    Expired(String),
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
}

/// What the store keeps about a checked pair.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedPair {
    /// DNS names of the leaf (SANs, else the common name), lower case.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Checks `chain_pem` and `key_pem` for `host` (an exact name, or
/// `*.<suffix>`) at `now` (Unix seconds).
pub fn check_pair(host: &str, chain_pem: &str, key_pem: &str, now: i64) -> Result<CheckedPair, PairError> {
    let ders = chain_ders(chain_pem)?;
    let (_, leaf) = X509Certificate::from_der(&ders[0]).map_err(|e| PairError::BadCertificate {
        index: 0,
        message: e.to_string(),
    })?;
    for (i, der) in ders.iter().enumerate().skip(1) {
        X509Certificate::from_der(der).map_err(|e| PairError::BadCertificate {
            index: i,
            message: e.to_string(),
        })?;
    }
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| PairError::BadKey(e.to_string()))?;
    if key.public_key_der() != leaf.tbs_certificate.subject_pki.raw {
        return Err(PairError::KeyMismatch);
    }
    let names = dns_names(&leaf);
    if !covers(&names, host) {
        return Err(PairError::WrongName {
            host: host.to_string(),
            names,
        });
    }
    let validity = leaf.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if now >= not_after {
        return Err(PairError::Expired(validity.not_after.to_string()));
    }
    if now < not_before {
        return Err(PairError::NotYetValid(validity.not_before.to_string()));
    }
    Ok(CheckedPair {
        names,
        not_before,
        not_after,
    })
}

/// The DER certificates of a PEM chain, in order.
pub fn chain_ders(chain_pem: &str) -> Result<Vec<Vec<u8>>, PairError> {
    let mut out = Vec::new();
    for (i, pem) in Pem::iter_from_buffer(chain_pem.as_bytes()).enumerate() {
        let pem = pem.map_err(|e| PairError::BadCertificate {
            index: i,
            message: e.to_string(),
        })?;
        if pem.label == "CERTIFICATE" {
            out.push(pem.contents);
        }
    }
    if out.is_empty() {
        return Err(PairError::NoCertificate);
    }
    Ok(out)
}

/// The leaf's DNS names: its SANs, else its common name.
pub fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            if let GeneralName::DNSName(n) = g {
                names.push(n.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    names
}

/// Whether a certificate for `names` serves `host` (exactly, or by a
/// wildcard one label up; `*.x` rows need the wildcard itself).
fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|n| {
        n == host
            || (!host.starts_with("*.")
                && n.strip_prefix("*.")
                    .is_some_and(|parent| host.split_once('.').is_some_and(|(_, p)| p == parent)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn a_good_pair_passes_and_every_bad_one_says_why() {
        let (chain, key) = pair(&["www.example.com"]);
        let ok = check_pair("www.example.com", &chain, &key, now()).unwrap();
        assert_eq!(ok.names, vec!["www.example.com"]);
        assert!(ok.not_after > now());
        let (_, other_key) = pair(&["www.example.com"]);
        assert_eq!(
            check_pair("www.example.com", &chain, &other_key, now()),
            Err(PairError::KeyMismatch)
        );
        assert!(matches!(
            check_pair("api.example.com", &chain, &key, now()),
            Err(PairError::WrongName { .. })
        ));
        assert_eq!(
            check_pair("www.example.com", "junk", &key, now()),
            Err(PairError::NoCertificate)
        );
        assert!(matches!(
            check_pair("www.example.com", &chain, "junk", now()),
            Err(PairError::BadKey(_))
        ));
        // rcgen's default validity ends in 4096.
        assert!(matches!(
            check_pair("www.example.com", &chain, &key, 70_000_000_000),
            Err(PairError::Expired(_))
        ));
        let (wild, wkey) = pair(&["*.repl.co"]);
        assert!(check_pair("*.repl.co", &wild, &wkey, now()).is_ok());
        assert!(check_pair("app.repl.co", &wild, &wkey, now()).is_ok());
        assert!(check_pair("a.b.repl.co", &wild, &wkey, now()).is_err());
    }
}
