//! A request head, parsed in place (pure: no I/O). [`parse`] runs `httparse`
//! over the connection's read buffer, applies the edge's own framing rules
//! on top, and fills the connection's one `RequestHeader` (kept across its
//! requests: its header map's capacity is reused) with values that are
//! slices of the head's bytes, not copies.
//!
//! The rules are strict where two readers of the same bytes could disagree
//! about where a request ends or what it is (request smuggling): where a
//! second strict parser (llhttp) refuses a head, so does this one
//! (`hostile::a_second_parser…` holds the two side by side). Refused with
//! 400 and a closed connection:
//! - a line ending in a bare LF (RFC 9112 §2.2 allows it; llhttp does not);
//! - a method that is not upper-case letters, `-` or `_` (`get`); one
//!   that is but is not registered ([`METHODS`]) is 501;
//! - a request line that does not split in three on single spaces (a space
//!   in the target);
//! - `Transfer-Encoding` together with `Content-Length` (RFC 9112 §6.1
//!   lets chunked win; a proxy that refuses cannot be desynchronised);
//! - `Transfer-Encoding` not ending in `chunked`, twice, or on HTTP/1.0
//!   (a coding before `chunked`, which the edge does not decode, is 501);
//! - `Content-Length` that is not one run of digits in one header;
//! - a request target in none of RFC 9112 §3.2's forms (`f/a`, `*` but
//!   for `OPTIONS`, a scheme other than http and https), or an
//!   absolute-form target whose authority contradicts `Host`.
//!
//! Over `max_head` bytes (or 256 headers) without an end: 431.
//!
//! Start at [`parse`].

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method, Version};
use pingora_http::RequestHeader;

/// Most headers one head may have (as Pingora's codec).
pub const MAX_HEADERS: usize = 256;

/// The methods served: the registered ones llhttp knows (RFC 9110 and the
/// IANA registry: WebDAV, CalDAV, UPnP's `M-SEARCH`, `PURGE`, `QUERY`).
/// Another method is 501 (RFC 9110 §9.1), so where the two parsers could
/// disagree on a method, the edge refuses.
pub const METHODS: [&str; 35] = [
    "DELETE",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PATCH",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
    "QUERY",
];

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request head too large")]
    TooLarge,
    /// A transfer coding other than chunked (RFC 9112 §6.1: 501).
    #[error("transfer coding not implemented")]
    UnknownCoding,
    /// A method outside [`METHODS`] (RFC 9110 §9.1: 501).
    #[error("method not implemented")]
    UnknownMethod,
}

impl HeadError {
    /// The status answered.
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge => 431,
            HeadError::UnknownCoding | HeadError::UnknownMethod => 501,
        }
    }
}

/// Where a header's name and value are in the head (offsets).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// The connection's reusable parse state: the header offsets of the last
/// head (their capacity is kept).
#[derive(Debug, Default)]
pub struct HeadScratch {
    spans: Vec<Span>,
}

/// What [`parse`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet: read more.
    Partial,
    /// A head of this many bytes was taken off the buffer into the header.
    Complete(usize),
}

fn range(base: usize, s: &[u8]) -> (usize, usize) {
    let start = s.as_ptr() as usize - base;
    (start, start + s.len())
}

