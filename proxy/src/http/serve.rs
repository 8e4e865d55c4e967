//! [`EdgeHttp`]: the request path's entry. [`EdgeHttp::handle`] runs one
//! request whose head was read — the request path ([`super::filter`], then
//! [`super::forward`]) and its last step ([`super::access_log`]) — on
//! either codec: the edge's own HTTP/1.1 loop ([`super::h1`], which calls
//! it per request) or Pingora's HTTP/2 session, for which `EdgeHttp` is a
//! Pingora `HttpServerApp` ([`EdgeHttp::process_new_http`], one call per
//! stream).
//!
//! Why not `pingora-proxy`'s `ProxyHttp`: its generic state machine (cache,
//! modules, subrequests, a shared upstream pool with a lock, a `Notify` and
//! a spawned idle watcher per release) cost more than the edge's whole own
//! work, and its pool woke the other serving thread on every request
//! (docs/architecture.md, "Choices that shape the code", has the
//! measurements). What the edge takes from Pingora: listeners, TLS, the
//! HTTP/2 server codec, the server, upgrade and shutdown machinery.
//!
//! Invariants:
//! - A connection is reused only after a complete answer (the codec's own
//!   keep-alive rules, `limits.max_requests_per_connection`); every failure
//!   closes it.
//! - Once a stop began (a graceful stop or upgrade) a request is answered
//!   with `connection: close`; connections waiting for a request are
//!   dropped when the listeners stop ([`EdgeHttp::http_cleanup`], the
//!   shared [`Stop`]).
//! - A malformed head gets 400 and a `CONNECT` 405; both are the client's
//!   fault: counted, logged at debug.
//!
//! Start at [`EdgeHttp::handle`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::ErrorType;
use tokio::sync::Notify;

use edgeplane_config::LimitsConfig;

use super::ctx::{HeadFacts, RequestCtx};
use super::downstream::Downstream;
use super::filter::Filtered;
use super::tunnel::Tunnel;
use super::Proxy;

/// How the client connection goes on after a request.
pub enum Next {
    /// Ready for the next request (as far as the edge is concerned; the
    /// codec's keep-alive rules still apply).
    Reuse,
    Close,
    /// A WebSocket tunnel on a TLS connection: the stream leaves the HTTP
    /// machinery for the tunnel's task once the session lets go of it.
    HandOver(Box<Tunnel>),
}

/// The request path on Pingora's HTTP server (see the module docs).
pub struct EdgeHttp {
    pub proxy: Proxy,
    options: HttpServerOptions,
    pub(super) stop: Stop,
}

impl EdgeHttp {
    /// `max_requests_per_connection` caps keep-alive reuse per client
    /// connection (Pingora counts reuses after the first request).
    pub fn new(proxy: Proxy, limits: &LimitsConfig, threads: usize) -> EdgeHttp {
        let mut options = HttpServerOptions::default();
        options.keepalive_request_limit = Some(limits.max_requests_per_connection.saturating_sub(1));
        // An HTTP/2 connection with no stream open closes like an idle
        // HTTP/1.1 keep-alive connection.
        options.h2_idle_timeout = Some(limits.keepalive_idle);
        EdgeHttp {
            proxy,
            options,
            stop: Stop::new(threads),
        }
    }
}

/// The HTTP/2 limits of `[limits]` (read for every new connection, so a
/// reload applies to the next one).
pub fn h2_options(limits: &LimitsConfig) -> H2Options {
    let mut h2 = H2Options::new();
    h2.max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.h2_max_header_list_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(Some(limits.h2_max_local_error_resets));
    h2
}

