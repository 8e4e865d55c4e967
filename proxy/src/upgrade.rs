//! A binary upgrade in one command, the way HAProxy's `-sf` is one:
//! `edgeplane serve -c FILE --upgrade` finds the running edge by its pid
//! file, asks it to hand its listening sockets over, takes them, and the
//! old process stops accepting at once and drains.
//!
//! The two sides:
//! - **The new process** ([`TakeOver::begin`], before Pingora's bootstrap
//!   waits on `edge.upgrade_sock`): reads `edge.pid_file` and checks that
//!   it names a live `edgeplane serve` (else one clear line and exit 1,
//!   at once); once the bootstrap has bound the upgrade socket it sends the
//!   old process SIGQUIT; after the take-over it writes its own pid to the
//!   pid file and tells systemd it is the service's main process now. If
//!   the old process never hands over, Pingora gives up after about 5 s
//!   and the process exits 1 with one line saying so ([`TakeOver`]'s exit
//!   report), the old one still serving.
//! - **The old process** ([`HandOver`], called from the stop-signal
//!   handler on SIGQUIT): sends the listeners itself rather than leaving it
//!   to Pingora, which would keep accepting for another 5 s after sending;
//!   on success the process shuts its listeners at once (the sockets live
//!   on in the new process, and the kernel queues new connections until it
//!   accepts) and drains; with no new process waiting it logs one line and
//!   keeps serving.
//!
//! Under systemd (`NOTIFY_SOCKET` set) a process started from a shell
//! would run outside the service, so `serve --upgrade` run there asks the
//! running edge instead (SIGUSR2): the edge starts the binary at the path
//! it was started from (where the new build was installed) as its own
//! child — inside the service, with its user and sandbox — and that child
//! takes over as above and sends `MAINPID=` to systemd (the unit has
//! `NotifyAccess=all`) before it writes the pid file. The old process says
//! nothing to systemd (a `STOPPING=1` would stop the unit) and, before it
//! exits, waits for the pid file to name its successor
//! ([`HandOver::wait_for_successor`]): a service whose main process exits
//! before systemd knows the next one is stopped, successor and all. The
//! shell command waits for the pid file to name the new process and
//! reports it.
//!
//! Start at [`TakeOver::begin`] (new side) and [`HandOver::send`] (old).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;

/// How long the new process waits for Pingora to bind the upgrade socket
/// before it signals the old one.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// How long `serve --upgrade` under systemd waits for the service's edge to
/// report its successor in the pid file.
const MANAGED_WAIT: Duration = Duration::from_secs(30);

/// How long a process that handed its listeners over under systemd waits,
/// before it exits, for the successor to have told systemd its pid.
pub const SUCCESSOR_WAIT: Duration = Duration::from_secs(10);

/// Why an upgrade could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no running edge to take over: {pid_file}: {why}")]
    NothingToTakeOver { pid_file: PathBuf, why: String },
    #[error("the running edge (pid {pid}) did not start a successor within {secs} s; it keeps serving")]
    NoSuccessor { pid: u32, secs: u64 },
    #[error("cannot signal pid {pid}: {err}")]
    Signal { pid: u32, err: std::io::Error },
    #[error("cannot tell whether pid {pid} runs under systemd ({err}): run the upgrade as root or as the edge's user")]
    NotPermitted { pid: u32, err: std::io::Error },
}

/// The pid a pid file names, if it is a live `edgeplane serve`.
pub fn running_edge(pid_file: &Path) -> Result<u32, UpgradeError> {
    let gone = |why: String| UpgradeError::NothingToTakeOver {
        pid_file: pid_file.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(pid_file).map_err(|e| gone(e.to_string()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| gone(format!("{:?} is not a pid", text.trim())))?;
    // /proc/PID/cmdline: NUL-separated argv; a stale pid file whose pid
    // was reused by another program is not an edge.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|_| gone(format!("pid {pid} is not running (a stale pid file)")))?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let is_edge = args.first().is_some_and(|a| a.ends_with(b"edgeplane")) && args.iter().any(|a| *a == b"serve");
    if !is_edge {
        return Err(gone(format!("pid {pid} is not an edgeplane serve process")));
    }
    Ok(pid)
}

/// Writes this process's pid to `path` (a temporary file renamed over it,
/// so a reader never sees half of it).
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    // Readable by every operator (the unit's umask is 0077), as pid files are.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// Sends `sig` to `pid`.
#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) -> Result<(), UpgradeError> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(UpgradeError::Signal {
            pid,
            err: std::io::Error::last_os_error(),
        })
    }
}

