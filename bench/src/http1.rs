//! A minimal HTTP/1.1 client over a raw `TcpStream` for load generators:
//! write a prebuilt request, read one response framed by `Content-Length`
//! (or `Transfer-Encoding: chunked`), return its status. No allocation per
//! request once the buffer has grown.
//!
//! Where it sits: used by the fixed-rate generator ([`crate::load`]), the
//! sync benchmark and the harness's readiness checks. Start at
//! [`read_response`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed {0}")]
    Closed(&'static str),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status, header length and body framing of a response head.
struct Head {
    status: u16,
    len: usize,
    body: Framing,
}

enum Framing {
    Length(usize),
    Chunked,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, Http1Error> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &buf[..end];
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or(Http1Error::Malformed("status line"))?;
    let mut body = Framing::Length(0);
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (k, v) = line.split_at(colon);
        let v = v[1..].trim_ascii();
        if k.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Http1Error::Malformed("content-length"))?;
            body = Framing::Length(n);
        } else if k.eq_ignore_ascii_case(b"transfer-encoding") && v.eq_ignore_ascii_case(b"chunked") {
            body = Framing::Chunked;
        }
    }
    // 1xx, 204 and 304 carry no body.
    if status < 200 || status == 204 || status == 304 {
        body = Framing::Length(0);
    }
    Ok(Some(Head {
        status,
        len: end + 4,
        body,
    }))
}

/// End of a chunked body starting at `buf[0]`, if it is all there.
fn chunked_end(buf: &[u8]) -> Result<Option<usize>, Http1Error> {
    let mut at = 0;
    loop {
        let Some(nl) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let size_str = std::str::from_utf8(&buf[at..at + nl]).map_err(|_| Http1Error::Malformed("chunk size"))?;
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| Http1Error::Malformed("chunk size"))?;
        at += nl + 2;
        if size == 0 {
            // No trailers from the peers we test: the final CRLF follows.
            return Ok((buf.len() >= at + 2).then_some(at + 2));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

/// Reads one whole response from `s` into `buf` (cleared first; bytes of a
/// following response are not expected: one request in flight per
/// connection). Returns the status code.
pub async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, Http1Error> {
    buf.clear();
    loop {
        if let Some(h) = parse_head(buf)? {
            loop {
                let done = match h.body {
                    Framing::Length(n) => buf.len() >= h.len + n,
                    Framing::Chunked => chunked_end(&buf[h.len..])?.is_some(),
                };
                if done {
                    return Ok(h.status);
                }
                read_more(s, buf, "mid-body").await?;
            }
        }
        read_more(s, buf, "before the response head").await?;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, when: &'static str) -> Result<(), Http1Error> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(16 * 1024);
    }
    if s.read_buf(buf).await? == 0 {
        return Err(Http1Error::Closed(when));
    }
    Ok(())
}

/// One keep-alive `GET` on `s`; returns the status (the body is in `buf`
/// after the head).
pub async fn get(s: &mut TcpStream, host: &str, path: &str, buf: &mut Vec<u8>) -> Result<u16, Http1Error> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    read_response(s, buf).await
}

/// The body of the response in `buf` (after [`read_response`] or [`get`]).
pub fn body(buf: &[u8]) -> &[u8] {
    find(buf, b"\r\n\r\n").map(|e| &buf[e + 4..]).unwrap_or(&[])
}

/// Waits until `GET path` on `addr` answers 200 (an edge's `/readyz`).
pub async fn wait_ok(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<(), Http1Error> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            if get(&mut s, host, path, &mut buf).await.ok() == Some(200) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(Http1Error::Closed("while waiting to become ready"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_chunks_parse() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.len), (200, 38));
        assert!(matches!(h.body, Framing::Length(2)));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
            .unwrap()
            .is_none());
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        let h = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.body, Framing::Chunked));
        assert_eq!(chunked_end(b"2\r\nok\r\n0\r\n\r\n").unwrap(), Some(12));
        assert_eq!(chunked_end(b"2\r\nok\r\n0\r\n").unwrap(), None);
        assert!(chunked_end(b"zz\r\n").is_err());
    }
}
