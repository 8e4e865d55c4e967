//! The processes a comparison starts: the fast backend, and each proxy under
//! test (edgeplane with a realistic table, the bare Pingora pass-through,
//! nginx, HAProxy, Caddy), all pinned with `taskset` and all pointed at the same
//! backend. "direct" is no proxy at all (the load goes to the backend).
//!
//! Every peer but `direct` also listens for TLS (HTTP/2 and HTTP/1.1 by
//! ALPN, wss) with the run's one self-signed `*.repl.co` certificate
//! ([`write_certs`]): edgeplane's `[tls]` listener, nginx's `listen ... ssl
//! http2`, HAProxy's `bind ... ssl alpn h2,http/1.1`, Caddy's second
//! server with the certificate loaded from files (h1 and h2, no HTTP/3,
//! no automatic HTTPS), the pass-through's Pingora TLS listener with h2
//! enabled. Caddy runs with `GOMAXPROCS=1`: one scheduler thread, as
//! nginx and HAProxy run one worker.
//!
//! Configs are written into the run's work directory and kept there (the
//! harness prints where) so a surprising number can be re-run by hand.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::CompareError;
use crate::procstat::ProcTree;

/// A proxy (or none) the load runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    Direct,
    Edgeplane,
    /// edgeplane as shipped: the default `threads` (2), pinned to the same
    /// one core as every other peer.
    #[serde(rename = "edgeplane-shipped")]
    EdgeplaneShipped,
    /// An earlier build of the edge (`--before <binary>`), configured as
    /// `edgeplane` is: a change's before and after in one run, on the same
    /// machine state. Not among the default peers.
    #[serde(rename = "edgeplane-before")]
    EdgeplaneBefore,
    Pingora,
    Nginx,
    Haproxy,
    Caddy,
}

impl PeerKind {
    pub const ALL: [PeerKind; 7] = [
        PeerKind::Direct,
        PeerKind::Edgeplane,
        PeerKind::EdgeplaneShipped,
        PeerKind::Pingora,
        PeerKind::Nginx,
        PeerKind::Haproxy,
        PeerKind::Caddy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Direct => "direct",
            PeerKind::Edgeplane => "edgeplane",
            PeerKind::EdgeplaneShipped => "edgeplane-shipped",
            PeerKind::EdgeplaneBefore => "edgeplane-before",
            PeerKind::Pingora => "pingora",
            PeerKind::Nginx => "nginx",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Caddy => "caddy",
        }
    }

    pub fn parse(s: &str) -> Option<PeerKind> {
        PeerKind::ALL
            .into_iter()
            .chain([PeerKind::EdgeplaneBefore])
            .find(|k| k.as_str() == s)
    }
}

/// A started process; killed (with its children) on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    pub fn tree(&self) -> ProcTree {
        ProcTree::new(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // nginx's master takes its worker down on SIGTERM; the others are
        // single processes.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(50));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy under test: its process (none for `direct`) and where to send load.
pub struct Peer {
    pub kind: PeerKind,
    pub addr: SocketAddr,
    /// Its TLS listener (none for `direct`).
    pub tls_addr: Option<SocketAddr>,
    pub proc: Option<Proc>,
}

/// The run's certificate: `repl.co.crt` + `repl.co.key` (edgeplane's
/// `certs_dir` layout, nginx, the pass-through) and `repl.co.pem` (both,
/// for HAProxy), self-signed for `*.repl.co`, ECDSA P-256.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn crt(&self) -> PathBuf {
        self.dir.join("repl.co.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("repl.co.key")
    }
    pub fn pem(&self) -> PathBuf {
        self.dir.join("repl.co.pem")
    }
}

/// Writes [`Certs`] into `dir/certs`.
pub fn write_certs(dir: &Path) -> Result<Certs, CompareError> {
    let c = rcgen::generate_simple_self_signed(vec!["*.repl.co".to_string()])
        .map_err(|e| CompareError::Start(format!("certificate: {e}")))?;
    let certs = Certs { dir: dir.join("certs") };
    std::fs::create_dir_all(&certs.dir)?;
    let (crt, key) = (c.cert.pem(), c.key_pair.serialize_pem());
    std::fs::write(certs.crt(), &crt)?;
    std::fs::write(certs.key(), &key)?;
    std::fs::write(certs.pem(), format!("{crt}{key}"))?;
    Ok(certs)
}