/// Parses the head at the start of `buf`. On [`Parsed::Complete`] the head
/// is split off `buf` (what follows stays: body or the next request) and
/// `req` holds it. `max_head`: most head bytes accepted.
pub fn parse(
    buf: &mut BytesMut,
    req: &mut RequestHeader,
    scratch: &mut HeadScratch,
    max_head: usize,
) -> Result<Parsed, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1.1 request head")),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    check_line_ends(&buf[..len])?;
    let method = parsed.method.unwrap_or_default();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
        return Err(HeadError::Malformed("method not in upper case"));
    }
    if !METHODS.contains(&method) {
        return Err(HeadError::UnknownMethod);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("method"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(HeadError::Malformed("version")),
    };
    check_target(&method, parsed.path.unwrap_or_default().as_bytes())?;
    let base = buf.as_ptr() as usize;
    let target = range(base, parsed.path.unwrap_or_default().as_bytes());
    scratch.spans.clear();
    scratch.spans.extend(parsed.headers.iter().map(|h| Span {
        name: range(base, h.name.as_bytes()),
        value: range(base, h.value),
    }));
    // httparse drops the whitespace after a value; after the coding that
    // frames the body, llhttp refuses it, and so does the edge.
    let padded_coding = scratch.spans.iter().any(|s| {
        buf[s.name.0..s.name.1].eq_ignore_ascii_case(b"transfer-encoding") && buf.get(s.value.1) != Some(&b'\r')
    });
    if padded_coding {
        return Err(HeadError::Malformed("whitespace after Transfer-Encoding"));
    }
    let head = buf.split_to(len).freeze();
    fill(req, &head, method, version, target, &scratch.spans)?;
    check_framing(req)?;
    pingora_core::protocols::http::authority::validate_request_authority(req)
        .map_err(|_| HeadError::Malformed("authority contradicts Host"))?;
    Ok(Parsed::Complete(len))
}

/// The request target is in one of RFC 9112 §3.2's forms: origin-form
/// (`/...`), absolute-form with an `http` or `https` scheme, `*` for
/// `OPTIONS`, or (for `CONNECT`, answered 405 later) anything.
fn check_target(method: &Method, target: &[u8]) -> Result<(), HeadError> {
    let absolute = |scheme: &[u8]| {
        target.len() > scheme.len() + 3
            && target[..scheme.len()].eq_ignore_ascii_case(scheme)
            && target[scheme.len()..].starts_with(b"://")
    };
    // No fragment: `#` is in no form of a request target.
    let ok = !target.contains(&b'#')
        && match target.first() {
            Some(b'/') => true,
            Some(b'*') => target.len() == 1 && *method == Method::OPTIONS,
            Some(_) => *method == Method::CONNECT || absolute(b"http") || absolute(b"https"),
            None => false,
        };
    if ok {
        Ok(())
    } else {
        Err(HeadError::Malformed("request target in no form of RFC 9112 §3.2"))
    }
}

/// Every line of the head ends in CRLF.
fn check_line_ends(head: &[u8]) -> Result<(), HeadError> {
    let bare = head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
    if bare {
        return Err(HeadError::Malformed("bare LF"));
    }
    Ok(())
}

/// `req` becomes the head in `head` (its old headers dropped, the map's
/// capacity kept).
fn fill(
    req: &mut RequestHeader,
    head: &Bytes,
    method: Method,
    version: Version,
    target: (usize, usize),
    spans: &[Span],
) -> Result<(), HeadError> {
    // The map (and its capacity) moves to the new head; no allocation.
    let blank = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, blank).into();
    parts.headers.clear();
    parts.method = method;
    parts.version = version;
    for s in spans {
        let name =
            HeaderName::from_bytes(&head[s.name.0..s.name.1]).map_err(|_| HeadError::Malformed("header name"))?;
        // httparse checked the value's bytes (no CTL but tab).
        let value = HeaderValue::from_maybe_shared(head.slice(s.value.0..s.value.1))
            .map_err(|_| HeadError::Malformed("header value"))?;
        parts.headers.append(name, value);
    }
    *req = RequestHeader::from(parts);
    req.set_raw_path(&head[target.0..target.1])
        .map_err(|_| HeadError::Malformed("request target"))?;
    Ok(())
}

/// How the body of a head that [`parse`] took is framed (its rules
/// leave one reading).
pub fn body_framing(req: &RequestHeader) -> crate::http::client::body::Framing {
    use crate::http::client::body::Framing;
    if req.headers.contains_key(TRANSFER_ENCODING) {
        return Framing::Chunked;
    }
    match req
        .headers
        .get(CONTENT_LENGTH)
        .map(|v| std::str::from_utf8(v.as_bytes()).map(str::parse))
    {
        Some(Ok(Ok(n))) => Framing::Length(n),
        _ => Framing::None,
    }
}

