//! [`Shutdown`]: one task's handle on the process's stop, in the way of
//! mini-redis's `Shutdown` — it remembers that the stop was seen, and
//! waiting for it is cancel-safe, so a task can select it against its own
//! work without losing either.
//!
//! Where it comes from: Pingora's `ShutdownWatch` (a `watch` that turns
//! true when a graceful stop or an upgrade begins) for what serves
//! connections, [`Shutdown::never`] for what runs to the process's end.
//! Every task the edge spawns takes one: WebSocket tunnels (to send their
//! close frames), the background loops (health, names, certificates).

use tokio::sync::watch;

/// A task's view of the process's stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    seen: bool,
    rx: Option<watch::Receiver<bool>>,
}

impl Shutdown {
    pub fn new(rx: watch::Receiver<bool>) -> Shutdown {
        Shutdown {
            seen: false,
            rx: Some(rx),
        }
    }

    /// A handle that never fires (a process without graceful stops: tests,
    /// tools).
    pub fn never() -> Shutdown {
        Shutdown { seen: false, rx: None }
    }

    /// The stop has begun (as far as this handle has looked).
    pub fn is_shutdown(&mut self) -> bool {
        if !self.seen {
            self.seen = self.rx.as_ref().is_some_and(|r| *r.borrow());
        }
        self.seen
    }

    /// Resolves when the stop begins (at once when it has). Cancel-safe.
    pub async fn recv(&mut self) {
        if self.is_shutdown() {
            return;
        }
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        // A closed sender means the process is going away: a stop too.
        let _ = rx.wait_for(|v| *v).await;
        self.seen = true;
    }
}

/// A stop source for std threads and tests: [`Stopper::stop`] fires every
/// [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Stopper(watch::Sender<bool>);

impl Default for Stopper {
    fn default() -> Self {
        Stopper(watch::channel(false).0)
    }
}

impl Stopper {
    pub fn handle(&self) -> Shutdown {
        Shutdown::new(self.0.subscribe())
    }

    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_is_seen_once_and_remembered_and_waiting_is_cancel_safe() {
        let s = Stopper::default();
        let mut h = s.handle();
        assert!(!h.is_shutdown());
        // Dropped waits lose nothing.
        for _ in 0..3 {
            assert!(tokio::time::timeout(std::time::Duration::from_millis(5), h.recv())
                .await
                .is_err());
        }
        s.stop();
        tokio::time::timeout(std::time::Duration::from_secs(1), h.recv())
            .await
            .unwrap();
        assert!(h.is_shutdown());
        drop(s);
        h.recv().await;
        assert!(Shutdown::never().rx.is_none());
    }
}
