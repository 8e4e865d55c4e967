//! Request-head helpers of the proxy glue ([`super`]): the headers the
//! request path reads by name ([`Known`], looked up through
//! [`RequestHead`] whichever codec parsed the head), which headers never
//! reach a VM (internal, hop-by-hop per RFC 9110, spoofable), WebSocket
//! upgrade detection. Pure functions.
//!
//! Why [`RequestHead`]: a request is read by name about twenty times on its
//! way (framing, host, keep-alive, upgrade, token, origin, the edge's own
//! headers), each a hash and a probe in an `http::HeaderMap`. The edge's
//! HTTP/1.1 head ([`super::h1::head::H1Head`]) notes where each [`Known`]
//! name is while it parses, so those lookups are an index; an HTTP/2
//! stream's head (Pingora's `RequestHeader`) answers them from its map.

use http::HeaderName;
use pingora_http::RequestHeader;

use super::{DEBUG_HEADER, HOP_HEADER, REPLAY_SRC_HEADER};

/// The request headers the request path reads by name (every other header
/// is only passed on or counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    Authorization,
    Origin,
    /// `x-edgeplane-hop`.
    Hop,
    /// `x-edgeplane-debug`.
    Debug,
    /// `x-edgeplane-replay-src`.
    ReplaySrc,
}

impl Known {
    /// How many there are (the size of an index by [`Known`]).
    pub const COUNT: usize = 11;
    /// Every one, in the order of their index.
    pub const ALL: [Known; Known::COUNT] = [
        Known::Host,
        Known::ContentLength,
        Known::TransferEncoding,
        Known::Connection,
        Known::Upgrade,
        Known::Expect,
        Known::Authorization,
        Known::Origin,
        Known::Hop,
        Known::Debug,
        Known::ReplaySrc,
    ];

    /// The name a lower-case header name is, if it is one of these.
    #[inline]
    pub fn of(lower: &[u8]) -> Option<Known> {
        Some(match lower {
            b"host" => Known::Host,
            b"content-length" => Known::ContentLength,
            b"transfer-encoding" => Known::TransferEncoding,
            b"connection" => Known::Connection,
            b"upgrade" => Known::Upgrade,
            b"expect" => Known::Expect,
            b"authorization" => Known::Authorization,
            b"origin" => Known::Origin,
            b"x-edgeplane-hop" => Known::Hop,
            b"x-edgeplane-debug" => Known::Debug,
            b"x-edgeplane-replay-src" => Known::ReplaySrc,
            _ => return None,
        })
    }

    /// Its header name, for a lookup in a header map.
    pub fn name(self) -> HeaderName {
        use http::header;
        const HOP: HeaderName = HeaderName::from_static(HOP_HEADER);
        const DEBUG: HeaderName = HeaderName::from_static(DEBUG_HEADER);
        const REPLAY_SRC: HeaderName = HeaderName::from_static(REPLAY_SRC_HEADER);
        match self {
            Known::Host => header::HOST,
            Known::ContentLength => header::CONTENT_LENGTH,
            Known::TransferEncoding => header::TRANSFER_ENCODING,
            Known::Connection => header::CONNECTION,
            Known::Upgrade => header::UPGRADE,
            Known::Expect => header::EXPECT,
            Known::Authorization => header::AUTHORIZATION,
            Known::Origin => header::ORIGIN,
            Known::Hop => HOP,
            Known::Debug => DEBUG,
            Known::ReplaySrc => REPLAY_SRC,
        }
    }
}

/// A request head as the request path reads it: method, target and
/// version from [`RequestHead::req`], every header line from
/// [`RequestHead::lines`], the [`Known`] ones by name. Never read the
/// headers from `req().headers`: an HTTP/1.1 head keeps none there.
pub trait RequestHead {
    fn req(&self) -> &RequestHeader;
    /// Every header line, names in lower case (an HTTP/1.1 head in the
    /// order the client sent them; a header map groups lines by name).
    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])>;
    /// The first value of `k`.
    fn get(&self, k: Known) -> Option<&[u8]>;
    /// How many `k` lines the head has.
    fn count(&self, k: Known) -> usize;
    /// Every value of `k`, in order.
    fn all(&self, k: Known) -> impl Iterator<Item = &[u8]>;
}

impl RequestHead for RequestHeader {
    fn req(&self) -> &RequestHeader {
        self
    }

    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
    }

    fn get(&self, k: Known) -> Option<&[u8]> {
        self.headers.get(k.name()).map(http::HeaderValue::as_bytes)
    }

    fn count(&self, k: Known) -> usize {
        self.headers.get_all(k.name()).iter().count()
    }

    fn all(&self, k: Known) -> impl Iterator<Item = &[u8]> {
        self.headers
            .get_all(k.name())
            .into_iter()
            .map(http::HeaderValue::as_bytes)
    }
}

