//! HTTP/1.1 message bodies on the edge's connections to VMs and peer
//! edges (RFC 9112 §6–7): how long an answer's body is ([`Framing`]), the
//! decoder that takes it out of the connection's read buffer piece by
//! piece ([`Decoder`]), and the chunk encoder for request bodies of
//! unknown length.
//!
//! Pure: no I/O. The decoder works on the connection's one read buffer
//! (`BytesMut`) and hands out `Bytes` split off it, so relaying a body
//! copies nothing; it is strict where a lenient reading could disagree
//! with the VM about where a message ends (chunk sizes are hex digits
//! only, every line ends in CRLF, trailers are bounded and dropped), and a
//! decoder that refused once stays refused.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size, extensions and CRLF) accepted.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Most trailer bytes accepted after the last chunk (they are dropped).
pub const MAX_TRAILERS: usize = 8 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a HEAD answer, 1xx, 204, 304, or a request without one).
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (an answer without length).
    UntilClose,
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("malformed chunk size line")]
    ChunkLine,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailers over {MAX_TRAILERS} bytes or malformed")]
    Trailers,
    #[error("the connection closed before the body ended")]
    Truncated,
}

/// What the decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Body bytes (split off the buffer).
    Data(Bytes),
    /// The buffer holds no complete piece: read more.
    NeedMore,
    /// The body is complete; whatever follows in the buffer is the next
    /// message's.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// In chunk data: bytes left of it.
    ChunkData(u64),
    /// After chunk data: its CRLF.
    ChunkCrlf,
    /// After the last chunk: trailer lines until an empty one (bytes seen).
    Trailers(usize),
    UntilClose,
    Done,
    Failed(BodyError),
}

