//! [`LazyDeadline`]: a per-connection deadline that is cheap to move.
//!
//! Where it sits: every wait on a client or VM connection that has a time
//! bound and happens once per request — the keep-alive wait for the next
//! head and the head clock ([`super::stream::ConnStream`]), a request
//! body's reads, a VM's answer ([`crate::http::client`]). A fresh
//! `tokio::time::timeout` per wait registers a timer entry in the runtime's
//! wheel when the wait goes pending and removes it when it ends: two
//! trips through the wheel's lock per wait, several per request. nginx
//! keeps one timer per connection event in its own tree for the same
//! reason.
//!
//! How: arming stores the due instant and leaves the timer under it alone
//! whenever that timer would fire no later than the new due time (the
//! common case: each request's due time is later than the last one's).
//! When the timer fires early, [`LazyDeadline::poll_expired`] moves it to
//! the stored due time and waits again; only a timer that has already
//! fired, or one that would fire too late, is reset at arming. So a
//! connection touches the wheel about once per timeout period, not per
//! request, and an early fire costs one spurious wake-up of its task.
//!
//! Invariant: `poll_expired` is `Ready` only once `Instant::now()` is at or
//! past the last armed due time; disarmed, it is never ready.
//!
//! Start at [`LazyDeadline::arm`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Far enough that a never-armed timer does not fire.
const IDLE_FOR: Duration = Duration::from_secs(86_400 * 365);

/// A deadline whose arming rarely touches the timer wheel (see the module
/// docs).
pub struct LazyDeadline {
    sleep: Pin<Box<Sleep>>,
    due: Option<Instant>,
}

impl Default for LazyDeadline {
    fn default() -> Self {
        LazyDeadline::new()
    }
}

impl std::fmt::Debug for LazyDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyDeadline").field("due", &self.due).finish()
    }
}

impl LazyDeadline {
    /// Disarmed. Must be created inside a runtime with a timer.
    pub fn new() -> LazyDeadline {
        LazyDeadline {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + IDLE_FOR)),
            due: None,
        }
    }

    /// Due `after` from now.
    pub fn arm_after(&mut self, after: Duration) {
        self.arm(Instant::now() + after)
    }

    /// Due at `due`, replacing any earlier arming.
    pub fn arm(&mut self, due: Instant) {
        self.due = Some(due);
        // A timer that already fired will not fire again; one due after
        // `due` would fire too late. Otherwise it fires at or before `due`
        // and `poll_expired` carries it on.
        if self.sleep.is_elapsed() || self.sleep.deadline() > due {
            self.sleep.as_mut().reset(due);
        }
    }

    /// Not due any more (the timer under it stays; a fire is ignored).
    pub fn disarm(&mut self) {
        self.due = None;
    }

    pub fn is_armed(&self) -> bool {
        self.due.is_some()
    }

    /// Ready once the armed due time has passed; never while disarmed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(due) = self.due else {
            return Poll::Pending;
        };
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if self.sleep.deadline() >= due {
                return Poll::Ready(());
            }
            // Fired early (armed for a later time since): wait on.
            self.sleep.as_mut().reset(due);
        }
    }

    /// Runs `fut` until it ends or the deadline set `after` from the
    /// first time it waits passes (`Err(Elapsed)`); the deadline is
    /// disarmed afterwards. A `fut` ready at once reads no clock.
    pub async fn within<F: Future>(&mut self, after: Duration, fut: F) -> Result<F::Output, Elapsed> {
        let mut fut = std::pin::pin!(fut);
        // Armed by this call (a wait dropped half way left its own arming).
        let mut armed = false;
        let out = std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            if !armed {
                armed = true;
                self.arm_after(after);
            }
            self.poll_expired(cx).map(|()| Err(Elapsed))
        })
        .await;
        self.disarm();
        out
    }
}

/// A [`LazyDeadline::within`] wait ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

#[cfg(test)]
mod tests {
    use super::*;

    /// Paused time: the runtime's clock moves only when every task waits,
    /// straight to the next timer.
    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_wait_that_outlives_its_deadline_ends_at_the_deadline() {
        paused().block_on(async {
            let mut d = LazyDeadline::new();
            let start = Instant::now();
            let r = d.within(Duration::from_secs(5), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            assert_eq!(Instant::now() - start, Duration::from_secs(5));
            assert!(!d.is_armed());
        });
    }

    #[test]
    fn a_wait_that_ends_first_gives_its_value() {
        paused().block_on(async {
            let mut d = LazyDeadline::new();
            let r = d
                .within(Duration::from_secs(5), tokio::time::sleep(Duration::from_secs(1)))
                .await;
            assert_eq!(r, Ok(()));
        });
    }

    /// The timer armed by the first wait fires early for the second (armed
    /// later, due later): the second still runs its whole bound.
    #[test]
    fn an_early_fire_from_an_older_arming_is_carried_to_the_new_due_time() {
        paused().block_on(async {
            let mut d = LazyDeadline::new();
            let r = d
                .within(Duration::from_secs(10), tokio::time::sleep(Duration::from_secs(3)))
                .await;
            assert_eq!(r, Ok(()));
            // The timer under it is still due at 10 s; this wait is due at 13 s.
            let start = Instant::now();
            let r = d.within(Duration::from_secs(10), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            assert_eq!(Instant::now() - start, Duration::from_secs(10));
        });
    }

    /// A shorter bound than the timer's pending one is not stretched to it.
    #[test]
    fn a_shorter_bound_after_a_longer_one_is_kept() {
        paused().block_on(async {
            let mut d = LazyDeadline::new();
            let r = d
                .within(Duration::from_secs(60), tokio::time::sleep(Duration::from_secs(1)))
                .await;
            assert_eq!(r, Ok(()));
            let start = Instant::now();
            let r = d.within(Duration::from_secs(2), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            assert_eq!(Instant::now() - start, Duration::from_secs(2));
        });
    }

    /// A timer that fired while nobody waited is reset by the next arming.
    #[test]
    fn a_timer_that_fired_unwatched_is_armed_again() {
        paused().block_on(async {
            let mut d = LazyDeadline::new();
            d.arm_after(Duration::from_secs(1));
            d.disarm();
            tokio::time::sleep(Duration::from_secs(5)).await;
            let start = Instant::now();
            let r = d.within(Duration::from_secs(3), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            assert_eq!(Instant::now() - start, Duration::from_secs(3));
        });
    }

    /// A wait dropped before it ended (a `select!` took the other branch)
    /// does not shorten the next one.
    #[test]
    fn a_dropped_wait_leaves_the_next_its_whole_bound() {
        paused().block_on(async {
            let mut d = LazyDeadline::new();
            tokio::select! {
                _ = d.within(Duration::from_secs(2), std::future::pending::<()>()) => panic!("ended"),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            let start = Instant::now();
            let r = d.within(Duration::from_secs(4), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            assert_eq!(Instant::now() - start, Duration::from_secs(4));
        });
    }

    #[test]
    fn disarmed_it_never_expires() {
        paused().block_on(async {
            let mut d = LazyDeadline::new();
            d.arm_after(Duration::from_millis(10));
            d.disarm();
            let expired =
                tokio::time::timeout(Duration::from_secs(60), std::future::poll_fn(|cx| d.poll_expired(cx))).await;
            assert!(expired.is_err(), "a disarmed deadline fired");
        });
    }
}