#[async_trait]
impl HttpServerApp for EdgeHttp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // Only HTTP/2 streams come here (HTTP/1.1 connections run the
        // edge's own loop, `super::h1`, with its fresh-connection grace);
        // a stream waiting for its head is dropped when the listeners stop.
        let read = tokio::select! {
            // Biased: a head already on its way is read before a stop is seen.
            biased;
            r = session.read_request() => r,
            _ = self.stop.wait() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                refuse_head(session, e.etype()).await;
                return None;
            }
        }
        if session.req_header().method == http::Method::CONNECT {
            refuse_head(session, &ErrorType::HTTPStatus(405)).await;
            return None;
        }
        // An HTTP/2 stream: its connection came through TLS (ALPN).
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let body_done = session.is_body_done();
        let next = self.handle(&mut session, tls, body_done, shutdown).await;
        let settings = match next {
            Next::Close => return None,
            Next::HandOver(tunnel) => {
                match session.finish().await {
                    Ok(Some(stream)) => {
                        let (stream, prefix) = stream.into_parts();
                        super::tunnel::spawn(stream, *tunnel, prefix.as_deref().unwrap_or_default());
                    }
                    Ok(None) | Err(_) => log::debug!("a TLS upgrade's stream could not be taken over"),
                }
                return None;
            }
            // Keep-alive time and the requests left carry over to the next one.
            Next::Reuse => HttpPersistentSettings::for_session(&session),
        };
        match session.finish().await {
            Ok(reused) => reused.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                crate::logging::LOG_EVENTS.with_label_values(&["client_error"]).inc();
                log::debug!("finishing a response: {e}");
                None
            }
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    fn h2_options(&self) -> Option<H2Options> {
        Some(h2_options(&self.proxy.limits()))
    }

    /// The listeners stopped: connections waiting for their next request
    /// are dropped; one mid-request finishes it and closes.
    async fn http_cleanup(&self) {
        self.stop.stop();
    }
}

impl EdgeHttp {
    /// One request whose head was read, on either codec: the request path
    /// and its last step. `body_done`: the request has no body left to read.
    pub(super) async fn handle<D: Downstream>(
        &self,
        session: &mut D,
        tls: bool,
        body_done: bool,
        shutdown: &ShutdownWatch,
    ) -> Next {
        if *shutdown.borrow() || self.stop.stopped() {
            session.set_keepalive(None);
        }
        let mut ctx = RequestCtx::new(HeadFacts::read(session.head(), tls, body_done));
        let next = self.proxy.serve(session, &mut ctx).await;
        self.proxy.finish(session, &mut ctx);
        next
    }
}

/// Answers a head the edge will not serve (400 for a malformed one, or the
/// status in `etype`) and closes. The client's fault: counted, at debug.
async fn refuse_head(mut session: ServerSession, etype: &ErrorType) {
    crate::logging::LOG_EVENTS.with_label_values(&["client_error"]).inc();
    let status = match etype {
        ErrorType::InvalidHTTPHeader => 400,
        ErrorType::HTTPStatus(s) => *s,
        // A reset, a timeout (the 408 is already written), a client that
        // went away: nothing to answer.
        _ => {
            log::debug!("reading a request head: {etype:?}");
            return;
        }
    };
    log::debug!("refusing a request head: {status}");
    session.set_keepalive(None);
    if let Err(e) = session.respond_error(status).await {
        log::debug!("answering {status}: {e}");
    }
    session.shutdown().await;
}

/// The listeners' stop, as waiting sessions see it: a flag, and one
/// `Notify` per serving thread so that waiting never shares a lock across
/// threads.
pub(super) struct Stop {
    stopped: AtomicBool,
    shards: Box<[Notify]>,
}

thread_local! {
    static SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

impl Stop {
    fn new(threads: usize) -> Stop {
        Stop {
            stopped: AtomicBool::new(false),
            shards: (0..threads.max(1)).map(|_| Notify::new()).collect(),
        }
    }

    pub(super) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for n in self.shards.iter() {
            n.notify_waiters();
        }
    }

    /// Resolves once [`Stop::stop`] was called.
    pub(super) async fn wait(&self) {
        let shard = &self.shards[SHARD.with(|s| *s) % self.shards.len()];
        let notified = shard.notified();
        if self.stopped() {
            return;
        }
        notified.await
    }
}

impl Proxy {
    /// One request, after its head was read: the filter answers it or the
    /// request is proxied. A failure to write the edge's own answer means
    /// the client went away (counted, the connection closes).
    pub(super) async fn serve<D: Downstream>(&self, session: &mut D, ctx: &mut RequestCtx) -> Next {
        match self.filter_request(session, ctx).await {
            Ok(Filtered::Answered) => Next::Reuse,
            Ok(Filtered::Proxy { websocket }) => self.proxy_request(session, ctx, websocket).await,
            Err(e) => {
                crate::logging::LOG_EVENTS.with_label_values(&["client_error"]).inc();
                log::debug!("answering a request: {e}");
                ctx.outcome = super::ctx::Outcome::Cut;
                Next::Close
            }
        }
    }
}
