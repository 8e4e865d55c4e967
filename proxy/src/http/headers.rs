//! Request-head helpers of the proxy glue ([`super`]): which headers never
//! reach a VM (internal, hop-by-hop per RFC 9110, spoofable), WebSocket
//! upgrade detection. Pure functions over
//! Pingora's header types.

use pingora_http::RequestHeader;

/// A plain HTTP/1.1 WebSocket upgrade request (carried by [`crate::http::tunnel`]).
pub(super) fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    let has_token = |name: http::HeaderName, token: &str| {
        req.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    req.version == http::Version::HTTP_11
        && req.method == http::Method::GET
        && has_token(http::header::UPGRADE, "websocket")
        && has_token(http::header::CONNECTION, "upgrade")
        && !req.headers.contains_key(http::header::CONTENT_LENGTH)
        && !req.headers.contains_key(http::header::TRANSFER_ENCODING)
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
/// spoofable, or named by the client's `Connection` header).
/// `connection` is every `Connection` line of the request (a client may
/// send several); their comma-separated tokens are read in place, nothing
/// is collected.
pub(super) fn strip_for_upstream(
    name: &str,
    connection: &http::header::GetAll<'_, http::HeaderValue>,
    websocket: bool,
) -> bool {
    if name.starts_with("x-edgeplane-") || SPOOFABLE.contains(&name) {
        return true;
    }
    if websocket && (name == "upgrade" || name == "connection") {
        return false;
    }
    HOP_BY_HOP.contains(&name)
        || connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(name))
}

/// The request's host as the client named it: the `Host` header, else the
/// target's authority (an HTTP/2 request's `:authority`, an absolute-form
/// HTTP/1.1 target).
pub(super) fn request_host(req: &RequestHeader) -> Option<&[u8]> {
    match req.headers.get(http::header::HOST) {
        Some(h) => Some(h.as_bytes()),
        None => req.uri.authority().map(|a| a.as_str().as_bytes()),
    }
}

/// The value of `name` as text. Pass an `http::HeaderName` (a constant),
/// not a `&str`: a string name is parsed and checked on every lookup.
pub(super) fn header_str(req: &RequestHeader, name: impl http::header::AsHeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}
