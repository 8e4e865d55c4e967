//! `edgeplane-bench compare`: edgeplane side by side with the proxies its
//! users would otherwise pick, on the same machine, in the same run.
//!
//! Flow ([`run`]): install nginx/haproxy/caddy/wrk if absent → start the fast
//! backend ([`crate::backend`]) on the load core → write a synthetic world
//! (1M repls by default, every VM pointing at the backend) → start every
//! peer ([`peers`]) pinned to the proxy core → for each round, in an order
//! that rotates every round: a wrk saturation run, then an open-loop run at
//! one offered rate for all ([`crate::load::http`]), then WebSocket echo at
//! each (connections, size), then the TLS stages ([`tls`]: HTTP/2 and
//! HTTP/1.1 over TLS, handshakes full and resumed, wss echo) → an
//! idle-capacity run per peer, plain and wss → medians over rounds, ratios
//! to nginx, written by [`report`]. `--stages plain,tls` picks either half.
//!
//! Invariants: the proxy core runs only proxies (all but the one under load
//! are idle); the backend and every load generator share the other core;
//! "CPU-µs per request" is the proxy process tree's user+system time over
//! the run divided by what it served, read from `/proc` ([`crate::procstat`]).
//! Nothing here asserts timings: the smoke mode only proves the harness runs.

pub mod h2load;
pub mod peers;
pub mod report;
pub mod tls;
pub mod wrk;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::load::http::HttpLoadResult;
use crate::load::ws::WsEchoResult;
use crate::procstat::{self, ProcTree};
pub use peers::PeerKind;

/// Why a comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("missing tools (apt-get install failed): {0}")]
    Tools(String),
    #[error("could not start {0}")]
    Start(String),
    #[error("load run failed: {0}")]
    Load(String),
    #[error("bad output from a load generator: {0}")]
    Json(#[from] serde_json::Error),
}

/// What to compare and how long.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub peers: Vec<PeerKind>,
    /// The `edgeplane-before` peer's binary.
    pub before_bin: Option<PathBuf>,
    pub rounds: usize,
    pub connections: usize,
    pub http_seconds: u64,
    /// Offered rate of the open-loop run; default half the slowest proxy's
    /// saturation rate in the first round.
    pub rate: Option<f64>,
    pub ws_connections: Vec<usize>,
    pub ws_sizes: Vec<usize>,
    pub ws_seconds: u64,
    /// Run the plain-HTTP and ws:// stages.
    pub plain: bool,
    /// Run the TLS stages (h2, HTTP/1.1 over TLS, handshakes, wss).
    pub tls: bool,
    pub tls_ws_connections: Vec<usize>,
    pub tls_ws_sizes: Vec<usize>,
    /// Start of each generator run that is not in its latency figures (new
    /// connections and first requests take tens of ms; see README).
    pub warmup_ms: u64,
    /// Idle tunnels to hold per peer (capped by the open-files limit).
    pub idle_tunnels: usize,
    pub repls: usize,
    pub hosts: usize,
    pub proxy_core: String,
    pub load_core: String,
    /// Where results go; `None` prints only.
    pub out: Option<PathBuf>,
    /// The command line, recorded in the results.
    pub command: String,
}

impl CompareOptions {
    /// The full comparison of issue 5.
    pub fn full() -> CompareOptions {
        CompareOptions {
            peers: PeerKind::ALL.to_vec(),
            before_bin: None,
            rounds: 3,
            connections: 64,
            http_seconds: 10,
            rate: None,
            ws_connections: vec![1, 64, 512],
            ws_sizes: vec![64, 1024, 16384],
            ws_seconds: 5,
            plain: true,
            tls: true,
            tls_ws_connections: vec![64],
            tls_ws_sizes: vec![64, 16384],
            warmup_ms: 1000,
            idle_tunnels: 20_000,
            repls: 1_000_000,
            hosts: 4096,
            proxy_core: "0".into(),
            load_core: "1".into(),
            out: None,
            command: String::new(),
        }
    }

    /// Seconds, not minutes: proves the harness still works (the test suite
    /// runs this; nothing in it is a timing assertion).
    pub fn smoke() -> CompareOptions {
        CompareOptions {
            rounds: 1,
            http_seconds: 1,
            ws_connections: vec![8],
            ws_sizes: vec![64],
            ws_seconds: 1,
            tls_ws_connections: vec![8],
            tls_ws_sizes: vec![64],
            warmup_ms: 200,
            idle_tunnels: 200,
            repls: 10_000,
            hosts: 64,
            ..CompareOptions::full()
        }
    }
}

