//! Leaving promptly (docs/contract.md §7): after SIGTERM or SIGQUIT the
//! edge exits as soon as nothing is left to finish — an idle edge at once —
//! instead of always waiting out the grace period, which is what Pingora's
//! `Server::run` does (it sleeps `grace_period_seconds` unconditionally).
//!
//! Where it sits: every proxy listener's [`crate::http::EdgeApp`] reports
//! here when its listeners have stopped ([`Drain::listener_stopped`]); the
//! stop signal handler ([`crate::server`]) calls [`Drain::exit_when_idle`],
//! which watches, off the runtimes, until every proxy service has stopped
//! accepting and no client connection is open (requests in flight and
//! WebSocket tunnels hold their connection), then ends the process. If the
//! grace period ends first, Pingora's own shutdown proceeds as before.
//!
//! Invariant: the process never exits while a proxy listener may still
//! accept (a binary upgrade's old process keeps accepting until it hands
//! over) or a client connection is open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Admission;

/// How often the watcher looks.
const POLL: Duration = Duration::from_millis(10);

/// Proxy services still accepting, and the connections they hold.
pub struct Drain {
    accepting: AtomicUsize,
    admission: Arc<Admission>,
}

impl Drain {
    /// `services` proxy services (plain, HTTPS) whose connections
    /// `admission` counts.
    pub fn new(services: usize, admission: Arc<Admission>) -> Arc<Drain> {
        Arc::new(Drain {
            accepting: AtomicUsize::new(services),
            admission,
        })
    }

    /// One proxy service's listeners have stopped and its idle
    /// connections were told to close.
    pub fn listener_stopped(&self) {
        let _ = self
            .accepting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Nothing accepts and no client connection is open.
    pub fn is_idle(&self) -> bool {
        self.accepting.load(Ordering::Acquire) == 0 && self.admission.open() == 0
    }

    /// Starts a thread that ends the process (exit code 0) once
    /// [`Drain::is_idle`], after `before_exit` returns.
    pub fn exit_when_idle(self: &Arc<Self>, before_exit: impl FnOnce() + Send + 'static) {
        let d = self.clone();
        let spawned = std::thread::Builder::new()
            .name("edgeplane-drain".into())
            .spawn(move || {
                while !d.is_idle() {
                    std::thread::sleep(POLL);
                }
                before_exit();
                log::info!("drained: no connection left, exiting");
                std::process::exit(0);
            });
        if let Err(e) = spawned {
            log::error!("cannot start the drain watcher ({e}); the grace period applies");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_once_every_service_stopped_and_every_connection_closed() {
        let admission = Admission::new(10, 10);
        let d = Drain::new(2, admission.clone());
        assert!(!d.is_idle(), "services still accept");
        let conn = admission.admit(None).unwrap();
        d.listener_stopped();
        d.listener_stopped();
        assert!(!d.is_idle(), "a connection is open");
        drop(conn);
        assert!(d.is_idle());
        // A service reporting twice never wraps the count.
        d.listener_stopped();
        assert!(d.is_idle());
    }
}
