//! A request head, parsed in place (pure: no I/O). [`parse`] runs `httparse`
//! over the connection's read buffer, applies the edge's own framing rules
//! on top, and fills the connection's one [`H1Head`] (kept across its
//! requests: its header map's capacity is reused) with values that are
//! slices of the head's bytes, not copies, and an index of where the
//! headers the request path reads by name are ([`Known`]), so those
//! lookups cost no hash.
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
use http::{HeaderValue, Method, Version};
use pingora_http::RequestHeader;

use crate::http::headers::{Known, RequestHead};

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

/// Where a header's name and value are in the head (offsets), and which
/// [`Known`] name it is.
#[derive(Debug, Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
    known: Option<Known>,
}

/// Marks a [`Known`] name the head does not have in [`H1Head`]'s index.
const ABSENT: u16 = u16::MAX;

/// The connection's request head, kept across its requests (the offsets'
/// capacity reused): the head's bytes, where each header line is in them
/// (names made lower case in place) and where each [`Known`] name is, so
/// a lookup by name is an index; method, target and version in `req`,
/// whose header map stays empty (no header is hashed, none copied).
#[derive(Debug)]
pub struct H1Head {
    pub req: RequestHeader,
    bytes: Bytes,
    spans: Vec<Span>,
    /// Per [`Known`]: the span of its first line ([`ABSENT`]: none).
    first: [u16; Known::COUNT],
    /// Per [`Known`]: how many lines.
    count: [u8; Known::COUNT],
}

impl Default for H1Head {
    fn default() -> H1Head {
        H1Head {
            req: RequestHeader::build_no_case(Method::GET, b"/", Some(16)).expect("a static head"),
            bytes: Bytes::new(),
            spans: Vec::new(),
            first: [ABSENT; Known::COUNT],
            count: [0; Known::COUNT],
        }
    }
}

impl H1Head {
    fn value(&self, s: &Span) -> &[u8] {
        &self.bytes[s.value.0..s.value.1]
    }

    /// Notes that span `i` is a `k` line (spans noted in order).
    fn note(&mut self, i: usize, k: Known) {
        let k = k as usize;
        if self.count[k] == 0 {
            // At most MAX_HEADERS spans: the index fits.
            self.first[k] = i as u16;
        }
        self.count[k] = self.count[k].saturating_add(1);
    }
}