/// A value as text, as `http::HeaderValue::to_str` reads it: visible
/// ASCII and tabs only, else None.
pub(super) fn ascii_str(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// Whether a comma-separated value (read as text) has `token`.
fn has_token(v: &[u8], token: &[u8]) -> bool {
    ascii_str(v).is_some_and(|v| v.split(',').any(|t| t.trim().as_bytes().eq_ignore_ascii_case(token)))
}

/// A plain HTTP/1.1 WebSocket upgrade request (carried by [`crate::http::tunnel`]).
pub(super) fn is_websocket_upgrade(h: &impl RequestHead) -> bool {
    let req = h.req();
    req.version == http::Version::HTTP_11
        && req.method == http::Method::GET
        && h.all(Known::Upgrade).any(|v| has_token(v, b"websocket"))
        && h.all(Known::Connection).any(|v| has_token(v, b"upgrade"))
        && h.get(Known::ContentLength).is_none()
        && h.get(Known::TransferEncoding).is_none()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never passed to a VM or peer, in
/// addition to those the client's `Connection` header names, nor from a
/// VM's answer to the client. `Upgrade` is kept (and `Connection: upgrade`
/// set) only on WebSocket upgrades and their `101`. `Transfer-Encoding` is
/// re-framed, not dropped here.
pub(super) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "http2-settings",
];

/// Client-sent headers that apps or their frameworks may trust as set by
/// the platform (client address, original URL); the edge sets what a VM
/// may rely on (`x-forwarded-*`, `x-request-id`) and drops the rest.
const SPOOFABLE: [&str; 10] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
];

/// Whether a request header must not reach a VM (internal, hop-by-hop,
/// spoofable, or named by one of the client's `Connection` lines, whose
/// comma-separated tokens are read in place, nothing collected).
/// `name` is in lower case.
pub(super) fn strip_for_upstream(name: &[u8], h: &impl RequestHead, websocket: bool) -> bool {
    let listed = |list: &[&str]| list.iter().any(|l| l.as_bytes() == name);
    if name.starts_with(b"x-edgeplane-") || listed(&SPOOFABLE) {
        return true;
    }
    if websocket && (name == b"upgrade" || name == b"connection") {
        return false;
    }
    listed(&HOP_BY_HOP) || h.all(Known::Connection).any(|v| has_token(v, name))
}

/// The request's host as the client named it: the `Host` header, else the
/// target's authority (an HTTP/2 request's `:authority`, an absolute-form
/// HTTP/1.1 target).
pub(super) fn request_host(h: &impl RequestHead) -> Option<&[u8]> {
    match h.get(Known::Host) {
        Some(v) => Some(v),
        None => h.req().uri.authority().map(|a| a.as_str().as_bytes()),
    }
}

/// The first value of `k` as text ([`ascii_str`]).
pub(super) fn header_str(h: &impl RequestHead, k: Known) -> Option<&str> {
    h.get(k).and_then(ascii_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_is_its_own_header_name() {
        // The last one closes the index: a name added after it changes COUNT.
        assert_eq!(Known::ReplaySrc as usize + 1, Known::COUNT);
        for (i, k) in Known::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i, "{k:?}: the index is the order");
            assert_eq!(Known::of(k.name().as_str().as_bytes()), Some(k));
        }
        assert_eq!(Known::of(b"Host"), None, "lower case only");
        assert_eq!(Known::of(b"x-edgeplane-hops"), None);
    }

    #[test]
    fn text_is_what_a_header_value_calls_text() {
        for v in [&b"a b\tc"[..], b"caf\xc3\xa9", b"\xff", b""] {
            let value = http::HeaderValue::from_bytes(v).unwrap();
            assert_eq!(ascii_str(v), value.to_str().ok(), "{v:?}");
        }
        assert!(has_token(b"keep-alive, Upgrade", b"upgrade"));
        assert!(
            !has_token(b"keep-alive, Upgrade\xff", b"upgrade"),
            "not text: no tokens"
        );
    }

    #[test]
    fn only_websocket_upgrades_reach_a_vm() {
        let head = |headers: &[(&str, &str)]| {
            let mut h = RequestHeader::build("GET", b"/", None).unwrap();
            for (k, v) in headers {
                h.append_header(k.to_string(), *v).unwrap();
            }
            h
        };
        let h2c = head(&[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "x"),
            ("x-kept", "1"),
        ]);
        assert!(!is_websocket_upgrade(&h2c));
        for name in ["upgrade", "connection", "http2-settings"] {
            assert!(strip_for_upstream(name.as_bytes(), &h2c, false), "{name}");
        }
        assert!(!strip_for_upstream(b"x-kept", &h2c, false));
        let named = head(&[("connection", "close, x-secret"), ("x-secret", "s")]);
        assert!(strip_for_upstream(b"x-secret", &named, false), "named by Connection");
        let ws = head(&[("upgrade", "websocket"), ("connection", "keep-alive, Upgrade")]);
        assert!(is_websocket_upgrade(&ws));
        assert!(!strip_for_upstream(b"upgrade", &ws, true) && !strip_for_upstream(b"connection", &ws, true));
    }
}