/// The body framing rules of the module docs.
fn check_framing(req: &RequestHeader) -> Result<(), HeadError> {
    let mut te = req.headers.get_all(TRANSFER_ENCODING).iter();
    let mut cl = req.headers.get_all(CONTENT_LENGTH).iter();
    match (te.next(), cl.next()) {
        (Some(_), Some(_)) => Err(HeadError::Malformed("Transfer-Encoding with Content-Length")),
        (Some(v), None) => {
            if te.next().is_some() || req.version != Version::HTTP_11 {
                return Err(HeadError::Malformed("Transfer-Encoding"));
            }
            if v.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Ok(());
            }
            let last = v.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.first() == Some(&b' ') && last[1..].eq_ignore_ascii_case(b"chunked") {
                // A coding before chunked, which the edge does not decode.
                return Err(HeadError::UnknownCoding);
            }
            // Not exactly chunked last: the body's end is unknown (RFC 9112 §6.3).
            Err(HeadError::Malformed("Transfer-Encoding other than chunked"))
        }
        (None, Some(v)) => {
            let b = v.as_bytes();
            if cl.next().is_some() || b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("Content-Length"));
            }
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(raw: &[u8]) -> (Result<Parsed, HeadError>, RequestHeader, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let mut req = RequestHeader::build_no_case("GET", b"/", None).unwrap();
        let mut scratch = HeadScratch::default();
        let r = parse(&mut buf, &mut req, &mut scratch, 8192);
        (r, req, buf)
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_what_follows_stays() {
        let raw = b"POST /a?b=1 HTTP/1.1\r\nHost: x.repl.co\r\nContent-Length: 3\r\nX-Y: z\r\n\r\nabcGET";
        let (r, req, rest) = run(raw);
        assert_eq!(r, Ok(Parsed::Complete(raw.len() - 6)));
        assert_eq!(&rest[..], b"abcGET");
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.uri.path(), "/a");
        assert_eq!(req.uri.query(), Some("b=1"));
        assert_eq!(req.headers["host"], "x.repl.co");
        assert_eq!(req.headers["x-y"], "z");
        assert_eq!(req.version, Version::HTTP_11);
    }

    #[test]
    fn a_partial_head_asks_for_more_until_it_is_too_large() {
        let (r, _, rest) = run(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(r, Ok(Parsed::Partial));
        assert_eq!(rest.len(), 25, "nothing taken");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(9000, b'a');
        assert_eq!(run(&big).0, Err(HeadError::TooLarge));
    }

    #[test]
    fn a_reused_header_keeps_nothing_of_the_last_request() {
        let mut req = RequestHeader::build_no_case("GET", b"/", None).unwrap();
        let mut scratch = HeadScratch::default();
        let mut buf =
            BytesMut::from(&b"GET /1 HTTP/1.1\r\nHost: a\r\nCookie: c\r\n\r\nHEAD /2 HTTP/1.0\r\nHost: b\r\n\r\n"[..]);
        assert!(matches!(
            parse(&mut buf, &mut req, &mut scratch, 8192),
            Ok(Parsed::Complete(_))
        ));
        assert_eq!(req.headers["cookie"], "c");
        assert!(matches!(
            parse(&mut buf, &mut req, &mut scratch, 8192),
            Ok(Parsed::Complete(_))
        ));
        assert_eq!(req.method, Method::HEAD);
        assert_eq!(req.uri.path(), "/2");
        assert_eq!(req.version, Version::HTTP_10);
        assert_eq!(req.headers.len(), 1);
        assert!(buf.is_empty());
    }

    #[test]
    fn ambiguous_framing_and_lenient_syntax_are_refused() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET f/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for raw in bad {
            let r = run(raw).0;
            assert!(
                matches!(r, Err(HeadError::Malformed(_))),
                "{}: {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn a_coding_the_edge_does_not_decode_is_501() {
        let r = run(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").0;
        assert_eq!(r.map_err(HeadError::status), Err(501));
        let r = run(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n").0;
        assert_eq!(r.map_err(HeadError::status), Err(501));
    }

    #[test]
    fn well_formed_framing_is_taken() {
        let good: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://a.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\r\n\r\n",
        ];
        for raw in good {
            let r = run(raw).0;
            assert!(
                matches!(r, Ok(Parsed::Complete(_))),
                "{}: {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