/// Whether `pid`'s environment has `NOTIFY_SOCKET` (it runs as a systemd
/// notify service). Another user's process, without root, cannot be told:
/// an error, since guessing "no" would start the new edge outside the
/// service.
fn runs_under_systemd(pid: u32) -> Result<bool, UpgradeError> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|v| v.starts_with(b"NOTIFY_SOCKET=")))
        .map_err(|err| UpgradeError::NotPermitted { pid, err })
}

/// What `serve --upgrade` does, decided before anything binds.
pub enum Plan {
    /// Take the listeners over in this process.
    TakeOver(TakeOver),
    /// The running edge started its successor inside its service; this
    /// process has nothing more to do.
    Delegated { old: u32, new: u32 },
}

/// Decides and starts an upgrade (see the module docs).
pub fn plan(pid_file: &Path, upgrade_sock: &Path) -> Result<Plan, UpgradeError> {
    let old = running_edge(pid_file)?;
    let inside_service = std::env::var_os("NOTIFY_SOCKET").is_some();
    if !inside_service && runs_under_systemd(old)? {
        signal(old, libc::SIGUSR2)?;
        let deadline = Instant::now() + MANAGED_WAIT;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(new) = running_edge(pid_file) {
                if new != old {
                    return Ok(Plan::Delegated { old, new });
                }
            }
        }
        return Err(UpgradeError::NoSuccessor {
            pid: old,
            secs: MANAGED_WAIT.as_secs(),
        });
    }
    Ok(Plan::TakeOver(TakeOver::begin(old, upgrade_sock)))
}

/// The old process's pid while a take-over is pending (0: none).
static PENDING_FROM: AtomicU32 = AtomicU32::new(0);

/// Runs when the process exits: if the take-over never completed (Pingora
/// gave up waiting for the sockets and exits), says so in one line.
extern "C" fn report_failed_take_over() {
    let pid = PENDING_FROM.load(Ordering::Acquire);
    if pid != 0 {
        eprintln!(
            "edgeplane: --upgrade: pid {pid} did not hand its listeners over (are edge.upgrade_sock and \
             edge.pid_file the same in both configs?); it keeps serving"
        );
    }
}

/// A take-over in progress in the new process.
pub struct TakeOver {
    old: u32,
}

impl TakeOver {
    /// Removes a stale upgrade socket, then, on a thread, waits for
    /// Pingora's bootstrap to bind it and sends `old` SIGQUIT.
    #[allow(unsafe_code)]
    pub fn begin(old: u32, upgrade_sock: &Path) -> TakeOver {
        let _ = std::fs::remove_file(upgrade_sock);
        PENDING_FROM.store(old, Ordering::Release);
        // SAFETY: registers a plain extern "C" function with no captured
        // state; atexit has no other precondition.
        unsafe {
            libc::atexit(report_failed_take_over);
        }
        let sock = upgrade_sock.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("edgeplane-upgrade".into())
            .spawn(move || {
                let deadline = Instant::now() + SOCKET_WAIT;
                while !sock.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                log::info!("upgrade: asking pid {old} to hand its listeners over");
                if let Err(e) = signal(old, libc::SIGQUIT) {
                    log::error!("upgrade: {e}");
                }
            });
        if let Err(e) = spawned {
            log::error!("upgrade: cannot start the signalling thread: {e}");
        }
        TakeOver { old }
    }

    /// The listeners are this process's now (the server then tells systemd
    /// and writes the pid file).
    pub fn done(self) {
        PENDING_FROM.store(0, Ordering::Release);
        log::info!(
            "upgrade: took the listeners over from pid {}; it drains and exits",
            self.old
        );
    }
}

/// Sends `state` to systemd's notify socket, when there is one (a
/// `Type=notify` service). Abstract sockets (`@name`) included.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::net::UnixDatagram;
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        log::warn!("systemd notify ({state:?}): {e}");
    }
}

/// The old process's side: the listening sockets, as Pingora collected
/// them, and where the new process waits for them.
pub struct HandOver {
    fds: OnceLock<ListenFds>,
    sock: String,
    pid_file: PathBuf,
    /// The listeners went to a successor.
    handed: AtomicBool,
}

impl HandOver {
    pub fn new(upgrade_sock: &Path, pid_file: &Path) -> Arc<HandOver> {
        Arc::new(HandOver {
            fds: OnceLock::new(),
            sock: upgrade_sock.display().to_string(),
            pid_file: pid_file.to_path_buf(),
            handed: AtomicBool::new(false),
        })
    }

