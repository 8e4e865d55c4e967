//! [`RequestCtx`]: what one request carries from its head to its last log
//! line, as types whose values say where the request is — facts read once
//! from the head ([`HeadFacts`]), the decision ([`Routed`], set once and
//! only replaced through [`super::Proxy::adopt`]), the body's state
//! ([`Body`]), the attempts made ([`Tries`]) and what the request came to
//! ([`Outcome`]). No boolean here stands for a stage.
//!
//! Where it sits: [`super::serve`] makes one per request; the filter
//! fills the head facts and the decision, [`super::forward`] the body and
//! tries, every step the outcome; [`super::access_log`] reads it last.

use std::time::Instant;

use bytes::Bytes;
use edgeplane_control_sync::table::Idx;
use edgeplane_core::route::host::{canonical_host, HostBuf};

use super::headers::{header_str, request_host, Known, RequestHead};
use crate::route::Decision;

/// What the head says, read once.
#[derive(Debug)]
pub struct HeadFacts {
    /// The client connection is TLS (an HTTP/2 stream always is).
    pub tls: bool,
    /// The canonical host (None: missing or malformed).
    pub host: Option<HostBuf>,
    pub body: DeclaredBody,
    /// The method may be sent twice (GET, HEAD, PUT, DELETE, ...).
    pub idempotent: bool,
    pub head_request: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// How the client framed its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredBody {
    /// No body (no length, not chunked, or an HTTP/2 stream that ended with its head).
    None,
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1).
    Chunked,
    /// An HTTP/2 stream with DATA and no `content-length`: the VM gets it chunked.
    Unframed,
}

impl DeclaredBody {
    /// The body the VM is sent: raw bytes of the declared length, or chunks.
    pub fn chunked_upstream(self) -> bool {
        matches!(self, DeclaredBody::Chunked | DeclaredBody::Unframed)
    }
}

impl HeadFacts {
    /// The facts of `req`; `body_done` says the stream already ended (HTTP/2).
    pub fn read(head: &impl RequestHead, tls: bool, body_done: bool) -> HeadFacts {
        let req = head.req();
        let host = request_host(head).and_then(|h| canonical_host(h).ok());
        let chunked = header_str(head, Known::TransferEncoding).is_some_and(|v| {
            v.rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
        });
        let length = header_str(head, Known::ContentLength).and_then(|v| v.trim().parse::<u64>().ok());
        let body = match (chunked, length) {
            (true, _) => DeclaredBody::Chunked,
            (false, Some(0)) => DeclaredBody::None,
            (false, Some(n)) => DeclaredBody::Length(n),
            (false, None) if body_done || req.version != http::Version::HTTP_2 => DeclaredBody::None,
            (false, None) => DeclaredBody::Unframed,
        };
        HeadFacts {
            tls,
            host,
            body,
            idempotent: req.method.is_idempotent(),
            head_request: req.method == http::Method::HEAD,
            expect_continue: header_str(head, Known::Expect).is_some_and(|v| v.eq_ignore_ascii_case("100-continue")),
        }
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_ref().map(HostBuf::as_str)
    }
}

/// The routing decision and what carrying it out needs from the table it
/// was made with (copied when it is adopted, so later steps never look a
/// name up in a newer table).
#[derive(Debug)]
pub struct Routed {
    pub decision: Decision,
    pub table_version: u64,
    /// Verified hop count of the incoming request (0: from a client).
    pub hops_in: u8,
    /// The cluster a lazy transfer moves from.
    pub transfer_from: Option<Box<str>>,
    /// Id hash of the VM it goes to (passive ejection).
    pub vm_hash: Option<u64>,
    /// `x-edgeplane-replay-src` to send (a replayed request, or one a peer
    /// edge replayed here).
    pub replay_src: Option<String>,
}

