//! [`AnswerHead`]: a VM's answer head as it goes to the client — the
//! head's own bytes and the offsets of the header lines that stay, with
//! no header map. The edits the edge makes on the way (the replay and
//! route headers taken out, `x-request-id` and the debug route added) are
//! line removals and extra lines given at write time, so an HTTP/1.1
//! client gets the VM's lines copied once, names as the VM cased them;
//! an HTTP/2 client gets a Pingora `ResponseHeader` built from them
//! ([`AnswerHead::to_response_header`]).
//!
//! Where it sits: [`super::Conn::take_answer`] makes one per answer;
//! `forward.rs` edits it and hands it to the client's codec
//! (`Downstream::write_answer_head`). Pure: no I/O.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use smallvec::SmallVec;

/// One header line: offsets of its name and value in the head's bytes.
#[derive(Debug, Clone, Copy)]
struct Line {
    name: (u32, u32),
    value: (u32, u32),
}

/// An answer head on its way to the client (see the module docs).
#[derive(Debug)]
pub struct AnswerHead {
    raw: Bytes,
    /// Where the head's bytes started when its lines were kept (the read
    /// buffer it was parsed in, which becomes `raw` without a copy).
    base: usize,
    pub status: http::StatusCode,
    lines: SmallVec<[Line; 16]>,
    /// Bit i: a kept line is named `LOOKED_UP[i]`.
    has: u8,
}

/// Names the edge looks for in every answer (and takes out or adds):
/// whether a head has each is noted as its lines are kept, so the usual
/// answer, with none of them, is never scanned for them.
const LOOKED_UP: [&str; 3] = [
    crate::http::REPLAY_HEADER,
    crate::http::ROUTE_HEADER,
    crate::http::REQUEST_ID_HEADER,
];

fn looked_up(name: &[u8]) -> Option<u8> {
    LOOKED_UP
        .iter()
        .position(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        .map(|i| 1 << i)
}

impl AnswerHead {
    pub fn new(raw: Bytes, status: http::StatusCode) -> AnswerHead {
        AnswerHead {
            base: raw.as_ptr() as usize,
            raw,
            status,
            lines: SmallVec::new(),
            has: 0,
        }
    }

    /// A head still in the buffer starting at `head` (parsed there once):
    /// lines are kept as slices of it, and [`AnswerHead::attach`] gives it
    /// its bytes when they leave the buffer.
    pub fn parsed_in(head: &[u8], status: http::StatusCode) -> AnswerHead {
        AnswerHead {
            raw: Bytes::new(),
            base: head.as_ptr() as usize,
            status,
            lines: SmallVec::new(),
            has: 0,
        }
    }

    /// The head's bytes: the same bytes [`AnswerHead::parsed_in`] was
    /// given, now out of the read buffer.
    pub fn attach(&mut self, raw: Bytes) {
        debug_assert_eq!(raw.as_ptr() as usize, self.base, "the head's own bytes");
        debug_assert!(self.lines.iter().all(|l| l.value.1 as usize <= raw.len()));
        self.raw = raw;
    }

    /// Keeps the line whose name and value are these slices of the head.
    pub fn keep(&mut self, name: &[u8], value: &[u8]) {
        self.has |= looked_up(name).unwrap_or(0);
        let base = self.base;
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize).saturating_sub(base) as u32;
            (start, start + s.len() as u32)
        };
        self.lines.push(Line {
            name: at(name),
            value: at(value),
        });
    }

    fn name(&self, l: &Line) -> &[u8] {
        &self.raw[l.name.0 as usize..l.name.1 as usize]
    }

    fn value(&self, l: &Line) -> &[u8] {
        &self.raw[l.value.0 as usize..l.value.1 as usize]
    }

    /// The header lines, in the VM's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines.iter().map(|l| (self.name(l), self.value(l)))
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        if looked_up(name.as_bytes()).is_some_and(|bit| self.has & bit == 0) {
            return None;
        }
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Drops every line named `name`.
    pub fn remove(&mut self, name: &str) {
        if let Some(bit) = looked_up(name.as_bytes()) {
            if self.has & bit == 0 {
                return;
            }
            self.has &= !bit;
        }
        let raw = &self.raw;
        self.lines
            .retain(|l| !raw[l.name.0 as usize..l.name.1 as usize].eq_ignore_ascii_case(name.as_bytes()));
    }

    /// The lines as HTTP/1.1 header lines (no status line, no blank line),
    /// then `extra`.
    pub fn write_lines(&self, extra: &[(&str, &[u8])], out: &mut Vec<u8>) {
        for (n, v) in self.iter().chain(extra.iter().map(|(n, v)| (n.as_bytes(), *v))) {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The head as a Pingora `ResponseHeader` (HTTP/2), with `extra`.
    pub fn to_response_header(&self, extra: &[(&str, &[u8])]) -> pingora_core::Result<ResponseHeader> {
        let mut head = ResponseHeader::build_no_case(self.status, Some(self.lines.len() + extra.len()))?;
        for l in &self.lines {
            let name = self.raw.slice(l.name.0 as usize..l.name.1 as usize);
            let value = http::HeaderValue::from_maybe_shared(self.raw.slice(l.value.0 as usize..l.value.1 as usize))
                .map_err(|e| pingora_core::Error::because(pingora_core::ErrorType::InvalidHTTPHeader, "answer", e))?;
            head.append_header(name, value)?;
        }
        for (n, v) in extra {
            head.append_header(n.to_string(), *v)?;
        }
        Ok(head)
    }

    /// The whole head as HTTP/1.1 bytes (a `101` handed to a tunnel).
    pub fn to_bytes(&self, extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 64);
        write_status_line(self.status, &mut out);
        self.write_lines(extra, &mut out);
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// `HTTP/1.1 <code> <reason>\r\n` (always HTTP/1.1: the edge's own version).
pub fn write_status_line(status: http::StatusCode, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_stay_slices_of_the_head_and_edits_are_removals_and_extras() {
        let raw = Bytes::from_static(b"HTTP/1.1 200 OK\r\nX-Served-By: vm-1\r\nx-edgeplane-replay: vm=b\r\n\r\n");
        let mut h = AnswerHead::new(raw.clone(), http::StatusCode::OK);
        h.keep(&raw[17..28], &raw[30..34]);
        h.keep(&raw[36..54], &raw[56..60]);
        assert_eq!(h.get("x-served-by"), Some(&b"vm-1"[..]));
        // A name the edge looks for in every answer, noted as it was kept.
        assert_eq!(h.get("X-Edgeplane-Replay"), Some(&b"vm=b"[..]));
        assert!(!h.contains("x-request-id") && !h.contains("x-edgeplane-route"));
        h.remove("X-EDGEPLANE-REPLAY");
        assert!(!h.contains("x-edgeplane-replay"));
        assert_eq!(
            h.to_bytes(&[("x-request-id", b"id-1")]),
            b"HTTP/1.1 200 OK\r\nX-Served-By: vm-1\r\nx-request-id: id-1\r\n\r\n"
        );
        let r = h.to_response_header(&[("x-request-id", b"id-1")]).unwrap();
        assert_eq!(r.headers["x-served-by"], "vm-1");
        assert_eq!(r.headers["x-request-id"], "id-1");
    }
}
