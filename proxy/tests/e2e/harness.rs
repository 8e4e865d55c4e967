//! Test harness: real `edgeplane` and `edgeplane-bench fake-vm` processes on
//! OS-chosen loopback ports, and a small raw HTTP/1.1 client that sends
//! exactly the Host and headers a test gives it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const HOP_SECRET: &str = "test-hop-secret-0123456789";
/// The version 1 (HMAC) key every test edge holds unless
/// [`EdgeOpts::no_v1_key`]: the migration state.
pub const WS_KEY: &str = "test-workspace-key-0123456789";

/// The platform web server's version 2 signing key in these tests (one per
/// test process). Edges get only its public half, as `ws.pub`.
pub fn web_key() -> &'static edgeplane_token::SecretKey {
    static KEY: std::sync::OnceLock<edgeplane_token::SecretKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| edgeplane_token::keygen().expect("key generation"))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A version 2 workspace token for `repl` homed in `region`, signed by
/// `key`, expiring at `exp` (Unix seconds).
pub fn v2_token_by(key: &edgeplane_token::SecretKey, repl: &str, region: &str, exp: u64) -> String {
    edgeplane_token::mint(
        key,
        &edgeplane_token::Claims {
            repl,
            region,
            cluster: None,
            expires_at: exp,
        },
    )
    .unwrap()
}

/// A version 2 token from [`web_key`], valid for 10 minutes.
pub fn v2_token(repl: &str, region: &str) -> String {
    v2_token_by(web_key(), repl, region, unix_now() + 600)
}

/// Held by the tests that load both cores for seconds (the SNI flood, the
/// smuggling scanner) and by those that judge timing under their own load
/// (binary upgrades under load): the suite runs tests two at a time, and a
/// flood beside an upgrade starved the upgrade's handover into losing
/// requests on the 2-core machine.
pub static CPU_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn bin(name: &str) -> PathBuf {
    let edge = PathBuf::from(env!("CARGO_BIN_EXE_edgeplane"));
    let p = edge.with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

pub fn edgeplane_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgeplane"))
}

/// A test peer `scripts/setup.sh` installs under the target directory
/// (`rel` below it; `what` names it in the message when it is missing).
pub fn setup_tool(rel: &str, what: &str) -> PathBuf {
    let target = edgeplane_bin()
        .parent()
        .and_then(Path::parent)
        .expect("the binary sits in <target>/<profile>/")
        .to_path_buf();
    let p = target.join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it installs {what})",
        p.display()
    );
    p
}

