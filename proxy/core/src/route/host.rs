//! Host canonicalisation: the first step of every routing decision.
//!
//! A Host header (or an absolute-form authority) becomes the canonical
//! hostname: ASCII lower-cased, the port and one trailing dot removed. It is
//! written into a fixed stack buffer ([`HostBuf`]) so the hot path does not
//! allocate. Anything that is not a plausible hostname (userinfo, spaces,
//! `_`, empty labels, over 253 bytes, a bad port) is rejected, so a
//! malformed Host reaches no VM. Start at [`canonical_host`].

/// Longest accepted hostname (RFC 1035) plus room for IPv6 brackets.
pub const MAX_HOST_LEN: usize = 253;

/// A canonical hostname held on the stack.
pub struct HostBuf {
    buf: [u8; MAX_HOST_LEN],
    len: usize,
}

impl std::fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl HostBuf {
    #[inline]
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// Why a host value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Empty,
    TooLong,
    BadCharacter,
    BadPort,
}

/// Canonicalises a Host header value: `APP1.Repl.Co.:8080` -> `app1.repl.co`.
/// IPv6 literals keep their brackets: `[::1]:80` -> `[::1]`.
pub fn canonical_host(raw: &[u8]) -> Result<HostBuf, HostError> {
    let raw = raw.trim_ascii();
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    let (name, port) = if raw[0] == b'[' {
        let end = raw.iter().position(|&b| b == b']').ok_or(HostError::BadCharacter)?;
        let rest = &raw[end + 1..];
        let port = match rest {
            [] => None,
            [b':', p @ ..] => Some(p),
            _ => return Err(HostError::BadCharacter),
        };
        // A real IPv6 address (found by fuzzing: `[::ffff:1260.0..10]` used
        // to pass a character check). Parsing a &str does not allocate.
        let inner = std::str::from_utf8(&raw[1..end]).map_err(|_| HostError::BadCharacter)?;
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(HostError::BadCharacter);
        }
        (&raw[..=end], port)
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
            return Err(HostError::BadPort);
        }
        let n = p.iter().fold(0u32, |n, &d| n * 10 + (d - b'0') as u32);
        if n > 65535 {
            return Err(HostError::BadPort);
        }
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    let mut out = HostBuf {
        buf: [0; MAX_HOST_LEN],
        len: name.len(),
    };
    if name[0] != b'[' {
        let mut prev_dot = true;
        for (i, &b) in name.iter().enumerate() {
            let ok = b.is_ascii_alphanumeric() || b == b'-' || (b == b'.' && !prev_dot);
            if !ok {
                return Err(HostError::BadCharacter);
            }
            prev_dot = b == b'.';
            out.buf[i] = b.to_ascii_lowercase();
        }
        if prev_dot {
            return Err(HostError::BadCharacter);
        }
    } else {
        for (i, &b) in name.iter().enumerate() {
            out.buf[i] = b.to_ascii_lowercase();
        }
    }
    Ok(out)
}

/// The slug if `host` is `<slug>.<suffix>` for one of `suffixes` (each
/// lower-case, no leading dot). The slug may still be unknown or invalid.
#[inline]
pub fn slug_of<'h>(host: &'h str, suffixes: &[String]) -> Option<&'h str> {
    for s in suffixes {
        if host.len() > s.len() + 1 && host.ends_with(s.as_str()) {
            let cut = host.len() - s.len();
            if host.as_bytes()[cut - 1] == b'.' {
                let slug = &host[..cut - 1];
                if !slug.contains('.') {
                    return Some(slug);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Result<String, HostError> {
        canonical_host(s.as_bytes()).map(|h| h.as_str().to_string())
    }

    #[test]
    fn canonicalises_case_port_and_trailing_dot() {
        assert_eq!(c("APP1.Repl.Co.:8080").unwrap(), "app1.repl.co");
        assert_eq!(c("app1.repl.co").unwrap(), "app1.repl.co");
        assert_eq!(c(" www.Example.com ").unwrap(), "www.example.com");
        assert_eq!(c("[::1]:80").unwrap(), "[::1]");
        assert_eq!(c("127.0.0.1:9").unwrap(), "127.0.0.1");
    }

    #[test]
    fn rejects_malformed_hosts() {
        assert_eq!(c(""), Err(HostError::Empty));
        assert_eq!(c(":80"), Err(HostError::Empty));
        assert_eq!(c("user@app1.repl.co"), Err(HostError::BadCharacter));
        assert_eq!(c("app1.repl.co:http"), Err(HostError::BadPort));
        assert_eq!(c("app1.repl.co:"), Err(HostError::BadPort));
        assert_eq!(c("app1.repl.co:99999"), Err(HostError::BadPort));
        assert_eq!(
            c("app1.repl.co:65535").map(|h| h.as_str().to_string()),
            Ok("app1.repl.co".to_string())
        );
        assert_eq!(c("a..b"), Err(HostError::BadCharacter));
        assert_eq!(
            c("app1.repl.co.."),
            Err(HostError::BadCharacter),
            "only one trailing dot is stripped"
        );
        assert_eq!(c("a b"), Err(HostError::BadCharacter));
        assert_eq!(c("under_score.repl.co"), Err(HostError::BadCharacter));
        assert_eq!(c(&"a".repeat(254)), Err(HostError::TooLong));
        assert_eq!(c("[zz::1]"), Err(HostError::BadCharacter));
        // Found by fuzzing: hex, colons and dots are not yet an address.
        assert_eq!(c("[::ffff:1260.0..10]"), Err(HostError::BadCharacter));
        assert_eq!(c("[::ffff:10.0.0.1]:443").unwrap(), "[::ffff:10.0.0.1]");
    }

    #[test]
    fn slug_needs_exactly_one_label_before_a_suffix() {
        let sfx = vec!["repl.co".to_string(), "apps.example.dev".to_string()];
        assert_eq!(slug_of("app1.repl.co", &sfx), Some("app1"));
        assert_eq!(slug_of("x.apps.example.dev", &sfx), Some("x"));
        assert_eq!(slug_of("a.b.repl.co", &sfx), None);
        assert_eq!(slug_of("repl.co", &sfx), None);
        assert_eq!(slug_of("evilrepl.co", &sfx), None);
        assert_eq!(slug_of("www.example.com", &sfx), None);
    }
}