/// Takes one body out of a read buffer (see the module docs).
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    /// The body has been read whole.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next piece of the body from `buf`. `max` caps one data piece.
    pub fn next(&mut self, buf: &mut BytesMut, max: usize) -> Result<Piece, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(Piece::Done),
                State::Failed(e) => return Err(e),
                State::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Piece::NeedMore);
                    }
                    let n = (left.min(buf.len() as u64) as usize).min(max);
                    let left = left - n as u64;
                    self.state = if left == 0 { State::Done } else { State::Length(left) };
                    return Ok(Piece::Data(buf.split_to(n).freeze()));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Piece::NeedMore);
                    }
                    let n = buf.len().min(max);
                    return Ok(Piece::Data(buf.split_to(n).freeze()));
                }
                State::ChunkSize => match chunk_size(buf) {
                    Ok(None) => return Ok(Piece::NeedMore),
                    Ok(Some((0, len))) => {
                        buf.advance(len);
                        self.state = State::Trailers(0);
                    }
                    Ok(Some((size, len))) => {
                        buf.advance(len);
                        self.state = State::ChunkData(size);
                    }
                    Err(e) => return self.fail(e),
                },
                State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Piece::NeedMore);
                    }
                    let n = (left.min(buf.len() as u64) as usize).min(max);
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkCrlf
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Piece::Data(buf.split_to(n).freeze()));
                }
                State::ChunkCrlf => {
                    if buf.len() < 2 {
                        return Ok(Piece::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return self.fail(BodyError::ChunkEnd);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(end) = find_crlf(buf) else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return self.fail(BodyError::Trailers);
                        }
                        return Ok(Piece::NeedMore);
                    };
                    if end > 0 && !field_line(&buf[..end]) {
                        return self.fail(BodyError::Trailers);
                    }
                    let seen = seen + end + 2;
                    if seen > MAX_TRAILERS {
                        return self.fail(BodyError::Trailers);
                    }
                    buf.advance(end + 2);
                    self.state = if end == 0 { State::Done } else { State::Trailers(seen) };
                }
            }
        }
    }

    /// The connection closed: the end of an until-close body, a truncated
    /// one otherwise.
    pub fn eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            State::Failed(e) => Err(e),
            _ => self.fail(BodyError::Truncated).map(|_| ()),
        }
    }

    fn fail(&mut self, e: BodyError) -> Result<Piece, BodyError> {
        self.state = State::Failed(e);
        Err(e)
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A bare CR or LF, or a NUL, inside a line: refused (no two parsers read
/// such a line the same way).
fn bad_line(line: &[u8]) -> bool {
    line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

/// RFC 9110 §5.6.2 `tchar`.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Takes a token off the front of `s`; None when there is none.
fn token(s: &[u8]) -> Option<&[u8]> {
    let n = s.iter().position(|&b| !tchar(b)).unwrap_or(s.len());
    (n > 0).then(|| &s[n..])
}

/// Takes a quoted-string (RFC 9110 §5.6.4) off the front of `s`.
fn quoted(s: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    if s.first() != Some(&b'"') {
        return None;
    }
    while i < s.len() {
        match s[i] {
            b'"' => return Some(&s[i + 1..]),
            b'\\' if i + 1 < s.len() && (s[i + 1] == b'\t' || s[i + 1] >= 0x20) && s[i + 1] != 0x7f => i += 2,
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// Chunk extensions after the first `;`: `name[=value]` separated by `;`,
/// names tokens, values tokens or quoted strings.
fn extensions(mut s: &[u8]) -> bool {
    loop {
        let Some(rest) = token(s) else { return false };
        s = rest;
        if let Some(v) = s.strip_prefix(b"=") {
            let Some(rest) = token(v).or_else(|| quoted(v)) else {
                return false;
            };
            s = rest;
        }
        match s.split_first() {
            None => return true,
            Some((b';', rest)) => s = rest,
            Some(_) => return false,
        }
    }
}

/// A trailer field line: a token name, `:`, a value of visible
/// characters, spaces and tabs (RFC 9110 §5.5).
fn field_line(line: &[u8]) -> bool {
    let Some(rest) = token(line) else { return false };
    let Some(value) = rest.strip_prefix(b":") else {
        return false;
    };
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A chunk-size line at the start of `buf`: (size, bytes the line takes),
/// None when it is not complete yet.
fn chunk_size(buf: &[u8]) -> Result<Option<(u64, usize)>, BodyError> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
    let Some(end) = find_crlf(window) else {
        // A LF with no CR before it is a bare LF line: refused.
        if buf.len() >= MAX_CHUNK_LINE || window.contains(&b'\n') {
            return Err(BodyError::ChunkLine);
        }
        return Ok(None);
    };
    let line = &buf[..end];
    if bad_line(line) {
        return Err(BodyError::ChunkLine);
    }
    // size [; extensions]: the extensions are checked, then ignored (RFC
    // 9112 §7.1.1; no whitespace around them, as llhttp's strict mode).
    let digits = match line.iter().position(|&b| b == b';') {
        Some(i) if extensions(&line[i + 1..]) => &line[..i],
        Some(_) => return Err(BodyError::ChunkLine),
        None => line,
    };
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(BodyError::ChunkLine);
    }
    let size = digits.iter().fold(0u64, |n, &d| {
        (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0))
    });
    Ok(Some((size, end + 2)))
}

/// The size line that precedes a chunk of `len` bytes (`len` > 0), written
/// into `out` (no allocation): `<hex>\r\n`.
pub fn chunk_head(len: usize, out: &mut [u8; 18]) -> &[u8] {
    let mut n = len;
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let d = &digits[i..];
    out[..d.len()].copy_from_slice(d);
    out[d.len()..d.len() + 2].copy_from_slice(b"\r\n");
    &out[..d.len() + 2]
}

/// What ends a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: Framing, input: &[u8], feed: usize) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut input = input;
        loop {
            match d.next(&mut buf, 5)? {
                Piece::Data(b) => out.extend_from_slice(&b),
                Piece::Done => return Ok((out, [&buf[..], input].concat())),
                Piece::NeedMore if input.is_empty() => {
                    d.eof()?;
                    return Ok((out, buf.to_vec()));
                }
                Piece::NeedMore => {
                    let n = feed.min(input.len());
                    buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                }
            }
        }
    }

    #[test]
    fn lengths_chunks_and_close_delimited_bodies_decode_byte_by_byte_and_at_once() {
        for feed in [1, 3, 1000] {
            assert_eq!(
                all(Framing::Length(5), b"helloNEXT", feed).unwrap(),
                (b"hello".to_vec(), b"NEXT".to_vec()),
                "the next message stays in the buffer"
            );
            let chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
            assert_eq!(
                all(Framing::Chunked, chunked, feed).unwrap(),
                (b"hello world".to_vec(), b"NEXT".to_vec())
            );
            assert_eq!(
                all(Framing::Chunked, b"A\r\n0123456789\r\n0\r\n\r\n", feed).unwrap().0,
                b"0123456789"
            );
            assert_eq!(all(Framing::UntilClose, b"to the end", feed).unwrap().0, b"to the end");
            assert_eq!(all(Framing::None, b"NEXT", feed).unwrap(), (vec![], b"NEXT".to_vec()));
        }
    }

    #[test]
    fn ambiguous_or_truncated_bodies_are_refused() {
        for (input, want) in [
            (&b"5\nhello\r\n0\r\n\r\n"[..], BodyError::ChunkLine),
            (b"0x5\r\nhello\r\n0\r\n\r\n", BodyError::ChunkLine),
            (b"+5\r\nhello\r\n0\r\n\r\n", BodyError::ChunkLine),
            (b"fffffffffffffffff\r\n", BodyError::ChunkLine),
            (b"5\r\nhelloXX0\r\n\r\n", BodyError::ChunkEnd),
            (b"5\r\nhel", BodyError::Truncated),
            (b"0\r\nbad\rtrailer\r\n\r\n", BodyError::Trailers),
        ] {
            assert_eq!(all(Framing::Chunked, input, 1000).unwrap_err(), want, "{input:?}");
        }
        assert_eq!(
            all(Framing::Length(9), b"short", 1000).unwrap_err(),
            BodyError::Truncated
        );
        let huge_trailers = [b"0\r\n".to_vec(), vec![b'x'; MAX_TRAILERS + 10]].concat();
        assert_eq!(
            all(Framing::Chunked, &huge_trailers, 64).unwrap_err(),
            BodyError::Trailers
        );
        // Refused once, refused for good.
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(d.next(&mut buf, 10).is_err());
        let mut buf = BytesMut::from(&b"5\r\nhello\r\n"[..]);
        assert!(d.next(&mut buf, 10).is_err());
    }

    #[test]
    fn chunk_heads_are_hex_lines() {
        let mut b = [0u8; 18];
        assert_eq!(chunk_head(1, &mut b), b"1\r\n");
        assert_eq!(chunk_head(255, &mut b), b"ff\r\n");
        assert_eq!(chunk_head(65536, &mut b), b"10000\r\n");
        assert_eq!(chunk_head(usize::MAX, &mut b), b"ffffffffffffffff\r\n");
    }

    proptest::proptest! {
        #[test]
        fn what_is_encoded_decodes_back(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..40), 0..8), feed in 1usize..17) {
            let mut wire = Vec::new();
            let mut b = [0u8; 18];
            for c in &chunks {
                wire.extend_from_slice(chunk_head(c.len(), &mut b));
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(LAST_CHUNK);
            let (body, rest) = all(Framing::Chunked, &wire, feed).unwrap();
            proptest::prop_assert_eq!(body, chunks.concat());
            proptest::prop_assert!(rest.is_empty());
        }
    }
}