/// The Python of the test peers' virtualenv.
pub fn python() -> PathBuf {
    setup_tool("py/bin/python", "the Python test peers")
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines until `want` returns Some for each of `n` values.
pub fn read_lines<T>(child: &mut Child, n: usize, want: impl Fn(&str) -> Option<T>) -> Vec<T> {
    let out = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(out);
    let mut got = Vec::new();
    let mut line = String::new();
    while got.len() < n {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("process exited before printing its addresses");
        }
        if let Some(v) = want(line.trim()) {
            got.push(v);
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    got
}

pub struct FakeVm {
    _proc: Proc,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
}

impl FakeVm {
    pub fn start(id: &str) -> FakeVm {
        let mut child = Command::new(bin("edgeplane-bench"))
            .args([
                "fake-vm",
                "--id",
                id,
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fake-vm");
        let addrs = read_lines(&mut child, 1, |l| {
            let http = l.split("http=").nth(1)?.split(' ').next()?.parse::<SocketAddr>().ok()?;
            let metrics = l.split("metrics=").nth(1)?.parse::<SocketAddr>().ok()?;
            Some((http, metrics))
        });
        FakeVm {
            _proc: Proc(child),
            http: addrs[0].0,
            metrics: addrs[0].1,
        }
    }

    /// Changes what the VM reports (`POST /control`).
    pub async fn control(&self, body: serde_json::Value) {
        let b = serde_json::to_vec(&body).unwrap();
        let r = try_request(
            self.metrics,
            "POST",
            "vm",
            "/control",
            &[("content-type", "application/json")],
            &b,
        )
        .await
        .expect("control request");
        assert_eq!(r.status, 200, "{}", r.body_str());
    }

    /// `fakevm_requests_total` as the VM reports it.
    pub async fn requests(&self) -> u64 {
        self.counter("fakevm_requests_total").await
    }

    /// Requests whose body reached the VM whole.
    pub async fn bodies_whole(&self) -> u64 {
        self.counter("fakevm_bodies_whole_total").await
    }

    /// Connections the VM accepted (from the edge's upstream pool).
    pub async fn connections(&self) -> u64 {
        self.counter("fakevm_connections_total").await
    }

    async fn counter(&self, name: &str) -> u64 {
        let r = get(self.metrics, "vm", "/metrics", &[]).await;
        metric_value(&r.body_str(), name).unwrap_or_else(|| panic!("{name}")) as u64
    }
}

/// A running edge with its own temp dir (config, secrets, snapshot).
pub struct Edge {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS listener, when started with `[tls]`.
    pub https: Option<SocketAddr>,
}

/// Extra config for [`Edge::start_opts`].
#[derive(Default)]
pub struct EdgeOpts<'a> {
    /// Lines added to `[edge]` (replacing the harness's `grace_period_ms = 0`
    /// when they set it).
    pub edge: &'a str,
    /// Lines added to `[limits]` (may open further sections).
    pub limits: &'a str,
    /// A `[tls]` section body; the edge then prints an HTTPS address.
    pub tls: Option<&'a str>,
    /// Lines added to `[security]`.
    pub security: &'a str,
    /// Run with `--log-format json` and `RUST_LOG=info`, stderr to
    /// `edge.log` in the edge's directory ([`Edge::log_lines`]).
    pub json_log: bool,
    /// No version 1 key (`workspace_token_key_file` unset): the fleet has
    /// finished migrating to version 2 tokens.
    pub no_v1_key: bool,
    /// Start with `EDGEPLANE_COUNT_ALLOCATIONS=1` (`/debug/allocations`).
    pub count_allocations: bool,
    /// More environment variables for the process.
    pub env: &'a [(&'a str, &'a str)],
}

impl Edge {
    /// Starts an edge of `region` serving `snapshot` (JSON), with extra TOML
    /// lines appended to its `[limits]` section (they may open further
    /// sections such as `[health]` and `[balancer]`).
    pub async fn start(region: &str, snapshot: &serde_json::Value, limits: &str) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("snapshot.json"),
            serde_json::to_vec_pretty(snapshot).unwrap(),
        )
        .unwrap();
        Edge::start_in(
            dir,
            region,
            "file = \"snapshot.json\"",
            &EdgeOpts {
                limits,
                ..Default::default()
            },
            true,
        )
        .await
    }

    /// Like [`Edge::start`] with [`EdgeOpts`], in a given directory (so a
    /// test can put certificates there first).
    pub async fn start_opts(
        dir: tempfile::TempDir,
        region: &str,
        snapshot: &serde_json::Value,
        opts: &EdgeOpts<'_>,
    ) -> Edge {
        std::fs::write(
            dir.path().join("snapshot.json"),
            serde_json::to_vec_pretty(snapshot).unwrap(),
        )
        .unwrap();
        Edge::start_in(dir, region, "file = \"snapshot.json\"", opts, true).await
    }

    pub fn pid(&self) -> i32 {
        self.proc.0.id() as i32
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("edge.toml")
    }

    /// Rewrites the config with the ports the OS chose, so that a new
    /// process (`serve --upgrade`) finds the same addresses and takes
    /// their sockets over.
    pub fn pin_ports(&self) {
        let cfg = self.config_path();
        let mut text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replacen(
                "listen = [\"127.0.0.1:0\"]",
                &format!("listen = [\"{}\"]", self.proxy),
                1,
            )
            .replace(
                "admin_listen = \"127.0.0.1:0\"",
                &format!("admin_listen = \"{}\"", self.admin),
            );
        if let Some(h) = self.https {
            // The [tls] listener is the second `listen` line.
            text = text.replacen("listen = [\"127.0.0.1:0\"]", &format!("listen = [\"{h}\"]"), 1);
        }
        std::fs::write(&cfg, text).unwrap();
    }

    /// Starts an edge of `region` syncing from PostgreSQL at `url`, with a
    /// last-known-good file in `dir` (pass a fresh temp dir, or one an
    /// earlier edge used); `ready` waits for `/readyz`.
    pub async fn start_pg(dir: tempfile::TempDir, region: &str, url: &str, ready: bool) -> Edge {
        Edge::start_pg_with(dir, region, url, "", ready).await
    }

    /// An edge on PostgreSQL with a `[tls]` listener (a self-signed
    /// `*.repl.co` certificate, returned as DER), ready: the production path.
    pub async fn start_pg_tls(region: &str, url: &str) -> (Edge, Vec<u8>) {
        Edge::start_pg_tls_opts(region, url, EdgeOpts::default()).await
    }

    /// [`Edge::start_pg_tls`] with more options.
    pub async fn start_pg_tls_opts(region: &str, url: &str, opts: EdgeOpts<'_>) -> (Edge, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let der = write_repl_co_cert(dir.path());
        let placement = format!("source = \"postgres\"\npostgres_url = \"{url}\"\npoll_interval_ms = 200\n");
        let opts = EdgeOpts {
            tls: Some(TLS_SECTION),
            ..opts
        };
        (Edge::start_in(dir, region, &placement, &opts, true).await, der)
    }

    /// An edge on PostgreSQL (no last-known-good file) with `opts`, ready.
    pub async fn start_pg_opts(region: &str, url: &str, opts: &EdgeOpts<'_>) -> Edge {
        let placement = format!("source = \"postgres\"\npostgres_url = \"{url}\"\npoll_interval_ms = 200\n");
        Edge::start_in(tempfile::tempdir().unwrap(), region, &placement, opts, true).await
    }

    /// [`Edge::start_pg`] with more `[placement]` lines (`extra`).
    pub async fn start_pg_with(dir: tempfile::TempDir, region: &str, url: &str, extra: &str, ready: bool) -> Edge {
        let interval = if extra.contains("last_known_good_interval_ms") {
            ""
        } else {
            "last_known_good_interval_ms = 100\n"
        };
        let placement = format!(
            "source = \"postgres\"\npostgres_url = \"{url}\"\nlast_known_good = \"lkg.json\"\n\
{interval}poll_interval_ms = 200\nconnect_timeout_ms = 1000\n{extra}"
        );
        Edge::start_in(dir, region, &placement, &EdgeOpts::default(), ready).await
    }

    /// Starts an edge of `region` with these `[placement]` lines.
    pub async fn start_placement(region: &str, placement: &str, ready: bool) -> Edge {
        Edge::start_in(
            tempfile::tempdir().unwrap(),
            region,
            placement,
            &EdgeOpts::default(),
            ready,
        )
        .await
    }

    /// `POST` to the admin listener.
    pub async fn admin_post(&self, path: &str) -> Resp {
        try_request(self.admin, "POST", "admin", path, &[], b"").await.unwrap()
    }

    pub(crate) async fn start_in(
        dir: tempfile::TempDir,
        region: &str,
        placement: &str,
        opts: &EdgeOpts<'_>,
        ready: bool,
    ) -> Edge {
        let d = dir.path();
        std::fs::write(d.join("hop.secret"), HOP_SECRET).unwrap();
        std::fs::write(d.join("ws.key"), WS_KEY).unwrap();
        std::fs::write(
            d.join("ws.pub"),
            format!("# the web server's key\n{}\n", web_key().public_key().to_paserk()),
        )
        .unwrap();
        let v1 = if opts.no_v1_key {
            ""
        } else {
            "workspace_token_key_file = \"ws.key\"\n"
        };
        let grace = if opts.edge.contains("grace_period_ms") {
            ""
        } else {
            "grace_period_ms = 0\n"
        };
        let tls = opts.tls.map(|t| format!("\n[tls]\n{t}\n")).unwrap_or_default();
        let toml = format!(
            "[edge]\nregion = \"{region}\"\ninstance_id = \"{region}-test\"\nlisten = [\"127.0.0.1:0\"]\n\
admin_listen = \"127.0.0.1:0\"\nthreads = 2\npid_file = \"edge.pid\"\nupgrade_sock = \"edge.sock\"\n\
{grace}{}\n\n[placement]\n{placement}\n{tls}\n[security]\nhop_secret_file = \"hop.secret\"\n\
workspace_token_public_keys_file = \"ws.pub\"\n{v1}{}\n\n[limits]\n{}\n",
            opts.edge, opts.security, opts.limits
        );
        std::fs::write(d.join("edge.toml"), toml).unwrap();
        let mut env: Vec<(&str, &str)> = opts.env.to_vec();
        if opts.count_allocations {
            env.push(("EDGEPLANE_COUNT_ALLOCATIONS", "1"));
        }
        let env = env.as_slice();
        let (child, map) = if opts.json_log {
            let log = std::fs::File::create(d.join("edge.log")).unwrap();
            spawn_edge_env(
                &d.join("edge.toml"),
                &["--log-format", "json"],
                opts.tls.is_some(),
                "info",
                log.into(),
                env,
            )
        } else {
            let level = std::env::var("EDGE_LOG").unwrap_or_else(|_| "warn".into());
            spawn_edge_env(
                &d.join("edge.toml"),
                &[],
                opts.tls.is_some(),
                &level,
                Stdio::inherit(),
                env,
            )
        };
        let edge = Edge {
            proc: Proc(child),
            dir,
            proxy: map["proxy"],
            admin: map["admin"],
            https: map.get("https").copied(),
        };
        if ready {
            edge.wait_ready().await;
        }
        edge
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = try_request(self.admin, "GET", "admin", "/readyz", &[], &[]).await {
                // Pingora binds its services' listeners one by one: the
                // admin answering does not mean the proxy listener is up.
                let https_up = match self.https {
                    Some(a) => TcpStream::connect(a).await.is_ok(),
                    None => true,
                };
                if r.status == 200 && TcpStream::connect(self.proxy).await.is_ok() && https_up {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "edge never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.path().join("snapshot.json")
    }

    /// The JSON log lines written so far (edges started with `json_log`);
    /// panics on a line that is not one JSON object.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .collect()
    }

    /// `GET /balancer` on the admin listener.
    pub async fn balancer(&self) -> serde_json::Value {
        get(self.admin, "admin", "/balancer", &[]).await.json()
    }

    /// Polls `/balancer` until `f` holds or 15 s pass.
    pub async fn wait_balancer(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.balancer().await;
            if f(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "balancer never reached: {what}\n{v:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "admin", "/metrics", &[]).await.body_str()
    }

    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        get(self.proxy, host, path, headers).await
    }
}

/// The value of the first sample of `name{labels...}` whose line contains all `parts`.
pub fn metric_with(text: &str, name: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{')))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    metric_with(text, name, &[])
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_str()))
    }
    /// Which fake VM answered.
    pub fn served_by(&self) -> Option<&str> {
        self.header("x-served-by")
    }
}