impl RequestHead for H1Head {
    fn req(&self) -> &RequestHeader {
        &self.req
    }

    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|s| (&self.bytes[s.name.0..s.name.1], self.value(s)))
    }

    #[inline]
    fn get(&self, k: Known) -> Option<&[u8]> {
        let i = self.first[k as usize];
        (i != ABSENT).then(|| self.value(&self.spans[usize::from(i)]))
    }

    #[inline]
    fn count(&self, k: Known) -> usize {
        usize::from(self.count[k as usize])
    }

    fn all(&self, k: Known) -> impl Iterator<Item = &[u8]> {
        let from = match self.first[k as usize] {
            ABSENT => self.spans.len(),
            i => usize::from(i),
        };
        self.spans[from..]
            .iter()
            .filter(move |s| s.known == Some(k))
            .map(|s| self.value(s))
    }
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
/// `head` holds it. `max_head`: most head bytes accepted.
pub fn parse(buf: &mut BytesMut, head: &mut H1Head, max_head: usize) -> Result<Parsed, HeadError> {
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
    head.spans.clear();
    head.spans.extend(parsed.headers.iter().map(|h| Span {
        name: range(base, h.name.as_bytes()),
        value: range(base, h.value),
        known: None,
    }));
    // Names in lower case in place (as a header map keeps them, and as the
    // VM gets them), then which are the ones the request path reads.
    head.first = [ABSENT; Known::COUNT];
    head.count = [0; Known::COUNT];
    for i in 0..head.spans.len() {
        let (from, to) = head.spans[i].name;
        let name = &mut buf[from..to];
        name.make_ascii_lowercase();
        head.spans[i].known = Known::of(name);
        if let Some(k) = head.spans[i].known {
            head.note(i, k);
        }
    }
    // httparse drops the whitespace after a value; after the coding that
    // frames the body, llhttp refuses it, and so does the edge.
    let padded_coding = head
        .spans
        .iter()
        .any(|s| s.known == Some(Known::TransferEncoding) && buf.get(s.value.1) != Some(&b'\r'));
    if padded_coding {
        return Err(HeadError::Malformed("whitespace after Transfer-Encoding"));
    }
    head.bytes = buf.split_to(len).freeze();
    fill(head, method, version, target)?;
    check_framing(head)?;
    check_authority(head, target)?;
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

/// `head.req` becomes the request line of `head.bytes` (its header map
/// stays empty).
fn fill(head: &mut H1Head, method: Method, version: Version, target: (usize, usize)) -> Result<(), HeadError> {
    let req = &mut head.req;
    req.set_method(method);
    req.set_version(version);
    req.set_raw_path(&head.bytes[target.0..target.1])
        .map_err(|_| HeadError::Malformed("request target"))
}

/// The authority checked as Pingora checks it (the target's against
/// `Host`, no userinfo, one `Host`). For an origin-form target (`/...`,
/// the usual one) that check comes to one `Host` without a `@` (no
/// authority in the target to compare: Pingora's `raw_target_authority`
/// says none, the `Uri` has none), done here on the index; any other form
/// goes through Pingora's own check ([`pingora_check_authority`]).
fn check_authority(head: &mut H1Head, target: (usize, usize)) -> Result<(), HeadError> {
    let origin_form = head.bytes.get(target.0) == Some(&b'/') && head.req.method != Method::CONNECT;
    if !origin_form {
        return pingora_check_authority(head);
    }
    let userinfo = head.get(Known::Host).is_some_and(|h| h.contains(&b'@'));
    if head.count(Known::Host) > 1 || userinfo {
        return Err(HeadError::Malformed("authority contradicts Host"));
    }
    Ok(())
}

/// Pingora's `validate_request_authority` on this head. It reads `Host`
/// from the header map: the lines are put there for it, and the map is
/// empty again after it (its capacity kept).
fn pingora_check_authority(head: &mut H1Head) -> Result<(), HeadError> {
    let req = &mut head.req;
    let mut checked = Ok(());
    for s in head.spans.iter().filter(|s| s.known == Some(Known::Host)) {
        // httparse checked the value's bytes (no CTL but tab).
        let host = HeaderValue::from_maybe_shared(head.bytes.slice(s.value.0..s.value.1));
        let appended = host.map(|v| req.append_header(http::header::HOST, v).is_ok());
        if !matches!(appended, Ok(true)) {
            checked = Err(HeadError::Malformed("Host"));
            break;
        }
    }
    if checked.is_ok() {
        checked = pingora_core::protocols::http::authority::validate_request_authority(req)
            .map_err(|_| HeadError::Malformed("authority contradicts Host"));
    }
    req.remove_header(&http::header::HOST);
    checked
}

/// How the body of a head that [`parse`] took is framed (its rules
/// leave one reading).
pub fn body_framing(head: &H1Head) -> crate::http::client::body::Framing {
    use crate::http::client::body::Framing;
    if head.get(Known::TransferEncoding).is_some() {
        return Framing::Chunked;
    }
    match head
        .get(Known::ContentLength)
        .map(|v| std::str::from_utf8(v).map(str::parse))
    {
        Some(Ok(Ok(n))) => Framing::Length(n),
        _ => Framing::None,
    }
}

/// The body framing rules of the module docs.
fn check_framing(head: &H1Head) -> Result<(), HeadError> {
    let (te, cl) = (Known::TransferEncoding, Known::ContentLength);
    match (head.get(te), head.get(cl)) {
        (Some(_), Some(_)) => Err(HeadError::Malformed("Transfer-Encoding with Content-Length")),
        (Some(v), None) => {
            if head.count(te) > 1 || head.req.version != Version::HTTP_11 {
                return Err(HeadError::Malformed("Transfer-Encoding"));
            }
            if v.eq_ignore_ascii_case(b"chunked") {
                return Ok(());
            }
            let last = v.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.first() == Some(&b' ') && last[1..].eq_ignore_ascii_case(b"chunked") {
                // A coding before chunked, which the edge does not decode.
                return Err(HeadError::UnknownCoding);
            }
            // Not exactly chunked last: the body's end is unknown (RFC 9112 §6.3).
            Err(HeadError::Malformed("Transfer-Encoding other than chunked"))
        }
        (None, Some(b)) => {
            if head.count(cl) > 1 || b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
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

    fn run(raw: &[u8]) -> (Result<Parsed, HeadError>, H1Head, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let mut head = H1Head::default();
        let r = parse(&mut buf, &mut head, 8192);
        (r, head, buf)
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_what_follows_stays() {
        let raw = b"POST /a?b=1 HTTP/1.1\r\nHost: x.repl.co\r\nContent-Length: 3\r\nX-Y: z\r\n\r\nabcGET";
        let (r, head, rest) = run(raw);
        assert_eq!(r, Ok(Parsed::Complete(raw.len() - 6)));
        assert_eq!(&rest[..], b"abcGET");
        let req = &head.req;
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.uri.path(), "/a");
        assert_eq!(req.uri.query(), Some("b=1"));
        assert_eq!(req.version, Version::HTTP_11);
        let lines: Vec<_> = head.lines().collect();
        assert_eq!(
            lines,
            [
                (&b"host"[..], &b"x.repl.co"[..]),
                (b"content-length", b"3"),
                (b"x-y", b"z")
            ],
            "in order, names in lower case, values as sent"
        );
        assert!(req.headers.is_empty(), "no header map");
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
    fn a_reused_head_keeps_nothing_of_the_last_request() {
        let mut head = H1Head::default();
        let mut buf = BytesMut::from(
            &b"GET /1 HTTP/1.1\r\nHost: a\r\nCookie: c\r\nOrigin: o\r\n\r\nHEAD /2 HTTP/1.0\r\nHost: b\r\n\r\n"[..],
        );
        assert!(matches!(parse(&mut buf, &mut head, 8192), Ok(Parsed::Complete(_))));
        assert!(head.lines().any(|l| l == (&b"cookie"[..], &b"c"[..])));
        assert_eq!(head.get(Known::Origin), Some(&b"o"[..]));
        assert!(matches!(parse(&mut buf, &mut head, 8192), Ok(Parsed::Complete(_))));
        let req = &head.req;
        assert_eq!(req.method, Method::HEAD);
        assert_eq!(req.uri.path(), "/2");
        assert_eq!(req.version, Version::HTTP_10);
        assert_eq!(head.lines().count(), 1);
        assert_eq!(head.get(Known::Host), Some(&b"b"[..]));
        assert_eq!(head.get(Known::Origin), None, "the last request's index is gone");
        assert!(buf.is_empty());
    }

    #[test]
    fn the_index_reads_as_the_header_map_does() {
        let raw = b"POST /a HTTP/1.1\r\nHOST: x.repl.co\r\nConnection: keep-alive\r\nX-Other: 1\r\n\
connection: Upgrade\r\nContent-Length: 3\r\nX-EdgePlane-Hop: h\r\nAuthorization: Bearer t\r\n\r\nabc";
        let (r, head, _) = run(raw);
        assert!(matches!(r, Ok(Parsed::Complete(_))), "{r:?}");
        let mut map = RequestHeader::build("POST", b"/a", None).unwrap();
        for (k, v) in head.lines() {
            map.append_header(String::from_utf8(k.to_vec()).unwrap(), v).unwrap();
        }
        for k in Known::ALL {
            assert_eq!(head.get(k), map.get(k), "{k:?}");
            assert_eq!(head.count(k), map.count(k), "{k:?}");
            assert_eq!(head.all(k).collect::<Vec<_>>(), map.all(k).collect::<Vec<_>>(), "{k:?}");
        }
        assert_eq!(head.count(Known::Connection), 2);
        assert_eq!(body_framing(&head), crate::http::client::body::Framing::Length(3));
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

    #[test]
    fn the_origin_form_shortcut_agrees_with_pingoras_check() {
        let heads: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a.repl.co\r\n\r\n",
            b"GET /x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a.repl.co\r\nHost: b.repl.co\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a.repl.co\r\nHost: a.repl.co\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: u@a.repl.co\r\n\r\n",
            b"GET /x?y=@ HTTP/1.1\r\nHost: a.repl.co:8080\r\n\r\n",
            b"GET //a.repl.co/x HTTP/1.1\r\nHost: b.repl.co\r\n\r\n",
        ];
        for raw in heads {
            let mut buf = BytesMut::from(*raw);
            let mut head = H1Head::default();
            let ours = parse(&mut buf, &mut head, 8192).map(|_| ());
            // The same head through Pingora's check.
            let mut buf = BytesMut::from(*raw);
            let mut other = H1Head::default();
            let _ = parse(&mut buf, &mut other, 8192);
            let theirs = pingora_check_authority(&mut other);
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(raw));
        }
    }
}
