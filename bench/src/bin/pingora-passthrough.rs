//! The framework floor: the smallest Pingora 0.9 HTTP proxy, forwarding
//! every request (and WebSocket upgrade) to one upstream, with the same
//! process settings as `edgeplane serve` (mimalloc, one worker thread,
//! `work_stealing: false`, the workspace's release profile). Whatever
//! edgeplane costs above this is routing, headers and metrics; whatever
//! this costs above nginx is Pingora.
//!
//! `pingora-passthrough --listen 127.0.0.1:0 --upstream 127.0.0.1:7001`
//! prints `pingora-passthrough listening on <addr>`; with `--tls-listen
//! ADDR --cert CRT --key KEY` it also serves TLS (Pingora's rustls
//! acceptor, ALPN h2 then http/1.1) and prints `pingora-passthrough tls
//! listening on <addr>`. Experiment switches:
//! `PT_KEEPALIVE=1` sets a 60 s keep-alive like edgeplane, `PT_TIMEOUTS=1`
//! sets edgeplane's upstream timeouts (how the fast-timer stalls of
//! bench/results/README.md were isolated).

use std::net::{SocketAddr, TcpListener};

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if std::env::var_os("PT_KEEPALIVE").is_some() {
            s.set_keepalive(Some(60));
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if std::env::var_os("PT_TIMEOUTS").is_some() {
            let d = std::time::Duration::from_secs(60);
            peer.options.connection_timeout = Some(std::time::Duration::from_secs(3));
            peer.options.total_connection_timeout = Some(std::time::Duration::from_secs(3));
            peer.options.read_timeout = Some(d);
            peer.options.write_timeout = Some(d);
            peer.options.idle_timeout = Some(d);
        }
        Ok(Box::new(peer))
    }
}

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn main() {
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .expect("--listen: an address");
    let upstream: SocketAddr = arg("--upstream")
        .expect("--upstream ADDR is required")
        .parse()
        .expect("--upstream: an address");
    let threads = arg("--threads").and_then(|t| t.parse().ok()).unwrap_or(1);
    // Probe sockets held until both ports are chosen (two port-0 listeners
    // must not be handed the same port).
    let mut probes = Vec::new();
    let mut pick = |a: SocketAddr| {
        if a.port() != 0 {
            return a;
        }
        let l = TcpListener::bind(a).expect("free port");
        let a = l.local_addr().expect("free port");
        probes.push(l);
        a
    };
    let listen = pick(listen);
    let tls_listen: Option<SocketAddr> =
        arg("--tls-listen").map(|a| pick(a.parse().expect("--tls-listen: an address")));
    drop(probes);
    let dir = std::env::temp_dir();
    let conf = ServerConf {
        threads,
        work_stealing: false,
        pid_file: dir
            .join(format!("pingora-passthrough-{}.pid", std::process::id()))
            .display()
            .to_string(),
        upgrade_sock: dir
            .join(format!("pingora-passthrough-{}.sock", std::process::id()))
            .display()
            .to_string(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Passthrough { upstream });
    proxy.add_tcp(&listen.to_string());
    if let Some(tls) = tls_listen {
        let cert = arg("--cert").expect("--cert CRT is required with --tls-listen");
        let key = arg("--key").expect("--key KEY is required with --tls-listen");
        let mut settings = pingora_core::listeners::tls::TlsSettings::intermediate(&cert, &key).expect("certificate");
        settings.enable_h2();
        proxy.add_tls_with_settings(&tls.to_string(), None, settings);
    }
    server.add_service(proxy);
    println!("pingora-passthrough listening on {listen}");
    if let Some(tls) = tls_listen {
        println!("pingora-passthrough tls listening on {tls}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run_forever()
}
