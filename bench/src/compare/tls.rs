//! The comparison's TLS stages: what production traffic costs each peer.
//! Every peer but `direct` listens for TLS with the run's one certificate
//! ([`super::peers::write_certs`]); per round, in the round's peer order:
//!
//! - HTTP/2 and HTTP/1.1 over TLS, keep-alive, saturating ([`super::h2load`]);
//! - new connections back to back, each a handshake and one request, full
//!   handshakes then resumed sessions ([`crate::load::tls::handshakes`]);
//! - WebSocket over TLS echo at each (connections, size) of
//!   [`super::CompareOptions::tls_ws_sizes`];
//!
//! and once, after the rounds, idle wss tunnels per peer (memory and
//! descriptors per tunnel, every one echoing after the idle period).
//! CPU is the proxy tree's user+system time over the run, per request,
//! connection or round trip, as in the plain stages.

use std::time::Duration;

use serde::Serialize;

use super::h2load::{self, H2loadResult, TlsHttp};
use super::{generator, peers, CompareError, Stage};
use crate::load::tls::HandshakeResult;

/// One peer's keep-alive request load over TLS in one round.
#[derive(Debug, Clone, Serialize)]
pub struct TlsHttpRun {
    pub peer: peers::PeerKind,
    pub round: usize,
    pub proto: TlsHttp,
    pub load: H2loadResult,
    pub cpu_us_per_req: Option<f64>,
}

/// One peer's new-connection run in one round.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeRun {
    pub peer: peers::PeerKind,
    pub round: usize,
    pub result: HandshakeResult,
    /// Proxy CPU per completed connection (handshake + one request).
    pub cpu_us_per_conn: Option<f64>,
}

/// Concurrent clients of a handshake run: enough to keep one proxy core
/// busy without measuring queueing.
const HANDSHAKE_CONCURRENCY: usize = 4;

impl Stage<'_> {
    /// h2load through `p`'s TLS listener: a 1 s warm-up, then the run.
    pub(super) fn tls_http(&self, p: &peers::Peer, round: usize, proto: TlsHttp) -> Result<TlsHttpRun, CompareError> {
        let o = self.o;
        let addr = Self::tls_addr(p)?;
        let host = &self.hosts[0];
        // A warm-up run first, then the measured one.
        h2load::run(&o.load_core, addr, host, proto, o.connections, Duration::from_secs(1))?;
        let m = self.measure(p, round, proto.label());
        let load = h2load::run(
            &o.load_core,
            addr,
            host,
            proto,
            o.connections,
            Duration::from_secs(o.http_seconds),
        )?;
        Ok(TlsHttpRun {
            peer: p.kind,
            round,
            proto,
            cpu_us_per_req: m.per(load.done),
            load,
        })
    }

    /// New TLS connections through `p`, full or resumed.
    pub(super) fn handshakes(&self, p: &peers::Peer, round: usize, resume: bool) -> Result<HandshakeRun, CompareError> {
        let o = self.o;
        let addr = Self::tls_addr(p)?;
        let what = if resume {
            "TLS connections (resumed)"
        } else {
            "TLS connections (full handshakes)"
        };
        let m = self.measure(p, round, what);
        let mut args: Vec<String> = vec![
            "tls-handshakes".into(),
            "--target".into(),
            addr.to_string(),
            "--host".into(),
            self.hosts[0].clone(),
            "--tls-ca".into(),
            self.certs.crt().display().to_string(),
            "--concurrency".into(),
            HANDSHAKE_CONCURRENCY.to_string(),
            "--seconds".into(),
            o.ws_seconds.to_string(),
            "--warmup-ms".into(),
            o.warmup_ms.to_string(),
        ];
        if resume {
            args.push("--resume".into());
        }
        let result: HandshakeResult = generator(&o.load_core, &args)?;
        Ok(HandshakeRun {
            peer: p.kind,
            round,
            cpu_us_per_conn: m.per(result.connections_total),
            result,
        })
    }

    /// Every TLS stage of one round for `p`.
    pub(super) fn tls_round(
        &self,
        p: &peers::Peer,
        round: usize,
        res: &mut super::CompareResults,
    ) -> Result<(), CompareError> {
        for proto in [TlsHttp::H2, TlsHttp::H1] {
            res.tls_http.push(self.tls_http(p, round, proto)?);
        }
        for resume in [false, true] {
            res.handshakes.push(self.handshakes(p, round, resume)?);
        }
        for &c in &self.o.tls_ws_connections {
            for &size in &self.o.tls_ws_sizes {
                res.ws.push(self.ws_echo(p, round, c, size, true)?);
            }
        }
        Ok(())
    }
}