    /// Under systemd, after a hand-over: waits (up to `within`) until the
    /// successor has written its pid file, which it does just before it
    /// tells systemd `MAINPID=`. Exiting before that would leave the
    /// service without a main process, and systemd would stop the unit
    /// and kill the successor with it. Without a hand-over, or outside
    /// systemd, it returns at once.
    pub fn wait_for_successor(&self, within: Duration) {
        if !self.handed.load(Ordering::Acquire) || std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        let me = std::process::id();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match running_edge(&self.pid_file) {
                Ok(pid) if pid != me => return,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        log::warn!(
            "upgrade: the new process did not write {} within {within:?}; stopping anyway",
            self.pid_file.display()
        );
    }

    /// The Pingora service that is handed the listening sockets when the
    /// server starts (it serves nothing).
    pub fn service(self: &Arc<Self>) -> FdsService {
        FdsService(self.clone())
    }

    /// Sends every listening socket to the new process waiting on the
    /// upgrade socket (blocking: Pingora retries for about 5 s while no one
    /// listens there).
    pub fn send(&self) -> Result<(), String> {
        let fds = self.fds.get().ok_or("the listeners were not started yet")?;
        let fds = fds.lock();
        if fds.is_empty() {
            return Err("no listening socket to send".into());
        }
        fds.send_to_sock(self.sock.as_str())
            .map_err(|e| format!("nobody took them on {}: {e}", self.sock))?;
        self.handed.store(true, Ordering::Release);
        Ok(())
    }
}

/// See [`HandOver::service`].
pub struct FdsService(Arc<HandOver>);

#[async_trait::async_trait]
impl Service for FdsService {
    async fn start_service(&mut self, fds: Option<ListenFds>, mut shutdown: ShutdownWatch, _listeners_per_fd: usize) {
        if let Some(fds) = fds {
            let _ = self.0.fds.set(fds);
        }
        let _ = shutdown.changed().await;
    }

    fn name(&self) -> &str {
        "edgeplane upgrade"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}

/// The binary this process was started from, as a path (read at start: a
/// new build installed over it later is what a SIGUSR2 starts).
static STARTED_FROM: OnceLock<PathBuf> = OnceLock::new();

/// Records [`STARTED_FROM`]; call first thing in `main`.
pub fn record_started_from() {
    if let Ok(p) = std::env::current_exe() {
        let _ = STARTED_FROM.set(p);
    }
}

/// SIGUSR2 (see the module docs): starts `<binary> serve -c CONFIG
/// --upgrade` as a child of this process, which takes the listeners over.
/// A child that fails is logged; this process keeps serving.
pub fn start_successor_on_sigusr2(config: PathBuf, log_args: Vec<OsString>) {
    let flag = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR2, flag.clone()) {
        log::warn!("cannot watch SIGUSR2 (in-service upgrades): {e}");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("edgeplane-usr2".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            if !flag.swap(false, Ordering::AcqRel) {
                continue;
            }
            let Some(bin) = STARTED_FROM.get() else {
                log::error!("upgrade: SIGUSR2, but the binary's path is unknown");
                continue;
            };
            log::info!("upgrade: SIGUSR2: starting {} to take over", bin.display());
            match std::process::Command::new(bin)
                .arg("serve")
                .arg("-c")
                .arg(&config)
                .arg("--upgrade")
                .args(&log_args)
                .spawn()
            {
                Ok(mut child) => {
                    std::thread::spawn(move || match child.wait() {
                        Ok(s) if s.success() => {}
                        Ok(s) => log::warn!("upgrade: the successor exited ({s}); this process keeps serving"),
                        Err(e) => log::warn!("upgrade: waiting for the successor: {e}"),
                    });
                }
                Err(e) => log::error!("upgrade: cannot start {}: {e}", bin.display()),
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the SIGUSR2 watcher: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_must_name_a_live_edge() {
        let d = tempfile::tempdir().unwrap();
        let pid_file = d.path().join("edge.pid");
        let e = running_edge(&pid_file).unwrap_err().to_string();
        assert!(
            e.starts_with("no running edge to take over: ") && e.contains("edge.pid"),
            "{e}"
        );
        std::fs::write(&pid_file, "garbage\n").unwrap();
        assert!(running_edge(&pid_file)
            .unwrap_err()
            .to_string()
            .contains("is not a pid"));
        // This test process is alive but not an edge.
        write_pid_file(&pid_file).unwrap();
        let e = running_edge(&pid_file).unwrap_err().to_string();
        assert!(e.contains("is not an edgeplane serve process"), "{e}");
        std::fs::write(&pid_file, "4194303\n").unwrap();
        assert!(running_edge(&pid_file)
            .unwrap_err()
            .to_string()
            .contains("stale pid file"));
    }
}