impl Routed {
    /// Where the request is sent, if anywhere.
    pub fn target(&self) -> Option<std::net::SocketAddr> {
        match self.decision {
            Decision::Vm { addr, .. } | Decision::Forward { addr, .. } => Some(addr),
            Decision::Reject { .. } => None,
        }
    }
}

/// The request body, as far as the edge has it.
#[derive(Debug, Default)]
pub enum Body {
    /// Not read yet: the first attempt reads it from the client.
    #[default]
    Unread,
    /// Being read and sent; `kept` holds the chunks while the body still
    /// fits `limits.replay_body_bytes` (None once it did not).
    Reading { kept: Option<Vec<Bytes>>, bytes: u64 },
    /// Read whole and kept (`chunks`, shared, not copied): a retry or a
    /// replay sends it again.
    Held { chunks: Vec<Bytes>, bytes: u64 },
    /// Sent and not kept (past `limits.replay_body_bytes`): no second
    /// attempt can send it.
    Sent { bytes: u64 },
    /// The VM answered before it was all read: the rest stays unread, so
    /// the client connection cannot carry another request.
    Abandoned { bytes: u64 },
}

impl Body {
    /// Body bytes read from the client so far.
    pub fn bytes(&self) -> u64 {
        match self {
            Body::Unread => 0,
            Body::Reading { bytes, .. }
            | Body::Held { bytes, .. }
            | Body::Sent { bytes }
            | Body::Abandoned { bytes } => *bytes,
        }
    }
}

/// The VMs one request tried: the first try, up to
/// `MAX_CONNECT_RETRIES` more and a replay.
pub const MAX_TRIED: usize = 1 + edgeplane_config::MAX_CONNECT_RETRIES as usize + 1;

/// Attempts made so far.
#[derive(Debug, Default)]
pub struct Tries {
    vms: [Idx; MAX_TRIED],
    len: u8,
    /// Connect retries made (`balancer.connect_retries`).
    pub retries: u32,
    /// Replayed once already (a second replay header is not followed).
    pub replayed: bool,
    /// A pooled connection's race was retried on a fresh one already.
    pub fresh_retried: bool,
}

impl Tries {
    pub fn push(&mut self, vm: Idx) {
        if (self.len as usize) < self.vms.len() {
            self.vms[self.len as usize] = vm;
            self.len += 1;
        }
    }

    pub fn vms(&self) -> &[Idx] {
        &self.vms[..self.len as usize]
    }
}

/// What the request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing answered yet.
    Pending,
    /// The edge answered itself with this status.
    Edge(u16),
    /// The VM's (or peer edge's) answer with this status went to the client.
    Relayed(u16),
    /// A WebSocket tunnel opened (101) and runs as its own task.
    Tunnel,
    /// Nothing could be answered: the client went away, or the VM failed
    /// after its answer had begun.
    Cut,
}

impl Outcome {
    /// The status counted and logged (0: none was sent whole).
    pub fn status(self) -> u16 {
        match self {
            Outcome::Edge(s) | Outcome::Relayed(s) => s,
            Outcome::Tunnel => 101,
            Outcome::Pending | Outcome::Cut => 0,
        }
    }
}

/// A request id: `<instance>-<ms hex>-<seq hex>`, or the one a peer edge
/// sent. Inline (no allocation), at most [`RequestId::MAX`] bytes.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; RequestId::MAX],
    len: u8,
}

impl RequestId {
    pub const MAX: usize = 100;

    /// A new id (instance ids are at most 63 bytes: it always fits).
    pub fn new(instance: &str, now_ms: u64, seq: u64) -> RequestId {
        let mut id = RequestId {
            buf: [0; RequestId::MAX],
            len: 0,
        };
        // `{instance}-{now_ms:x}-{seq:x}` without core::fmt (per request).
        let mut w = Writer(&mut id);
        w.push(instance.as_bytes());
        w.push(b"-");
        let mut digits = [0; 16];
        w.push(edgeplane_core::bits::hex(now_ms, &mut digits));
        w.push(b"-");
        w.push(edgeplane_core::bits::hex(seq, &mut digits));
        id
    }