/// What every peer needs to start.
pub struct PeerEnv<'a> {
    pub dir: &'a Path,
    pub backend: SocketAddr,
    /// CPU list for `taskset -c` (the proxy core).
    pub core: &'a str,
    /// edgeplane's snapshot file (the synthetic world).
    pub snapshot: &'a Path,
    pub certs: &'a Certs,
    /// The `edgeplane-before` binary, if that peer runs.
    pub before_bin: Option<&'a Path>,
}

/// Directory of this executable: the workspace's other binaries are there.
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// Finds a program on PATH or in the sbin directories Debian uses.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Installs the tools a run needs (program, Debian package) when absent.
pub fn ensure_tools(need: &[(&str, &str)]) -> Result<(), CompareError> {
    let missing: Vec<&str> = need
        .iter()
        .filter(|(prog, _)| find_program(prog).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("compare: installing {} from Debian's packages", missing.join(" "));
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let still: Vec<&str> = need
        .iter()
        .filter(|(prog, _)| find_program(prog).is_none())
        .map(|(prog, _)| *prog)
        .collect();
    if !ok || !still.is_empty() {
        return Err(CompareError::Tools(still.join(" ")));
    }
    Ok(())
}

/// Two ports the OS says are free now (for peers whose config needs
/// numbers): both probe sockets are held until both are chosen, so the two
/// cannot be the same port.
pub fn free_ports() -> Result<[SocketAddr; 2], CompareError> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok([a.local_addr()?, b.local_addr()?])
}

/// Starts `cmd` pinned to `core`, with stdout piped and stderr to `log`.
pub fn spawn_pinned(core: &str, program: &Path, args: &[String], log: &Path) -> Result<Child, CompareError> {
    spawn_pinned_env(core, program, args, &[], log)
}

/// [`spawn_pinned`] with extra environment variables.
pub fn spawn_pinned_env(
    core: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> Result<Child, CompareError> {
    let err = std::fs::File::create(log)?;
    Command::new("taskset")
        .arg("-c")
        .arg(core)
        .arg(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|e| CompareError::Start(format!("{}: {e}", program.display())))
}

/// Reads stdout lines until one has started with each of `prefixes`;
/// returns the rest of each as an address, in `prefixes` order. The
/// remaining output is drained in the background.
pub fn await_listen_lines(child: &mut Child, prefixes: &[&str], what: &str) -> Result<Vec<SocketAddr>, CompareError> {
    let out = child.stdout.take().ok_or_else(|| CompareError::Start(what.into()))?;
    let mut reader = BufReader::new(out);
    let mut found: Vec<Option<SocketAddr>> = vec![None; prefixes.len()];
    let mut line = String::new();
    while found.iter().any(Option::is_none) {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(CompareError::Start(format!("{what} exited before listening")));
        }
        for (slot, prefix) in found.iter_mut().zip(prefixes) {
            if let Some(a) = line.trim().strip_prefix(prefix) {
                let addr = a
                    .parse()
                    .map_err(|_| CompareError::Start(format!("{what}: bad address {a:?}")))?;
                *slot = Some(addr);
            }
        }
    }
    std::thread::spawn(move || {
        let mut s = String::new();
        while reader.read_line(&mut s).unwrap_or(0) > 0 {
            s.clear();
        }
    });
    Ok(found.into_iter().flatten().collect())
}

/// Starts the fast backend pinned to `core`.
pub fn start_backend(core: &str, dir: &Path) -> Result<Proc, CompareError> {
    let exe = bin_dir().join("edgeplane-bench");
    let mut child = spawn_pinned(
        core,
        &exe,
        &["backend".into(), "--listen".into(), "127.0.0.1:0".into()],
        &dir.join("backend.log"),
    )?;
    let addr = await_listen_lines(&mut child, &["backend listening on "], "backend")?[0];
    Ok(Proc { child, addr })
}