/// Starts `edgeplane serve -c CONFIG [--upgrade]` and reads the addresses
/// it prints (`proxy`, `admin`, and `https` when `https`).
pub fn spawn_edge(config: &Path, upgrade: bool, https: bool) -> (Child, HashMap<&'static str, SocketAddr>) {
    let level = std::env::var("EDGE_LOG").unwrap_or_else(|_| "warn".into());
    let args: &[&str] = if upgrade { &["--upgrade"] } else { &[] };
    spawn_edge_with(config, args, https, &level, Stdio::inherit())
}

/// [`spawn_edge`] with more `serve` arguments, a `RUST_LOG` and where its
/// stderr goes.
pub fn spawn_edge_with(
    config: &Path,
    args: &[&str],
    https: bool,
    rust_log: &str,
    stderr: Stdio,
) -> (Child, HashMap<&'static str, SocketAddr>) {
    spawn_edge_env(config, args, https, rust_log, stderr, &[])
}

/// [`spawn_edge_with`] with more environment variables.
pub fn spawn_edge_env(
    config: &Path,
    args: &[&str],
    https: bool,
    rust_log: &str,
    stderr: Stdio,
    env: &[(&str, &str)],
) -> (Child, HashMap<&'static str, SocketAddr>) {
    let mut child = Command::new(edgeplane_bin())
        .args(["serve", "-c"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", rust_log)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn edgeplane");
    let addrs = read_lines(&mut child, if https { 3 } else { 2 }, |l| {
        let a = l.strip_prefix("edgeplane: proxy listening on ").map(|a| ("proxy", a));
        let a = a.or_else(|| l.strip_prefix("edgeplane: https listening on ").map(|a| ("https", a)));
        let a = a.or_else(|| l.strip_prefix("edgeplane: admin listening on ").map(|a| ("admin", a)))?;
        Some((a.0, a.1.parse::<SocketAddr>().ok()?))
    });
    (child, addrs.into_iter().collect())
}

/// Reads from `s` until a whole request head (`\r\n\r\n`) arrived; false
/// if the peer closed first. For test-controlled VMs.
pub async fn read_request_head(s: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Open file descriptors of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until `f` holds (polling every 50 ms) or panics after `secs`.
pub async fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends raw bytes on a new connection and reads until the edge closes it
/// (or `wait` passes). Returns everything read.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// Status codes of every response head in `raw` (pipelined answers).
pub fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..].get(..3).and_then(|c| c.parse().ok()))
        .collect()
}

pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    try_request(addr, "GET", host, path, headers, &[])
        .await
        .expect("request failed")
}

/// Sends one request with `Connection: close` and reads the whole answer.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timed out"))??;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not utf8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(Resp { status, headers, body })
}

/// Writes a snapshot file atomically (rename), as a control plane would.
pub fn write_snapshot(path: &Path, snap: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(snap).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `/debug/snapshot` until `f` holds or 10 s pass.
pub async fn wait_snapshot(edge: &Edge, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get(edge.admin, "admin", "/debug/snapshot", &[]).await.json();
        if f(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot never reached the expected state: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Steady client load: `workers` loops sending `GET /` for `host` to the
/// edge, each on a new connection, counting 200s and everything else.
pub struct Load {
    pub ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(proxy: SocketAddr, host: &'static str, workers: usize) -> Load {
        use std::sync::atomic::Ordering::Relaxed;
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Relaxed) {
                        match try_request(proxy, "GET", host, "/", &[], &[]).await {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Relaxed),
                            other => {
                                eprintln!("load: failed request to {host}: {:?}", other.map(|r| r.status));
                                failed.fetch_add(1, Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            ok,
            failed,
            stop,
            workers,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the workers; returns (ok, failed).
    pub async fn stop(self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.stop.store(true, Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        (self.ok.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// Sends `sig` (as `kill` spells it: "-TERM", "-STOP", ...) to `pid`.
/// `edgeplane serve -c CONFIG --upgrade` (stdout piped: its ports and the
/// hand-over line), beside the edge it is to take over from.
pub fn spawn_upgrade(config: &Path) -> Child {
    Command::new(edgeplane_bin())
        .args(["serve", "-c"])
        .arg(config)
        .arg("--upgrade")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

pub fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Writes a self-signed `*.repl.co` certificate and key into `dir/certs`
/// (what [`TLS_SECTION`] serves); returns the certificate as DER.
pub fn write_repl_co_cert(dir: &Path) -> Vec<u8> {
    let certs = dir.join("certs");
    std::fs::create_dir(&certs).unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["*.repl.co".to_string()]).unwrap();
    std::fs::write(certs.join("repl.co.key"), c.key_pair.serialize_pem()).unwrap();
    std::fs::write(certs.join("repl.co.crt"), c.cert.pem()).unwrap();
    c.cert.der().to_vec()
}

/// The `[tls]` section of [`Edge::start_tls`]'s edges.
pub const TLS_SECTION: &str = "listen = [\"127.0.0.1:0\"]\ncerts_dir = \"certs\"";

impl Edge {
    /// Starts an edge whose `[tls]` listener serves a self-signed
    /// `*.repl.co` certificate (written to `certs/` in its directory);
    /// returns it with the certificate (DER) a client must trust.
    pub async fn start_tls(region: &str, snapshot: &serde_json::Value, opts: EdgeOpts<'_>) -> (Edge, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let der = write_repl_co_cert(dir.path());
        let opts = EdgeOpts {
            tls: Some(TLS_SECTION),
            ..opts
        };
        let edge = Edge::start_opts(dir, region, snapshot, &opts).await;
        (edge, der)
    }
}

/// A rustls client config trusting exactly `der`, offering `alpn` (none:
/// HTTP/1.1 without ALPN).
pub fn tls_client_config(der: &[u8], alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(cfg)
}

/// A WebSocket over TLS (HTTP/1.1 by ALPN).
pub type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens `url` (`wss://…`) on `addr`, trusting exactly `der` for `sni`;
/// returns the socket and the edge's `101`.
pub async fn wss_connect(
    addr: SocketAddr,
    der: &[u8],
    sni: &str,
    url: &str,
) -> (Wss, tokio_tungstenite::tungstenite::handshake::client::Response) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_client_config(der, &[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("{url}: TLS: {e}"));
    tokio_tungstenite::client_async(url.into_client_request().unwrap(), tls)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The code of the next close frame on `ws` (within 5 s); panics if the
/// tunnel ends without one.
pub async fn next_close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("tunnel ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("no close frame in time");
    close.expect("close frame has a code").code.into()
}
