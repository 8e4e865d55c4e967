//! The codec's reading of a byte string without a socket: what
//! [`super::conn::H1Conn`] makes of the bytes a client sent, arriving in
//! reads of given sizes — the same [`head::parse`] and body decoder, in the
//! same order. Pure; for the fuzz target (`crate::fuzzing::h1_request`) and
//! the differential test against llhttp (`hostile.rs`), which hold the
//! codec's reading, not a copy of it.

use super::head::{self, H1Head, Parsed};
use crate::http::client::body::{Decoder, Piece};
use crate::http::headers::RequestHead;
use bytes::BytesMut;

/// Head bytes accepted in an offline reading (the default
/// `limits.max_header_bytes` plus [`super::HEAD_SLACK`]).
pub const MAX_HEAD: usize = 32 * 1024 + super::HEAD_SLACK;

/// What the codec made of the first request in the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Refused with this status.
    Refused(u16),
    /// The bytes end inside the first request.
    Incomplete,
    /// The first request, whole.
    Message {
        method: String,
        target: String,
        /// The headers as the request path sees them (lower-case names).
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        /// Bytes the request took (what follows is the next one's).
        consumed: usize,
    },
}

/// Reads the first request of `bytes`, delivered in pieces of the sizes
/// in `reads` (cycled; a 0 counts as 1).
pub fn first_request(bytes: &[u8], reads: &[usize]) -> Reading {
    let mut feed = Feed {
        bytes,
        at: 0,
        reads,
        n: 0,
    };
    let mut buf = BytesMut::new();
    let mut head = H1Head::default();
    loop {
        if !buf.is_empty() {
            match head::parse(&mut buf, &mut head, MAX_HEAD) {
                Ok(Parsed::Complete(_)) => break,
                Ok(Parsed::Partial) => {}
                Err(e) => return Reading::Refused(e.status()),
            }
        }
        if !feed.more(&mut buf) {
            return Reading::Incomplete;
        }
    }
    let mut decoder = Decoder::new(head::body_framing(&head));
    let mut body = Vec::new();
    loop {
        match decoder.next(&mut buf, 64 * 1024) {
            Ok(Piece::Data(b)) => body.extend_from_slice(&b),
            Ok(Piece::Done) => break,
            Ok(Piece::NeedMore) => {
                if !feed.more(&mut buf) {
                    return Reading::Incomplete;
                }
            }
            Err(_) => return Reading::Refused(400),
        }
    }
    let req = &head.req;
    Reading::Message {
        method: req.method.to_string(),
        target: String::from_utf8_lossy(req.raw_path()).into_owned(),
        headers: head
            .lines()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec()))
            .collect(),
        body,
        consumed: feed.at - buf.len(),
    }
}

/// The bytes still to arrive.
struct Feed<'a> {
    bytes: &'a [u8],
    at: usize,
    reads: &'a [usize],
    n: usize,
}

impl Feed<'_> {
    /// Appends the next read to `buf`; false when nothing is left.
    fn more(&mut self, buf: &mut BytesMut) -> bool {
        if self.at >= self.bytes.len() {
            return false;
        }
        let size = if self.reads.is_empty() {
            self.bytes.len()
        } else {
            self.reads[self.n % self.reads.len()].max(1)
        };
        self.n += 1;
        let end = (self.at + size).min(self.bytes.len());
        buf.extend_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_the_same_in_any_pieces() {
        let raw = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\nGET";
        let whole = first_request(raw, &[]);
        let Reading::Message { body, consumed, .. } = &whole else {
            panic!("{whole:?}")
        };
        assert_eq!(body, b"abcde");
        assert_eq!(*consumed, raw.len() - 3);
        for reads in [&[1][..], &[2, 7], &[5, 1, 13]] {
            assert_eq!(first_request(raw, reads), whole, "{reads:?}");
        }
        assert_eq!(first_request(&raw[..40], &[]), Reading::Incomplete);
    }
}