/// One peer's HTTP numbers in one round.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRun {
    pub peer: PeerKind,
    pub round: usize,
    pub saturation: wrk::WrkResult,
    pub saturation_cpu_us_per_req: Option<f64>,
    pub fixed: HttpLoadResult,
    pub fixed_cpu_us_per_req: Option<f64>,
    pub rss_bytes: Option<u64>,
}

/// One peer's WebSocket echo numbers in one round.
#[derive(Debug, Clone, Serialize)]
pub struct WsRun {
    pub peer: PeerKind,
    pub round: usize,
    /// Over TLS (`wss://`).
    pub tls: bool,
    pub echo: WsEchoResult,
    pub cpu_us_per_round_trip: Option<f64>,
}

/// One peer holding idle tunnels.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct IdleRun {
    pub peer: Option<PeerKind>,
    /// Over TLS (`wss://`).
    pub tls: bool,
    pub requested: usize,
    pub opened: usize,
    pub failed_open: usize,
    pub echoed: usize,
    pub failed_echo: usize,
    pub rss_per_tunnel_bytes: Option<f64>,
    pub kernel_per_tunnel_bytes: f64,
    pub fds_per_tunnel: Option<f64>,
}

/// Everything one comparison measured.
#[derive(Debug, Clone, Serialize)]
pub struct CompareResults {
    pub machine: String,
    pub command: String,
    pub offered_rps: f64,
    pub open_files_limit: u64,
    pub http: Vec<HttpRun>,
    pub ws: Vec<WsRun>,
    pub tls_http: Vec<tls::TlsHttpRun>,
    pub handshakes: Vec<tls::HandshakeRun>,
    pub idle: Vec<IdleRun>,
}

fn progress(msg: &str) {
    eprintln!("compare: {msg}");
}