    /// A peer edge's id, when it is one this edge would send on.
    pub fn parse(v: &[u8]) -> Option<RequestId> {
        if v.is_empty() || v.len() > RequestId::MAX || !v.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut id = RequestId {
            buf: [0; RequestId::MAX],
            len: v.len() as u8,
        };
        id.buf[..v.len()].copy_from_slice(v);
        Some(id)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("-")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Appends to a [`RequestId`], cutting at [`RequestId::MAX`] bytes.
struct Writer<'a>(&'a mut RequestId);

impl Writer<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let at = self.0.len as usize;
        let n = bytes.len().min(RequestId::MAX - at);
        self.0.buf[at..at + n].copy_from_slice(&bytes[..n]);
        self.0.len += n as u8;
    }
}

/// Per-request state (see the module docs).
#[derive(Debug)]
pub struct RequestCtx {
    pub start: Instant,
    pub head: HeadFacts,
    /// None until routed (a request refused by its head alone never is).
    pub route: Option<Routed>,
    pub body: Body,
    pub tries: Tries,
    pub outcome: Outcome,
    /// Made when first needed (an answer or a request upstream).
    pub request_id: Option<RequestId>,
    /// In the access-log sample.
    pub sampled: bool,
    /// `x-edgeplane-route`, for a request carrying the admin token.
    pub debug_route: Option<String>,
}

impl RequestCtx {
    pub fn new(head: HeadFacts) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            head,
            route: None,
            body: Body::Unread,
            tries: Tries::default(),
            outcome: Outcome::Pending,
            request_id: None,
            sampled: false,
            debug_route: None,
        }
    }

    pub fn decision(&self) -> Option<&Decision> {
        self.route.as_ref().map(|r| &r.decision)
    }

    pub fn hops_in(&self) -> u8 {
        self.route.as_ref().map_or(0, |r| r.hops_in)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_inline_and_peer_ids_are_checked() {
        let id = RequestId::new("use1-edge-1", 0x18f0, 7);
        assert_eq!(id.as_str(), "use1-edge-1-18f0-7");
        let long = "e".repeat(63);
        let id = RequestId::new(&long, u64::MAX, u64::MAX);
        assert_eq!(id.as_str().len(), 63 + 2 + 32);
        assert_eq!(
            RequestId::parse(b"peer-1-2").map(|i| i.as_str().to_string()).as_deref(),
            Some("peer-1-2")
        );
        assert!(RequestId::parse(b"has space").is_none());
        assert!(RequestId::parse(&[b'x'; 101]).is_none());
        assert!(RequestId::parse(b"").is_none());
    }

    #[test]
    fn the_head_is_read_once_for_framing_and_host() {
        use pingora_http::RequestHeader;
        let mut h = RequestHeader::build("POST", b"/up", None).unwrap();
        h.insert_header("host", "App1.Repl.Co.:8080").unwrap();
        h.insert_header("content-length", "12").unwrap();
        h.insert_header("expect", "100-continue").unwrap();
        let f = HeadFacts::read(&h, false, false);
        assert_eq!(f.host(), Some("app1.repl.co"));
        assert_eq!(f.body, DeclaredBody::Length(12));
        assert!(f.expect_continue && !f.idempotent && !f.head_request);
        h.insert_header("transfer-encoding", "chunked").unwrap();
        assert_eq!(
            HeadFacts::read(&h, false, false).body,
            DeclaredBody::Chunked,
            "chunked wins"
        );
        let mut h2 = RequestHeader::build("POST", b"/up", None).unwrap();
        h2.set_version(http::Version::HTTP_2);
        assert_eq!(HeadFacts::read(&h2, true, false).body, DeclaredBody::Unframed);
        assert_eq!(HeadFacts::read(&h2, true, true).body, DeclaredBody::None);
    }
}
