//! HTTP/2 frame boundaries and the control-frame budget of one client
//! connection.
//!
//! Where it sits: the HTTP/2 codec (the `h2` crate under Pingora) answers
//! every PING and SETTINGS a client sends, and applies backpressure when
//! the client does not read those answers, so a flood is bounded in memory
//! — but the connection is never closed: a client can keep a server busy
//! answering pings forever, or park a connection stuck on answers it never
//! reads. The proxy's connection wrapper (`conn::stream`) sees the
//! plaintext frames in both directions and feeds them here:
//! [`FrameScanner`] follows frame headers (9 bytes each, payloads skipped
//! by length, the client's 24-byte preface first), and [`ControlBudget`]
//! decides when PING and SETTINGS frames (those that ask for an ACK) come
//! faster than any client needs: more than [`MAX_CONTROL_FRAMES`] in one
//! [`CONTROL_WINDOW_MS`]. The connection is then closed with GOAWAY
//! `ENHANCE_YOUR_CALM`, as gRPC servers answer "too many pings". (Envoy
//! caps the control frames queued for writing instead; under `h2` that
//! queue is the codec's buffer and the kernel's, which this layer cannot
//! see, so the budget counts what arrives.)
//!
//! Invariants: the scanner never buffers payloads (9 bytes of state);
//! time is passed in. Start at [`FrameScanner::feed`] and
//! [`ControlBudget::control_frame`].

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// PING and SETTINGS frames (not ACKs) a client may send per window.
pub const MAX_CONTROL_FRAMES: u32 = 1_000;
/// The budget's window.
pub const CONTROL_WINDOW_MS: u64 = 10_000;

pub const TYPE_HEADERS: u8 = 0x1;
pub const TYPE_SETTINGS: u8 = 0x4;
pub const TYPE_PING: u8 = 0x6;
pub const TYPE_GOAWAY: u8 = 0x7;
pub const FLAG_ACK: u8 = 0x1;
/// GOAWAY error code for a peer generating excessive load (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    /// A PING or SETTINGS frame the receiver must acknowledge.
    pub fn asks_for_ack(&self) -> bool {
        matches!(self.kind, TYPE_PING | TYPE_SETTINGS) && self.flags & FLAG_ACK == 0
    }
}

/// Position in one direction's frame stream.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    /// Preface bytes still to skip (24 for a client's side, 0 for a server's).
    preface_left: usize,
    head: [u8; 9],
    head_len: usize,
    payload_left: u32,
}

impl FrameScanner {
    /// The client's side: starts with the connection preface.
    pub fn client() -> FrameScanner {
        FrameScanner {
            preface_left: PREFACE.len(),
            ..FrameScanner::server()
        }
    }

    /// The server's side: frames from the first byte.
    pub fn server() -> FrameScanner {
        FrameScanner {
            preface_left: 0,
            head: [0; 9],
            head_len: 0,
            payload_left: 0,
        }
    }

    /// The stream is between frames (nothing written of the next one).
    pub fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.head_len == 0 && self.payload_left == 0
    }

    /// Follows `bytes` (the next bytes of the stream), calling `on_frame`
    /// with each frame header as it completes.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(FrameHeader)) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(bytes.len());
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.head_len).min(bytes.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
            self.head_len += n;
            bytes = &bytes[n..];
            if self.head_len == 9 {
                let h = &self.head;
                let header = FrameHeader {
                    len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.head_len = 0;
                self.payload_left = header.len;
                on_frame(header);
            }
        }
    }
}

/// What the budget says of a control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Within,
    /// Over [`MAX_CONTROL_FRAMES`] in the window: close the connection.
    Flood,
}

/// Control frames asking for an ACK, counted per fixed window.
#[derive(Debug, Clone, Default)]
pub struct ControlBudget {
    window_start_ms: u64,
    in_window: u32,
}

impl ControlBudget {
    /// Counts one PING or SETTINGS (not an ACK) arriving at `now_ms`.
    pub fn control_frame(&mut self, now_ms: u64) -> Budget {
        if now_ms.saturating_sub(self.window_start_ms) >= CONTROL_WINDOW_MS {
            self.window_start_ms = now_ms;
            self.in_window = 0;
        }
        self.in_window += 1;
        if self.in_window > MAX_CONTROL_FRAMES {
            Budget::Flood
        } else {
            Budget::Within
        }
    }
}

/// A GOAWAY frame: `last_stream` the highest stream the server may have
/// acted on, `code` the error code, no debug data.
pub fn goaway(last_stream: u32, code: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8; // payload length
    f[3] = TYPE_GOAWAY;
    f[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f[13..17].copy_from_slice(&code.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    #[test]
    fn frames_are_found_across_any_split_of_the_stream() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(TYPE_SETTINGS, 0, 0, &[0; 6]));
        wire.extend(frame(TYPE_HEADERS, 0x4, 3, &[0x82; 40]));
        wire.extend(frame(0x0, 0x1, 3, &[b'x'; 300]));
        wire.extend(frame(TYPE_PING, 0, 0, &[7; 8]));
        wire.extend(frame(TYPE_PING, FLAG_ACK, 0, &[7; 8]));
        let want = vec![
            (TYPE_SETTINGS, 0, 0, 6),
            (TYPE_HEADERS, 0x4, 3, 40),
            (0x0, 0x1, 3, 300),
            (TYPE_PING, 0, 0, 8),
            (TYPE_PING, FLAG_ACK, 0, 8),
        ];
        for step in [1, 2, 5, 9, 17, 64, wire.len()] {
            let mut s = FrameScanner::client();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                s.feed(piece, |h| got.push((h.kind, h.flags, h.stream, h.len)));
            }
            assert_eq!(got, want, "pieces of {step}");
            assert!(s.at_boundary());
        }
        let mut s = FrameScanner::client();
        let mut asks = 0;
        s.feed(&wire[..wire.len() - 3], |h| asks += h.asks_for_ack() as u32);
        assert_eq!(asks, 2, "SETTINGS and the PING ask; the PING ACK does not");
        assert!(!s.at_boundary(), "inside the last frame");
    }

    #[test]
    fn the_budget_allows_a_window_of_control_frames_then_calls_a_flood() {
        let mut b = ControlBudget::default();
        for i in 0..MAX_CONTROL_FRAMES {
            assert_eq!(b.control_frame(1_000 + i as u64), Budget::Within);
        }
        assert_eq!(b.control_frame(2_500), Budget::Flood);
        // A new window starts over: a steady, sane rate never floods.
        let mut b = ControlBudget::default();
        for s in 0..1_000u64 {
            assert_eq!(b.control_frame(s * 1_000), Budget::Within, "one per second");
        }
    }

    #[test]
    fn goaway_is_a_well_formed_frame() {
        let f = goaway(7, ENHANCE_YOUR_CALM);
        let mut s = FrameScanner::server();
        let mut seen = None;
        s.feed(&f, |h| seen = Some(h));
        assert_eq!(
            seen,
            Some(FrameHeader {
                len: 8,
                kind: TYPE_GOAWAY,
                flags: 0,
                stream: 0
            })
        );
        assert_eq!(&f[9..], &[0, 0, 0, 7, 0, 0, 0, 0xb]);
        assert!(s.at_boundary());
    }
}
