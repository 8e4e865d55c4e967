//! The latest forwards to other regions' edges, for the status page: a
//! small ring the request path writes with `try_lock` (a busy ring drops
//! the entry; a request never waits for the status page).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Entries [`RecentForwards`] keeps.
pub const RECENT_FORWARDS: usize = 20;

/// One forward to another region's edge.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardEvent {
    pub at_ms: u64,
    pub host: String,
    pub to_region: String,
    /// `affinity` or `tombstone`.
    pub reason: &'static str,
}

/// The latest forwards, newest last. Recording uses `try_lock`: the proxy
/// never waits for the status page.
#[derive(Default)]
pub struct RecentForwards {
    ring: Mutex<VecDeque<ForwardEvent>>,
}

impl RecentForwards {
    pub fn record(&self, ev: ForwardEvent) {
        if let Ok(mut r) = self.ring.try_lock() {
            if r.len() == RECENT_FORWARDS {
                r.pop_front();
            }
            r.push_back(ev);
        }
    }

    /// Newest first.
    pub fn latest(&self) -> Vec<ForwardEvent> {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_forwards_keep_the_newest() {
        let r = RecentForwards::default();
        for i in 0..(RECENT_FORWARDS as u64 + 5) {
            r.record(ForwardEvent {
                at_ms: i,
                host: format!("h{i}"),
                to_region: "x".into(),
                reason: "affinity",
            });
        }
        let l = r.latest();
        assert_eq!(l.len(), RECENT_FORWARDS);
        assert_eq!(l[0].at_ms, RECENT_FORWARDS as u64 + 4, "newest first");
    }
}
