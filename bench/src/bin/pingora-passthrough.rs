//! The framework floor: the smallest Pingora 0.9 HTTP proxy, forwarding
//! every request (and WebSocket upgrade) to one upstream, with the same
//! process settings as `edgeplane serve` (mimalloc, one worker thread,
//! `work_stealing: false`, the workspace's release profile). Whatever
//! edgeplane costs above this is routing, headers and metrics; whatever
//! this costs above nginx is Pingora.
//!
//! `pingora-passthrough --listen 127.0.0.1:0 --upstream 127.0.0.1:7001`
//! prints `pingora-passthrough listening on <addr>`. Experiment switches:
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
    let listen = if listen.port() == 0 {
        TcpListener::bind(listen)
            .and_then(|l| l.local_addr())
            .expect("free port")
    } else {
        listen
    };
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
    server.add_service(proxy);
    println!("pingora-passthrough listening on {listen}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run_forever()
}
