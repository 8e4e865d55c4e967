//! WebSocket frame boundaries, so a tunnel can end politely.
//!
//! Tunnels relay bytes without parsing them (the proxy's `http::tunnel`). To send a
//! close frame when the edge stops or hands over to a new binary (SIGTERM:
//! 1001 "going away"; SIGQUIT upgrade: 1012 "service restart"), a close
//! frame must land between frames, never inside one. [`FrameCursor`]
//! follows just the frame headers of one direction (2 to 14 bytes each) and
//! skips payloads by length, so it knows whether the byte stream is at a
//! frame boundary and how many bytes may be read without crossing one.
//!
//! Plain Rust, no I/O. Start at [`FrameCursor::advance`].

/// Close code sent when the edge stops (RFC 6455 §7.4.1).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code sent when the edge restarts (binary upgrade; IANA registry).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// Position in one direction's frame stream.
#[derive(Debug, Default, Clone)]
pub struct FrameCursor {
    head: [u8; 14],
    head_len: usize,
    payload_left: u64,
    /// Set when the bytes do not look like WebSocket frames (reserved
    /// lengths); such a stream is never at a boundary.
    lost: bool,
}

/// Length of a frame header given its first two bytes.
fn header_len(b1: u8) -> usize {
    let masked = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + masked
        + match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        }
}

impl FrameCursor {
    /// True between frames (where a close frame may be inserted).
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.head_len == 0 && self.payload_left == 0
    }

    /// Most bytes that may be read next without going past the current
    /// frame (0 at a boundary: stop reading to insert a frame there).
    pub fn to_boundary(&self) -> u64 {
        if self.lost {
            return u64::MAX;
        }
        if self.payload_left > 0 {
            return self.payload_left;
        }
        match self.head_len {
            0 => 0,
            1 => 1,
            n => (header_len(self.head[1]) - n) as u64,
        }
    }

    /// Follows `bytes` as they pass.
    pub fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = (bytes.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[self.head_len] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            if self.head_len >= 2 && self.head_len == header_len(self.head[1]) {
                let h = &self.head[..self.head_len];
                let len = match h[1] & 0x7f {
                    126 => u16::from_be_bytes([h[2], h[3]]) as u64,
                    127 => {
                        let v = u64::from_be_bytes(h[2..10].try_into().unwrap_or([0; 8]));
                        if v >> 63 != 0 {
                            self.lost = true;
                        }
                        v
                    }
                    n => n as u64,
                };
                self.payload_left = len;
                self.head_len = 0;
            }
        }
    }
}

/// A close frame with `code` as the server sends it (unmasked).
pub fn close_frame_to_client(code: u16) -> [u8; 4] {
    let c = code.to_be_bytes();
    [0x88, 0x02, c[0], c[1]]
}

/// A close frame with `code` as a client sends it (masked with `mask`).
pub fn close_frame_to_server(code: u16, mask: [u8; 4]) -> [u8; 8] {
    let c = code.to_be_bytes();
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        c[0] ^ mask[0],
        c[1] ^ mask[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(m | len as u8);
        } else if len < 65536 {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_split() {
        let mut stream = Vec::new();
        for (m, l) in [(false, 5), (true, 200), (false, 70_000), (true, 0), (false, 125)] {
            stream.extend(frame(m, l));
        }
        let ends: Vec<usize> = {
            let mut v = Vec::new();
            let mut at = 0;
            for (m, l) in [(false, 5), (true, 200), (false, 70_000), (true, 0), (false, 125)] {
                at += frame(m, l).len();
                v.push(at);
            }
            v
        };
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            let mut c = FrameCursor::default();
            let mut at = 0;
            while at < stream.len() {
                let n = chunk.min(stream.len() - at);
                c.advance(&stream[at..at + n]);
                at += n;
                assert_eq!(c.at_boundary(), ends.contains(&at), "chunk {chunk} at {at}");
            }
        }
    }

    #[test]
    fn to_boundary_never_crosses_a_frame() {
        let mut stream = frame(true, 300);
        stream.extend(frame(false, 3));
        let mut c = FrameCursor::default();
        let mut at = 0;
        let mut stops = 0;
        // Read the way a draining tunnel does: 2 bytes when at a boundary,
        // else at most to_boundary().
        while at < stream.len() {
            let n = if c.at_boundary() { 2 } else { c.to_boundary() as usize }.min(stream.len() - at);
            c.advance(&stream[at..at + n]);
            at += n;
            if c.at_boundary() {
                stops += 1;
            }
        }
        assert_eq!(stops, 2);
    }

    #[test]
    fn close_frames_decode() {
        let mut c = FrameCursor::default();
        c.advance(&close_frame_to_client(CLOSE_GOING_AWAY));
        assert!(c.at_boundary());
        let f = close_frame_to_server(CLOSE_SERVICE_RESTART, [9, 8, 7, 6]);
        c.advance(&f);
        assert!(c.at_boundary());
        assert_eq!(u16::from_be_bytes([f[6] ^ 9, f[7] ^ 8]), 1012);
    }
}