/// Runs a load-generator subcommand pinned to `core`; parses its last line.
fn generator<T: serde::de::DeserializeOwned>(core: &str, args: &[String]) -> Result<T, CompareError> {
    let out = Command::new("taskset")
        .args(["-c", core])
        .arg(peers::bin_dir().join("edgeplane-bench"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(CompareError::Load(format!("edgeplane-bench {} failed", args.join(" "))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    Ok(serde_json::from_str(last)?)
}

fn cpu_per(before: Option<procstat::Sample>, tree: Option<ProcTree>, units: u64) -> Option<f64> {
    let (b, t) = (before?, tree?);
    let a = t.sample();
    (units > 0).then(|| (a.cpu.saturating_sub(b.cpu)).as_secs_f64() * 1e6 / units as f64)
}

/// Waits until something accepts TCP connections on `addr` (a TLS
/// listener may be bound after its process printed the address).
fn wait_listening(addr: SocketAddr) -> Result<(), CompareError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(CompareError::Start(format!("nothing listens on {addr}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until a request through `addr` for `host` answers 200.
fn wait_proxying(addr: SocketAddr, host: &str) -> Result<(), CompareError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(crate::http1::wait_ok(addr, host, "/", Duration::from_secs(180)))
        .map_err(|e| CompareError::Start(format!("{addr} never proxied {host}: {e}")))
}

/// The Host names the load cycles over: running repls homed in the edge's
/// region (`app<i>` with `i % 12 == 0` in the default world), spread over
/// the whole table so lookups miss the cache as real traffic would.
pub fn hosts(repls: usize, n: usize) -> Vec<String> {
    let candidates = repls.div_ceil(12);
    let step = (candidates / n.max(1)).max(1);
    (0..n.min(candidates))
        .map(|k| format!("app{}.repl.co", k * step * 12))
        .collect()
}

fn write_world(path: &Path, repls: usize, backend: SocketAddr) -> Result<(), CompareError> {
    let shape = crate::world::WorldShape {
        repls,
        ..Default::default()
    };
    let snap = crate::world::synthetic(shape, |_| backend.to_string());
    let f = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer(f, &snap)?;
    Ok(())
}

/// Holds `n` idle tunnels through `peer` (`wss://` when `tls` is given the
/// certificate to trust), measures it, checks every tunnel.
fn idle_run(
    o: &CompareOptions,
    peer: &peers::Peer,
    host: &str,
    n: usize,
    tls: Option<&peers::Certs>,
) -> Result<IdleRun, CompareError> {
    let addr = match tls {
        Some(_) => peer
            .tls_addr
            .ok_or_else(|| CompareError::Load(format!("{} has no TLS listener", peer.kind.as_str())))?,
        None => peer.addr,
    };
    let tree = peer.proc.as_ref().map(|p| p.tree());
    let before = tree.map(|t| t.sample());
    let k0 = procstat::tcp_socket_memory_bytes();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &o.load_core])
        .arg(peers::bin_dir().join("edgeplane-bench"))
        .args(["ws-idle", "--target", &addr.to_string(), "--host", host])
        .args(["--tunnels", &n.to_string()]);
    if let Some(c) = tls {
        cmd.arg("--tls-ca").arg(c.crt());
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line)?;
    let opened: IdleRun = serde_json::from_str(line.trim())?;
    // Let buffers settle before reading memory.
    std::thread::sleep(Duration::from_secs(2));
    let mid = tree.map(|t| t.sample());
    let k1 = procstat::tcp_socket_memory_bytes();
    writeln!(child.stdin.as_mut().unwrap(), "check")?;
    line.clear();
    out.read_line(&mut line)?;
    let checked: IdleRun = serde_json::from_str(line.trim())?;
    let _ = child.wait();
    let per = |x: f64| (opened.opened > 0).then(|| x / opened.opened as f64);
    Ok(IdleRun {
        peer: Some(peer.kind),
        tls: tls.is_some(),
        requested: n,
        opened: opened.opened,
        failed_open: opened.failed_open,
        echoed: checked.echoed,
        failed_echo: checked.failed_echo,
        rss_per_tunnel_bytes: before
            .zip(mid)
            .and_then(|(b, m)| per(m.rss_bytes as f64 - b.rss_bytes as f64)),
        kernel_per_tunnel_bytes: per(k1 as f64 - k0 as f64).unwrap_or(0.0),
        fds_per_tunnel: before.zip(mid).and_then(|(b, m)| per(m.fds as f64 - b.fds as f64)),
    })
}

/// Runs the whole comparison: start the backend and every peer, then per
/// round saturation, fixed-rate and WebSocket runs (peers in rotating
/// order), then idle tunnels once.
pub fn run(o: &CompareOptions) -> Result<CompareResults, CompareError> {
    let mut need = vec![("wrk", "wrk")];
    if o.tls {
        need.push(("h2load", "nghttp2-client"));
    }
    for (k, tool) in [
        (PeerKind::Nginx, "nginx"),
        (PeerKind::Haproxy, "haproxy"),
        (PeerKind::Caddy, "caddy"),
    ] {
        if o.peers.contains(&k) {
            need.push((tool, tool));
        }
    }
    peers::ensure_tools(&need)?;
    let work = tempfile::Builder::new().prefix("edgeplane-compare-").tempdir()?;
    let dir = work.path();
    progress(&format!("work directory {} (configs and logs)", dir.display()));

    let backend = peers::start_backend(&o.load_core, dir)?;
    let stage = Stage::write(o, dir, backend.addr)?;
    let env = peers::PeerEnv {
        dir,
        backend: backend.addr,
        core: &o.proxy_core,
        snapshot: &stage.snapshot,
        certs: &stage.certs,
        before_bin: o.before_bin.as_deref(),
    };
    let mut running = Vec::new();
    for &k in &o.peers {
        progress(&format!("starting {}", k.as_str()));
        let p = peers::start(k, &env)?;
        wait_proxying(p.addr, &stage.hosts[0])?;
        if let Some(a) = p.tls_addr {
            wait_listening(a)?;
        }
        running.push(p);
    }

    let fd_limit = procstat::open_files_limit();
    let mut res = CompareResults {
        machine: procstat::machine(),
        command: o.command.clone(),
        offered_rps: o.rate.unwrap_or(0.0),
        open_files_limit: fd_limit,
        http: Vec::new(),
        ws: Vec::new(),
        tls_http: Vec::new(),
        handshakes: Vec::new(),
        idle: Vec::new(),
    };
    for round in 0..o.rounds {
        let mut order: Vec<&peers::Peer> = running.iter().collect();
        let n = order.len().max(1);
        order.rotate_left(round % n);
        if o.plain {
            stage.plain_round(&order, round, &mut res)?;
        }
        if o.tls {
            for p in order.iter().filter(|p| p.tls_addr.is_some()) {
                stage.tls_round(p, round, &mut res)?;
            }
        }
    }
    // One process holds both ends of each tunnel it proxies.
    let per_process = (fd_limit.saturating_sub(256) / 2) as usize;
    let n = o.idle_tunnels.min(per_process);
    if n < o.idle_tunnels {
        progress(&format!(
            "idle tunnels capped at {n} (of {}): this machine allows {fd_limit} open files per process",
            o.idle_tunnels
        ));
    }
    for p in &running {
        if o.plain {
            progress(&format!("{}: holding {n} idle tunnels", p.kind.as_str()));
            res.idle.push(idle_run(o, p, &stage.hosts[0], n, None)?);
        }
        if o.tls && p.tls_addr.is_some() {
            progress(&format!("{}: holding {n} idle wss tunnels", p.kind.as_str()));
            res.idle.push(idle_run(o, p, &stage.hosts[0], n, Some(&stage.certs))?);
        }
    }
    drop(running);
    drop(backend);
    for k in [
        PeerKind::Edgeplane,
        PeerKind::EdgeplaneShipped,
        PeerKind::EdgeplaneBefore,
    ] {
        if let Ok(log) = std::fs::read_to_string(dir.join(k.as_str()).join("edge.log")) {
            let errors = log.lines().filter(|l| l.contains(" ERROR ")).count();
            progress(&format!(
                "{}: {errors} ERROR lines in its log ({} lines)",
                k.as_str(),
                log.lines().count()
            ));
        }
    }
    if let Some(out) = &o.out {
        report::write(out, &res)?;
    }
    Ok(res)
}

/// A saturation run's result, kept until the same peer's fixed-rate run.
struct Saturation {
    kind: PeerKind,
    wrk: wrk::WrkResult,
    cpu_us_per_req: Option<f64>,
    rss_bytes: Option<u64>,
}

/// The open-loop rate: half the slowest proxy's saturation rate, rounded
/// down to a thousand (the direct path does not count).
fn half_the_slowest(sat: &[Saturation]) -> f64 {
    let slowest = sat
        .iter()
        .filter(|s| s.kind != PeerKind::Direct)
        .map(|s| s.wrk.rps)
        .fold(f64::INFINITY, f64::min);
    let slowest = if slowest.is_finite() { slowest } else { sat[0].wrk.rps };
    (slowest * 0.5 / 1000.0).floor().max(1.0) * 1000.0
}

/// What every measured run reads: the options, the host list and the
/// files the load generators and peers are given.
struct Stage<'a> {
    o: &'a CompareOptions,
    hosts: Vec<String>,
    hosts_file: PathBuf,
    script: PathBuf,
    snapshot: PathBuf,
    certs: peers::Certs,
}

impl<'a> Stage<'a> {
    /// Writes the host list, the wrk script and the world snapshot.
    fn write(o: &'a CompareOptions, dir: &Path, backend: SocketAddr) -> Result<Stage<'a>, CompareError> {
        let hosts = hosts(o.repls, o.hosts);
        let hosts_file = dir.join("hosts.txt");
        std::fs::write(&hosts_file, hosts.join("\n") + "\n")?;
        let script = dir.join("hosts.lua");
        wrk::write_script(&script, &hosts_file)?;
        let snapshot = dir.join("world.json");
        progress(&format!("writing a {}-repl world", o.repls));
        write_world(&snapshot, o.repls, backend)?;
        Ok(Stage {
            o,
            hosts,
            hosts_file,
            script,
            snapshot,
            certs: peers::write_certs(dir)?,
        })
    }

    /// The plain stages of one round: saturation first for everyone (the
    /// first round's numbers set the offered rate of the open-loop runs),
    /// then fixed rate, then WebSocket echo.
    fn plain_round(&self, order: &[&peers::Peer], round: usize, res: &mut CompareResults) -> Result<(), CompareError> {
        let o = self.o;
        let sat = self.saturation(order, round)?;
        if res.offered_rps == 0.0 {
            res.offered_rps = half_the_slowest(&sat);
            progress(&format!("open-loop runs offer {} req/s", res.offered_rps));
        }
        for (p, sat) in order.iter().zip(sat) {
            res.http.push(self.fixed_rate(p, sat, round, res.offered_rps)?);
        }
        for &c in &o.ws_connections {
            for &size in &o.ws_sizes {
                for p in order {
                    res.ws.push(self.ws_echo(p, round, c, size, false)?);
                }
            }
        }
        Ok(())
    }

    fn saturation(&self, order: &[&peers::Peer], round: usize) -> Result<Vec<Saturation>, CompareError> {
        let o = self.o;
        let mut sat = Vec::new();
        for p in order {
            // Warm pools and caches; not measured.
            wrk::run(
                &o.load_core,
                p.addr,
                &self.script,
                o.connections,
                Duration::from_secs(1),
            )?;
            let m = self.measure(p, round, "saturation");
            let rss = m.tree;
            let w = wrk::run(
                &o.load_core,
                p.addr,
                &self.script,
                o.connections,
                Duration::from_secs(o.http_seconds),
            )?;
            sat.push(Saturation {
                kind: p.kind,
                cpu_us_per_req: m.per(w.requests),
                rss_bytes: rss.map(|t| t.sample().rss_bytes),
                wrk: w,
            });
        }
        Ok(sat)
    }

    fn fixed_rate(&self, p: &peers::Peer, sat: Saturation, round: usize, rate: f64) -> Result<HttpRun, CompareError> {
        let o = self.o;
        let m = self.measure(p, round, &format!("at {rate} req/s"));
        let args: Vec<String> = vec![
            "http-load".into(),
            "--target".into(),
            p.addr.to_string(),
            "--hosts-file".into(),
            self.hosts_file.display().to_string(),
            "--connections".into(),
            o.connections.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--seconds".into(),
            o.http_seconds.to_string(),
            "--warmup-ms".into(),
            o.warmup_ms.to_string(),
        ];
        let fixed: HttpLoadResult = generator(&o.load_core, &args)?;
        Ok(HttpRun {
            peer: p.kind,
            round,
            saturation: sat.wrk,
            saturation_cpu_us_per_req: sat.cpu_us_per_req,
            fixed_cpu_us_per_req: m.per(fixed.answered_total),
            fixed,
            rss_bytes: sat.rss_bytes,
        })
    }

    /// Announces one measured run of `p` and samples its CPU: the sample
    /// to hand [`Measure::per`] once the run is done.
    fn measure(&self, p: &peers::Peer, round: usize, what: &str) -> Measure {
        progress(&format!(
            "round {}/{}: {} {what}",
            round + 1,
            self.o.rounds,
            p.kind.as_str()
        ));
        let tree = p.proc.as_ref().map(|x| x.tree());
        Measure {
            before: tree.map(|t| t.sample()),
            tree,
        }
    }

    /// `p`'s TLS listener.
    fn tls_addr(p: &peers::Peer) -> Result<SocketAddr, CompareError> {
        p.tls_addr
            .ok_or_else(|| CompareError::Load(format!("{} has no TLS listener", p.kind.as_str())))
    }

    /// WebSocket echo through `p`, plain or over TLS (`wss`).
    fn ws_echo(
        &self,
        p: &peers::Peer,
        round: usize,
        connections: usize,
        size: usize,
        tls: bool,
    ) -> Result<WsRun, CompareError> {
        let o = self.o;
        let scheme = if tls { "wss" } else { "websocket" };
        let addr = if tls { Self::tls_addr(p)? } else { p.addr };
        let m = self.measure(p, round, &format!("{scheme} {connections} x {size} B"));
        let mut args: Vec<String> = vec![
            "ws-load".into(),
            "--target".into(),
            addr.to_string(),
            "--host".into(),
            self.hosts[0].clone(),
            "--connections".into(),
            connections.to_string(),
            "--size".into(),
            size.to_string(),
            "--seconds".into(),
            o.ws_seconds.to_string(),
            "--warmup-ms".into(),
            o.warmup_ms.to_string(),
        ];
        if tls {
            args.extend(["--tls-ca".into(), self.certs.crt().display().to_string()]);
        }
        let echo: WsEchoResult = generator(&o.load_core, &args)?;
        Ok(WsRun {
            peer: p.kind,
            round,
            tls,
            cpu_us_per_round_trip: m.per(echo.round_trips_total),
            echo,
        })
    }
}

/// A proxy's CPU sampled at the start of a run ([`Stage::measure`]).
struct Measure {
    before: Option<procstat::Sample>,
    tree: Option<ProcTree>,
}

impl Measure {
    /// CPU-µs per unit of work since the start.
    fn per(self, units: u64) -> Option<f64> {
        cpu_per(self.before, self.tree, units)
    }
}