fn nginx_conf(dir: &Path, listen: [SocketAddr; 2], backend: SocketAddr, max_fds: u64, certs: &Certs) -> String {
    let d = dir.display();
    let [listen, tls] = listen;
    let (crt, key) = (certs.crt().display().to_string(), certs.key().display().to_string());
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
events {{ worker_connections {max_fds}; }}\n\
http {{\n  access_log off;\n  keepalive_requests {KEEPALIVE_REQUESTS};\n  client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
  fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n\
  upstream backend {{ server {backend}; keepalive 128; }}\n\
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
  server {{\n    listen {listen};\n    listen {tls} ssl http2;\n    ssl_certificate {crt};\n\
    ssl_certificate_key {key};\n    ssl_session_cache shared:SSL:10m;\n    location / {{\n      proxy_pass http://backend;\n\
      proxy_http_version 1.1;\n      proxy_set_header Host $host;\n      proxy_set_header Upgrade $http_upgrade;\n\
      proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n"
    )
}

fn haproxy_conf(listen: [SocketAddr; 2], backend: SocketAddr, certs: &Certs) -> String {
    let [listen, tls] = listen;
    let pem = certs.pem().display().to_string();
    format!(
        "global\n  nbthread 1\n\ndefaults\n  mode http\n  timeout connect 3s\n  timeout client 60s\n  timeout server 60s\n\
  timeout tunnel 1h\n  timeout http-keep-alive 60s\n\nfrontend fe\n  bind {listen}\n  bind {tls} ssl crt {pem} alpn h2,http/1.1\n  default_backend be\n\n\
backend be\n  http-reuse always\n  server s1 {backend}\n"
    )
}

/// Caddy's JSON config: a plain server and a TLS server (h1 and h2 by
/// ALPN, the run's certificate for every name), both a `reverse_proxy` to
/// the backend with 128 idle connections kept; no admin endpoint, no
/// automatic HTTPS, no access log.
fn caddy_conf(listen: [SocketAddr; 2], backend: SocketAddr, certs: &Certs) -> String {
    let [listen, tls] = listen;
    let proxy = serde_json::json!([{ "handle": [{
        "handler": "reverse_proxy",
        "upstreams": [{ "dial": backend.to_string() }],
        "transport": { "protocol": "http", "keep_alive": { "max_idle_conns_per_host": 128 } },
    }]}]);
    serde_json::json!({
        "admin": { "disabled": true },
        "logging": { "logs": { "default": { "level": "ERROR" } } },
        "apps": {
            "http": { "servers": {
                "plain": {
                    "listen": [listen.to_string()],
                    "automatic_https": { "disable": true },
                    "protocols": ["h1"],
                    "routes": proxy,
                },
                "tls": {
                    "listen": [tls.to_string()],
                    "automatic_https": { "disable": true },
                    "protocols": ["h1", "h2"],
                    "tls_connection_policies": [{
                        "certificate_selection": { "any_tag": ["bench"] },
                        "alpn": ["h2", "http/1.1"],
                    }],
                    "routes": proxy,
                },
            }},
            "tls": { "certificates": { "load_files": [{
                "certificate": certs.crt().display().to_string(),
                "key": certs.key().display().to_string(),
                "tags": ["bench"],
            }]}},
        },
    })
    .to_string()
}

/// Requests a keep-alive connection may carry before the proxy closes it,
/// for nginx and edgeplane (HAProxy and the pass-through have no such
/// limit): high enough that no peer closes a connection by count during a
/// run. h2load's timed mode (`-D`) never ends a client that had to
/// reconnect after a server's close, and a count-limited peer also pays
/// handshakes the others do not.
pub const KEEPALIVE_REQUESTS: u32 = 1_000_000;

/// `threads`: Some(n) sets it, None leaves the shipped default.
fn edgeplane_conf(snapshot: &Path, threads: Option<usize>, certs: &Certs) -> String {
    let threads = threads.map(|n| format!("threads = {n}\n")).unwrap_or_default();
    format!(
        "[edge]\nregion = \"{}\"\ninstance_id = \"bench-edge\"\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
{threads}pid_file = \"edge.pid\"\nupgrade_sock = \"edge.sock\"\n\n[hosting]\nsuffixes = [\"repl.co\"]\n\n\
[placement]\nsource = \"file\"\nfile = \"{}\"\n\n[security]\nhop_secret_file = \"hop.secret\"\n\n\
[limits]\nmax_requests_per_connection = {KEEPALIVE_REQUESTS}\n\n\
[tls]\nlisten = [\"127.0.0.1:0\"]\ncerts_dir = \"{}\"\n",
        crate::world::region_name(0),
        snapshot.display(),
        certs.dir.display()
    )
}

/// Starts one peer and returns once it listens (not yet once it proxies:
/// see [`super::wait_proxying`]).
pub fn start(kind: PeerKind, env: &PeerEnv) -> Result<Peer, CompareError> {
    let dir = env.dir;
    let max_fds = crate::procstat::open_files_limit().saturating_sub(64).max(1024);
    let (proc_, addr, tls_addr) = match kind {
        PeerKind::Direct => (None, env.backend, None),
        PeerKind::Edgeplane | PeerKind::EdgeplaneShipped | PeerKind::EdgeplaneBefore => {
            let shipped = kind == PeerKind::EdgeplaneShipped;
            let program = match kind {
                PeerKind::EdgeplaneBefore => env
                    .before_bin
                    .map(Path::to_path_buf)
                    .ok_or_else(|| CompareError::Start("edgeplane-before: no --before binary".into()))?,
                _ => bin_dir().join("edgeplane"),
            };
            let d = dir.join(kind.as_str());
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("hop.secret"), "bench-hop-secret-0123456789abcdef")?;
            std::fs::write(
                d.join("edge.toml"),
                edgeplane_conf(env.snapshot, if shipped { None } else { Some(1) }, env.certs),
            )?;
            let mut child = spawn_pinned(
                env.core,
                &program,
                &["serve".into(), "-c".into(), d.join("edge.toml").display().to_string()],
                &d.join("edge.log"),
            )?;
            let a = await_listen_lines(
                &mut child,
                &["edgeplane: proxy listening on ", "edgeplane: https listening on "],
                "edgeplane",
            )?;
            (Some(Proc { child, addr: a[0] }), a[0], Some(a[1]))
        }
        PeerKind::Pingora => {
            let mut child = spawn_pinned(
                env.core,
                &bin_dir().join("pingora-passthrough"),
                &[
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                    "--upstream".into(),
                    env.backend.to_string(),
                    "--tls-listen".into(),
                    "127.0.0.1:0".into(),
                    "--cert".into(),
                    env.certs.crt().display().to_string(),
                    "--key".into(),
                    env.certs.key().display().to_string(),
                ],
                &dir.join("pingora.log"),
            )?;
            let a = await_listen_lines(
                &mut child,
                &[
                    "pingora-passthrough listening on ",
                    "pingora-passthrough tls listening on ",
                ],
                "pingora-passthrough",
            )?;
            (Some(Proc { child, addr: a[0] }), a[0], Some(a[1]))
        }
        PeerKind::Nginx => {
            let [addr, tls] = free_ports()?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(dir, [addr, tls], env.backend, max_fds, env.certs))?;
            let nginx = find_program("nginx").ok_or(CompareError::Tools("nginx".into()))?;
            let child = spawn_pinned(
                env.core,
                &nginx,
                &[
                    "-c".into(),
                    conf.display().to_string(),
                    "-p".into(),
                    dir.display().to_string(),
                ],
                &dir.join("nginx.log"),
            )?;
            (Some(Proc { child, addr }), addr, Some(tls))
        }
        PeerKind::Haproxy => {
            let [addr, tls] = free_ports()?;
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_conf([addr, tls], env.backend, env.certs))?;
            let haproxy = find_program("haproxy").ok_or(CompareError::Tools("haproxy".into()))?;
            let child = spawn_pinned(
                env.core,
                &haproxy,
                &["-f".into(), conf.display().to_string(), "-db".into()],
                &dir.join("haproxy.log"),
            )?;
            (Some(Proc { child, addr }), addr, Some(tls))
        }
        PeerKind::Caddy => {
            let [addr, tls] = free_ports()?;
            let conf = dir.join("caddy.json");
            std::fs::write(&conf, caddy_conf([addr, tls], env.backend, env.certs))?;
            let caddy = find_program("caddy").ok_or(CompareError::Tools("caddy".into()))?;
            let home = dir.join("caddy-home");
            std::fs::create_dir_all(&home)?;
            let child = spawn_pinned_env(
                env.core,
                &caddy,
                &["run".into(), "--config".into(), conf.display().to_string()],
                &[
                    ("GOMAXPROCS", "1".into()),
                    ("HOME", home.display().to_string()),
                    ("XDG_DATA_HOME", home.display().to_string()),
                    ("XDG_CONFIG_HOME", home.display().to_string()),
                ],
                &dir.join("caddy.log"),
            )?;
            (Some(Proc { child, addr }), addr, Some(tls))
        }
    };
    Ok(Peer {
        kind,
        addr,
        tls_addr,
        proc: proc_,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--peers` names and the results' JSON names are the same, the
    /// before peer included (it is not a default peer).
    #[test]
    fn every_peer_name_parses_back_and_is_its_json_name() {
        for k in PeerKind::ALL.into_iter().chain([PeerKind::EdgeplaneBefore]) {
            assert_eq!(PeerKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.as_str()));
        }
        assert!(!PeerKind::ALL.contains(&PeerKind::EdgeplaneBefore));
        assert_eq!(PeerKind::parse("edgeplane-after"), None);
    }
}
